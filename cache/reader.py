"""Read-only SQL access to one diskcache folder: what every read of the cache goes through.

Why not diskcache.Cache: it writes on open (so a read-only or full disk could not serve hits) and
unpickles what it reads (see `rows`). Connections are per thread and per process (an SQLite connection
must not cross a fork), opened lazily and again while nothing is stored yet.

On a full disk a connection is the immutable fallback (`rows.open_readonly`): it serves what the database
held when it was opened but sees no later write, and could meet a page a checkpoint is rewriting. So it
is reopened (`mode=ro` first) every `FALLBACK_SECONDS`, and a query that fails on it is retried once on
a fresh connection before anything is reported.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import NamedTuple

from sr_augment.cache import rows

_BATCH = 500
"""Keys per `IN (...)` query: under SQLite's bound-parameter limit (999 before 3.32)."""
FALLBACK_SECONDS = 5.0
"""How long a full disk's immutable fallback connection is used before a normal one is tried again."""


class Row(NamedTuple):
    rowid: int
    mode: int
    filename: object
    value: object


class Reader:
    def __init__(self, folder: Path, immutable: bool | None = None):
        self.folder, self.immutable = Path(folder), immutable
        self._local = threading.local()
        self._opened: list[tuple[int, sqlite3.Connection]] = []
        self._lock = threading.Lock()

    def _con(self) -> sqlite3.Connection | None:
        local = self._local
        if getattr(local, "pid", None) != os.getpid() or local.con is None or (
                local.fallback_until is not None and time.monotonic() > local.fallback_until):
            self._drop_local()
            con, fallback = rows.open_readonly(self.folder, self.immutable)
            local.pid, local.con = os.getpid(), con
            local.fallback_until = time.monotonic() + FALLBACK_SECONDS if fallback else None
            if con is not None:
                with self._lock:
                    self._opened.append((local.pid, con))
        return local.con

    def _drop_local(self) -> None:
        """Close this thread's connection (a full disk's fallback being replaced)."""
        local = self._local
        con = getattr(local, "con", None)
        if con is not None and getattr(local, "pid", None) == os.getpid():
            with self._lock:
                self._opened = [(pid, c) for pid, c in self._opened if c is not con]
            con.close()
        local.con, local.fallback_until = None, None

    @property
    def fallback(self) -> bool:
        """Whether this thread reads through a full disk's immutable fallback connection."""
        return getattr(self._local, "fallback_until", None) is not None

    def _query(self, sql: str, args=()) -> list:
        for attempt in (0, 1):
            con = self._con()
            if con is None:
                return []
            try:
                return con.execute(sql, args).fetchall()
            except sqlite3.DatabaseError as exc:
                if attempt == 0 and self.fallback:  # a stale immutable view: reopen once, then judge
                    self._drop_local()
                    continue
                raise rows.query_error(self.folder, exc) from exc
        return []  # not reached

    def row(self, key: str) -> Row | None:
        """The row of the text key `key` (a pickled key is never matched, so never unpickled)."""
        found = self._query("SELECT rowid, mode, filename, value FROM Cache WHERE key = ? AND raw = 1", (key,))
        return Row(*found[0]) if found else None

    def rows(self, keys) -> dict[str, Row]:
        """The rows of the text keys `keys` that are stored, by key: one query per `_BATCH` keys, so a
        batch lookup costs one SQLite round trip, not one per image."""
        keys = list(dict.fromkeys(keys))
        found: dict[str, Row] = {}
        for start in range(0, len(keys), _BATCH):
            chunk = keys[start:start + _BATCH]
            marks = ", ".join("?" * len(chunk))
            for key, *row in self._query(f"SELECT key, rowid, mode, filename, value FROM Cache WHERE key IN ({marks}) "
                                         f"AND raw = 1", chunk):
                found[key] = Row(*row)
        return found

    def keys(self) -> list[str]:
        """Every stored text key, oldest first (a pickled key is never read, so never unpickled)."""
        return [key for (key,) in self._query("SELECT key FROM Cache WHERE raw = 1 ORDER BY rowid")
                if isinstance(key, str)]

    def data(self, row: Row) -> bytes:
        """The bytes a row stores; `UntrustedRow` for a refused shape, FileNotFoundError for a lost file."""
        return rows.row_value(self.folder, row.mode, row.filename, row.value)

    def count(self) -> int:
        found = self._query("SELECT COUNT(*) FROM Cache")
        return int(found[0][0]) if found else 0

    def volume(self) -> int:
        """Bytes on disk as diskcache counts them: database pages plus value-file sizes."""
        pages = self._query("PRAGMA page_count")
        page_size = self._query("PRAGMA page_size")
        files = self._query("SELECT COALESCE(SUM(CASE WHEN typeof(size) = 'integer' THEN size END), 0) FROM Cache")
        return (int(pages[0][0]) * int(page_size[0][0]) if pages else 0) + (int(files[0][0]) if files else 0)

    def reset(self) -> None:
        """Close this process's connections (the database was replaced, or the cache is closed)."""
        with self._lock:
            opened, self._opened = self._opened, []
        for pid, con in opened:
            if pid == os.getpid():
                con.close()
        self._local = threading.local()
