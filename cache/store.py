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
- Hit/miss counters are kept in memory and added to a small persistent stats store every
  `_FLUSH_EVERY` events or `_FLUSH_SECONDS`, on `close()`/`stats()` and at process exit, so a hit
  costs no SQLite write.
"""

from __future__ import annotations

import atexit
import multiprocessing.util
import os
import sqlite3
import threading
import time
import weakref
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import diskcache
import numpy as np

from sr_augment.cache import codec as _codec
from sr_augment.cache.disk import WRITE_ATTEMPTS, CacheWriteError, CleanDisk, write_error
from sr_augment.cache.keys import base_key, entry_key, pixel_digest, variant_seed
from sr_augment.images import ImageInput, to_rgb
from sr_augment.modes import check_mode, engine_input, finish

DEFAULT_SIZE_LIMIT = 20 * 2**30
"""20 GiB: about 85,000 512x512 SR images (WebP lossless, ~240 KiB each). Pass `size_limit` to change it."""

_META_TIMEOUT = 5.0
"""Seconds a counter write waits for the database lock before it is left for the next flush: the
periodic flush runs on the read path, which must never wait long for bookkeeping."""
_FLUSH_EVERY = 256
_FLUSH_SECONDS = 2.0
_COUNTERS = ("hits", "misses", "generated", "damaged", "inserted", "removed")


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


def default_cache_dir() -> Path:
    """`SR_AUGMENT_CACHE_DIR`, else the platform's user cache folder (`~/.cache/sr_augment` on Linux)."""
    env = os.environ.get("SR_AUGMENT_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("sr_augment", appauthor=False))


NETWORK_FILESYSTEMS = frozenset({"nfs", "nfs4", "cifs", "smb3", "smbfs", "fuse.sshfs", "lustre", "gpfs",
                                 "beegfs", "ceph", "glusterfs", "fuse.glusterfs", "9p", "afs"})


class NetworkFilesystemWarning(UserWarning):
    """The cache folder is on a network filesystem, where SQLite's locking is not reliable."""


def _mount_table() -> list[tuple[str, str]]:
    """(mount point, filesystem type) pairs from /proc/mounts (empty where there is none)."""
    try:
        with open("/proc/mounts") as fh:
            rows = [line.split() for line in fh]
    except OSError:
        return []
    return [(row[1].replace("\\040", " "), row[2]) for row in rows if len(row) >= 3]


def filesystem_type(path: Path) -> str | None:
    """The filesystem type of the mount that holds `path` (longest matching mount point)."""
    resolved = str(Path(path).resolve())
    best, kind = "", None
    for mount, fstype in _mount_table():
        if (resolved == mount or resolved.startswith(mount.rstrip("/") + "/")) and len(mount) > len(best):
            best, kind = mount, fstype
    return kind


def warn_if_network_filesystem(path: Path) -> None:
    kind = filesystem_type(path)
    if kind in NETWORK_FILESYSTEMS:
        import warnings

        warnings.warn(
            f"sr-augment cache {path} is on a network filesystem ({kind}); SQLite (diskcache) is not safe "
            f"there when several machines write. Put the cache on a local disk (SR_AUGMENT_CACHE_DIR or "
            f"cache_dir=...), one per machine.", NetworkFilesystemWarning, stacklevel=3)


_LIVE: "weakref.WeakSet[SRCache]" = weakref.WeakSet()
"""Open caches of this process, held weakly: flushed at exit without being kept alive by it."""


def _flush_all() -> None:
    for cache in list(_LIVE):
        cache._flush_quietly()


# Counters must survive the process: atexit for the main process, and a multiprocessing Finalize for
# its children (DataLoader workers leave through os._exit, which skips atexit). A forked child starts
# with multiprocessing's finalizers cleared, so the Finalize is registered in each process that opens
# a cache (`_register_exit_flush`), not once at import.
atexit.register(_flush_all)
_FINALIZE_PID: int | None = None


def _register_exit_flush() -> None:
    global _FINALIZE_PID
    if _FINALIZE_PID != os.getpid():
        _FINALIZE_PID = os.getpid()
        multiprocessing.util.Finalize(None, _flush_all, exitpriority=10)


def _after_fork_in_child() -> None:
    global _FINALIZE_PID
    _FINALIZE_PID = None
    for cache in list(_LIVE):
        cache._after_fork_in_child()


def _after_multiprocessing_fork(live) -> None:
    """Runs in a multiprocessing child after it has cleared the finalizers it inherited."""
    if live:
        _register_exit_flush()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
multiprocessing.util.register_after_fork(_LIVE, _after_multiprocessing_fork)  # held weakly: _LIVE lives on


@dataclass(frozen=True)
class _Request:
    """One (image, variant) lookup: the normalised pixels and where their result lives."""

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
        self._meta = diskcache.Cache(str(self.directory / "meta"), timeout=_META_TIMEOUT, eviction_policy="none")
        if size_limit is None:
            self.size_limit = int(self._meta.get("size_limit", default=DEFAULT_SIZE_LIMIT, retry=True))
        else:
            self.size_limit = int(size_limit)
            if self._meta.get("size_limit", default=None, retry=True) != self.size_limit:
                self._meta.set("size_limit", self.size_limit, retry=True)
        self._entries = diskcache.Cache(str(self.directory / "entries"), size_limit=self.size_limit,
                                        eviction_policy="least-recently-stored", disk=CleanDisk)
        self._reset_pending()
        self._last_flush = time.monotonic()
        self._lock = threading.Lock()
        _LIVE.add(self)  # flushed at process exit (module level); held weakly, so it can be collected
        _register_exit_flush()

    # -- keys ------------------------------------------------------------------------------------------
    def key(self, image: ImageInput, engine, mode: str = "upscale", variant: int = 0) -> str:
        """The cache key of one (image, engine settings, mode, variant)."""
        return self._request(to_rgb(image), engine, mode, variant).key

    def _request(self, image: np.ndarray, engine, mode: str, variant: int) -> _Request:
        check_mode(mode)
        if int(variant) < 0:
            raise ValueError(f"variant must be >= 0, got {variant}")
        base = base_key(pixel_digest(image), engine.fingerprint, mode, engine.scale)
        return _Request(image, entry_key(base, variant), variant_seed(base, variant))

    # -- reads -----------------------------------------------------------------------------------------
    def get(self, image: ImageInput, engine, mode: str = "upscale", variant: int = 0) -> np.ndarray | None:
        """The cached result, or None on a miss (a damaged entry is deleted and counted as a miss)."""
        return self._lookup(self._request(to_rgb(image), engine, mode, variant))

    def _lookup(self, request: _Request) -> np.ndarray | None:
        record = self._entries.get(request.key, default=None, retry=True)
        if record is not None:
            try:
                image = _codec.decode(record)
                self._count("hits")
                return image
            except _codec.DamagedEntry:
                self._discard_damaged(request.key, record)
        self._count("misses")
        return None

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    # -- writes ----------------------------------------------------------------------------------------
    def put(self, image: ImageInput, engine, result: np.ndarray, mode: str = "upscale", variant: int = 0) -> str:
        """Store a result computed elsewhere; returns its key."""
        request = self._request(to_rgb(image), engine, mode, variant)
        self._store(request, engine, result)
        return request.key

    def _store(self, request: _Request, engine, result: np.ndarray) -> None:
        record = _codec.encode(np.ascontiguousarray(result, dtype=np.uint8), self.codec)
        _codec.decode(record)  # verify before publishing: a bad encode must never become an entry
        if self._add(request.key, record):
            self._count("inserted")
        self._count("generated")
        with self._lock:
            entry = self._pending_engines.setdefault(engine.fingerprint, [getattr(engine, "name", "?"), 0])
            entry[1] += 1

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

    def plan(self, images: Sequence[np.ndarray], engine, mode: str, variants: int) -> list[_Request]:
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
        self._count("damaged")
        if deleted:
            self._count("removed")

    def generate(self, engine, requests: Sequence[_Request], mode: str) -> list[np.ndarray]:
        """Run the engine on the requests in one batch, store and return the results."""
        inputs = [engine_input(r.image, mode, engine.scale) for r in requests]
        outputs = engine.upscale(inputs, [r.seed for r in requests])
        results = []
        for request, out in zip(requests, outputs):
            result = finish(out, request.image, mode)
            self._store(request, engine, result)
            results.append(result)
        return results

    # -- bookkeeping -----------------------------------------------------------------------------------
    def _count(self, name: str) -> None:
        with self._lock:
            self._pending[name] += 1
            self._events += 1
            due = self._events >= _FLUSH_EVERY or time.monotonic() - self._last_flush > _FLUSH_SECONDS
        if due:
            self._flush_quietly()  # a counter write that fails (full disk) must never fail a read

    def flush(self) -> None:
        """Add this process's pending counters to the persistent ones. What cannot be written stays
        pending: a busy database (lock held past `_META_TIMEOUT`) is tried again at the next flush, a
        failing disk raises `CacheWriteError`."""
        with self._lock:
            pending, engines = self._pending, self._pending_engines
            self._reset_pending()
            self._last_flush = time.monotonic()
        try:
            for name in list(pending):
                if pending[name]:
                    self._meta.incr(name, pending[name])
                pending[name] = 0
            for fingerprint in list(engines):
                name, count = engines[fingerprint]
                with self._meta.transact():
                    seen = self._meta.get(("engine", fingerprint), default={"name": name, "generated": 0})
                    seen["generated"] += count
                    self._meta.set(("engine", fingerprint), seen)
                del engines[fingerprint]
        except diskcache.Timeout:
            self._restore_pending(pending, engines)
        except (OSError, sqlite3.Error) as exc:
            self._restore_pending(pending, engines)
            raise write_error(self.directory, exc) from exc

    def _restore_pending(self, pending: dict, engines: dict) -> None:
        with self._lock:
            for name, value in pending.items():
                self._pending[name] += value
            for fingerprint, (name, count) in engines.items():
                self._pending_engines.setdefault(fingerprint, [name, 0])[1] += count

    def _after_fork_in_child(self) -> None:
        """A forked child starts with a copy of its parent's unflushed counters (the parent will
        write them) and of its lock (maybe held by a parent thread): drop the one, renew the other."""
        self._lock = threading.Lock()
        self._reset_pending()

    def _reset_pending(self) -> None:
        self._pending = dict.fromkeys(_COUNTERS, 0)
        self._pending_engines: dict[str, list] = {}
        self._events = 0

    def _flush_quietly(self) -> None:
        try:
            self.flush()
        except Exception:  # at exit the cache may already be closed or its folder gone
            pass

    def __del__(self) -> None:  # a cache dropped without close() still records its counters
        if hasattr(self, "_pending"):
            self._flush_quietly()

    def stats(self) -> CacheStats:
        """Entries, bytes, hits, misses, generated, damaged, evictions and engines seen (all processes)."""
        self.flush()
        counters = {name: int(self._meta.get(name, default=0, retry=True)) for name in _COUNTERS}
        entries = len(self._entries)
        engines = {}
        for key in self._meta.iterkeys():
            if isinstance(key, tuple) and key[0] == "engine":
                engines[key[1]] = self._meta.get(key)
        return CacheStats(
            directory=str(self.directory), entries=entries, bytes=int(self._entries.volume()),
            size_limit=self.size_limit, hits=counters["hits"], misses=counters["misses"],
            generated=counters["generated"], damaged=counters["damaged"],
            evictions=max(0, counters["inserted"] - counters["removed"] - entries), engines=engines,
        )

    def clear(self) -> int:
        """Remove every entry and reset the counters; returns the number of entries removed."""
        with self._lock:
            self._reset_pending()
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
