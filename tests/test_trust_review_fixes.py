"""Fixes of the review "Trust, round 2" (cache core and CLI), each checked with real files and real processes.

- A `writers.lock` planted as a directory or a FIFO: a writer refuses it with an error naming the file and
  the fix (never blocking, never a bare traceback); `verify` reports it; `verify --repair` and `clear`
  remove it, after which a warm works again.
- A warm with nothing to generate on a full disk (RLIMIT_FSIZE 0, SIGXFSZ ignored: real, not patched)
  reads its hits without opening a writer: exit 0, everything cached.
- `--size-limit 0` / `-5`: an argparse error (exit 2), no traceback, for every command that takes it.
- Names with terminal escapes (ESC, BEL, CSI) never reach the terminal raw from any command's output.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sr_augment.cache import SRCache

resource = pytest.importorskip("resource", reason="RLIMIT_FSIZE needs a POSIX system")

_FULL_DISK = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing us
resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
"""
_CLI = "from sr_augment.cli import main\nsys.exit(main(sys.argv[1:]))\n"
REMEMBERED = "sr_augment.engines.bicubic:BicubicEngine"
"""Bicubic as a `module:Class` engine: `warm` records its identity in the cache (plain bicubic needs none)."""
ESCAPES = "\x1b]0;PWNED\x07\x1b[31mred\x9b2J"
"""An OSC title change (ESC ... BEL), an SGR colour (ESC [) and a C1 CSI: none may reach a terminal raw."""


def _cli(tmp_path: Path, *args: str, full_disk: bool = False) -> subprocess.CompletedProcess:
    """`sr-augment ARGS` in a fresh interpreter (-I, its own working folder), on a full disk if asked."""
    cwd = tmp_path / "cwd"
    cwd.mkdir(exist_ok=True)
    code = ("import sys\n" + (textwrap.dedent(_FULL_DISK) if full_disk else "")) + _CLI
    return subprocess.run([sys.executable, "-I", "-c", code, *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})


def _images(folder: Path, count: int, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def _warmed_cache(tmp_path: Path, data: Path, engine: str = "bicubic") -> Path:
    cache = tmp_path / "cache"
    done = _cli(tmp_path, "warm", data, "--engine", engine, "--cache-dir", cache, "--no-progress")
    assert done.returncode == 0, done.stderr
    return cache


def _plant_lock(cache: Path, kind: str) -> Path:
    lock = cache / "writers.lock"
    if lock.exists():
        lock.unlink()
    if kind == "dir":
        lock.mkdir()
        (lock / "inside").write_text("planted\n")
    else:
        os.mkfifo(lock)
    return lock


# -- 1. a writers.lock that is a directory or a FIFO ----------------------------------------------------------
@pytest.mark.parametrize("kind", ["dir", "fifo"])
def test_a_non_regular_writer_lock_is_refused_by_name_reported_by_verify_and_removed_by_repair(tmp_path, kind):
    data = _images(tmp_path / "data", 2)
    cache = _warmed_cache(tmp_path, data)
    lock = _plant_lock(cache, kind)
    new = _images(tmp_path / "new", 1, seed=9)

    warm = _cli(tmp_path, "warm", new, "--engine", "bicubic", "--cache-dir", cache, "--no-progress")
    assert warm.returncode == 1
    assert str(lock) in warm.stderr and "not a regular file" in warm.stderr, warm.stderr
    assert "verify --repair" in warm.stderr, "the error names the fix"
    assert "Traceback" not in warm.stderr and "IsADirectoryError" not in warm.stderr and "Errno" not in warm.stderr

    check = _cli(tmp_path, "verify", "--cache-dir", cache, "--no-progress", "--json")
    report = json.loads(check.stdout)
    assert check.returncode == 1 and not report["clean"], check.stdout
    assert any(p["where"] == str(lock) for p in report["problems"]), report["problems"]
    assert os.path.lexists(lock), "verify without --repair changes nothing"

    repair = _cli(tmp_path, "verify", "--repair", "--cache-dir", cache, "--no-progress", "--json")
    assert repair.returncode == 0 and json.loads(repair.stdout)["repaired"], repair.stdout + repair.stderr
    assert not os.path.lexists(lock) or lock.is_file() and not lock.is_symlink()
    assert _cli(tmp_path, "verify", "--cache-dir", cache, "--no-progress").returncode == 0

    again = _cli(tmp_path, "warm", new, "--engine", "bicubic", "--cache-dir", cache, "--no-progress", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout.splitlines()[-1])["generated"] == 1


@pytest.mark.parametrize("kind", ["dir", "fifo"])
def test_clear_removes_a_non_regular_writer_lock(tmp_path, kind):
    cache = _warmed_cache(tmp_path, _images(tmp_path / "data", 2))
    lock = _plant_lock(cache, kind)
    done = _cli(tmp_path, "clear", "--yes", "--cache-dir", cache)
    assert done.returncode == 0, done.stderr
    assert "removed 2 entries" in done.stdout
    assert not os.path.lexists(lock) or lock.is_file() and not lock.is_symlink()
    warm = _cli(tmp_path, "warm", tmp_path / "data", "--engine", "bicubic", "--cache-dir", cache, "--no-progress")
    assert warm.returncode == 0, warm.stderr


# -- 2. a warm with nothing to generate on a full disk --------------------------------------------------------
def test_a_fully_cached_warm_on_a_full_disk_reads_its_hits_and_succeeds(tmp_path):
    data = _images(tmp_path / "data", 3)
    cache = _warmed_cache(tmp_path, data, REMEMBERED)
    identities = sorted(p.name for p in (cache / "identities").iterdir())
    assert identities, "the engine identity is recorded"
    for leftover in cache.rglob("cache.db-*"):  # closed cleanly: a new reader would have to create them
        leftover.unlink()

    done = _cli(tmp_path, "warm", data, "--engine", REMEMBERED, "--cache-dir", cache, "--no-progress", "--json",
                full_disk=True)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    assert (report["cached"], report["generated"], report["failed"], report["error"]) == (3, 0, 0, None)
    assert sorted(p.name for p in (cache / "identities").iterdir()) == identities

    # one image missing: now it must write, and says the disk is full (nothing lost)
    _images(tmp_path / "data2", 1, seed=7)
    (tmp_path / "data2" / "0.png").rename(data / "new.png")
    missing = _cli(tmp_path, "warm", data, "--engine", REMEMBERED, "--cache-dir", cache, "--no-progress", "--json",
                   full_disk=True)
    assert missing.returncode == 1
    assert "full" in missing.stderr and "Traceback" not in missing.stderr, missing.stderr
    with SRCache(cache, read_only=True) as opened:
        assert len(opened) == 3


def test_warm_does_not_rewrite_an_unchanged_engine_identity_record(tmp_path):
    data = _images(tmp_path / "data", 1)
    cache = _warmed_cache(tmp_path, data, REMEMBERED)
    (record,) = (cache / "identities").iterdir()
    before = os.stat(record)
    done = _cli(tmp_path, "warm", data, "--engine", REMEMBERED, "--cache-dir", cache, "--no-progress")
    assert done.returncode == 0, done.stderr
    after = os.stat(record)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns), "rewritten though unchanged"


# -- 3. a size limit that is not positive ---------------------------------------------------------------------
@pytest.mark.parametrize("value", ["0", "-5", "lots"])
@pytest.mark.parametrize("command", ["warm", "import", "merge"])
def test_a_size_limit_that_is_not_a_positive_number_is_an_argparse_error(tmp_path, command, value):
    data = _images(tmp_path / "data", 1)
    args = {"warm": ["warm", data, "--engine", "bicubic", "--cache-dir", tmp_path / "c"],
            "import": ["import", tmp_path, "--cache-dir", tmp_path / "c"],
            "merge": ["merge", tmp_path / "other", "--into", tmp_path / "c"]}[command]
    done = _cli(tmp_path, *args, f"--size-limit={value}", "--no-progress")
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "--size-limit" in done.stderr, done.stderr
    assert "positive" in done.stderr
    assert not (tmp_path / "c").exists(), "nothing is created for a refused command"


# -- 4. terminal escapes in names -----------------------------------------------------------------------------
def _raw_controls(text: str) -> list[str]:
    return sorted({c for c in text if (not c.isprintable()) and c not in "\n\t"})


def test_no_command_prints_a_raw_terminal_escape_from_a_name(tmp_path):
    data = _images(tmp_path / "data", 1)
    good = _warmed_cache(tmp_path, data)
    bad = tmp_path / f"bad{ESCAPES}"
    bad.mkdir()
    (bad / "entries").mkdir()
    (bad / "entries" / "cache.db").write_bytes(b"garbage" * 200)
    bad_data = tmp_path / f"data{ESCAPES}"
    bad_data.mkdir()
    (bad_data / f"x{ESCAPES}.png").write_bytes(b"not a png")
    cleared = tmp_path / f"clear{ESCAPES}"
    cases = {
        "verify-bad-db": ["verify", "--cache-dir", bad, "--no-progress"],
        "verify-repair-bad-db": ["verify", "--repair", "--cache-dir", bad, "--no-progress"],
        "clear": ["clear", "--yes", "--cache-dir", cleared],
        "warm-engine-file": ["warm", data, "--engine", tmp_path / f"w{ESCAPES}.pth", "--cache-dir", good,
                             "--no-progress"],
        "warm-set": ["warm", data, "--engine", "bicubic", "--set", f"k{ESCAPES}=v{ESCAPES}", "--cache-dir", good,
                     "--no-progress"],
        "warm-bad-file": ["warm", bad_data, "--engine", "bicubic", "--cache-dir", good, "--no-progress"],
        "eval-sr": ["eval-sr", bad_data, "--engine", "bicubic", "--cache-dir", good, "--out", tmp_path / "eval",
                    "--no-progress"],
        "import-none": ["import", tmp_path / f"none{ESCAPES}*.tar", "--cache-dir", good, "--no-progress"],
        "merge-missing": ["merge", tmp_path / f"nope{ESCAPES}", "--into", good, "--no-progress"],
        "argparse": ["warm", data, "--scale", ESCAPES],
        "argparse-choice": ["warm", data, "--mode", ESCAPES],
    }
    leaked = {}
    for name, args in cases.items():
        done = _cli(tmp_path, *args)
        assert "Traceback" not in done.stderr, (name, done.stderr)
        raw = _raw_controls(done.stdout + done.stderr)
        if raw:
            leaked[name] = (raw, (done.stdout + done.stderr)[-200:])
    assert not leaked, leaked
