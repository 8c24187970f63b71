"""The `Engine` contract every SR backend implements, and the errors engines raise.

An engine maps a batch of uint8 HWC RGB images to their super-resolved versions, one seed per image.
Its `fingerprint` names everything that changes the output (weights, sampler, steps, dtype...): the
cache key includes it, so changing any generation setting can never return a stale image.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from sr_augment.errors import DeterministicEngineWarning, EngineSpecError, EngineUnavailable  # noqa: F401  (defined in errors, named here too)


@runtime_checkable
class Engine(Protocol):
    name: str
    """Short label shown in `sr-augment info` and progress bars."""
    scale: int
    """Output size / input size."""
    fingerprint: str
    """Canonical description of everything that changes the output (part of every cache key)."""

    def upscale(self, images: Sequence[np.ndarray], seeds: Sequence[int]) -> list[np.ndarray]:
        """Super-resolve uint8 HWC RGB images; same (image, seed) -> same sample, whatever the batch (its
        noise comes from its own seed). Pixels: identical in the same configuration (device, dtype, thread
        count, batch); a float engine's last rounding may put a pixel 1 grey level apart under another
        thread count, batch or CPU. The cache keeps one answer per key, the first writer's."""
        ...

    # Optional: `prepare_input(image, mode, *, seed, variant) -> np.ndarray`, for an engine that makes its own
    # input from the image as the cache keys it (`degrade.DegradedEngine`: a seeded degradation for variants
    # > 0). Where cache entries are generated (`SRCache.generate`, the Ray actors) `modes.request_input` calls
    # it instead of `modes.engine_input`; it must return what `engine_input` returns for variant 0's size.


def make_fingerprint(**fields) -> str:
    """Canonical JSON of the fields, so equal settings give byte-equal fingerprints."""
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)


def check_batch(images: Sequence[np.ndarray], seeds: Sequence[int]) -> None:
    """Validate the arguments of `Engine.upscale` with errors that say what is wrong."""
    if len(images) != len(seeds):
        raise ValueError(f"upscale got {len(images)} images but {len(seeds)} seeds")
    for i, image in enumerate(images):
        if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3):
            shape = getattr(image, "shape", None)
            dtype = getattr(image, "dtype", type(image).__name__)
            raise ValueError(f"upscale image {i}: expected uint8 HWC RGB, got {dtype} of shape {shape}")


def check_engine_spec(spec) -> Engine | str:
    """An engine argument as `get_engine` takes it: an `Engine` object (returned unchanged) or a name,
    folder, hub id or "package.module:Class" (returned as a str); anything else is a TypeError."""
    if isinstance(spec, str) or hasattr(spec, "__fspath__"):
        return str(spec)
    if isinstance(spec, Engine):
        return spec
    raise TypeError(f"engine must be a name, a folder, a hub id or an Engine object, got {type(spec).__name__}")
