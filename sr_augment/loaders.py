"""File loaders of `sr-augment warm --loader`: decode a file into the pixels a training pipeline gives SRAugment.

The cache key is the pixels SRAugment receives, so a warm must decode each file exactly as the training
pipeline's loader does. The loaders disagree on real files: phone photos carry an EXIF orientation, PNGs
may hold 16 bits, TIFFs 32-bit integers, and each library treats them its own way.

- `torchvision` (the default): `torchvision.datasets.ImageFolder`'s loader, `PIL.Image.open(f).convert("RGB")`,
  then `--resize` / `--center-crop` as `v2.Resize` / `v2.CenterCrop` do on PIL images (`tv_geometry`).
  No EXIF turn; 16-bit and 32-bit grey values are clipped to 255 (Pillow's conversion); alpha dropped.
  Files: `ImageFolder`'s extensions. The two lines of the loader are written here so that the CLI never
  imports torch; the tests compare them pixel for pixel with the real `ImageFolder`.
- `keras`: `keras.utils.image_dataset_from_directory(..., color_mode="rgb")`: Keras' own per-file function
  (TensorFlow's `decode_image` with 3 channels, then its resize to `image_size`, bilinear unless
  `interpolation` says otherwise, or `crop_to_aspect_ratio` / `pad_to_aspect_ratio`) is called, not
  imitated, and its float result is clipped to [0, 255] and rounded to uint8 (halves up) as the Keras SRAugment layer
  does with its input (`pixels.to_uint8`: bicubic / Lanczos overshoot is clipped, not refused). Keras
  always resizes (`image_size` defaults to 256x256). No EXIF turn. Files: Keras' allowed extensions (no
  TIFF, no WebP). Needs TensorFlow and Keras.
- `exif`: `sr_augment.load_image`: EXIF orientation applied, 16-bit grey scaled to 8 bits (value / 257),
  then `--resize` / `--center-crop` as for `torchvision`. For pipelines that decode with `load_image`.
- `exif-transpose`: `PIL.ImageOps.exif_transpose(Image.open(f)).convert("RGB")`, the usual way a custom
  loader turns photos upright: EXIF orientation applied, 16-bit and 32-bit grey clipped to 255 as for
  `torchvision` (not scaled as by `exif`), then `--resize` / `--center-crop` as for `torchvision`.

A loader is a small frozen dataclass (picklable: the Ray and accelerate warms ship it to workers); calling
it on a path returns uint8 HWC RGB, raising `ImageDecodeError` naming the file.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import ImageOps

from sr_augment.images import IMAGE_SUFFIXES, ImageDecodeError, decode_image, load_image, opened_image
from sr_augment.warm.tv_geometry import Preprocess, Size

LOADERS = ("torchvision", "keras", "exif", "exif-transpose")
DEFAULT_LOADER = "torchvision"
TORCHVISION_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp"})
"""`torchvision.datasets.folder.IMG_EXTENSIONS`: the files `ImageFolder` lists."""
KERAS_SUFFIXES = frozenset({".bmp", ".gif", ".jpeg", ".jpg", ".png"})
"""Keras' `ALLOWLIST_FORMATS`: the files `image_dataset_from_directory` lists."""
KERAS_INTERPOLATIONS = ("bilinear", "nearest", "bicubic", "area", "lanczos3", "lanczos5", "gaussian", "mitchellcubic")
KERAS_DEFAULT_SIZE = (256, 256)


@dataclass(frozen=True)
class FileLoader:
    """Decode an image file as the named library's loader does, then resize / crop as the pipeline does.
    Build it with `file_loader` (which checks the combination)."""

    name: str = DEFAULT_LOADER
    resize: Size | None = None
    center_crop: Size | None = None
    interpolation: str = "bilinear"
    crop_to_aspect_ratio: bool = False
    pad_to_aspect_ratio: bool = False

    @property
    def suffixes(self) -> frozenset:
        """The file extensions the library lists in a folder (a file named explicitly is read whatever its name)."""
        return {"torchvision": TORCHVISION_SUFFIXES, "keras": KERAS_SUFFIXES}.get(self.name, IMAGE_SUFFIXES)

    @property
    def image_size(self) -> tuple[int, int]:
        """Keras' `image_size` (height, width)."""
        return tuple(self.resize) if self.resize is not None else KERAS_DEFAULT_SIZE

    def __call__(self, path) -> np.ndarray:
        """uint8 HWC RGB of the file at `path`, as the pipeline's loader and deterministic resize give it."""
        if self.name == "keras":
            return self._keras(Path(path))
        if self.name == "exif":
            return self._geometry(load_image(path))
        upright = self.name == "exif-transpose"
        return self._geometry(_check_size(path, lambda: _torchvision_decode(path, path, upright)))

    def decode(self, source, name: str) -> np.ndarray:
        """As `__call__`, for a binary file object `source` (bytes fetched from any filesystem) named `name`."""
        if self.name == "keras":
            suffix = os.path.splitext(str(name))[1][:16]
            with tempfile.TemporaryDirectory(prefix="sr-augment-keras-") as folder:
                path = Path(folder) / f"image{suffix}"
                path.write_bytes(source.read())
                try:
                    return self._keras(path)
                except ImageDecodeError as exc:
                    raise ImageDecodeError(str(exc).replace(str(path), str(name))) from None
        if self.name == "exif":
            return self._geometry(decode_image(source, name))
        return self._geometry(_torchvision_decode(source, name, self.name == "exif-transpose"))

    def _geometry(self, image: np.ndarray) -> np.ndarray:
        steps = Preprocess(self.resize, self.center_crop)
        return steps(image) if steps else image

    def _keras(self, path: Path) -> np.ndarray:
        tf, load = _keras_loader()
        try:
            image = load(tf.constant(str(path)), self.image_size, 3, self.interpolation, "channels_last",
                         self.crop_to_aspect_ratio, self.pad_to_aspect_ratio)
            values = image.numpy()
        except (tf.errors.OpError, ValueError) as exc:
            reason = str(getattr(exc, "message", exc)).strip().splitlines()[0][:300]
            raise ImageDecodeError(f"{path}: TensorFlow cannot decode it as Keras would ({reason})") from None
        from sr_augment.keras_layers.pixels import to_uint8  # what the Keras layer keys a float image as

        try:
            return np.ascontiguousarray(to_uint8(values[None], (0, 255))[0])
        except ValueError as exc:  # values far outside [0, 255]: the layer refuses them the same way
            raise ImageDecodeError(f"{path}: {exc}") from None

    def describe(self) -> str:
        if self.name == "keras":
            extra = "".join(f", {flag}=True" for flag in ("crop_to_aspect_ratio", "pad_to_aspect_ratio")
                            if getattr(self, flag))
            return (f"keras image_dataset_from_directory(image_size={self.image_size}, "
                    f"interpolation={self.interpolation!r}{extra})")
        steps = [f"v2.Resize({_size_text(self.resize)})"] if self.resize else []
        steps += [f"v2.CenterCrop({_size_text(self.center_crop)})"] if self.center_crop else []
        first = {"torchvision": "torchvision ImageFolder loader", "exif": "sr_augment.load_image (EXIF applied)",
                 "exif-transpose": 'ImageOps.exif_transpose(Image.open(f)).convert("RGB")'}[self.name]
        return " -> ".join([first, *steps])


def _size_text(size: Size) -> str:
    return str(size[0]) if len(size) == 1 else str(tuple(size))


def file_loader(name: str = DEFAULT_LOADER, *, resize: Size | None = None, center_crop: Size | None = None,
                interpolation: str | None = None, crop_to_aspect_ratio: bool = False,
                pad_to_aspect_ratio: bool = False) -> FileLoader:
    """The loader `name` with the pipeline's deterministic resize; `ValueError` saying why for a
    combination the named library cannot produce (so the warm would key pixels training never sees)."""
    if name not in LOADERS:
        raise ValueError(f"--loader must be one of {', '.join(LOADERS)}; got {name!r}")
    if name == "keras":
        if center_crop is not None:
            raise ValueError("--loader keras: image_dataset_from_directory has no centre crop; --center-crop cannot "
                             "be matched. Its crop_to_aspect_ratio=True (--crop-to-aspect-ratio) crops the largest "
                             "centred box of the image_size's aspect ratio, then resizes")
        if resize is not None and len(resize) != 2:
            raise ValueError(f"--loader keras: --resize is Keras' image_size, (height, width): give --resize "
                             f"{resize[0]}x{resize[0]} for image_size=({resize[0]}, {resize[0]}) (--resize N means "
                             f"'shorter side to N', which Keras does not do)")
        if crop_to_aspect_ratio and pad_to_aspect_ratio:
            raise ValueError("--loader keras: only one of --crop-to-aspect-ratio and --pad-to-aspect-ratio can be "
                             "given, as in image_dataset_from_directory")
        interpolation = "bilinear" if interpolation is None else str(interpolation).lower()
        if interpolation not in KERAS_INTERPOLATIONS:
            raise ValueError(f"--interpolation {interpolation!r}: image_dataset_from_directory takes one of "
                             f"{', '.join(KERAS_INTERPOLATIONS)}")
        return FileLoader(name, resize, None, interpolation, bool(crop_to_aspect_ratio), bool(pad_to_aspect_ratio))
    for flag, given in (("--crop-to-aspect-ratio", crop_to_aspect_ratio), ("--pad-to-aspect-ratio", pad_to_aspect_ratio)):
        if given:
            raise ValueError(f"{flag} is an option of Keras' image_dataset_from_directory: use it with --loader keras")
    if interpolation is not None and str(interpolation).lower() != "bilinear":
        raise ValueError(f"--interpolation {interpolation}: with --loader {name}, --resize is torchvision's "
                         f"v2.Resize with its default bilinear interpolation only; for another resize, warm "
                         f"through the pipeline itself: SRAugment(...).warm(dataset_before_sraugment)")
    return FileLoader(name, resize, center_crop)


def _torchvision_decode(source, name, upright: bool = False) -> np.ndarray:
    """`torchvision.datasets.folder.pil_loader`: `Image.open(f).convert("RGB")`, errors naming `name`;
    `upright`: `ImageOps.exif_transpose(Image.open(f)).convert("RGB")`."""
    with opened_image(source, name) as img:
        return np.ascontiguousarray(np.asarray((ImageOps.exif_transpose(img) if upright else img).convert("RGB"),
                                               dtype=np.uint8))


def _check_size(path, decode):
    try:
        if Path(path).stat().st_size == 0:
            raise ImageDecodeError(f"{path}: empty file (0 bytes)")
    except OSError as exc:
        raise ImageDecodeError(f"{path}: cannot decode image ({exc})") from None
    return decode()


def _keras_loader():
    """TensorFlow and Keras' per-file function of `image_dataset_from_directory`. torch (and triton) are
    imported first where installed: a process that imports TensorFlow before them aborts when it later
    imports them (an engine that runs here may)."""
    if "tensorflow" not in sys.modules:
        for first in ("torch", "triton"):
            if first not in sys.modules and importlib.util.find_spec(first) is not None:
                __import__(first)
    try:
        import tensorflow as tf
        from keras.src.utils.image_dataset_utils import _load_image_tf
    except ImportError as exc:
        raise ImageDecodeError(f"--loader keras needs TensorFlow and Keras 3 (pip install tensorflow keras): "
                               f"{exc}") from None
    return tf, _load_image_tf


__all__ = ["DEFAULT_LOADER", "KERAS_SUFFIXES", "LOADERS", "TORCHVISION_SUFFIXES", "FileLoader", "file_loader"]
