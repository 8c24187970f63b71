"""The image normaliser: every input becomes uint8 HWC RGB, or a clear error naming the input.

Odd and broken files (16-bit, EXIF, CMYK, truncated, empty, bombs...) are in test_hostile_inputs.py."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sr_augment.images import ImageDecodeError, ImageShapeError, iter_image_files, load_image, to_rgb


def _save(img: Image.Image, path, **kw):
    img.save(path, **kw)
    return path


def test_rgb_png_roundtrip_is_exact(tmp_path, rng):
    pixels = rng.integers(0, 256, (7, 9, 3), dtype=np.uint8)
    path = _save(Image.fromarray(pixels), tmp_path / "a.png")
    assert np.array_equal(load_image(path), pixels)


@pytest.mark.parametrize(
    "make, check",
    [
        (lambda: Image.new("L", (5, 4), 77), lambda a: np.all(a == 77)),
        (lambda: Image.new("RGBA", (5, 4), (10, 20, 30, 0)), lambda a: np.all(a == [10, 20, 30])),
        (lambda: Image.new("CMYK", (5, 4), (0, 0, 0, 0)), lambda a: np.all(a == 255)),
        (lambda: Image.new("P", (5, 4), 3), lambda a: a.shape == (4, 5, 3)),
        (lambda: Image.new("1", (5, 4), 1), lambda a: np.all(a == 255)),
    ],
    ids=["grayscale", "rgba-alpha-dropped", "cmyk-white", "palette", "bilevel"],
)
def test_modes_become_rgb(make, check):
    out = to_rgb(make())
    assert out.dtype == np.uint8 and out.shape == (4, 5, 3) and out.flags.c_contiguous
    assert check(out)


@pytest.mark.parametrize(
    "array, expected",
    [
        (np.full((2, 2), 0.5, np.float32), 128),
        (np.full((2, 2, 1), 1.0), 255),
        (np.full((2, 2, 4), 200, np.uint8), 200),
        (np.full((2, 2, 3), 65535, np.uint16), 255),
    ],
    ids=["float-gray", "float-1ch", "rgba-uint8", "uint16"],
)
def test_arrays_normalise(array, expected):
    out = to_rgb(array)
    assert out.shape == (2, 2, 3) and out.dtype == np.uint8 and np.all(out == expected)


@pytest.mark.parametrize(
    "array, error, message",
    [
        (np.full((2, 2, 3), np.nan, np.float32), ImageDecodeError, "NaN"),
        (np.full((2, 2, 3), 1.5, np.float32), ImageDecodeError, r"\[0, 1\]"),
        (np.zeros((2, 2, 2), np.uint8), ImageShapeError, "channels"),
        (np.zeros((1, 2, 2, 3), np.uint8), ImageShapeError, "shape"),
        (np.zeros((0, 2, 3), np.uint8), ImageDecodeError, "empty"),
    ],
    ids=["nan", "out-of-range", "two-channels", "rank-4", "empty"],
)
def test_bad_arrays_raise(array, error, message):
    with pytest.raises(error, match=message):
        to_rgb(array, name="sample-7")


def test_iter_image_files_recurses_and_filters(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ["a/1.png", "a/b/2.JPG", "a/notes.txt", "3.bmp"]:
        (tmp_path / name).write_bytes(b"x")
    found = [p.relative_to(tmp_path).as_posix() for p in iter_image_files([tmp_path])]
    assert found == ["3.bmp", "a/1.png", "a/b/2.JPG"]
    with pytest.raises(FileNotFoundError, match="missing"):
        iter_image_files([tmp_path / "missing"])


def test_negative_values_of_a_32_bit_integer_image_are_clipped_to_black_not_wrapped_to_white():
    """Mode "I" is signed: -5 is below black, so it clips to 0 (read as unsigned it wrapped to white)."""
    from PIL import Image as PILImage

    from sr_augment.images import pil_to_rgb

    img = PILImage.fromarray(np.array([[-5, 0], [257 * 100, 70000]], dtype=np.int32), mode="I")
    out = pil_to_rgb(img)
    assert out[:, :, 0].tolist() == [[0, 0], [100, 255]]
