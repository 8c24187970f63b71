"""`sr-augment warm` reads its argparse namespace once, into a typed `WarmOptions`; the local, accelerate,
Ray and dry-run paths take that object."""

from __future__ import annotations

import dataclasses
import inspect
import json

import numpy as np
import pytest
from PIL import Image

from sr_augment.cli import main
from sr_augment.cli.main import build_parser
from sr_augment.warm import options as warm_options
from sr_augment.warm.options import WarmOptions


def _parse(*argv):
    return build_parser().parse_args(["warm", *map(str, argv)])


def test_from_args_types_every_option_once():
    args = _parse("a", "b", "--engine", "sd-x4-upscaler", "--scale", "2", "--set", "noise_level=30", "--set", "prompt=a photo",
                  "--variants", "3", "--batch-size", "4", "--cache-dir", "/c", "--size-limit", "1000000000", "--json",
                  "--no-progress", "--resize", "64", "--center-crop", "32x48", "--dry-run", "--ray", "--out", "s3://x",
                  "--actors", "3")
    options = WarmOptions.from_args(args)
    assert options == WarmOptions(paths=("a", "b"), engine="sd-x4-upscaler", scale=2, engine_params={"noise_level": 30,
                                  "prompt": "a photo"}, variants=3, batch_size=4, cache_dir="/c", size_limit=10**9,
                                  json=True, progress=False, resize=(64,), center_crop=(32, 48), dry_run=True, ray="",
                                  out="s3://x", actors=3)
    assert options.preprocess is not None and options.engine_kwargs() == {"noise_level": 30, "prompt": "a photo", "batch_size": 4}
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.engine = "sr4"


def test_the_defaults_are_the_command_lines():
    assert WarmOptions.from_args(_parse("x")) == WarmOptions(paths=("x",))
    assert WarmOptions(paths=("x",)).preprocess is None
    assert WarmOptions(engine="sr4", batch_size=5).engine_kwargs() == {"batch_size": 5}


def test_a_malformed_set_stops_with_the_reason():
    with pytest.raises(SystemExit, match="--set expects KEY=VALUE"):
        WarmOptions.from_args(_parse("x", "--set", "novalue"))


def test_the_ray_accelerate_and_dry_run_paths_take_the_options():
    from sr_augment.warm.accelerate import AccelerateJob
    from sr_augment.warm.ray import run_ray_warm

    assert list(inspect.signature(run_ray_warm).parameters) == ["options"]
    assert list(inspect.signature(warm_options.dry_run).parameters) == ["options"]
    assert list(inspect.signature(AccelerateJob.build_engine).parameters) == ["self", "options"]


@pytest.fixture
def namespace_read_once(monkeypatch):
    """After `WarmOptions.from_args` the namespace is emptied: any later read of it fails the command."""
    made = []
    original = WarmOptions.from_args.__func__

    def from_args(cls, args):
        options = original(cls, args)
        vars(args).clear()
        made.append(options)
        return options

    monkeypatch.setattr(WarmOptions, "from_args", classmethod(from_args))
    return made


def _images(folder, rng, count=2):
    folder.mkdir()
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (8, 8 + i, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


@pytest.mark.parametrize("dry", [True, False])
def test_warm_reads_the_namespace_only_into_the_options(namespace_read_once, capsys, tmp_path, rng, dry):
    images = _images(tmp_path / "in", rng)
    argv = ["warm", str(images), "--engine", "bicubic", "--cache-dir", str(tmp_path / "cache"), "--json", "--no-progress"]
    assert main(argv + (["--dry-run"] if dry else [])) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (report["images"], report["generated"], report.get("dry_run", False)) == (2, 2, dry)
    assert len(namespace_read_once) == 1


def test_the_ray_path_reads_the_options(namespace_read_once, tmp_path, rng):
    images = _images(tmp_path / "in", rng)
    with pytest.raises(SystemExit, match="add --ray"):  # --out without --ray: said before Ray is imported
        main(["warm", str(images), "--engine", "bicubic", "--out", str(tmp_path / "shards"), "--no-progress"])
    assert namespace_read_once[0].out == str(tmp_path / "shards")
