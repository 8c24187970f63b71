"""Where the cache lives by default, and a warning when that place is a network filesystem.

Separate from the store because these are facts about the host, not about entries: SQLite (under
diskcache) relies on file locks that NFS, SMB, Lustre and their kin do not reliably honour, so several
machines writing one cache there can corrupt it. Nothing is refused (a single writer works); the user
is warned once per cache opened, so the choice is an informed one.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path


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
    """Warn (`NetworkFilesystemWarning`, attributed to the caller of `SRCache(...)`) when `path` is on a
    network filesystem."""
    kind = filesystem_type(path)
    if kind in NETWORK_FILESYSTEMS:
        warnings.warn(
            f"sr-augment cache {path} is on a network filesystem ({kind}); SQLite (diskcache) is not safe "
            f"there when several machines write. Put the cache on a local disk (SR_AUGMENT_CACHE_DIR or "
            f"cache_dir=...), one per machine.", NetworkFilesystemWarning, stacklevel=3)
