"""Where the cache lives by default, a warning when that place is a network filesystem, and which
errors are the host's (a full disk, I/O errors, permissions) rather than damage to the cache.

Separate from the store because these are facts about the host, not about entries: SQLite (under
diskcache) relies on file locks that NFS, SMB, Lustre and their kin do not reliably honour, so several
machines writing one cache there can corrupt it. Nothing is refused (a single writer works); the user
is warned once per cache opened, so the choice is an informed one. And an error of the host must never
be read as damage: on a full disk SQLite reports "disk I/O error" (it cannot create a reader's `-shm`
file), and "repairing" that would delete every entry (`is_environment_error`, `CacheUnavailable`).
"""

from __future__ import annotations

import errno
import os
import sqlite3
import warnings
from pathlib import Path

from sr_augment.errors import CacheUnavailable, NetworkFilesystemWarning  # noqa: F401  (defined in errors, named here too)


def default_cache_dir() -> Path:
    """`SR_AUGMENT_CACHE_DIR`, else the platform's user cache folder (`~/.cache/sr_augment` on Linux)."""
    env = os.environ.get("SR_AUGMENT_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("sr_augment", appauthor=False))


NETWORK_FILESYSTEMS = frozenset({"nfs", "nfs4", "cifs", "smb3", "smbfs", "fuse.sshfs", "lustre", "gpfs",
                                 "beegfs", "ceph", "glusterfs", "fuse.glusterfs", "9p", "afs"})
"""Filesystem types (as /proc/mounts names them) whose locking SQLite cannot rely on."""


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
    """Warn (`NetworkFilesystemWarning`, attributed to the caller of `SRCache(...)`) when `path` is on a
    network filesystem."""
    kind = filesystem_type(path)
    if kind in NETWORK_FILESYSTEMS:
        warnings.warn(
            f"sr-augment cache {path} is on a network filesystem ({kind}); SQLite (diskcache) is not safe "
            f"there when several machines write. Put the cache on a local disk (SR_AUGMENT_CACHE_DIR or "
            f"cache_dir=...), one per machine.", NetworkFilesystemWarning, stacklevel=3)


ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EACCES, errno.EPERM,
                                errno.EROFS, errno.ENOMEM, errno.EMFILE, errno.ENFILE, errno.EBUSY})
"""OSError numbers that describe the environment (disk, quota, permissions, mount), never the cache's contents."""
_SQLITE_ENVIRONMENT_CODES = frozenset({3, 5, 6, 7, 8, 10, 13, 14, 15, 22, 23})
"""SQLite primary result codes of the environment: PERM, BUSY, LOCKED, NOMEM, READONLY, IOERR, FULL, CANTOPEN,
PROTOCOL, NOLFS, AUTH. Damage is CORRUPT (11), NOTADB (26) and schema errors (ERROR: no such table/column)."""
_SQLITE_ENVIRONMENT_TEXT = ("disk i/o error", "database or disk is full", "unable to open database", "readonly database",
                            "database is locked", "database table is locked", "out of memory", "access permission denied",
                            "locking protocol", "large file support")
"""The same, by message (Python 3.10's sqlite3 errors carry no result code)."""


def is_environment_error(exc: BaseException) -> bool:
    """Whether `exc` is about the disk, permissions or locks (see `CacheUnavailable`) rather than
    damage to the cache's contents ("file is not a database", "malformed", a missing table)."""
    if isinstance(exc, CacheUnavailable):
        return True
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None:
            return (code & 0xFF) in _SQLITE_ENVIRONMENT_CODES
        return any(text in str(exc).lower() for text in _SQLITE_ENVIRONMENT_TEXT)
    return isinstance(exc, OSError) and exc.errno in ENVIRONMENT_ERRNOS


def unavailable(path: Path, exc: BaseException, doing: str = "read") -> CacheUnavailable:
    """`CacheUnavailable` naming the file, what was being done and the environment's reason."""
    reason = f"{type(exc).__name__}: {exc.strerror or exc}" if isinstance(exc, OSError) and not isinstance(
        exc, CacheUnavailable) else str(exc)
    error = CacheUnavailable(f"cannot {doing} {path}: {reason}. This is the disk, a file-size limit, permissions or a "
                             f"lock, not damage to the cache: nothing was deleted. Free space or fix the permissions "
                             f"and try again.")
    error.errno = getattr(exc, "errno", None) or errno.EIO  # no .filename: it would replace the message
    return error
