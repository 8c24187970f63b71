"""Shards, import, export and merge against a hostile review (round 2): a FIFO named `*.tar`, deeply nested
JSON in a shard member or a cache row, samples the manifest lists that are gone, one pixel limit for every
path, links planted in an `export --images` folder, and terminal escapes in names that get printed."""

from __future__ import annotations

import io
import json
import os
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest

from sr_augment.cache import SRCache, codec, entrymeta
from sr_augment.cache.shards import MANIFEST_DIR, written_keys
from sr_augment.cache.transfer import TransferReport, import_shards, iter_records
from sr_augment.cli import main
from sr_augment.engines import BicubicEngine

pyarrow_parquet = pytest.importorskip("pyarrow.parquet", reason="shards need the [shards] extra (pyarrow)")
pytest.importorskip("fsspec", reason="shards need the [shards] extra (fsspec)")


def _warmed(cache_dir: Path, rng, sides=(8, 8, 40)) -> list[np.ndarray]:
    images = [rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for side in sides]
    with SRCache(cache_dir) as cache:
        cache.get_or_create_many(images, BicubicEngine())
    return images


def _run(capsys, *argv) -> tuple[int, dict, str]:
    code = main([*argv, "--json", "--no-progress"])
    out, err = capsys.readouterr()
    return code, json.loads(out.strip().splitlines()[-1]), err


def _export(cache_dir: Path, out: Path, shard_size: str = "1GB") -> None:
    assert main(["export", "--cache-dir", str(cache_dir), "--out", str(out), "--shard-size", shard_size,
                 "--no-progress", "--json"]) == 0


def _manifest(out: Path) -> list[dict]:
    return pyarrow_parquet.read_table(out / MANIFEST_DIR).to_pylist()


def _in_thread(target, *args):
    """Run `target(*args)` in a thread; (finished, result or exception). A FIFO open that blocks is
    unblocked by opening its other end, so a regression fails the test instead of hanging it."""
    box: dict = {}
    done = threading.Event()

    def run():
        try:
            box["result"] = target(*args)
        except BaseException as exc:  # noqa: BLE001  (handed to the test)
            box["result"] = exc
        finally:
            done.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return done, box, thread


def _unblock(fifo: Path) -> None:
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # a blocked reader gets EOF when we close
        os.close(fd)
    except OSError:
        pass


# -- a FIFO named *.tar (or a manifest part) --------------------------------------------------------------

@pytest.mark.parametrize("where", ["shard", "manifest part", "named"])
def test_a_fifo_named_like_a_shard_or_a_manifest_part_is_refused_by_name_and_the_good_shard_imports(tmp_path, rng, where):
    _warmed(tmp_path / "cache", rng)
    _export(tmp_path / "cache", tmp_path / "shards")
    fifo = tmp_path / "shards" / ("zzz-000000.tar" if where != "manifest part" else f"{MANIFEST_DIR}/zzz-000000.parquet")
    os.mkfifo(fifo)
    uris = [str(tmp_path / "shards")] + ([str(fifo)] if where == "named" else [])
    with SRCache(tmp_path / "node") as cache:
        done, box, thread = _in_thread(lambda: import_shards(uris, cache, progress=False))
        if not done.wait(60):
            for _ in range(3):
                _unblock(fifo)
                if done.wait(5):
                    break
            pytest.fail(f"import blocked on the FIFO {fifo}")
        thread.join()
    report = box["result"]
    assert isinstance(report, TransferReport), report
    assert report.copied == 3
    assert report.refused >= (where != "manifest part")
    assert any(fifo.name in json.dumps(p) and "not a regular file" in p["reason"] for p in report.problems), report.problems


def test_export_and_written_keys_never_open_a_fifo_in_the_manifest(tmp_path, rng):
    _warmed(tmp_path / "cache", rng)
    _export(tmp_path / "cache", tmp_path / "shards")
    fifo = tmp_path / "shards" / MANIFEST_DIR / "zzz-000000.parquet"
    os.mkfifo(fifo)
    done, box, thread = _in_thread(written_keys, str(tmp_path / "shards"))
    if not done.wait(60):
        for _ in range(3):
            _unblock(fifo)
            if done.wait(5):
                break
        pytest.fail("written_keys blocked on a FIFO manifest part")
    thread.join()
    assert len(box["result"]) == 3


# -- deeply nested JSON -----------------------------------------------------------------------------------

DEEP = "[" * 30_000 + "]" * 30_000  # 60 KB, under the 64 KiB JSON member limit; 30,000 levels


def _one_sample_shard(path: Path, stem: str, ext: str, image: bytes, text: bytes) -> None:
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in ((f"{stem}.{ext}", image), (f"{stem}.json", text)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("field", ["member", "record_header"])
def test_deeply_nested_json_in_a_shard_member_is_refused_by_name_and_the_other_shards_import(capsys, tmp_path, rng, field):
    _warmed(tmp_path / "cache", rng)
    _export(tmp_path / "cache", tmp_path / "good")
    row = _manifest(tmp_path / "good")[0]
    shard = (tmp_path / "good" / row["shard"]).read_bytes()
    image = shard[row["image_offset"]:row["image_offset"] + row["image_size"]]
    info = json.loads(shard[row["json_offset"]:row["json_offset"] + row["json_size"]])
    key = "f" * 32 + ":0"
    info.update(key=key, record_header=DEEP)
    text = DEEP.encode() if field == "member" else json.dumps(info).encode()
    bad = tmp_path / "bad"
    bad.mkdir()
    _one_sample_shard(bad / "a-000000.tar", "f" * 32 + "_0", row["codec"], image, text)
    code, report, err = _run(capsys, "import", str(bad), str(tmp_path / "good"), "--cache-dir", str(tmp_path / "node"))
    assert code == 1 and (report["copied"], report["refused"]) == (3, 1)
    assert f"a-000000.tar: {'f' * 32}_0.json:" in err and "nested" in err, err
    assert len(SRCache(tmp_path / "node")) == 3


def _plant_deep_row(cache_dir: Path) -> str:
    """A row whose record has a valid checksum and a header nested 30,000 levels deep, tagged so `info` reads it."""
    key = "e" * 32 + ":0"
    header = ('{"codec": "raw", "shape": [1, 1, 3], "meta": ' + DEEP + "}").encode()
    with SRCache(cache_dir) as cache:
        assert cache._add(key, codec.join(header, b"\0\0\0"), "m1:upscale:" + "0" * 16)
    return key


def test_a_cache_row_with_deeply_nested_json_is_refused_by_key_by_export_merge_and_images_and_info_still_runs(
        capsys, tmp_path, rng):
    _warmed(tmp_path / "cache", rng)
    key = _plant_deep_row(tmp_path / "cache")
    code, report, err = _run(capsys, "export", "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "shards"))
    assert code == 1 and (report["copied"], report["refused"]) == (3, 1) and key in err
    code, report, err = _run(capsys, "export", "--cache-dir", str(tmp_path / "cache"), "--images", str(tmp_path / "png"))
    assert code == 1 and (report["copied"], report["refused"]) == (3, 1) and key in err
    code, report, err = _run(capsys, "merge", str(tmp_path / "cache"), "--into", str(tmp_path / "merged"))
    assert code == 1 and (report["copied"], report["refused"]) == (3, 1) and key in err
    assert main(["info", "--cache-dir", str(tmp_path / "cache")]) == 0
    assert "entries    4" in capsys.readouterr().out


# -- samples the manifest lists that are gone --------------------------------------------------------------

def _two_shards(tmp_path: Path, rng) -> tuple[Path, list[dict]]:
    _warmed(tmp_path / "cache", rng, sides=(8, 8, 8, 8))
    out = tmp_path / "shards"
    _export(tmp_path / "cache", out, shard_size="2KB")  # about one sample per shard
    rows = _manifest(out)
    assert len({r["shard"] for r in rows}) >= 2
    return out, rows


def test_import_of_a_folder_whose_shard_was_deleted_reports_the_missing_samples_and_fails(capsys, tmp_path, rng):
    out, rows = _two_shards(tmp_path, rng)
    lost = rows[0]
    (out / lost["shard"]).unlink()
    lost_rows = [r for r in rows if r["shard"] == lost["shard"]]
    code, report, err = _run(capsys, "import", str(out), "--cache-dir", str(tmp_path / "node"))
    assert code == 1 and report["missing"] == len(lost_rows) and report["copied"] == len(rows) - len(lost_rows)
    assert f"missing: {out / lost['shard']}" in err, err


def test_import_of_a_shard_cut_at_a_member_boundary_reports_the_samples_it_lost(capsys, tmp_path, rng):
    _warmed(tmp_path / "cache", rng, sides=(8, 8, 8, 8))
    out = tmp_path / "shards"
    _export(tmp_path / "cache", out)
    rows = _manifest(out)
    shard = out / rows[0]["shard"]
    cut = rows[2]["image_offset"] - tarfile.BLOCKSIZE  # the third sample's first header: a clean member boundary
    shard.write_bytes(shard.read_bytes()[:cut])
    code, report, err = _run(capsys, "import", str(out), "--cache-dir", str(tmp_path / "node"))
    assert code == 1 and report["copied"] == 2 and report["missing"] == 2
    for row in rows[2:]:
        assert f"{rows[0]['shard']}: {row['image_member']}" in err, err


@pytest.mark.parametrize("damage", ["deleted", "cut"])
def test_export_into_a_folder_whose_shard_was_lost_exports_its_samples_again(capsys, tmp_path, rng, damage):
    out, rows = _two_shards(tmp_path, rng)
    lost = rows[-1]["shard"]
    if damage == "deleted":
        (out / lost).unlink()
    else:
        (out / lost).write_bytes((out / lost).read_bytes()[: rows[-1]["image_offset"] - tarfile.BLOCKSIZE])
    lost_keys = {r["key"] for r in rows if r["shard"] == lost}
    assert not lost_keys & written_keys(str(out))  # a lost shard's keys are not "written"
    code, report, err = _run(capsys, "export", "--cache-dir", str(tmp_path / "cache"), "--out", str(out))
    assert code == 0 and report["copied"] == len(lost_keys) and report["present"] == len(rows) - len(lost_keys)
    assert lost in err  # said, not silent
    code, report, err = _run(capsys, "import", str(out), "--cache-dir", str(tmp_path / "node"))
    assert code == 0 and (report["copied"], report["refused"], report["missing"]) == (len(rows), 0, 0), err
    assert sorted(r["key"] for r in _manifest(out)) == sorted(r["key"] for r in rows)  # each key listed once


# -- one pixel limit for every path -----------------------------------------------------------------------

def test_one_pixel_limit_decides_alike_for_a_local_store_merge_and_import(capsys, tmp_path, rng, monkeypatch):
    small, big = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), rng.integers(0, 256, (9, 9, 3), dtype=np.uint8)
    engine = BicubicEngine()
    with SRCache(tmp_path / "cache", codec="webp") as cache:  # 32x32 and 36x36 results
        cache.get_or_create_many([small, big], engine)
        big_key = cache.key(big, engine)
    _export(tmp_path / "cache", tmp_path / "shards")
    monkeypatch.setattr(entrymeta, "MAX_PIXELS", 32 * 32)  # the one limit: 32x32 fits, 36x36 does not
    with SRCache(tmp_path / "local", codec="webp") as local:
        assert local.get_or_create(small, engine).shape == (32, 32, 3)
        with pytest.raises(ValueError, match="1024-pixel limit"):
            local.get_or_create(big, engine)
        assert len(local) == 1
    code, report, err = _run(capsys, "merge", str(tmp_path / "cache"), "--into", str(tmp_path / "merged"))
    assert code == 1 and (report["copied"], report["refused"]) == (1, 1) and big_key in err and "1024-pixel limit" in err
    code, report, err = _run(capsys, "import", str(tmp_path / "shards"), "--cache-dir", str(tmp_path / "imported"))
    assert code == 1 and (report["copied"], report["refused"]) == (1, 1) and "1024-pixel limit" in err
    assert big_key.replace(":", "_") in err


def test_the_pixel_limit_holds_what_a_local_warm_makes_of_a_4100_px_photo_and_fits_a_value_file():
    from sr_augment.cache import rows, shard_reader

    assert entrymeta.MAX_PIXELS >= 16400 * 16400  # a 4100 px source at x4
    assert entrymeta.MAX_PIXELS * 3 + (1 << 20) <= rows.MAX_VALUE_BYTES  # even raw, a record is readable back
    assert not hasattr(shard_reader, "MAX_PIXELS")  # no second limit


# -- links planted in an export --images folder -----------------------------------------------------------

def test_export_images_never_writes_through_a_link_planted_in_its_folder(capsys, tmp_path, rng):
    _warmed(tmp_path / "cache", rng)
    keys = [key for key, _ in iter_records(tmp_path / "cache", TransferReport())]
    out = tmp_path / "png"
    out.mkdir()
    victims = {name: tmp_path / f"victim-{i}" for i, name in enumerate(["index.csv", keys[0].replace(":", "_") + ".png"])}
    for name, victim in victims.items():
        victim.write_text("precious")
        (out / name).symlink_to(victim)
    code, report, _ = _run(capsys, "export", "--cache-dir", str(tmp_path / "cache"), "--images", str(out))
    assert code == 0 and report["copied"] == 3
    for name, victim in victims.items():
        assert victim.read_text() == "precious"
        assert not (out / name).is_symlink() and (out / name).stat().st_size > 0
    assert sorted(p.name for p in out.iterdir()) == sorted(["index.csv"] + [k.replace(":", "_") + ".png" for k in keys])


# -- terminal escapes in printed names --------------------------------------------------------------------

def test_terminal_escapes_in_shard_member_and_folder_names_are_printed_escaped(capsys, tmp_path, rng):
    _warmed(tmp_path / "cache", rng, sides=(8,))
    folder = tmp_path / "evil\x1b]0;owned\x07"
    _export(tmp_path / "cache", folder)
    forged = "x\x1b[2K\r1 read: 1 imported, 0 already there, 0 refused.json"
    with tarfile.open(folder / "zz-000000.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo(forged)
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
    code = main(["import", str(folder), "--cache-dir", str(tmp_path / "node"), "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 1
    assert "\x1b" not in out + err and "\r" not in out + err and "\x07" not in out + err
    assert "\\x1b[2K\\r1 read" in err and "evil\\x1b]0;owned\\x07" in err


def test_a_warm_failure_names_a_file_with_terminal_escapes_escaped(capsys, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "bad\x1b]0;owned\x07\r.png").write_bytes(b"not an image at all")
    code = main(["warm", str(folder), "--engine", "bicubic", "--cache-dir", str(tmp_path / "cache"), "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 1 and "failed:" in err
    assert "\x1b" not in out + err and "\x07" not in out + err and "\r" not in out + err
    assert "bad\\x1b]0;owned\\x07\\r.png" in err
