"""Seeded input degradations (`degrade=`): real variants from a deterministic engine.

Variant 0 is the clean result; variants > 0 differ from it and from each other; the same (image, variant,
settings) gives the same pixels in every process; keys change only when `degrade` is on; the setting
travels through the CLI's warm, both adapters, the engine service, accelerate's engine and Ray's actors.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import photo, write_photos
from sr_augment import DegradeSettingsError, DeterministicEngineWarning
from sr_augment.augment import AugmentCore
from sr_augment.cache import SRCache
from sr_augment.engines import BicubicEngine, get_engine
from sr_augment.engines.degrade import (
    PRESETS,
    DegradedEngine,
    check_degrade,
    degrade_config,
    degrade_input,
    parse_degrade_option,
    undegraded,
)
from sr_augment.images import load_image, resize

TESTS = Path(__file__).resolve().parent


def _crop(name: str, size: int = 48) -> np.ndarray:
    image = photo(name)
    top, left = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
    return np.ascontiguousarray(image[top:top + size, left:left + size])


def _variants(core: AugmentCore, image: np.ndarray, count: int) -> list[np.ndarray]:
    return core.apply_many([image] * count, {"augment": [True] * count, "variant": list(range(count))})


def _mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


# ---------------------------------------------------------------------------------------------------------
# settings: presets, dicts, clear refusals
# ---------------------------------------------------------------------------------------------------------
def test_a_preset_and_its_dict_are_the_same_settings_and_survive_json():
    for name, settings in PRESETS.items():
        canonical = check_degrade(name)
        assert check_degrade(settings) == canonical
        assert check_degrade(json.loads(json.dumps(canonical))) == canonical
    assert degrade_config("light") == "light" and degrade_config(None) is None
    assert check_degrade({"jpeg": {"quality": (50, 90)}}) == {"jpeg": {"full_chroma": 0.0, "p": 1.0,
                                                                        "quality": [50, 90]}}
    assert parse_degrade_option('{"noise": {"sigma": 4}}') == {"noise": {"gray": 0.0, "p": 1.0, "poisson": 0.0,
                                                                         "sigma": [4.0, 4.0]}}
    assert parse_degrade_option("realistic") == "realistic"


def test_degrade_with_one_variant_warns_that_it_changes_nothing(tmp_path):
    from sr_augment.errors import SRAugmentWarning

    with pytest.warns(SRAugmentWarning, match="variants=1 changes nothing"):
        AugmentCore(engine="bicubic", degrade="light", variants=1, cache_dir=tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        AugmentCore(engine="bicubic", degrade="light", variants=2, cache_dir=tmp_path)


def test_numpy_numbers_are_numbers_and_give_the_same_settings():
    """The review found `np.float32(3)` refused as "expected a number" (settings computed with numpy)."""
    given = {"noise": {"sigma": np.float32(3), "p": np.float64(0.5)}, "jpeg": {"quality": np.array([80, 90])}}
    canonical = check_degrade(given)
    assert canonical == check_degrade({"noise": {"sigma": 3, "p": 0.5}, "jpeg": {"quality": [80, 90]}})
    assert json.loads(json.dumps(canonical)) == canonical  # plain floats and ints, not numpy's
    with pytest.raises(DegradeSettingsError, match="noise.sigma"):
        check_degrade({"noise": {"sigma": np.bool_(True)}})


def test_light_keeps_full_colour_resolution_so_a_16px_input_moves_less_than_with_4_2_0():
    """The review measured `light` (JPEG 4:2:0) changing 16-24 px inputs by 6-10 grey levels; JPEG at
    full chroma moves them clearly less at the same quality."""
    assert check_degrade("light")["jpeg"]["full_chroma"] == 1.0
    tiny = [resize(photo(name), (16, 16)) for name in ("astronaut", "chelsea", "coffee")]
    half = check_degrade({"jpeg": {"quality": [80, 95], "full_chroma": 0.0}})
    full = check_degrade({"jpeg": {"quality": [80, 95], "full_chroma": 1.0}})

    def change(settings):
        return np.mean([_mad(degrade_input(im, "upscale", 4, settings, seed), im) for im in tiny for seed in (1, 2, 3)])

    assert change(full) < 0.9 * change(half)
    light = np.mean([_mad(degrade_input(im, "upscale", 4, check_degrade("light"), seed), im)
                     for im in tiny for seed in (1, 2, 3)])
    assert 0 < light < 7.0  # was 8.2 with 4:2:0 and quality 70-95


@pytest.mark.parametrize("value, words", [
    ("ligth", ["unknown preset 'ligth'", "did you mean 'light'"]),
    ({"blurr": {}}, ["unknown operation 'blurr'", "did you mean 'blur'", "jpeg"]),
    ({"jpeg": {"qualty": [50, 90]}}, ["jpeg", "unknown field 'qualty'", "did you mean 'quality'"]),
    ({"jpeg": {"quality": [90, 50]}}, ["jpeg.quality", "low <= high", "[90, 50]"]),
    ({"jpeg": {"quality": [0, 50]}}, ["jpeg.quality", "from 1"]),
    ({"jpeg": {"quality": [50.5, 60]}}, ["jpeg.quality", "whole numbers"]),
    ({"noise": {"p": 1.5}}, ["noise.p", "probability", "1.5"]),
    ({"noise": {"sigma": "big"}}, ["noise.sigma", "'big'"]),
    ({"blur": {"sigma": [0, 1]}}, ["blur.sigma", "above 0"]),
    ({"blur": {"sigma": [float("nan"), 1]}}, ["blur.sigma", "finite"]),
    ({"downscale": {"kernels": ["bicubc"]}}, ["downscale.kernels", "did you mean 'bicubic'"]),
    ({}, ["empty dict"]),
    (3, ["preset name", "int"]),
])
def test_bad_settings_are_refused_naming_the_field_and_the_problem(value, words, tmp_path):
    with pytest.raises(DegradeSettingsError) as caught:
        check_degrade(value)
    for word in words:
        assert word in str(caught.value)
    with pytest.raises(DegradeSettingsError):  # at the adapter's construction, before anything runs
        AugmentCore(engine="bicubic", variants=2, cache_dir=tmp_path, degrade=value)


def test_the_cli_refuses_bad_degrade_settings_before_anything_runs(tmp_path, capsys):
    from sr_augment.cli import main

    with pytest.raises(SystemExit):
        main(["warm", str(tmp_path), "--engine", "bicubic", "--degrade", "ligth", "--cache-dir", str(tmp_path / "c")])
    assert "did you mean 'light'" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


# ---------------------------------------------------------------------------------------------------------
# keys: unchanged when degrade is off, different when it is on
# ---------------------------------------------------------------------------------------------------------
def test_keys_are_unchanged_without_degrade_and_change_with_it(tmp_path):
    image = _crop("astronaut")
    cache = SRCache(tmp_path / "cache")
    plain = AugmentCore(engine="bicubic", cache_dir=tmp_path / "cache")
    assert plain.degrade is None and type(plain.engine) is BicubicEngine  # off: the engine itself, no wrapper
    clean_key = cache.key(image, BicubicEngine(4), "upscale", 1)
    assert cache.key(image, plain.engine, "upscale", 1) == clean_key
    keys = {name: cache.key(image, AugmentCore(engine="bicubic", variants=2, cache_dir=tmp_path / "cache",
                                               degrade=name).engine, "upscale", 1) for name in PRESETS}
    assert clean_key not in keys.values() and len(set(keys.values())) == len(PRESETS)
    expanded = AugmentCore(engine="bicubic", variants=2, cache_dir=tmp_path / "cache", degrade=PRESETS["light"])
    assert cache.key(image, expanded.engine, "upscale", 1) == keys["light"]  # the settings, not how they were named
    cache.close()


# ---------------------------------------------------------------------------------------------------------
# variant 0 is the clean result; the others differ from it and from each other
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["upscale", "resynthesize"])
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_variant_0_is_clean_and_the_others_are_distinct(mode, preset, tmp_path):
    image = _crop("coffee", 48 if mode == "upscale" else 96)
    clean = AugmentCore(engine="bicubic", mode=mode, cache_dir=tmp_path / "clean").apply(image, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeterministicEngineWarning)  # degraded variants differ: no warning
        core = AugmentCore(engine="bicubic", mode=mode, variants=4, cache_dir=tmp_path / "deg", degrade=preset)
    results = _variants(core, image, 4)
    np.testing.assert_array_equal(results[0], clean)
    for i in range(4):
        for j in range(i + 1, 4):
            assert _mad(results[i], results[j]) > 0.5, (i, j)
    assert all(r.shape == clean.shape for r in results)


def test_a_deterministic_engine_without_degrade_still_warns(tmp_path):
    with pytest.warns(DeterministicEngineWarning):
        AugmentCore(engine="bicubic", variants=2, cache_dir=tmp_path)


def test_a_degraded_input_is_the_same_whatever_the_batch_and_the_call(tmp_path):
    engine = DegradedEngine(BicubicEngine(4), "realistic")
    image = _crop("chelsea", 64)
    first = engine.prepare_input(image, "resynthesize", seed=123, variant=1)
    assert first.shape == (16, 16, 3)
    np.testing.assert_array_equal(engine.prepare_input(image, "resynthesize", seed=123, variant=1), first)
    assert not np.array_equal(engine.prepare_input(image, "resynthesize", seed=124, variant=1), first)
    cache = SRCache(tmp_path / "cache")  # one image alone or in a batch of others: the same result
    other = _crop("astronaut", 64)
    alone = cache.get_or_create_many([image], engine, "resynthesize", [2])[0]
    cache.clear()
    batch = cache.get_or_create_many([other, image, other], engine, "resynthesize", [1, 2, 2])
    np.testing.assert_array_equal(batch[1], alone)
    cache.close()


_SUBPROCESS = """
import hashlib, sys
import numpy as np
from skimage import data
from sr_augment.engines.degrade import check_degrade, degrade_input
image = np.ascontiguousarray(data.chelsea()[50:114, 100:164])
digest = hashlib.blake2b()
for mode in ("upscale", "resynthesize"):
    for preset in ("light", "realistic"):
        for seed in (1, 2, 3):
            digest.update(degrade_input(image, mode, 4, check_degrade(preset), seed).tobytes())
print(digest.hexdigest())
"""


def test_the_same_degraded_inputs_in_another_process(tmp_path):
    """One script, run in this process and in a fresh interpreter with one thread: the same digest."""
    import contextlib
    import io

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(_SUBPROCESS, {})
    here = printed.getvalue().strip()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    there = subprocess.run([sys.executable, "-I", "-c", _SUBPROCESS], cwd=tmp_path, env=env, capture_output=True,
                           text=True, check=True).stdout.strip()
    assert len(here) == 128 and here == there


# ---------------------------------------------------------------------------------------------------------
# the setting travels: CLI warm -> adapters, the engine service, accelerate, Ray
# ---------------------------------------------------------------------------------------------------------
def _warm_cli(folder: Path, cache_dir: Path, *extra: str) -> dict:
    from sr_augment.cli import main

    code = main(["warm", str(folder), "--variants", "3", "--scale", "2", "--degrade", "light",
                 "--cache-dir", str(cache_dir), "--json", "--no-progress", *extra])
    assert code == 0
    return code


def test_cli_warm_with_degrade_then_the_torch_adapter_hits_every_variant(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    from sr_augment.torch_transforms import SRAugment

    folder = write_photos(tmp_path / "photos", ("astronaut", "coffee"), max_side=24)
    _warm_cli(folder, tmp_path / "cache", "--engine", "bicubic")
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["generated"] == 6
    transform = SRAugment(engine="bicubic", scale=2, variants=3, degrade="light", on_miss="error",
                          cache_dir=tmp_path / "cache", seed=0)
    images = [load_image(path) for path in sorted(folder.iterdir())]
    results = [_variants(transform.core, image, 3) for image in images]  # on_miss="error": all hit
    for image, per_image in zip(images, results):
        assert _mad(per_image[0], per_image[1]) > 0.5 and _mad(per_image[1], per_image[2]) > 0.5
        np.testing.assert_array_equal(per_image[0], BicubicEngine(2).upscale([image], [0])[0])  # variant 0: clean
    for image in images:  # the transform itself, random variants: every draw hits
        tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        for _ in range(4):
            assert tuple(transform(tensor).shape) == (3, image.shape[0] * 2, image.shape[1] * 2)
    plain = SRAugment(engine="bicubic", scale=2, on_miss="error", cache_dir=tmp_path / "cache")
    with pytest.raises(LookupError):  # the clean engine's keys were not warmed: degrade is part of the key
        plain(torch.from_numpy(np.ascontiguousarray(images[0].transpose(2, 0, 1))))


@pytest.mark.slow  # imports TensorFlow
def test_cli_warm_with_degrade_then_the_keras_layer_hits_every_variant(tmp_path, capsys):
    pytest.importorskip("keras")
    from sr_augment.keras_layers import SRAugment

    folder = write_photos(tmp_path / "photos", ("astronaut", "coffee"), max_side=24)
    _warm_cli(folder, tmp_path / "cache", "--engine", "bicubic")
    layer = SRAugment(engine="bicubic", scale=2, variants=3, degrade="light", on_miss="error",
                      cache_dir=tmp_path / "cache", seed=0)
    clone = SRAugment.from_config(json.loads(json.dumps(layer.get_config())))
    assert clone.core.config() == layer.core.config() and clone.core.degrade == "light"
    for image in [load_image(path) for path in sorted(folder.iterdir())]:
        for _ in range(3):  # random variants through the layer: every draw hits
            out = np.asarray(clone(image[None]))
            assert out.shape == (1, image.shape[0] * 2, image.shape[1] * 2, 3)
        assert len(_variants(clone.core, image, 3)) == 3  # on_miss="error": every variant hits


@pytest.mark.slow  # starts an engine service
def test_through_the_engine_service_degradation_runs_in_the_caller(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setattr("sr_augment.service.common.DEFAULT_LINGER", 1.0)
    from faults import SlowEngine

    image = _crop("astronaut", 24)
    remote = AugmentCore(engine="faults:SlowEngine", variants=3, degrade="realistic", cache_dir=tmp_path / "a",
                         delay=0.0)
    inline = AugmentCore(engine=SlowEngine(delay=0.0), variants=3, degrade="realistic", cache_dir=tmp_path / "b")
    assert "degrade" not in remote.engine.inner.config["params"]  # one service for clean and degraded callers
    through_service = _variants(remote, image, 3)
    for got, expected in zip(through_service, _variants(inline, image, 3)):
        np.testing.assert_array_equal(got, expected)
    assert _mad(through_service[0], through_service[1]) > 0.5
    remote.engine.close()

    # warm with --degrade from the CLI: the identity recorded is the service engine's, so the adapter
    # then hits every variant without ever starting the service
    folder = write_photos(tmp_path / "photos", ("coffee",), max_side=24)
    _warm_cli(folder, tmp_path / "warmed", "--engine", "faults:SlowEngine", "--set", "delay=0.0")
    capsys.readouterr()
    adapter = AugmentCore(engine="faults:SlowEngine", scale=2, variants=3, degrade="light", on_miss="error",
                          cache_dir=tmp_path / "warmed", delay=0.0)
    assert len(_variants(adapter, load_image(folder / "coffee.png"), 3)) == 3
    assert adapter.engine.inner._conn is None  # never connected: no service started


def test_accelerate_builds_the_degraded_engine_and_records_the_inner_identity(tmp_path):
    from sr_augment.warm.accelerate import AccelerateJob
    from sr_augment.warm.options import WarmOptions

    options = WarmOptions(paths=(str(tmp_path),), engine="faults:SlowEngine", engine_params={"delay": 0.0},
                          device="auto", degrade="light")
    state = SimpleNamespace(process_index=0, num_processes=2, is_main_process=True, device="cpu")
    engine = AccelerateJob(state).build_engine(options)
    assert isinstance(engine, DegradedEngine) and engine.settings == check_degrade("light")
    assert undegraded(engine).service_config["device"] == "auto"  # the identity an adapter looks up
    assert engine.fingerprint != undegraded(engine).fingerprint


def test_ray_actors_make_the_same_entries_as_the_adapter(tmp_path):
    pa = pytest.importorskip("pyarrow")
    from sr_augment.cache import codec
    from sr_augment.warm.ray import GenerateBatch

    folder = write_photos(tmp_path / "photos", ("chelsea",), max_side=32)
    path = str(folder / "chelsea.png")
    actor = GenerateBatch("bicubic", {"scale": 2}, "upscale", "png", frozenset(), degrade="realistic")
    table = actor(pa.table({"path": [path] * 3, "variant": [0, 1, 2]}))
    rows = table.to_pylist()
    assert [row["status"] for row in rows] == ["generated"] * 3
    core = AugmentCore(engine="bicubic", scale=2, variants=3, degrade="realistic", cache_dir=tmp_path / "cache")
    expected = _variants(core, load_image(path), 3)
    for row, result in zip(rows, expected):
        np.testing.assert_array_equal(codec.decode(row["record"]), result)
        assert row["key"] == core.cache.key(load_image(path), core.engine, "upscale", row["variant"])


def test_get_engine_objects_can_be_wrapped_and_keep_their_output_for_variant_0(tmp_path):
    inner = get_engine("bicubic", scale=2)
    core = AugmentCore(engine=inner, scale=2, variants=2, degrade={"jpeg": {"quality": 40}},
                       cache_dir=tmp_path)
    image = _crop("coffee", 16)
    results = _variants(core, image, 2)
    np.testing.assert_array_equal(results[0], inner.upscale([image], [0])[0])
    assert _mad(results[0], results[1]) > 0.5
    assert core.engine.name == "bicubic+degrade:custom" and core.config()["degrade"] == {"jpeg": {
        "full_chroma": 0.0, "p": 1.0, "quality": [40, 40]}}


def test_the_deterministic_engine_warning_names_degrade_as_a_fix(tmp_path):
    with pytest.warns(DeterministicEngineWarning, match="degrade='light'"):
        AugmentCore(engine="bicubic", variants=3, cache_dir=tmp_path)
