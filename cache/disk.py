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
import os
import threading
from pathlib import Path

import diskcache
from diskcache.core import MODE_BINARY, MODE_RAW

from sr_augment.cache.rows import UntrustedRow, read_value_file, remove_value_file, value_path


class CacheWriteError(OSError):
    """A result could not be stored (disk full, quota, file-size limit, read-only or I/O error).

    Nothing partial is left behind: entries stored before the failure stay readable."""


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
    """diskcache's Disk, but no value file outlives a failed write: one whose write fails (disk full)
    is removed at once, and `discard_unpublished` removes the last one written when the SQLite insert
    that was to publish it failed (diskcache leaves both behind)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._written = threading.local()

    def store(self, *args, **kwargs):
        self._written.path = None  # a small value goes inline in SQLite and writes no file
        return super().store(*args, **kwargs)

    def _write(self, full_path, iterator, mode, encoding=None):
        try:
            size = super()._write(full_path, iterator, mode, encoding)
        except BaseException:
            try:
                os.remove(full_path)
            except OSError:
                pass
            raise
        self._written.path = full_path
        return size

    def discard_unpublished(self) -> None:
        path, self._written.path = getattr(self._written, "path", None), None
        if path is not None:
            try:
                os.remove(path)
            except OSError:
                pass


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


class CacheReadOnly(CacheWriteError):
    """The cache folder cannot be written (a read-only mount, another user's folder, `read_only=True`):
    hits are served, nothing can be stored."""


WRITE_ATTEMPTS = 5
"""Tries of one write whose SQLite lock times out (60 s each) before it is reported as an error. diskcache's
own retry=True would loop forever, also when the lock cannot be had because the disk is failing."""
