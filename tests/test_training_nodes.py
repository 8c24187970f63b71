"""The training-node path: warm with the CLI, export shards, import them into a fresh cache on the
node, and train with `on_miss="error"` through real DataLoader workers: every lookup is a hit. A
read-only copy of a cache serves the same loader and is left unchanged."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from sr_augment.cache import SRCache, writers
from sr_augment.cli import main
from sr_augment.torch_transforms import SRAugment

pytest.importorskip("pyarrow", reason="shards need the [shards] extra (pyarrow)")
pytestmark = pytest.mark.filterwarnings("ignore:engine 'bicubic' is deterministic")  # 2 equal variants: fine here


class Files(torch.utils.data.Dataset):
    def __init__(self, paths, transform):
        self.paths, self.transform = paths, transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        with Image.open(self.paths[index]) as image:
            return self.transform(image.convert("RGB")), index


def _epoch(paths, cache_dir: Path) -> int:
    transform = v2.Compose([SRAugment(engine="bicubic", mode="resynthesize", variants=2, on_miss="error", cache_dir=cache_dir),
                            v2.RandomHorizontalFlip(), v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])
    loader = torch.utils.data.DataLoader(Files(paths, transform), batch_size=4, num_workers=2)
    seen = 0
    for images, _ in loader:  # a miss would raise CacheMiss in a worker and fail the loop
        assert images.shape[1:] == (3, 32, 32)
        seen += len(images)
    return seen


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def test_warm_export_import_then_a_dataloader_with_on_miss_error_sees_only_hits(capsys, tmp_path, rng):
    data = tmp_path / "data"
    data.mkdir()
    paths = []
    for i in range(10):
        paths.append(data / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(paths[-1])
    warm_dir, shards, node = tmp_path / "warm-box", tmp_path / "bucket" / "sr-shards", tmp_path / "node-cache"
    assert main(["warm", str(data), "--engine", "bicubic", "--mode", "resynthesize", "--variants", "2",
                 "--cache-dir", str(warm_dir), "--no-progress", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["generated"] == 20
    assert main(["export", "--cache-dir", str(warm_dir), "--out", str(shards), "--no-progress"]) == 0
    shutil.rmtree(warm_dir)  # the node has only the shards
    assert main(["import", str(shards), "--cache-dir", str(node), "--no-progress"]) == 0
    capsys.readouterr()

    assert _epoch(paths, node) == 10
    stats = SRCache(node).stats()  # the workers' counters were written when they exited
    assert (stats.hits, stats.misses, stats.generated, stats.entries) == (10, 0, 0, 20)


def test_a_read_only_copy_of_the_imported_cache_serves_the_dataloader_and_stays_unchanged(capsys, tmp_path, rng, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    paths = []
    for i in range(6):
        paths.append(data / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(paths[-1])
    assert main(["warm", str(data), "--engine", "bicubic", "--mode", "resynthesize", "--variants", "2",
                 "--cache-dir", str(tmp_path / "warm"), "--no-progress"]) == 0
    assert main(["export", "--cache-dir", str(tmp_path / "warm"), "--out", str(tmp_path / "shards"), "--no-progress"]) == 0
    assert main(["import", str(tmp_path / "shards"), "--cache-dir", str(tmp_path / "node"), "--no-progress"]) == 0
    copy = tmp_path / "mounted"
    shutil.copytree(tmp_path / "node", copy)
    before = _snapshot(copy)
    # a mount this user cannot write (tests run as root here, so the access check is stood in for; the
    # forked DataLoader workers inherit it)
    monkeypatch.setattr(writers, "can_write", lambda directory: False)
    with SRCache(copy) as cache:
        assert cache.read_only
    assert _epoch(paths, copy) == 6
    assert _snapshot(copy) == before
    with SRCache(copy, read_only=True) as cache:
        assert cache.stats().entries == 12
