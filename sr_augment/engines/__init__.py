"""Engine registry: turn an engine spec into an `Engine`.

Specs: "sr4" (built in, the default), "bicubic" (Pillow, CPU), "sd-x4-upscaler", "ldm-4x", a hub id or a local diffusers folder,
"package.module:Class" (your own `Engine` class, so the CLI and the engine service can build it), or any object that
already implements the `Engine` protocol (returned unchanged).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import re
from pathlib import Path

from sr_augment.engines.base import Engine, EngineUnavailable, check_engine_spec, make_fingerprint
from sr_augment.engines.bicubic import BicubicEngine

DEFAULT_ENGINE = "sr4"
"""The engine used when none is named: the built-in diffusion model, which works offline on CPU."""


def get_engine(spec=DEFAULT_ENGINE, *, scale: int = 4, steps: int | None = None, device: str = "auto",
               dtype: str = "auto", **params) -> Engine:
    """Build the engine named by `spec`.

    Args:
        spec: "sr4", "bicubic", "sd-x4-upscaler", "ldm-4x", a hub id ("owner/name"), a local folder holding a
            diffusers SR pipeline (`save_pretrained` output), "package.module:Class" (built as
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
    if _CLASS_SPEC.match(spec) and not Path(spec).exists():
        return _engine_from_class(spec, scale=scale, steps=steps, device=device, dtype=dtype, **params)
    if spec == "bicubic":
        if params:
            raise TypeError(f"bicubic engine takes no parameters, got {', '.join(sorted(params))}")
        return BicubicEngine(scale=scale)
    missing = [name for name in ("torch", "diffusers") if importlib.util.find_spec(name) is None]
    if missing:
        raise EngineUnavailable(
            f"engine {spec!r} needs {' and '.join(missing)}, which are not installed: "
            f"pip install 'sr-augment[diffusion]' (or use engine='bicubic', which needs nothing)"
        )
    from sr_augment.engines.diffusers_engine import DiffusersEngine

    return DiffusersEngine(spec, scale=scale, steps=steps, device=device, dtype=dtype, **params)


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


def weights_stamp(spec: str) -> list:
    """[relative name, size, mtime_ns] of each model file of a local pipeline folder (or of the built-in
    model): the files its weights fingerprint hashes, so a changed folder changes the stamp. Empty for
    hub names and ids. Cheap, and imports no torch: the engine service's clients use it to tell whether
    a remembered engine identity is still current."""
    from sr_augment.engines.diffusers_engine import BUILTIN, builtin_weights, pipeline_files

    folder = builtin_weights() if spec == BUILTIN else Path(spec).expanduser()
    if not folder.is_dir():
        return []
    return [[str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns] for p in pipeline_files(folder)]


__all__ = ["DEFAULT_ENGINE", "BicubicEngine", "Engine", "EngineUnavailable", "check_engine_spec", "get_engine",
           "make_fingerprint", "weights_stamp"]
