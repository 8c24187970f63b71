"""Reach the running service of one engine configuration, or start it; tell a dead service from a hung one.

A service that died (crash, OOM killer, SIGKILL) refuses connections: the launcher starts a new one.
A service that is alive but does not answer (hung) is reported as a `ServiceError` naming its pid,
never waited on forever, and not duplicated (two copies of a model could not share one GPU). A file
lock makes concurrent first callers start exactly one service.
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
from multiprocessing.connection import AuthenticationError, Connection, answer_challenge, deliver_challenge
from pathlib import Path

from sr_augment.service.common import START_TIMEOUT, ServiceError


def _is_service_process(pid: int) -> bool:
    """Whether `pid` runs (not a zombie) and, where /proc tells, is an sr-augment service (pids are reused)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):  # gone, or another user's process: not ours
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            if fh.read().rsplit(b")", 1)[-1].split()[0] == b"Z":
                return False
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return b"sr_augment.service" in fh.read()  # the `python -m sr_augment.service` we start
    except OSError:  # no /proc (macOS): trust the pid
        return True


class ServiceLauncher:
    """Connections to the service of `config`, whose files are `paths`; starts it when none runs.

    `linger` and `batch_size` are passed to a service it starts; `connect_timeout` bounds every wait
    for a running service to accept a connection, complete the handshake, or exit.
    """

    def __init__(self, config: dict, root: Path, paths: dict[str, Path], *, linger: float, batch_size: int,
                 connect_timeout: float):
        self.config, self.root, self.paths = config, root, paths
        self.linger, self.batch_size, self.connect_timeout = linger, batch_size, connect_timeout

    def connect(self) -> Connection:
        """A connection to the service: the running one, or a new one when none runs."""
        conn = self._try_connect()
        if conn is None:
            conn = self._start_and_connect()
        return conn

    def failure(self, what: str) -> str:
        """`what` went wrong, with the engine spec, the service's log file and the log's last lines."""
        tail = ""
        if self.paths["log"].exists():
            lines = self.paths["log"].read_text(errors="replace").strip().splitlines()
            tail = "\n".join(lines[-15:])
        return f"{what} (engine {self.config['spec']!r}; log {self.paths['log']}):\n{tail}"

    def _try_connect(self):
        """A connection to the running service; None when none runs (no socket, or nobody listens on
        it); `ServiceError` when one is there but does not answer within `connect_timeout`.

        This is `multiprocessing.connection.Client` for AF_UNIX with timeouts: Client itself has none,
        and a stopped or hung service would block its handshake forever."""
        if not self.paths["socket"].exists() or not self.paths["key"].exists():
            return None
        deadline = time.monotonic() + self.connect_timeout
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(max(0.05, deadline - time.monotonic()))
                sock.connect(str(self.paths["socket"]))
                break
            except (BlockingIOError, TimeoutError):  # alive, its backlog full: busy or hung, not dead
                sock.close()
                if time.monotonic() > deadline:
                    raise ServiceError(self._hung("accept a connection")) from None
                time.sleep(0.05)
            except OSError:  # refused or gone: nobody listens
                sock.close()
                return None
        sock.settimeout(None)
        timeval = struct.pack("ll", int(self.connect_timeout), int(self.connect_timeout % 1 * 1e6))
        for option in (socket.SO_RCVTIMEO, socket.SO_SNDTIMEO):  # every later read and write is bounded too
            sock.setsockopt(socket.SOL_SOCKET, option, timeval)
        conn = Connection(sock.detach())
        try:
            authkey = self.paths["key"].read_bytes()
            answer_challenge(conn, authkey)
            deliver_challenge(conn, authkey)
            return conn
        except (BlockingIOError, TimeoutError):
            conn.close()
            raise ServiceError(self._hung("complete the connection handshake")) from None
        except (EOFError, OSError, AuthenticationError):  # died while connecting, or a stale key
            conn.close()
            return None

    def _service_pid(self) -> int | None:
        try:
            return int(self.paths["pid"].read_text().strip())
        except (OSError, ValueError):
            return None

    def _wait_for_old_service_to_exit(self) -> None:
        """A service that refuses connections but still runs is exiting (its linger ran out) or broken:
        give it `connect_timeout` to go, so a second copy of the model never runs beside it."""
        pid = self._service_pid()
        deadline = time.monotonic() + self.connect_timeout
        while pid is not None and _is_service_process(pid):
            if time.monotonic() > deadline:
                raise ServiceError(self._hung("accept connections or exit"))
            time.sleep(0.05)

    def _hung(self, what: str) -> str:
        pid = self._service_pid() or "?"
        return self.failure(f"the engine service (pid {pid}) did not {what} within {self.connect_timeout:.0f} s; "
                            f"it may be hung: stop it (kill {pid}) and the next request starts a new one")

    def _start_and_connect(self):
        with open(self.paths["lock"], "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one starter at a time; the others find it running
            conn = self._try_connect()
            if conn is not None:
                return conn
            self._wait_for_old_service_to_exit()
            self.paths["socket"].unlink(missing_ok=True)
            if not self.paths["key"].exists():
                fd = os.open(self.paths["key"], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as fh:
                    fh.write(secrets.token_bytes(32))
            log = open(self.paths["log"], "ab")
            process = subprocess.Popen(
                [sys.executable, "-m", "sr_augment.service", "--root", str(self.root), "--config",
                 json.dumps(self.config), "--linger", str(self.linger), "--batch-size", str(self.batch_size)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            )
            log.close()
            deadline = time.monotonic() + START_TIMEOUT
            while time.monotonic() < deadline:
                if process.poll() is not None:
                    raise ServiceError(self.failure(f"the engine service exited with status {process.returncode}"))
                conn = self._try_connect()
                if conn is not None:
                    return conn
                time.sleep(0.05)
            process.kill()
            raise ServiceError(self.failure(f"the engine service did not start within {START_TIMEOUT:.0f} s"))
