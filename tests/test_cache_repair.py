"""Self-repair: value files lost behind the database's back are regenerated and stored, every
caller of a key gets the pixels stored first, and a damaged database names the way out."""

from __future__ import annotations

import json
import os
import pickle
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fakes import CountingEngine
from sr_augment.augment import AugmentCore
from sr_augment.cache import SRCache
from sr_augment.cache.verify import ORPHAN_AGE
from sr_augment.cli import main
from sr_augment.engines import BicubicEngine
from test_cache_security import _Payload


def _warm(capsys, folder, cache_dir) -> dict:
    code = main(["warm", str(folder), "--engine", "bicubic", "--cache-dir", str(cache_dir), "--json", "--no-progress"])
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0, report
    return report


def _noise_folder(folder: Path, rng, count: int, side: int = 40) -> list[np.ndarray]:
    folder.mkdir()
    images = [rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for _ in range(count)]
    for i, image in enumerate(images):  # 160x160 noise results: each in a value file
        Image.fromarray(image).save(folder / f"{i}.png")
    return images


def test_value_files_deleted_behind_the_database_are_regenerated_and_stored(capsys, tmp_path, rng):
    images = _noise_folder(tmp_path / "data", rng, 4)
    cache_dir = tmp_path / "cache"
    assert _warm(capsys, tmp_path / "data", cache_dir)["generated"] == 4
    value_files = sorted((cache_dir / "entries").rglob("*.val"))
    assert len(value_files) == 4
    for path in value_files[:2]:  # a partial copy, a tmp cleaner
        path.unlink()
    second = _warm(capsys, tmp_path / "data", cache_dir)
    assert (second["generated"], second["cached"]) == (2, 2)
    assert len(list((cache_dir / "entries").rglob("*.val"))) == 4  # stored again, not just computed
    third = _warm(capsys, tmp_path / "data", cache_dir)
    assert (third["generated"], third["cached"]) == (0, 4)
    core = AugmentCore(engine="bicubic", on_miss="error", cache_dir=cache_dir)  # training needs every entry
    for image in images:
        assert core.apply(image, 0).shape == (160, 160, 3)


def test_a_lost_value_file_read_by_get_is_counted_and_its_row_removed(tmp_path, rng):
    image = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    engine = BicubicEngine()
    with SRCache(tmp_path / "cache") as cache:
        cache.get_or_create(image, engine)
        next((tmp_path / "cache" / "entries").rglob("*.val")).unlink()
        assert cache.get(image, engine) is None
        assert cache.stats().damaged == 1 and len(cache) == 0
        cache.get_or_create(image, engine)
        assert cache.get(image, engine) is not None and len(cache) == 1


class _OffByOne(CountingEngine):
    """The same settings (fingerprint) as CountingEngine, pixels 1 apart: as a batch of another size
    gives from the same seed."""

    def upscale(self, images, seeds):
        return [out ^ 1 for out in super().upscale(images, seeds)]


def test_a_writer_that_loses_the_race_returns_the_pixels_stored_first(tmp_path, rng):
    image = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    with SRCache(tmp_path / "cache") as cache:
        first = cache.get_or_create(image, CountingEngine())
        late = _OffByOne()
        request = cache.plan([image], late, "upscale", 1)  # nothing to do: already stored
        assert request == []
        (request,) = [cache._request(image, late, "upscale", 0)]  # as a process that looked up before the store
        results, stored = cache.generate_counted(late, [request], "upscale")
        assert late.calls == [1] and stored == 0
        assert np.array_equal(results[0], first)  # not its own pixels
        assert np.array_equal(cache.get(image, late), first)


@pytest.mark.parametrize("damage", ["garbled", "truncated"])
def test_a_damaged_database_names_the_folder_and_the_way_out_and_clear_recovers(capsys, tmp_path, rng, damage):
    _noise_folder(tmp_path / "data", rng, 3, side=8)
    cache_dir = tmp_path / "cache"
    _warm(capsys, tmp_path / "data", cache_dir)
    db = cache_dir / "entries" / "cache.db"
    data = db.read_bytes()
    db.write_bytes(b"this is not a database " * 400 if damage == "garbled" else data[: len(data) // 2])
    for command in (["info"], ["warm", str(tmp_path / "data"), "--engine", "bicubic", "--no-progress"]):
        assert main([*command, "--cache-dir", str(cache_dir)]) == 1
        err = capsys.readouterr().err
        assert str(cache_dir) in err and "sr-augment clear --cache-dir" in err and "damaged" in err, err
    assert main(["clear", "--cache-dir", str(cache_dir), "--yes"]) == 0
    capsys.readouterr()
    assert _warm(capsys, tmp_path / "data", cache_dir)["generated"] == 3
    assert main(["info", "--cache-dir", str(cache_dir), "--json"]) == 0


def test_clear_removes_only_the_caches_own_files_and_follows_no_link(capsys, tmp_path, rng):
    _noise_folder(tmp_path / "data", rng, 2)
    cache_dir = tmp_path / "cache"
    _warm(capsys, tmp_path / "data", cache_dir)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "ab").mkdir()
    (outside / "ab" / ("0" * 28 + ".val")).write_bytes(b"keep")
    # a planted link in the value-file tree, named like diskcache's random sub-folders but not one of them
    # (a fixed "cd" collided with a real one in about 1 run in 128)
    taken = {path.name for path in (cache_dir / "entries").iterdir()}
    planted = next(f"{i:02x}" for i in range(256) if f"{i:02x}" not in taken)
    (cache_dir / "entries" / planted).symlink_to(outside)
    (cache_dir / "notes.txt").write_text("mine")
    assert main(["clear", "--cache-dir", str(cache_dir), "--yes"]) == 0
    assert (outside / "ab" / ("0" * 28 + ".val")).read_bytes() == b"keep"
    assert (cache_dir / "notes.txt").read_text() == "mine"
    assert list((cache_dir / "entries").rglob("*.val")) == []


def _verify(capsys, cache_dir, *extra) -> tuple[int, dict]:
    code = main(["verify", "--cache-dir", str(cache_dir), "--json", *extra])
    return code, json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _age(paths) -> None:
    old = time.time() - 2 * ORPHAN_AGE  # orphans younger than ORPHAN_AGE may be writes in flight
    for path in paths:
        os.utime(path, (old, old), follow_symlinks=False)


def test_verify_reports_every_kind_of_bad_entry_and_repair_removes_them(capsys, tmp_path, rng):
    _noise_folder(tmp_path / "data", rng, 5)
    cache_dir = tmp_path / "cache"
    _warm(capsys, tmp_path / "data", cache_dir)
    code, report = _verify(capsys, cache_dir)
    assert code == 0 and (report["rows"], report["ok"], report["clean"]) == (5, 5, True)
    marker, victim = tmp_path / "pwned", tmp_path / "victim.txt"
    victim.write_text("not yours")
    with sqlite3.connect(cache_dir / "entries" / "cache.db", isolation_level=None) as con:
        (a, fa), (b, fb), (c, fc), (d, fd), _ = con.execute("SELECT rowid, filename FROM Cache ORDER BY rowid").fetchall()
        con.execute("UPDATE Cache SET mode = 4, filename = NULL, value = ? WHERE rowid = ?",
                    (pickle.dumps(_Payload(marker)), a))
        con.execute("UPDATE Cache SET filename = '../../victim.txt' WHERE rowid = ?", (b,))
    (cache_dir / "entries" / fc).unlink()  # missing
    record = bytearray((cache_dir / "entries" / fd).read_bytes())
    record[-5] ^= 0x20
    (cache_dir / "entries" / fd).write_bytes(bytes(record))  # damaged
    orphan = cache_dir / "entries" / "ab" / "cd" / ("0" * 28 + ".val")
    orphan.parent.mkdir(parents=True, exist_ok=True)  # a warmed entry may already use ab/cd
    orphan.write_bytes(b"left behind")
    _age([orphan, *(cache_dir / "entries").rglob("*.val")])
    code, report = _verify(capsys, cache_dir)
    assert code == 1 and not report["clean"]
    assert {k: report[k] for k in ("rows", "ok", "untrusted", "missing", "damaged", "orphans")} == \
        {"rows": 5, "ok": 1, "untrusted": 2, "missing": 1, "damaged": 1, "orphans": 3}  # + the files rows a, b named
    code, report = _verify(capsys, cache_dir, "--repair")
    assert code == 0 and report["repaired"]
    code, report = _verify(capsys, cache_dir)
    assert code == 0 and (report["rows"], report["ok"], report["orphans"]) == (1, 1, 0)
    assert not marker.exists() and victim.read_text() == "not yours" and not orphan.exists()
    assert _warm(capsys, tmp_path / "data", cache_dir)["generated"] == 4
    assert main(["info", "--cache-dir", str(cache_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["evictions"] == 0  # repairs are not evictions


def test_a_database_truncated_to_nothing_leaves_orphans_that_verify_finds_and_repair_removes(capsys, tmp_path, rng):
    _noise_folder(tmp_path / "data", rng, 3)
    cache_dir = tmp_path / "cache"
    _warm(capsys, tmp_path / "data", cache_dir)
    (cache_dir / "entries" / "cache.db").write_bytes(b"")  # SQLite opens this as an empty database
    _age((cache_dir / "entries").rglob("*.val"))
    code, report = _verify(capsys, cache_dir)
    assert code == 1 and (report["rows"], report["orphans"]) == (0, 3)
    code, report = _verify(capsys, cache_dir, "--repair")
    assert code == 0 and list((cache_dir / "entries").rglob("*.val")) == []
    assert main(["info", "--cache-dir", str(cache_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["evictions"] == 0  # no phantom evictions
    assert _warm(capsys, tmp_path / "data", cache_dir)["generated"] == 3


def test_verify_repair_empties_a_database_that_cannot_be_read(capsys, tmp_path, rng):
    _noise_folder(tmp_path / "data", rng, 2, side=8)
    cache_dir = tmp_path / "cache"
    _warm(capsys, tmp_path / "data", cache_dir)
    (cache_dir / "entries" / "cache.db").write_bytes(b"garbage " * 1000)
    code, report = _verify(capsys, cache_dir)
    assert code == 1 and str(cache_dir) in report["database_damaged"]
    code, report = _verify(capsys, cache_dir, "--repair")
    assert code == 0 and report["repaired"]
    assert _warm(capsys, tmp_path / "data", cache_dir)["generated"] == 2
