"""An engine's identity (name, scale, fingerprint), remembered in the cache folder so that a warm cache
never starts the engine service: `<cache>/identities/<id>.json`.

The record lives in the cache because it describes what the cache holds, and it travels with copies:
it is keyed by the engine settings, the sr-augment version and the weights files' names and sizes
(not mtimes, not the host name: a copied cache, or one opened in a new container, must still match).
The cache is untrusted: the record is parsed as JSON only, validated, never read or written through a
symlink; a bad record is ignored with a warning and rewritten. A read-only cache stores no record.
"""

from __future__ import annotations

import json
import os
import stat
import threading
import warnings
from pathlib import Path

from sr_augment.cache import layout
from sr_augment.service.common import engine_config, service_id

FOLDER = layout.IDENTITIES
_MAX_BYTES = 64 * 1024
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def identity_config(config: dict) -> dict:
    """The settings an identity depends on: the engine config less `batch_size` (how many images run
    together changes no fingerprint; the CLI sets it, the adapters do not)."""
    config = engine_config(config)
    config["params"].pop("batch_size", None)
    return config


def identity_stamp(config: dict) -> dict:
    """What must still hold for a remembered identity to be current: library version and weights files."""
    import sr_augment
    from sr_augment.engines import weights_stamp

    return {"version": str(sr_augment.__version__), "weights": weights_stamp(config["spec"], config.get("params"))}


def record_path(cache_dir, config: dict) -> Path:
    return Path(cache_dir) / FOLDER / f"{service_id(identity_config(config))}.json"


def load_identity(cache_dir, config: dict) -> dict | None:
    """The remembered identity of `config` in `cache_dir`, or None (none, stale, or bad: warned)."""
    path = record_path(cache_dir, config)
    try:
        if not stat.S_ISDIR(os.lstat(path.parent).st_mode):  # a symlink out of the cache: never follow it
            return None
        # O_NONBLOCK: a planted FIFO must not block the open; fstat then refuses anything but a file
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
    except OSError:  # absent, unreadable, or a symlink (ELOOP): not ours to follow
        return None
    try:
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                raise ValueError("not a regular file")
            data = fh.read(_MAX_BYTES + 1)
        if len(data) > _MAX_BYTES:
            raise ValueError(f"larger than {_MAX_BYTES} bytes")
        record = json.loads(data)
        identity = _validated(record)
    except (OSError, ValueError, RecursionError) as exc:  # RecursionError: deeply nested planted JSON
        warnings.warn(f"ignoring the engine identity record {path}: {type(exc).__name__}: {exc}; it will be rewritten",
                      stacklevel=3)
        return None
    return identity if record["stamp"] == identity_stamp(identity_config(config)) else None


def _validated(record) -> dict:
    """The identity of a parsed record, or ValueError saying what is wrong with it."""
    if not isinstance(record, dict) or not isinstance(record.get("stamp"), dict):
        raise ValueError("not an object with a 'stamp' object")
    identity = record.get("identity")
    if not isinstance(identity, dict) or set(identity) != {"name", "scale", "fingerprint"}:
        raise ValueError("'identity' must hold exactly name, scale and fingerprint")
    name, scale, fingerprint = identity["name"], identity["scale"], identity["fingerprint"]
    if not isinstance(name, str) or not 0 < len(name) <= 1024:
        raise ValueError("'name' must be a string of 1 to 1024 characters")
    if type(scale) is not int or not 1 <= scale <= 64:
        raise ValueError("'scale' must be an integer from 1 to 64")
    if not isinstance(fingerprint, str) or not 0 < len(fingerprint) <= 16384:
        raise ValueError("'fingerprint' must be a string of 1 to 16384 characters")
    return {"name": name, "scale": scale, "fingerprint": fingerprint}


def remember_identity(cache_dir, config: dict, engine) -> bool:
    """Store `engine`'s identity for `config` in `cache_dir`; False when the cache cannot take it
    (read-only, or its `identities` entry is not a plain folder). Atomic: tmp file, then os.replace."""
    identity = {"name": str(engine.name), "scale": int(engine.scale), "fingerprint": str(engine.fingerprint)}
    try:
        _validated({"stamp": {}, "identity": identity})
    except ValueError:
        return False  # an identity we could not read back: remember nothing
    path = record_path(cache_dir, config)
    text = json.dumps({"stamp": identity_stamp(identity_config(config)), "identity": identity}).encode()
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        path.parent.mkdir(exist_ok=True)
        if not stat.S_ISDIR(os.lstat(path.parent).st_mode):  # a symlink out of the cache: never follow it
            return False
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o666)  # umask decides the mode
        with os.fdopen(fd, "wb") as fh:
            fh.write(text)
        os.replace(tmp, path)
        return True
    except OSError:
        try:
            tmp.unlink()
        except OSError:
            pass
        return False


def remember_engine_identity(cache_dir, engine) -> bool:
    """For `warm`: store the identity of an engine built by `get_engine` from a spec (it carries the
    config it was built from as `service_config`), so that adapters on this cache start no service."""
    config = getattr(engine, "service_config", None)
    if not isinstance(config, dict):
        return False
    return remember_identity(cache_dir, config, engine)
