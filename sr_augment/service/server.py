"""The service process: loads one engine, listens on the Unix socket, batches all clients' requests.

This is the only part of the service that imports torch (through `get_engine`), and it runs only in
the process that `python -m sr_augment.service` starts. It exits `linger` seconds after its last
client disconnects.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import threading
import time
from multiprocessing.connection import Listener
from pathlib import Path

from sr_augment.service.common import DEFAULT_LINGER, service_id, service_paths


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


def serve_main(argv: list[str] | None = None) -> None:
    """The command line of `python -m sr_augment.service`: load the engine, then serve until idle."""
    parser = argparse.ArgumentParser(prog="python -m sr_augment.service")
    parser.add_argument("--root", required=True)
    parser.add_argument("--config", required=True)
    parser.add_argument("--linger", type=float, default=DEFAULT_LINGER)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--gather-ms", type=float, default=20.0)
    args = parser.parse_args(argv)
    config = json.loads(args.config)
    paths = service_paths(Path(args.root), service_id(config))
    server = _Server(config, paths, args.linger, args.batch_size, args.gather_ms)
    print(f"sr-augment service pid {os.getpid()}: loaded {server.engine!r}", flush=True)
    server.serve(paths["key"].read_bytes())
