"""Opening a cache folder for writing, and only when something is written.

Why a module of its own: diskcache's `Cache()` writes on open (its Settings table, pragmas, WAL files),
so a read-only or full disk cannot even be opened through it, and it applies Settings values from the
database as PRAGMA text. So readers never open one (see `rows`), and a writer is opened on the first
write, after two things diskcache leaves out: its Settings are checked (`rows.check_settings`), and its
folder and database are created with the modes the umask asks for (diskcache makes its folder 0o755 and
SQLite its database 0o644 whatever the umask, which locks a group out of a team cache).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shlex
import shutil
import sqlite3
import stat
import time
import weakref
from pathlib import Path

import diskcache
from diskcache.core import DBNAME

from sr_augment.cache import layout, rows
from sr_augment.cache.disk import WRITE_ATTEMPTS, CacheWriteError, SafeDisk, too_large, write_error
from sr_augment.errors import CacheInUse  # noqa: F401  (defined in errors, named here too)

LOCK_NAME = layout.WRITERS_LOCK
"""The advisory lock file (fcntl.flock) in a cache folder: every process with the cache's entries open
for writing (warm, import, merge, an adapter generating misses) holds it shared until it closes them;
`clear` holds it exclusive, so it refuses while any writer runs and no writer starts while it clears.
`verify` takes it exclusive (without waiting) to tell orphan value files from writes in flight. The file
is created on the first write and never removed (removing a lock file others hold open breaks the lock);
a read-only cache has none, and needs none: nothing writes it."""
LOCK_WAIT = 60.0
"""Seconds a writer waits for a `clear` (or `verify`'s orphan scan) holding the lock before it gives up."""
_LOCK_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)


def can_write(directory: Path) -> bool:
    """Whether this process can write the cache at `directory`: the folder (or the nearest existing
    parent, for a cache not made yet) and any diskcache folder and database in it."""
    directory = Path(directory)
    probe = directory
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    paths = [probe] + [directory / sub / name for sub in layout.FOLDERS for name in ("", DBNAME)]
    return all(writable(path) for path in paths if path.exists())


def writable(path: Path) -> bool:
    """os.access by the effective user (the one the kernel checks when SQLite opens the file)."""
    return os.access(path, os.W_OK, effective_ids=os.access in os.supports_effective_ids)


def _create_with_umask(folder: Path) -> None:
    """Make the folder and an empty database file (SQLite reads an empty file as an empty database)
    ourselves, so both get 0o777/0o666 masked by the umask; SQLite gives its -wal/-shm files the
    database's mode, diskcache's value files and hex folders already follow the umask."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(folder / DBNAME, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666))
    except FileExistsError:
        pass


class _LockedCache(diskcache.Cache):
    """A diskcache.Cache that holds its cache's writer lock (shared) until it is closed (or collected)."""

    _release = None

    def close(self) -> None:
        try:
            super().close()
        finally:
            release, self._release = self._release, None
            if release is not None:
                release()  # closes our descriptor; a forked child's copy keeps the lock while it lives


def open_writer(folder: Path, lock: bool | None = None, **settings) -> diskcache.Cache:
    """A diskcache.Cache on `folder` (SafeDisk), after the checks above. Raises `DatabaseDamaged`
    for a damaged or tampered database and `CacheWriteError` when the folder cannot be written.
    `lock` (default: for `entries`): hold the cache's writer lock (`LOCK_NAME`) until it is closed;
    `CacheInUse` when a `clear` holds it longer than `LOCK_WAIT`."""
    folder = Path(folder)
    lock = folder.name == layout.ENTRIES if lock is None else lock
    fd = None
    try:
        rows.refuse_links(folder)  # before anything is created: a planted link must not be followed
        if lock:
            rows.cache_root(folder).mkdir(parents=True, exist_ok=True)
            fd = hold_shared(rows.cache_root(folder))  # before anything is created: a clear may be running
        _create_with_umask(folder)
        rows.check_settings(folder)
        if fd is None:
            return diskcache.Cache(str(folder), disk=SafeDisk, **settings)
        cache = _LockedCache(str(folder), disk=SafeDisk, **settings)
        cache._release, fd = weakref.finalize(cache, os.close, fd), None
        return cache
    except (rows.DatabaseDamaged, CacheWriteError):  # its message names the folder (a planted lock: the file and the fix)
        raise
    except sqlite3.OperationalError as exc:  # locked, read-only, disk full
        raise write_error(rows.cache_root(folder), exc) from exc
    except sqlite3.DatabaseError as exc:  # not a database, malformed
        raise rows.damaged(folder, str(exc)) from exc
    except OSError as exc:
        raise write_error(rows.cache_root(folder), exc) from exc
    finally:
        if fd is not None:  # not handed to a cache: opening failed
            os.close(fd)


def _open_lock(directory: Path, create: bool) -> int | None:
    """A descriptor of the cache's lock file (read-only: flock needs no write access, so a team cache's
    members share one file), created when missing if `create`, else None when missing. A link planted in
    its place is removed (never followed) and the file made; anything else but a regular file (a directory,
    a FIFO: opened without blocking, if at all) is refused with a `CacheWriteError` naming it and the fix."""
    path = Path(directory) / LOCK_NAME
    for _ in range(3):
        problem = lock_problem(directory, links=False)
        if problem:  # never opened: opening a device or a FIFO can have effects of its own
            raise _bad_lock(directory, problem)
        try:
            fd = os.open(path, _LOCK_FLAGS | (os.O_CREAT if create else 0), 0o666)
        except FileNotFoundError:
            if create:
                raise
            return None
        except OSError as exc:
            if exc.errno in (errno.EISDIR, errno.ENXIO, errno.EOPNOTSUPP):  # replaced since it was looked at
                raise _bad_lock(directory, lock_problem(directory, links=False) or f"{path} cannot be opened "
                                f"as a file ({os.strerror(exc.errno)})") from None
            if exc.errno != errno.ELOOP or not create:
                raise
            os.unlink(path)  # the planted link itself
            continue
        mode = os.fstat(fd).st_mode
        if stat.S_ISREG(mode):
            return fd
        os.close(fd)
        raise _bad_lock(directory, f"{path} is {_kind(mode)}, not a regular file")
    raise OSError(errno.ELOOP, f"{path} keeps being replaced by a symbolic link")


def _kind(mode: int) -> str:
    return ("a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a socket"
            if stat.S_ISSOCK(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else
            "a symbolic link" if stat.S_ISLNK(mode) else "not a regular file")


def lock_kind(directory: Path, links: bool = True) -> str | None:
    """What sits where the cache's writer lock file belongs when it is not a regular file ("a directory",
    "a FIFO", ...), else None (absent, or a regular file). Looked at with lstat only (never opened, never
    followed). `links`: count a symbolic link too (a writer replaces one by the file, never following it;
    `verify` reports it as planted)."""
    try:
        mode = os.lstat(Path(directory) / LOCK_NAME).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None
    if stat.S_ISREG(mode) or (stat.S_ISLNK(mode) and not links):
        return None
    return _kind(mode)


def lock_problem(directory: Path, links: bool = True) -> str | None:
    """`lock_kind` as a sentence naming the file, or None."""
    kind = lock_kind(directory, links)
    return None if kind is None else f"{Path(directory) / LOCK_NAME} is {kind}, not a regular file"


def _bad_lock(directory: Path, problem: str) -> CacheWriteError:
    """Something other than a regular file sits where the lock belongs: no writer can lock the cache. Its own
    message (not `write_error`'s, which would blame the disk) names the file and the fix."""
    error = CacheWriteError(f"the sr-augment cache {directory} cannot be locked for writing: its writer lock {problem} "
                            f"(the lock is always one; something was planted in its place). Nothing was written. "
                            f"Remove it: `sr-augment verify --repair --cache-dir {shlex.quote(str(directory))}` does "
                            f"(entries are kept).")
    error.errno = errno.EINVAL
    return error


def remove_bad_lock(directory: Path) -> str | None:
    """Remove what sits where the cache's writer lock belongs when it is not a regular file (a link: the
    link itself; a directory: with what it holds, never following a link in it); returns what was wrong,
    or None when nothing was. Safe while writers run: none can hold a lock on such a thing."""
    problem = lock_problem(directory)
    if problem is None:
        return None
    path = Path(directory) / LOCK_NAME
    try:
        if stat.S_ISDIR(os.lstat(path).st_mode):
            shutil.rmtree(path)  # fd-based on Linux: a link inside is removed, never followed
        else:
            os.unlink(path)  # unlink never follows a link
    except FileNotFoundError:
        pass
    return problem


def hold_shared(directory: Path) -> int:
    """The cache's writer lock held shared (a descriptor: closing it releases the lock), waiting up to
    `LOCK_WAIT` seconds for a `clear` that holds it."""
    fd = _open_lock(directory, create=True)
    deadline = time.monotonic() + LOCK_WAIT
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise CacheInUse(f"the sr-augment cache {directory} is being cleared or checked by another process"
                                 f"{_holders_text(directory)} and stayed so for {LOCK_WAIT:.0f} s; nothing was "
                                 f"written. Run again when it is done.") from None
            time.sleep(0.05)
        except BaseException:
            os.close(fd)
            raise


@contextlib.contextmanager
def exclusive(directory: Path, required: bool = True, create: bool = True):
    """Hold the cache's writer lock exclusive for the block (no writer runs, none starts): yields True.
    When a writer holds it: `CacheInUse` naming it if `required`, else yields False (also when there is no
    lock file and `create` is False, or it cannot be opened). A lock file that cannot be made (a full
    disk, where `clear` is the way out) yields True: every writer makes it before it writes."""
    directory = Path(directory)
    if not directory.is_dir():  # no cache there: nothing writes it
        yield required
        return
    try:
        fd = _open_lock(directory, create)
    except OSError as exc:
        if not os.path.lexists(directory / LOCK_NAME):  # not made (a full disk): so no writer holds it either
            yield True
            return
        if required:
            if isinstance(exc, CacheWriteError):  # a planted lock: names the file and the fix already
                raise
            raise write_error(directory, exc) from exc
        fd = None
    if fd is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holders = _holders_text(directory)
            os.close(fd)
            fd = None
            if required:
                holders = holders or " (a warm, import, merge, or a training process generating misses)"
                raise CacheInUse(f"the sr-augment cache {directory} is in use by a writer{holders}: clearing it now "
                                 f"would lose what it writes. Nothing was deleted; let it finish (or stop it) and run "
                                 f"this again.") from None
    try:
        yield fd is not None
    finally:
        if fd is not None:
            os.close(fd)


def lock_holders(directory: Path) -> list[str]:
    """Who holds the cache's writer lock, as "pid N (command line)", where the system tells (Linux
    /proc/locks); empty elsewhere. For messages only: nothing is decided by a pid."""
    try:
        inode = os.stat(Path(directory) / LOCK_NAME).st_ino
        with open("/proc/locks") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:  # "1: FLOCK  ADVISORY  READ  1234 fd:01:5678 0 EOF" ("1: -> FLOCK ..." waits)
        parts = line.split()
        if len(parts) < 6 or parts[1] != "FLOCK" or not parts[4].isdigit() or parts[5].rsplit(":", 1)[-1] != str(inode):
            continue
        pid = parts[4]
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                command = fh.read(400).replace(b"\0", b" ").decode("utf-8", "replace").strip()
        except OSError:
            command = ""
        command = "".join(c if c.isprintable() else "?" for c in command)[:160]
        found.append(f"pid {pid}" + (f" ({command})" if command else "")
                     + (" (this process)" if pid == str(os.getpid()) else ""))
    return list(dict.fromkeys(found))


def _holders_text(directory: Path) -> str:
    holders = lock_holders(directory)
    return f" ({'; '.join(holders)})" if holders else ""


def add_unless_present(entries: diskcache.Cache, directory: Path, key: str, record: bytes, tag: str | None = None) -> bool:
    """Publish `record` under `key` unless the key is stored (True when this call stored it). A record
    larger than the cache's whole size limit is refused (`EntryTooLarge`) before anything is written. A locked
    database is retried `WRITE_ATTEMPTS` times (diskcache's retry=True would loop forever), then, like a
    full disk, raised as `CacheWriteError` naming the folder; a value file whose insert failed is removed."""
    disk = entries.disk
    limit = entries.size_limit
    if len(record) > limit:  # diskcache would store it and evict it in the same transaction
        raise too_large(directory, key, len(record), limit)
    for _ in range(WRITE_ATTEMPTS):
        try:
            return entries.add(key, record, retry=False, tag=tag)
        except diskcache.Timeout:
            disk.discard_unpublished()
        except (OSError, sqlite3.OperationalError) as exc:
            disk.discard_unpublished()
            raise write_error(directory, exc) from exc
        except sqlite3.DatabaseError as exc:  # malformed: no retry helps
            disk.discard_unpublished()
            raise rows.damaged(Path(directory) / layout.ENTRIES, str(exc)) from exc
    raise write_error(directory, TimeoutError(f"the database stayed locked through {WRITE_ATTEMPTS} attempts"))
