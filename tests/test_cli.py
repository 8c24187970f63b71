"""The command line: warm (resume, bad files, JSON), info, clear (the demo: test_demo.py)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import write_photos
from sr_augment.cli import main


def _warm(capsys, *args):
    code = main(["warm", *map(str, args), "--json", "--no-progress"])
    out = capsys.readouterr()
    return code, json.loads(out.out.strip().splitlines()[-1]), out.err


def test_warm_real_photos_twice_second_run_generates_nothing(capsys, cache_dir, tmp_path):
    photos = write_photos(tmp_path / "photos", max_side=160)
    code, first, _ = _warm(capsys, photos, "--cache-dir", cache_dir, "--engine", "bicubic", "--variants", "2")
    assert code == 0
    assert first["images"] == 5 and first["generated"] == 10 and first["cached"] == 0 and first["failed"] == 0
    code, second, _ = _warm(capsys, photos, "--cache-dir", cache_dir, "--engine", "bicubic", "--variants", "2")
    assert code == 0 and second["generated"] == 0 and second["cached"] == 10
    assert set(second) == {"images", "generated", "cached", "failed", "failures", "seconds", "interrupted",
                           "stopped_by", "error"}


def test_bad_files_are_reported_and_the_others_cached(capsys, cache_dir, tmp_path, rng):
    data = tmp_path / "data"
    (data / "nested").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (8 + i, 8, 3), dtype=np.uint8)).save(data / "nested" / f"ok{i}.png")
    (data / "corrupt.png").write_bytes(b"not really a png")
    (data / "empty.jpg").write_bytes(b"")
    code, report, err = _warm(capsys, data, "--cache-dir", cache_dir, "--engine", "bicubic", "--batch-size", "2")
    assert code == 1
    assert report["images"] == 5 and report["generated"] == 3 and report["failed"] == 2
    failed = {f["path"]: f["error"] for f in report["failures"]}
    assert set(failed) == {str(data / "corrupt.png"), str(data / "empty.jpg")}
    assert "empty file" in failed[str(data / "empty.jpg")]
    assert "corrupt.png" in err
    code, again, _ = _warm(capsys, data / "nested", "--cache-dir", cache_dir, "--engine", "bicubic")
    assert code == 0 and again["generated"] == 0 and again["cached"] == 3


def test_warm_duplicate_pixels_generate_once(capsys, cache_dir, tmp_path, rng):
    pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    for name in ("a.png", "b.png", "c.bmp"):
        Image.fromarray(pixels).save(tmp_path / name)
    code, report, _ = _warm(capsys, tmp_path, "--cache-dir", cache_dir, "--engine", "bicubic")
    assert code == 0 and report["generated"] == 1 and report["cached"] == 2


@pytest.mark.slow  # a tiny diffusion model
def test_warm_with_tiny_diffusers_engine_batches_across_images(capsys, cache_dir, tmp_path, tiny_sd_dir, rng):
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    args = [tmp_path, "--cache-dir", cache_dir, "--engine", tiny_sd_dir, "--steps", "1", "--variants", "2",
            "--batch-size", "4", "--mode", "resynthesize"]
    code, report, _ = _warm(capsys, *args)
    assert code == 0 and report["generated"] == 6
    code, report, _ = _warm(capsys, *args)
    assert report["generated"] == 0 and report["cached"] == 6
    main(["info", "--cache-dir", str(cache_dir), "--json"])
    info = json.loads(capsys.readouterr().out)
    assert info["entries"] == 6 and info["generated"] == 6
    assert [seen["name"] for seen in info["engines"].values()] == [tiny_sd_dir.name]


def test_missing_path_and_bad_engine_are_clear_errors(cache_dir, tmp_path):
    with pytest.raises(SystemExit, match="no such file"):
        main(["warm", str(tmp_path / "nope"), "--cache-dir", str(cache_dir), "--no-progress"])
    with pytest.raises(SystemExit, match="Unknown engine"):
        main(["warm", str(tmp_path), "--engine", "no-such", "--cache-dir", str(cache_dir)])
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        main(["warm", str(tmp_path), "--set", "oops", "--cache-dir", str(cache_dir)])


def test_info_and_clear(capsys, cache_dir, tmp_path, rng, monkeypatch):
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(tmp_path / "x.png")
    _warm(capsys, tmp_path, "--cache-dir", cache_dir, "--engine", "bicubic")
    assert main(["info", "--cache-dir", str(cache_dir)]) == 0
    text = capsys.readouterr().out
    assert "entries    1" in text and "bicubic" in text
    monkeypatch.setattr(sys, "stdin", open("/dev/null"))
    with pytest.raises(SystemExit, match="--yes"):
        main(["clear", "--cache-dir", str(cache_dir)])
    assert main(["clear", "--cache-dir", str(cache_dir), "--yes"]) == 0
    main(["info", "--cache-dir", str(cache_dir), "--json"])
    capsys.readouterr()
    main(["info", "--cache-dir", str(cache_dir), "--json"])
    assert json.loads(capsys.readouterr().out)["entries"] == 0


def test_ctrl_c_keeps_finished_batches_and_a_rerun_resumes(cache_dir, tmp_path, rng):
    from sr_augment.cache import SRCache
    from sr_augment.engines import BicubicEngine
    from sr_augment.warm import warm

    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")

    class InterruptedEngine(BicubicEngine):
        calls = 0

        def upscale(self, images, seeds):
            type(self).calls += 1
            if type(self).calls == 2:
                raise KeyboardInterrupt
            return super().upscale(images, seeds)

    with SRCache(cache_dir) as cache:
        report = warm([tmp_path], InterruptedEngine(), cache, batch_size=2, progress=False)
        assert report.interrupted and report.generated == 2 and len(cache) == 2
        resumed = warm([tmp_path], BicubicEngine(), cache, batch_size=2, progress=False)
    assert not resumed.interrupted and resumed.cached == 2 and resumed.generated == 3


def test_warm_detects_and_regenerates_a_damaged_entry(capsys, cache_dir, tmp_path, rng):
    from sr_augment.cache import SRCache
    from sr_augment.engines import BicubicEngine

    pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "x.png")
    _warm(capsys, tmp_path, "--cache-dir", cache_dir, "--engine", "bicubic")
    with SRCache(cache_dir) as cache:
        key = cache.key(pixels, BicubicEngine())
        record = bytearray(cache.record(key))
        record[-3] ^= 0x10
        cache._entries.set(key, bytes(record))  # diskcache's own writer: the public API never stores a damaged record
    code, report, _ = _warm(capsys, tmp_path, "--cache-dir", cache_dir, "--engine", "bicubic")
    assert code == 0 and report["generated"] == 1 and report["cached"] == 0
    with SRCache(cache_dir) as cache:
        assert cache.stats().damaged == 1
        assert np.array_equal(cache.get(pixels, BicubicEngine()), BicubicEngine().upscale([pixels], [0])[0])


def test_a_reached_size_limit_evicts_warns_and_info_reports_it_and_the_limit_is_remembered(capsys, cache_dir, tmp_path, rng):
    from sr_augment.cache import SRCache

    for i in range(30):  # 30 x 64->256 px noise: ~190 KiB each as WebP, over 2 MB in all
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / f"{i:02d}.png")
    code, report, err = _warm(capsys, tmp_path, "--cache-dir", cache_dir, "--engine", "bicubic",
                              "--size-limit", "2000000")
    assert code == 0 and report["generated"] == 30
    assert "entries were evicted to stay under the cache size limit" in err
    assert main(["info", "--cache-dir", str(cache_dir), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["size_limit"] == 2_000_000 and info["evictions"] > 0
    assert info["entries"] + info["evictions"] == 30 and info["bytes"] <= 2 * 2_000_000
    with SRCache(cache_dir) as cache:  # opened with no limit, as a training process does: the folder's holds
        assert cache.size_limit == 2_000_000
        cache.clear()
        assert cache.size_limit == 2_000_000 == SRCache(cache_dir).size_limit


# ---------------------------------------------------------------------------------------------------------
# warm --resize / --center-crop (torchvision v2 on PIL images) and --dry-run
# ---------------------------------------------------------------------------------------------------------
def test_the_cli_resize_and_center_crop_give_torchvisions_pil_pixels_exactly(rng):
    pytest.importorskip("torchvision")
    from torchvision.transforms import v2

    from sr_augment.warm.tv_geometry import Preprocess

    for _ in range(25):
        height, width = (int(n) for n in rng.integers(5, 120, 2))
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        side, other, crop, crop_w = (int(n) for n in rng.integers(3, 130, 4))
        for resize, center in [((side,), (crop,)), ((side, other), (crop, crop_w)), (None, (crop, crop_w)), ((side,), None)]:
            steps = ([v2.Resize(list(resize))] if resize else []) + ([v2.CenterCrop(list(center))] if center else [])
            expected = np.asarray(v2.Compose(steps)(Image.fromarray(image)))
            got = Preprocess(resize, center)(image)
            assert got.shape == expected.shape and np.array_equal(got, expected), (image.shape, resize, center)


def test_keys_warmed_with_resize_and_center_crop_are_hits_for_the_torchvision_pipeline(capsys, cache_dir, tmp_path, rng):
    pytest.importorskip("torchvision")
    from torchvision.transforms import v2

    from sr_augment.cache import CacheMiss
    from sr_augment.torch_transforms import SRAugment

    sizes = [(70, 90), (90, 65), (64, 64), (101, 77), (63, 200), (67, 67)]  # odd margins: round half to even
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    code, report, _ = _warm(capsys, tmp_path, "--cache-dir", cache_dir, "--engine", "bicubic", "--mode", "resynthesize",
                            "--resize", "64", "--center-crop", "64")
    assert code == 0 and report["generated"] == len(sizes)
    strict = SRAugment(engine="bicubic", mode="resynthesize", on_miss="error", cache_dir=cache_dir)
    pipeline = v2.Compose([v2.Resize(64), v2.CenterCrop(64), strict])
    for i in range(len(sizes)):
        with open(tmp_path / f"{i}.png", "rb") as f:  # as datasets.ImageFolder's loader reads a file
            assert pipeline(Image.open(f).convert("RGB")).size == (64, 64)
    with pytest.raises(CacheMiss):  # another resize: other pixels, other keys
        v2.Compose([v2.Resize(64, interpolation=v2.InterpolationMode.BICUBIC), v2.CenterCrop(64), strict])(
            Image.open(tmp_path / "0.png").convert("RGB"))


def test_a_bad_size_is_a_clear_error(cache_dir, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["warm", str(tmp_path), "--resize", "64x", "--cache-dir", str(cache_dir)])
    assert "a size must be N or HxW" in capsys.readouterr().err


def test_a_dry_run_reports_what_would_be_generated_and_writes_nothing(capsys, cache_dir, tmp_path, rng):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)).save(photos / f"{i}.png")
    Image.fromarray(np.asarray(Image.open(photos / "0.png"))).save(photos / "copy-of-0.png")  # same pixels
    (photos / "broken.png").write_bytes(b"nope")
    args = ["--cache-dir", cache_dir, "--engine", "bicubic", "--dry-run"]
    code, report, _ = _warm(capsys, photos, *args)
    assert code == 1 and report["dry_run"] is True
    assert (report["images"], report["generated"], report["cached"], report["failed"]) == (6, 4, 1, 1)
    assert not cache_dir.exists()  # nothing written, not even the folder

    _warm(capsys, photos / "0.png", photos / "1.png", "--cache-dir", cache_dir, "--engine", "bicubic")
    files_before = sorted((p, p.stat().st_size, p.stat().st_mtime_ns) for p in cache_dir.rglob("*") if p.is_file())
    code, report, _ = _warm(capsys, photos / "0.png", photos / "1.png", photos / "2.png", *args)
    assert code == 0 and (report["generated"], report["cached"]) == (1, 2)
    assert sorted((p, p.stat().st_size, p.stat().st_mtime_ns) for p in cache_dir.rglob("*") if p.is_file()) == files_before


def test_a_dry_run_with_a_diffusion_engine_loads_no_model(capsys, cache_dir, tmp_path, tiny_ldm_dir, rng, monkeypatch):
    from diffusers import DiffusionPipeline

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(DiffusionPipeline, "from_pretrained", refuse)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    code, report, _ = _warm(capsys, tmp_path, "--cache-dir", cache_dir, "--engine", tiny_ldm_dir, "--variants", "2",
                            "--dry-run")
    assert code == 0 and report["generated"] == 6 and not cache_dir.exists()
