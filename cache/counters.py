"""Hit/miss/generated/damaged counters shared by every process that uses one cache folder.

Why a module of its own: counting must cost a read nothing and must survive processes that end in
every way a training job ends them. So counts are kept in memory and added to a small persistent
store (a diskcache folder, "meta": plain ints and JSON text, never a pickle, read back through
`rows.read_meta`) every `_FLUSH_EVERY` events or `_FLUSH_SECONDS`, on `flush()`,
when the cache is dropped and at process exit; a hit never waits on SQLite for bookkeeping. A read-only
cache keeps its counts in memory only.

Process exit and fork are the subtle part:
- the main process flushes through `atexit`; a multiprocessing child (a DataLoader worker) leaves
  through `os._exit`, which skips atexit, so a multiprocessing `Finalize` flushes there instead. A
  forked child starts with multiprocessing's finalizers cleared, so the Finalize is registered in each
  process that opens a cache (`_register_exit_flush`), not once at import. The `multiprocess` package
  (Hugging Face `datasets.map(num_proc=...)`'s pool) and `billiard` (Celery) are copies of
  multiprocessing with finalizer registries of their own: their children run only theirs at exit, so
  the Finalize goes into each of these that is loaded as well;
- a forked child inherits its parent's unflushed counts (the parent writes them) and its lock (maybe
  held by a parent thread): the child drops the one and renews the other, so nothing is lost or counted
  twice.
Open counters are held weakly (`_LIVE`), so the exit hooks never keep a dropped cache alive.

Lookup tallies: an `SRAugment` adapter's lookups and misses in every process it runs in (the workers
of each epoch get a copy of it, with its `tally_id`), as one JSON row per adapter (`lookups:<id>`:
lookups, misses, whether its `CacheMissRateWarning` was given, when last written), so the warning
(`sr_augment.miss_rate`) sees what short-lived workers counted. At most `MAX_TALLIES` rows are kept,
the least recently written removed first.
"""

from __future__ import annotations

import atexit
import json
import math
import multiprocessing.util
import os
import sqlite3
import sys
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import diskcache

from sr_augment.cache import layout
from sr_augment.cache.disk import CacheWriteError, write_error
from sr_augment.cache.rows import UntrustedRow, read_meta

META_TIMEOUT = 5.0
"""Seconds a counter write waits for the database lock before it is left for the next flush: the
periodic flush runs on the read path, which must never wait long for bookkeeping."""
_FLUSH_EVERY = 256
"""Counted events after which the pending counts are written."""
_FLUSH_SECONDS = 2.0
"""Seconds after which the pending counts are written at the next event."""
COUNTERS = ("hits", "misses", "generated", "damaged", "inserted", "removed")
TALLY_PREFIX = "lookups:"
"""The key prefix of the lookup tallies' rows in `meta` (followed by an adapter's `tally_id`)."""
MAX_TALLIES = 64
"""Lookup-tally rows kept in one cache: a new adapter's row pushes out the least recently written."""


@dataclass(frozen=True)
class Tally:
    """One adapter's lookups and misses in all processes (as written) plus this process's pending ones,
    and whether its miss-rate warning was given."""

    lookups: int = 0
    misses: int = 0
    warned: bool = False


class Counters:
    """This process's pending counts for one cache folder, and the persistent totals in `meta`.

    Args:
        directory: the cache folder (its `meta` folder holds the totals; named in a `CacheWriteError`).
        open_meta: opens the small settings-and-counters store for writing (with `timeout=META_TIMEOUT`),
            on the first flush; None for a read-only cache, whose counts stay in memory.
    """

    def __init__(self, directory: Path, open_meta: Callable[[], diskcache.Cache] | None):
        self._open_meta = open_meta
        self._directory = directory
        self._reset_pending()
        self._stored_tallies: dict[str, Tally] = {}  # as this process last wrote or read them
        self._warned: set[str] = set()  # tallies whose warning this process gave (or was refused)
        self._last_flush = time.monotonic()
        self._lock = threading.Lock()
        _LIVE.add(self)  # flushed at process exit (module level); held weakly, so it can be collected
        _register_exit_flush()

    def count(self, name: str) -> None:
        """Count one event (one of `COUNTERS`); writes the pending counts when a flush is due."""
        with self._lock:
            self._pending[name] += 1
            self._events += 1
            due = self._events >= _FLUSH_EVERY or time.monotonic() - self._last_flush > _FLUSH_SECONDS
        if due:
            self.flush_quietly()  # a counter write that fails (full disk) must never fail a read

    def count_generated(self, engine) -> None:
        """Count one generated result, also per engine (by fingerprint, with its name)."""
        self.count("generated")
        with self._lock:
            entry = self._pending_engines.setdefault(engine.fingerprint, [getattr(engine, "name", "?"), 0])
            entry[1] += 1

    def count_lookups(self, tally_id: str, lookups: int, misses: int) -> None:
        """Add `lookups` (`misses` of them missed) to the tally `tally_id`; written with the counters."""
        with self._lock:
            entry = self._pending_tallies.setdefault(tally_id, [0, 0])
            entry[0] += lookups
            entry[1] += misses

    def tally(self, tally_id: str) -> Tally:
        """The tally `tally_id`: all processes' counts as of this process's last flush, plus its pending
        ones (a read-only cache: this process's only)."""
        with self._lock:
            stored = self._stored_tallies.get(tally_id, Tally())
            lookups, misses = self._pending_tallies.get(tally_id, (0, 0))
            return Tally(stored.lookups + lookups, stored.misses + misses,
                         stored.warned or tally_id in self._warned)

    def claim_warning(self, tally_id: str) -> bool:
        """True once per tally: the caller gives its warning. Recorded in the cache, so the other
        processes of the adapter (later epochs' workers) are refused; where it cannot be recorded
        (read-only, busy or failing), once per process."""
        with self._lock:
            if tally_id in self._warned:
                return False
            self._warned.add(tally_id)
        if self._open_meta is None:
            return True
        key = TALLY_PREFIX + tally_id
        try:
            meta = self._open_meta()
            with meta.transact():
                record = _tally_record(_text(meta, key))
                if record["warned"]:
                    return False
                record.update(warned=True, time=time.time())
                meta.set(key, json.dumps(record))
        except (diskcache.Timeout, CacheWriteError, OSError, sqlite3.Error):
            pass  # the warning is advice: given here, unrecorded
        return True

    def flush(self) -> None:
        """Add this process's pending counters to the persistent ones. What cannot be written stays
        pending: a busy database (lock held past `META_TIMEOUT`) is tried again at the next flush, a
        failing disk raises `CacheWriteError`."""
        if self._open_meta is None:  # read-only: the counts live in memory
            return
        with self._lock:
            pending, engines, tallies = self._pending, self._pending_engines, self._pending_tallies
            self._reset_pending()
            self._last_flush = time.monotonic()
        if not any(pending.values()) and not engines and not tallies:
            return  # nothing to write: open nothing (a dropped cache must not reopen its writer)
        try:
            meta = self._open_meta()
            for name in list(pending):
                if pending[name]:
                    _increment(meta, name, pending[name])
                pending[name] = 0
            for fingerprint in list(engines):
                name, count = engines[fingerprint]
                with meta.transact():
                    seen = _engine_record(_text(meta, f"engine:{fingerprint}"), name)
                    seen["generated"] += count
                    meta.set(f"engine:{fingerprint}", json.dumps(seen))
                del engines[fingerprint]
            if tallies:
                self._write_tallies(meta, tallies)
        except diskcache.Timeout:
            self._restore_pending(pending, engines, tallies)
        except CacheWriteError:
            self._restore_pending(pending, engines, tallies)
            raise
        except (OSError, sqlite3.Error) as exc:
            self._restore_pending(pending, engines, tallies)
            raise write_error(self._directory, exc) from exc

    def _write_tallies(self, meta: diskcache.Cache, tallies: dict) -> None:
        """Add the pending lookup tallies to their rows (each written one is removed from `tallies`);
        this process learns every other process's counts of them on the way."""
        new = False
        for tally_id in list(tallies):
            lookups, misses = tallies[tally_id]
            key = TALLY_PREFIX + tally_id
            with meta.transact():
                text = _text(meta, key)
                record = _tally_record(text)
                new = new or text is None
                record.update(lookups=record["lookups"] + lookups, misses=record["misses"] + misses, time=time.time())
                meta.set(key, json.dumps(record))
            del tallies[tally_id]
            with self._lock:
                self._stored_tallies[tally_id] = Tally(record["lookups"], record["misses"], record["warned"])
        if new:
            _prune_tallies(self._directory, meta)

    def flush_quietly(self) -> None:
        try:
            self.flush()
        except Exception:  # at exit the cache may already be closed or its folder gone
            pass

    def totals(self) -> tuple[dict[str, int], dict[str, dict]]:
        """The persistent counts (all processes, as last flushed) plus this process's pending ones:
        ({counter: n}, {fingerprint: {"name", "generated"}}). Read as plain SQL rows, never unpickled."""
        stored = read_meta(self._directory / layout.META, True if self._open_meta is None else None)
        with self._lock:
            counts = {name: _int(stored.get(name)) + self._pending[name] for name in COUNTERS}
            pending_engines = {fp: list(entry) for fp, entry in self._pending_engines.items()}
        engines = {key[len("engine:"):]: _engine_record(value, "?") for key, value in stored.items()
                   if key.startswith("engine:")}
        for fingerprint, (name, count) in pending_engines.items():
            engines.setdefault(fingerprint, {"name": name, "generated": 0})["generated"] += count
        return counts, engines

    def discard_pending(self) -> None:
        """Forget the counts not written yet (the persistent ones are being cleared)."""
        with self._lock:
            self._reset_pending()

    def after_fork_in_child(self) -> None:
        """A forked child starts with a copy of its parent's unflushed counters (the parent will
        write them) and of its lock (maybe held by a parent thread): drop the one, renew the other."""
        self._lock = threading.Lock()
        self._reset_pending()

    def _restore_pending(self, pending: dict, engines: dict, tallies: dict) -> None:
        with self._lock:
            for name, value in pending.items():
                self._pending[name] += value
            for fingerprint, (name, count) in engines.items():
                self._pending_engines.setdefault(fingerprint, [name, 0])[1] += count
            for tally_id, (lookups, misses) in tallies.items():
                entry = self._pending_tallies.setdefault(tally_id, [0, 0])
                entry[0] += lookups
                entry[1] += misses

    def _reset_pending(self) -> None:
        self._pending = dict.fromkeys(COUNTERS, 0)
        self._pending_engines: dict[str, list] = {}
        self._pending_tallies: dict[str, list[int]] = {}
        self._events = 0

    def __del__(self) -> None:  # a cache dropped without close() still records its counters
        if hasattr(self, "_pending"):
            self.flush_quietly()


def _increment(meta: diskcache.Cache, name: str, count: int) -> None:
    try:
        meta.incr(name, count)
    except TypeError:  # a non-number planted under a counter's name: replaced, never interpreted
        meta.set(name, count)


def _text(meta: diskcache.Cache, key: str):
    try:
        return meta.get(key, default=None)
    except UntrustedRow:  # a planted pickle under an engine's name: replaced, never unpickled
        return None


def _int(value) -> int:
    """A counter read from the (untrusted) metadata: a non-negative finite number, else 0."""
    if type(value) is float and not math.isfinite(value):
        return 0
    return max(0, int(value)) if type(value) in (int, float) else 0


def _engine_record(text, name: str) -> dict:
    """An engine's {"name", "generated"} from its JSON text; a missing or malformed one starts at 0."""
    try:
        seen = json.loads(text)
        if isinstance(seen, dict) and isinstance(seen.get("name"), str) and type(seen.get("generated")) is int:
            return {"name": seen["name"], "generated": seen["generated"]}
    except (TypeError, ValueError, RecursionError):  # RecursionError: deeply nested planted JSON
        pass
    return {"name": name, "generated": 0}


def _tally_record(text) -> dict:
    """A lookup tally's {"lookups", "misses", "warned", "time"} from its JSON text; a missing or
    malformed one starts at 0."""
    record = {"lookups": 0, "misses": 0, "warned": False, "time": 0.0}
    try:
        seen = json.loads(text)
    except (TypeError, ValueError, RecursionError):
        return record
    if isinstance(seen, dict):
        lookups, misses = seen.get("lookups"), seen.get("misses")
        if type(lookups) is int and type(misses) is int and 0 <= misses <= lookups:
            record.update(lookups=lookups, misses=misses, warned=seen.get("warned") is True)
        if type(seen.get("time")) in (int, float) and math.isfinite(seen["time"]):
            record["time"] = float(seen["time"])
    return record


def _prune_tallies(directory: Path, meta: diskcache.Cache) -> None:
    """Keep the `MAX_TALLIES` most recently written lookup tallies (read as plain SQL rows)."""
    stored = read_meta(directory / layout.META)
    keys = [key for key in stored if key.startswith(TALLY_PREFIX)]
    if len(keys) > MAX_TALLIES:
        keys.sort(key=lambda key: _tally_record(stored[key])["time"])
        for key in keys[:len(keys) - MAX_TALLIES]:
            meta.delete(key, retry=True)


_LIVE: weakref.WeakSet[Counters] = weakref.WeakSet()
"""Open counters of this process, held weakly: flushed at exit without being kept alive by it."""


def _flush_all() -> None:
    for counters in list(_LIVE):
        counters.flush_quietly()


atexit.register(_flush_all)
_PROCESS_PACKAGES = ("multiprocessing", "multiprocess", "billiard")
"""multiprocessing and its copies with finalizer and after-fork registries of their own."""
_EXIT_FLUSH_PID: int | None = None
"""The process whose `Finalize`s `_EXIT_FLUSH_IN` lists (None: none registered, in this process)."""
_EXIT_FLUSH_IN: set[str] = set()
"""The packages of `_PROCESS_PACKAGES` that hold this process's `Finalize`."""
_AFTER_FORK_IN: set[str] = set()
"""The packages of `_PROCESS_PACKAGES` whose after-fork registry holds `_after_multiprocessing_fork`
(a registry, like this set, is inherited by forked children)."""


def _register_exit_flush() -> None:
    """A `Finalize` flushing every open counter at this process's exit, in each loaded package of
    `_PROCESS_PACKAGES` that has none from this process yet."""
    global _EXIT_FLUSH_PID
    if _EXIT_FLUSH_PID != os.getpid():
        _EXIT_FLUSH_PID = os.getpid()
        _EXIT_FLUSH_IN.clear()
    for package in _PROCESS_PACKAGES:
        util = sys.modules.get(f"{package}.util")
        if util is None:
            continue
        if package not in _EXIT_FLUSH_IN:
            _EXIT_FLUSH_IN.add(package)
            util.Finalize(None, _flush_all, exitpriority=10)
        if package not in _AFTER_FORK_IN:
            _AFTER_FORK_IN.add(package)
            util.register_after_fork(_LIVE, _after_multiprocessing_fork)  # held weakly: _LIVE lives on


def _after_fork_in_child() -> None:
    """Runs in every forked child (multiprocessing or not), before any of its own code."""
    global _EXIT_FLUSH_PID
    _EXIT_FLUSH_PID = None
    _EXIT_FLUSH_IN.clear()
    for counters in list(_LIVE):
        counters.after_fork_in_child()


def _after_multiprocessing_fork(live) -> None:
    """Runs in a multiprocessing (or multiprocess, billiard) child after it has cleared the finalizers
    it inherited."""
    if live:
        _register_exit_flush()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
_AFTER_FORK_IN.add("multiprocessing")
multiprocessing.util.register_after_fork(_LIVE, _after_multiprocessing_fork)  # held weakly: _LIVE lives on
