"""`SRAugment` as a torchvision v2 transform."""

from __future__ import annotations

from typing import Any

import numpy as np
import PIL.Image
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from sr_augment.augment import AugmentCore
from sr_augment.engines import DEFAULT_ENGINE
from sr_augment.images import ImageShapeError, array_to_rgb, pil_to_rgb


class SRAugment(v2.Transform):
    """Replace an image by a diffusion super-resolution sample of it, served from the SR cache.

    Drops into `transforms.Compose` / `v2.Compose` and `DataLoader(num_workers>0)` (fork or spawn):
    the cache and the engine connection are opened lazily in each worker, and every non-bicubic engine
    runs in ONE shared service process per machine, so N workers load the model once.

    Input / output: a PIL image, a uint8 or float tensor (CHW, or a batch NCHW; float values in
    [0, 1]), or a `tv_tensors.Image`; the result is of the same kind and dtype. 1- and 4-channel
    inputs become RGB (alpha dropped). Shape: `upscale` multiplies H and W by `scale`,
    `resynthesize` keeps them, and `output_size` (int or (h, w)) resizes the result.

    Args:
        engine: "bicubic", "sd-x4-upscaler", "ldm-4x", a hub id, a local diffusers folder, or an
            `Engine` object (runs inline in each process).
        mode: "upscale" (the input is LR) or "resynthesize" (down by `scale`, SR back to its size).
        scale: upscaling factor.
        variants: stochastic samples per image; each call picks one uniformly.
        p: probability of applying, drawn from torch's RNG (`torch.manual_seed` reproduces a run).
            An image not picked passes through in `resynthesize` mode and gets the bicubic result
            in `upscale` mode, so every output has the same shape.
        output_size: resize the result to this size (int: square).
        on_miss: "generate" (run the engine, store, return), "passthrough" (bicubic result, the
            miss is counted) or "error" (raise `CacheMiss` naming the key).
        cache_dir: cache folder (default: `$SR_AUGMENT_CACHE_DIR` or the user cache folder).
        seed: unused by this transform (torch's RNG decides); kept for the shared signature.
        **engine_params: `steps`, `device`, `engine_dtype` (the engine's dtype: "auto", "fp16",
            ...) and engine settings such as `noise_level` (see `get_engine`).

    Example:
        >>> import torch
        >>> from torchvision.transforms import v2
        >>> t = v2.Compose([SRAugment(engine="bicubic", mode="upscale", scale=2, cache_dir=getfixture("tmp_path")),
        ...                 v2.ToDtype(torch.float32, scale=True)])
        >>> t(torch.zeros(3, 8, 8, dtype=torch.uint8)).shape
        torch.Size([3, 16, 16])
    """

    _transformed_types = (torch.Tensor, PIL.Image.Image)

    def __init__(self, engine: Any = DEFAULT_ENGINE, mode: str = "upscale", scale: int = 4, variants: int = 1,
                 p: float = 1.0, output_size=None, on_miss: str = "generate", cache_dir=None, seed=None,
                 **engine_params):
        super().__init__()
        self.core = AugmentCore(engine=engine, mode=mode, scale=scale, variants=variants, p=p, output_size=output_size,
                                on_miss=on_miss, cache_dir=cache_dir, seed=seed, **engine_params)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        """The draws for one call, one per image (a batch tensor's first dimension, else 1), from
        torch's RNG: {"augment": [bool], "variant": [int]}, as `AugmentCore.apply_many` takes them."""
        count = 1
        for item in flat_inputs:
            if isinstance(item, torch.Tensor) and item.ndim == 4:
                count = item.shape[0]
                break
        augment = (torch.rand(count) < self.core.p).tolist()
        variant = torch.randint(self.core.variants, (count,)).tolist()
        return {"augment": augment, "variant": variant}

    # torchvision < 0.21 calls the private names
    _get_params = make_params

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, PIL.Image.Image):
            return PIL.Image.fromarray(self._many([pil_to_rgb(inpt)], params)[0])
        if not isinstance(inpt, torch.Tensor):
            return inpt
        if inpt.ndim == 3:
            out = self._tensor_images(inpt[None], params)[0]
        elif inpt.ndim == 4:
            out = self._tensor_images(inpt, params)
        else:
            raise ImageShapeError(f"SRAugment: expected a CHW image or an NCHW batch, got a tensor of shape "
                                  f"{tuple(inpt.shape)}")
        return tv_tensors.wrap(out, like=inpt) if isinstance(inpt, tv_tensors.TVTensor) else out

    _transform = transform

    def _tensor_images(self, batch: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
        if batch.shape[1] not in (1, 3, 4):
            raise ImageShapeError(f"SRAugment: expected 1, 3 or 4 channels (CHW), got shape {tuple(batch.shape[1:])}")
        arrays = batch.detach().cpu().permute(0, 2, 3, 1).numpy()
        if batch.is_floating_point():
            arrays = arrays.astype(np.float32)
        images = [array_to_rgb(a, "SRAugment input tensor") for a in arrays]
        results = self._many(images, params)
        out = torch.from_numpy(np.stack(results)).permute(0, 3, 1, 2)
        out = out.to(batch.dtype) / 255.0 if batch.is_floating_point() else out.to(batch.dtype)
        return out.to(batch.device).contiguous()

    def _many(self, images: list[np.ndarray], params: dict[str, Any]) -> list[np.ndarray]:
        results = self.core.apply_many(images, params)
        return [image if result is None else result for image, result in zip(images, results)]

    def extra_repr(self) -> str:
        config = self.core.config()
        return ", ".join(f"{k}={v!r}" for k, v in config.items() if v is not None)
