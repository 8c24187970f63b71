"""Decode and normalise any image input to contiguous uint8 HWC RGB numpy arrays.

Everything downstream (engines, cache keys) sees exactly one pixel format, so the same picture hits the
same cache entry whether it came from a path, a PIL image or an array.

Conversions (documented in the README):
- Files read by `load_image` / `decode_image` are turned upright by their EXIF orientation
  (`PIL.ImageOps.exif_transpose`). A PIL image or array given to `to_rgb` / `pil_to_rgb` is taken as its
  pixels are, never turned: that is what a training pipeline hands SRAugment (torchvision's `ImageFolder`
  and Keras' `image_dataset_from_directory` do not apply EXIF), and turning it would change the
  picture's geometry and its cache key. `sr_augment.loaders` decodes files as those libraries do.
- Alpha is dropped, as `PIL.Image.convert("RGB")`, torchvision's `ImageFolder` loader and
  `tf.io.decode_image(channels=3)` do, so warmed keys match what training pipelines decode.
- Grayscale is replicated to three channels; palette and CMYK images are converted to RGB.
- 16-bit images are scaled to 8 bits (value / 257), not clipped.
- Float arrays must lie in [0, 1]; NaN or out-of-range values are an error, never silently clipped.
- Pillow's decompression-bomb guard is kept: a file of more than 2 x `PIL.Image.MAX_IMAGE_PIXELS`
  pixels (about 179 megapixels by default) is an error naming the file; between 1x and 2x Pillow
  warns and the image is used (engines tile large inputs). Raise the limit for files you trust.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from sr_augment.errors import ImageDecodeError, ImageShapeError  # noqa: F401  (defined in errors, named here too)

ImageInput = str | os.PathLike | Image.Image | np.ndarray

_TURNED = frozenset(range(2, 9))
"""EXIF orientations `ImageOps.exif_transpose` applies (1 and anything else: none)."""
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file into uint8 HWC RGB, raising `ImageDecodeError` naming the file on failure."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ImageDecodeError(f"{path}: empty file (0 bytes)")
    except OSError as exc:
        raise ImageDecodeError(f"{path}: cannot decode image ({exc})") from None
    return decode_image(path, path)


def decode_image(source, name) -> np.ndarray:
    """Decode `source` (a path or a binary file object) into uint8 HWC RGB with the rules above (EXIF
    orientation applied), raising `ImageDecodeError` naming `name` (the file or URI) and the reason: one
    decoder for local files and for bytes fetched from any filesystem."""
    with opened_image(source, name) as img:
        if img.getexif().get(ExifTags.Base.Orientation, 1) in _TURNED:  # else skip exif_transpose's full copy
            img = ImageOps.exif_transpose(img)
        return pil_to_rgb(img)


@contextmanager
def opened_image(source, name):
    """The loaded PIL image of `source` (a path or a binary file object); any decoding error, in opening
    or in the caller's block, becomes an `ImageDecodeError` naming `name` and the reason."""
    try:
        with Image.open(source) as img:
            img.load()  # some formats (PNG) read their EXIF with the pixels
            yield img
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError(f"{name}: not an image Pillow can identify") from None
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"{name}: refused as a possible decompression bomb ({exc}); if you trust the "
                               f"file, raise PIL.Image.MAX_IMAGE_PIXELS (now {Image.MAX_IMAGE_PIXELS})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(f"{name}: cannot decode image ({exc})") from None


def pil_to_rgb(img: Image.Image) -> np.ndarray:
    """Convert a PIL image of any mode to uint8 HWC RGB (see the module docstring for the rules): its
    pixels as they are, whatever its EXIF orientation says."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.int64 if img.mode == "I" else np.uint16)
        arr = np.clip(arr, 0, 65535).astype(np.float64) if img.mode == "I" else arr
        arr8 = np.round(np.asarray(arr, dtype=np.float64) / 257.0).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(arr8[:, :, None], 3, axis=2))
    if img.mode != "RGB":
        if img.mode == "P" and "transparency" in img.info:
            img = img.convert("RGBA")
        img = img.convert("RGB")
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))


def array_to_rgb(arr: np.ndarray, name: str = "array") -> np.ndarray:
    """Normalise an HWC / HW numpy array (uint8, uint16, bool or float in [0, 1]) to uint8 RGB."""
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise ImageShapeError(f"{name}: expected an HWC or HW image, got shape {arr.shape}")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ImageDecodeError(f"{name}: empty image of shape {arr.shape}")
    channels = arr.shape[2]
    if channels not in (1, 3, 4):
        raise ImageShapeError(f"{name}: expected 1, 3 or 4 channels (HWC), got {channels} in shape {arr.shape}")
    if arr.dtype == np.uint8:
        out = arr
    elif arr.dtype == np.uint16:
        out = np.round(arr.astype(np.float64) / 257.0).astype(np.uint8)
    elif arr.dtype == np.bool_:
        out = arr.astype(np.uint8) * 255
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)):
            raise ImageDecodeError(f"{name}: float image contains NaN or infinity")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0.0 or hi > 1.0:
            raise ImageDecodeError(f"{name}: float image values must lie in [0, 1], got [{lo:.4g}, {hi:.4g}]")
        out = np.round(arr.astype(np.float64) * 255.0).astype(np.uint8)
    else:
        raise ImageDecodeError(f"{name}: unsupported dtype {arr.dtype}")
    if channels == 1:
        out = np.repeat(out, 3, axis=2)
    elif channels == 4:
        out = out[:, :, :3]
    return np.ascontiguousarray(out)


def to_rgb(image: ImageInput, name: str | None = None) -> np.ndarray:
    """Any supported input (path, PIL image, numpy array) to contiguous uint8 HWC RGB."""
    if isinstance(image, (str, os.PathLike)):
        return load_image(image)
    if isinstance(image, Image.Image):
        return pil_to_rgb(image)
    if isinstance(image, np.ndarray):
        return array_to_rgb(image, name or "array")
    raise ImageDecodeError(f"{name or 'input'}: unsupported image type {type(image).__name__}")


def resize(image: np.ndarray, size: tuple[int, int], resample: int = Image.BICUBIC, *,
           copy: bool = False) -> np.ndarray:
    """Resize uint8 HWC RGB to (height, width) with Pillow (antialiased when shrinking).

    An image that already has that size is returned as it is, unless `copy` (then a new, read-only
    array, as every resized result is).
    """
    height, width = size
    if image.shape[:2] == (height, width) and not copy:
        return image
    out = Image.fromarray(image).resize((width, height), resample=resample)
    return np.asarray(out, dtype=np.uint8)


def bicubic_resize(image: np.ndarray, scale: int) -> np.ndarray:
    """`image` enlarged `scale` times (bicubic): the baseline every SR result is compared with.
    Always a new array, even for scale 1."""
    height, width = image.shape[:2]
    return resize(image, (height * scale, width * scale), copy=True)


def center_crop(image: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """The centred `size` (side, or (height, width)) crop of an HWC image, as a contiguous array.
    Odd margins leave the extra pixel at the bottom / right."""
    height, width = (size, size) if isinstance(size, (int, np.integer)) else size
    top, left = (image.shape[0] - height) // 2, (image.shape[1] - width) // 2
    return np.ascontiguousarray(image[top:top + height, left:left + width])


def iter_image_files(paths, suffixes=IMAGE_SUFFIXES) -> list[Path]:
    """Files under the given files/folders (folders recursively, following links to folders as
    torchvision's `ImageFolder` and Keras do), sorted, images by suffix (`suffixes`, lower case with the
    dot); a file named explicitly is taken whatever its suffix. A folder reached twice by its real path
    (two links to it, or a link loop) is listed once, under the first path in sorted order; a file reached
    twice by its real path, through one path argument or several, is listed once, under the first path."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.extend(p for p in sorted(_walk_files(path)) if p.suffix.lower() in suffixes and p.is_file())
        elif path.exists():
            found.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    unique: dict[str, Path] = {}
    for path in found:
        unique.setdefault(os.path.realpath(path), path)
    return list(unique.values())


def _walk_files(folder: Path) -> list[Path]:
    """Every file name under `folder`, walked as `ImageFolder` walks (`os.walk(followlinks=True)`), except
    that a folder whose real path was already walked is not walked again, so a link loop ends."""
    seen: set[str] = set()
    found: list[Path] = []
    for top, folders, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(top)
        if real in seen:
            folders[:] = []
            continue
        seen.add(real)
        folders.sort()  # depth first in sorted order: the first path to a folder seen twice is the one kept
        found.extend(Path(top, name) for name in files)
    return found
