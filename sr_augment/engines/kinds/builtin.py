"""`sr4`: the built-in pixel-space diffusion model, whose weights ship inside the package."""

from __future__ import annotations

from sr_augment.engines.kinds.diffusers import PipelineKind, diffusion_reason, folder_stamp
from sr_augment.engines.pipeline_weights import BUILTIN, builtin_weights


class BuiltinKind(PipelineKind):
    id = "sr4"
    names = (BUILTIN,)
    needs = "[diffusion]; a CPU is enough"
    listed = 20

    def weights_stamp(self, spec, params=None):
        return folder_stamp(builtin_weights())

    def describe(self):
        from sr_augment.engines.catalog import EngineEntry

        reason = diffusion_reason()
        return [EngineEntry(BUILTIN, "built-in pixel-space diffusion model (weights inside the package)", self.needs,
                            False, not reason, reason)]


KIND = BuiltinKind()
