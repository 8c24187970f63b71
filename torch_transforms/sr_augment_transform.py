"""`SRAugment` as a torchvision v2 transform."""

from __future__ import annotations

from typing import Any

import numpy as np
import PIL.Image
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from sr_augment.augment import AugmentCore
from sr_augment.engines import DEFAULT_ENGINE
from sr_augment.images import ImageShapeError, array_to_rgb, pil_to_rgb, resize
from sr_augment.torch_transforms import pil_modes, samples
from sr_augment.torch_transforms.rng import TransformRNG

IMAGE_DTYPES = (torch.uint8, torch.uint16, torch.float16, torch.bfloat16, torch.float32, torch.float64)
"""Image tensor dtypes, as torchvision v2 reads them: uint8 in [0, 255], uint16 in [0, 65535], float in [0, 1]."""

_compiler_disable = getattr(getattr(torch, "compiler", None), "disable", None) or torch._dynamo.disable


def check_dtype(dtype: torch.dtype) -> None:
    """Refuse a tensor dtype that is not an image dtype of torchvision v2 (a `TypeError` naming it and the way out)."""
    if dtype not in IMAGE_DTYPES:
        raise TypeError(f"SRAugment input tensor: unsupported dtype {dtype}; image tensors are uint8 in [0, 255], "
                        f"uint16 in [0, 65535] or float (float16, bfloat16, float32, float64) in [0, 1]: convert "
                        f"first, e.g. v2.ToDtype(torch.uint8, scale=True) or v2.ToDtype(torch.float32, scale=True)")


def from_uint8(stacked: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """uint8 engine results (NCHW numpy) in `dtype`'s range: x257 for uint16 (255 -> 65535, exact), / 255 for
    floats (computed in float32, or float64 for float64, then cast)."""
    if dtype == torch.uint8:
        return torch.from_numpy(stacked)
    if dtype == torch.uint16:
        return torch.from_numpy(stacked.astype(np.uint16) * np.uint16(257))
    wide = torch.float64 if dtype == torch.float64 else torch.float32
    return torch.from_numpy(stacked).to(wide).div_(255.0).to(dtype)


def as_batch(inpt: torch.Tensor) -> torch.Tensor:
    """A CHW image as a batch of one, an NCHW batch as it is (any other rank: `ImageShapeError`)."""
    if inpt.ndim == 3:
        return inpt[None]
    if inpt.ndim == 4:
        return inpt
    raise ImageShapeError(f"SRAugment: expected a CHW image or an NCHW batch, got a tensor of shape "
                          f"{tuple(inpt.shape)}")


def check_batch(batch: torch.Tensor) -> None:
    """An NCHW image batch SRAugment takes: 1 (grey), 2 (grey, alpha), 3 (RGB) or 4 (RGB, alpha) channels,
    an image dtype (see `check_dtype`)."""
    if batch.shape[1] not in (1, 2, 3, 4):
        raise ImageShapeError(f"SRAugment: expected 1 (grey), 2 (grey and alpha), 3 (RGB) or 4 (RGBA) channels "
                              f"(CHW), got shape {tuple(batch.shape[1:])}")
    check_dtype(batch.dtype)


def colour_channels(batch: torch.Tensor) -> int:
    """How many of a checked batch's channels are colour (1 grey or 3 RGB); the rest (0 or 1) is alpha."""
    return 3 if batch.shape[1] >= 3 else 1


def tensor_to_rgb(source: torch.Tensor) -> list[np.ndarray]:
    """The uint8 HWC RGB images of a checked NCHW batch on the CPU (uint16: value / 257 rounded; float:
    value x 255 rounded; grey repeated, alpha dropped): the pixels the engine sees and the keys are of."""
    # the engine side's numpy: uint8 and uint16 as they are, every float through float32 (numpy has no bfloat16)
    colour = source[:, :colour_channels(source)]
    arrays = (colour.float() if colour.is_floating_point() else colour).permute(0, 2, 3, 1).numpy()
    return [array_to_rgb(a, "SRAugment input tensor") for a in arrays]


def carry_alpha(alpha: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """An N1HW alpha batch at (height, width) `size`: itself when it has that size, else resized bicubic
    (torchvision's antialiased `resize`, in float32 / float64, then clipped to the dtype's range and,
    for integer dtypes, rounded)."""
    if tuple(alpha.shape[-2:]) == tuple(size):
        return alpha
    wide = alpha.double() if alpha.dtype == torch.float64 else alpha.float()
    out = F.resize(wide, list(size), interpolation=F.InterpolationMode.BICUBIC, antialias=True)
    if alpha.is_floating_point():
        return out.clamp_(0.0, 1.0).to(alpha.dtype)
    return out.round_().clamp_(0, torch.iinfo(alpha.dtype).max).to(alpha.dtype)


class SRAugment(v2.Transform):
    """Replace an image by a diffusion super-resolution sample of it, served from the SR cache.

    Drops into `transforms.Compose` / `v2.Compose` and `DataLoader(num_workers>0)` (fork or spawn):
    the cache and the engine connection are opened lazily in each worker, and every non-bicubic engine
    runs in ONE shared service process per machine, so N workers load the model once.

    Input / output: a PIL image, a tensor (CHW, or a batch NCHW) of an image dtype as torchvision v2
    reads them (uint8 in [0, 255], uint16 in [0, 65535], float16 / bfloat16 / float32 / float64 in
    [0, 1]), or a `tv_tensors.Image`; the result is of the same kind, dtype and range. The engine and
    the cache see uint8 (uint16: value / 257 rounded; float: value x 255 rounded); results come back x
    257 (uint16) or / 255 (float). Other dtypes raise `TypeError`. An image that is not augmented in
    `resynthesize` mode comes back with its own values exactly (no 8-bit rounding); when no image of
    the call is augmented, the input itself is returned. Channels are kept: 3 (RGB), 1 (grey), 4 (RGBA)
    or 2 (grey, alpha). The engine and the cache see RGB (grey repeated, alpha dropped: the keys are the
    RGB pixels'); grey comes back as the luma of the RGB result (Pillow's `convert("L")`), and alpha is
    carried, not super-resolved: as it is at the same size, else resized bicubic. Shape: `upscale`
    multiplies H and W by `scale`, `resynthesize` keeps them, and `output_size` resizes the result.

    PIL images are taken as their pixels are, whatever their EXIF orientation says (as torchvision's
    `ImageFolder` hands them over; `sr_augment.images.pil_to_rgb`). One that `resynthesize` mode does not
    augment comes back as it is, the same object, in its own mode and range. With `output_size` it is
    resized in its own mode (bicubic, Pillow's `Image.resize`), except modes "1", "P" and "PA", which
    Pillow resizes only nearest-neighbour: those are resized like an augmented image. An augmented PIL
    image, and every PIL image in `upscale` mode (one not picked gets the bicubic result), comes back in
    its own mode, its pixels from what the engine made of its RGB pixels, except: "1" comes back "L",
    "P" "RGB" ("RGBA" with transparency), "PA" and "RGBa" "RGBA", "I;16B"/"I;16L" "I;16" (see
    `sr_augment.torch_transforms.pil_modes`, which says why). Grey modes ("L", "I;16", "I", "F") hold the
    luma on the scale they were read on; alpha is carried as above.

    Samples (tuples, dicts, e.g. `(image, {"boxes": ..., "masks": ..., "labels": ...})`): as torchvision's
    geometric transforms, only images are super-resolved (PIL, `tv_tensors.Image`, and a plain tensor
    when v2 calls it the image: the first one, if the sample holds no Image, PIL image or video). Each
    image of a sample gets its own draws (a batched Image and a single one together: one draw per image).
    `BoundingBoxes`, `KeyPoints` and `Mask`s follow the images' new size exactly as `v2.Resize` to that
    size moves them (same kernels); in `resynthesize` mode without `output_size` they pass through
    untouched, as do labels and anything else. A `tv_tensors.Video` raises `TypeError`.
    Under `torch.compile` the transform runs eagerly (a graph break), as Python code over numpy must.

    Args:
        engine: "bicubic", "sr4", "sd-x4-upscaler", "ldm-4x", a hub id, a local diffusers folder,
            "package.module:Class", or an `Engine` object (runs inline in each process). Checked here,
            without starting anything: a misspelt name raises `ValueError` naming the closest one.
        mode: "upscale" (the input is LR) or "resynthesize" (down by `scale`, SR back to its size).
        scale: upscaling factor (default: 4; a spandrel checkpoint's own factor).
        variants: stochastic samples per image; each call picks one uniformly.
        p: probability of applying. An image not picked passes through in `resynthesize` mode and
            gets the bicubic result in `upscale` mode, so every output has the same shape.
        output_size: resize the result: `(height, width)` exactly; an int (or `[int]`) is the shorter
            side, the other keeping the aspect ratio, as in `v2.Resize(int)`.
        on_miss: "generate" (run the engine, store, return), "passthrough" (bicubic result, the
            miss is counted) or "error" (raise `CacheMiss` naming the key).
        cache_dir: cache folder (default: `$SR_AUGMENT_CACHE_DIR` or the user cache folder).
        seed: where `p` and the variant are drawn from. None: torch's global RNG (`torch.manual_seed`
            reproduces a run). An int: a `torch.Generator` of this transform, which the global RNG does
            not touch, seeded with `seed` in the main process and with (`seed`, the worker's torch seed)
            in a `DataLoader` worker: workers and epochs differ, and a run repeats when the loader's
            base seed does (see `sr_augment.torch_transforms.rng`).
        degrade: None, "light", "realistic" or a dict of operations (`sr_augment.engines.degrade`):
            variants k > 0 super-resolve a seeded, label-preserving degradation of the input (blur,
            downscale kernel, noise, JPEG), so a deterministic engine gives real variants; variant 0
            stays the clean result. Part of the key; `warm --degrade` with the same value warms it.
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

    def __init__(self, engine: Any = DEFAULT_ENGINE, mode: str = "upscale", scale: int | None = None, variants: int = 1,
                 p: float = 1.0, output_size=None, on_miss: str = "generate", cache_dir=None, seed=None,
                 degrade=None, **engine_params):
        super().__init__()
        self.core = AugmentCore(engine=engine, mode=mode, scale=scale, variants=variants, p=p, output_size=output_size,
                                on_miss=on_miss, cache_dir=cache_dir, seed=seed, int_is_shorter_side=True,
                                degrade=degrade, **engine_params)
        self.rng = TransformRNG(seed)

    @_compiler_disable
    def forward(self, *inputs: Any) -> Any:
        """v2's `forward`, kept out of `torch.compile` graphs: a clean graph break, since the work is
        Python over numpy, the cache and the engine, none of which dynamo can trace. A lone image (the
        usual per-sample call) skips v2's flatten/unflatten, which only repeat it (same checks, params
        and result)."""
        if len(inputs) == 1 and isinstance(inputs[0], (PIL.Image.Image, torch.Tensor)):
            flat = [inputs[0]]
            self.check_inputs(flat)
            return self.transform(inputs[0], self.make_params(flat))
        return super().forward(*inputs)

    def check_inputs(self, flat_inputs: list[Any]) -> None:
        samples.refuse_videos(flat_inputs)

    _check_inputs = check_inputs  # torchvision < 0.21

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        """The draws for one call, one per image of the sample (a batch tensor holds its first dimension's
        worth, any other image one), from the seeded generator or torch's global RNG: {"augment": [bool],
        "variant": [int]}, as `AugmentCore.apply_many` takes them; in a sample of several images "spans",
        where each image's own draws lie in them (by the image object's id); and "image_size", the first
        image's (h, w) that boxes, masks and keypoints follow (None in a sample without an image: each
        follows its own size)."""
        image = samples.first_image(flat_inputs)
        (count, spans), generator = samples.image_spans(flat_inputs), self.rng.generator()
        # a draw with one possible outcome (p of 0 or 1, one variant) is not made: ~0.05 ms per call saved
        if 0.0 < self.core.p < 1.0:
            augment = (torch.rand(count, generator=generator) < self.core.p).tolist()
        else:
            augment = [self.core.p == 1.0] * count
        if self.core.variants > 1:
            variant = torch.randint(self.core.variants, (count,), generator=generator).tolist()
        else:
            variant = [0] * count
        params = {"augment": augment, "variant": variant, "image_size": samples.image_size(image)}
        if len(spans) > 1:
            params["spans"] = spans
        return params

    # torchvision < 0.21 calls the private names
    _get_params = make_params

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, samples.GEOMETRY):
            size = params.get("image_size") or tuple(F.get_size(inpt))
            return samples.follow_images(inpt, samples.output_size(size, self.core))
        if not samples.is_image(inpt):
            return inpt
        span = params.get("spans", {}).get(id(inpt))
        if span is not None:  # this image's own draws (a sample may hold several images)
            params = {"augment": params["augment"][span[0]:span[1]], "variant": params["variant"][span[0]:span[1]]}
        if isinstance(inpt, PIL.Image.Image):
            if self.core.mode == "resynthesize" and not params["augment"][0]:
                return self._pil_not_augmented(inpt)
            return pil_modes.restore(self._many([pil_to_rgb(inpt)], params)[0], inpt)
        out = self._tensor_images(as_batch(inpt), params)
        if inpt.ndim == 3:
            out = out[0]
        return tv_tensors.wrap(out, like=inpt) if isinstance(inpt, tv_tensors.TVTensor) else out

    _transform = transform

    def _tensor_images(self, batch: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
        """A checked NCHW batch through the core, in its own channels, dtype and device: the colour (grey
        repeated to RGB) is super-resolved; grey comes back as the luma of the RGB result
        (`pil_modes.grey`); alpha is carried (`carry_alpha`); an image not augmented keeps its values."""
        check_batch(batch)
        if batch.shape[0] == 0:  # an empty batch: empty in the output's size
            size = tuple(batch.shape[2:])
            size = samples.output_size(size, self.core) or size
            return batch.new_empty((0, batch.shape[1], *size))
        source = batch.detach().cpu()
        results = self.core.apply_many(tensor_to_rgb(source), params)
        if all(result is None for result in results):
            return batch  # nothing augmented (resynthesize mode): the input itself, exactly
        size = next(result.shape[:2] for result in results if result is not None)
        colour = colour_channels(source)
        stacked = np.zeros((len(results), colour, *size), np.uint8)
        for i, result in enumerate(results):  # one copy per image, straight into the NCHW batch
            if result is not None:
                stacked[i] = result.transpose(2, 0, 1) if colour == 3 else pil_modes.grey(result)[None]
        out = from_uint8(stacked, batch.dtype)
        if source.shape[1] > colour:
            out = torch.cat([out, carry_alpha(source[:, colour:], size)], dim=1)
        for i, result in enumerate(results):
            if result is None:  # not augmented: its own values, exactly
                out[i] = source[i]
        return out.to(batch.device)

    def _pil_not_augmented(self, image: PIL.Image.Image) -> PIL.Image.Image:
        """A PIL image `resynthesize` mode did not pick: the image itself, as its pixels are (no EXIF turn,
        as an augmented one, so both come back the same way up); resized to `output_size` in its own
        mode (bicubic), except modes "1", "P" and "PA", which Pillow resizes only nearest-neighbour:
        those take the path an augmented image takes (the RGB pixels resized,
        in the mode an augmented image comes back in, `pil_modes.restore`)."""
        size = self.core.target_size(image.height, image.width)
        if size is None or (image.height, image.width) == tuple(size):
            return image
        if image.mode in pil_modes.NEAREST_ONLY:
            return pil_modes.restore(resize(pil_to_rgb(image), size), image)
        return image.resize((size[1], size[0]), resample=PIL.Image.BICUBIC)

    def _many(self, images: list[np.ndarray], params: dict[str, Any]) -> list[np.ndarray]:
        results = self.core.apply_many(images, params)
        return [image if result is None else result for image, result in zip(images, results)]

    def rgb_images(self, inpt: Any) -> list[np.ndarray]:
        """The conversion hook: the uint8 HWC RGB images this transform keys for one image (PIL, a CHW
        image or an NCHW batch tensor, `tv_tensors.Image`), with the checks and conversion its lookups
        run. `warm` calls it; nothing is looked up or drawn."""
        if isinstance(inpt, PIL.Image.Image):
            return [pil_to_rgb(inpt)]
        batch = as_batch(inpt)
        check_batch(batch)
        return tensor_to_rgb(batch.detach().cpu())

    def warm(self, data, *, batch_size: int = 8, progress: bool = True):
        """Generate and cache every variant of every image in `data` that is not cached yet, with exactly
        the keys this transform will look up; returns the `WarmReport` of `sr-augment warm`.

        `data` is what the pipeline feeds this transform: a Dataset (or DataLoader, or any iterable) of
        images or samples (PIL, CHW/NCHW tensors, `tv_tensors.Image`; tuples and dicts as v2 takes
        them), i.e. the training dataset built with the part of the transform that comes BEFORE
        SRAugment (decoding and deterministic resizing). Misses go to the engine `batch_size` at a time
        and are stored batch by batch; a rerun generates nothing; nothing is drawn from this
        transform's RNG. Example:

            before = v2.Compose([v2.Resize(256), v2.CenterCrop(256)])
            sr = SRAugment(engine="sr4", mode="resynthesize", variants=4)
            sr.warm(datasets.ImageFolder("data/train", transform=before))
            transform = v2.Compose([before, sr, v2.RandomHorizontalFlip(), v2.ToImage()])
        """
        from sr_augment.torch_transforms.warming import warm_transform

        return warm_transform(self, data, batch_size=batch_size, progress=progress)

    def extra_repr(self) -> str:
        config = self.core.config()
        return ", ".join(f"{k}={v!r}" for k, v in config.items() if v is not None)
