"""Emptying a cache, whatever state it is in: the one way out of a damaged database.

Why files, not diskcache's `clear()`: a truncated or garbled database cannot be opened by diskcache,
and a tampered one must not be (see `rows`). So `clear_cache` removes the cache's own files only: the
two databases (with their -wal/-shm files) and the value files by name shape, never following a link
and never touching anything else in the folder; the size limit, a setting, is kept when readable.
"""

from __future__ import annotations

import os
import re
import sqlite3
from pathlib import Path

from diskcache.core import DBNAME

from sr_augment.cache import layout, rows, writers
from sr_augment.cache.counters import META_TIMEOUT
from sr_augment.cache.disk import CacheWriteError

FOLDERS = layout.FOLDERS
"""The diskcache folders of a cache."""


_HEX2 = re.compile(r"[0-9a-f]{2}")


def planted_links(folder: Path) -> list[str]:
    """Relative names of the symbolic links in a diskcache folder's value tree where diskcache would make
    a value folder (`xx`, `xx/yy`) or a value file (`xx/yy/<hex>.val`): diskcache never makes a link, and a
    writer following one would write outside the cache. Found without following any link."""
    folder, found = Path(folder), []

    def scan(relative: str, depth: int) -> None:
        try:
            with os.scandir(folder / relative if relative else folder) as entries:
                children = sorted(entries, key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError):
            return
        for entry in children:
            name = f"{relative}/{entry.name}" if relative else entry.name
            if depth < 2 and _HEX2.fullmatch(entry.name):
                if entry.is_symlink():
                    found.append(name)
                elif entry.is_dir(follow_symlinks=False):
                    scan(name, depth + 1)
            elif depth == 2 and rows.VALUE_FILE.fullmatch(name) and entry.is_symlink():
                found.append(name)

    scan("", 0)
    return found


def remove_planted_links(folder: Path, names) -> int:
    """Remove the links `planted_links` found (each link itself, never its target); returns how many."""
    removed = 0
    for name in names:
        path = Path(folder) / name
        if path.is_symlink():
            try:
                os.unlink(path)  # unlink never follows a link; its folders were checked not to be links
                removed += 1
            except FileNotFoundError:
                pass
    return removed


def size_limit_of(directory: Path):
    """The size limit stored in a cache folder, or None (none stored, or unreadable)."""
    try:
        limit = rows.read_meta(Path(directory) / layout.META).get("size_limit")
    except rows.DatabaseDamaged:
        return None
    return limit if type(limit) is int and limit > 0 else None


def remove_cache_files(directory: Path) -> int:
    """Remove the cache's own files under `directory`; returns the entries its database held (0 if
    it could not be read). A folder that is a symbolic link is removed as a link (never followed).
    Holds the cache's writer lock exclusive: `writers.CacheInUse` (nothing removed) while a writer runs.
    Anything but a regular file planted as the lock file is removed first (`writers.remove_bad_lock`)."""
    writers.remove_bad_lock(directory)
    with writers.exclusive(directory):
        return _remove_cache_files(Path(directory))


def _remove_cache_files(directory: Path) -> int:
    removed = rows.count_rows(directory / layout.ENTRIES)
    for name in FOLDERS:
        folder = directory / name
        if folder.is_symlink():
            os.unlink(folder)  # the link itself, not what it points to
            continue
        if not folder.is_dir():
            continue
        remove_planted_links(folder, planted_links(folder))
        for value_file in list(rows.iter_value_files(folder)):
            rows.remove_value_file(folder, value_file)
        for suffix in ("", "-wal", "-shm", "-journal"):
            try:
                os.unlink(folder / f"{DBNAME}{suffix}")  # unlink never follows a link
            except FileNotFoundError:
                pass
    return removed


def clear_cache(directory: Path) -> int:
    """Empty the cache at `directory` whatever its state, keeping its size limit; returns the entries
    removed (0 when its database could not be read). Refused with `writers.CacheInUse` while another
    process writes to it (its writer lock is held): clearing under a writer would lose its entries and
    leave its value files behind, unnamed. A directory, FIFO or link planted as the lock file is removed
    (no writer can hold a lock on it: each refuses it), so a clear recovers from that too."""
    writers.remove_bad_lock(directory)
    with writers.exclusive(directory):  # a writer running: `writers.CacheInUse` naming it, nothing removed
        limit = size_limit_of(directory)
        removed = _remove_cache_files(Path(directory))
        if limit is not None:
            try:
                meta = writers.open_writer(Path(directory) / layout.META, timeout=META_TIMEOUT, eviction_policy="none")
                try:
                    meta.set("size_limit", limit, retry=True)
                finally:
                    meta.close()
            except (OSError, sqlite3.Error) as exc:  # a full disk: the entries are gone (as asked), say so
                cause = exc.__cause__ or exc
                raise CacheWriteError(f"removed {removed} entries from {directory}, but could not store its size limit "
                                      f"({limit} bytes) again: {type(cause).__name__}: {cause}. Pass "
                                      f"`--size-limit {limit}` to the next warm.") from exc
    return removed
