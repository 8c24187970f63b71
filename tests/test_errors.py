"""One module for the library's errors and warnings: every public exception or warning class of the package
is defined in `sr_augment.errors`, derives from its base there, and is exported from `sr_augment`."""

from __future__ import annotations

import ast
import builtins
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import sr_augment
from sr_augment import errors

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_FOLDERS = ["sr_augment", "cache", "keras_layers", "torch_transforms"]
"""The folders of the one import namespace (`sr_augment`, `sr_augment.cache`, ...; see pyproject's package-dir)."""

BUILTIN_EXCEPTIONS = {name for name, value in vars(builtins).items()
                      if isinstance(value, type) and issubclass(value, BaseException)}
ERROR_CLASSES = [value for name, value in vars(errors).items()
                 if isinstance(value, type) and issubclass(value, BaseException) and value.__module__ == errors.__name__]


def _source_files():
    for folder in PACKAGE_FOLDERS:
        yield from sorted((ROOT / folder).rglob("*.py"))


def _exception_classes_defined_outside_errors() -> list[str]:
    """`path:line name` of every class, in any module of the package but errors.py, whose bases name an
    exception or warning (a built-in one, one of `errors`, or any name ending in Error/Exception/Warning)."""
    known = BUILTIN_EXCEPTIONS | {cls.__name__ for cls in ERROR_CLASSES}
    found = []
    for path in _source_files():
        if path == ROOT / "sr_augment" / "errors.py":
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.ClassDef):
                continue
            bases = [base.attr if isinstance(base, ast.Attribute) else getattr(base, "id", "") for base in node.bases]
            if any(base in known or base.endswith(("Error", "Exception", "Warning")) for base in bases):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    return found


def test_every_exception_and_warning_class_is_defined_in_errors():
    assert _exception_classes_defined_outside_errors() == []


def test_errors_derive_from_the_base_and_are_exported():
    assert len(ERROR_CLASSES) >= 20
    for cls in ERROR_CLASSES:
        base = errors.SRAugmentWarning if issubclass(cls, Warning) else errors.SRAugmentError
        assert issubclass(cls, base), cls
        assert cls.__name__ in errors.__all__, cls
        assert cls.__name__ in sr_augment.__all__, cls
        assert getattr(sr_augment, cls.__name__) is cls
    assert sorted(errors.__all__) == sorted(cls.__name__ for cls in ERROR_CLASSES)


@pytest.mark.parametrize("name, builtin_base", [
    ("CacheWriteError", OSError), ("CacheReadOnly", OSError), ("CacheInUse", OSError), ("EntryTooLarge", OSError),
    ("CacheUnavailable", OSError), ("CacheMiss", LookupError), ("ImageDecodeError", ValueError),
    ("ImageShapeError", ValueError), ("EngineSpecError", ValueError), ("EngineUnavailable", RuntimeError),
    ("EngineOutOfMemory", RuntimeError), ("ServiceError", RuntimeError), ("DatabaseDamaged", RuntimeError),
    ("DamagedEntry", ValueError), ("UntrustedRow", ValueError), ("WeightsTooLarge", ValueError),
    ("RayUnavailable", ImportError), ("CacheMissRateWarning", UserWarning),
    ("OutOfMemoryBackoffWarning", ResourceWarning), ("NetworkFilesystemWarning", UserWarning),
])
def test_each_keeps_its_builtin_base(name, builtin_base):
    assert issubclass(getattr(errors, name), builtin_base)


def test_spec_error_is_also_engine_unavailable():
    assert issubclass(errors.EngineSpecError, errors.EngineUnavailable)
    for cls in (errors.CacheReadOnly, errors.CacheInUse, errors.EntryTooLarge):
        assert issubclass(cls, errors.CacheWriteError)


def test_old_import_paths_name_the_same_classes():
    from sr_augment.cache import CacheMiss, CacheReadOnly, CacheWriteError, DamagedEntry, DatabaseDamaged
    from sr_augment.cache.writers import CacheInUse
    from sr_augment.engines import EngineSpecError, EngineUnavailable
    from sr_augment.engines.base import DeterministicEngineWarning
    from sr_augment.images import ImageDecodeError, ImageShapeError
    from sr_augment.service.common import ServiceError

    for cls in (CacheMiss, CacheReadOnly, CacheWriteError, DamagedEntry, DatabaseDamaged, CacheInUse, EngineSpecError,
                EngineUnavailable, DeterministicEngineWarning, ImageDecodeError, ImageShapeError, ServiceError):
        assert getattr(errors, cls.__name__) is cls


def test_one_filter_silences_every_warning():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", category=errors.SRAugmentWarning)
        for cls in ERROR_CLASSES:
            if issubclass(cls, Warning):
                warnings.warn("x", cls, stacklevel=2)
    assert caught == []


def test_importing_errors_imports_no_torch():
    code = "import sys, sr_augment.errors; print(sorted(m for m in ('torch', 'tensorflow', 'keras') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_errors_module_imports_nothing():
    tree = ast.parse((ROOT / "sr_augment" / "errors.py").read_text())
    imports = [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]
    assert [ast.unparse(node) for node in imports] == ["from __future__ import annotations"]
