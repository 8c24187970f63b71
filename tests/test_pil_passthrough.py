"""PIL images through the torchvision transform: one that is not augmented comes back untouched (the
same object, its mode and range kept), or, in `resynthesize` mode with `output_size`, resized in its own
mode where Pillow can resize it bicubic; one that is augmented comes back in the mode
`pil_modes.out_mode` names (grey stays grey, alpha is carried; the engine's pixels)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("torchvision")
from PIL import ExifTags, Image  # noqa: E402

from sr_augment.engines import BicubicEngine  # noqa: E402
from sr_augment.images import pil_to_rgb, resize  # noqa: E402
from sr_augment.torch_transforms import SRAugment, pil_modes  # noqa: E402

RGB = np.random.default_rng(0).integers(0, 256, (12, 16, 3), dtype=np.uint8)  # H=12, W=16
MODES = ["L", "LA", "RGB", "RGBA", "P", "1", "I", "I;16", "F", "CMYK"]
IN_OWN_MODE = [m for m in MODES if m not in ("P", "1")]  # Pillow resizes P and 1 nearest-neighbour only


def _image(mode: str) -> Image.Image:
    if mode == "I;16":  # the full 16-bit range, which an 8-bit round trip would lose
        return Image.fromarray(np.random.default_rng(1).integers(0, 65536, (12, 16), dtype=np.uint16))
    return Image.fromarray(RGB).convert(mode)


def _sr(tmp_path, p, **kwargs) -> SRAugment:
    kwargs.setdefault("mode", "resynthesize")
    return SRAugment(engine=BicubicEngine(), scale=2, p=p, cache_dir=tmp_path / "cache", **kwargs)


@pytest.mark.parametrize("mode", MODES)
def test_a_pil_image_not_augmented_comes_back_untouched(mode, tmp_path):
    image = _image(mode)
    before = np.asarray(image).copy()
    out = _sr(tmp_path, 0.0)(image)
    assert out is image and out.mode == mode and np.array_equal(np.asarray(out), before)


@pytest.mark.parametrize("mode", MODES)
def test_a_pil_image_not_augmented_in_a_sample_comes_back_untouched(mode, tmp_path):
    image = _image(mode)
    out, label = _sr(tmp_path, 0.0)((image, 3))
    assert out is image and label == 3


@pytest.mark.parametrize("mode", MODES)
def test_an_augmented_pil_image_comes_back_in_its_out_mode_with_the_engines_pixels(mode, tmp_path):
    image = _image(mode)
    out = _sr(tmp_path, 1.0)(image)
    expected = _sr(tmp_path, 1.0).core.apply_many([pil_to_rgb(image)], {"augment": [True], "variant": [0]})[0]
    assert out.mode == pil_modes.out_mode(image) and out.size == image.size
    assert np.array_equal(np.asarray(out), np.asarray(pil_modes.restore(expected, image)))
    if out.mode == "RGB":
        assert np.array_equal(np.asarray(out), expected)


@pytest.mark.parametrize("mode", IN_OWN_MODE)
def test_a_pil_image_not_augmented_but_resized_keeps_its_mode(mode, tmp_path):
    image = _image(mode)
    out = _sr(tmp_path, 0.0, output_size=(24, 20))(image)
    assert out.mode == mode and out.size == (20, 24)
    assert np.array_equal(np.asarray(out), np.asarray(image.resize((20, 24), Image.BICUBIC)))
    if mode == "I;16":
        assert np.asarray(out).max() > 255  # its 16-bit range kept
    if mode == "RGB":  # what it was before: the one resize of the uint8 RGB pixels
        assert np.array_equal(np.asarray(out), resize(RGB, (24, 20)))


@pytest.mark.parametrize("mode, out_mode", [("P", "RGB"), ("1", "L")])
def test_palette_and_bilevel_images_not_augmented_but_resized_come_back_as_augmented_ones(mode, out_mode, tmp_path):
    image = _image(mode)
    out = _sr(tmp_path, 0.0, output_size=(24, 20))(image)
    assert out.mode == out_mode
    assert np.array_equal(np.asarray(out.convert("RGB")), resize(pil_to_rgb(image), (24, 20)))


def test_an_output_size_equal_to_the_images_size_returns_the_image_itself(tmp_path):
    image = _image("I;16")
    assert _sr(tmp_path, 0.0, output_size=(12, 16))(image) is image


def test_an_image_with_an_exif_orientation_comes_back_unturned_augmented_or_not(tmp_path):
    """PIL images are taken as their pixels are (no EXIF turn, as `pil_to_rgb` and torchvision's
    `ImageFolder`): one not augmented is the image itself, an augmented one has its size and mode."""
    image = _image("L")
    exif = image.getexif()
    exif[ExifTags.Base.Orientation] = 6  # 90 degrees
    path = tmp_path / "turned.png"
    image.save(path, exif=exif)
    with Image.open(path) as turned:
        kept = _sr(tmp_path, 0.0)(turned)
        augmented = _sr(tmp_path, 1.0)(turned)
        assert kept is turned
    assert kept.mode == augmented.mode == "L" and kept.size == augmented.size == (16, 12)
    assert np.array_equal(np.asarray(kept.convert("RGB")), pil_to_rgb(Image.open(path)))


def test_upscale_mode_gives_every_pil_image_the_result_in_its_out_mode(tmp_path):
    """In upscale mode an image not picked gets the bicubic result (every output has one shape), in the
    mode an augmented image comes back in: "L" stays "L"."""
    image = _image("L")
    out = _sr(tmp_path, 0.0, mode="upscale")(image)
    assert out.mode == "L" and out.size == (32, 24)
