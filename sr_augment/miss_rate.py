"""`CacheMissRateWarning`: a pipeline that keeps missing a cache that was warmed.

Each process counts the lookups of each `AugmentCore` and how many missed. Every `MISS_WARNING_LOOKUPS`
lookups the hit rate is checked; under `MISS_WARNING_HIT_RATE`, on a cache that holds entries of the
engine made before (so it was warmed, or earlier processes stored them), it warns once per process:
the pixels SRAugment receives are not the ones that were warmed. The warning is advice: nothing here
ever breaks training.
"""

from __future__ import annotations

import threading
import warnings

from sr_augment.errors import CacheMissRateWarning

MISS_WARNING_LOOKUPS = 200
"""Lookups of one process after which (and every as many more) its hit rate is checked."""
MISS_WARNING_HIT_RATE = 0.05
"""A hit rate under this, on a cache that holds entries of the engine, raises `CacheMissRateWarning`."""


class MissRate:
    """The lookup and miss counts of one `AugmentCore` in one process (tf.data may call from several
    threads at once), and the one warning."""

    def __init__(self):
        self._lock = threading.Lock()
        self.lookups = self.misses = 0
        self.next_check = MISS_WARNING_LOOKUPS
        self.warned = False
        self.held: int | None = None  # the engine's entries the cache held that this process did not make

    def count(self, core, lookups: int, misses: int) -> None:
        """Count `lookups` of `core`, `misses` of them misses; check the hit rate when one is due."""
        with self._lock:
            self.lookups += lookups
            self.misses += misses
            due = not self.warned and self.lookups >= self.next_check
            if due:
                self.next_check = self.lookups + MISS_WARNING_LOOKUPS
            lookups, misses = self.lookups, self.misses
        if due and lookups - misses < MISS_WARNING_HIT_RATE * lookups:
            self._warn(core, lookups, misses)

    def _warn(self, core, lookups: int, misses: int) -> None:
        """Warn once when the cache holds entries of this engine that this process did not make (so
        it was warmed, or earlier processes stored them) and still nearly every lookup misses."""
        if self.held is None:  # computed once per process: the engine's entries made elsewhere
            try:
                stats = core.cache.stats()
                made = stats.engines.get(core.engine.fingerprint, {}).get("generated", 0)
            except Exception:  # the warning is advice: never let it break training
                made = 0
            own = misses if core.on_miss == "generate" else 0
            self.held = max(0, made - own)
        if not self.held or self.warned:
            return
        self.warned = True
        warnings.warn(
            f"SRAugment: {misses} of the {lookups} cache lookups of this process missed, although the cache "
            f"{core.cache.directory} holds about {self.held} entries of engine {core.engine.name!r} made "
            f"before: the pixels SRAugment receives are not the ones that were warmed. Likely cause: a random "
            f"transform before SRAugment (RandomResizedCrop, RandomCrop, a flip, colour jitter), or another "
            f"resize than the warm used (tf.image.resize, Keras Resizing, OpenCV or tensor resizing vs "
            f"`sr-augment warm --resize`). Fix: put SRAugment right after decoding and deterministic resizing "
            f"(random transforms after it), and warm through the pipeline itself: "
            f"SRAugment(...).warm(dataset_before_sraugment).",
            CacheMissRateWarning, stacklevel=3)
