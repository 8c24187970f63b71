"""Engine registry: turn an engine spec into an `Engine`.

Specs: "sr4" (built in, the default), "bicubic" (Pillow, CPU), "sd-x4-upscaler", "ldm-4x", a hub id or a local diffusers folder, or
any object that already implements the `Engine` protocol (returned unchanged).
"""

from __future__ import annotations

import importlib.util

from sr_augment.engines.base import Engine, EngineUnavailable, make_fingerprint
from sr_augment.engines.bicubic import BicubicEngine

DEFAULT_ENGINE = "sr4"
"""The engine used when none is named: the built-in diffusion model, which works offline on CPU."""


def get_engine(spec=DEFAULT_ENGINE, *, scale: int = 4, steps: int | None = None, device: str = "auto",
               dtype: str = "auto", **params) -> Engine:
    """Build the engine named by `spec`.

    Args:
        spec: "sr4", "bicubic", "sd-x4-upscaler", "ldm-4x", a hub id ("owner/name"), a local folder holding a
            diffusers SR pipeline (`save_pretrained` output), or an `Engine` object.
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
    if not isinstance(spec, str) and not hasattr(spec, "__fspath__"):
        if isinstance(spec, Engine):
            return spec
        raise TypeError(f"engine must be a name, a folder, a hub id or an Engine object, got {type(spec).__name__}")
    spec = str(spec)
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


__all__ = ["DEFAULT_ENGINE", "BicubicEngine", "Engine", "EngineUnavailable", "get_engine", "make_fingerprint"]
