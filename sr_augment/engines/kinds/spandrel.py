"""A single-file SR checkpoint (.pth, .pt, .ckpt, .safetensors: ESRGAN, SwinIR, HAT, DAT...) loaded through spandrel."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import warnings
from pathlib import Path

from sr_augment.engines.base import EngineSpecError
from sr_augment.engines.registry import INT, NONE, TEXT, EngineKind, Parameter
from sr_augment.engines.specs import SPANDREL_INSTALL, SPANDREL_SUFFIXES, is_spandrel_file
from sr_augment.errors import ModelScaleWarning

SPANDREL_PARAMETERS = (
    Parameter("batch_size", INT, low=1), Parameter("tile", INT + NONE, low=8, also=(0,)), Parameter("overlap", INT, low=0),
    Parameter("name", TEXT + NONE),
    Parameter("steps", NONE, note="not a diffusion model: steps does not apply (leave it unset)"),
)
"""What `SpandrelEngine.__init__` takes besides the path, scale, device and dtype (tile 0: never tile)."""


def model_scale_message(name: str, native_scale: int, scale: int, architecture: str = "") -> str:
    """What `ModelScaleWarning` says: a x`native_scale` model asked for x`scale` runs at its own factor and
    its output is resized."""
    return (f"{name} is a x{native_scale} model{f' ({architecture})' if architecture else ''}; with scale={scale} its "
            f"output is resized (bicubic) to x{scale}. Leave scale unset to run it at its own x{native_scale}")


def identity_scale_message(identity: dict) -> str | None:
    """The `ModelScaleWarning` text for an engine identity (name, scale, fingerprint: from the engine service
    or remembered in a cache) of a spandrel or realesrgan model run at another scale than its own; else None.
    The fingerprint names the model's own factor, so nothing is loaded."""
    try:
        fields = json.loads(identity["fingerprint"])
        scale, native = int(identity["scale"]), int(fields["native_scale"])
    except (KeyError, TypeError, ValueError):
        return None
    if not isinstance(fields, dict) or fields.get("engine") not in ("spandrel", "realesrgan") or scale == native:
        return None
    return model_scale_message(str(identity.get("name", "the model")), native, scale, str(fields.get("architecture", "")))


CALLERS_SKIPPED = ("sr_augment", "torch", "torchvision", "keras", "tensorflow", "tf_keras", "multiprocessing",
                   "concurrent", "threading", "runpy", "importlib")
"""Modules whose lines a `ModelScaleWarning` never points at: sr-augment's own, and the frameworks and
machinery that call it (a DataLoader worker, a tf.data thread, `python -m`)."""

_FALLBACK_REGISTRY: dict = {}


def warn_model_scale(message: str) -> None:
    """`ModelScaleWarning(message)` reported at the caller's first line outside sr-augment and the frameworks
    calling it (`CALLERS_SKIPPED`: the user's call, the command line's entry point), as
    `warnings.warn(skip_file_prefixes=...)` does from Python 3.12, never at a line inside the library
    (`engine = kind.build(...)`), which says nothing to the user; "sr-augment:0" where there is no such
    line (a DataLoader worker), once per process."""
    own = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "")
    frame = sys._getframe(1)
    while frame is not None and (str(frame.f_globals.get("__name__", "")).split(".")[0] in CALLERS_SKIPPED
                                 or frame.f_code.co_filename.startswith(own)):
        frame = frame.f_back
    if frame is None:
        warnings.warn_explicit(message, ModelScaleWarning, "sr-augment", 0, module="sr_augment",
                               registry=_FALLBACK_REGISTRY)
        return
    warnings.warn_explicit(message, ModelScaleWarning, frame.f_code.co_filename, frame.f_lineno,
                           module=frame.f_globals.get("__name__"),
                           registry=frame.f_globals.setdefault("__warningregistry__", {}), module_globals=frame.f_globals)


def files_stamp(paths) -> list:
    """[resolved path, size] of each existing file (no mtime: copies keep it)."""
    return [[str(p.resolve()), p.stat().st_size] for p in paths if p.is_file()]


_HASH_MEMO: dict[tuple, str] = {}


def fingerprint_fields(identity: dict, engine: str) -> dict | None:
    """The fields of an identity record's fingerprint (JSON) when it is `engine`'s, else None: a record
    is untrusted input, so anything else (not JSON, not an object, another engine) is simply not it."""
    try:
        fields = json.loads(identity["fingerprint"])
    except (ValueError, TypeError, KeyError):
        return None
    return fields if isinstance(fields, dict) and fields.get("engine") == engine else None


def hash_file(path: Path) -> str:
    """blake2b of the file's content (memoised on path, size and mtime): the weights' identity, as the
    engine's fingerprint names it."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _HASH_MEMO:
        digest = hashlib.blake2b(digest_size=16)
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 23), b""):
                digest.update(chunk)
        _HASH_MEMO[key] = digest.hexdigest()
    return _HASH_MEMO[key]


class SpandrelFileKind(EngineKind):
    id = "spandrel-file"
    accepts = f"a spandrel checkpoint file ({', '.join(SPANDREL_SUFFIXES)})"
    form = ("FILE.pth", "a spandrel SR checkpoint (.pth/.pt/.ckpt/.safetensors: ESRGAN, SwinIR, HAT, DAT, ...): "
                        "deterministic, fast; needs spandrel")
    needs = SPANDREL_INSTALL
    listed = 60
    parameters = SPANDREL_PARAMETERS
    scale_from_model = True  # no scale given: the checkpoint's own factor, never a resize to 4x

    def matches(self, spec):
        return is_spandrel_file(spec)

    def check(self, spec, params=None):
        if not Path(spec).expanduser().is_file():
            raise EngineSpecError(f"{spec}: no such file")
        super().check(spec, params)

    def build(self, spec, *, scale=4, steps=None, device="auto", dtype="auto", **params):
        from sr_augment.engines.spandrel_engine import spandrel_engine

        return spandrel_engine(spec, scale=scale, steps=steps, device=device, dtype=dtype, **params)

    def weights_stamp(self, spec, params=None):
        return files_stamp([Path(spec).expanduser()])

    def deterministic(self, spec):
        return True

    def weights_absent(self, spec):
        return not Path(spec).expanduser().exists()

    def identity_problem(self, spec, identity):
        """A record of this spec made from other weights than the file here (same path, even same size:
        another fine-tune) must not claim its entries: the fingerprint names the weights' hash."""
        path = Path(spec).expanduser()
        if not path.is_file():
            return None  # absent weights: the record is all there is (see `weights_absent`)
        fields = fingerprint_fields(identity, "spandrel")
        if fields is None:
            return "its fingerprint is not a spandrel engine's"
        if fields.get("weights") != hash_file(path):
            return f"it was made from other weights than {path} holds now"
        return None


KIND = SpandrelFileKind()
