"""A size limit smaller than one entry: nothing can be stored, and every way in says so instead of
reporting "generated" and storing nothing (diskcache would store the entry, then evict it at once)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from sr_augment.cache import CacheWriteError, SRCache
from sr_augment.cache.disk import EntryTooLarge
from sr_augment.cli import main
from sr_augment.engines import BicubicEngine

LIMIT = 50_000
"""Bytes: smaller than one 160x160 RGB result (76,800 bytes raw, over 50 kB in every codec for noise)."""


def _noise(rng, side: int = 40) -> np.ndarray:
    return rng.integers(0, 256, (side, side, 3), dtype=np.uint8)


def test_warm_with_a_limit_smaller_than_one_entry_says_so_and_exits_non_zero(capsys, tmp_path, rng):
    (tmp_path / "data").mkdir()
    for i in range(3):
        Image.fromarray(_noise(rng)).save(tmp_path / "data" / f"{i}.png")
    cache_dir = tmp_path / "cache"
    code = main(["warm", str(tmp_path / "data"), "--engine", "bicubic", "--cache-dir", str(cache_dir),
                 "--size-limit", str(LIMIT), "--json", "--no-progress"])
    out, err = capsys.readouterr()
    report = json.loads(out.strip().splitlines()[-1])
    assert code != 0
    assert report["generated"] == 0 and "exceeds" in report["error"]
    assert "not stored" in err and "exceeds the cache size limit" in err and str(cache_dir) in err, err
    assert "0.05 MB" in err and "--size-limit" in err  # the limit, and the way out
    assert str(tmp_path / "data" / "0.png") in err  # the image it could not store
    with SRCache(cache_dir) as cache:
        assert len(cache) == 0 and cache.stats().evictions == 0


def test_put_and_get_or_create_raise_instead_of_storing_nothing(tmp_path, rng):
    image, engine = _noise(rng), BicubicEngine()
    with SRCache(tmp_path / "cache", size_limit=LIMIT) as cache:
        result = engine.upscale([image], [0])[0]
        with pytest.raises(EntryTooLarge, match="exceeds the cache size limit") as error:
            cache.put(image, engine, result)
        assert isinstance(error.value, CacheWriteError) and str(tmp_path / "cache") in str(error.value)
        with pytest.raises(EntryTooLarge):
            cache.get_or_create(image, engine)
        assert len(cache) == 0
        assert list((tmp_path / "cache" / "entries").rglob("*.val")) == []  # no value file left behind
    with SRCache(tmp_path / "cache", size_limit=10 * LIMIT) as cache:  # a limit that holds it: stored
        assert cache.get_or_create(image, engine).shape == (160, 160, 3)
        assert len(cache) == 1
