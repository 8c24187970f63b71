"""`sr4`: the built-in pixel-space diffusion model, whose weights ship inside the package; it takes the
pipeline parameters and a `preset` (`sr_augment.sr4.presets`: fast, fidelity, diverse)."""

from __future__ import annotations

from sr_augment.engines.kinds.diffusers import PIPELINE_PARAMETERS, PipelineKind, diffusion_reason, folder_stamp
from sr_augment.engines.pipeline_weights import BUILTIN, builtin_weights
from sr_augment.engines.registry import NONE, TEXT, Parameter
from sr_augment.errors import EngineParameterError


class BuiltinKind(PipelineKind):
    id = "sr4"
    names = (BUILTIN,)
    needs = "[diffusion]; a CPU is enough"
    listed = 20
    parameters = (*PIPELINE_PARAMETERS, Parameter("preset", TEXT + NONE))

    def check(self, spec, params=None):
        super().check(spec, params)
        from sr_augment.sr4.presets import preset_problem  # imports no torch

        problem = preset_problem((params or {}).get("preset"))
        if problem:
            raise EngineParameterError(f"engine {spec!r}: {problem}")

    def weights_stamp(self, spec, params=None):
        return folder_stamp(builtin_weights())

    def describe(self):
        from sr_augment.engines.catalog import EngineEntry

        reason = diffusion_reason()
        return [EngineEntry(BUILTIN, "built-in pixel-space diffusion model (weights inside the package)", self.needs,
                            False, not reason, reason)]


KIND = BuiltinKind()
