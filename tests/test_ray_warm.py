"""`sr-augment warm --ray`: a real local Ray cluster (started once for this module, stopped at its end
with no raylet left) generates with an actor pool and writes shards that `sr-augment import` reads."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sr_augment import get_engine
from sr_augment.cache import SRCache, codec
from sr_augment.cache.shards import MANIFEST_DIR, read_manifest, written_keys
from sr_augment.cache.transfer import import_shards
from sr_augment.cli import main
from sr_augment.images import load_image
from sr_augment.warm.ray import entry_request, list_inputs, ray_warm, read_image


def _ray_processes(session: str) -> list[int]:
    """Pids of processes whose command line names this Ray session (raylet, gcs_server, workers)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if session in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                found.append(int(pid))
        except OSError:
            pass
    return found


@pytest.fixture(scope="module")
def ray_cluster():
    """One local cluster for the module (about 10 s to start): 4 logical CPUs for 2 one-CPU actors, so Ray
    Data keeps CPUs for its own tasks (`num_cpus=2` with two 1-CPU actors deadlocks a
    `map_batches` + aggregate). Teardown checks that nothing is left running."""
    ray = pytest.importorskip("ray", reason="the Ray warm needs Ray Data: pip install 'sr-augment[ray]'")
    pytest.importorskip("ray.data")
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    session = Path(ray._private.worker._global_node.get_session_dir_path()).name
    assert any("raylet" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
               for pid in _ray_processes(session))
    yield ray
    ray.shutdown()
    deadline = time.monotonic() + 30
    while _ray_processes(session) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _ray_processes(session), f"Ray processes of {session} still running after ray.shutdown()"


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Five small photos-to-be and a copy of one under another name (the same pixels: one key)."""
    folder = tmp_path_factory.mktemp("ray-images")
    rng = np.random.default_rng(7)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (16, 12 + i, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
    (folder / "sub").mkdir()
    (folder / "sub" / "copy_of_img0.png").write_bytes((folder / "img0.png").read_bytes())
    return folder


def _manifest_keys(out: Path) -> list[str]:
    by_shard, problems = read_manifest(str(out))
    assert problems == []
    return [key for rows in by_shard.values() for key in rows]


def _expected_keys(folder: Path, engine, mode: str, variants: int) -> set[str]:
    """The keys SRCache gives every (image, variant) under `folder` (an empty cache answers `key`)."""
    with SRCache(folder.parent / f"{folder.name}-keys") as cache:
        return {cache.key(path, engine, mode, v) for path in sorted(folder.rglob("*.png")) for v in range(variants)}


def _import(out: Path, cache_dir: Path) -> None:
    """`sr-augment import`'s function: every sample is copied, none refused."""
    with SRCache(cache_dir) as cache:
        report = import_shards([str(out)], cache, progress=False)
    assert report.refused == 0 and report.problems == [] and report.copied == report.entries > 0


def _assert_like_a_local_cache(folder: Path, imported_dir: Path, local_dir: Path, engine, mode: str, variants: int,
                               tolerance: int = 0):
    """Every (image, variant) is in the imported cache, within `tolerance` grey levels of what
    SRCache.get_or_create makes here: 0 for an integer engine; 1 for a float engine, whose pixels may
    round differently under another thread count or batch (test_thread_determinism.py). Whatever the
    difference, a key holds one answer: importing the shards into the local cache keeps the local one."""
    with SRCache(imported_dir) as imported, SRCache(local_dir) as local:
        local_answers = {}
        for path in sorted(folder.rglob("*.png")):
            for variant in range(variants):
                got = imported.get(path, engine, mode, variant)
                assert got is not None, f"{path.name} variant {variant} missing from the imported cache"
                mine = local.get_or_create(path, engine, mode, variant)
                assert got.shape == mine.shape and got.dtype == mine.dtype == np.uint8
                assert np.abs(got.astype(np.int16) - mine.astype(np.int16)).max() <= tolerance, (path.name, variant)
                local_answers[local.key(path, engine, mode, variant)] = mine
        assert len(imported) == len(local) == len(_expected_keys(folder, engine, mode, variants))
    return local_answers


def _assert_the_first_answer_stays(out: Path, local_dir: Path, local_answers: dict) -> None:
    """Importing the Ray shards into a cache that already holds every key stores nothing: first writer wins."""
    with SRCache(local_dir) as local:
        report = import_shards([str(out)], local, progress=False)
        assert (report.copied, report.present, report.refused) == (0, len(local_answers), 0)
        assert len(local) == len(local_answers)
        for key, pixels in local_answers.items():
            np.testing.assert_array_equal(codec.decode(local.record(key)), pixels)


@pytest.mark.slow  # a Ray cluster
def test_the_cli_warms_on_ray_into_shards_that_import_as_a_local_cache_names_a_bad_file_and_reruns_write_nothing(
        ray_cluster, images, tmp_path, capsys):
    out, bad = tmp_path / "shards", tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    argv = ["warm", str(images), str(bad), "--engine", "bicubic", "--variants", "2", "--batch-size", "3", "--ray",
            "--out", str(out), "--json", "--no-progress"]
    assert main(argv) == 1  # a file failed
    captured = capsys.readouterr()
    report = json.loads(captured.out.strip().splitlines()[-1])
    assert f"failed: {bad}: not an image" in captured.err
    engine = get_engine("bicubic")
    expected = _expected_keys(images, engine, "upscale", 2)
    assert len(expected) == 10  # the copy has img0's pixels: its keys are img0's
    assert (report["images"], report["generated"], report["cached"], report["failed"]) == (7, 10, 2, 1)
    assert sorted(_manifest_keys(out)) == sorted(expected)  # each key exactly once
    _import(out, tmp_path / "imported")
    _assert_like_a_local_cache(images, tmp_path / "imported", tmp_path / "local", engine, "upscale", 2)

    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert main(argv) == 1
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (again["generated"], again["cached"], again["failed"], again["shards"]) == (0, 12, 1, [])
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before  # nothing written, nothing touched


@pytest.mark.slow  # a Ray cluster
def test_a_diffusion_engine_on_two_actors_gives_the_pixels_a_local_cache_would_hold(ray_cluster, images, tmp_path,
                                                                                     tiny_ldm_dir):
    out = tmp_path / "shards"
    report = ray_warm([images], str(tiny_ldm_dir), str(out), actors=2, mode="resynthesize", variants=2,
                      batch_size=3, engine_params={"steps": 2}, progress=False)
    engine = get_engine(tiny_ldm_dir, steps=2)
    assert (report.generated, report.failed, report.actors) == (10, 0, 2)
    assert sorted(_manifest_keys(out)) == sorted(_expected_keys(images, engine, "resynthesize", 2))
    _import(out, tmp_path / "imported")
    answers = _assert_like_a_local_cache(images, tmp_path / "imported", tmp_path / "local", engine, "resynthesize", 2,
                                         tolerance=1)
    _assert_the_first_answer_stays(out, tmp_path / "local", answers)
    with SRCache(tmp_path / "imported") as imported:  # variants are different samples
        first = images / "img1.png"
        assert not np.array_equal(imported.get(first, engine, "resynthesize", 0),
                                  imported.get(first, engine, "resynthesize", 1))


@pytest.mark.slow  # a Ray cluster
def test_a_rerun_after_preemption_generates_only_the_shard_that_was_never_committed(ray_cluster, images, tmp_path):
    out = tmp_path / "shards"
    first = ray_warm([images], "bicubic", str(out), actors=2, variants=2, batch_size=2, shard_size=20_000,
                     progress=False)
    assert first.generated == 10 and len(first.shards) > 2
    lost = first.shards[-1]  # preempted while this shard was open: its tar is partial, no manifest part
    lost_keys = set(read_manifest(str(out))[0][lost])
    (out / MANIFEST_DIR / f"{lost[:-4]}.parquet").unlink()
    tar = out / lost
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])
    assert written_keys(str(out)) == _expected_keys(images, get_engine("bicubic"), "upscale", 2) - lost_keys

    second = ray_warm([images], "bicubic", str(out), actors=2, variants=2, batch_size=2, progress=False)
    assert second.generated == len(lost_keys) and second.failed == 0
    keys = _manifest_keys(out)
    assert sorted(keys) == sorted(_expected_keys(images, get_engine("bicubic"), "upscale", 2))


# -- without a cluster -----------------------------------------------------------------------------------

def test_the_actors_compute_the_keys_and_seeds_srcache_computes(tmp_path):
    engine = get_engine("bicubic", scale=2)
    image = np.random.default_rng(1).integers(0, 256, (9, 7, 3), dtype=np.uint8)
    with SRCache(tmp_path / "c") as cache:
        for mode in ("upscale", "resynthesize"):
            for variant in (0, 3):
                ours = entry_request(image, engine, mode, variant)
                theirs = cache._request(image, engine, mode, variant)
                assert (ours.key, ours.seed) == (theirs.key, theirs.seed)


def test_inputs_are_listed_and_read_from_an_fsspec_filesystem_like_local_files(tmp_path):
    fsspec = pytest.importorskip("fsspec")
    image = np.random.default_rng(2).integers(0, 256, (10, 6, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "a.png")
    fs = fsspec.filesystem("memory")
    fs.pipe("/ray-test/in/b/a.png", (tmp_path / "a.png").read_bytes())
    fs.pipe("/ray-test/in/notes.txt", b"not an image suffix")
    fs.pipe("/ray-test/in/broken.jpg", b"")
    try:
        listed = list_inputs(["memory://ray-test/in"])
        assert listed == ["memory:///ray-test/in/b/a.png", "memory:///ray-test/in/broken.jpg"]
        np.testing.assert_array_equal(read_image(listed[0]), load_image(tmp_path / "a.png"))
        with pytest.raises(ValueError, match="broken.jpg: empty file"):
            read_image(listed[1])
        with pytest.raises(FileNotFoundError, match="nothing-here"):
            list_inputs(["memory://ray-test/nothing-here"])
    finally:
        fs.rm("/ray-test", recursive=True)


def test_without_ray_installed_warm_ray_says_what_to_install(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(SystemExit, match=r"pip install 'sr-augment\[ray\]'"):
        main(["warm", str(tmp_path), "--engine", "bicubic", "--ray", "--out", str(tmp_path / "o")])


def test_warm_ray_without_out_and_out_without_ray_are_refused_with_the_way_out(tmp_path):
    with pytest.raises(SystemExit, match="give --out"):
        main(["warm", str(tmp_path), "--engine", "bicubic", "--ray"])
    with pytest.raises(SystemExit, match="add --ray"):
        main(["warm", str(tmp_path), "--engine", "bicubic", "--out", str(tmp_path / "o")])


@pytest.mark.slow  # a Ray cluster
def test_an_actor_keys_the_preprocessed_pixels_as_warm_resize_center_crop_does(images, tmp_path):
    import pyarrow as pa

    from sr_augment.warm.ray import GenerateBatch
    from sr_augment.warm.tv_geometry import Preprocess

    steps = Preprocess((10,), (8,))
    actor = GenerateBatch("bicubic", {"scale": 4}, "upscale", "webp", frozenset(), preprocess=steps)
    path = images / "img3.png"
    rows = actor(pa.table({"path": [str(path), str(tmp_path / "gone.png")], "variant": [1, 0]})).to_pylist()
    engine = get_engine("bicubic")
    with SRCache(tmp_path / "c") as cache:
        assert rows[0]["key"] == cache.key(steps(load_image(path)), engine, "upscale", 1)
        assert rows[0]["status"] == "generated"
        np.testing.assert_array_equal(codec.decode(rows[0]["record"]),
                                      cache.get_or_create(steps(load_image(path)), engine, "upscale", 1))
    assert rows[1]["status"] == "failed" and "gone.png" in rows[1]["error"]
