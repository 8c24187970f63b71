"""What the service's client and server must agree on: the id of an engine configuration, the files
that id names (socket, lock, key, log, pid), the error type and the default timeouts.

Kept apart from both sides so the client never imports the server (nor torch) to learn them.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

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


def service_paths(root: Path, sid: str) -> dict[str, Path]:
    """The socket, lock, key, log and pid files of service `sid` under `root`/services (created)."""
    folder = root / "services"
    folder.mkdir(parents=True, exist_ok=True)
    return {"socket": folder / f"{sid}.sock", "lock": folder / f"{sid}.lock", "key": folder / f"{sid}.key",
            "log": folder / f"{sid}.log", "pid": folder / f"{sid}.pid"}
