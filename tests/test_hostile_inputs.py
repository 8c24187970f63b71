"""Hostile inputs, one module: every kind of file and tensor that real data throws at the library.

Each case gets a documented conversion or an error naming the input (checked per case through
`load_image`), and a warm over all of them at once must report the bad files by name, cache the
others, keep going, and leave only intact entries. The adapters' bad tensors must leave the cache as
it was. The conversions are the ones listed in `sr_augment.images` and the README.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from sr_augment.cache import SRCache
from sr_augment.cache.codec import decode
from sr_augment.cli import main
from sr_augment.engines import BicubicEngine
from sr_augment.images import ImageDecodeError, ImageShapeError, load_image


def _rgb(seed=0, h=12, w=10):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _save(image: Image.Image, **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, **kw)
    return buffer.getvalue()


def _exif_rotated_jpeg() -> bytes:
    pixels = np.zeros((16, 48, 3), np.uint8)
    pixels[:, :24] = 255  # left half white as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    return _save(Image.fromarray(pixels), format="JPEG", quality=95, exif=exif)


def _truncated_jpeg() -> bytes:
    return _save(Image.fromarray(_rgb(1, 64, 64)), format="JPEG", quality=90)[:300]


def _check_exif(out):  # displayed upright: 48 tall, 16 wide, the white half on top
    return out.shape == (48, 16, 3) and out[:20].mean() > 200 and out[28:].mean() < 50


# name -> (file bytes, check of the decoded array | error text expected in the message)
GOOD = {
    "palette.gif": (lambda: _save(Image.fromarray(_rgb(2)).convert("P"), format="GIF"),
                    lambda out: out.shape == (12, 10, 3)),
    "rgba.png": (lambda: _save(Image.fromarray(np.dstack([_rgb(3), np.full((12, 10), 7, np.uint8)]), "RGBA"), format="PNG"),
                 lambda out: np.array_equal(out, _rgb(3))),  # alpha dropped, colour kept as stored
    "deep16.png": (lambda: _save(Image.fromarray(np.full((4, 5), 257 * 200, np.uint16)), format="PNG"),
                   lambda out: out.shape == (4, 5, 3) and np.all(out == 200)),  # 16 -> 8 bits by /257
    "gray.png": (lambda: _save(Image.fromarray(np.full((6, 7), 90, np.uint8), "L"), format="PNG"),
                 lambda out: out.shape == (6, 7, 3) and np.all(out == 90)),
    "cmyk.jpg": (lambda: _save(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), format="JPEG", quality=95),
                 lambda out: out.shape == (8, 8, 3) and out[..., 0].min() > 230 and out[..., 1:].max() < 30),  # red
    "exif-rotated.jpg": (_exif_rotated_jpeg, _check_exif),
    "one-pixel.png": (lambda: _save(Image.new("RGB", (1, 1), (1, 2, 3)), format="PNG"),
                      lambda out: out.tolist() == [[[1, 2, 3]]]),
}
BAD = {
    "zero-bytes.png": (lambda: b"", "empty file"),
    "truncated.jpg": (_truncated_jpeg, "cannot decode"),
    "text-named.png": (lambda: b"name,label\ncat,1\n", "not an image"),
    "bomb.png": (lambda: _save(Image.new("RGB", (64, 64)), format="PNG"), "decompression bomb"),
}


@pytest.fixture
def small_bomb_limit(monkeypatch):
    """64x64 = 4096 pixels counts as a bomb (over 2 x 1000), as a 180-megapixel file does by default."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)


@pytest.fixture
def hostile_folder(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    for name, (make, _) in {**GOOD, **BAD}.items():
        (folder / name).write_bytes(make())
    return folder


@pytest.mark.parametrize("name", sorted(GOOD))
def test_each_odd_but_valid_file_gets_its_documented_conversion(hostile_folder, name):
    out = load_image(hostile_folder / name)
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3 and out.flags.c_contiguous
    assert GOOD[name][1](out)


@pytest.mark.parametrize("name", sorted(BAD))
def test_each_bad_file_is_an_error_naming_it(hostile_folder, name, small_bomb_limit):
    with pytest.raises(ImageDecodeError) as info:
        load_image(hostile_folder / name)
    assert str(hostile_folder / name) in str(info.value) and BAD[name][1] in str(info.value)


def test_images_under_the_bomb_limit_pass(hostile_folder, small_bomb_limit):
    Image.MAX_IMAGE_PIXELS = 3000  # 4096 pixels: between 1x and 2x the limit (the fixture restores it)
    with pytest.warns(Image.DecompressionBombWarning):  # Pillow warns, the image is used
        assert load_image(hostile_folder / "bomb.png").shape == (64, 64, 3)


def test_warm_over_every_hostile_file_reports_the_bad_ones_and_caches_the_rest(hostile_folder, cache_dir, capsys,
                                                                               small_bomb_limit):
    code = main(["warm", str(hostile_folder), "--engine", "bicubic", "--cache-dir", str(cache_dir),
                 "--batch-size", "3", "--json", "--no-progress", "--loader", "exif"])  # load_image's decode, .gif too
    captured = capsys.readouterr()
    report = json.loads(captured.out.strip().splitlines()[-1])
    assert code == 1  # something failed: a script can tell
    assert report["generated"] == len(GOOD) and report["failed"] == len(BAD)
    assert sorted(f["path"] for f in report["failures"]) == sorted(str(hostile_folder / n) for n in BAD)
    for name, (_, reason) in BAD.items():
        assert f"failed: {hostile_folder / name}: " in captured.err and reason in captured.err
    engine = BicubicEngine()
    with SRCache(cache_dir) as cache:
        for name in GOOD:  # each good file's entry holds its SR image, 4x its normalised size
            image = load_image(hostile_folder / name)
            record = cache.record(cache.key(image, engine))
            assert decode(record).shape == (image.shape[0] * 4, image.shape[1] * 4, 3)
        assert len(cache) == len(GOOD) and cache.stats().damaged == 0


def test_bad_tensors_through_both_adapters_leave_the_cache_as_it_was(cache_dir):
    torch = pytest.importorskip("torch")
    tf = pytest.importorskip("tensorflow")
    from sr_augment.keras_layers import SRAugment as KerasSRAugment
    from sr_augment.torch_transforms import SRAugment as TorchSRAugment

    good = _rgb(5, 8, 8)
    transform = TorchSRAugment(engine="bicubic", scale=2, cache_dir=cache_dir)
    transform(torch.from_numpy(good).permute(2, 0, 1))
    with SRCache(cache_dir) as cache:
        before = {key: cache.record(key) for key in cache.keys()}
    assert len(before) == 1
    bad_tensors = [torch.full((3, 4, 4), 2.0), torch.full((3, 4, 4), -0.5), torch.full((3, 4, 4), float("nan")),
                   torch.zeros(5, 8, 8, dtype=torch.uint8), torch.zeros(1, 1, 3, 8, 8), torch.zeros(8, 8)]
    for bad in bad_tensors:
        with pytest.raises((ImageDecodeError, ImageShapeError)):  # bad values, bad shapes
            transform(bad)
    layer = KerasSRAugment(engine="bicubic", scale=2, cache_dir=cache_dir)
    bad_arrays = [np.full((6, 5, 3), np.nan, np.float32), np.full((6, 5, 3), 1000.0, np.float32),
                  np.zeros((6, 5, 2), np.uint8), np.zeros((6, 5), np.uint8), np.zeros((6, 5, 3), np.int32)]
    for bad in bad_arrays:
        with pytest.raises((ValueError, TypeError)):
            layer(tf.constant(bad))
    with SRCache(cache_dir) as cache:
        after = {key: cache.record(key) for key in cache.keys()}
        assert after == before and cache.stats().damaged == 0
        assert np.array_equal(decode(after[cache.key(good, BicubicEngine(2))]), BicubicEngine(2).upscale([good], [0])[0])


def test_a_result_over_the_bomb_limit_is_stored_and_read_back_not_taken_for_damage(cache_dir, small_bomb_limit):
    image = _rgb(6, 20, 20)  # its 80x80 result (6400 px) is over 2 x 1000
    with SRCache(cache_dir) as cache:
        made = cache.get_or_create(image, BicubicEngine())
        assert np.array_equal(cache.get(image, BicubicEngine()), made)
        assert cache.stats().damaged == 0


@pytest.mark.slow  # the built-in diffusion model
def test_tiny_images_go_through_the_builtin_diffusion_engine():
    pytest.importorskip("diffusers")
    from sr_augment.engines import get_engine

    engine = get_engine("sr4", steps=2)
    one, strip = engine.upscale([_rgb(7, 1, 1), _rgb(8, 1, 7)], [0, 1])
    assert one.shape == (4, 4, 3) and strip.shape == (4, 28, 3)
    # a 1x1 input is flat: its SR image stays close to that colour (mirror padding, not zeros)
    assert np.abs(one.astype(int) - _rgb(7, 1, 1).astype(int)).max() <= 16
