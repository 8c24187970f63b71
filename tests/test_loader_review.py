"""`sr-augment warm` against the real training loaders, on the cases a review found: folder links, resize
overshoot of Keras' bicubic / Lanczos interpolation, the usage errors of `warm`'s numeric options, the
`--engine` help and the image size a `CacheMiss` names."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from sr_augment.cli.main import main
from sr_augment.images import iter_image_files
from test_loader_keys import SCALE, _warm  # warm through the CLI at the scale both files test


def _noise_png(path, seed: int, size=(12, 14)) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)


# -- folder links ----------------------------------------------------------------------------------------


def test_warm_follows_a_linked_class_folder_as_imagefolder_does(tmp_path, capsys):
    """data/dog -> another disk's folder: ImageFolder (os.walk followlinks=True) lists its files, so warm must."""
    from torchvision import datasets

    from sr_augment.torch_transforms import SRAugment

    root, elsewhere = tmp_path / "data", tmp_path / "other_disk" / "dogs"
    (root / "cat").mkdir(parents=True)
    elsewhere.mkdir(parents=True)
    for i in range(2):
        _noise_png(root / "cat" / f"{i}.png", i)
        _noise_png(elsewhere / f"{i}.png", 10 + i)
    os.symlink(elsewhere, root / "dog", target_is_directory=True)
    report = _warm(root, tmp_path / "cache", capsys)
    sr = SRAugment(engine="bicubic", scale=SCALE, on_miss="error", cache_dir=str(tmp_path / "cache"))
    data = datasets.ImageFolder(str(root), transform=sr)
    assert report["images"] == len(data) == 4 and report["failed"] == 0, report
    for image, _ in data:  # on_miss="error": every sample, the linked dogs included, hits
        assert image.size == (14 * SCALE, 12 * SCALE)


def test_a_folder_reached_twice_or_through_a_link_loop_is_listed_once(tmp_path):
    """A link back to a parent (a loop) ends; two links to one folder list its files once, under the first
    path in sorted order."""
    root = tmp_path / "data"
    (root / "a").mkdir(parents=True)
    _noise_png(root / "a" / "1.png", 0)
    os.symlink(root, root / "a" / "loop", target_is_directory=True)  # data/a/loop -> data
    os.symlink(root / "a", root / "b", target_is_directory=True)  # data/b -> data/a
    os.symlink(tmp_path / "missing", root / "dangling", target_is_directory=True)
    found = [p.relative_to(root).as_posix() for p in iter_image_files([root])]
    assert found == ["a/1.png"]
    # the link itself named as the root: its folder's files, by the path given
    assert [p.relative_to(root).as_posix() for p in iter_image_files([root / "b"])] == ["b/1.png"]


# -- Keras resize overshoot ----------------------------------------------------------------------------------


def _photo_folder(root, size=96) -> None:
    """Three of scikit-image's photos, shrunk, as JPEGs in root/c (the sharp edges a bicubic resize overshoots)."""
    from conftest import photo

    (root / "c").mkdir(parents=True)
    for name in ("astronaut", "coffee", "rocket"):
        Image.fromarray(photo(name)).resize((size, size), Image.BILINEAR).save(root / "c" / f"{name}.jpg", quality=95)


@pytest.mark.slow  # TensorFlow's decode and resize, through the CLI and the layer
@pytest.mark.parametrize("interpolation", ["bicubic", "lanczos3"])
def test_keras_bicubic_and_lanczos_overshoot_is_clipped_identically_by_warm_and_the_layer(tmp_path, capsys,
                                                                                         interpolation):
    keras = pytest.importorskip("keras")
    pytest.importorskip("tensorflow")
    from sr_augment.keras_layers import SRAugment

    root = tmp_path / "photos"
    _photo_folder(root)
    report = _warm(root, tmp_path / "cache", capsys, "--loader", "keras", "--resize", "40x40", "--interpolation",
                   interpolation)
    assert report["images"] == 3 and report["failed"] == 0, report
    data = keras.utils.image_dataset_from_directory(str(root), labels=None, image_size=(40, 40), batch_size=None,
                                                    shuffle=False, interpolation=interpolation)
    images = [np.asarray(image) for image in data]
    assert min(image.min() for image in images) < 0 and max(image.max() for image in images) > 255  # it overshoots
    layer = SRAugment(engine="bicubic", scale=SCALE, on_miss="error", cache_dir=str(tmp_path / "cache"))
    for image in images:  # on_miss="error": the layer keys each overshooting image as the warm did
        out = np.asarray(layer(image[None], training=True))
        assert out.shape == (1, 80, 80, 3) and out.min() >= 0 and out.max() <= 255


def test_resize_overshoot_is_clipped_but_values_far_outside_value_range_stay_an_error():
    pytest.importorskip("keras")
    tf = pytest.importorskip("tensorflow")
    from sr_augment.keras_layers.pixels import HALF_TOLERANCE, to_uint8, unit_range_suspected

    # the worst overshoot of Keras' interpolations: Lanczos 5 of a one-pixel checkerboard (about 1.04 widths out)
    board = np.repeat((np.indices((16, 16)).sum(0) % 2 * 255.0)[..., None], 3, -1).astype("float32")
    for interpolation in ("bicubic", "lanczos3", "lanczos5", "mitchellcubic"):
        resized = tf.image.resize(board, (33, 33), method=interpolation).numpy()
        assert resized.min() < -1 and resized.max() > 256
        np.testing.assert_array_equal(to_uint8(resized[None], (0, 255))[0],
                                      np.floor(np.clip(resized, 0, 255) + 0.5 + HALF_TOLERANCE))  # halves up
        unit = (resized / 255)[None]  # the same overshoot in a (0, 1) pipeline: the same pixels
        np.testing.assert_array_equal(to_uint8(unit, (0, 1)), to_uint8(resized[None], (0, 255)))
    # the real mistakes: [0, 255] images with value_range=(0, 1), 16-bit values with (0, 255)
    with pytest.raises(ValueError, match=r"outside value_range=\[0, 1\].*value_range=\(0, 255\)") as exc:
        to_uint8(board[None], (0, 1))
    assert "resize" in str(exc.value)
    with pytest.raises(ValueError, match=r"outside value_range=\[0, 255\].*value_range=\(0, 65535\)") as exc:
        to_uint8((board * 257)[None], (0, 255))
    assert "[0, 1]" not in str(exc.value)  # not the (0, 1) hint: that mistake is a warning, below
    # [0, 1] images with the default (0, 255) lie inside the range: the value-range warning's case
    assert unit_range_suspected((board / 255)[None], (0, 255)) == (0.0, 1.0)


# -- warm's command line -------------------------------------------------------------------------------------


@pytest.mark.parametrize("option, value", [("--variants", "0"), ("--variants", "-1"), ("--batch-size", "0"),
                                           ("--actors", "0"), ("--scale", "0"), ("--steps", "0"),
                                           ("--batch-size", "two")])
def test_warms_whole_number_options_below_one_are_a_usage_error_not_a_traceback(tmp_path, capsys, option, value):
    _noise_png(tmp_path / "a.png", 0)
    with pytest.raises(SystemExit) as exc:
        main(["warm", str(tmp_path / "a.png"), "--engine", "bicubic", "--cache-dir", str(tmp_path / "cache"),
              "--no-progress", option, value])
    assert exc.value.code == 2  # argparse's usage error
    err = capsys.readouterr().err
    assert f"argument {option}" in err and ">= 1" in err, err
    assert not (tmp_path / "cache").exists()


def test_the_engine_help_lists_every_engine_of_the_registry(capsys, monkeypatch):
    from sr_augment.engines.kinds import REGISTRY

    monkeypatch.setenv("COLUMNS", "2000")  # one line per option: no name broken at a hyphen
    for command in ("warm", "eval-sr"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        (line,) = [line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("--engine")]
        missing = [name for name in REGISTRY.names() if name not in line]
        assert not missing and "realesrgan-anime" in line, (missing, line)
        assert all(kind.accepts in line for kind in REGISTRY.listing() if kind.accepts), line


def test_a_cache_miss_gives_the_size_as_height_x_width_as_resize_takes_it(tmp_path):
    from sr_augment.augment import AugmentCore
    from sr_augment.cache import CacheMiss

    core = AugmentCore(engine="bicubic", scale=SCALE, on_miss="error", cache_dir=str(tmp_path / "cache"))
    with pytest.raises(CacheMiss) as exc:
        core.apply(np.zeros((16, 20, 3), np.uint8), 0)  # 16 high, 20 wide
    message = str(exc.value)
    assert "16x20 (height x width" in message and "20x16" not in message, message


# -- loaders that turn photos upright ------------------------------------------------------------------------


def _exif_transpose_loader(path):
    """A common custom loader: photos turned upright by their EXIF orientation, then Pillow's RGB."""
    from PIL import ImageOps

    with open(path, "rb") as f:
        return ImageOps.exif_transpose(Image.open(f)).convert("RGB")


def test_the_exif_transpose_loader_warms_what_an_exif_transpose_pipeline_gives_sraugment(tmp_path, capsys):
    """`exif` is `sr_augment.load_image` (16-bit scaled / 257); a pipeline that calls
    `ImageOps.exif_transpose(...).convert("RGB")` clips 16-bit instead: `--loader exif-transpose` matches it."""
    from torchvision import datasets
    from torchvision.transforms import v2

    from sr_augment.images import load_image
    from sr_augment.torch_transforms import SRAugment
    from test_loader_keys import _make_files

    root = tmp_path / "data"
    names = _make_files(root / "class_a")
    report = _warm(root, tmp_path / "cache", capsys, "--loader", "exif-transpose", "--resize", "24")
    sr = SRAugment(engine="bicubic", scale=SCALE, on_miss="error", cache_dir=str(tmp_path / "cache"))
    data = datasets.ImageFolder(str(root), loader=_exif_transpose_loader, transform=v2.Compose([v2.Resize(24), sr]))
    assert report["images"] == len(data) == len(names) and report["failed"] == 0, report
    for _ in data:  # on_miss="error": every file hits, the turned phone photo and the 16-bit PNG included
        pass
    phone, grey16 = root / "class_a" / "phone.jpg", root / "class_a" / "grey16.png"
    assert np.asarray(_exif_transpose_loader(phone)).shape == (44, 30, 3)  # turned upright
    assert not np.array_equal(np.asarray(_exif_transpose_loader(grey16)), load_image(grey16))  # clipped, not / 257
