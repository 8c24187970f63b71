"""Shards and export against a hostile review ("Trust, round 2"): an export rerun must check that what the
manifest lists is really in the shard (the manifest is the truth for export as for import), an export to a
full disk leaves no cut-off shard under a final name and says so clearly, names with terminal escapes in
`merge` / `import` errors are printed escaped, and a key listed twice in a manifest with different rows is
refused by name (an identical duplicate row is harmless)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from sr_augment.cache.shards import MANIFEST_DIR, ShardWriter
from sr_augment.cache.transfer import TransferReport, iter_records
from sr_augment.cli import main
from test_shards_hostile import _run
from test_shards_hostile import _warmed as warmed

pa = pytest.importorskip("pyarrow", reason="shards need the [shards] extra (pyarrow)")
pq = pytest.importorskip("pyarrow.parquet", reason="shards need the [shards] extra (pyarrow)")
pytest.importorskip("fsspec", reason="shards need the [shards] extra (fsspec)")
resource = pytest.importorskip("resource", reason="RLIMIT_FSIZE needs a POSIX system")

ESC = "\x1b]0;PWNED\x07\x1b[31mred"


def _warmed(cache_dir: Path, rng, sides=(8, 8, 8, 8)) -> list[np.ndarray]:
    return warmed(cache_dir, rng, sides)


def _export(capsys, cache_dir: Path, out: Path) -> tuple[int, dict, str]:
    return _run(capsys, "export", "--cache-dir", str(cache_dir), "--out", str(out))


def _import(capsys, out: Path, node: Path) -> tuple[int, dict, str]:
    return _run(capsys, "import", str(out), "--cache-dir", str(node))


def _part(out: Path) -> Path:
    (part,) = (out / MANIFEST_DIR).glob("*.parquet")
    return part


def _rewrite_shard(shard: Path, keep) -> None:
    """The shard rewritten as a valid tar holding only the members `keep(name)` accepts."""
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    shard.unlink()
    with tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT) as tar:
        for member, data in members:
            if keep(member.name):
                tar.addfile(member, io.BytesIO(data))


def _edit_manifest(out: Path, edit) -> list[dict]:
    part = _part(out)
    rows = pq.read_table(part).to_pylist()
    rows = edit(rows)
    pq.write_table(pa.Table.from_pylist(rows, schema=pq.read_schema(part)), part)
    return rows


# -- 1. an export rerun checks the shards against the manifest ----------------------------------------------

def _damaged_folder(capsys, tmp_path, rng, damage: str) -> tuple[Path, list[dict]]:
    _warmed(tmp_path / "cache", rng)
    out = tmp_path / "shards"
    assert _export(capsys, tmp_path / "cache", out)[0] == 0
    rows = pq.read_table(_part(out)).to_pylist()
    shard = out / rows[0]["shard"]
    if damage == "json member dropped":
        _rewrite_shard(shard, lambda name: name != rows[1]["json_member"])
    elif damage == "image member renamed in the manifest":
        _edit_manifest(out, lambda r: [dict(row, image_member="nope_0.png") if i == 0 else row for i, row in enumerate(r)])
    elif damage == "members reordered":  # all there, but not where the manifest says: random-access readers break
        with tarfile.open(shard) as tar:
            members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
        shard.unlink()
        with tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT) as tar:
            for member, data in reversed(members):
                tar.addfile(member, io.BytesIO(data))
    elif damage == "json member edited":  # same size, one byte changed: its SHA-256 in the manifest no longer holds
        data = bytearray(shard.read_bytes())
        at = rows[2]["json_offset"] + data[rows[2]["json_offset"]:].index(b'"engine": "') + len('"engine": "')
        data[at] = ord("B") if data[at] != ord("B") else ord("C")
        shard.write_bytes(bytes(data))
    return out, rows


@pytest.mark.parametrize("damage", ["json member dropped", "image member renamed in the manifest", "members reordered",
                                    "json member edited"])
def test_an_export_rerun_rewrites_a_shard_that_does_not_hold_what_its_manifest_lists_and_the_folder_then_imports_whole(
        capsys, tmp_path, rng, damage):
    out, rows = _damaged_folder(capsys, tmp_path, rng, damage)
    if damage != "members reordered":  # import does not need the offsets; random-access readers do
        assert _import(capsys, out, tmp_path / "before")[0] == 1  # import refuses the damage
    code, report, err = _export(capsys, tmp_path / "cache", out)
    assert code == 0 and report["copied"] == len(rows) and report["present"] == 0, (report, err)
    assert rows[0]["shard"] in err  # said, not silent
    assert not (out / rows[0]["shard"]).exists()  # the bad shard and its manifest part are retired
    code, report, err = _import(capsys, out, tmp_path / "node")
    assert code == 0 and (report["copied"], report["refused"], report["missing"]) == (len(rows), 0, 0), err
    code, report, err = _export(capsys, tmp_path / "cache", out)  # and a rerun now has nothing to do
    assert code == 0 and (report["copied"], report["present"]) == (0, len(rows)) and not err, err


def test_an_export_rerun_that_cannot_retire_a_bad_shard_says_so_by_name_and_fails_without_writing_it_again(
        capsys, tmp_path, rng):
    _warmed(tmp_path / "cache", rng)
    out = tmp_path / "shards"
    assert _export(capsys, tmp_path / "cache", out)[0] == 0
    rows = _edit_manifest(out, lambda r: [dict(row, image_member="nope_0.png") if i == 0 else
                                          dict(row, shard="gone.tar") if i == 1 else row for i, row in enumerate(r)])
    shard, part = rows[0]["shard"], _part(out)
    code, report, err = _export(capsys, tmp_path / "cache", out)
    assert code == 1 and report["copied"] == len(rows), (report, err)
    assert shard in err and part.name in err and "by hand" in err, err
    code, report, err = _export(capsys, tmp_path / "cache", out)  # a rerun: the samples are there, the bad shard still
    assert code == 1 and (report["copied"], report["present"]) == (0, len(rows)) and shard in err, (report, err)


# -- 2. a full disk --------------------------------------------------------------------------------------

_FULL_DISK = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing us
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
from sr_augment.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _cli_with_file_limit(tmp_path: Path, limit: int, *args: str) -> subprocess.CompletedProcess:
    """The CLI in a fresh interpreter (-I, its own cwd) where no file may grow past `limit` bytes."""
    cwd = tmp_path / "cwd"
    cwd.mkdir(exist_ok=True)
    return subprocess.run([sys.executable, "-I", "-c", _FULL_DISK, str(limit), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize("limit", [0, 100_000])
def test_export_to_a_full_disk_says_so_leaves_no_cut_off_shard_and_a_rerun_with_space_imports_whole(
        capsys, tmp_path, rng, limit):
    _warmed(tmp_path / "cache", rng, sides=(64, 64, 8))  # two 256x256 noise results: well over 100 kB in one shard
    out = tmp_path / "shards"
    done = _cli_with_file_limit(tmp_path, limit, "export", "--cache-dir", str(tmp_path / "cache"), "--out", str(out),
                                "--no-progress")
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and f"sr-augment: cannot write to {out}" in done.stderr, done.stderr
    assert "full" in done.stderr
    assert not [name for name in _files(out) if name.endswith(".tar")], _files(out)  # nothing under a final name
    assert not [name for name in _files(out) if name.endswith(".part")], _files(out)  # and no leftover
    code, report, err = _export(capsys, tmp_path / "cache", out)
    assert code == 0 and report["copied"] == 3, err
    code, report, err = _import(capsys, out, tmp_path / "node")
    assert code == 0 and (report["copied"], report["refused"], report["missing"]) == (3, 0, 0), err


def test_export_images_to_a_full_disk_says_so_without_a_traceback(tmp_path, rng):
    _warmed(tmp_path / "cache", rng, sides=(8, 8))
    out = tmp_path / "png"
    done = _cli_with_file_limit(tmp_path, 0, "export", "--cache-dir", str(tmp_path / "cache"), "--images", str(out),
                                "--no-progress")
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"sr-augment: cannot write to {out}" in done.stderr and "full" in done.stderr, done.stderr
    assert not (out / "index.csv").exists() and not [n for n in _files(out) if n.endswith(".part")], _files(out)


_CRASH = """
import os, sys
from sr_augment.cache.shards import ShardWriter
from sr_augment.cache.transfer import TransferReport, iter_records
writer = ShardWriter(sys.argv[2], prefix="crashed")
for key, record in iter_records(sys.argv[1], TransferReport()):
    writer.add(key, record)
sys.stdout.flush()
os._exit(0)  # killed mid-shard: no close, no clean-up
"""


def test_a_rerun_removes_what_a_crashed_writer_left_but_never_a_live_writers_shard(capsys, tmp_path, rng):
    _warmed(tmp_path / "cache", rng)
    out = tmp_path / "shards"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    subprocess.run([sys.executable, "-I", "-c", _CRASH, str(tmp_path / "cache"), str(out)], cwd=cwd, check=True,
                   timeout=120)
    left = _files(out)
    assert left and not [n for n in left if n.endswith(".tar")], left  # the crash left a temporary file only
    live = ShardWriter(str(out), prefix="live")  # another writer, still at work in the same folder
    for key, record in iter_records(tmp_path / "cache", TransferReport()):
        live.add(key, record)
        break
    code, report, err = _export(capsys, tmp_path / "cache", out)
    assert code == 0 and report["copied"] == 4, err
    assert not set(left) & set(_files(out))  # the crashed writer's leftover is gone
    assert live.close() == ["live-000000.tar"] and (out / "live-000000.tar").is_file()  # the live one finished
    code, report, err = _import(capsys, out, tmp_path / "node")
    assert code == 0 and (report["copied"], report["refused"], report["missing"]) == (4, 0, 0), err


# -- 3. terminal escapes in error messages ----------------------------------------------------------------

def test_merge_of_a_missing_source_and_import_of_a_glob_matching_nothing_print_names_escaped(capsys, tmp_path):
    for argv in (["merge", str(tmp_path / f"nope{ESC}"), "--into", str(tmp_path / "into"), "--no-progress"],
                 ["import", str(tmp_path / f"none{ESC}*.tar"), "--cache-dir", str(tmp_path / "node"), "--no-progress"]):
        with pytest.raises(SystemExit) as exited:
            main(argv)
        out, err = capsys.readouterr()
        message = str(exited.value.code) + out + err
        assert "\x1b" not in message and "\x07" not in message, message
        assert "\\x1b]0;PWNED\\x07" in message and ("no cache at" in message or "no .tar shards at" in message)


# -- 4. a key listed twice in a manifest ------------------------------------------------------------------

def test_an_identical_duplicate_manifest_row_is_harmless(capsys, tmp_path, rng):
    _warmed(tmp_path / "cache", rng)
    out = tmp_path / "shards"
    assert _export(capsys, tmp_path / "cache", out)[0] == 0
    rows = _edit_manifest(out, lambda r: r + [dict(r[0])])
    code, report, err = _import(capsys, out, tmp_path / "node")
    assert code == 0 and (report["copied"], report["refused"]) == (len(rows) - 1, 0), err
    code, report, err = _export(capsys, tmp_path / "cache", out)
    assert code == 0 and (report["copied"], report["present"]) == (0, len(rows) - 1), err


def test_a_key_listed_twice_with_different_rows_is_refused_by_name_and_the_others_import(capsys, tmp_path, rng):
    _warmed(tmp_path / "cache", rng)
    out = tmp_path / "shards"
    assert _export(capsys, tmp_path / "cache", out)[0] == 0
    # the conflicting row first, the true one last: "last row wins" would import it unnoticed
    rows = _edit_manifest(out, lambda r: [dict(r[0], json_sha256="0" * 64)] + r)
    code, report, err = _import(capsys, out, tmp_path / "node")
    assert code == 1 and (report["copied"], report["refused"]) == (len(rows) - 2, 1), (report, err)
    assert rows[0]["key"] in err or rows[0]["image_member"] in err, err
    assert "twice" in err, err
    code, report, err = _export(capsys, tmp_path / "cache", out)  # export rewrites that shard, then the folder imports
    assert code == 0 and report["copied"] == len(rows) - 1, (report, err)
    code, report, err = _import(capsys, out, tmp_path / "node2")
    assert code == 0 and (report["copied"], report["refused"]) == (len(rows) - 1, 0), err
