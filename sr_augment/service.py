"""One engine process per (engine settings, device) on the machine, shared by every caller.

Why a separate process:
- with the registry's CUDA torch, a process that imported TensorFlow first aborts when it imports
  torch, so the Keras layer's process must never import torch;
- TensorFlow grabs all GPU memory by default;
- N DataLoader workers must not load N copies of a multi-GB model.

Design: the service is a plain `python -m sr_augment.service` started with `subprocess.Popen` in a new
session (DataLoader workers are daemonic and may not start `multiprocessing` children, and the service
must outlive whichever process happened to start it). It listens on a Unix socket in the cache folder
(`multiprocessing.connection`, authenticated with a key file readable only by the user). A file lock
makes concurrent first callers start exactly one service. Client threads queue requests; one worker
thread takes whatever arrived together (up to `batch_size`) and runs it as one engine batch. The
service exits `linger` seconds after its last client disconnects.

Failures: every client wait has a timeout (connect and handshake: `connect_timeout`; an answer:
`timeout`). A service that died (crash, OOM killer, SIGKILL) refuses connections: the client starts a
new one and sends the request again, once. A service that is alive but does not answer (hung) is
reported as a `ServiceError` naming its pid, never waited on forever, and not duplicated (two copies
of a model could not share one GPU).

`RemoteEngine` is the client: it implements the `Engine` protocol (name, scale, fingerprint,
upscale), so `SRCache` uses it exactly like a local engine. This module never imports torch; only
the service process does.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import queue
import secrets
import socket
import struct
import subprocess
import sys
import threading
import time
from multiprocessing.connection import AuthenticationError, Connection, Listener, answer_challenge, deliver_challenge
from pathlib import Path
from typing import Sequence

import numpy as np

DEFAULT_LINGER = float(os.environ.get("SR_AUGMENT_SERVICE_LINGER", "10"))
START_TIMEOUT = 300.0
REQUEST_TIMEOUT = 3600.0
CONNECT_TIMEOUT = 30.0


class ServiceError(RuntimeError):
    """The engine service failed to start, died, or timed out; the message says which."""


def service_id(config: dict) -> str:
    """Stable id of an engine configuration (engine spec, scale, steps, device, dtype, params)."""
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def _paths(root: Path, sid: str) -> dict[str, Path]:
    folder = root / "services"
    folder.mkdir(parents=True, exist_ok=True)
    return {"socket": folder / f"{sid}.sock", "lock": folder / f"{sid}.lock", "key": folder / f"{sid}.key",
            "log": folder / f"{sid}.log", "pid": folder / f"{sid}.pid"}


# ----------------------------------------------------------------------------------------------------
# server side (runs in its own process; the only place torch is imported)
# ----------------------------------------------------------------------------------------------------
class _Server:
    def __init__(self, config: dict, paths: dict[str, Path], linger: float, batch_size: int, gather_ms: float):
        from sr_augment.engines import get_engine

        params = dict(config.get("params", {}))
        self.engine = get_engine(config["spec"], scale=config["scale"], steps=config["steps"],
                                 device=config["device"], dtype=config["dtype"], **params)
        self.engine_loads = 1
        self.paths, self.linger, self.batch_size, self.gather = paths, linger, batch_size, gather_ms / 1000.0
        self.requests: queue.Queue = queue.Queue()
        self.clients = 0
        self.last_client_left = time.monotonic()
        self.lock = threading.Lock()
        self.batches: list[int] = []

    def info(self) -> dict:
        return {"name": self.engine.name, "scale": self.engine.scale, "fingerprint": self.engine.fingerprint,
                "pid": os.getpid(), "engine_loads": self.engine_loads, "batches": list(self.batches)}

    def serve(self, authkey: bytes) -> None:
        # a deep backlog: many DataLoader workers connect at once, and handshakes run one at a time
        listener = Listener(str(self.paths["socket"]), family="AF_UNIX", backlog=64, authkey=authkey)
        own_socket = self.paths["socket"].stat().st_ino
        self.paths["pid"].write_text(str(os.getpid()))
        threading.Thread(target=self._work, daemon=True).start()
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        while True:
            time.sleep(0.2)
            with self.lock:
                idle = self.clients == 0 and time.monotonic() - self.last_client_left > self.linger
            if idle:
                break
        listener.close()
        try:  # only our own socket: a successor may have bound a new one at the same path
            if self.paths["socket"].stat().st_ino == own_socket:
                self.paths["socket"].unlink()
        except FileNotFoundError:
            pass

    def _accept(self, listener: Listener) -> None:
        while True:
            try:
                conn = listener.accept()
            except Exception:  # a client that failed authentication, or the listener closing
                continue
            with self.lock:
                self.clients += 1
            threading.Thread(target=self._client, args=(conn,), daemon=True).start()

    def _client(self, conn) -> None:
        try:
            while True:
                try:
                    message = conn.recv()
                except (EOFError, OSError):
                    return
                kind = message[0]
                if kind == "info":
                    conn.send(("ok", self.info()))
                elif kind == "upscale":
                    job = _Job(message[1], message[2])
                    for index in range(len(job.images)):
                        self.requests.put((job, index))
                    job.done.wait()
                    errors = [r for r in job.results if isinstance(r, BaseException)]
                    if errors:
                        conn.send(("error", f"{type(errors[0]).__name__}: {errors[0]}"))
                    else:
                        conn.send(("ok", job.results))
        finally:
            conn.close()
            with self.lock:
                self.clients -= 1
                self.last_client_left = time.monotonic()

    def _work(self) -> None:
        """Run whatever arrived together (up to batch_size requests, from any client) as one batch."""
        while True:
            batch = [self.requests.get()]
            deadline = time.monotonic() + self.gather
            while len(batch) < self.batch_size:
                try:
                    batch.append(self.requests.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            self.batches.append(len(batch))
            try:
                outputs = self.engine.upscale([job.images[i] for job, i in batch], [job.seeds[i] for job, i in batch])
            except BaseException as exc:  # reported to the waiting clients; the service stays up
                outputs = [exc] * len(batch)
            for (job, index), out in zip(batch, outputs):
                job.results[index] = out
                job.remaining -= 1
                if job.remaining == 0:
                    job.done.set()


class _Job:
    """One client request: its images, seeds, results as they come, and an event when all are in."""

    def __init__(self, images: list, seeds: list):
        self.images, self.seeds = images, seeds
        self.results: list = [None] * len(images)
        self.remaining = len(images)
        self.done = threading.Event()
        if not images:
            self.done.set()


def _serve_main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sr_augment.service")
    parser.add_argument("--root", required=True)
    parser.add_argument("--config", required=True)
    parser.add_argument("--linger", type=float, default=DEFAULT_LINGER)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--gather-ms", type=float, default=20.0)
    args = parser.parse_args(argv)
    config = json.loads(args.config)
    paths = _paths(Path(args.root), service_id(config))
    server = _Server(config, paths, args.linger, args.batch_size, args.gather_ms)
    print(f"sr-augment service pid {os.getpid()}: loaded {server.engine!r}", flush=True)
    server.serve(paths["key"].read_bytes())


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
            return b"sr_augment.service" in fh.read()
    except OSError:  # no /proc (macOS): trust the pid
        return True


def _weights_stamp(spec: str) -> list:
    """Names, sizes and mtimes of a local pipeline folder's model files, the same files its weights
    identity hashes (empty for hub names and ids)."""
    from sr_augment.engines.diffusers_engine import BUILTIN, builtin_weights, pipeline_files

    folder = builtin_weights() if spec == BUILTIN else Path(spec).expanduser()
    if not folder.is_dir():
        return []
    return [[str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns] for p in pipeline_files(folder)]


# ----------------------------------------------------------------------------------------------------
# client side
# ----------------------------------------------------------------------------------------------------
class RemoteEngine:
    """An `Engine` whose work runs in the shared service process (started on first need).

    Args:
        config: {"spec", "scale", "steps", "device", "dtype", "params"}: what `get_engine` takes.
        root: folder for the service's socket, lock and log (the cache folder).
        linger: seconds the service waits after its last client before exiting (default:
            $SR_AUGMENT_SERVICE_LINGER or 10).
        batch_size: the most requests the service runs as one batch.
        timeout: seconds to wait for one answer before raising `ServiceError`.
        connect_timeout: seconds to wait for a running service to accept a connection.
    """

    def __init__(self, config: dict, root: str | os.PathLike, *, linger: float | None = None,
                 batch_size: int = 8, timeout: float = REQUEST_TIMEOUT, connect_timeout: float = CONNECT_TIMEOUT):
        self.config = {"spec": str(config["spec"]), "scale": int(config.get("scale", 4)),
                       "steps": config.get("steps"), "device": config.get("device", "auto"),
                       "dtype": config.get("dtype", "auto"), "params": dict(config.get("params", {}))}
        self.root = Path(root)
        linger = DEFAULT_LINGER if linger is None else linger  # read at call time: tests shorten it
        self.linger, self.batch_size, self.timeout = float(linger), int(batch_size), float(timeout)
        self.connect_timeout = float(connect_timeout)
        self.sid = service_id(self.config)
        self.paths = _paths(self.root, self.sid)
        self._conn = None
        self._pid = None
        self._lock = threading.Lock()
        self._ident_lock = threading.Lock()
        self._ident: dict | None = None

    # -- identity without starting the service ---------------------------------------------------------
    @property
    def name(self) -> str:
        return self._identity()["name"]

    @property
    def scale(self) -> int:
        return int(self._identity()["scale"])

    @property
    def fingerprint(self) -> str:
        return self._identity()["fingerprint"]

    def _identity(self) -> dict:
        """Name, scale and fingerprint, remembered on disk so a warm cache never starts the service.

        The record is tied to this host (device and dtype "auto" resolve per machine) and, for a local
        weights folder, to its files' names, sizes and mtimes: changed weights start the service again.
        """
        with self._ident_lock:  # tf.data calls from several threads at once
            if self._ident is None:
                self._ident = self._load_identity()
            return self._ident

    def _load_identity(self) -> dict:
        stamp = {"host": socket.gethostname(), "weights": _weights_stamp(self.config["spec"])}
        path = self.paths["socket"].with_suffix(".identity.json")
        try:
            record = json.loads(path.read_text())
            if record.get("stamp") == stamp:
                return record["identity"]
        except (OSError, ValueError, KeyError):
            pass
        info = self.info()
        identity = {"name": info["name"], "scale": int(info["scale"]), "fingerprint": info["fingerprint"]}
        tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps({"stamp": stamp, "identity": identity}))
        os.replace(tmp, path)
        return identity

    # -- connection ------------------------------------------------------------------------------------
    def _connect(self):
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        self._conn, self._pid = None, os.getpid()  # a forked copy must not share its parent's socket
        conn = self._try_connect()
        if conn is None:
            conn = self._start_and_connect()
        self._conn = conn
        return conn

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
        return self._failure(f"the engine service (pid {pid}) did not {what} within {self.connect_timeout:.0f} s; "
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
                    raise ServiceError(self._failure(f"the engine service exited with status {process.returncode}"))
                conn = self._try_connect()
                if conn is not None:
                    return conn
                time.sleep(0.05)
            process.kill()
            raise ServiceError(self._failure(f"the engine service did not start within {START_TIMEOUT:.0f} s"))

    def _failure(self, what: str) -> str:
        tail = ""
        if self.paths["log"].exists():
            lines = self.paths["log"].read_text(errors="replace").strip().splitlines()
            tail = "\n".join(lines[-15:])
        return f"{what} (engine {self.config['spec']!r}; log {self.paths['log']}):\n{tail}"

    def _call(self, message):
        with self._lock:
            for attempt in (1, 2):  # one reconnect: the service may have lingered out and exited
                conn = self._connect()
                try:
                    conn.send(message)
                    if not conn.poll(self.timeout):
                        self._drop()
                        raise ServiceError(self._failure(f"no answer from the engine service within {self.timeout:.0f} s"))
                    status, payload = conn.recv()
                    break
                except (EOFError, OSError, BrokenPipeError):
                    self._drop()
                    if attempt == 2:
                        raise ServiceError(self._failure("the engine service closed the connection")) from None
        if status != "ok":
            raise ServiceError(f"engine {self.config['spec']!r} failed in the service: {payload}")
        return payload

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except OSError:
                pass
        self._conn = None

    # -- the Engine contract ---------------------------------------------------------------------------
    def info(self) -> dict:
        """The service's engine name, scale, fingerprint, pid, engine_loads and batch sizes so far."""
        return self._call(("info",))

    def upscale(self, images: Sequence[np.ndarray], seeds: Sequence[int]) -> list[np.ndarray]:
        return self._call(("upscale", [np.ascontiguousarray(i) for i in images], [int(s) for s in seeds]))

    def close(self) -> None:
        with self._lock:
            self._drop()

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_conn"], state["_pid"], state["_lock"], state["_ident_lock"] = None, None, None, None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock, self._ident_lock = threading.Lock(), threading.Lock()

    def __repr__(self) -> str:
        return f"RemoteEngine({self.config['spec']!r}, service={self.sid})"


if __name__ == "__main__":
    _serve_main()
