"""A cache folder's contents are untrusted: planted rows (pickles, paths out of the cache, links,
pickled keys, PRAGMA text in Settings) are refused, never run, never followed; each is planted with
sqlite3 directly, as anyone who can write a shared folder could."""

from __future__ import annotations

import json
import os
import pickle
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sr_augment.cache import SRCache
from sr_augment.cache.rows import DatabaseDamaged
from sr_augment.cli import main
from sr_augment.engines import BicubicEngine


class _Payload:
    """Unpickling this creates the marker file: proof that a pickle ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _warmed(cache_dir: Path, rng, side: int = 8, count: int = 2) -> list[np.ndarray]:
    images = [rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for _ in range(count)]
    with SRCache(cache_dir) as cache:
        cache.get_or_create_many(images, BicubicEngine())
    return images


def _db(cache_dir: Path, name: str = "entries") -> sqlite3.Connection:
    return sqlite3.connect(cache_dir / name / "cache.db", isolation_level=None)


def _plant(cache_dir: Path, key: str, mode: int, filename=None, value=None) -> None:
    with _db(cache_dir) as con:
        assert con.execute("UPDATE Cache SET mode = ?, filename = ?, value = ? WHERE key = ?",
                           (mode, filename, value, key)).rowcount == 1


def test_a_planted_pickle_row_is_refused_counted_removed_and_never_run(cache_dir, tmp_path, rng):
    images = _warmed(cache_dir, rng)
    marker = tmp_path / "pwned"
    engine = BicubicEngine()
    key = SRCache(cache_dir).key(images[0], engine)
    _plant(cache_dir, key, 4, None, pickle.dumps(_Payload(marker)))  # diskcache's MODE_PICKLE, inline
    with SRCache(cache_dir) as cache:
        assert cache.get(images[0], engine) is None  # refused: a miss, not a pickle
        assert key not in cache and cache.stats().damaged == 1  # counted and its row removed
        again = cache.get_or_create(images[0], engine)  # regenerated and stored
        assert np.array_equal(again, engine.upscale([images[0]], [0])[0]) and key in cache
        assert cache.get(images[1], engine) is not None  # the other entry is untouched
    assert not marker.exists()


def test_a_planted_pickle_row_is_never_run_by_warm_info_or_get_or_create(cache_dir, tmp_path, rng, capsys):
    images = _warmed(cache_dir, rng)
    marker = tmp_path / "pwned"
    engine = BicubicEngine()
    key = SRCache(cache_dir).key(images[1], engine)
    _plant(cache_dir, key, 4, None, pickle.dumps(_Payload(marker)))
    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i}.png")
    assert main(["info", "--cache-dir", str(cache_dir), "--json"]) == 0
    assert main(["warm", str(folder), "--engine", "bicubic", "--cache-dir", str(cache_dir), "--json", "--no-progress"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["generated"] == 1 and report["cached"] == 1  # the refused entry was regenerated
    with SRCache(cache_dir) as cache:
        assert [cache.get_or_create(image, engine).shape for image in images] == [(32, 32, 3)] * 2
        assert cache.stats().damaged == 1
    assert not marker.exists()


def test_a_row_naming_a_file_outside_the_cache_is_refused_and_the_file_stays(cache_dir, tmp_path, rng):
    images = _warmed(cache_dir, rng)
    victim = tmp_path / "victim" / "precious.txt"
    victim.parent.mkdir()
    victim.write_text("not yours")
    engine = BicubicEngine()
    key = SRCache(cache_dir).key(images[0], engine)
    _plant(cache_dir, key, 2, "../../victim/precious.txt")  # diskcache's MODE_BINARY, a path out of the cache
    with SRCache(cache_dir) as cache:
        assert cache.get(images[0], engine) is None
        assert cache.stats().damaged == 1 and key not in cache
        assert cache.get_or_create(images[0], engine).shape == (32, 32, 3)
        cache.clear()  # diskcache's own removal paths are guarded too
    assert victim.read_text() == "not yours"


def test_a_value_file_replaced_by_a_symlink_is_refused_and_its_target_stays(cache_dir, tmp_path, rng):
    images = _warmed(cache_dir, rng, side=64, count=1)  # a 256x256 noise result: stored in a value file
    (value_file,) = (cache_dir / "entries").rglob("*.val")
    secret = tmp_path / "secret.bin"
    secret.write_bytes(value_file.read_bytes())  # even a valid record behind a link is not followed
    value_file.unlink()
    value_file.symlink_to(secret)
    engine = BicubicEngine()
    with SRCache(cache_dir) as cache:
        assert cache.get(images[0], engine) is None and cache.stats().damaged == 1
        assert cache.get_or_create(images[0], engine).shape == (256, 256, 3)
    assert secret.exists() and not value_file.is_symlink()


def test_a_pickled_key_is_never_unpickled_by_info_stats_or_clear(cache_dir, tmp_path, rng, capsys):
    _warmed(cache_dir, rng)
    marker = tmp_path / "pwned"
    for name in ("entries", "meta"):
        with _db(cache_dir, name) as con:  # diskcache stores non-text keys pickled with raw=0
            con.execute("INSERT INTO Cache (key, raw, store_time, expire_time, access_time, access_count, tag, size,"
                        " mode, filename, value) VALUES (?, 0, 0, NULL, 0, 0, NULL, 0, 1, NULL, 1)",
                        (pickle.dumps(_Payload(marker)),))
    assert main(["info", "--cache-dir", str(cache_dir), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["generated"] == 2 and not marker.exists()
    assert main(["clear", "--cache-dir", str(cache_dir), "--yes"]) == 0
    assert not marker.exists()


def test_settings_diskcache_never_writes_are_refused_before_it_runs_them_as_pragma(cache_dir, rng):
    images = _warmed(cache_dir, rng)
    with _db(cache_dir) as con:
        con.execute("INSERT INTO Settings VALUES ('sqlite_user_version', 7)")  # diskcache would run PRAGMA user_version = 7
    engine = BicubicEngine()
    with SRCache(cache_dir) as cache:
        assert cache.get(images[0], engine) is not None  # hits need no writer, so no check
        with pytest.raises(DatabaseDamaged, match="Settings table holds 'sqlite_user_version'") as info:
            cache.get_or_create(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), engine)
    assert str(cache_dir) in str(info.value) and "sr-augment clear" in str(info.value)
    with _db(cache_dir) as con:
        assert con.execute("PRAGMA user_version").fetchone() == (0,)


def test_metadata_is_stored_as_numbers_and_json_text_never_pickles(cache_dir, rng):
    _warmed(cache_dir, rng)
    with _db(cache_dir, "meta") as con:
        modes = {key: (raw, mode) for key, raw, mode in con.execute("SELECT key, raw, mode FROM Cache")}
    assert modes and all(raw == 1 and mode == 1 for raw, mode in modes.values()), modes  # text keys, MODE_RAW
    assert any(key.startswith("engine:") for key in modes)
    with _db(cache_dir) as con:
        assert {mode for (mode,) in con.execute("SELECT DISTINCT mode FROM Cache")} <= {1, 2}
    assert os.path.exists(cache_dir / "meta" / "cache.db")


def test_diskcaches_own_paths_refuse_pickles_and_remove_no_file_outside_the_cache(cache_dir, tmp_path, rng):
    """Defence in depth: eviction, delete and clear run inside diskcache, through `SafeDisk`."""
    from sr_augment.cache import UntrustedRow

    images = _warmed(cache_dir, rng)
    marker, victim = tmp_path / "pwned", tmp_path / "victim.txt"
    victim.write_text("not yours")
    engine = BicubicEngine()
    with SRCache(cache_dir) as cache:
        first, second = (cache.key(image, engine) for image in images)
        _plant(cache_dir, first, 4, None, pickle.dumps(_Payload(marker)))
        _plant(cache_dir, second, 2, "../../victim.txt")
        with pytest.raises(UntrustedRow):
            cache._entries.get(first)  # diskcache's reader, refused by mode
        with pytest.raises(UntrustedRow):
            cache._entries.get(second)  # ... and by file name
        assert cache._entries.delete(second)  # its row goes, the file it names stays
        cache._entries.clear()
    assert not marker.exists() and victim.read_text() == "not yours"
