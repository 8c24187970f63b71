"""`package.module:Class`: the user's own `Engine` class, built as `Class(scale=..., **params)`, so the CLI
and the engine service can build it by name."""

from __future__ import annotations

import ast
import importlib
import importlib.machinery
import importlib.util
import inspect
import re
import sys
from pathlib import Path

from sr_augment.engines.base import Engine, EngineSpecError
from sr_augment.engines.registry import EngineKind, Parameter

CLASS_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


PASSED_WHEN_TAKEN = ("steps", "batch_size")
"""Options `engine_from_class` passes only when the constructor takes them: always accepted."""


def module_exists(name: str) -> bool:
    """Whether module `name` can be found, without importing it or its parent packages."""
    return name in sys.modules or find_module(name) is not None


def find_module(name: str):
    """The `ModuleSpec` of module `name`, or None, without importing it or its parent packages."""
    if name in sys.modules:
        return getattr(sys.modules[name], "__spec__", None)
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
            return None
    return found


def constructor_parameters(spec: str) -> tuple[Parameter, ...] | None:
    """The keyword parameters of the constructor of "module:Class" (but scale), or None when they cannot be
    told (a `**kwargs`, no `__init__` of its own, ...: then anything is passed on). An imported module's
    class is asked (`inspect.signature`); a module not imported yet is read, not imported (it may import
    torch, which a TensorFlow process must never do): its class's `__init__` in the source."""
    module_name, _, class_name = spec.partition(":")
    if module_name in sys.modules:
        taken = _signature_parameters(getattr(sys.modules[module_name], class_name, None))
    else:
        taken = _source_parameters(find_module(module_name), class_name)
    if taken is None:
        return None
    return (*(Parameter(name, required=required and name not in PASSED_WHEN_TAKEN) for name, required in taken
              if name not in ("scale", "device", "dtype")),
            *(Parameter(name) for name in PASSED_WHEN_TAKEN if name not in dict(taken)))


def _signature_parameters(cls) -> list[tuple[str, bool]] | None:
    try:
        parameters = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):  # not a class, or no signature to be had
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [(p.name, p.default is inspect.Parameter.empty) for p in parameters if p.kind in keyword]


def _source_parameters(module_spec, class_name: str) -> list[tuple[str, bool]] | None:
    origin = getattr(module_spec, "origin", None)
    if not origin or not str(origin).endswith(".py"):
        return None
    try:
        tree = ast.parse(Path(origin).read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return None
    found = [node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == class_name]
    init = [node for node in (found[-1].body if found else ()) if isinstance(node, ast.FunctionDef) and node.name == "__init__"]
    if not init or init[-1].args.kwarg is not None:
        return None
    args = init[-1].args
    positional = args.args[1:]  # not self
    first_default = len(positional) - len(args.defaults)
    return ([(a.arg, i < first_default) for i, a in enumerate(positional)]
            + [(a.arg, default is None) for a, default in zip(args.kwonlyargs, args.kw_defaults)])


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
        super().check(spec, params)

    def accepted(self, spec):
        return constructor_parameters(spec)

    def build(self, spec, *, scale=4, steps=None, device="auto", dtype="auto", **params):
        return engine_from_class(spec, scale=scale, steps=steps, device=device, dtype=dtype, **params)


KIND = UserClassKind()
