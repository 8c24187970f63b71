"""Turn an engine spec into an `Engine`, through the one registry of engine kinds (`REGISTRY`, see `registry`).

Specs: "sr4" (built in, the default), "bicubic" (Pillow, CPU), "sd-x4-upscaler", "ldm-4x", a hub id or a local diffusers folder,
a single-file SR checkpoint (.pth, .pt, .ckpt, .safetensors, loaded through spandrel) or "dat-light" (deterministic),
"package.module:Class" (your own `Engine` class, so the CLI and the engine service can build it), or any object that
already implements the `Engine` protocol (returned unchanged).
"""

from __future__ import annotations

from sr_augment.engines.base import Engine, EngineSpecError, EngineUnavailable, check_engine_spec, make_fingerprint
from sr_augment.engines.bicubic import BicubicEngine
from sr_augment.engines.kinds import REGISTRY
from sr_augment.engines.registry import EngineKind, EngineRegistry
from sr_augment.engines.specs import is_hub_id

DEFAULT_ENGINE = "sr4"
"""The engine used when none is named: the built-in diffusion model, which works offline on CPU."""


def get_engine(spec=DEFAULT_ENGINE, *, scale: int | None = None, steps: int | None = None, device: str = "auto",
               dtype: str = "auto", **params) -> Engine:
    """Build the engine named by `spec`.

    Args:
        spec: "sr4", "bicubic", "sd-x4-upscaler", "ldm-4x", a hub id ("owner/name"), a local folder holding a
            diffusers SR pipeline (`save_pretrained` output), a spandrel checkpoint file (.pth, .pt, .ckpt,
            .safetensors: ESRGAN, SwinIR, HAT, DAT...; see `SpandrelEngine`), "dat-light" (x2/x3/x4),
            "package.module:Class" (built as `Class(scale=..., **params)`), or an `Engine` object.
        scale: output size / input size; None (not given): a spandrel checkpoint's own factor, 4 for every
            other engine (`default_scale`). A model whose own factor differs runs at its own factor and its
            output is resized (bicubic), so `scale=4` always means 4x (a checkpoint says so: `ModelScaleWarning`).
        steps: denoising steps (diffusion engines; None = the model's default).
        device: "auto" = cuda > mps > cpu.
        dtype: "auto" = fp16/bf16 on GPU, fp32 on CPU.
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
    scale = default_scale(spec, scale)
    settings = {"spec": spec, "scale": scale, "steps": steps, "device": device, "dtype": dtype, "params": dict(params)}
    kind = REGISTRY.check(spec, with_steps(params, steps))
    engine = kind.build(spec, scale=scale, steps=steps, device=device, dtype=dtype, **params)
    return _tag(engine, settings) if kind.remembers_settings else engine


def _tag(engine: Engine, settings: dict) -> Engine:
    """Remember on `engine` the settings it was built from, as the engine service's config, so `warm`
    can record its identity in the cache under the id the adapters' service would have."""
    try:
        engine.service_config = settings
    except AttributeError:  # an engine class with __slots__: nothing remembered, the service answers
        pass
    return engine


DEFAULT_SCALE = 4
"""The scale of an engine built with none given, except where its kind takes it from the model (`default_scale`)."""


def default_scale(spec, scale: int | None) -> int | None:
    """`scale` when given; else None where `spec`'s kind runs its model at the model's own factor (a spandrel
    checkpoint: `EngineKind.scale_from_model`), else `DEFAULT_SCALE`. Decided from the spec alone: nothing
    is loaded, so the adapters, the CLI and the engine service agree on the settings (and service id)."""
    if scale is not None:
        return int(scale)
    if isinstance(spec, str):
        try:
            if REGISTRY.kind_of(spec).scale_from_model:
                return None
        except EngineSpecError:
            pass
    return DEFAULT_SCALE


def with_steps(params: dict, steps) -> dict:
    """The engine parameters a kind checks: `params`, with `steps` when it is set."""
    return dict(params) if steps is None else {**params, "steps": steps}


def check_spec(spec, params: dict | None = None):
    """`spec` as `get_engine` would take it, or an `EngineSpecError` (a `ValueError` and an `EngineUnavailable`,
    the same one `get_engine` raises) naming the problem, the closest name and what is accepted. With
    `params` (the engine parameters, `steps` among them when set: `with_steps`), those are checked too, as
    `get_engine` checks them: an `EngineParameterError` for a name the kind does not take ("did you mean"),
    a wrong type or value, or a required one (the one-step engines' LoRA file) missing.

    Run when an adapter is constructed, in the caller's process, so a misspelt engine fails there and not
    at the first image inside the engine service. Starts nothing and imports nothing (a TensorFlow
    process must never import torch): the spec's kind in `REGISTRY` checks it: a built-in name, an
    existing local folder or checkpoint file, "package.module:Class" whose module can be found
    (`find_spec`, parents not imported), a hub id "owner/name" (not checkable offline: accepted) or an
    `Engine` object (returned unchanged). Non-str, non-Engine: `TypeError`.

    Example:
        >>> check_spec("sd-x4-upscaler")
        'sd-x4-upscaler'
        >>> try:
        ...     check_spec("sd-x4-upscalr")
        ... except EngineSpecError as exc:  # also a ValueError and an EngineUnavailable
        ...     print(exc)  # doctest: +ELLIPSIS
        Unknown engine 'sd-x4-upscalr' (did you mean 'sd-x4-upscaler'?). An engine is one of ...
    """
    spec = check_engine_spec(spec)
    if isinstance(spec, str):
        REGISTRY.check(spec, params)
    return spec


def weights_stamp(spec: str, params: dict | None = None) -> list:
    """[relative name, size] of each model file of a local pipeline folder (or of the built-in model):
    the files its weights fingerprint hashes, so a changed folder changes the stamp. Not mtimes: a
    copied folder or cache must keep its stamp. Empty for hub names and ids. Cheap, and imports no
    torch: the engine service's clients use it to tell whether a remembered identity is still current."""
    try:
        kind = REGISTRY.kind_of(spec)
    except EngineSpecError:
        return []
    return kind.weights_stamp(spec, params)


__all__ = ["DEFAULT_ENGINE", "DEFAULT_SCALE", "REGISTRY", "BicubicEngine", "Engine", "EngineKind", "EngineRegistry",
           "EngineSpecError", "EngineUnavailable", "check_engine_spec", "check_spec", "default_scale", "get_engine",
           "is_hub_id", "make_fingerprint", "weights_stamp", "with_steps"]
