"""`SRCache`: generated SR images on disk (diskcache), keyed by content and generation settings.

Why these choices:
- diskcache's default `size_limit` is 1 GB and it then evicts silently. SRCache always sets an
  explicit limit (default `DEFAULT_SIZE_LIMIT`) and counts evictions, which `stats()` reports.
- Eviction policy "least-recently-stored": a hit never writes to SQLite (LRU would, on every read).
- A write that meets a locked database is retried a bounded number of times, then raised as
  `CacheWriteError` (diskcache's `retry=True` would loop forever; without retries a write is lost).
- The folder's contents are untrusted: reads go through `reader`/`rows` (SQL and value files by
  name shape, never a pickle); a refused row, a damaged record or a lost value file is counted,
  deleted (by rowid, where the cache is writable) and (in `get_or_create`, `warm`) regenerated and
  stored, never returned.
- Reads open no diskcache.Cache: a cache on a read-only mount, another user's folder or a full disk
  serves hits (`read_only`; on a full disk SQLite cannot create a new reader's -shm/-wal files, so the
  read falls back to `immutable=1`, see `rows.open_readonly`); the writers are opened on the first write
  (`writers`). An error of the disk is never read as damage: nothing is deleted for it.
- First writer wins: a writer that finds its key already stored returns the stored pixels, so every
  caller of one key gets the same image.
- A record is encoded and verified before its key is published (diskcache writes the value file,
  then inserts the key in one SQLite transaction), so a crash or a full disk mid-write leaves no key
  pointing at a partial value. A value file left half-written by a failed write is deleted
  (`disk.CleanDisk`), and the failure is raised as `CacheWriteError` naming the folder.
- Hit/miss counters: `counters.Counters` (kept in memory, written in batches, fork- and exit-safe).
  Where the cache lives by default and the network-filesystem warning: `filesystem`.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

import diskcache
import numpy as np

from sr_augment.cache import clearing, entrymeta, layout, rows, writers
from sr_augment.cache import codec as _codec
from sr_augment.cache.counters import META_TIMEOUT, Counters
from sr_augment.cache.disk import WRITE_ATTEMPTS, CacheReadOnly, CacheWriteError
from sr_augment.cache.filesystem import default_cache_dir, warn_if_network_filesystem
from sr_augment.cache.reader import Reader, Row
from sr_augment.cache.results import CacheStats, EntryRequest, entry_request
from sr_augment.images import ImageInput, to_rgb
from sr_augment.modes import mode_result, request_input

log = logging.getLogger("sr_augment.cache")
_READ_ROW = object()
"""`_fetch`'s default: read the key's row (a batch lookup passes the row it read, or None)."""
DEFAULT_SIZE_LIMIT = 20 * 2**30
"""20 GiB: about 85,000 512x512 SR images (WebP lossless, ~240 KiB each). Pass `size_limit` to change it."""


class SRCache:
    """SR images on disk, keyed by pixels + engine fingerprint + mode + scale + variant.

    Args:
        directory: cache folder (default: `default_cache_dir()`).
        size_limit: bytes kept before the oldest-stored entries are evicted (counted in `stats()`).
            Remembered in the cache folder: None uses the limit last set there, else
            `DEFAULT_SIZE_LIMIT`, so a limit set by `warm --size-limit` also holds during training.
        codec: how results are stored: "auto" (the default: raw up to 256x256 pixels, where a hit
            would otherwise spend most of its time decoding, WebP lossless above), "webp" (smallest),
            "png" or "raw" (fastest hit, 2.3-3.2x the disk of WebP). Records of every codec read alike.
        read_only: True opens the cache read-only (hits only; a miss to generate raises
            `CacheReadOnly`); None (the default) does so when this process cannot write the folder.

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
                 codec: str = _codec.DEFAULT_CODEC, read_only: bool | None = None):
        if codec not in _codec.CHOICES:
            raise ValueError(f"codec must be one of {', '.join(_codec.CHOICES)}; got {codec!r}")
        if size_limit is not None and int(size_limit) <= 0:
            raise ValueError(f"size_limit must be a positive number of bytes, got {size_limit}")
        self.directory = Path(directory) if directory is not None else default_cache_dir()
        self.read_only = (not writers.can_write(self.directory)) if read_only is None else bool(read_only)
        if not self.read_only:
            self.directory.mkdir(parents=True, exist_ok=True)
        warn_if_network_filesystem(self.directory)
        self.codec = codec
        self._writers: dict[str, diskcache.Cache] = {}
        self._writers_lock = threading.Lock()
        immutable = True if self.read_only else None  # read-only: SQLite makes no -wal/-shm file either
        self._reader = Reader(self.directory / layout.ENTRIES, immutable)
        stored = rows.read_meta(self.directory / layout.META, immutable).get("size_limit")
        stored = stored if type(stored) is int and stored > 0 else None
        self.size_limit = int(size_limit) if size_limit is not None else stored or DEFAULT_SIZE_LIMIT
        if size_limit is not None and stored != self.size_limit and not self.read_only:
            self._writer(layout.META).set("size_limit", self.size_limit, retry=True)
        self._counters = Counters(self.directory, None if self.read_only else lambda: self._writer(layout.META))

    def _writer(self, name: str) -> diskcache.Cache:
        """The diskcache.Cache of `entries` or `meta`, opened on the first write (`writers`)."""
        if self.read_only:
            raise self._read_only_error()
        with self._writers_lock:
            if name not in self._writers:
                if name == layout.META:
                    settings = dict(timeout=META_TIMEOUT, eviction_policy="none")
                else:
                    settings = dict(size_limit=self.size_limit, eviction_policy="least-recently-stored")
                self._writers[name] = writers.open_writer(self.directory / name, **settings)
                if name == layout.ENTRIES:  # it holds the writer lock now: read the database a clear may have replaced
                    self._reader.reset()
            return self._writers[name]

    @property
    def _entries(self) -> diskcache.Cache:
        return self._writer(layout.ENTRIES)

    def _read_only_error(self, what: str = "store new entries") -> CacheReadOnly:
        return CacheReadOnly(
            f"the sr-augment cache {self.directory} is read-only (this process cannot write it), so it cannot "
            f"{what}: it serves the entries it holds. Warm it where it is writable (`sr-augment warm ... "
            f"--cache-dir DIR`) and copy it here, or use on_miss='passthrough' (bicubic stand-in on a miss).")

    # -- keys ------------------------------------------------------------------------------------------
    def key(self, image: ImageInput, engine, mode: str = "upscale", variant: int = 0) -> str:
        """The cache key of one (image, engine settings, mode, variant)."""
        return self._request(to_rgb(image), engine, mode, variant).key

    def _request(self, image: np.ndarray, engine, mode: str, variant: int) -> EntryRequest:
        return entry_request(image, engine, mode, variant)

    # -- reads -----------------------------------------------------------------------------------------
    def get(self, image: ImageInput, engine, mode: str = "upscale", variant: int = 0) -> np.ndarray | None:
        """The cached result, or None on a miss (a damaged entry is deleted and counted as a miss)."""
        return self._lookup_many([self._request(to_rgb(image), engine, mode, variant)])[0]

    def get_many(self, images: Sequence[ImageInput], engine, mode: str = "upscale",
                 variants: Sequence[int] | None = None) -> list[np.ndarray | None]:
        """`get` for many (image, variant) pairs with one SQLite query: a result or None per pair."""
        variants = [0] * len(images) if variants is None else list(variants)
        if len(variants) != len(images):
            raise ValueError(f"got {len(images)} images but {len(variants)} variants")
        return self._lookup_many([self._request(to_rgb(img), engine, mode, v) for img, v in zip(images, variants)])

    def _lookup_many(self, requests: Sequence[EntryRequest]) -> list[np.ndarray | None]:
        stored = self._reader.rows([r.key for r in requests])
        results: list[np.ndarray | None] = []
        for request in requests:
            image = None
            found = self._fetch(request.key, stored.get(request.key))
            if found is not None:
                try:
                    image = _codec.decode(found[1], request.result_shape)
                except _codec.DamagedEntry as exc:
                    self._discard(request.key, found[0], exc)
            if image is None:
                stored.pop(request.key, None)  # a discarded row: the same key again in this batch misses too
            self._counters.count("misses" if image is None else "hits")
            results.append(image)
        return results

    def _fetch(self, key: str, row=_READ_ROW) -> tuple[Row, bytes] | None:
        """(row, record bytes) stored under `key`, or None. A row refused by shape (pickle, a path out of
        the cache, a link) or whose value file is gone is discarded and reads as absent. `row`: the row
        already read for `key` (None: none is stored); by default it is read here."""
        if row is _READ_ROW:
            row = self._reader.row(key)
        if row is None:
            return None
        try:
            return row, self._reader.data(row)
        except (rows.UntrustedRow, FileNotFoundError) as exc:
            self._discard(key, row, exc)
            return None

    def _discard(self, key: str, row: Row, reason: BaseException) -> None:
        """Count a damaged, untrusted or lost entry and delete its row by rowid (with SQL, never through
        diskcache), unless the cache is read-only or the row was replaced since it was read."""
        self._counters.count("damaged")
        log.warning("sr-augment cache %s: entry %s is unusable (%s: %s)%s", self.directory, key,
                    type(reason).__name__, reason, "" if self.read_only else "; removed")
        if self.read_only:
            return
        try:
            if rows.delete_rows(self.directory / layout.ENTRIES, [(row.rowid, row.filename, row.value)]):
                self._counters.count("removed")
        except (sqlite3.Error, OSError) as exc:  # best effort: a busy database, a full disk
            log.warning("sr-augment cache %s: could not remove entry %s: %s", self.directory, key, exc)

    def __contains__(self, key: str) -> bool:
        return self._reader.row(key) is not None

    def keys(self) -> list[str]:
        """The keys of every stored entry, oldest first: a snapshot read without decoding anything or
        counting a hit or miss. With `record(key)` it lists what the cache holds (tests, audits).

        Example:
            >>> import numpy as np, tempfile
            >>> from sr_augment import get_engine
            >>> cache = SRCache(tempfile.mkdtemp())
            >>> key = cache.put(np.zeros((8, 8, 3), np.uint8), get_engine("bicubic"), np.zeros((32, 32, 3), np.uint8))
            >>> cache.keys() == [key] and key in cache and len(cache) == 1
            True
        """
        return self._reader.keys()

    def record(self, key: str) -> bytes | None:
        """The record stored under `key` (the bytes `add_record` takes; `sr_augment.cache.codec.decode`
        gives its pixels), or None when none is. Not checked or counted as a hit or miss; a row refused
        by shape or whose value file is gone is removed, as a lookup would, and reads as None."""
        found = self._fetch(key)
        return None if found is None else found[1]

    # -- writes ----------------------------------------------------------------------------------------
    def put(self, image: ImageInput, engine, result: np.ndarray, mode: str = "upscale", variant: int = 0) -> str:
        """Store a result computed elsewhere; returns its key."""
        request = self._request(to_rgb(image), engine, mode, variant)
        self._store(request, engine, result, mode)
        return request.key

    def _store(self, request: EntryRequest, engine, result: np.ndarray, mode: str) -> tuple[np.ndarray, bool]:
        """Store `result` under the request's key: (the pixels stored there, whether we stored them).
        The first writer wins: when another writer stored the key first, its pixels are returned
        (the same seed can still give pixels 1 apart, e.g. convolutions differ by batch size). A
        stored row that is damaged or lost its value file is removed and ours stored instead."""
        if self.read_only:
            raise self._read_only_error()
        result = np.ascontiguousarray(result, dtype=np.uint8)
        if request.result_shape is not None and result.shape != request.result_shape:
            raise _codec.DamagedEntry(f"engine {getattr(engine, 'name', engine)!r} returned an image of shape "
                                      f"{result.shape}; mode {mode!r} at scale {engine.scale} needs {request.result_shape}")
        meta = entrymeta.make(engine, mode, request)
        record = _codec.encode(result, self.codec, meta)
        _codec.decode(record)  # verify before publishing: a bad encode must never become an entry
        self._counters.count_generated(engine)
        for _ in range(WRITE_ATTEMPTS):
            if self._add(request.key, record, entrymeta.tag(meta)):
                self._counters.count("inserted")
                return result, True
            found = self._fetch(request.key)  # a lost value file is discarded here
            if found is not None:
                try:
                    return _codec.decode(found[1], request.result_shape), False
                except _codec.DamagedEntry as exc:
                    self._discard(request.key, found[0], exc)
        return result, False

    def _add(self, key: str, record: bytes, tag: str | None = None) -> bool:
        """Publish a record under `key` unless one is there already (`tag`: `entrymeta.tag`)."""
        return writers.add_unless_present(self._entries, self.directory, key, record, tag)

    def add_record(self, key: str, record: bytes) -> bool:
        """Publish a record made elsewhere (import, merge) under `key` unless the key is stored: the key's
        shape is checked and the record fully decoded first. True when this call stored it."""
        if self.read_only:
            raise self._read_only_error()
        if not isinstance(key, str) or not entrymeta.KEY.fullmatch(key):
            raise ValueError(f"{key!r} is not a cache entry key")
        _codec.decode(record)  # DamagedEntry: never published
        tag = entrymeta.tag(entrymeta.of_header(_codec.split(record)[0]))
        if self._add(key, record, tag):
            self._counters.count("inserted")
            return True
        return False

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
        results = self._lookup_many(requests)
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
        found = self._fetch(key)
        if found is None:
            return False
        try:
            _codec.check(found[1])
            return True
        except _codec.DamagedEntry as exc:
            self._discard(key, found[0], exc)
            return False

    def generate(self, engine, requests: Sequence[EntryRequest], mode: str) -> list[np.ndarray]:
        """Run the engine on the requests in one batch, store them and return what the cache holds."""
        return self.generate_counted(engine, requests, mode)[0]

    def generate_counted(self, engine, requests: Sequence[EntryRequest], mode: str) -> tuple[list[np.ndarray], int]:
        """`generate`, and how many results this call stored (the others another writer stored first)."""
        if self.read_only:
            raise self._read_only_error(f"generate {len(requests)} missing entries")
        self._writer(layout.ENTRIES)  # opened before the engine runs: a cache that cannot be written fails first
        inputs = [request_input(engine, r, mode) for r in requests]  # a DegradedEngine makes its own
        outputs = engine.upscale(inputs, [r.seed for r in requests])
        results, stored = [], 0
        for request, out in zip(requests, outputs):
            result, ours = self._store(request, engine, mode_result(out, request.image, mode), mode)
            results.append(result)
            stored += ours
        return results, stored

    # -- bookkeeping -----------------------------------------------------------------------------------
    @property
    def counters(self) -> Counters:
        """This process's counters of the cache (and the adapters' lookup tallies, `Counters.tally`)."""
        return self._counters

    def flush(self) -> None:
        """Add this process's pending counters to the persistent ones. What cannot be written stays
        pending: a busy database is tried again at the next flush, a failing disk raises
        `CacheWriteError`."""
        self._counters.flush()

    def stats(self) -> CacheStats:
        """Entries, bytes, hits, misses, generated, damaged, evictions and engines seen (all processes)."""
        self.flush()
        counters, engines = self._counters.totals()
        entries = len(self)
        return CacheStats(
            directory=str(self.directory), entries=entries, bytes=self._reader.volume(),
            size_limit=self.size_limit, hits=counters["hits"], misses=counters["misses"],
            generated=counters["generated"], damaged=counters["damaged"],
            evictions=max(0, counters["inserted"] - counters["removed"] - entries), engines=engines,
            read_only=self.read_only,
        )

    def clear(self) -> int:
        """Remove every entry and reset the counters; returns the number of entries removed."""
        if self.read_only:
            raise self._read_only_error("be cleared")
        self._counters.discard_pending()
        self._close_handles()
        return clearing.clear_cache(self.directory)  # also a damaged database; keeps the size limit

    def close(self) -> None:
        try:
            self.flush()
        except CacheWriteError:  # a full disk: the counters are lost, the entries are not
            pass
        finally:
            self._close_handles()

    def _close_handles(self) -> None:
        self._reader.reset()
        with self._writers_lock:
            opened, self._writers = list(self._writers.values()), {}
        for writer in opened:
            writer.close()

    def __enter__(self) -> SRCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        return self._reader.count()

    def __repr__(self) -> str:
        return f"SRCache({str(self.directory)!r}, size_limit={self.size_limit}, codec={self.codec!r})"
