"""Files a hostile user can plant where a cache or its engine identity is read: FIFOs, links to
outside files and folders, absurd numbers and deeply nested JSON. Each is refused with a clear error
or ignored with a warning; nothing blocks, nothing outside the cache is created or changed.
(Found by an adversarial review of the cache; each test failed before its fix.)"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest

from sr_augment.cache import SRCache
from sr_augment.cache.rows import DatabaseDamaged
from sr_augment.cli import main
from sr_augment.engines import BicubicEngine
from sr_augment.service.identity import load_identity, record_path


def _warmed(cache_dir: Path, rng, side: int = 64, count: int = 2) -> list[np.ndarray]:
    images = [rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for _ in range(count)]
    with SRCache(cache_dir) as cache:
        cache.get_or_create_many(images, BicubicEngine())
    return images


def _returns_within(seconds: float, call):
    """Run `call` in a thread; fail (instead of hanging the suite) if it blocks."""
    result = []
    thread = threading.Thread(target=lambda: result.append(call()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert result, f"blocked for more than {seconds} s"
    return result[0]


def test_a_fifo_planted_as_an_identity_record_is_ignored_without_blocking(tmp_path):
    config = {"spec": "sr4", "scale": 4}
    path = record_path(tmp_path, config)
    path.parent.mkdir(parents=True)
    os.mkfifo(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _returns_within(10, lambda: load_identity(tmp_path, config)) is None
    assert any("not a regular file" in str(w.message) for w in caught)


def test_deeply_nested_json_in_an_identity_record_is_ignored_with_a_warning(tmp_path):
    config = {"spec": "sr4", "scale": 4}
    path = record_path(tmp_path, config)
    path.parent.mkdir(parents=True)
    path.write_text("[" * 30000 + "]" * 30000)
    with pytest.warns(UserWarning, match="ignoring the engine identity record"):
        assert load_identity(tmp_path, config) is None


@pytest.mark.parametrize("planted", ["entries folder", "database file", "dangling meta database"])
def test_a_cache_folder_or_database_that_is_a_link_is_refused_and_nothing_outside_changes(planted, tmp_path, rng):
    cache_dir, outside = tmp_path / "cache", tmp_path / "outside"
    outside.mkdir()
    _warmed(cache_dir, rng)
    if planted == "entries folder":
        target = outside / "entries"
        target.mkdir()
        os.rename(cache_dir / "entries", tmp_path / "moved")
        (cache_dir / "entries").symlink_to(target)
    elif planted == "database file":
        target = outside / "victim.db"
        target.write_bytes(b"")
        for f in (cache_dir / "entries").glob("cache.db*"):
            f.unlink()
        (cache_dir / "entries" / "cache.db").symlink_to(target)
    else:
        target = outside / "created.db"
        for f in (cache_dir / "meta").glob("cache.db*"):
            f.unlink()
        (cache_dir / "meta" / "cache.db").symlink_to(target)
    before = {p: p.stat().st_mtime_ns for p in outside.rglob("*")}
    fresh = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    with pytest.raises(DatabaseDamaged, match="symbolic link"):
        with SRCache(cache_dir) as cache:
            cache.get_or_create(fresh, BicubicEngine())
    assert {p: p.stat().st_mtime_ns for p in outside.rglob("*")} == before  # nothing created or changed there
    assert not (outside / "created.db").exists()
    assert main(["clear", "--cache-dir", str(cache_dir), "--yes"]) == 0  # clear recovers
    assert {p: p.stat().st_mtime_ns for p in outside.rglob("*")} == before
    with SRCache(cache_dir) as cache:
        assert cache.get_or_create(fresh, BicubicEngine()).shape == (256, 256, 3)


def _plant_meta(cache_dir: Path, key: str, value) -> None:
    with sqlite3.connect(cache_dir / "meta" / "cache.db") as con:
        con.execute("DELETE FROM Cache WHERE key = ?", (key,))
        con.execute("INSERT INTO Cache (key, raw, store_time, expire_time, access_time, mode, value) "
                    "VALUES (?, 1, 0, NULL, 0, 1, ?)", (key, value))


def test_absurd_counters_and_deeply_nested_engine_json_never_break_stats_or_info(tmp_path, rng, capsys):
    cache_dir = tmp_path / "cache"
    _warmed(cache_dir, rng)
    _plant_meta(cache_dir, "hits", float("inf"))
    _plant_meta(cache_dir, "misses", -5)
    _plant_meta(cache_dir, "engine:deep", "[" * 100000 + "]" * 100000)
    with SRCache(cache_dir) as cache:
        stats = cache.stats()
    assert stats.hits >= 0 and stats.misses >= 0
    assert main(["info", "--cache-dir", str(cache_dir)]) == 0


def test_a_planted_journal_mode_is_refused_before_diskcache_runs_it(tmp_path, rng):
    cache_dir = tmp_path / "cache"
    _warmed(cache_dir, rng)
    with sqlite3.connect(cache_dir / "entries" / "cache.db") as con:
        con.execute("UPDATE Settings SET value = 'delete' WHERE key = 'sqlite_journal_mode'")
    with pytest.raises(DatabaseDamaged, match="sqlite_journal_mode"):
        with SRCache(cache_dir) as cache:
            cache.get_or_create(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), BicubicEngine())


def test_info_escapes_planted_control_characters_in_engine_names(tmp_path, rng, capsys):
    cache_dir = tmp_path / "cache"
    _warmed(cache_dir, rng)
    name = "evil\x1b]0;retitled\x07\ncache      /etc/passwd"
    _plant_meta(cache_dir, "engine:fp\x1b[2J", f'{{"name": {json.dumps(name)}, "generated": 1}}')
    capsys.readouterr()
    assert main(["info", "--cache-dir", str(cache_dir)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert not any(line.startswith("cache      /etc/passwd") for line in out.splitlines())


def _value_files(cache_dir: Path) -> list[Path]:
    return sorted(p for p in (cache_dir / "entries").rglob("*.val"))


def test_a_fifo_planted_as_a_value_file_is_refused_without_blocking_reads_or_verify(tmp_path, rng, capsys):
    cache_dir = tmp_path / "cache"
    images = _warmed(cache_dir, rng)  # 64 px inputs: 256 px results live in value files
    victim = _value_files(cache_dir)[0]
    victim.unlink()
    os.mkfifo(victim)
    with SRCache(cache_dir) as cache:
        results = _returns_within(20, lambda: cache.get_many(images, BicubicEngine()))
    assert sum(r is None for r in results) == 1  # the planted one reads as a miss; the other is a hit
    _returns_within(20, lambda: main(["verify", "--cache-dir", str(cache_dir), "--repair", "--no-progress"]))


def test_a_huge_sparse_value_file_is_refused_without_reading_it(tmp_path, rng):
    cache_dir = tmp_path / "cache"
    images = _warmed(cache_dir, rng)
    for victim in _value_files(cache_dir):
        with open(victim, "r+b") as fh:
            fh.truncate(4 * 2**30)  # 4 GiB that take no disk
    with SRCache(cache_dir) as cache:
        assert cache.get_many(images, BicubicEngine()) == [None, None]
        assert cache.stats().damaged == 2


def test_a_planted_record_of_another_shape_is_refused_before_it_is_decoded(tmp_path, rng, monkeypatch):
    from sr_augment.cache import codec

    cache_dir = tmp_path / "cache"
    images = _warmed(cache_dir, rng)
    # a valid, checksummed record of a much larger image written over the first value file
    big = codec.encode(np.zeros((1024, 1024, 3), np.uint8), "png")
    _value_files(cache_dir)[0].write_bytes(big)
    decoded_sizes = []
    real_array = np.array
    monkeypatch.setattr(codec.np, "array", lambda obj, *a, **k: decoded_sizes.append(getattr(obj, "size", None))
                        or real_array(obj, *a, **k))
    with SRCache(cache_dir) as cache:
        results = cache.get_many(images, BicubicEngine())
    assert sorted(r is None for r in results) == [False, True]
    assert all(r is None or r.shape == (256, 256, 3) for r in results)
    assert (1024, 1024) not in decoded_sizes  # refused by its header, never decoded


def test_an_engine_result_of_the_wrong_shape_is_refused_before_it_is_stored(tmp_path, rng):
    class WrongSize(BicubicEngine):
        def upscale(self, images, seeds):
            return [np.zeros((5, 7, 3), np.uint8) for _ in images]

    with SRCache(tmp_path / "cache") as cache:
        with pytest.raises(ValueError, match="needs"):
            cache.get_or_create(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), WrongSize())
        assert len(cache) == 0
