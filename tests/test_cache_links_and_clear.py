"""Trust, round 2: links planted in the value-file tree, `clear` racing a writer, orphan value files.

- A symbolic link in place of a value folder (diskcache's `xx/` or `xx/yy/`) is never followed by a write:
  the link is replaced by a real folder inside the cache; `clear` and `verify --repair` remove such links.
- `clear` refuses while a writer (here a real `sr-augment warm` process) holds the cache, naming it; the
  warm then finishes with every entry it reports really stored.
- `verify --repair` removes value files no row names as soon as no writer can have one in flight.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sr_augment.cache import SRCache
from sr_augment.cache.disk import SafeDisk
from sr_augment.cli import main
from sr_augment.engines import BicubicEngine

TESTS = Path(__file__).resolve().parent
VAL = "0" * 28 + ".val"


def _noise_folder(folder: Path, rng, count: int, side: int = 40) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):  # 160x160 noise results: each in a value file (over diskcache's 32 KiB)
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def _warm(capsys, folder, cache_dir, *extra) -> tuple[int, dict, str]:
    code = main(["warm", str(folder), "--engine", "bicubic", "--cache-dir", str(cache_dir), "--json", "--no-progress",
                 *extra])
    out, err = capsys.readouterr()
    return code, json.loads(out.strip().splitlines()[-1]), err


def _verify(capsys, cache_dir, *extra) -> tuple[int, dict]:
    code = main(["verify", "--cache-dir", str(cache_dir), "--json", *extra])
    return code, json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def _links(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_symlink())


# ---------------------------------------------------------------------------------------------------------
# links in place of value folders
# ---------------------------------------------------------------------------------------------------------
def test_links_planted_for_every_first_level_value_folder_are_never_written_through(capsys, tmp_path, rng):
    _noise_folder(tmp_path / "data", rng, 3)
    cache_dir, outside = tmp_path / "cache", tmp_path / "outside"
    outside.mkdir()
    (cache_dir / "entries").mkdir(parents=True)
    for i in range(256):  # every `xx` a write can pick
        (cache_dir / "entries" / f"{i:02x}").symlink_to(outside, target_is_directory=True)
    code, report, err = _warm(capsys, tmp_path / "data", cache_dir)
    assert code == 0 and report["generated"] == 3, err
    assert _files(outside) == []  # nothing written outside the cache
    with SRCache(cache_dir) as cache:
        assert len(cache) == 3
    code, report, _ = _warm(capsys, tmp_path / "data", cache_dir)
    assert code == 0 and report["cached"] == 3 and report["generated"] == 0  # stored inside, so not redone
    assert _files(outside) == []


def test_a_link_in_place_of_a_second_level_value_folder_is_replaced_not_followed(tmp_path):
    entries, outside = tmp_path / "cache" / "entries", tmp_path / "outside"
    outside.mkdir()
    (entries / "ab").mkdir(parents=True)
    (entries / "ab" / "cd").symlink_to(outside, target_is_directory=True)
    disk = SafeDisk(str(entries))
    # the write diskcache's Disk.store makes for a value file named ab/cd/<hex>.val
    size = disk._write(os.path.join(str(entries), "ab", "cd", VAL), io.BytesIO(b"x" * 100), "xb")
    assert size == 100
    assert list(outside.iterdir()) == []
    assert not (entries / "ab" / "cd").is_symlink() and (entries / "ab" / "cd" / VAL).read_bytes() == b"x" * 100


def test_a_value_file_name_planted_as_a_link_is_not_written_through(tmp_path):
    entries, victim = tmp_path / "cache" / "entries", tmp_path / "victim.txt"
    victim.write_text("not yours")
    (entries / "ab" / "cd").mkdir(parents=True)
    (entries / "ab" / "cd" / VAL).symlink_to(victim)
    with pytest.raises(OSError):
        SafeDisk(str(entries))._write(os.path.join(str(entries), "ab", "cd", VAL), io.BytesIO(b"x"), "xb")
    assert victim.read_text() == "not yours"


def _unused_hex_name(folder: Path) -> str:
    """A two-hex-digit folder name (diskcache's value-folder shape) that `folder` does not hold."""
    return next(name for name in (f"{i:02x}" for i in range(255, -1, -1)) if not (folder / name).exists())


def test_verify_repair_and_clear_remove_links_planted_in_the_value_tree(capsys, tmp_path, rng):
    _noise_folder(tmp_path / "data", rng, 2)
    cache_dir, outside = tmp_path / "cache", tmp_path / "outside"
    (outside / "ef").mkdir(parents=True)
    (outside / "ef" / VAL).write_bytes(b"keep")
    assert _warm(capsys, tmp_path / "data", cache_dir)[0] == 0
    entries = cache_dir / "entries"
    first = next(p for p in entries.iterdir() if p.is_dir())
    (entries / "zz").mkdir()  # not a diskcache name: left alone
    # diskcache-shaped names the warm did not use (its two entries' folders are random hex: any fixed
    # name would collide with them now and then)
    planted = [first / _unused_hex_name(first), entries / _unused_hex_name(entries)]
    for link in planted:
        link.symlink_to(outside, target_is_directory=True)
    code, report = _verify(capsys, cache_dir)
    assert code == 1 and report["untrusted"] == 2, report
    assert all(str(link) in json.dumps(report["problems"]) for link in planted)
    code, report = _verify(capsys, cache_dir, "--repair")
    assert code == 0 and report["repaired"], report
    assert _links(cache_dir) == [] and (outside / "ef" / VAL).read_bytes() == b"keep"
    code, report = _verify(capsys, cache_dir)
    assert code == 0 and report["ok"] == 2, report

    for link in planted:
        link.parent.mkdir(exist_ok=True)
        link.symlink_to(outside, target_is_directory=True)
    assert main(["clear", "--cache-dir", str(cache_dir), "--yes"]) == 0
    assert _links(cache_dir) == [] and (outside / "ef" / VAL).read_bytes() == b"keep"
    assert (entries / "zz").is_dir()


# ---------------------------------------------------------------------------------------------------------
# clear while a writer runs
# ---------------------------------------------------------------------------------------------------------
class GatedEngine(BicubicEngine):
    """Bicubic that, on its first batch, creates the file `started` and waits until the file `go` exists
    (the test's event between two processes). Built by spec in the `sr-augment warm` subprocess."""

    name = "gated-bicubic"

    def __init__(self, scale: int = 4, gate: str = ""):
        super().__init__(scale)
        self.gate, self.waited = Path(gate), False

    def upscale(self, images, seeds):
        if not self.waited:
            self.waited = True
            (self.gate / "started").touch()
            deadline = time.monotonic() + 120  # a safety net against a hang, not a timing assertion
            while not (self.gate / "go").exists() and time.monotonic() < deadline:
                time.sleep(0.02)
        return super().upscale(images, seeds)


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
            "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _wait_for(path: Path, process: subprocess.Popen) -> None:
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"the warm ended before its first batch: {process.communicate()}")
        time.sleep(0.02)


def test_clear_refuses_while_a_warm_writes_and_the_warm_stores_all_it_reports(tmp_path, rng):
    _noise_folder(tmp_path / "data", rng, 6)
    cache_dir, gate = tmp_path / "cache", tmp_path / "gate"
    gate.mkdir()
    warm = subprocess.Popen(
        [sys.executable, "-P", "-m", "sr_augment", "warm", str(tmp_path / "data"), "--engine",
         "test_cache_links_and_clear:GatedEngine", "--set", f"gate={gate}", "--batch-size", "2",
         "--cache-dir", str(cache_dir), "--json", "--no-progress"],
        cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(gate / "started", warm)
        clear = subprocess.run([sys.executable, "-P", "-m", "sr_augment", "clear", "--cache-dir", str(cache_dir), "--yes"],
                               cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120)
    finally:
        (gate / "go").touch()
        out, err = warm.communicate(timeout=120)
    assert clear.returncode != 0, clear.stdout
    assert str(cache_dir) in clear.stderr and "in use" in clear.stderr and str(warm.pid) in clear.stderr, clear.stderr
    assert warm.returncode == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["generated"] == 6
    with SRCache(cache_dir) as cache:  # everything it reported is there, and nothing else is on disk
        assert len(cache) == 6
        assert all(cache.get(np.asarray(Image.open(p)), BicubicEngine()) is not None
                   for p in sorted((tmp_path / "data").glob("*.png")))
    assert len(list((cache_dir / "entries").rglob("*.val"))) == 6
    done = subprocess.run([sys.executable, "-P", "-m", "sr_augment", "clear", "--cache-dir", str(cache_dir), "--yes"],
                          cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "removed 6 entries" in done.stdout, done.stderr
    assert list((cache_dir / "entries").rglob("*.val")) == []


def test_an_open_writer_in_this_process_blocks_clear_until_it_is_closed(capsys, tmp_path, rng):
    image = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    cache_dir = tmp_path / "cache"
    writer = SRCache(cache_dir)
    writer.get_or_create(image, BicubicEngine())
    assert main(["clear", "--cache-dir", str(cache_dir), "--yes"]) == 1
    assert "in use" in capsys.readouterr().err
    assert len(writer) == 1
    writer.close()
    assert main(["clear", "--cache-dir", str(cache_dir), "--yes"]) == 0
    with SRCache(cache_dir) as cache:
        assert len(cache) == 0
        cache.get_or_create(image, BicubicEngine())
        assert cache.clear() == 1  # an instance clears itself: its own writer does not count


# ---------------------------------------------------------------------------------------------------------
# orphan value files
# ---------------------------------------------------------------------------------------------------------
def test_verify_repair_removes_fresh_orphans_when_no_writer_is_running(capsys, tmp_path, rng):
    _noise_folder(tmp_path / "data", rng, 3)
    cache_dir = tmp_path / "cache"
    assert _warm(capsys, tmp_path / "data", cache_dir)[0] == 0
    entries = cache_dir / "entries"
    real = sorted(entries.rglob("*.val"))
    orphans = []
    for i, source in enumerate(real):  # as a clear behind a writer's back, or a lost database, leaves them
        orphan = entries / "ee" / f"{i:02x}" / VAL
        orphan.parent.mkdir(parents=True, exist_ok=True)
        orphan.write_bytes(source.read_bytes())
        orphans.append(orphan)
    code, report = _verify(capsys, cache_dir)
    assert code == 1 and report["orphans"] == 3, report
    code, report = _verify(capsys, cache_dir, "--repair")
    assert code == 0 and report["repaired"] and report["orphans"] == 3
    assert not any(o.exists() for o in orphans) and not (entries / "ee").exists()
    assert sorted(entries.rglob("*.val")) == real
    assert _verify(capsys, cache_dir)[1]["ok"] == 3
