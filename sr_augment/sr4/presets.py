"""Presets of the built-in sr4 model: named defaults for its sampler settings (`steps`, `strength`, `eta`).

- `fast` (the default): the model's one-shot estimate of the conditional mean: one UNet call per tile
  (steps 1, strength 1, eta 0). In the classifier study (docs: Evidence) it was the best SR engine
  measured on Imagewoof, with no arm significantly different on hymenoptera, at a fifth to a sixth
  of `fidelity`'s time; `fidelity` was not measured better for a classifier, so the cheaper one is the default.
- `fidelity`: 10 DDIM steps refining the model's one-shot estimate from strength 0.5, eta 0: the
  highest PSNR (6 UNet calls per tile); the default before the study, with the same cache keys.
- `diverse`: sampling from pure noise with fresh noise at every step (10 steps, strength 1, eta 1):
  the largest spread between variants among the settings tried whose Y-PSNR stayed above bicubic's
  on the photos held out of the model's training (`bench/sr4_diverse_sweep.py`: mean pairwise
  difference 6.64 vs 5.66 for the next, strength 0.85; +0.05 dB over bicubic). Strength 1 with
  eta 0 varies more (11.8) but lost 0.98 dB to bicubic there.

A preset only fills in the settings not given: `steps`, `strength` or `eta` passed explicitly win.
The fingerprint names the resulting settings, not the preset, so `fidelity` keeps the cache keys of
caches warmed with the earlier default, and a preset's values given by hand make the same keys.

This module imports nothing heavy: the engine registry checks a preset name without importing torch.
"""

from __future__ import annotations

import difflib

from sr_augment.errors import EngineParameterError

PRESETS: dict[str, dict] = {
    "fidelity": {"steps": 10, "strength": 0.5, "eta": 0.0},
    "fast": {"steps": 1, "strength": 1.0, "eta": 0.0},
    "diverse": {"steps": 10, "strength": 1.0, "eta": 1.0},
}
"""Preset name -> the sampler settings it sets (those not given explicitly)."""

DEFAULT_PRESET = "fast"
"""The preset used when none is given."""


def preset_problem(preset) -> str | None:
    """What is wrong with `preset` (not a str, or no such preset, with the closest name), or None."""
    if preset is None or (isinstance(preset, str) and preset in PRESETS):
        return None
    names = ", ".join(map(repr, PRESETS))
    if not isinstance(preset, str):
        return f"preset must be one of {names} (or None), got {preset!r}"
    close = difflib.get_close_matches(preset, list(PRESETS), n=1, cutoff=0.5)
    return f"no preset {preset!r}" + (f" (did you mean {close[0]!r}?)" if close else "") + f"; presets: {names}"


def preset_settings(preset: str | None, spec: str = "sr4") -> dict:
    """The settings of `preset` (None: `DEFAULT_PRESET`), or `EngineParameterError` naming the closest preset."""
    problem = preset_problem(preset)
    if problem:
        raise EngineParameterError(f"engine {spec!r}: {problem}")
    return dict(PRESETS[DEFAULT_PRESET if preset is None else preset])
