"""`RemoteEngine`: the `Engine` that callers hold; its work runs in the shared service process.

It implements the `Engine` protocol (name, scale, fingerprint, upscale), so `SRCache` uses it exactly
like a local engine, and it pickles (DataLoader workers and tf.data copy it) without its connection.
It never imports torch; `launcher.ServiceLauncher` finds or starts the service.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from pathlib import Path
from typing import Sequence

import numpy as np

from sr_augment.engines import weights_stamp
from sr_augment.service import common
from sr_augment.service.common import CONNECT_TIMEOUT, REQUEST_TIMEOUT, ServiceError, service_id, service_paths
from sr_augment.service.launcher import ServiceLauncher


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
        linger = common.DEFAULT_LINGER if linger is None else linger  # read at call time: tests shorten it
        self.linger, self.batch_size, self.timeout = float(linger), int(batch_size), float(timeout)
        self.connect_timeout = float(connect_timeout)
        self.sid = service_id(self.config)
        self.paths = service_paths(self.root, self.sid)
        self._launcher = ServiceLauncher(self.config, self.root, self.paths, linger=self.linger,
                                         batch_size=self.batch_size, connect_timeout=self.connect_timeout)
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
        stamp = {"host": socket.gethostname(), "weights": weights_stamp(self.config["spec"])}
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

    # -- calls -----------------------------------------------------------------------------------------
    def _connect(self):
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        self._conn, self._pid = None, os.getpid()  # a forked copy must not share its parent's socket
        self._conn = self._launcher.connect()
        return self._conn

    def _call(self, message):
        with self._lock:
            for attempt in (1, 2):  # one reconnect: the service may have lingered out and exited
                conn = self._connect()
                try:
                    conn.send(message)
                    if not conn.poll(self.timeout):
                        self._drop()
                        raise ServiceError(self._launcher.failure(
                            f"no answer from the engine service within {self.timeout:.0f} s"))
                    status, payload = conn.recv()
                    break
                except (EOFError, OSError, BrokenPipeError):
                    self._drop()
                    if attempt == 2:
                        raise ServiceError(self._launcher.failure("the engine service closed the connection")) from None
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
