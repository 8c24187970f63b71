"""A training node with a complete cache needs no engine: the engine identity records (settings -> name,
scale, fingerprint) travel with `export`/`import` and `merge` like the entries, so an imported cache,
like a copied one, starts no engine service and loads no model; and a checkpoint engine whose file is
not on the node takes its identity from the cache when it will generate nothing (`on_miss="error"` or
`"passthrough"`). A record stays untrusted input: validated, filed under the id of the settings it
names, and never used for a checkpoint file whose weights are not the ones it was made from."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch", reason="spandrel engines need torch: pip install 'sr-augment[spandrel]'")
pytest.importorskip("spandrel", reason="spandrel is not installed: pip install 'spandrel>=0.4'")
pytest.importorskip("pyarrow", reason="shards need the [shards] extra (pyarrow)")

from torchvision.transforms import v2  # noqa: E402

from sr_augment import CacheMiss, EngineSpecError  # noqa: E402
from sr_augment.cache import SRCache  # noqa: E402
from sr_augment.cli import main  # noqa: E402
from sr_augment.service.identity import load_identity  # noqa: E402
from sr_augment.torch_transforms import SRAugment  # noqa: E402

SIDE = 16


def _esrgan(path: Path, seed: int) -> Path:
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(seed)
    torch.save(ESRGAN(num_filters=8, num_blocks=1, scale=4).state_dict(), path)
    return path


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # every test on one torch thread (conftest)


@pytest.fixture
def box(tmp_path, rng, capsys):
    """The warm box: photos, a checkpoint at /models/x4.pth's stand-in, a CLI warm, an export to shards;
    then its cache is gone (the node gets only the shards)."""
    data, models = tmp_path / "data", tmp_path / "models"
    data.mkdir()
    models.mkdir()
    paths = []
    for i in range(6):
        paths.append(data / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)).save(paths[-1])
    checkpoint = _esrgan(models / "x4.pth", seed=0)
    warmed, shards = tmp_path / "warm-box", tmp_path / "bucket" / "sr-shards"
    assert main(["warm", str(data), "--engine", str(checkpoint), "--device", "cpu", "--cache-dir", str(warmed),
                 "--no-progress"]) == 0
    assert main(["export", "--cache-dir", str(warmed), "--out", str(shards), "--no-progress"]) == 0
    capsys.readouterr()
    return {"paths": paths, "checkpoint": checkpoint, "warmed": warmed, "shards": shards}


def _node_home(tmp_path, monkeypatch) -> Path:
    """Another machine's user: another HOME, the default cache folder under it."""
    home = tmp_path / "node-home"
    home.mkdir()
    for name in ("SR_AUGMENT_CACHE_DIR", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(home))
    return home


def _service_files() -> list:
    """Whatever an engine service left in this test's private service folder (a log, pid, socket...)."""
    folder = Path(os.environ["SR_AUGMENT_SERVICE_DIR"])
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


class Files(torch.utils.data.Dataset):
    def __init__(self, paths, transform):
        self.paths, self.transform = paths, transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        with Image.open(self.paths[index]) as image:
            return self.transform(image.convert("RGB"))


def _epoch(paths, spec, cache_dir=None, on_miss="error") -> int:
    transform = v2.Compose([SRAugment(engine=spec, device="cpu", on_miss=on_miss, cache_dir=cache_dir),
                            v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])
    loader = torch.utils.data.DataLoader(Files(paths, transform), batch_size=3, num_workers=2)
    seen = 0
    for images in loader:  # a miss raises CacheMiss in a worker and fails the loop
        assert images.shape[1:] == (3, 4 * SIDE, 4 * SIDE)
        seen += len(images)
    return seen


def test_an_imported_cache_starts_no_engine_service_in_a_two_worker_epoch(box, tmp_path, monkeypatch):
    home = _node_home(tmp_path, monkeypatch)
    shutil.rmtree(box["warmed"])
    assert main(["import", str(box["shards"]), "--no-progress"]) == 0
    assert (home / ".cache" / "sr_augment").is_dir()  # the node's default cache
    assert _epoch(box["paths"], box["checkpoint"]) == 6
    assert _service_files() == []  # no service was started: the identity came with the shards
    stats = SRCache(home / ".cache" / "sr_augment").stats()
    assert (stats.hits, stats.misses, stats.generated) == (6, 0, 0)


@pytest.mark.parametrize("on_miss", ["error", "passthrough"])
def test_a_node_without_the_checkpoint_file_trains_from_the_imported_cache(box, tmp_path, monkeypatch, on_miss):
    _node_home(tmp_path, monkeypatch)
    shutil.rmtree(box["warmed"])
    assert main(["import", str(box["shards"]), "--no-progress"]) == 0
    box["checkpoint"].unlink()  # the node has the shards, not the weights
    assert _epoch(box["paths"], box["checkpoint"], on_miss=on_miss) == 6
    assert _service_files() == []


def test_without_the_checkpoint_file_a_generating_adapter_is_refused_at_construction(box, tmp_path, monkeypatch):
    _node_home(tmp_path, monkeypatch)
    assert main(["import", str(box["shards"]), "--no-progress"]) == 0
    box["checkpoint"].unlink()
    with pytest.raises(EngineSpecError, match=r"x4\.pth: no such file"):
        SRAugment(engine=box["checkpoint"], on_miss="generate")


def test_without_the_checkpoint_file_and_no_identity_in_the_cache_the_error_says_what_is_missing(box, tmp_path):
    box["checkpoint"].unlink()
    empty = tmp_path / "empty-cache"
    expected = r"x4\.pth: no such file, and the cache .*empty-cache holds no identity of this engine"
    with pytest.raises(EngineSpecError, match=expected) as info:
        SRAugment(engine=box["checkpoint"], on_miss="error", cache_dir=empty)
    assert "import" in str(info.value)


@pytest.mark.slow  # starts the engine service
def test_a_record_made_from_other_weights_at_the_same_path_is_not_used(box, tmp_path, monkeypatch):
    """Same path, same size, other weights (another fine-tune): the record is not this file's, so the
    cache's entries are not claimed for it; an adapter asks the engine (which misses, as it must)."""
    size = box["checkpoint"].stat().st_size
    _esrgan(box["checkpoint"], seed=1)
    assert box["checkpoint"].stat().st_size == size
    config = {"spec": str(box["checkpoint"]), "scale": 4, "steps": None, "device": "cpu", "dtype": "auto", "params": {}}
    assert load_identity(box["warmed"], config) is None
    monkeypatch.setattr("sr_augment.service.common.DEFAULT_LINGER", 1.0)
    transform = SRAugment(engine=box["checkpoint"], device="cpu", on_miss="error", cache_dir=box["warmed"])
    with Image.open(box["paths"][0]) as image, pytest.raises(CacheMiss):
        transform(image.convert("RGB"))


def test_merge_carries_the_identity_records(box, tmp_path, monkeypatch):
    merged = tmp_path / "merged"
    assert main(["merge", str(box["warmed"]), "--into", str(merged), "--no-progress"]) == 0
    assert sorted(p.name for p in (merged / "identities").iterdir()) == sorted(
        p.name for p in (box["warmed"] / "identities").iterdir())
    box["checkpoint"].unlink()
    assert _epoch(box["paths"], box["checkpoint"], cache_dir=merged) == 6
    assert _service_files() == []


def test_planted_identity_records_in_the_shards_are_refused_by_name_and_the_rest_imported(box, tmp_path, capsys):
    folder = box["shards"] / "identities"
    (good,) = folder.iterdir()
    record = json.loads(good.read_text())
    (folder / "0123456789abcdef.json").write_text(json.dumps(record))  # a good record under another id
    (folder / "fedcba9876543210.json").write_text("[" * 100000)  # deeply nested
    (folder / "aaaaaaaaaaaaaaaa.json").symlink_to(good)
    node = tmp_path / "node"
    assert main(["import", str(box["shards"]), "--cache-dir", str(node), "--no-progress", "--json"]) == 0
    report = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert sorted(p.name for p in (node / "identities").iterdir()) == [good.name]
    reasons = " ".join(p["reason"] for p in report["problems"])
    for name in ("0123456789abcdef.json", "fedcba9876543210.json", "aaaaaaaaaaaaaaaa.json"):
        assert name in json.dumps(report["problems"]), reasons
