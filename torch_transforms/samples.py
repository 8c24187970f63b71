"""Which items of a torchvision v2 sample `SRAugment` super-resolves, and what it does to the others.

As torchvision's geometric transforms do: images (PIL, `tv_tensors.Image`, and the pure tensor that v2's
heuristic calls the image, decided by `Transform._needs_transform_list`) are super-resolved; boxes,
masks and keypoints follow the images' new size through torchvision's own `v2.functional.resize`
kernels, so they come out exactly as `v2.Resize` to the same size would give them (boxes and keypoints
scaled with their `canvas_size` updated, masks nearest-neighbour); anything else (labels, strings,
other tv_tensors) passes through. Videos are refused: SR of a clip frame by frame would make each
frame's detail different (flicker), which is not a label-preserving augmentation of a video.
"""

from __future__ import annotations

from typing import Any

import PIL.Image
import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F
from torchvision.transforms.v2.functional import is_pure_tensor

KeyPoints = getattr(tv_tensors, "KeyPoints", None)  # torchvision >= 0.23
GEOMETRY = tuple(t for t in (tv_tensors.BoundingBoxes, tv_tensors.Mask, KeyPoints) if t is not None)
"""The tv_tensors that follow the images' size (as `v2.Resize` moves them)."""


def is_image(inpt: Any) -> bool:
    """A kind of item SRAugment super-resolves (which pure tensor is the image: v2's heuristic)."""
    return isinstance(inpt, (PIL.Image.Image, tv_tensors.Image)) or is_pure_tensor(inpt)


def refuse_videos(flat_inputs: list[Any]) -> None:
    if any(isinstance(item, tv_tensors.Video) for item in flat_inputs):
        raise TypeError("SRAugment does not take tv_tensors.Video: super-resolving frames one by one gives each "
                        "frame different detail (flicker). Apply it to the frames as images, or leave videos out")


def first_image(flat_inputs: list[Any]) -> Any:
    """The first image of the items to transform, or None (a sample of masks or boxes alone)."""
    return next((item for item in flat_inputs if is_image(item)), None)


def image_count(image: Any) -> int:
    """How many images it holds: a batch tensor's first dimension, else 1 (one draw each)."""
    return image.shape[0] if isinstance(image, torch.Tensor) and image.ndim == 4 else 1


def image_spans(flat_inputs: list[Any]) -> tuple[int, dict[int, tuple[int, int]]]:
    """The draws a sample needs, one per image (a batch tensor holds several), and where each image's own
    run of them lies, by the image object's id: a sample may hold a batch and single images together.
    A sample without an image needs one draw (made, unused), as before."""
    spans, start = {}, 0
    for item in flat_inputs:
        if is_image(item):
            count = image_count(item)
            spans[id(item)] = (start, start + count)
            start += count
    return (start if spans else 1), spans


def image_size(image: Any) -> tuple[int, int] | None:
    if image is None or (isinstance(image, torch.Tensor) and image.ndim < 2):
        return None
    if isinstance(image, PIL.Image.Image):  # what F.get_size gives, without its dispatch (~0.02 ms)
        return image.height, image.width
    height, width = F.get_size(image)
    return height, width


def output_size(size: tuple[int, int], core) -> list[int] | None:
    """The images' size after SRAugment (settings `core`, an `AugmentCore`), for an input of `size`; None
    when it does not change (`resynthesize` without `output_size`)."""
    if core.mode == "upscale":
        size = (size[0] * core.scale, size[1] * core.scale)
    target = core.target_size(*size)
    if target is not None:
        return list(target)
    return list(size) if core.mode == "upscale" else None


def follow_images(inpt: Any, size: list[int] | None) -> Any:
    """A box, mask or keypoints tensor moved to images of `size` exactly as `v2.Resize(size)` moves it
    (its own kernel, v2.Resize's defaults); unchanged, the same object, when `size` is None."""
    if size is None:
        return inpt
    return F.resize(inpt, size=size, interpolation=F.InterpolationMode.BILINEAR, max_size=None, antialias=True)
