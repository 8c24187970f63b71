"""`sr-augment warm --ray` rerun after a committed shard was lost: the manifest is the truth, so a shard it
lists that is gone (deleted) or cut short is generated again, and the output then imports whole."""

from __future__ import annotations

import json
import tarfile

import pytest

from sr_augment.cache import SRCache
from sr_augment.cache.shards import read_manifest, written_keys
from sr_augment.cache.transfer import import_shards
from sr_augment.cli import main
from sr_augment.warm.ray import ray_warm
from test_ray_warm import images, ray_cluster  # noqa: F401  (the module's fixtures: one local cluster, small photos)

pytestmark = pytest.mark.slow


def test_a_rerun_after_a_committed_shard_was_deleted_or_cut_generates_its_samples_again(ray_cluster, images, tmp_path,  # noqa: F811
                                                                                         capsys):
    out = tmp_path / "shards"
    first = ray_warm([images], "bicubic", str(out), actors=2, variants=1, batch_size=2, shard_size=1, progress=False)
    by_shard, _ = read_manifest(str(out))
    assert first.generated == 5 and len(by_shard) == 5  # one sample per shard
    deleted, cut = sorted(by_shard)[:2]
    (out / deleted).unlink()  # its manifest part is kept: the manifest says it should be there
    row = next(iter(by_shard[cut].values()))
    (out / cut).write_bytes((out / cut).read_bytes()[: row["json_offset"] - tarfile.BLOCKSIZE])  # a member boundary
    lost_keys = set(by_shard[deleted]) | set(by_shard[cut])
    assert not lost_keys & written_keys(str(out))

    argv = ["warm", str(images), "--engine", "bicubic", "--batch-size", "2", "--ray", "--out", str(out), "--json",
            "--no-progress"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out.strip().splitlines()[-1])
    assert report["generated"] == len(lost_keys) == 2 and sorted(report["lost"]) == sorted([deleted, cut])
    assert deleted in captured.err and cut in captured.err
    keys = [key for rows in read_manifest(str(out))[0].values() for key in rows]
    assert sorted(keys) == sorted(set(keys)) and len(keys) == 5  # each key listed once, the stale parts retired
    with SRCache(tmp_path / "node") as cache:
        imported = import_shards([str(out)], cache, progress=False)
    assert (imported.copied, imported.refused, imported.missing) == (5, 0, 0), imported.problems
