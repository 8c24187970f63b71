"""Engine registry: turn an engine spec into an `Engine`.

Specs: "sr4" (built in, the default), "bicubic" (Pillow, CPU), "sd-x4-upscaler", "ldm-4x", a hub id or a local diffusers folder,
a single-file SR checkpoint (.pth, .pt, .ckpt, .safetensors, loaded through spandrel) or "dat-light" (deterministic),
"package.module:Class" (your own `Engine` class, so the CLI and the engine service can build it), or any object that
already implements the `Engine` protocol (returned unchanged).
"""

from __future__ import annotations

import difflib
import importlib
import importlib.machinery
import importlib.util
import inspect
import re
import sys
from pathlib import Path

from sr_augment.engines.base import Engine, EngineUnavailable, check_engine_spec, make_fingerprint
from sr_augment.engines.bicubic import BicubicEngine
from sr_augment.engines.catalog import onestep_weights_stamp, spandrel_weights_stamp
from sr_augment.engines.specs import DAT_LIGHT, ONESTEP_SPECS, SPANDREL_SUFFIXES, is_spandrel_file

DEFAULT_ENGINE = "sr4"
"""The engine used when none is named: the built-in diffusion model, which works offline on CPU."""


def get_engine(spec=DEFAULT_ENGINE, *, scale: int = 4, steps: int | None = None, device: str = "auto",
               dtype: str = "auto", **params) -> Engine:
    """Build the engine named by `spec`.

    Args:
        spec: "sr4", "bicubic", "sd-x4-upscaler", "ldm-4x", a hub id ("owner/name"), a local folder holding a
            diffusers SR pipeline (`save_pretrained` output), a spandrel checkpoint file (.pth, .pt, .ckpt,
            .safetensors: ESRGAN, SwinIR, HAT, DAT...; see `SpandrelEngine`), "dat-light" (x2/x3/x4), "package.module:Class" (built as
            `Class(scale=..., **params)`), or an `Engine` object.
        scale: output size / input size. A diffusion model whose own factor differs runs at its own
            factor and its output is resized (bicubic), so `scale=4` always means 4x.
        steps: denoising steps (diffusion engines; None = the model's default).
        device, dtype: "auto" = cuda > mps > cpu, and fp16/bf16 on GPU, fp32 on CPU.
        **params: engine-specific settings (see `DiffusersEngine`).

    Example:
        >>> engine = get_engine("bicubic", scale=2)
        >>> import numpy as np
        >>> engine.upscale([np.zeros((8, 8, 3), np.uint8)], seeds=[0])[0].shape
        (16, 16, 3)
    """
    spec = check_engine_spec(spec)
    if not isinstance(spec, str):
        return spec
    settings = {"spec": spec, "scale": scale, "steps": steps, "device": device, "dtype": dtype, "params": dict(params)}
    if _CLASS_SPEC.match(spec) and not Path(spec).exists():
        return _tag(_engine_from_class(spec, scale=scale, steps=steps, device=device, dtype=dtype, **params), settings)
    if spec == "bicubic":
        if params:
            raise TypeError(f"bicubic engine takes no parameters, got {', '.join(sorted(params))}")
        return BicubicEngine(scale=scale)
    if spec == DAT_LIGHT or is_spandrel_file(spec):  # single-file checkpoints and dat-light: spandrel
        from sr_augment.engines.spandrel_engine import spandrel_engine

        return spandrel_engine(spec, scale=scale, steps=steps, device=device, dtype=dtype, **params)
    if spec in ONESTEP_SPECS:  # OSEDiff / PiSA-SR: SD 2.1-base + the authors' LoRA file (base=..., lora=...)
        from sr_augment.engines.onestep_engine import onestep_engine

        return _tag(onestep_engine(spec, scale=scale, steps=steps, device=device, dtype=dtype, **params), settings)
    missing = [name for name in ("torch", "diffusers") if importlib.util.find_spec(name) is None]
    if missing:
        raise EngineUnavailable(
            f"engine {spec!r} needs {' and '.join(missing)}, which are not installed: "
            f"pip install 'sr-augment[diffusion]' (or use engine='bicubic', which needs nothing)"
        )
    from sr_augment.engines.diffusers_engine import DiffusersEngine

    return _tag(DiffusersEngine(spec, scale=scale, steps=steps, device=device, dtype=dtype, **params), settings)


def _tag(engine: Engine, settings: dict) -> Engine:
    """Remember on `engine` the settings it was built from, as the engine service's config, so `warm`
    can record its identity in the cache under the id the adapters' service would have."""
    try:
        engine.service_config = settings
    except AttributeError:  # an engine class with __slots__: nothing remembered, the service answers
        pass
    return engine


_CLASS_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def _engine_from_class(spec: str, *, scale: int, steps, device: str, dtype: str, **params) -> Engine:
    """Build "package.module:Class" as Class(scale=..., **params). The common options (steps, device,
    dtype when set, and batch_size) are passed only when the constructor takes them."""
    module_name, _, class_name = spec.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"engine {spec!r}: cannot import {class_name} from {module_name} ({exc})") from None
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


def check_spec(spec):
    """`spec` as `get_engine` would take it, or a `ValueError` naming what is accepted and the closest name.

    Run when an adapter is constructed, in the caller's process, so a misspelt engine fails there and not
    at the first image inside the engine service. Starts nothing and imports nothing (a TensorFlow
    process must never import torch): a built-in name, an existing local folder, "package.module:Class"
    whose module can be found (`find_spec`, parents not imported), a hub id "owner/name" (not checkable
    offline: accepted) or an `Engine` object (returned unchanged). Non-str, non-Engine: `TypeError`.

    Example:
        >>> check_spec("sd-x4-upscaler")
        'sd-x4-upscaler'
        >>> check_spec("sd-x4-upscalr")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: unknown engine 'sd-x4-upscalr' (did you mean 'sd-x4-upscaler'?). An engine is one of ...
    """
    from sr_augment.engines.pipeline_weights import BUILTIN, HUB_ALIASES

    spec = check_engine_spec(spec)
    if not isinstance(spec, str):
        return spec
    names = ["bicubic", BUILTIN, *HUB_ALIASES, DAT_LIGHT, *ONESTEP_SPECS]
    local = Path(spec).expanduser()
    if _CLASS_SPEC.match(spec) and not local.exists():
        if _module_exists(spec.partition(":")[0]):
            return spec
        problem = f"module {spec.partition(':')[0]!r} of {spec!r} cannot be found"
    elif spec in names or local.is_dir() or (is_spandrel_file(spec) and local.is_file()):
        return spec
    elif local.exists():
        problem = f"{spec!r} is a file, not a diffusers pipeline folder"
    elif spec.startswith((".", "/", "~")) or (local.parent != Path(".") and local.parent.is_dir()):
        problem = f"{spec}: no such {'file' if is_spandrel_file(spec) else 'folder'}"
    elif spec.count("/") == 1 and not any(c.isspace() for c in spec) and all(spec.split("/")):
        return spec  # a hub id: only the hub can tell
    else:
        close = difflib.get_close_matches(spec, names, n=1, cutoff=0.5)
        problem = f"unknown engine {spec!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
    raise ValueError(f"{problem}. An engine is one of {', '.join(map(repr, names))}, an existing local diffusers "
                     f"pipeline folder, a spandrel checkpoint file ({', '.join(SPANDREL_SUFFIXES)}), a hub id 'owner/name', 'package.module:Class' or an Engine object")


def _module_exists(name: str) -> bool:
    """Whether module `name` can be found, without importing it or its parent packages."""
    if name in sys.modules:
        return True
    found = None
    for depth, part in enumerate(name.split(".")):
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


def weights_stamp(spec: str, params: dict | None = None) -> list:
    """[relative name, size] of each model file of a local pipeline folder (or of the built-in model):
    the files its weights fingerprint hashes, so a changed folder changes the stamp. Not mtimes: a
    copied folder or cache must keep its stamp. Empty for hub names and ids. Cheap, and imports no
    torch: the engine service's clients use it to tell whether a remembered identity is still current."""
    from sr_augment.engines.pipeline_weights import BUILTIN, builtin_weights, pipeline_files

    stamp = spandrel_weights_stamp(spec)  # a checkpoint file or dat-light
    if stamp is None:  # osediff / pisa-sr: their LoRA file and base folder, from `params` or the environment
        stamp = onestep_weights_stamp(spec, params)
    if stamp is not None:
        return stamp
    folder = builtin_weights() if spec == BUILTIN else Path(spec).expanduser()
    if not folder.is_dir():
        return []
    return [[str(p.relative_to(folder)), p.stat().st_size] for p in pipeline_files(folder)]


__all__ = ["DEFAULT_ENGINE", "BicubicEngine", "Engine", "EngineUnavailable", "check_engine_spec", "check_spec",
           "get_engine", "make_fingerprint", "weights_stamp"]
