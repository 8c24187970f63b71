"""`SRCache`: generated SR images on disk (diskcache), keyed by content and generation settings.

Why these choices:
- diskcache's default `size_limit` is 1 GB and it then evicts silently. SRCache always sets an
  explicit limit (default `DEFAULT_SIZE_LIMIT`) and counts evictions, which `stats()` reports.
- Eviction policy "least-recently-stored": a hit never writes to SQLite (LRU would, on every read).
- A write that meets a locked database is retried a bounded number of times, then raised as
  `CacheWriteError` (diskcache's `retry=True` would loop forever; without retries a write is lost).
- Every record carries a checksum; a damaged one is counted, deleted and (in `get_or_create`)
  regenerated, never returned.
- A record is encoded and verified before its key is published (diskcache writes the value file,
  then inserts the key in one SQLite transaction), so a crash or a full disk mid-write leaves no key
  pointing at a partial value. A value file left half-written by a failed write is deleted
  (`disk.CleanDisk`), and the failure is raised as `CacheWriteError` naming the folder.
- Hit/miss counters: `counters.Counters` (kept in memory, written in batches, fork- and exit-safe).
  Where the cache lives by default and the network-filesystem warning: `filesystem`.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import diskcache
import numpy as np

from sr_augment.cache import codec as _codec
from sr_augment.cache.counters import META_TIMEOUT, Counters
from sr_augment.cache.disk import WRITE_ATTEMPTS, CacheWriteError, CleanDisk, write_error
from sr_augment.cache.filesystem import default_cache_dir, warn_if_network_filesystem
from sr_augment.cache.keys import base_key, entry_key, pixel_digest, variant_seed
from sr_augment.images import ImageInput, to_rgb
from sr_augment.modes import check_mode, engine_input, mode_result

DEFAULT_SIZE_LIMIT = 20 * 2**30
"""20 GiB: about 85,000 512x512 SR images (WebP lossless, ~240 KiB each). Pass `size_limit` to change it."""


class CacheMiss(LookupError):
    """Raised (with `on_miss="error"`) when an image's SR result is not cached; names the key."""


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


class SRCache:
    """SR images on disk, keyed by pixels + engine fingerprint + mode + scale + variant.

    Args:
        directory: cache folder (default: `default_cache_dir()`).
        size_limit: bytes kept before the oldest-stored entries are evicted (counted in `stats()`).
            Remembered in the cache folder: None uses the limit last set there, else
            `DEFAULT_SIZE_LIMIT`, so a limit set by `warm --size-limit` also holds during training.
        codec: "webp" (lossless, the default: smallest and fastest to decode), "png" (lossless) or
            "raw" (fastest hit, about 3x the disk).

    Example:
        >>> import numpy as np, tempfile
        >>> from sr_augment import get_engine
        >>> cache = SRCache(tempfile.mkdtemp())
        >>> image = np.zeros((8, 8, 3), np.uint8)
        >>> cache.get_or_create(image, get_engine("bicubic")).shape
        (32, 32, 3)
        >>> cache.get(image, get_engine("bicubic")) is not None
        True
    """

    def __init__(self, directory: str | os.PathLike | None = None, size_limit: int | None = None,
                 codec: str = _codec.DEFAULT_CODEC):
        if codec not in _codec.CODECS:
            raise ValueError(f"codec must be one of {', '.join(_codec.CODECS)}; got {codec!r}")
        if size_limit is not None and int(size_limit) <= 0:
            raise ValueError(f"size_limit must be a positive number of bytes, got {size_limit}")
        self.directory = Path(directory) if directory is not None else default_cache_dir()
        self.directory.mkdir(parents=True, exist_ok=True)
        warn_if_network_filesystem(self.directory)
        self.codec = codec
        self._meta = diskcache.Cache(str(self.directory / "meta"), timeout=META_TIMEOUT, eviction_policy="none")
        if size_limit is None:
            self.size_limit = int(self._meta.get("size_limit", default=DEFAULT_SIZE_LIMIT, retry=True))
        else:
            self.size_limit = int(size_limit)
            if self._meta.get("size_limit", default=None, retry=True) != self.size_limit:
                self._meta.set("size_limit", self.size_limit, retry=True)
        self._entries = diskcache.Cache(str(self.directory / "entries"), size_limit=self.size_limit,
                                        eviction_policy="least-recently-stored", disk=CleanDisk)
        self._counters = Counters(self._meta, self.directory)

    # -- keys ------------------------------------------------------------------------------------------
    def key(self, image: ImageInput, engine, mode: str = "upscale", variant: int = 0) -> str:
        """The cache key of one (image, engine settings, mode, variant)."""
        return self._request(to_rgb(image), engine, mode, variant).key

    def _request(self, image: np.ndarray, engine, mode: str, variant: int) -> EntryRequest:
        check_mode(mode)
        if int(variant) < 0:
            raise ValueError(f"variant must be >= 0, got {variant}")
        base = base_key(pixel_digest(image), engine.fingerprint, mode, engine.scale)
        return EntryRequest(image, entry_key(base, variant), variant_seed(base, variant))

    # -- reads -----------------------------------------------------------------------------------------
    def get(self, image: ImageInput, engine, mode: str = "upscale", variant: int = 0) -> np.ndarray | None:
        """The cached result, or None on a miss (a damaged entry is deleted and counted as a miss)."""
        return self._lookup(self._request(to_rgb(image), engine, mode, variant))

    def _lookup(self, request: EntryRequest) -> np.ndarray | None:
        record = self._entries.get(request.key, default=None, retry=True)
        if record is not None:
            try:
                image = _codec.decode(record)
                self._counters.count("hits")
                return image
            except _codec.DamagedEntry:
                self._discard_damaged(request.key, record)
        self._counters.count("misses")
        return None

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    # -- writes ----------------------------------------------------------------------------------------
    def put(self, image: ImageInput, engine, result: np.ndarray, mode: str = "upscale", variant: int = 0) -> str:
        """Store a result computed elsewhere; returns its key."""
        request = self._request(to_rgb(image), engine, mode, variant)
        self._store(request, engine, result)
        return request.key

    def _store(self, request: EntryRequest, engine, result: np.ndarray) -> None:
        record = _codec.encode(np.ascontiguousarray(result, dtype=np.uint8), self.codec)
        _codec.decode(record)  # verify before publishing: a bad encode must never become an entry
        if self._add(request.key, record):
            self._counters.count("inserted")
        self._counters.count_generated(engine)

    def _add(self, key: str, record: bytes) -> bool:
        """Publish a record under `key` unless one is there already (the first writer wins: every
        writer of a key computes the same result from the same seed)."""
        disk = self._entries.disk
        for _ in range(WRITE_ATTEMPTS):
            try:
                return self._entries.add(key, record, retry=False)
            except diskcache.Timeout:
                disk.discard_unpublished()
            except (OSError, sqlite3.Error) as exc:
                disk.discard_unpublished()
                raise write_error(self.directory, exc) from exc
        raise write_error(self.directory, TimeoutError(f"the database stayed locked through {WRITE_ATTEMPTS} attempts"))

    def get_or_create(self, image: ImageInput, engine, mode: str = "upscale", variant: int = 0) -> np.ndarray:
        """The cached result, generating and storing it on a miss."""
        return self.get_or_create_many([image], engine, mode, [variant])[0]

    def get_or_create_many(self, images: Sequence[ImageInput], engine, mode: str = "upscale",
                           variants: Sequence[int] | None = None) -> list[np.ndarray]:
        """Results for many (image, variant) pairs; all misses go to the engine in ONE batched call."""
        variants = [0] * len(images) if variants is None else list(variants)
        if len(variants) != len(images):
            raise ValueError(f"got {len(images)} images but {len(variants)} variants")
        requests = [self._request(to_rgb(img), engine, mode, v) for img, v in zip(images, variants)]
        results = [self._lookup(r) for r in requests]
        missing = [i for i, r in enumerate(results) if r is None]
        if missing:
            for i, out in zip(missing, self.generate(engine, [requests[i] for i in missing], mode)):
                results[i] = out
        return results

    def plan(self, images: Sequence[np.ndarray], engine, mode: str, variants: int) -> list[EntryRequest]:
        """The (image, variant) requests not cached yet, for warm: no hit/miss counting, and each
        present entry's checksum is verified (no decode), so a damaged one is removed and redone."""
        requests = [self._request(img, engine, mode, v) for img in images for v in range(variants)]
        return [r for r in requests if not self._intact(r.key)]

    def _intact(self, key: str) -> bool:
        record = self._entries.get(key, default=None, retry=True)
        if record is None:
            return False
        try:
            _codec.check(record)
            return True
        except _codec.DamagedEntry:
            self._discard_damaged(key, record)
            return False

    def _discard_damaged(self, key: str, record: bytes) -> None:
        """Delete the damaged `record` under `key`, unless another process has already replaced it
        with a good one (then that one stays)."""
        with self._entries.transact(retry=True):
            current = self._entries.get(key, default=None)
            deleted = current == record and self._entries.delete(key)
        self._counters.count("damaged")
        if deleted:
            self._counters.count("removed")

    def generate(self, engine, requests: Sequence[EntryRequest], mode: str) -> list[np.ndarray]:
        """Run the engine on the requests in one batch, store and return the results."""
        inputs = [engine_input(r.image, mode, engine.scale) for r in requests]
        outputs = engine.upscale(inputs, [r.seed for r in requests])
        results = []
        for request, out in zip(requests, outputs):
            result = mode_result(out, request.image, mode)
            self._store(request, engine, result)
            results.append(result)
        return results

    # -- bookkeeping -----------------------------------------------------------------------------------
    def flush(self) -> None:
        """Add this process's pending counters to the persistent ones. What cannot be written stays
        pending: a busy database is tried again at the next flush, a failing disk raises
        `CacheWriteError`."""
        self._counters.flush()

    def stats(self) -> CacheStats:
        """Entries, bytes, hits, misses, generated, damaged, evictions and engines seen (all processes)."""
        self.flush()
        counters, engines = self._counters.totals()
        entries = len(self._entries)
        return CacheStats(
            directory=str(self.directory), entries=entries, bytes=int(self._entries.volume()),
            size_limit=self.size_limit, hits=counters["hits"], misses=counters["misses"],
            generated=counters["generated"], damaged=counters["damaged"],
            evictions=max(0, counters["inserted"] - counters["removed"] - entries), engines=engines,
        )

    def clear(self) -> int:
        """Remove every entry and reset the counters; returns the number of entries removed."""
        self._counters.discard_pending()
        removed = self._entries.clear(retry=True)
        limit = self._meta.get("size_limit", default=None, retry=True)
        self._meta.clear(retry=True)
        if limit is not None:  # the limit is a setting, not a counter
            self._meta.set("size_limit", limit, retry=True)
        return removed

    def close(self) -> None:
        try:
            self.flush()
        except CacheWriteError:  # a full disk: the counters are lost, the entries are not
            pass
        finally:
            self._entries.close()
            self._meta.close()

    def __enter__(self) -> "SRCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"SRCache({str(self.directory)!r}, size_limit={self.size_limit}, codec={self.codec!r})"
