"""`sr-augment experiment`: McNemar against a hand-computed table, splits, and an end-to-end run."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from sr_augment.cli import main
from sr_augment.experiment import ARMS, discover, mcnemar_exact


def test_mcnemar_exact_matches_a_hand_computed_table():
    # 10 discordant pairs, 8 favour A: p = 2 * P(X <= 2), X ~ Binomial(10, 1/2) = 2 * 56 / 1024
    a = np.array([1] * 8 + [0] * 2 + [1] * 5 + [0] * 3, bool)
    b = np.array([0] * 8 + [1] * 2 + [1] * 5 + [0] * 3, bool)
    result = mcnemar_exact(a, b)
    assert (result["b"], result["c"]) == (8, 2)
    assert result["p"] == pytest.approx(2 * (1 + 10 + 45) / 1024)
    assert mcnemar_exact(a, a) == {"b": 0, "c": 0, "p": 1.0}


def _image_folder(root, rng, per_class=10, size=40, placeholder=True):
    """Two classes a CNN can tell apart: bright vs dark noisy images."""
    for label, base in (("bright", 170), ("dark", 60)):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.clip(base + rng.normal(0, 30, (size, size + 8, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / label / f"{i}.png")
    if placeholder:  # like hymenoptera's GIF placeholder: reported and skipped
        (root / "dark" / "placeholder.gif").write_bytes(b"GIF89a broken")
    return root


def test_one_folder_is_split_stratified_80_10_10(tmp_path, rng):
    data = discover(_image_folder(tmp_path / "d", rng, placeholder=False))
    assert data.classes == ["bright", "dark"]
    assert len(data.train) == 16 and len(data.test) == 2
    assert sorted(label for _, label in data.test) == [0, 1]
    assert discover(tmp_path / "d").test == data.test  # fixed seed


@pytest.mark.parametrize("framework", ["torch", "keras"])
@pytest.mark.slow  # trains a classifier
def test_experiment_end_to_end_writes_every_output(tmp_path, cache_dir, capsys, rng, framework):
    root = tmp_path / "data"
    _image_folder(root / "train", rng, per_class=6)
    _image_folder(root / "val", rng, per_class=3)
    out = tmp_path / "out"
    code = main(["experiment", str(root), "--engine", "bicubic", "--seeds", "2", "--epochs", "1",
                 "--image-size", "32", "--batch-size", "4", "--framework", framework, "--out", str(out),
                 "--cache-dir", str(cache_dir), "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 0 and "| HR+SRAugment |" in printed
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"config", "data", "arms", "mcnemar", "wall_seconds"}
    assert results["data"]["train"] == 12 and results["data"]["test"] == 6
    assert any("placeholder.gif" in s for s in results["data"]["skipped"])
    assert results["data"]["class_weights"] == pytest.approx([1.0, 1.0])
    assert set(results["arms"]) == set(ARMS)
    for arm in results["arms"].values():
        assert len(arm["runs"]) == 2
        for run in arm["runs"]:
            assert all(0.0 <= run[m] <= 1.0 for m in ("accuracy", "precision", "recall", "f1"))
            assert np.sum(run["confusion"]) == 6 and set(run["per_class"]) == {"bright", "dark"}
            assert run["accuracy"] == pytest.approx(np.trace(run["confusion"]) / 6)
        assert all(arm["std"][m] >= 0 for m in arm["std"])
    assert len(results["mcnemar"]) == 6 and all(0 <= t["p"] <= 1 for ts in results["mcnemar"].values() for t in ts)
    for name in ("report.md", "samples.png", "confusion_LR.png", "confusion_SR.png", "confusion_HR.png",
                 "confusion_HR_SRAugment.png"):
        assert (out / name).stat().st_size > 0, name
    assert Image.open(out / "samples.png").size == (3 * 132 + 4, 4 * 132 + 4)
    assert "McNemar" in (out / "report.md").read_text()


def test_experiment_rejects_a_folder_without_classes(tmp_path, cache_dir):
    (tmp_path / "only").mkdir()
    with pytest.raises(SystemExit, match="class"):
        main(["experiment", str(tmp_path / "only"), "--engine", "bicubic", "--out", str(tmp_path / "o"),
              "--cache-dir", str(cache_dir), "--no-progress"])


def test_classes_too_small_to_split_or_empty_are_named(tmp_path, rng):
    small = tmp_path / "small"
    _image_folder(small, rng, per_class=10, placeholder=False)
    for extra in list((small / "dark").iterdir())[:6]:
        extra.unlink()
    with pytest.raises(ValueError, match="dark has 4"):
        discover(small)
    split = tmp_path / "split"
    _image_folder(split / "train", rng, per_class=2, placeholder=False)
    _image_folder(split / "test", rng, per_class=1, placeholder=False)
    (split / "train" / "wasps").mkdir()
    with pytest.raises(ValueError, match="train/wasps"):
        discover(split)
