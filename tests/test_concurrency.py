"""Two `warm` processes on overlapping inputs and four DataLoader workers generating on a miss, all on
one cache at once: no errors, no lost writes, an exact final entry count, and each key generated at
most once per generating process (3 here: two warms and the one engine service the workers share).

The engine is `faults:SlowEngine` (bicubic that takes 50 ms per image and logs each generation), so
the runs overlap and every generation, in any process, is counted.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
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
from sr_augment.images import bicubic_resize

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.slow  # warms and DataLoader workers in subprocesses

TESTS = Path(__file__).resolve().parent


class _Files(torch.utils.data.Dataset):
    def __init__(self, paths, transform):
        self.paths, self.transform = paths, transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        return torch.from_numpy(np.asarray(self.transform(Image.open(self.paths[index]).convert("RGB"))))


@pytest.mark.filterwarnings("ignore:This DataLoader will create 4 worker processes")  # 2 cores here, on purpose
def test_two_warms_and_four_dataloader_workers_share_one_cache(tmp_path, rng, monkeypatch):
    from sr_augment.torch_transforms import SRAugment

    images = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(40)]
    every = tmp_path / "all"
    every.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(every / f"{i:02d}.png")
    first, second = tmp_path / "first", tmp_path / "second"  # images 0-29 and 10-39: 20 in both
    first.mkdir(), second.mkdir()
    for i in range(40):
        for folder, wanted in ((first, i < 30), (second, i >= 10)):
            if wanted:
                shutil.copy(every / f"{i:02d}.png", folder)
    cache_dir, log = tmp_path / "cache", tmp_path / "log"
    env = {"SR_AUGMENT_TEST_LOG": str(log), "SR_AUGMENT_SERVICE_LINGER": "2",
           "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    for name, value in env.items():
        monkeypatch.setenv(name, value)  # the service the workers start inherits them
    warms = [subprocess.Popen([sys.executable, "-m", "sr_augment.cli", "warm", str(folder), "--engine", "faults:SlowEngine",
                               "--set", "delay=0.05", "--variants", "2", "--batch-size", "2", "--cache-dir", str(cache_dir),
                               "--json", "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for folder in (first, second)]
    deadline = time.monotonic() + 60
    while len({pid for _, _, pid in read_log(log)}) < 2:  # both warms are generating
        assert time.monotonic() < deadline and all(w.poll() is None for w in warms), "warm did not start"
        time.sleep(0.02)

    transform = SRAugment(engine="faults:SlowEngine", delay=0.05, variants=2, on_miss="generate", cache_dir=cache_dir)
    paths = sorted(every.glob("*.png"))
    loader = torch.utils.data.DataLoader(_Files(paths, transform), batch_size=2, num_workers=4)
    batches = list(loader)  # an exception in any worker fails the test here
    assert sum(len(b) for b in batches) == 40 and all(b.shape[1:] == (32, 32, 3) for b in batches)

    reports = []
    for process in warms:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
        reports.append(json.loads(out.strip().splitlines()[-1]))
    assert [r["generated"] + r["cached"] for r in reports] == [60, 60] and all(r["failed"] == 0 for r in reports)

    done = [(seed, pid) for word, seed, pid in read_log(log) if word == "done"]
    per_key = collections.Counter(seed for seed, _ in done)
    per_key_and_process = collections.Counter(done)
    writers = {pid for _, pid in done}
    print(f"generations {len(done)} for {len(per_key)} keys; writers {len(writers)}; "
          f"most generations of one key {max(per_key.values())}; keys generated more than once "
          f"{sum(c > 1 for c in per_key.values())}")
    assert len(writers) <= 3  # two warms and one shared service: the workers never load their own engine
    assert max(per_key_and_process.values()) == 1  # no process generates a key twice
    assert max(per_key.values()) <= len(writers)

    engine = SlowEngine()
    with SRCache(cache_dir) as cache:
        expected = {cache.key(image, engine, variant=v): bicubic_resize(image, 4) for image in images for v in range(2)}
        keys = cache.keys()
        assert sorted(keys) == sorted(expected)  # exactly 80 entries: none lost, none extra
        for key in keys:
            assert np.array_equal(decode(cache.record(key)), expected[key])
        stats = cache.stats()
    assert stats.generated == len(done) and stats.damaged == 0  # counters from every process arrived
    rerun = subprocess.run([sys.executable, "-m", "sr_augment.cli", "warm", str(every), "--engine", "faults:SlowEngine",
                            "--variants", "2", "--cache-dir", str(cache_dir), "--json", "--no-progress"],
                           capture_output=True, text=True, timeout=120)
    assert json.loads(rerun.stdout.strip().splitlines()[-1])["generated"] == 0
