"""`RemoteEngine`: the `Engine` that callers hold; its work runs in the shared service process.

It implements the `Engine` protocol (name, scale, fingerprint, upscale), so `SRCache` uses it exactly
like a local engine, and it pickles (DataLoader workers and tf.data copy it) without its connection.
It never imports torch; `launcher.ServiceLauncher` finds or starts the service.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from sr_augment.engines.kinds.spandrel import identity_scale_message, warn_model_scale
from sr_augment.service import common
from sr_augment.service.common import CONNECT_TIMEOUT, REQUEST_TIMEOUT, START_TIMEOUT, ServiceError, engine_config, service_id
from sr_augment.service.identity import load_identity, remember_identity
from sr_augment.service.launcher import ServiceLauncher


class RemoteEngine:
    """An `Engine` whose work runs in the shared service process (started on first need).

    Args:
        config: {"spec", "scale", "steps", "device", "dtype", "params"}: what `get_engine` takes.
        root: the cache folder, where the engine's identity is remembered (None: not remembered). The
            service's own files live in a private per-user folder (`common.service_dir`), never here.
        linger: seconds the service waits after its last client before exiting (default:
            $SR_AUGMENT_SERVICE_LINGER or 10).
        batch_size: the most requests the service runs as one batch.
        timeout: seconds to wait for one answer before raising `ServiceError`.
        connect_timeout: seconds to wait for a running service to accept a connection.
        start_timeout: seconds to wait for a service to start (and, plus connect_timeout, for another
            client holding the start lock).
        weights_optional: the caller generates nothing (on_miss "error" or "passthrough"): a remembered
            identity stands for an engine whose weights are not on this machine (`identity.load_identity`).
    """

    def __init__(self, config: dict, root: str | os.PathLike | None = None, *, linger: float | None = None,
                 batch_size: int = 8, timeout: float = REQUEST_TIMEOUT, connect_timeout: float = CONNECT_TIMEOUT,
                 start_timeout: float = START_TIMEOUT, weights_optional: bool = False):
        self.config = engine_config(config)
        self.weights_optional = bool(weights_optional)
        self.root = None if root is None else Path(root)
        linger = common.DEFAULT_LINGER if linger is None else linger  # read at call time: tests shorten it
        self.linger, self.batch_size, self.timeout = float(linger), int(batch_size), float(timeout)
        self.connect_timeout, self.start_timeout = float(connect_timeout), float(start_timeout)
        self.sid = service_id(self.config)
        self._launcher = ServiceLauncher(self.config, self.sid, linger=self.linger, batch_size=self.batch_size,
                                         connect_timeout=self.connect_timeout, start_timeout=self.start_timeout)
        self._conn = None
        self._pid = None
        self._lock = threading.Lock()
        self._ident_lock = threading.Lock()
        self._ident: dict | None = None
        self._unverified = False

    @property
    def paths(self) -> dict[str, Path]:
        """The service's socket, lock, key, log and pid files, in this user's private service folder."""
        return self._launcher.paths

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
        """Name, scale and fingerprint, remembered in the cache folder (`root`) so a warm cache, or a
        copy of it, never starts the service (see `identity`). When it first becomes known here, a model
        run at another scale than its own is said in this process (`ModelScaleWarning`): the service's
        own warning goes to its log only."""
        with self._ident_lock:  # tf.data calls from several threads at once
            if self._ident is None:
                self._ident = self._load_identity()
                warn = identity_scale_message(self._ident)
            else:
                warn = None
        if warn:
            warn_model_scale(warn)
        return self._ident

    def _load_identity(self) -> dict:
        if self.root is not None:
            remembered = load_identity(self.root, self.config, weights_optional=self.weights_optional)
            if remembered is not None:
                self._unverified = True  # checked against the service before it generates anything
                return remembered
        info = self.info()
        identity = {"name": info["name"], "scale": int(info["scale"]), "fingerprint": info["fingerprint"]}
        if self.root is not None:
            remember_identity(self.root, self.config, SimpleNamespace(**identity))
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
        if self._unverified:
            self._verify_identity()
        return self._call(("upscale", [np.ascontiguousarray(i) for i in images], [int(s) for s in seeds]))

    def _verify_identity(self) -> None:
        """A remembered identity can be another machine's ("auto" device and dtype resolve per machine):
        before the first generation, compare it with the service's. On a difference, the record and
        this engine take the service's identity, and this call fails: its cache keys were computed
        with the old one, and storing new pixels under them would mislabel them."""
        info = self.info()
        actual = {"name": info["name"], "scale": int(info["scale"]), "fingerprint": info["fingerprint"]}
        with self._ident_lock:
            remembered, self._ident, self._unverified = self._ident, actual, False
        if remembered != actual:
            if self.root is not None:
                remember_identity(self.root, self.config, SimpleNamespace(**actual))
            raise ServiceError(f"the engine identity remembered in {self.root} is not the running engine's "
                               f"(fingerprint {remembered['fingerprint']!r}, now {actual['fingerprint']!r}: "
                               f"made on another machine or with other settings); it is updated, retry the "
                               f"call (cached entries of the old identity no longer match)")

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
