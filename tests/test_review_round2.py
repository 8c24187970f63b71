"""Cases a second review found: float pixels near a half after `Rescaling(1 / 255)`, the loaders a
`CacheMiss` names, `steps` given to the bicubic engine, and a folder reached through several path arguments."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from sr_augment.cli.main import main

SCALE = 2


def _warm(paths, cache_dir, capsys, *options) -> dict:
    code = main(["warm", *map(str, paths), "--engine", "bicubic", "--scale", str(SCALE), "--cache-dir",
                 str(cache_dir), "--no-progress", "--json", *options])
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(out.out.strip().splitlines()[-1])


def _noise_png(path, seed: int, size=(12, 14)) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)


# -- float pixels near a half -------------------------------------------------------------------------------


def test_a_half_keys_the_same_before_and_after_a_float32_round_trip_through_unit_range():
    """A bilinear resize makes exact halves (126.5); x (1/255) in float32 and back gives 126.50000x or
    126.49999x: all key as the same uint8."""
    from sr_augment.keras_layers.pixels import to_uint8

    halves = np.arange(0.5, 255, 1.0, dtype=np.float32).reshape(1, 1, -1, 1).repeat(3, -1)
    unit = halves * np.float32(1 / 255)  # what Rescaling(1 / 255) gives the layer
    direct = to_uint8(halves, (0, 255))
    assert np.array_equal(direct, to_uint8(unit, (0, 1)))
    assert np.array_equal(direct, to_uint8(unit.astype(np.float64), (0, 1)))
    assert np.array_equal(direct[0, 0, :, 0], np.arange(1, 256))  # halves round up
    assert np.array_equal(to_uint8(np.float32([126.4, 126.6, -3, 300]).reshape(1, 1, 4, 1).repeat(3, -1), (0, 255))[0, 0, :, 0],
                          [126, 127, 0, 255])


@pytest.mark.slow  # TensorFlow's decode and resize, through the CLI and the layer
def test_a_keras_warm_is_hit_by_the_layer_after_rescaling_with_value_range_0_1(tmp_path, capsys):
    keras = pytest.importorskip("keras")
    pytest.importorskip("tensorflow")
    from sr_augment.keras_layers import SRAugment

    root = tmp_path / "data" / "c"
    root.mkdir(parents=True)
    for i in range(6):
        _noise_png(root / f"{i}.png", i, size=(21 + i, 27 - i))
    report = _warm([tmp_path / "data"], tmp_path / "cache", capsys, "--loader", "keras", "--resize", "16x20",
                   "--interpolation", "bilinear")
    assert report["images"] == 6 and report["failed"] == 0, report
    data = keras.utils.image_dataset_from_directory(str(tmp_path / "data"), labels=None, image_size=(16, 20),
                                                    batch_size=None, shuffle=False, interpolation="bilinear")
    images = [np.asarray(image) for image in data]
    assert any(np.any(image % 1 == 0.5) for image in images)  # the resize makes exact halves
    rescale = keras.layers.Rescaling(1 / 255)
    layer = SRAugment(engine="bicubic", scale=SCALE, on_miss="error", cache_dir=str(tmp_path / "cache"),
                      value_range=(0, 1))
    for image in images:  # on_miss="error": every image hits after the float32 round trip
        out = np.asarray(layer(rescale(image[None]), training=True))
        assert out.shape == (1, 32, 40, 3) and 0 <= out.min() and out.max() <= 1


# -- the CacheMiss hint ---------------------------------------------------------------------------------------


def test_a_cache_miss_names_every_loader_of_warm(tmp_path):
    from sr_augment.augment import AugmentCore
    from sr_augment.cache import CacheMiss
    from sr_augment.loaders import LOADERS

    core = AugmentCore(engine="bicubic", scale=SCALE, on_miss="error", cache_dir=str(tmp_path / "cache"))
    with pytest.raises(CacheMiss) as exc:
        core.apply(np.zeros((8, 8, 3), np.uint8), 0)
    assert f"--loader {'|'.join(LOADERS)}`" in str(exc.value), str(exc.value)


# -- steps and the bicubic engine -------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", ["x", -1, 2.5, 5])
def test_the_bicubic_engine_refuses_steps_as_the_other_non_diffusion_engines_do(tmp_path, steps):
    from sr_augment.augment import AugmentCore
    from sr_augment.engines import get_engine
    from sr_augment.errors import EngineParameterError

    for make in (lambda: AugmentCore(engine="bicubic", steps=steps, cache_dir=str(tmp_path / "cache")),
                 lambda: get_engine("bicubic", steps=steps)):
        with pytest.raises(EngineParameterError, match="not a diffusion model: steps does not apply"):
            make()
    AugmentCore(engine="bicubic", steps=None, cache_dir=str(tmp_path / "cache"))  # unset is fine


def test_warm_with_the_bicubic_engine_refuses_steps(tmp_path):
    _noise_png(tmp_path / "a.png", 0)
    with pytest.raises(SystemExit) as exc:
        main(["warm", str(tmp_path / "a.png"), "--engine", "bicubic", "--steps", "5", "--dry-run", "--cache-dir",
              str(tmp_path / "cache")])
    assert "engine 'bicubic': not a diffusion model: steps does not apply" in str(exc.value.code)


# -- one folder through several path arguments -----------------------------------------------------------------


def test_a_folder_named_through_several_path_arguments_is_warmed_and_counted_once(tmp_path, capsys):
    from sr_augment.images import iter_image_files

    real = tmp_path / "real"
    real.mkdir()
    for i in range(2):
        _noise_png(real / f"{i}.png", i)
    for name in ("l1", "l2"):
        os.symlink(real, tmp_path / name, target_is_directory=True)
    paths = [tmp_path / "l1", tmp_path / "l2", real, real / "0.png"]
    assert [p.relative_to(tmp_path).as_posix() for p in iter_image_files(paths)] == ["l1/0.png", "l1/1.png"]
    report = _warm(paths, tmp_path / "cache", capsys)
    assert (report["images"], report["generated"], report["cached"]) == (2, 2, 0), report
    report = _warm(paths, tmp_path / "cache", capsys)
    assert (report["images"], report["generated"], report["cached"]) == (2, 0, 2), report
