"""`accelerate launch -m sr_augment warm`: pixel-balanced shares, one cache written by every process,
one summary of the whole job, and a rerun that finishes what a killed process left.

The launches are real (`accelerate launch --multi_gpu --num_processes 2`: on this GPU-less machine the
processes run on the CPU over gloo) with `faults:SlowEngine`, which logs each generation with its
process id, so the test sees which process generated which key.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import socket
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
from sr_augment.images import bicubic_resize, iter_image_files, load_image
from sr_augment.warm.accelerate import accelerate_job, merge_reports
from sr_augment.warm.balance import balanced_shares, image_pixels, split_by_pixels

TESTS = Path(__file__).resolve().parent
SIZES = [(8, 8), (16, 8), (8, 24), (12, 12), (8, 8), (20, 16), (8, 8), (10, 10), (8, 16), (16, 16), (24, 24), (8, 12)]


def _images(folder: Path, sizes=SIZES) -> list[Path]:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    return sorted(folder.glob("*.png"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env(tmp_path: Path, log: Path) -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
            "SR_AUGMENT_TEST_LOG": str(log), "HF_HOME": str(tmp_path / "hf"),  # no user accelerate config
            "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _launch(tmp_path, folder, cache_dir, log, *, delay=0.05, variants=2, batch_size=2, **popen):
    pytest.importorskip("accelerate")
    command = [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", "--multi_gpu",
               "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(_free_port()),
               "-m", "sr_augment", "warm", str(folder), "--engine", "faults:SlowEngine", "--set", f"delay={delay}",
               "--variants", str(variants), "--batch-size", str(batch_size), "--cache-dir", str(cache_dir),
               "--json", "--no-progress"]
    return subprocess.Popen(command, env=_env(tmp_path, log), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **popen)


def _summaries(stdout: str) -> list[dict]:
    found = []
    for line in stdout.splitlines():
        try:
            found.append(json.loads(line))
        except ValueError:
            continue
    return [s for s in found if isinstance(s, dict) and "generated" in s]


def _expected_seeds(files, variants: int, scratch: Path) -> dict[Path, set[int]]:
    """The seeds (one per entry) of each file, from a scratch cache: the log names entries by seed."""
    with SRCache(scratch) as cache:
        return {p: {r.seed for r in cache.plan([load_image(p)], SlowEngine(), "upscale", variants)} for p in files}


def _stored(cache_dir: Path, files, variants: int) -> tuple[list[str], dict[str, np.ndarray]]:
    """Every key in the cache, and the expected result of every entry of `files`."""
    engine = SlowEngine()
    with SRCache(cache_dir) as cache:
        keys = cache.keys()
        expected = {cache.key(load_image(p), engine, variant=v): bicubic_resize(load_image(p), 4)
                    for p in files for v in range(variants)}
        for key in keys:
            assert np.array_equal(decode(cache.record(key)), expected[key])  # intact and the right pixels
    return keys, expected


def test_shares_are_balanced_by_pixels_largest_first_and_the_same_every_time():
    weights = [100, 1, 1, 1, 1, 1, 60, 40]  # by file count, a 4 + 4 split would put 100 and 60 together
    shares = balanced_shares(weights, 2)
    assert shares == balanced_shares(weights, 2)
    assert sorted(i for share in shares for i in share) == list(range(len(weights)))  # each file exactly once
    assert shares == [[0, 1, 3, 5], [2, 4, 6, 7]]  # 103 vs 102 pixels: largest first, ties to the lower share
    assert balanced_shares([], 3) == [[], [], []] and balanced_shares([5], 3) == [[0], [], []]
    with pytest.raises(ValueError, match="must be >= 1"):
        balanced_shares([1], 0)


def test_image_sizes_come_from_headers_and_an_unreadable_file_still_gets_a_share(tmp_path):
    files = _images(tmp_path / "imgs", [(10, 30), (20, 20)])
    truncated = tmp_path / "imgs" / "cut.png"  # header intact, pixel data cut off: decoding would fail
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:60])
    garbage = tmp_path / "imgs" / "junk.png"
    garbage.write_bytes(b"not an image")
    assert [image_pixels(p) for p in (*files, truncated, garbage)] == [300, 400, 2000, 0]
    shares = split_by_pixels([*files, truncated, garbage], 2)
    assert shares == [[truncated], [*files, garbage]]


def test_the_merged_report_sums_every_process_and_sorts_failures_by_path():
    ranks = [{"images": 3, "generated": 4, "cached": 2, "failed": 1, "failures": [{"path": "b", "error": "x"}],
              "seconds": 1.0, "interrupted": False, "stopped_by": None, "error": None},
             {"images": 2, "generated": 1, "cached": 3, "failed": 1, "failures": [{"path": "a", "error": "y"}],
              "seconds": 2.0, "interrupted": True, "stopped_by": "SIGTERM", "error": None}]
    merged = merge_reports(ranks)
    assert (merged.images, merged.generated, merged.cached, merged.failed, merged.processes) == (5, 5, 5, 2, 2)
    assert [f["path"] for f in merged.failures] == ["a", "b"]
    assert merged.interrupted and merged.stopped_by == "SIGTERM"
    assert [r["generated"] for r in merged.ranks] == [4, 1]


def test_a_plain_warm_is_not_distributed_and_imports_neither_accelerate_nor_torch(tmp_path, monkeypatch):
    for name in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert accelerate_job() is None
    _images(tmp_path / "imgs", SIZES[:3])
    code = ("import json, sys; from sr_augment.cli import main; "
            f"rc = main(['warm', {str(tmp_path / 'imgs')!r}, '--engine', 'bicubic', '--cache-dir', "
            f"{str(tmp_path / 'cache')!r}, '--json', '--no-progress']); "
            "print(json.dumps({'rc': rc, 'loaded': sorted(m for m in ('accelerate', 'torch') if m in sys.modules)}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={k: v for k, v in os.environ.items() if k != "WORLD_SIZE"})
    summary, result = [json.loads(line) for line in out.stdout.strip().splitlines()[-2:]]
    assert result == {"rc": 0, "loaded": []} and summary["generated"] == 3 and "processes" not in summary


@pytest.mark.slow  # accelerate launch
def test_two_launched_processes_each_warm_their_pixel_share_into_one_cache_and_report_once(tmp_path):
    files = _images(tmp_path / "imgs")
    cache_dir, log = tmp_path / "cache", tmp_path / "log"
    process = _launch(tmp_path, tmp_path / "imgs", cache_dir, log)
    out, err = process.communicate(timeout=240)
    assert process.returncode == 0, err
    summaries = _summaries(out)
    assert len(summaries) == 1, out  # the main process reports; the other one prints nothing
    summary = summaries[0]
    entries = len(files) * 2
    assert summary["processes"] == 2 and summary["images"] == len(files) and summary["failed"] == 0
    assert summary["generated"] + summary["cached"] == entries and summary["generated"] == entries
    assert sum(r["generated"] + r["cached"] for r in summary["ranks"]) == entries

    keys, expected = _stored(cache_dir, files, 2)
    assert sorted(keys) == sorted(expected)  # every entry exactly once: none lost, none extra

    done = [(seed, pid) for word, seed, pid in read_log(log) if word == "done"]
    assert max(collections.Counter(seed for seed, _ in done).values()) == 1  # no entry generated twice
    by_process = collections.defaultdict(set)
    for seed, pid in done:
        by_process[pid].add(seed)
    seeds = _expected_seeds(files, 2, tmp_path / "scratch")
    shares = split_by_pixels(iter_image_files([tmp_path / "imgs"]), 2)
    wanted = [set().union(*(seeds[p] for p in share)) for share in shares]
    assert all(wanted) and sorted(map(sorted, by_process.values())) == sorted(map(sorted, wanted))
    print(f"per-process shares: {[len(s) for s in shares]} files, "
          f"{[sum(image_pixels(p) for p in s) for s in shares]} pixels")

    again = _launch(tmp_path, tmp_path / "imgs", cache_dir, log)
    out, err = again.communicate(timeout=240)
    assert again.returncode == 0, err
    (summary,) = _summaries(out)
    assert summary["generated"] == 0 and summary["cached"] == entries


@pytest.mark.slow  # accelerate launch
def test_a_killed_process_loses_only_its_batch_in_flight_and_a_rerun_finishes_the_job(tmp_path):
    files = _images(tmp_path / "imgs")
    cache_dir, log = tmp_path / "cache", tmp_path / "log"
    process = _launch(tmp_path, tmp_path / "imgs", cache_dir, log, delay=0.4, variants=1, batch_size=1,
                      start_new_session=True)
    deadline = time.monotonic() + 120
    try:
        while not any(word == "done" for word, _, _ in read_log(log)):
            assert time.monotonic() < deadline and process.poll() is None, "no process started generating"
            time.sleep(0.05)
        victim = next(pid for word, _, pid in read_log(log) if word == "done")
        os.kill(victim, signal.SIGKILL)  # as the OOM killer would
        out, err = process.communicate(timeout=120)
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)  # nothing of the job may still write while the cache is counted
        except ProcessLookupError:
            pass
        process.wait()
    assert process.returncode != 0  # the launcher reports the lost process

    keys, expected = _stored(cache_dir, files, 1)
    assert 0 < len(keys) < len(expected)  # work stopped partway; what was stored is intact
    seeds = _expected_seeds(files, 1, tmp_path / "scratch")
    key_of_seed = {}
    with SRCache(tmp_path / "scratch") as scratch:
        for p in files:
            key_of_seed[next(iter(seeds[p]))] = scratch.key(load_image(p), SlowEngine())
    started = {seed for word, seed, pid in read_log(log) if word == "start" and pid == victim}
    lost = {seed for seed in started if key_of_seed[seed] not in keys}
    assert len(lost) <= 1  # the victim lost at most its batch in flight (batch size 1)

    rerun = subprocess.run([sys.executable, "-m", "sr_augment", "warm", str(tmp_path / "imgs"), "--engine",
                            "faults:SlowEngine", "--set", "delay=0", "--variants", "1", "--cache-dir", str(cache_dir),
                            "--json", "--no-progress"], env=_env(tmp_path, log), capture_output=True, text=True,
                           timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    (summary,) = _summaries(rerun.stdout)
    assert summary["cached"] == len(keys) and summary["generated"] == len(expected) - len(keys)
    final, _ = _stored(cache_dir, files, 1)
    assert sorted(final) == sorted(expected)
