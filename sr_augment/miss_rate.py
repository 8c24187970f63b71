"""`CacheMissRateWarning`: a pipeline that keeps missing a cache that was warmed.

The count is the adapter's, over every process it runs in: a DataLoader without persistent workers
starts new workers each epoch, each with a copy of the adapter, and a small dataset gives each of them
too few lookups to judge on their own. So each lookup is added to the cache's tally of the adapter
(`Counters.count_lookups`, keyed by the adapter's `tally_id`, which its copies share), which is
written with the cache's counters, and at once when a process's last `SUSPECT_FLUSH_LOOKUPS` lookups
nearly all missed (a healthy pipeline writes nothing extra). Once the tally holds
`MISS_WARNING_LOOKUPS` lookups with a hit rate under `MISS_WARNING_HIT_RATE`, on a cache that holds
entries of the engine it did not make (so it was warmed, or earlier runs stored them), the warning is
given once per adapter: the process that claims it in the cache gives it, no other process of the
adapter does (a read-only cache keeps counts in memory only: there the count and the warning are per
process). The warning is advice: nothing here ever breaks training.
"""

from __future__ import annotations

import threading
import warnings

from sr_augment.errors import CacheMissRateWarning

MISS_WARNING_LOOKUPS = 200
"""Lookups of one adapter (all its processes together) before its hit rate is judged."""
MISS_WARNING_HIT_RATE = 0.05
"""A hit rate under this, on a cache that holds entries of the engine, raises `CacheMissRateWarning`."""
SUSPECT_FLUSH_LOOKUPS = 8
"""Lookups of one process, nearly all of them misses, after which the cache's counts are written at
once, so that short-lived workers add up before they end."""


def nearly_all_missed(lookups: int, misses: int) -> bool:
    """True when the hits of `lookups` are under `MISS_WARNING_HIT_RATE` of them."""
    return lookups > 0 and lookups - misses < MISS_WARNING_HIT_RATE * lookups


class MissRate:
    """The miss-rate bookkeeping of one `AugmentCore` in one process (tf.data may call from several
    threads at once), and the one warning."""

    def __init__(self):
        self._lock = threading.Lock()
        self.unwritten = [0, 0]  # lookups and misses since this process last wrote the tally early
        self.warned = False
        self.held: int | None = None  # the engine's entries the cache held that this adapter did not make

    def count(self, core, lookups: int, misses: int) -> None:
        """Count `lookups` of `core`, `misses` of them misses; warn when the adapter's tally says so."""
        if lookups <= 0:
            return
        counters = core.cache.counters
        counters.count_lookups(core.tally_id, lookups, misses)
        with self._lock:
            if self.warned:
                return
            self.unwritten[0] += lookups
            self.unwritten[1] += misses
            write = self.unwritten[0] >= SUSPECT_FLUSH_LOOKUPS and nearly_all_missed(*self.unwritten)
            if self.unwritten[0] >= SUSPECT_FLUSH_LOOKUPS:
                self.unwritten = [0, 0]
        if write:
            counters.flush_quietly()  # the other processes of the adapter see these now
        tally = counters.tally(core.tally_id)
        if not tally.warned and tally.lookups >= MISS_WARNING_LOOKUPS and nearly_all_missed(tally.lookups, tally.misses):
            self._warn(core, counters, tally)

    def _warn(self, core, counters, tally) -> None:
        """Warn when the cache holds entries of this engine that this adapter did not make (so it was
        warmed, or earlier runs stored them) and still nearly every lookup misses: once per adapter."""
        generated = core.on_miss == "generate"
        with self._lock:
            if self.warned:
                return
            if self.held is None:  # computed once per process: the engine's entries made elsewhere
                try:
                    made = counters.totals()[1].get(core.engine.fingerprint, {}).get("generated", 0)
                except Exception:  # the warning is advice: never let it break training
                    made = 0
                self.held = max(0, made - (tally.misses if generated else 0))
            if not self.held:
                return
            self.warned = True
        if not counters.claim_warning(core.tally_id):  # another process of this adapter gave it
            return
        added = (f" With on_miss='generate' each miss was generated and stored: this pipeline has added "
                 f"{tally.misses} entries to the cache that it will hardly ever look up again." if generated else "")
        warnings.warn(
            f"SRAugment missed {tally.misses} of its {tally.lookups} cache lookups (all processes it ran in, "
            f"DataLoader workers included), although the cache {core.cache.directory} holds about {self.held} "
            f"entries of engine {core.engine.name!r} made before: the pixels SRAugment receives are not the "
            f"ones that were warmed.{added} Likely cause: a random transform before SRAugment "
            f"(RandomResizedCrop, RandomCrop, a flip, colour jitter), or another resize than the warm used "
            f"(tf.image.resize, Keras Resizing, OpenCV or tensor resizing vs `sr-augment warm --resize`). Fix: "
            f"move SRAugment before the random transforms, right after decoding and deterministic resizing, "
            f"and warm through the pipeline itself: SRAugment(...).warm(dataset_before_sraugment). See the "
            f"docs: Explanation, Where SRAugment goes.",
            CacheMissRateWarning, stacklevel=4)
