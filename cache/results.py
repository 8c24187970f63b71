"""The small values SRCache hands out: stats, the requests `warm` batches, and the miss error."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from sr_augment.errors import CacheMiss  # noqa: F401  (defined in errors, named here too)


@dataclass
class CacheStats:
    directory: str
    entries: int
    bytes: int
    size_limit: int
    hits: int
    misses: int
    generated: int
    damaged: int
    evictions: int
    engines: dict = field(default_factory=dict)
    read_only: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class EntryRequest:
    """One (image, variant) to look up or generate: the normalised pixels, the key their result is
    stored under, and the seed the engine generates it with (derived from the key, so every process and
    machine generates the same result). Made by `SRCache.plan`, consumed by `SRCache.generate`."""

    image: np.ndarray
    key: str
    seed: int
    result_shape: tuple | None = None
    """The shape its result must have (mode and scale decide it): a stored record of another shape is
    refused before it is decoded, so a planted record cannot make a read allocate gigabytes."""


def entry_request(image: np.ndarray, engine, mode: str, variant: int) -> EntryRequest:
    """The request of one normalised image: its key and seed (from the pixels, the engine's fingerprint
    and scale, the mode and the variant) and the shape its result must have."""
    from sr_augment.cache.keys import base_key, entry_key, pixel_digest, variant_seed
    from sr_augment.modes import check_mode

    check_mode(mode)
    if int(variant) < 0:
        raise ValueError(f"variant must be >= 0, got {variant}")
    base = base_key(pixel_digest(image), engine.fingerprint, mode, engine.scale)
    height, width = image.shape[:2]
    factor = int(engine.scale) if mode == "upscale" else 1
    return EntryRequest(image, entry_key(base, variant), variant_seed(base, variant), (height * factor, width * factor, 3))
