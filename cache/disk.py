"""Writes that never leave a partial entry behind, and one clear error when a write fails.

diskcache writes a large value to its own file, then publishes the key in one SQLite transaction, so a
crash mid-write can never publish a partial value. Two things it leaves to us: a value file whose
write failed (disk full) or whose SQLite insert failed stays on disk unreferenced, and its `retry=True`
loops forever when the database lock cannot be had. `CleanDisk` removes such files, and `SRCache`
retries a bounded number of times, then raises `CacheWriteError`.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import stat
import threading
from pathlib import Path

import diskcache
from diskcache.core import MODE_BINARY, MODE_RAW

from sr_augment.cache.rows import VALUE_FILE, UntrustedRow, read_value_file, remove_value_file, value_path
from sr_augment.errors import CacheReadOnly, CacheWriteError, EntryTooLarge  # noqa: F401  (defined in errors, named here too)

log = logging.getLogger("sr_augment.cache")
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _NOFOLLOW
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW
_OPEN_TRIES = 10
"""Tries of one value-file write whose folder another process removed meanwhile (diskcache tries 10 times too)."""


FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def write_error(directory: Path, exc: BaseException) -> CacheWriteError:
    full = getattr(exc, "errno", None) in FULL_ERRNOS or "full" in str(exc) or "I/O" in str(exc)
    hint = (" The disk (or quota / file-size limit) looks full: free space, lower size_limit, or move the "
            "cache (SR_AUGMENT_CACHE_DIR / --cache-dir)." if full else "")
    error = CacheWriteError(f"cannot write to the sr-augment cache {directory}: {type(exc).__name__}: {exc}.{hint} "
                            f"Entries stored before this are intact.")
    error.errno = getattr(exc, "errno", None) or errno.EIO
    return error


class CleanDisk(diskcache.Disk):
    """diskcache's Disk, but value files are written without following any link, and no value file
    outlives a failed write: one whose write fails (disk full) is removed at once, and
    `discard_unpublished` removes the last one written when the SQLite insert that was to publish it
    failed (diskcache leaves both behind).

    Why not diskcache's own `_write`: it runs `os.makedirs` and `open(full_path, "xb")`, which follow a
    symbolic link planted in place of a value folder (`xx/` or `xx/yy/`) and write outside the cache.
    Here each folder is made with `mkdir` and opened with O_NOFOLLOW | O_DIRECTORY relative to the one
    above it (a link planted in its place, inside the cache, is removed and a real folder made: the
    link, never its target), and the file is created with O_CREAT | O_EXCL | O_NOFOLLOW in that folder."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._written = threading.local()

    def store(self, *args, **kwargs):
        self._written.path = None  # a small value goes inline in SQLite and writes no file
        return super().store(*args, **kwargs)

    def _write(self, full_path, iterator, mode, encoding=None):
        directory = os.fspath(self._directory)
        filename = os.path.relpath(full_path, directory).replace(os.sep, "/")
        if not VALUE_FILE.fullmatch(filename):
            raise UntrustedRow(f"value file {full_path} is not named the way diskcache names them; refused")
        for attempt in range(1, _OPEN_TRIES + 1):
            try:
                return self._write_in(directory, filename, iterator, encoding)
            except FileNotFoundError:  # a folder emptied and removed by another process meanwhile
                if attempt == _OPEN_TRIES:
                    raise

    def _write_in(self, directory: str, filename: str, iterator, encoding) -> int:
        fds = [os.open(directory, _DIR_FLAGS)]
        try:
            for name in (filename[:2], filename[3:5]):
                fds.append(_real_folder(fds[-1], name, os.path.join(directory, filename[:len(fds) * 3 - 1])))
            folder, name = fds[-1], filename[6:]
            try:
                fd = os.open(name, _FILE_FLAGS, 0o666, dir_fd=folder)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise UntrustedRow(f"value file {os.path.join(directory, filename)} is a symbolic link "
                                       f"planted in the cache; not written through") from None
                raise
            try:
                size = 0
                with os.fdopen(fd, "wb") as writer:
                    for chunk in iterator:
                        chunk = chunk.encode(encoding or "UTF-8") if isinstance(chunk, str) else chunk
                        size += len(chunk)
                        writer.write(chunk)
            except BaseException:
                try:
                    os.unlink(name, dir_fd=folder)
                except OSError:
                    pass
                raise
        finally:
            for fd_ in fds:
                os.close(fd_)
        self._written.path = filename
        return size

    def discard_unpublished(self) -> None:
        filename, self._written.path = getattr(self._written, "path", None), None
        if filename is not None:
            remove_value_file(Path(self._directory), filename)


def _real_folder(parent: int, name: str, where: str) -> int:
    """A descriptor of the real folder `name` in the folder `parent`, made if missing; a symbolic link
    planted in its place is removed (the link, never what it points to) and a real folder made."""
    for _ in range(3):
        try:
            os.mkdir(name, 0o777, dir_fd=parent)
        except FileExistsError:
            pass
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=parent)
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            try:
                planted = os.lstat(name, dir_fd=parent)
            except FileNotFoundError:
                continue
            if not stat.S_ISLNK(planted.st_mode):
                raise NotADirectoryError(errno.ENOTDIR, f"{where} is not a folder (a cache's value folders "
                                                        f"always are); remove it or clear the cache") from None
            log.warning("sr-augment cache: %s is a symbolic link planted in place of a value folder; "
                        "removed (not followed) and replaced by a real folder", where)
            try:
                os.unlink(name, dir_fd=parent)  # unlink never follows a link
            except FileNotFoundError:
                pass
    raise OSError(errno.ELOOP, f"{where} keeps being replaced by a symbolic link; not written through")


class SafeDisk(CleanDisk):
    """Defence in depth for diskcache's own code paths (add, eviction, delete, clear): a pickled key
    or a pickle/text value is refused, never unpickled, and only value files named the way diskcache
    names them, inside this folder, are read or removed (a planted `../../x` is left alone)."""

    def get(self, key, raw):
        if not raw:
            raise UntrustedRow("a key stored pickled (raw=0), which sr-augment never writes; refused")
        return super().get(key, raw)

    def fetch(self, mode, filename, value, read):
        if mode == MODE_BINARY:
            data = read_value_file(value_path(Path(self._directory), filename))
            return io.BytesIO(data) if read else data
        if mode != MODE_RAW:
            raise UntrustedRow(f"a value stored in diskcache mode {mode} (pickle or text), which sr-augment "
                               f"never writes; refused")
        return super().fetch(mode, filename, value, read)

    def remove(self, file_path):
        remove_value_file(Path(self._directory), file_path)


def too_large(directory: Path, key: str, size: int, limit: int) -> EntryTooLarge:
    error = EntryTooLarge(f"not stored: entry {key} of {size / 1e6:.2f} MB exceeds the cache size limit of "
                          f"{limit / 1e6:.2f} MB of the sr-augment cache {directory}, so the cache cannot hold "
                          f"it. Raise the limit (warm --size-limit, SRCache(size_limit=...)) above the size of "
                          f"one entry, with room for the entries you want kept.")
    error.errno, error.key = errno.EFBIG, key
    return error


WRITE_ATTEMPTS = 5
"""Tries of one write whose SQLite lock times out (60 s each) before it is reported as an error. diskcache's
own retry=True would loop forever, also when the lock cannot be had because the disk is failing."""
