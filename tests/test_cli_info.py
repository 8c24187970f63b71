"""`sr-augment info` (entries per engine and mode, no folder created) and `export --images` (PNG files and
an index to look at the results)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from fakes import CountingEngine
from sr_augment.cache import SRCache
from sr_augment.cli import main
from sr_augment.engines import BicubicEngine


def _images(rng, count: int, side: int = 8) -> list[np.ndarray]:
    return [rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for _ in range(count)]


def test_info_on_a_missing_folder_says_no_cache_exits_1_and_creates_nothing(capsys, tmp_path):
    missing = tmp_path / "nowhere" / "cache"
    assert main(["info", "--cache-dir", str(missing)]) == 1
    assert f"no cache at {missing}" in capsys.readouterr().err
    assert main(["info", "--cache-dir", str(missing), "--json"]) == 1
    assert json.loads(capsys.readouterr().out) == {"directory": str(missing), "exists": False}
    assert not (tmp_path / "nowhere").exists()


def test_info_counts_entries_per_engine_and_mode_as_a_table_and_as_json(capsys, tmp_path, rng):
    images = _images(rng, 3)
    with SRCache(tmp_path / "cache") as cache:
        cache.get_or_create_many(images * 2, BicubicEngine(), "upscale", variants=[0, 0, 0, 1, 1, 1])
        cache.get_or_create_many(images, BicubicEngine(), "resynthesize")
        cache.get_or_create_many(images[:2], CountingEngine(scale=2), "upscale")
    assert main(["info", "--cache-dir", str(tmp_path / "cache"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    groups = {(g["engine"], g["mode"], g["scale"]): g["entries"] for g in info["by_engine"]}
    assert groups == {("bicubic", "upscale", 4): 6, ("bicubic", "resynthesize", 4): 3, ("counting", "upscale", 2): 2}
    assert info["entries"] == 11 == sum(g["entries"] for g in info["by_engine"]) and info["exists"]
    assert main(["info", "--cache-dir", str(tmp_path / "cache")]) == 0
    table = capsys.readouterr().out.split("entries per engine and mode:\n")[1].splitlines()
    assert table[0].split() == ["engine", "mode", "scale", "entries", "size", "fingerprint"]
    assert table[1].split()[:4] == ["bicubic", "upscale", "x4", "6"] and len(table) == 4


def test_export_images_writes_each_entry_as_png_with_an_index_of_key_engine_mode_and_variant(capsys, tmp_path, rng):
    images = _images(rng, 2)
    engine = BicubicEngine()
    with SRCache(tmp_path / "cache") as cache:
        cache.get_or_create_many(images * 2, engine, "resynthesize", variants=[0, 0, 1, 1])
        keys = {cache.key(image, engine, "resynthesize", v): (image, v) for v in (0, 1) for image in images}
    out = tmp_path / "look"
    assert main(["export", "--cache-dir", str(tmp_path / "cache"), "--images", str(out), "--no-progress"]) == 0
    with open(out / "index.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["key"] for r in rows) == sorted(keys)
    with SRCache(tmp_path / "cache") as cache:
        for row in rows:
            image, variant = keys[row["key"]]
            assert (row["engine"], row["mode"], row["variant"], row["source_size"]) == (
                "bicubic", "resynthesize", str(variant), "8x8")
            assert np.array_equal(np.asarray(Image.open(out / row["file"])), cache.get(image, engine, "resynthesize", variant))
    with pytest.raises(SystemExit, match="no cache at"):
        main(["export", "--cache-dir", str(tmp_path / "missing"), "--images", str(tmp_path / "other")])
    assert not (tmp_path / "missing").exists()
