"""`warm --resize / --center-crop`: the deterministic resize and centre crop of torchvision v2 on PIL images.

The cache key is the pixels SRAugment receives, so a CLI warm must produce the very pixels of the
training pipeline's `v2.Resize(size)` / `v2.CenterCrop(size)` (defaults: bilinear, antialias, no
max_size) applied to PIL images (what `datasets.ImageFolder` yields). For PIL input torchvision calls
`PIL.Image.resize((w, h), BILINEAR)` (Pillow always antialiases when shrinking) with the size from
`_compute_resized_output_size`, and crops at `round((H - h) / 2)` (Python's round: half to even),
zero-padding first when the crop is larger than the image. Those rules are written out here by hand
(a dozen lines, checked pixel for pixel against torchvision in the tests) so that the CLI, which must
start fast and run in processes that never import torch, does not import torchvision.

Other resizers give other pixels and therefore other keys: `tf.image.resize`, `keras.layers.Resizing`,
OpenCV, and torchvision on tensors (its own antialiased bilinear kernel, not Pillow's). For those,
warm through the pipeline itself: `SRAugment.warm(dataset_before_sraugment)`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from PIL import Image

Size = tuple  # (side,) for "shorter side to side", or (height, width)


def parse_image_size(text: str) -> Size:
    """An image size: "N" (Resize: the shorter side to N; CenterCrop: N x N) or "HxW" (exactly height x width)."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?", str(text))
    if not match or int(match.group(1)) < 1 or (match.group(2) is not None and int(match.group(2)) < 1):
        raise ValueError(f"a size must be N or HxW with positive integers, e.g. 256 or 224x320; got {text!r}")
    return (int(match.group(1)),) if match.group(2) is None else (int(match.group(1)), int(match.group(2)))


def resized_size(height: int, width: int, size: Size) -> tuple[int, int]:
    """The (height, width) `v2.Resize(size)` gives an image of (height, width) (torchvision's
    `_compute_resized_output_size` without max_size: the long side is truncated, not rounded)."""
    if len(size) == 2:
        return int(size[0]), int(size[1])
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = int(size[0]), int(int(size[0]) * long / short)
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    return new_h, new_w


def resize_like_torchvision(image: np.ndarray, size: Size) -> np.ndarray:
    """`v2.Resize(size)` on the PIL image of uint8 HWC RGB `image` (bilinear, Pillow's antialiasing)."""
    new = resized_size(image.shape[0], image.shape[1], size)
    if new == image.shape[:2]:
        return image
    return np.asarray(Image.fromarray(image).resize((new[1], new[0]), resample=Image.BILINEAR))


def center_crop_like_torchvision(image: np.ndarray, size: Size) -> np.ndarray:
    """`v2.CenterCrop(size)` on the PIL image of `image`: zero padding where the crop is larger, then
    the crop at round((H - h) / 2), round((W - w) / 2)."""
    crop_h, crop_w = (size[0], size[0]) if len(size) == 1 else size
    height, width = image.shape[:2]
    if crop_h > height or crop_w > width:
        top, left = max(0, (crop_h - height) // 2), max(0, (crop_w - width) // 2)
        bottom, right = max(0, (crop_h - height + 1) // 2), max(0, (crop_w - width + 1) // 2)
        image = np.pad(image, ((top, bottom), (left, right), (0, 0)))
        height, width = image.shape[:2]
    top, left = int(round((height - crop_h) / 2.0)), int(round((width - crop_w) / 2.0))
    return np.ascontiguousarray(image[top:top + crop_h, left:left + crop_w])


@dataclass(frozen=True)
class Preprocess:
    """What comes between decoding and SRAugment in a torchvision pipeline over PIL images:
    `v2.Resize(resize)` then `v2.CenterCrop(center_crop)` (either may be None). Picklable."""

    resize: Size | None = None
    center_crop: Size | None = None

    def __call__(self, image: np.ndarray) -> np.ndarray:
        if self.resize is not None:
            image = resize_like_torchvision(image, self.resize)
        if self.center_crop is not None:
            image = center_crop_like_torchvision(image, self.center_crop)
        return image

    def __bool__(self) -> bool:
        return self.resize is not None or self.center_crop is not None
