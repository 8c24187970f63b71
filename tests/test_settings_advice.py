"""Advice that fixes what it names: an error that says "run `sr-augment verify ... --repair`" is
followed literally (the exact command, in a fresh process) and the failing command then succeeds."""

from __future__ import annotations

import json
import re
import shlex
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sr_augment.cache import DatabaseDamaged, SRCache
from sr_augment.cli import main
from sr_augment.engines import BicubicEngine


def _images(folder: Path, rng, count: int, start: int = 0) -> list[np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    images = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(count)]
    for i, image in enumerate(images, start):
        Image.fromarray(image).save(folder / f"img{i}.png")
    return images


def _warm(folder: Path, cache_dir: Path) -> int:
    return main(["warm", str(folder), "--engine", "bicubic", "--cache-dir", str(cache_dir), "--no-progress"])


def _sql(cache_dir: Path, sql: str, args=(), name: str = "entries") -> list:
    con = sqlite3.connect(cache_dir / name / "cache.db")
    try:
        with con:
            return con.execute(sql, args).fetchall()
    finally:
        con.close()


def _follow(advice: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run the `sr-augment verify ...` command an error names, exactly as written, in a fresh process."""
    commands = re.findall(r"`(sr-augment verify [^`]*)`", advice)
    assert commands, f"the error names no verify command: {advice}"
    argv = shlex.split(commands[0])
    assert argv[0] == "sr-augment"
    cwd = tmp_path / "cwd"
    cwd.mkdir(exist_ok=True)
    return subprocess.run([sys.executable, "-I", "-m", "sr_augment", *argv[1:]], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def test_a_planted_setting_fails_warm_with_advice_that_when_followed_lets_warm_succeed(tmp_path, rng, capsys):
    folder, cache_dir = tmp_path / "photos", tmp_path / "team cache"  # a space: the advice must quote it
    first = _images(folder, rng, 3)
    assert _warm(folder, cache_dir) == 0
    _sql(cache_dir, "UPDATE Settings SET value = 'delete' WHERE key = 'sqlite_journal_mode'")
    _images(folder, rng, 2, start=3)
    capsys.readouterr()
    assert _warm(folder, cache_dir) != 0
    advice = capsys.readouterr().err
    assert "sqlite_journal_mode" in advice and str(cache_dir) in advice
    done = _follow(advice, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert _warm(folder, cache_dir) == 0
    assert _sql(cache_dir, "SELECT COUNT(*) FROM Cache") == [(5,)]
    assert _sql(cache_dir, "SELECT value FROM Settings WHERE key = 'sqlite_journal_mode'") == [("wal",)]
    with SRCache(cache_dir) as cache:  # the entries warmed before the planted setting were kept
        assert all(cache.get(image, BicubicEngine()) is not None for image in first)


def test_verify_reports_bad_settings_and_repair_resets_them_to_the_librarys_values_keeping_entries(
        tmp_path, rng, capsys):
    folder, cache_dir = tmp_path / "photos", tmp_path / "cache"
    _images(folder, rng, 3)
    assert _warm(folder, cache_dir) == 0
    _sql(cache_dir, "INSERT INTO Settings VALUES ('sqlite_user_version', 7)")  # diskcache would run it as PRAGMA
    _sql(cache_dir, "UPDATE Settings SET value = 'huge' WHERE key = 'cull_limit'")
    _sql(cache_dir, "UPDATE Settings SET value = 'evil' WHERE key = 'eviction_policy'", name="meta")
    capsys.readouterr()
    assert main(["verify", "--cache-dir", str(cache_dir), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["settings"] == 3 and report["ok"] == 3 and not report["clean"]
    reasons = " ".join(p["reason"] for p in report["problems"] if p["kind"] == "settings")
    assert all(name in reasons for name in ("sqlite_user_version", "cull_limit", "eviction_policy"))
    assert main(["verify", "--cache-dir", str(cache_dir), "--repair", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["repaired"]
    assert main(["verify", "--cache-dir", str(cache_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["settings"] == 0
    settings = dict(_sql(cache_dir, "SELECT key, value FROM Settings"))
    assert "sqlite_user_version" not in settings and settings["cull_limit"] == 10
    assert dict(_sql(cache_dir, "SELECT key, value FROM Settings", name="meta"))["eviction_policy"] == "none"
    assert _sql(cache_dir, "SELECT COUNT(*) FROM Cache") == [(3,)]
    assert _sql(cache_dir, "PRAGMA user_version") == [(0,)]  # the planted value never ran
    _images(folder, rng, 1, start=3)
    assert _warm(folder, cache_dir) == 0


def test_a_damaged_counters_database_is_fixed_by_the_command_its_error_names(tmp_path, rng, capsys):
    folder, cache_dir = tmp_path / "photos", tmp_path / "cache"
    first = _images(folder, rng, 3)
    assert _warm(folder, cache_dir) == 0
    (cache_dir / "meta" / "cache.db").write_bytes(b"garbage, not a database" * 200)
    with pytest.raises(DatabaseDamaged) as info:
        SRCache(cache_dir)
    done = _follow(str(info.value), tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    with SRCache(cache_dir) as cache:  # the counters are gone, the entries are not
        assert all(cache.get(image, BicubicEngine()) is not None for image in first)
    _images(folder, rng, 1, start=3)
    assert _warm(folder, cache_dir) == 0
    assert _sql(cache_dir, "SELECT COUNT(*) FROM Cache") == [(4,)]
