"""`package.module:Class`: the user's own `Engine` class, built as `Class(scale=..., **params)`, so the CLI
and the engine service can build it by name."""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import inspect
import re
import sys
from pathlib import Path

from sr_augment.engines.base import Engine, EngineSpecError
from sr_augment.engines.registry import EngineKind

CLASS_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def module_exists(name: str) -> bool:
    """Whether module `name` can be found, without importing it or its parent packages."""
    if name in sys.modules:
        return True
    found = None
    for depth, _part in enumerate(name.split(".")):
        full = ".".join(name.split(".")[:depth + 1])
        if full in sys.modules:
            found = getattr(sys.modules[full], "__spec__", None)
            continue
        if depth == 0:
            found = importlib.machinery.PathFinder.find_spec(full) or importlib.util.find_spec(full)
        else:
            locations = None if found is None else found.submodule_search_locations
            found = None if locations is None else importlib.machinery.PathFinder.find_spec(full, list(locations))
        if found is None:
            return False
    return True


def engine_from_class(spec: str, *, scale: int, steps, device: str, dtype: str, **params):
    """Build "package.module:Class" as Class(scale=..., **params). The common options (steps, device,
    dtype when set, and batch_size) are passed only when the constructor takes them."""
    module_name, _, class_name = spec.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise EngineSpecError(f"engine {spec!r}: cannot import {class_name} from {module_name} ({exc})") from None
    accepted = inspect.signature(cls).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
    common = {"steps": steps, "device": None if device == "auto" else device,
              "dtype": None if dtype == "auto" else dtype, "batch_size": params.pop("batch_size", None)}
    params.update({k: v for k, v in common.items() if v is not None and (takes_any or k in accepted)})
    engine = cls(scale=scale, **params)
    if not isinstance(engine, Engine):
        raise TypeError(f"engine {spec!r}: {class_name} does not implement the Engine protocol "
                        f"(name, scale, fingerprint, upscale)")
    return engine


class UserClassKind(EngineKind):
    id = "user-class"
    accepts = "'package.module:Class'"
    form = ("package.module:Class", "your own class implementing the Engine protocol")
    needs = "whatever the class needs"
    listed = 90

    def matches(self, spec):
        return bool(CLASS_SPEC.match(spec)) and not Path(spec).exists()

    def check(self, spec, params=None):
        module = spec.partition(":")[0]
        if not module_exists(module):
            raise EngineSpecError(f"module {module!r} of {spec!r} cannot be found")

    def build(self, spec, *, scale=4, steps=None, device="auto", dtype="auto", **params):
        return engine_from_class(spec, scale=scale, steps=steps, device=device, dtype=dtype, **params)


KIND = UserClassKind()
