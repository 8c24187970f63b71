"""SR metrics against known values, and `eval-sr` end to end."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from PIL import Image

from sr_augment.cli import main
from sr_augment.metrics import gradient_magnitude, psnr_y, rgb_to_y, ssim_y


def test_identical_images_give_ssim_1_and_infinite_psnr(rng):
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert psnr_y(image, image) == math.inf
    assert ssim_y(image, image) == pytest.approx(1.0)


def test_known_mse_gives_known_psnr():
    hr = np.full((16, 16, 3), 100, np.uint8)
    sr = hr.copy()
    sr[..., :] += 10  # every channel +10 -> Y moves by 10 * (65.481 + 128.553 + 24.966) / 255
    delta = 10 * (65.481 + 128.553 + 24.966) / 255
    assert psnr_y(sr, hr) == pytest.approx(10 * math.log10(255**2 / delta**2), abs=1e-9)
    assert rgb_to_y(np.zeros((1, 1, 3), np.uint8))[0, 0] == pytest.approx(16.0)
    assert rgb_to_y(np.full((1, 1, 3), 255, np.uint8))[0, 0] == pytest.approx(235.0)


def test_shave_drops_the_border_and_blur_lowers_gradient(rng):
    hr = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
    sr = hr.copy()
    sr[:4] = 0  # damage only the border
    assert psnr_y(sr, hr, shave=4) == math.inf and psnr_y(sr, hr) < 30
    blurred = np.asarray(Image.fromarray(hr).resize((6, 6), Image.BICUBIC).resize((24, 24), Image.BICUBIC))
    assert gradient_magnitude(blurred) < gradient_magnitude(hr)
    with pytest.raises(ValueError, match="differ in shape"):
        psnr_y(hr[:8], hr)


def test_eval_sr_writes_per_image_csv_and_summary(tmp_path, cache_dir, capsys, rng, monkeypatch):
    import torch

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "no-torch-hub"))  # no LPIPS/FID weights here
    data = tmp_path / "hr"
    data.mkdir()
    for i in range(3):
        small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        Image.fromarray(small).resize((64, 48), Image.BILINEAR).save(data / f"{i}.png")
    (data / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    out = tmp_path / "report"
    code = main(["eval-sr", str(data), "--engine", "bicubic", "--crop", "32", "--crops-per-image", "2",
                 "--out", str(out), "--cache-dir", str(cache_dir), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0 and "broken.jpg" in captured.err and "| bicubic |" in captured.out
    rows = list(csv.DictReader(open(out / "per_image.csv")))
    assert len(rows) == 3 * 2 * 2  # images x crops x (baseline, engine)
    assert {r["method"] for r in rows} == {"bicubic", "bicubic (engine)"}
    for row in rows:
        assert 5 < float(row["psnr_y"]) < 100 and -1 <= float(row["ssim_y"]) <= 1
        assert (int(row["height"]), int(row["width"])) == (32, 32)
    summary = json.loads((out / "summary.json").read_text())
    # the engine IS bicubic here, so both rows must agree exactly: the pipeline adds nothing of its own
    assert summary["summary"]["bicubic"]["psnr_y"] == pytest.approx(summary["summary"]["bicubic (engine)"]["psnr_y"])
    assert set(summary["optional_metrics"]) == {"lpips", "fid"}
    assert all(isinstance(v, str) and v.startswith("not computed") for v in summary["optional_metrics"].values())
    assert "PSNR-Y" in (out / "summary.md").read_text()


def test_eval_sr_with_nothing_usable_is_a_clear_error(tmp_path, cache_dir):
    (tmp_path / "x.png").write_bytes(b"nope")
    with pytest.raises(SystemExit, match="no usable images"):
        main(["eval-sr", str(tmp_path), "--engine", "bicubic", "--out", str(tmp_path / "o"),
              "--cache-dir", str(cache_dir), "--no-progress"])
