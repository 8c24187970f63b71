"""The built-in engine kinds, one small module each, and `REGISTRY` (defined in `registry`, empty there):
registered here, the one place their order is set.

Order matters, the first match wins: "package.module:Class", bicubic, the built-in sr4, dat-light, realesrgan, the
one-step osediff / pisa-sr, a spandrel checkpoint file, a local diffusers folder (an existing one wins
over the names after it), a hub alias, a hub id "owner/name". Every module here imports no torch; each
kind's `build` imports its engine module when called.

Adding a kind: a module defining `KIND` (an `EngineKind`), and one line in the list below.
"""

from __future__ import annotations

from sr_augment.engines.kinds import bicubic, builtin, dat_light, diffusers, onestep, realesrgan, spandrel, user_class
from sr_augment.engines.registry import REGISTRY

BUILTIN_KINDS = (
    user_class.KIND,
    bicubic.KIND,
    builtin.KIND,
    dat_light.KIND,
    realesrgan.KIND,
    onestep.KIND,
    spandrel.KIND,
    diffusers.LOCAL_FOLDER,
    diffusers.HUB_ALIAS,
    diffusers.HUB_ID,
)
"""Every engine kind sr-augment knows, in matching order."""

for _kind in BUILTIN_KINDS:
    if _kind not in REGISTRY.kinds:  # registered once, even if this module is run again
        REGISTRY.register(_kind)
del _kind

__all__ = ["REGISTRY"]
