"""Reach the running service of one engine configuration, or start it; tell a dead service from a hung one.

A service that died (crash, OOM killer, SIGKILL) refuses connections: the launcher starts a new one.
A service that is alive but does not answer (hung) is reported as a `ServiceError` naming its pid,
never waited on forever, and not duplicated (two copies of a model could not share one GPU): before
starting, the launcher also looks for a live service of the same id in /proc, so a deleted service
folder does not start a second copy (the running one re-creates its socket). A file lock, waited on
with a timeout, makes concurrent first callers start exactly one service. Every file is checked
(ours, private) and every peer proven to be this user before anything is sent.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import socket
import struct
import subprocess
import sys
import time
from contextlib import contextmanager
from multiprocessing.connection import AuthenticationError, Connection, answer_challenge, deliver_challenge
from pathlib import Path

from sr_augment.service.common import (
    START_TIMEOUT,
    ServiceError,
    check_peer,
    check_private_file,
    read_key,
    service_dir,
    service_paths,
    write_private,
)

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def process_state(pid: int) -> str:
    """"gone" (or a zombie), "foreign" (alive, another user's: EPERM is never "dead"), "service" (ours,
    an sr-augment service, or any live pid where /proc cannot tell), or "other" (ours; pids are reused)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "gone"
    except PermissionError:
        return "foreign"
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            if fh.read().rsplit(b")", 1)[-1].split()[0] == b"Z":
                return "gone"
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return "service" if b"sr_augment.service" in fh.read() else "other"
    except OSError:  # no /proc (macOS): trust the pid
        return "service"


def running_services(folder: Path, sid: str) -> list[int]:
    """Pids of this user's live services of id `sid` for `folder`, from their command lines in /proc
    (they run `python -m sr_augment.service --dir FOLDER --sid SID ...`); [] where there is no /proc."""
    found = []
    want = {(b"--dir", os.fsencode(str(folder))), (b"--sid", sid.encode())}
    for entry in Path("/proc").iterdir() if Path("/proc/self/cmdline").exists() else []:
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if entry.stat().st_uid != os.getuid():
                continue
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        pairs = set(zip(args, args[1:]))
        if b"sr_augment.service" in args and want <= pairs and process_state(int(entry.name)) == "service":
            found.append(int(entry.name))
    return found


CALLER_CWD = "SR_AUGMENT_SERVICE_CALLER_CWD"
"""The environment variable that tells the service the caller's working folder (see `service_environment`)."""


def python_command() -> list[str]:
    """This interpreter, told not to put the working folder (or a script's folder) on `sys.path`:
    `-P` (Python 3.11+); on 3.10 the service's working folder, its private 0700 folder, is what lands
    there. Not `-I`: it would drop PYTHONPATH and the user site, where users keep their engines."""
    return [sys.executable, *(["-P"] if sys.version_info >= (3, 11) else [])]


def same_folder(entry: str, folder: str) -> bool:
    """Whether the absolute path `entry` names `folder`: the same real path, or the same file (a bind
    mount, a case-insensitive filesystem)."""
    if os.path.realpath(entry) == os.path.realpath(folder):
        return True
    try:
        return os.path.samefile(entry, folder)
    except (OSError, ValueError):  # missing, unreadable, or an embedded NUL: not the working folder
        return False


def service_environment(path: list[str] | None = None) -> dict[str, str]:
    """The environment of a service started from this process.

    `python -m` puts the working folder first on `sys.path`, so a module planted in a team-writable
    working folder (`argparse.py`) would run as this user; the service therefore starts in its private
    folder, and its PYTHONPATH is made of absolute folders only: this process's PYTHONPATH entries
    (an empty or relative entry means the working folder: dropped), then this process's own `sys.path`
    (default `sys.path`) minus '' , relative entries and the working folder, so a `module:Class`
    engine this process can import is found there too. The caller's working folder goes in
    $SR_AUGMENT_SERVICE_CALLER_CWD: the service changes into it after start-up, so relative paths in
    engine settings mean what they mean here; it is never on the service's `sys.path`: every entry,
    explicit or inherited, that names the working folder however it is spelled (`$PWD/.`, `$PWD/`, a
    `..` detour, a symbolic link; compared by `os.path.realpath` and, where it exists, `os.path.samefile`)
    is dropped."""
    cwd = os.getcwd()
    explicit = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    inherited = [e for e in (sys.path if path is None else path) if isinstance(e, str)]
    entries: list[str] = []
    for entry in explicit + inherited:
        if (os.path.isabs(entry) and os.pathsep not in entry and entry not in entries
                and not same_folder(entry, cwd)):
            entries.append(entry)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(entries)
    env[CALLER_CWD] = cwd
    return env


@contextmanager
def start_lock(path: Path, timeout: float):
    """Hold the start lock at `path`, waiting at most `timeout` s; the holder writes its pid in it, so a
    client that times out can name the process that is stopped or hung while holding it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | _NOFOLLOW, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ServiceError(_lock_held(path, os.pread(fd, 32, 0), timeout)) from None
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _lock_held(path: Path, holder: bytes, timeout: float) -> str:
    pid = holder.decode(errors="replace").strip() or "?"
    stopped = ""
    try:
        with open(f"/proc/{int(pid)}/stat", "rb") as fh:
            stopped = " (it is stopped)" if fh.read().rsplit(b")", 1)[-1].split()[0] in (b"T", b"t") else ""
    except (OSError, ValueError):
        pass
    return (f"process {pid}{stopped} has held the engine service's start lock {path} for over {timeout:.0f} s; "
            f"it may be stopped (Ctrl-Z) or hung: resume it (kill -CONT {pid}) or stop it (kill {pid}), "
            f"and the next request goes on")


class ServiceLauncher:
    """Connections to the service of `config` (id `sid`); starts it when none runs.

    `linger` and `batch_size` are passed to a service it starts; `connect_timeout` bounds every wait
    for a running service to accept a connection, complete the handshake, or exit; `start_timeout`
    bounds a start (and, with `connect_timeout`, the wait for another client's start).
    """

    def __init__(self, config: dict, sid: str, *, linger: float, batch_size: int, connect_timeout: float,
                 start_timeout: float = START_TIMEOUT):
        self.config, self.sid = config, sid
        self.linger, self.batch_size, self.connect_timeout = linger, batch_size, connect_timeout
        self.start_timeout = start_timeout

    @property
    def paths(self) -> dict[str, Path]:
        """The service's files, in the private folder (created, and checked, on every call: it may have
        been deleted, or replaced by somebody else's)."""
        return service_paths(service_dir(), self.sid)

    def connect(self) -> Connection:
        """A connection to the service: the running one, or a new one when none runs."""
        paths = self.paths
        conn = self._try_connect(paths)
        if conn is None:
            conn = self._start_and_connect(paths)
        return conn

    def failure(self, what: str) -> str:
        """`what` went wrong, with the engine spec, the service's log file and the log's last lines."""
        log = service_paths(service_dir(), self.sid)["log"]
        try:
            lines = log.read_text(errors="replace").strip().splitlines()
        except OSError:
            lines = []
        return f"{what} (engine {self.config['spec']!r}; log {log}):\n" + "\n".join(lines[-15:])

    def _try_connect(self, paths: dict[str, Path]):
        """A connection to the running service; None when none runs (no socket, or nobody listens on
        it); `ServiceError` when one is there but does not answer within `connect_timeout`, or when its
        files or its process are not this user's (then nothing was sent).

        This is `multiprocessing.connection.Client` for AF_UNIX with timeouts and owner checks: Client
        has neither, and a stopped or hung service would block its handshake forever."""
        try:
            check_private_file(paths["socket"], "socket", socket_file=True)
            authkey = read_key(paths["key"])
        except FileNotFoundError:
            return None
        deadline = time.monotonic() + self.connect_timeout
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(max(0.05, deadline - time.monotonic()))
                sock.connect(str(paths["socket"]))
                break
            except (BlockingIOError, TimeoutError):  # alive, its backlog full: busy or hung, not dead
                sock.close()
                if time.monotonic() > deadline:
                    raise ServiceError(self._hung("accept a connection")) from None
                time.sleep(0.05)
            except OSError:  # refused or gone: nobody listens
                sock.close()
                return None
        try:
            check_peer(sock, f"the service socket {paths['socket']}")
        except ServiceError:
            sock.close()
            raise
        sock.settimeout(None)
        timeval = struct.pack("ll", int(self.connect_timeout), int(self.connect_timeout % 1 * 1e6))
        for option in (socket.SO_RCVTIMEO, socket.SO_SNDTIMEO):  # every later read and write is bounded too
            sock.setsockopt(socket.SOL_SOCKET, option, timeval)
        conn = Connection(sock.detach())
        try:
            answer_challenge(conn, authkey)
            deliver_challenge(conn, authkey)
            return conn
        except (BlockingIOError, TimeoutError):
            conn.close()
            raise ServiceError(self._hung("complete the connection handshake")) from None
        except (EOFError, OSError, AuthenticationError):  # died while connecting, or a stale key
            conn.close()
            return None
        except AssertionError:  # multiprocessing asserts on a peer that does not speak the handshake
            conn.close()
            raise ServiceError(f"the engine service socket {self.paths['socket']} answered without the "
                               f"sr-augment handshake; stop whatever listens there and remove the socket") from None

    def _service_pid(self) -> int | None:
        try:
            return int(service_paths(service_dir(), self.sid)["pid"].read_text().strip())
        except (OSError, ValueError):
            return None

    def _live_services(self, paths: dict[str, Path]) -> list[int]:
        """Live services of this id: from /proc, else (no /proc) the pid file's process if it runs."""
        if Path("/proc/self/cmdline").exists():
            return running_services(paths["socket"].parent, self.sid)
        pid = self._service_pid()
        return [pid] if pid is not None and process_state(pid) == "service" else []

    def _reach_running_service(self, paths: dict[str, Path]):
        """A live service that refuses connections is exiting (its linger ran out) or re-creating its
        deleted socket: give it `connect_timeout` to go or to answer, so a second copy of the model
        never runs beside it. Returns a connection, or None when none runs."""
        deadline = time.monotonic() + self.connect_timeout
        while True:
            pids = self._live_services(paths)
            if not pids:
                return None
            conn = self._try_connect(paths)
            if conn is not None:
                return conn
            if time.monotonic() > deadline:
                raise ServiceError(self._hung("accept connections or exit", pids[0]))
            time.sleep(0.05)

    def _hung(self, what: str, pid=None) -> str:
        pid = pid or self._service_pid() or "?"
        return self.failure(f"the engine service (pid {pid}) did not {what} within {self.connect_timeout:.0f} s; "
                            f"it may be hung: stop it (kill {pid}) and the next request starts a new one")

    def _start_and_connect(self, paths: dict[str, Path]):
        with start_lock(paths["lock"], self.start_timeout + self.connect_timeout):
            conn = self._try_connect(paths) or self._reach_running_service(paths)
            if conn is not None:
                return conn
            try:  # a stale socket of ours (a socket of someone else's: refused by the check, never removed)
                check_private_file(paths["socket"], "socket", socket_file=True)
                paths["socket"].unlink()
            except FileNotFoundError:
                pass
            try:
                read_key(paths["key"])
            except FileNotFoundError:
                write_private(paths["key"], secrets.token_bytes(32))
            log = os.open(paths["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NOFOLLOW, 0o600)
            folder = paths["socket"].parent
            process = subprocess.Popen(
                [*python_command(), "-m", "sr_augment.service", "--dir", str(folder), "--sid", self.sid,
                 "--config", json.dumps(self.config), "--linger", str(self.linger), "--batch-size",
                 str(self.batch_size)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                cwd=folder, env=service_environment(),
            )
            os.close(log)
            deadline = time.monotonic() + self.start_timeout
            while time.monotonic() < deadline:
                if process.poll() is not None:
                    raise ServiceError(self.failure(f"the engine service exited with status {process.returncode}"))
                conn = self._try_connect(paths)
                if conn is not None:
                    return conn
                time.sleep(0.05)
            process.kill()
            raise ServiceError(self.failure(f"the engine service did not start within {self.start_timeout:.0f} s"))
