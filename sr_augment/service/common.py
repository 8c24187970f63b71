"""What the service's client and server must agree on: the id of an engine configuration, the private
per-user folder of its files (socket, lock, key, log, pid), the checks those files must pass, the
error type and the default timeouts.

Service files never live in the cache folder: a cache is shared, copied and shipped, and anything in it
is untrusted, while a key, a socket and a pid file are private to one user on one machine. Kept apart
from both sides so the client never imports the server (nor torch) to learn them.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import stat
import struct
import tempfile
from pathlib import Path

from sr_augment.errors import ServiceError  # noqa: F401  (defined in errors, named here too)

DEFAULT_LINGER = float(os.environ.get("SR_AUGMENT_SERVICE_LINGER", "10"))
START_TIMEOUT = 300.0
REQUEST_TIMEOUT = 3600.0
CONNECT_TIMEOUT = 30.0


def engine_config(config: dict) -> dict:
    """The normalised engine settings of a service (what `get_engine` takes): the one mapping that the
    adapters, the CLI (through `get_engine`) and the service share, so they agree on the service id."""
    scale = config.get("scale", 4)  # None: the model's own factor (a spandrel checkpoint, `default_scale`)
    return {"spec": str(config["spec"]), "scale": None if scale is None else int(scale), "steps": config.get("steps"),
            "device": config.get("device", "auto"), "dtype": config.get("dtype", "auto"),
            "params": dict(config.get("params") or {})}


def service_id(config: dict) -> str:
    """Stable id of an engine configuration (engine spec, scale, steps, device, dtype, params)."""
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def service_dir() -> Path:
    """This user's private folder of service files, created 0700 and checked (see `check_private_dir`):
    $SR_AUGMENT_SERVICE_DIR, else $XDG_RUNTIME_DIR/sr-augment, else <tmp>/sr-augment-<uid>."""
    if os.environ.get("SR_AUGMENT_SERVICE_DIR"):
        folder = Path(os.environ["SR_AUGMENT_SERVICE_DIR"])
    elif os.environ.get("XDG_RUNTIME_DIR"):
        folder = Path(os.environ["XDG_RUNTIME_DIR"]) / "sr-augment"
    else:
        folder = Path(tempfile.gettempdir()) / f"sr-augment-{os.getuid()}"
    return check_private_dir(folder)


def check_private_dir(folder: Path) -> Path:
    """`folder`, created 0700 if missing; `ServiceError` when it is a symlink, not ours, or open to others:
    anyone who can write there could plant a socket or a key that we would trust."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        folder.mkdir(mode=0o700)
    except FileExistsError:
        pass
    st = os.lstat(folder)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise ServiceError(f"service folder {folder} is a symlink or not a folder; refusing to use it "
                           f"(remove it, or set SR_AUGMENT_SERVICE_DIR to a private folder)")
    _check_owner_and_mode(folder, st, "service folder", "chmod 700")
    return folder


def check_private_file(path: Path, kind: str = "file", *, socket_file: bool = False) -> os.stat_result:
    """The stat of `path` after checking it is ours, not a symlink, of the expected type and (for a
    regular file) closed to others; `ServiceError` naming the file and the problem otherwise."""
    st = os.lstat(path)
    expected = stat.S_ISSOCK(st.st_mode) if socket_file else stat.S_ISREG(st.st_mode)
    if stat.S_ISLNK(st.st_mode) or not expected:
        raise ServiceError(f"service {kind} {path} is a symlink or not a {'socket' if socket_file else 'file'}; "
                           f"refusing to use it")
    _check_owner_and_mode(path, st, f"service {kind}", "chmod 600", check_mode=not socket_file)
    return st


def _check_owner_and_mode(path: Path, st: os.stat_result, what: str, fix: str, check_mode: bool = True) -> None:
    if st.st_uid != os.getuid():
        raise ServiceError(f"{what} {path} belongs to uid {st.st_uid}, not to you (uid {os.getuid()}); refusing "
                           f"to use or remove it (set SR_AUGMENT_SERVICE_DIR to a folder of your own)")
    if check_mode and st.st_mode & 0o077:
        raise ServiceError(f"{what} {path} has mode {stat.S_IMODE(st.st_mode):o}: group or others can reach it; "
                           f"refusing to use it ({fix} {path})")


def peer_uid(sock: socket.socket) -> int | None:
    """The uid of the process at the other end of a Unix socket (Linux SO_PEERCRED); None where the
    platform cannot tell (then the 0700 folder and the key are the only guards)."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None
    _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i")))
    return uid


def check_peer(sock: socket.socket, where: str) -> None:
    """`ServiceError` unless the peer of `sock` runs as this user: checked before anything is sent."""
    uid = peer_uid(sock)
    if uid is not None and uid != os.getuid():
        raise ServiceError(f"the process at the other end of {where} runs as uid {uid}, not as you "
                           f"(uid {os.getuid()}); refusing to talk to it")


def write_private(path: Path, data: bytes) -> None:
    """Create `path` (0600, never following a symlink, never replacing a file)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def read_key(path: Path) -> bytes:
    """The authentication key at `path`, after the owner and mode checks."""
    check_private_file(path, "key")
    with open(path, "rb") as fh:
        return fh.read(1024)


def service_paths(folder: Path, sid: str) -> dict[str, Path]:
    """The socket, lock, key, log and pid files of service `sid` in the private `folder`."""
    return {"socket": folder / f"{sid}.sock", "lock": folder / f"{sid}.lock", "key": folder / f"{sid}.key",
            "log": folder / f"{sid}.log", "pid": folder / f"{sid}.pid"}
