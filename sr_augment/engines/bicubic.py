"""Bicubic interpolation (Pillow): the CPU baseline every SR metric is compared against."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sr_augment.engines.base import check_batch, make_fingerprint
from sr_augment.images import bicubic_resize


class BicubicEngine:
    """Deterministic bicubic upscaling; seeds are accepted and ignored (all variants are equal)."""

    name = "bicubic"
    deterministic = True

    def __init__(self, scale: int = 4):
        if int(scale) < 1:
            raise ValueError(f"scale must be a positive integer, got {scale}")
        self.scale = int(scale)
        self.fingerprint = make_fingerprint(engine="bicubic", scale=self.scale, impl="pillow-bicubic")

    def upscale(self, images: Sequence[np.ndarray], seeds: Sequence[int]) -> list[np.ndarray]:
        check_batch(images, seeds)
        return [bicubic_resize(image, self.scale) for image in images]

    def __repr__(self) -> str:
        return f"BicubicEngine(scale={self.scale})"
