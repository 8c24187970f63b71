"""Out-of-memory back-off: a batch that does not fit on the accelerator is retried in halves, down to
one tile at a time, and the size that fit is kept for the calls that follow (a GPU that ran out once
would run out again). A single tile that still does not fit raises `EngineOutOfMemory` saying what
to change. Outputs do not depend on the batch size (one generator per image), so retrying in
smaller batches returns the same pixels.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

from sr_augment.errors import EngineOutOfMemory, OutOfMemoryBackoffWarning  # noqa: F401  (defined in errors, named here too)


def is_out_of_memory(exc: BaseException) -> bool:
    """torch's OutOfMemoryError (CUDA), or a RuntimeError that says so (MPS, cuDNN, XPU)."""
    import torch

    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", ())
    return isinstance(exc, oom) or (isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())


def free_accelerator_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    mps = getattr(torch, "mps", None)
    if mps is not None and torch.backends.mps.is_available():
        mps.empty_cache()


class BatchBackoff:
    """Runs `run_batch` on slices no larger than `limit`, halving `limit` on out-of-memory."""

    def __init__(self, limit: int):
        self.limit = int(limit)

    def run(self, run_batch: Callable, items: Sequence, seeds: Sequence[int], what: Callable[[object], str]) -> list:
        outputs: list = []
        start = 0
        while start < len(items):
            size = min(self.limit, len(items) - start)
            try:
                outputs.extend(run_batch(list(items[start:start + size]), list(seeds[start:start + size])))
                start += size
                continue
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            # outside the except block: the traceback no longer holds the failed batch's tensors
            free_accelerator_memory()
            if size == 1:
                raise EngineOutOfMemory(f"{what(items[start])} does not fit in accelerator memory even alone "
                                        f"({message}). Use a smaller tile (tile=...), fp16/bf16 (dtype=...), "
                                        f"or free the device.")
            self.limit = max(1, size // 2)
            warnings.warn(f"out of memory at batch size {size} ({message}); retrying with batch size {self.limit}",
                          OutOfMemoryBackoffWarning, stacklevel=2)
        return outputs


def tile_description(engine) -> Callable[[object], str]:
    """What `BatchBackoff.run` says of one tile that does not fit, for a tiled model engine (its name,
    device, dtype and `tile` setting): every model-backed engine reports it the same way."""
    return lambda tile: (f"{engine.name}: one {tile.shape[1]}x{tile.shape[0]} tile on {engine.device} "
                         f"({engine.dtype}, tile={engine.tile})")
