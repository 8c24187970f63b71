"""The one stand-in engine of the tests: pure numpy, stochastic, and it counts its calls.

Tests of the cache and of both adapters need an engine whose output depends on the seed (so variants
differ and a stored result can be told from a fresh one), that never equals the bicubic stand-in (so
a test can tell "the engine ran" from "passthrough"), and that records each call's batch size. For a
deterministic engine importable by spec from other processes, see `faults.SlowEngine`.
"""

from __future__ import annotations

import numpy as np

from sr_augment.engines import make_fingerprint


class CountingEngine:
    """Nearest-neighbour upscale XOR seed-dependent noise (every pixel changed); `calls` holds the size
    of each `upscale` batch. `tag` stands for any setting that changes the output (and the key)."""

    name = "counting"

    def __init__(self, scale: int = 2, tag: str = "a"):
        self.scale = scale
        self.fingerprint = make_fingerprint(engine="counting", scale=scale, tag=tag)
        self.calls: list[int] = []

    def upscale(self, images, seeds):
        self.calls.append(len(images))
        out = []
        for image, seed in zip(images, seeds):
            up = np.repeat(np.repeat(image, self.scale, 0), self.scale, 1)
            out.append(up ^ np.random.default_rng(seed).integers(1, 256, up.shape, dtype=np.uint8))
        return out
