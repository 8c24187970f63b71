"""What a float engine promises about pixels, and what the cache makes of it.

An engine computes in floating point and rounds to uint8 last. The order of a float sum depends on the
torch thread count, the batch an image shares (kernels pick other blockings for other batch sizes) and
the CPU, so the same (image, seed, settings) can give a pixel 1 grey level apart between two processes
(a tiny LDM gave 126 vs 125 between a Ray actor and the test process). The promise:

- the same process configuration (device, dtype, thread count, batch) gives the same pixels;
- on the CPU in float32, another thread count or batch gives every pixel within 1 grey level;
- the cache holds ONE answer per key, the first writer's: a later writer, a merge or an import never
  replaces it, so every reader of a cache sees the same pixels.

The tests use the real tiny LDM pipeline, real threads, a real second process and real caches.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from sr_augment import get_engine  # noqa: E402
from sr_augment.cache import SRCache  # noqa: E402
from sr_augment.cache.transfer import merge_caches  # noqa: E402

TOLERANCE = 1
"""Grey levels two computations of one entry may differ by (thread count, batch composition)."""


def _images(folder: Path) -> list[Path]:
    folder.mkdir()
    rng = np.random.default_rng(11)
    paths = []
    for i in range(4):
        path = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (16, 12 + 4 * (i % 2), 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def _max_diff(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape and a.dtype == b.dtype == np.uint8
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


def _generate(cache_dir: Path, engine, paths, batch: int) -> dict[str, np.ndarray]:
    """Every (image, variant 0/1) generated into a fresh cache, `batch` entries per engine call: {key: pixels}."""
    requests = [(p, v) for p in paths for v in (0, 1)]
    found = {}
    with SRCache(cache_dir) as cache:
        for start in range(0, len(requests), batch):
            chunk = requests[start:start + batch]
            results = cache.get_or_create_many([p for p, _ in chunk], engine, "resynthesize", [v for _, v in chunk])
            for (path, variant), result in zip(chunk, results):
                found[cache.key(path, engine, "resynthesize", variant)] = result
    return found


@pytest.mark.slow
def test_other_thread_counts_and_batches_give_every_pixel_within_one_grey_level(tiny_ldm_dir, tmp_path):
    engine = get_engine(tiny_ldm_dir, steps=2)
    paths = _images(tmp_path / "imgs")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one_thread_one_batch = _generate(tmp_path / "a", engine, paths, batch=len(paths) * 2)
        torch.set_num_threads(2)
        two_threads_one_by_one = _generate(tmp_path / "b", engine, paths, batch=1)
        two_threads_batches_of_3 = _generate(tmp_path / "c", engine, paths, batch=3)
        again = _generate(tmp_path / "d", engine, paths, batch=3)
    finally:
        torch.set_num_threads(threads)
    assert len(one_thread_one_batch) == len(paths) * 2
    assert one_thread_one_batch.keys() == two_threads_one_by_one.keys() == two_threads_batches_of_3.keys()
    for key, pixels in one_thread_one_batch.items():
        assert _max_diff(pixels, two_threads_one_by_one[key]) <= TOLERANCE, key
        assert _max_diff(pixels, two_threads_batches_of_3[key]) <= TOLERANCE, key
        assert _max_diff(two_threads_batches_of_3[key], again[key]) == 0, key  # same configuration: same pixels


_CHILD = """
import json, sys
from sr_augment import get_engine
from sr_augment.cache import SRCache
import torch
model, cache_dir, paths = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
engine = get_engine(model, steps=2)
requests = [(p, v) for p in paths for v in (0, 1)]
with SRCache(cache_dir) as cache:  # every entry in ONE engine batch
    cache.get_or_create_many([p for p, _ in requests], engine, "resynthesize", [v for _, v in requests])
print(json.dumps({"threads": torch.get_num_threads()}))
"""


@pytest.mark.slow
def test_a_one_thread_process_and_this_one_agree_within_one_grey_level_and_the_first_answer_stays(tiny_ldm_dir,
                                                                                                   tmp_path):
    """A second process with OMP_NUM_THREADS=1 and one big batch (as a Ray actor or a warm job) against
    this process one image at a time (as a training loader's misses): within 1 grey level, and merging
    one cache into the other keeps each key's first answer, so a key never holds two."""
    paths = _images(tmp_path / "imgs")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    work = tmp_path / "cwd"
    work.mkdir()
    done = subprocess.run([sys.executable, "-I", "-c", _CHILD, str(tiny_ldm_dir), str(tmp_path / "other"),
                           json.dumps([str(p) for p in paths])], cwd=work, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])["threads"] == 1

    engine = get_engine(tiny_ldm_dir, steps=2)
    mine = _generate(tmp_path / "mine", engine, paths, batch=1)
    with SRCache(tmp_path / "other") as other:
        theirs = {key: other.get(path, engine, "resynthesize", variant)
                  for path in paths for variant in (0, 1)
                  for key in [other.key(path, engine, "resynthesize", variant)]}
    assert theirs.keys() == mine.keys() and all(v is not None for v in theirs.values())
    for key in mine:
        assert _max_diff(mine[key], theirs[key]) <= TOLERANCE, key

    with SRCache(tmp_path / "mine") as cache:  # first writer wins: the other process's answers are not taken
        report = merge_caches([tmp_path / "other"], cache, progress=False)
        assert (report.copied, report.present, report.refused) == (0, len(mine), 0)
        assert len(cache) == len(mine)
        for path in paths:
            for variant in (0, 1):
                key = cache.key(path, engine, "resynthesize", variant)
                np.testing.assert_array_equal(cache.get(path, engine, "resynthesize", variant), mine[key])
                np.testing.assert_array_equal(cache.get_or_create(path, engine, "resynthesize", variant), mine[key])
