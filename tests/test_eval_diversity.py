"""`eval-sr --variants K`: the spread between an engine's variants, measured beside Y-PSNR/SSIM."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from conftest import photo
from sr_augment.cli import main
from sr_augment.engines.degrade import check_degrade
from sr_augment.metrics import variant_spread


def test_variant_spread_of_known_images():
    a = np.zeros((8, 8, 3), np.uint8)
    b = np.full((8, 8, 3), 10, np.uint8)
    assert variant_spread([a, a, a]) == {"pair_mad": 0.0, "pixel_std": 0.0}
    assert variant_spread([a, b]) == {"pair_mad": 10.0, "pixel_std": 5.0}
    # pairs (a, b), (a, c), (b, c) differ by 10, 20, 10; the population std of 0, 10, 20 is sqrt(200/3)
    spread = variant_spread([a, b, np.full((8, 8, 3), 20, np.uint8)])
    assert spread["pair_mad"] == pytest.approx(40 / 3) and spread["pixel_std"] == pytest.approx((200 / 3) ** 0.5)
    c = a.copy()
    c[:2] = 255  # differs only in a border that is shaved off
    assert variant_spread([a, c], shave=2)["pair_mad"] == 0.0 and variant_spread([a, c])["pair_mad"] > 0
    with pytest.raises(ValueError, match="at least 2"):
        variant_spread([a])


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "hr"
    folder.mkdir()
    for name in ("coffee", "chelsea"):
        Image.fromarray(photo(name)).save(folder / f"{name}.png")
    return folder


def _eval(photos, out, cache_dir, *extra):
    return main(["eval-sr", str(photos), "--crop", "128", "--out", str(out), "--cache-dir", str(cache_dir),
                 "--no-progress", *extra])


def test_eval_sr_variants_reports_the_spread_of_a_sampling_engine(photos, tmp_path, cache_dir, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "no-torch-hub"))
    out = tmp_path / "report"
    assert _eval(photos, out, cache_dir, "--engine", "sr4", "--set", "preset=fast", "--variants", "3") == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    label = "sr4 [preset=fast]"  # the --set parameters name the row
    assert set(summary["summary"]) == {"bicubic", label}
    engine, bicubic = summary["summary"][label], summary["summary"]["bicubic"]
    assert engine["variants"] == 3 and engine["crops"] == 2
    assert engine["pair_mad"] > 0 and engine["pixel_std"] > 0  # seeds give different samples
    assert bicubic["pair_mad"] == 0 and bicubic["pixel_std"] == 0  # bicubic has no seed
    assert engine["psnr_y"] > bicubic["psnr_y"]
    rows = list(csv.DictReader(open(out / "per_image.csv")))
    assert len(rows) == 2 * (1 + 3)  # per crop: the bicubic row and one per variant
    assert sorted(int(r["variant"]) for r in rows if r["method"] == label) == [0, 0, 1, 1, 2, 2]
    assert f"| {label} | 2 | 3 |" in printed and "pairwise MAD" in printed
    assert "LPIPS: not computed" in printed


def test_a_deterministic_engine_has_no_spread(photos, tmp_path, cache_dir):
    out = tmp_path / "report"
    assert _eval(photos, out, cache_dir, "--engine", "bicubic", "--variants", "2") == 0
    summary = json.loads((out / "summary.json").read_text())["summary"]
    assert summary["bicubic (engine)"]["pair_mad"] == 0 and summary["bicubic (engine)"]["variants"] == 2


def test_one_variant_reports_no_spread_and_keeps_the_plain_table(photos, tmp_path, cache_dir, capsys):
    out = tmp_path / "report"
    assert _eval(photos, out, cache_dir, "--engine", "bicubic") == 0
    summary = json.loads((out / "summary.json").read_text())["summary"]
    assert summary["bicubic (engine)"]["variants"] == 1 and summary["bicubic (engine)"]["pair_mad"] is None
    assert "| bicubic (engine) | 2 | 1 |" in capsys.readouterr().out


@pytest.mark.parametrize("bad", ["0", "-2", "two"])
def test_variants_must_be_a_positive_count(photos, tmp_path, cache_dir, bad, capsys):
    with pytest.raises(SystemExit) as info:
        _eval(photos, tmp_path / "o", cache_dir, "--engine", "bicubic", "--variants", bad)
    assert info.value.code == 2 and "--variants" in capsys.readouterr().err


def test_eval_sr_degrade_gives_a_deterministic_engine_spread(photos, tmp_path, cache_dir, capsys):
    out = tmp_path / "report"
    assert _eval(photos, out, cache_dir, "--engine", "bicubic", "--variants", "3", "--degrade", "light") == 0
    summary = json.loads((out / "summary.json").read_text())["summary"]
    label = "bicubic + degrade light"  # the row says the engine and the degradation
    assert set(summary) == {"bicubic", label}
    assert summary[label]["variants"] == 3 and summary[label]["pair_mad"] > 0 and summary[label]["pixel_std"] > 0
    assert summary["bicubic"]["pair_mad"] == 0
    # variant 0 is the clean input: exactly bicubic's score; the degraded variants 1, 2 score lower on average
    rows = list(csv.DictReader(open(out / "per_image.csv")))
    clean = {r["image"]: float(r["psnr_y"]) for r in rows if r["method"] == "bicubic"}
    variant0 = {r["image"]: float(r["psnr_y"]) for r in rows if r["method"] == label and r["variant"] == "0"}
    assert variant0 == pytest.approx(clean)
    assert summary[label]["psnr_y"] < summary["bicubic"]["psnr_y"]
    assert f"| {label} | 2 | 3 |" in capsys.readouterr().out
    # the same engine without --degrade: copies (test_a_deterministic_engine_has_no_spread); with settings as JSON
    out = tmp_path / "json"
    assert _eval(photos, out, cache_dir, "--engine", "bicubic", "--variants", "2",
                 "--degrade", '{"noise": {"sigma": 5}}') == 0
    saved = json.loads((out / "summary.json").read_text())
    assert saved["summary"]["bicubic + degrade custom"]["pair_mad"] > 0
    # "custom" alone would not say which settings made the numbers: summary.json keeps them (review)
    assert saved["settings"]["degrade"] == check_degrade({"noise": {"sigma": 5}})
    assert saved["settings"]["variants"] == 2 and "degrade" in saved["settings"]["fingerprint"]


def test_eval_sr_degrade_refuses_bad_settings_naming_the_option(photos, tmp_path, cache_dir, capsys):
    with pytest.raises(SystemExit) as exc:
        _eval(photos, tmp_path / "report", cache_dir, "--engine", "bicubic", "--degrade", "lihgt")
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--degrade" in err and "unknown preset 'lihgt'" in err and "did you mean 'light'" in err
