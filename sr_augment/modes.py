"""The two label-preserving modes: what the engine is fed, and how its output becomes the result.

- `upscale`: the input is low-resolution; the result is its SR image (`scale` x the input).
- `resynthesize`: the input is any image; it is downscaled by `scale` (antialiased bicubic) and
  super-resolved back, then resized to exactly the input's size when `scale` does not divide it.
  Diffusion invents new high-frequency detail: a shape-preserving augmentation.
"""

from __future__ import annotations

import numpy as np

from sr_augment.images import resize

MODES = ("upscale", "resynthesize")


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    return mode


def engine_input(image: np.ndarray, mode: str, scale: int) -> np.ndarray:
    """The low-resolution image the engine super-resolves for this mode."""
    if check_mode(mode) == "upscale":
        return image
    height, width = image.shape[:2]
    return resize(image, (max(1, round(height / scale)), max(1, round(width / scale))))


def request_input(engine, request, mode: str) -> np.ndarray:
    """What `engine` is fed for one `EntryRequest` (where cache entries are generated): the engine's own
    `prepare_input(image, mode, seed=, variant=)` when it makes its inputs itself (`DegradedEngine`: a
    seeded degradation for variants > 0), else `engine_input`."""
    prepare = getattr(engine, "prepare_input", None)
    if prepare is None:
        return engine_input(request.image, mode, engine.scale)
    from sr_augment.cache.entrymeta import variant_of

    return prepare(request.image, mode, seed=request.seed, variant=variant_of(request.key))


def mode_result(sr: np.ndarray, image: np.ndarray, mode: str) -> np.ndarray:
    """The engine's output `sr` for input `image` turned into the mode's result (upscale: `sr` itself;
    resynthesize: `sr` resized to the input's size)."""
    if mode == "resynthesize":
        return resize(sr, image.shape[:2])
    return sr


