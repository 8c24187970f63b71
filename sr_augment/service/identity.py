"""An engine's identity (name, scale, fingerprint), remembered in the cache folder so that a warm cache
never starts the engine service: `<cache>/identities/<id>.json`.

The record lives in the cache because it describes what the cache holds, and it travels with copies,
with `export`/`import` (as `<shards>/identities/<id>.json`) and with `merge` (`records`, `store_record`):
it is keyed by the engine settings, the sr-augment version and the weights files' names and sizes
(not mtimes, not the host name: a copied cache, or one opened in a new container, must still match).
It names the settings it was made for (`config`), so a record filed under another settings' id is
refused. The cache is untrusted: the record is parsed as JSON only, validated, never read or written
through a symlink; a bad record is ignored with a warning and rewritten. A read-only cache stores no record.

A record is never used for an engine whose weights here are not the ones it was made from: the engine's
kind checks it (`EngineKind.identity_problem`: a spandrel checkpoint's fingerprint names the file's hash).
When the weights are not on this machine at all (a checkpoint file a training node does not have), a
record made by the same sr-augment version stands for the engine if the caller will generate nothing
(`weights_optional`: `on_miss="error"` or `"passthrough"`): the spec, its settings and the cache are then
all that identify the engine.
"""

from __future__ import annotations

import json
import os
import re
import stat
import threading
import warnings
from pathlib import Path

from sr_augment.cache import layout
from sr_augment.service.common import engine_config, service_id

FOLDER = layout.IDENTITIES
_MAX_BYTES = 64 * 1024
MAX_BYTES = _MAX_BYTES
"""The largest record file read (a larger one is refused unread)."""
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def identity_config(config: dict) -> dict:
    """The settings an identity depends on: the engine config less `batch_size` (how many images run
    together changes no fingerprint; the CLI sets it, the adapters do not)."""
    config = engine_config(config)
    config["params"].pop("batch_size", None)
    return config


def _located(config: dict) -> dict:
    """`identity_config(config)` with a checkpoint file's spec as its absolute, normalised path (a relative
    one resolved against the working folder, `..` removed): records are made and looked up by the file,
    not by its spelling. Records hold this form; `_checked` (export, import, merge) takes them as they are."""
    from sr_augment.engines import REGISTRY, EngineSpecError

    config = identity_config(config)
    try:
        kind = REGISTRY.kind_of(config["spec"])
    except EngineSpecError:
        return config
    if kind.id == "spandrel-file":
        config["spec"] = os.path.normpath(os.path.abspath(os.path.expanduser(config["spec"])))
    return config


def identity_stamp(config: dict) -> dict:
    """What must still hold for a remembered identity to be current: library version and weights files."""
    import sr_augment
    from sr_augment.engines import weights_stamp

    return {"version": str(sr_augment.__version__), "weights": weights_stamp(config["spec"], config.get("params"))}


def _plain(config: dict) -> dict:
    """`config` as its record holds it: JSON values (a path parameter as its text, as `service_id` hashes it)."""
    return json.loads(json.dumps(config, sort_keys=True, default=str))


def record_path(cache_dir, config: dict) -> Path:
    return Path(cache_dir) / FOLDER / f"{service_id(_located(config))}.json"


def _read(path: Path) -> bytes | None:
    """The bytes of the record file `path` (at most `_MAX_BYTES`), None when there is none to read (absent,
    unreadable, a symlink, or its folder a symlink); ValueError for a file that is not a record's."""
    try:
        if not stat.S_ISDIR(os.lstat(path.parent).st_mode):  # a symlink out of the cache: never follow it
            return None
        # O_NONBLOCK: a planted FIFO must not block the open; fstat then refuses anything but a file
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
    except OSError:  # absent, unreadable, or a symlink (ELOOP): not ours to follow
        return None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise ValueError("not a regular file")
        data = fh.read(_MAX_BYTES + 1)
    if len(data) > _MAX_BYTES:
        raise ValueError(f"larger than {_MAX_BYTES} bytes")
    return data


def _parsed(data: bytes) -> tuple[dict, dict]:
    """(the record, its identity) of a record file's bytes, or ValueError saying what is wrong."""
    try:
        record = json.loads(data)
    except RecursionError:  # deeply nested planted JSON
        raise ValueError("nested too deeply") from None
    return record, _validated(record)


def load_identity(cache_dir, config: dict, *, weights_optional: bool = False) -> dict | None:
    """The remembered identity of `config` in `cache_dir`, or None (none, stale, or bad: warned). With
    `weights_optional` (the caller generates nothing), a record stands for an engine whose weights are
    not on this machine (see the module's docstring). A record made with `scale` unset (a checkpoint
    run at its model's own factor) also stands for `scale` given equal to that factor."""
    identity = _load(cache_dir, config, weights_optional)
    if identity is None and config.get("scale") is not None:
        native = _load(cache_dir, {**config, "scale": None}, weights_optional)
        if native is not None and native["scale"] == int(config["scale"]):
            return native
    if identity is None and config.get("scale", 4) is None:  # and the other way round: a record of scale=N
        wanted = {key: value for key, value in _plain(_located(config)).items() if key != "scale"}
        for _, data in records(cache_dir)[0]:
            held = json.loads(data)["config"]
            if held["scale"] is None or {key: value for key, value in held.items() if key != "scale"} != wanted:
                continue
            given = _load(cache_dir, {**config, "scale": held["scale"]}, weights_optional)
            if given is not None and given["scale"] == _native_scale(given):
                return given
    return identity


def _native_scale(identity: dict) -> int | None:
    """The model's own factor, as an engine's fingerprint names it (`native_scale`), else None."""
    try:
        fields = json.loads(identity["fingerprint"])
    except ValueError:
        return None
    return fields.get("native_scale") if isinstance(fields, dict) else None


def _load(cache_dir, config: dict, weights_optional: bool) -> dict | None:
    from sr_augment.engines import REGISTRY, EngineSpecError

    path = record_path(cache_dir, config)
    try:
        data = _read(path)
        if data is None:
            return None
        record, identity = _parsed(data)
    except (OSError, ValueError) as exc:
        warnings.warn(f"ignoring the engine identity record {path}: {type(exc).__name__}: {exc}; it will be rewritten",
                      stacklevel=3)
        return None
    config = _located(config)
    if record.get("config", _plain(config)) != _plain(config):  # filed under the id of other settings
        return None
    try:
        kind = REGISTRY.kind_of(config["spec"])
    except EngineSpecError:
        kind = None
    current = identity_stamp(config)
    if record["stamp"] != current:
        absent = kind is not None and kind.weights_absent(config["spec"])
        if not (weights_optional and absent and record["stamp"].get("version") == current["version"]):
            return None
    if kind is not None and kind.identity_problem(config["spec"], identity):
        return None
    return identity


def _validated(record) -> dict:
    """The identity of a parsed record, or ValueError saying what is wrong with it."""
    if not isinstance(record, dict) or not isinstance(record.get("stamp"), dict):
        raise ValueError("not an object with a 'stamp' object")
    if "config" in record and not isinstance(record["config"], dict):
        raise ValueError("'config' must be an object")
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
    config = _located(config)
    text = json.dumps({"stamp": identity_stamp(config), "identity": identity, "config": _plain(config)}).encode()
    return _write(record_path(cache_dir, config), text)


def _write(path: Path, text: bytes) -> bool:
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


RECORD_NAME = re.compile(r"[0-9a-f]{16}\.json")
"""The names records are filed under: the settings' `service_id`."""


def records(cache_dir) -> tuple[list[tuple[str, bytes]], list[tuple[str, str]]]:
    """([(name, bytes)] of the records in `cache_dir` that `export` and `merge` carry along, [(name, why
    not)]): a record must be valid, name its settings (`config`) and be filed under their id."""
    folder = Path(cache_dir) / FOLDER
    try:
        names = sorted(os.listdir(folder)) if stat.S_ISDIR(os.lstat(folder).st_mode) else []
    except OSError:
        names = []
    found, problems = [], []
    for name in names:
        if name.startswith("."):  # a writer's temporary file
            continue
        try:
            data = _read(folder / name)
            if data is None:
                raise ValueError("not a file that can be read (a symlink?)")
            _checked(name, data)
        except (OSError, ValueError) as exc:
            problems.append((name, str(exc)))
            continue
        found.append((name, data))
    return found, problems


def _checked(name: str, data: bytes) -> dict:
    """The record of a record file `name` holding `data`, or ValueError saying why it is not one to carry."""
    if not RECORD_NAME.fullmatch(name):
        raise ValueError("not a record's name (16 hex digits .json)")
    record, _ = _parsed(data)
    config = record.get("config")
    if not isinstance(config, dict) or set(config) != {"spec", "scale", "steps", "device", "dtype", "params"}:
        raise ValueError("names no engine settings ('config'): made by an older sr-augment")
    try:
        expected = f"{service_id(identity_config(config))}.json"
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"its engine settings are not valid ({exc})") from None
    if name != expected or _plain(identity_config(config)) != config:
        raise ValueError(f"filed under another id than its engine settings' ({expected})")
    return record


def store_record(cache_dir, name: str, data: bytes) -> bool:
    """Store the record file `name` (from shards or another cache: untrusted) in `cache_dir`; False when
    the same record is there already. ValueError saying why it is refused (see `_checked`), OSError when
    the cache cannot take it."""
    _checked(name, data)
    path = Path(cache_dir) / FOLDER / name
    try:
        if _read(path) == data:
            return False
    except ValueError:
        pass  # a bad record in its place: replaced
    if not _write(path, data):
        raise OSError(f"cannot write {path} (read-only, or {FOLDER} is not a plain folder)")
    return True


_SHOWN = ("device", "dtype", "scale", "steps", "params")


def held_settings(cache_dir, config: dict) -> list[str]:
    """For a refusal: one line per identity record in `cache_dir` made for the same checkpoint file as
    `config` (any spelling of its path), giving its settings and which of `config`'s differ, so that the
    caller can fix them in one try. Empty when the cache holds no record of this file."""
    wanted = _located(config)
    lines = []
    for _, data in records(cache_dir)[0]:
        record = json.loads(data)
        held = record["config"]
        if os.path.normpath(os.path.abspath(os.path.expanduser(str(held["spec"])))) != wanted["spec"]:
            continue
        native = record["identity"]["scale"]
        value = {key: repr(held[key]) for key in _SHOWN}
        if held["scale"] is None:
            value["scale"] = f"None (the model's own factor, {native})"
        shown = ", ".join(f"{key}={value[key]}" for key in _SHOWN if key != "params" or held[key])
        plain = _plain(wanted)
        differ = [f"{key}: {plain[key]!r} here, {value[key]} in the cache" for key in _SHOWN
                  if plain[key] != held[key] and not (key == "scale" and held[key] is None and plain[key] == native)]
        lines.append(f"{shown}" + (f" -- differs: {'; '.join(differ)}" if differ else ""))
    return lines
