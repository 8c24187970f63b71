"""The service process: loads one engine, listens on the Unix socket, batches all clients' requests.

This is the only part of the service that imports torch (through `get_engine`), and it runs only in
the process that `python -m sr_augment.service` starts. Every connection is checked before anything is
read from it: the peer must run as this user (SO_PEERCRED) and answer the key's HMAC challenge. If its
socket file disappears (the service folder was deleted), it re-creates folder, key, pid file and socket,
so clients find it again instead of starting a second copy of the model. It exits `linger` seconds
after its last client disconnects, or when another service has taken its socket's place.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import socket
import sys
import threading
import time
from multiprocessing.connection import AuthenticationError, Connection, answer_challenge, deliver_challenge
from pathlib import Path

from sr_augment.service.common import (
    DEFAULT_LINGER,
    ServiceError,
    check_peer,
    check_private_dir,
    read_key,
    service_id,
    service_paths,
)
from sr_augment.service.launcher import same_folder


class _Server:
    def __init__(self, config: dict, folder: Path, sid: str, linger: float, batch_size: int, gather_ms: float):
        from sr_augment.engines import get_engine

        params = dict(config.get("params", {}))
        self.engine = get_engine(config["spec"], scale=config["scale"], steps=config["steps"],
                                 device=config["device"], dtype=config["dtype"], **params)
        self.engine_loads = 1
        self.folder, self.sid = folder, sid
        self.linger, self.batch_size, self.gather = linger, batch_size, gather_ms / 1000.0
        self.requests: queue.Queue = queue.Queue()
        self.clients = 0
        self.last_client_left = time.monotonic()
        self.lock = threading.Lock()
        self.batches: list[int] = []

    def info(self) -> dict:
        return {"name": self.engine.name, "scale": self.engine.scale, "fingerprint": self.engine.fingerprint,
                "pid": os.getpid(), "engine_loads": self.engine_loads, "batches": list(self.batches)}

    def serve(self, authkey: bytes) -> None:
        self.authkey = authkey
        threading.Thread(target=self._work, daemon=True).start()
        listening = self._bind()
        while True:
            time.sleep(0.2)
            with self.lock:
                idle = self.clients == 0 and time.monotonic() - self.last_client_left > self.linger
            if idle:
                break
            state = self._socket_state(listening)
            if state == "replaced":  # another service answers at our address now: leave it the place
                break
            if state == "missing":  # our folder was deleted: be reachable again, never duplicated
                listening.close()
                listening = self._bind()
        listening.close()
        if self._socket_state(listening) == "ours":  # only our own: a successor may have bound a new one
            self.paths["socket"].unlink(missing_ok=True)

    def _bind(self) -> socket.socket:
        """Listen at our socket path, re-creating the private folder, key and pid file if they are gone."""
        self.paths = service_paths(check_private_dir(self.folder), self.sid)
        try:
            if read_key(self.paths["key"]) != self.authkey:
                raise ServiceError(f"the key {self.paths['key']} was replaced; this service leaves the place")
        except FileNotFoundError:
            tmp = self.paths["key"].with_suffix(f".{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(self.authkey)
            os.link(tmp, self.paths["key"])  # never replaces a key: a reader sees none or all of it
            tmp.unlink()
        listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listening.bind(str(self.paths["socket"]))
        listening.listen(64)  # a deep backlog: many DataLoader workers connect at once
        listening.settimeout(0.2)  # the accept loop notices a closed socket
        self.socket_inode = os.lstat(self.paths["socket"]).st_ino
        pid_tmp = self.paths["pid"].with_suffix(f".{os.getpid()}.tmp")
        pid_tmp.write_text(str(os.getpid()))
        os.replace(pid_tmp, self.paths["pid"])
        threading.Thread(target=self._accept, args=(listening,), daemon=True).start()
        return listening

    def _socket_state(self, listening: socket.socket) -> str:
        try:
            return "ours" if os.lstat(self.paths["socket"]).st_ino == self.socket_inode else "replaced"
        except FileNotFoundError:
            return "missing"

    def _accept(self, listening: socket.socket) -> None:
        while listening.fileno() != -1:
            try:
                client, _ = listening.accept()
            except OSError:  # the timeout, or the socket closing
                continue
            threading.Thread(target=self._client, args=(client,), daemon=True).start()

    def _client(self, sock: socket.socket) -> None:
        """Prove the peer (same user, then the key's challenge both ways) before reading anything."""
        try:
            check_peer(sock, "the service socket")
            conn = Connection(sock.detach())
        except (ServiceError, OSError) as exc:
            print(f"refused a connection: {exc}", flush=True)
            sock.close()
            return
        try:
            deliver_challenge(conn, self.authkey)
            answer_challenge(conn, self.authkey)
        except (AuthenticationError, EOFError, OSError):
            conn.close()
            return
        with self.lock:
            self.clients += 1
        try:
            self._serve_client(conn)
        finally:
            conn.close()
            with self.lock:
                self.clients -= 1
                self.last_client_left = time.monotonic()

    def _serve_client(self, conn: Connection) -> None:
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


def _enter_callers_folder() -> None:
    """Drop every relative `sys.path` entry (one would follow the working folder), then change into the
    caller's working folder (from the launcher's environment), so a relative path in the engine
    settings means what it means to the caller; nothing is ever imported from that folder (an entry
    that names it, however spelled, is dropped too)."""
    cwd = os.environ.get("SR_AUGMENT_SERVICE_CALLER_CWD")
    sys.path[:] = [entry for entry in sys.path
                   if entry and os.path.isabs(entry) and not (cwd and same_folder(entry, cwd))]
    if cwd:
        try:
            os.chdir(cwd)
        except OSError as exc:  # gone or unreadable: relative engine paths then fail, naming the path
            print(f"sr-augment service: cannot enter the caller's folder {cwd!r} ({exc})", flush=True)


def serve_main(argv: list[str] | None = None) -> None:
    """The command line of `python -m sr_augment.service`: load the engine, then serve until idle."""
    parser = argparse.ArgumentParser(prog="python -m sr_augment.service")
    parser.add_argument("--dir", required=True, help="the private folder of the service's files")
    parser.add_argument("--sid", required=True, help="the service id (also how clients find it in /proc)")
    parser.add_argument("--config", required=True)
    parser.add_argument("--linger", type=float, default=DEFAULT_LINGER)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--gather-ms", type=float, default=20.0)
    args = parser.parse_args(argv)
    config = json.loads(args.config)
    if service_id(config) != args.sid:
        raise SystemExit(f"--sid {args.sid} is not the id of --config (expected {service_id(config)})")
    folder = Path(args.dir)
    _enter_callers_folder()
    authkey = read_key(service_paths(check_private_dir(folder), args.sid)["key"])
    server = _Server(config, folder, args.sid, args.linger, args.batch_size, args.gather_ms)
    print(f"sr-augment service pid {os.getpid()}: loaded {server.engine!r}", flush=True)
    server.serve(authkey)
