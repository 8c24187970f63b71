"""`bicubic`: Pillow's bicubic resize, the baseline every SR metric is compared against."""

from __future__ import annotations

from sr_augment.engines.registry import EngineKind
from sr_augment.errors import EngineParameterError


class BicubicKind(EngineKind):
    id = "bicubic"
    names = ("bicubic",)
    needs = "nothing"
    listed = 10
    remembers_settings = False  # runs in the caller's process: no engine service
    parameters = ()  # BicubicEngine(scale) only

    def check(self, spec, params=None):
        """No parameters; `steps` (unset: None) is refused as by the other engines that are not diffusion
        models (dat-light, realesrgan)."""
        if params is not None and params.get("steps") is not None:
            raise EngineParameterError(f"engine {spec!r}: not a diffusion model: steps does not apply (leave it "
                                       f"unset); got steps={params['steps']!r}")
        super().check(spec, None if params is None else {k: v for k, v in params.items() if k != "steps"})

    def build(self, spec, *, scale=4, steps=None, device="auto", dtype="auto", **params):
        from sr_augment.engines.bicubic import BicubicEngine

        self.check(spec, params)
        return BicubicEngine(scale=scale)

    def deterministic(self, spec):
        return True

    def describe(self):
        from sr_augment.engines.catalog import EngineEntry

        return [EngineEntry("bicubic", "Pillow bicubic, the baseline", self.needs, True, True, "")]


KIND = BicubicKind()
