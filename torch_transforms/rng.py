"""Where a torch `SRAugment` draws `p` and the variant from: torch's global RNG, or its own seeded generator.

With `seed=None` the draws come from torch's global RNG, as every torchvision transform's do. With an
int seed they come from a `torch.Generator` of the transform's own, so nothing else in the program
(`torch.manual_seed`, other transforms, model init) changes them:

- in the main process it is seeded with `seed` at the first draw: same seed, same sequence of calls,
  same draws;
- in a `DataLoader` worker it is seeded with (`seed`, the worker's torch seed `get_worker_info().seed`),
  the way torch seeds each worker's own RNG: workers differ, each epoch differs (torch draws a new base
  seed per epoch; with `persistent_workers=True` each worker's generator simply goes on), and a run
  repeats when the loader's base seed does (`torch.manual_seed(...)` before iterating, or
  `DataLoader(generator=...)`), since torch draws that base seed from the global RNG or that generator;
- a copy (pickle, a `spawn` worker) starts again from the seed, not from where the original was.
"""

from __future__ import annotations

import operator
import os

import numpy as np
import torch


class TransformRNG:
    """The generator of one transform in one process (None for torch's global RNG)."""

    def __init__(self, seed: int | None):
        self.seed = None if seed is None else operator.index(seed)
        self._key: tuple | None = None
        self._generator: torch.Generator | None = None

    def generator(self) -> torch.Generator | None:
        if self.seed is None:
            return None
        info = torch.utils.data.get_worker_info()
        key = (os.getpid(), None if info is None else info.seed)
        if key != self._key:  # first draw here, or a forked worker holding its parent's generator
            self._generator = torch.Generator().manual_seed(self.process_seed(info))
            self._key = key
        return self._generator

    def process_seed(self, info) -> int:
        """`seed` itself in the main process; in a worker, `seed` mixed with the worker's torch seed."""
        if info is None:
            return self.seed % 2**64
        mixed = np.random.SeedSequence([self.seed % 2**64, int(info.seed) % 2**64]).generate_state(1, np.uint64)
        return int(mixed[0]) % 2**63

    def __getstate__(self):
        return {"seed": self.seed, "_key": None, "_generator": None}
