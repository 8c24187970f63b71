"""Crash safety of `sr-augment warm`: SIGKILL at a random point, SIGINT/SIGTERM, and a full disk.

Each test runs the real CLI in a subprocess with `faults:SlowEngine` (bicubic that takes a while and
logs every generation), then reopens the cache and checks every stored entry against the pixels it
must hold: nothing partial, nothing lost, and a rerun generates exactly what is missing.
"""

from __future__ import annotations

import json
import os
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from faults import SlowEngine, read_log
from sr_augment.cache import SRCache
from sr_augment.cache.codec import decode
from sr_augment.engines.bicubic import BicubicEngine
from sr_augment.images import bicubic_resize

TESTS = Path(__file__).resolve().parent


def _images(folder: Path, rng, count: int, size: int = 8) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    pixels = {}
    for i in range(count):
        pixels[f"{i:03d}.png"] = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels[f"{i:03d}.png"]).save(folder / f"{i:03d}.png")
    return pixels


def _start_warm(folder, cache_dir, log, *extra, preexec_fn=None) -> subprocess.Popen:
    env = {**os.environ, "SR_AUGMENT_TEST_LOG": str(log),
           "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "sr_augment.cli", "warm", str(folder), "--engine", "faults:SlowEngine",
               "--cache-dir", str(cache_dir), "--json", "--no-progress", *extra]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=preexec_fn)


def _finish(process: subprocess.Popen, timeout: float = 120) -> tuple[int, dict | None, str]:
    out, err = process.communicate(timeout=timeout)
    lines = out.strip().splitlines()
    return process.returncode, json.loads(lines[-1]) if lines else None, err


def _wait_for_done_lines(log: Path, count: int, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while sum(word == "done" for word, _, _ in read_log(log)) < count:
        assert process.poll() is None, f"warm ended early: {process.communicate()}"
        assert time.monotonic() < deadline, "warm made no progress"
        time.sleep(0.02)


def _check_every_entry(cache_dir, pixels: dict[str, np.ndarray], variants: int) -> int:
    """Every stored entry decodes to exactly the pixels its key stands for; returns the entry count."""
    engine = SlowEngine()
    with SRCache(cache_dir) as cache:
        expected = {cache.key(image, engine, variant=v): bicubic_resize(image, 4)
                    for image in pixels.values() for v in range(variants)}
        keys = cache.keys()
        for key in keys:
            assert key in expected, f"unexpected key {key}"
            assert np.array_equal(decode(cache.record(key)), expected[key]), key
        return len(keys)


@pytest.mark.slow  # warm in subprocesses
def test_sigkill_at_random_points_then_rerun_resumes_with_every_entry_intact(tmp_path, rng):
    pixels = _images(tmp_path / "data", rng, 30)  # 30 batches of 0.1 s: a loaded machine still kills mid-run
    cache_dir, log = tmp_path / "cache", tmp_path / "log"
    chooser = random.Random(int(rng.integers(1 << 30)))
    total = len(pixels) * 2
    for _ in range(2):  # two kills at different points, each followed by a check
        before = _check_every_entry(cache_dir, pixels, 2) if cache_dir.exists() else 0
        done_before = sum(word == "done" for word, _, _ in read_log(log))
        process = _start_warm(tmp_path / "data", cache_dir, log, "--variants", "2", "--batch-size", "2",
                              "--set", "delay=0.05")
        _wait_for_done_lines(log, done_before + 2, process)  # this run stored at least one batch
        time.sleep(chooser.uniform(0.0, 0.3))
        process.kill()  # SIGKILL: no handler runs, whatever was in flight is cut off
        process.communicate()
        stored = _check_every_entry(cache_dir, pixels, 2)
        assert before < stored < total, (before, stored)
    log.unlink()
    code, report, err = _finish(_start_warm(tmp_path / "data", cache_dir, log, "--variants", "2", "--batch-size", "2",
                                            "--set", "delay=0"))
    assert code == 0, err
    assert report["generated"] == total - stored and report["cached"] == stored  # only what was missing
    assert sorted(seed for word, seed, _ in read_log(log) if word == "start") == \
        sorted(seed for word, seed, _ in read_log(log) if word == "done")
    assert len(read_log(log)) == 2 * (total - stored)
    assert _check_every_entry(cache_dir, pixels, 2) == total


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
@pytest.mark.slow  # warm in subprocesses
def test_sigterm_and_sigint_finish_the_batch_in_flight_print_the_summary_and_exit_nonzero(tmp_path, rng, sig, code):
    pixels = _images(tmp_path / "data", rng, 24)  # 8 batches of 0.45 s: the signal lands long before the end
    cache_dir, log = tmp_path / "cache", tmp_path / "log"
    process = _start_warm(tmp_path / "data", cache_dir, log, "--batch-size", "3", "--set", "delay=0.15")
    _wait_for_done_lines(log, 3, process)
    process.send_signal(sig)  # most likely mid-batch: the engine sleeps 0.45 s per batch
    returncode, report, err = _finish(process)
    assert returncode == code
    assert report["interrupted"] and report["stopped_by"] == sig.name
    assert f"interrupted ({sig.name})" in err and "run the same command again to resume" in err
    started = [seed for word, seed, _ in read_log(log) if word == "start"]
    finished = [seed for word, seed, _ in read_log(log) if word == "done"]
    assert started == finished  # the batch in flight was finished, not dropped
    assert report["generated"] == len(finished) < len(pixels)
    assert _check_every_entry(cache_dir, pixels, 1) == len(finished)  # ... and stored


@pytest.mark.skipif(not hasattr(resource, "RLIMIT_FSIZE"), reason="needs RLIMIT_FSIZE (POSIX)")
@pytest.mark.slow  # warm in subprocesses
def test_a_full_disk_stops_warm_with_a_clear_error_and_leaves_the_cache_readable(tmp_path, rng):
    """The file-size limit makes every write past 300 kB fail (EFBIG), as a full disk does (ENOSPC)."""
    sizes = {"0.png": 8, "1.png": 8, "2.png": 8, "3.png": 8,  # small results: stored inline in SQLite
             "4-big.png": 160,  # its 640x640 result does not fit under the limit
             "5.png": 8, "6.png": 8}
    (tmp_path / "data").mkdir()
    pixels = {name: rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for name, side in sizes.items()}
    for name, image in pixels.items():
        Image.fromarray(image).save(tmp_path / "data" / name)
    cache_dir, log = tmp_path / "cache", tmp_path / "log"
    SRCache(cache_dir).close()  # the folders exist before the limit

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG from write() instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))

    code, report, err = _finish(_start_warm(tmp_path / "data", cache_dir, log, "--batch-size", "1", "--set", "delay=0",
                                            preexec_fn=limit_file_size))
    assert code == 1, err
    assert "cannot write to the sr-augment cache" in err and str(cache_dir) in err and "full" in err
    assert report["error"] and report["generated"] == 4  # stopped at the big one; the two after it never ran
    assert list(cache_dir.rglob("*.val")) == []  # the half-written value file was removed
    assert _check_every_entry(cache_dir, pixels, 1) == 4
    code, report, err = _finish(_start_warm(tmp_path / "data", cache_dir, log, "--batch-size", "1", "--set", "delay=0"))
    assert code == 0 and report["generated"] == 3 and report["cached"] == 4, err
    assert _check_every_entry(cache_dir, pixels, 1) == 7


def test_counter_writes_that_fail_never_fail_warm_or_a_read(tmp_path, rng, monkeypatch, capsys):
    """Bookkeeping is best effort: with every counter write failing (a full disk under the stats
    database), warm still stores and prints its summary, and reads still hit."""
    import sqlite3

    import diskcache

    from sr_augment.cli import main

    pixels = _images(tmp_path / "data", rng, 3)

    def disk_full(*args, **kwargs):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(diskcache.Cache, "incr", disk_full)
    monkeypatch.setattr("sr_augment.cache.counters._FLUSH_EVERY", 1)  # flush on every read and write
    code = main(["warm", str(tmp_path / "data"), "--engine", "bicubic", "--cache-dir", str(tmp_path / "cache"),
                 "--json", "--no-progress"])
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and report["generated"] == 3
    with SRCache(tmp_path / "cache") as cache:
        for image in pixels.values():
            assert np.array_equal(cache.get(image, BicubicEngine()), bicubic_resize(image, 4))
