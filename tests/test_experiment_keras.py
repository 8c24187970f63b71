"""`sr-augment experiment --framework keras`: the same study, trained by Keras with the Keras `SRAugment`
layer over the warmed cache (slow: imports TensorFlow)."""

from __future__ import annotations

import json

import pytest

from sr_augment.cli import main
from test_experiment import _photo_classes


@pytest.mark.slow
@pytest.mark.timeout(1200)  # six Keras trainings: each builds and traces its graphs
def test_the_study_trains_with_keras_and_reports_the_same_outputs(tmp_path, cache_dir):
    data = _photo_classes(tmp_path / "data", per_class=4, placeholder=False)
    out = tmp_path / "out"
    assert main(["experiment", str(data), "--engines", "bicubic", "--folds", "2", "--epochs", "2", "--repeats", "1",
                 "--image-size", "32", "--width", "8", "--framework", "keras", "--out", str(out),
                 "--cache-dir", str(cache_dir), "--no-progress"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["framework"] == "keras"
    assert len(results["predictions"]) == 8 * 3
    assert all(len(r["curves"]["test_accuracy"]) == 2 for r in results["runs"])
    assert "warm-up" in results["config"]["protocol"]["schedule"]
    assert (out / "study.png").stat().st_size > 0
