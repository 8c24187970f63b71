"""The PIL mode (and, for tensors, the channels) an image comes back in from the torchvision `SRAugment`.

The engine and the cache see uint8 RGB (`sr_augment.images.pil_to_rgb`, `array_to_rgb`: grey repeated,
alpha dropped), so the keys of every image are those of its RGB pixels. What comes back keeps the
input's kind of image:

- grey ("L", 1-channel tensors) comes back grey: the ITU-R 601-2 luma of the RGB result, as Pillow's
  `convert("L")` computes it (`grey`). The SR of a grey image repeated to RGB is grey or nearly so (an
  engine may add faint colour); the luma is the reduction a grey pipeline would apply to it. "1"
  comes back "L" (super-resolution makes grey levels, which a bilevel image cannot hold); "I;16"
  (and "I;16B", "I;16L") comes back "I;16" and "I" comes back "I", both with the 8-bit result times
  257 (the scale they were read on); "F" comes back "F" on the 0-255 scale it was read on.
- alpha ("RGBA", "LA", "PA", "RGBa", "P" with transparency; 2- and 4-channel tensors) is not
  super-resolved: it is carried through, resized bicubic to the result's size when that differs
  (`carry_alpha`), and put back. "PA" and a "P" image with transparency come back "RGBA", "RGBa"
  comes back "RGBA" (not premultiplied).
- "P" comes back "RGB": super-resolution makes colours the palette does not hold, and quantising back
  to it would throw away the detail just made.
- any other mode ("RGB", "CMYK", "YCbCr", "HSV", "LAB", ...) comes back in its own mode through
  Pillow's `convert` from RGB; a mode Pillow cannot convert RGB to comes back "RGB".
"""

from __future__ import annotations

import numpy as np
from PIL import Image

GREY_MODES = {"L": "L", "1": "L", "I;16": "I;16", "I;16L": "I;16", "I;16B": "I;16", "I": "I", "F": "F"}
ALPHA_MODES = {"RGBA": "RGBA", "LA": "LA", "PA": "RGBA", "RGBa": "RGBA"}
NEAREST_ONLY = ("1", "P", "PA")
"""Modes Pillow resizes nearest-neighbour only: an image of them is resized as the engine's RGB."""


def has_alpha(image: Image.Image) -> bool:
    return image.mode in ALPHA_MODES or (image.mode == "P" and "transparency" in image.info)


def out_mode(image: Image.Image) -> str:
    """The mode an augmented (or resized) image of `image`'s mode comes back in (see the module docstring)."""
    if image.mode == "P":
        return "RGBA" if has_alpha(image) else "RGB"
    return GREY_MODES.get(image.mode) or ALPHA_MODES.get(image.mode) or image.mode


def grey(rgb: np.ndarray) -> np.ndarray:
    """The uint8 HW luma of a uint8 HWC RGB image: Pillow's `convert("L")` (ITU-R 601-2,
    L = R * 299/1000 + G * 587/1000 + B * 114/1000, rounded); a grey pixel (v, v, v) gives v exactly."""
    return np.asarray(Image.fromarray(rgb).convert("L"))


def carry_alpha(alpha: Image.Image, size: tuple[int, int]) -> Image.Image:
    """An "L" alpha channel at (height, width) `size`: itself when it has that size, else resized bicubic
    (Pillow's `Image.resize`, what `v2.Resize(size, interpolation=BICUBIC)` does to a PIL image)."""
    if (alpha.height, alpha.width) == tuple(size):
        return alpha
    return alpha.resize((size[1], size[0]), resample=Image.BICUBIC)


def restore(rgb: np.ndarray, source: Image.Image) -> Image.Image:
    """The engine's uint8 HWC RGB result `rgb` for `source`, in the mode `source` comes back in, its
    alpha (if any) carried over from `source` (as its pixels are: no EXIF turn, as `pil_to_rgb`)."""
    mode = out_mode(source)
    colour = Image.fromarray(rgb)
    if mode == "RGB":
        return colour
    if mode in ("L", "LA", "I;16", "I", "F"):
        luma = grey(rgb)
        colour = Image.fromarray(luma)
        if mode == "I;16":
            return Image.fromarray(luma.astype(np.uint16) * np.uint16(257))
        if mode == "I":
            return Image.fromarray(luma.astype(np.int32) * np.int32(257))
        if mode == "F":
            return Image.fromarray(luma.astype(np.float32))
    if mode in ("RGBA", "LA"):
        alpha = (source.convert("RGBA") if source.mode == "P" else source).getchannel("A")
        colour.putalpha(carry_alpha(alpha, rgb.shape[:2]))
        return colour
    if mode == "L":
        return colour
    try:
        return colour.convert(mode)
    except ValueError:  # a mode Pillow cannot convert RGB to
        return colour
