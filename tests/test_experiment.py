"""`sr-augment experiment`: the study end to end through the CLI on a tiny data set made from
scikit-image's photos, the folds, the engine list, and the command's refusals. The statistics have
their own file, tests/test_experiment_stats.py."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from conftest import photo
from sr_augment.cli import main
from sr_augment.experiment import EngineChoice, collect, make_folds, parse_engines
from sr_augment.experiment.study import build_engines


def _photo_classes(root, per_class=6, size=48, placeholder=True):
    """Two classes of crops from two real photos (astronaut, chelsea the cat), each crop elsewhere in
    its photo; with a broken GIF like hymenoptera's placeholder."""
    for name in ("astronaut", "chelsea"):
        image = photo(name)
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            top, left = 20 * i, 25 * i
            Image.fromarray(image[top:top + 3 * size, left:left + 3 * size + 10]).save(root / name / f"{i}.png")
    if placeholder:
        (root / "chelsea" / "placeholder.gif").write_bytes(b"GIF89a broken")
    return root


def _run(data, out, cache_dir, *extra):
    return main(["experiment", str(data), "--engines", "bicubic", "--folds", "2", "--repeats", "1", "--epochs", "2",
                 "--image-size", "32", "--width", "8", "--variants", "2", "--out", str(out), "--cache-dir",
                 str(cache_dir), "--no-progress", *extra])


@pytest.mark.slow  # trains 12 small CNNs (two runs of 3 arms x 2 folds)
def test_study_runs_end_to_end_and_a_second_run_makes_no_sr(tmp_path, cache_dir, capsys):
    data = _photo_classes(tmp_path / "data")
    out = tmp_path / "out"
    assert _run(data, out, cache_dir) == 0
    printed = capsys.readouterr().out
    assert "| HR+SRAugment(bicubic) |" in printed and "estimate:" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["arms"] == ["LR", "HR", "HR+SRAugment(bicubic)"]
    assert results["data"]["images"] == 12 and results["data"]["classes"] == ["astronaut", "chelsea"]
    assert any("placeholder.gif" in s for s in results["data"]["skipped"])
    labels = np.array(results["data"]["labels"])

    # folds: stratified, every image tested exactly once per repeat, the same folds for every arm
    tested = [i for fold in results["folds"] for i in fold["test"]]
    assert sorted(tested) == list(range(12))
    for fold in results["folds"]:
        assert Counter(labels[fold["test"]].tolist()) == {0: 3, 1: 3}
    by_arm = {arm: sorted((p["image"], p["fold"], p["repeat"]) for p in results["predictions"] if p["arm"] == arm)
              for arm in results["arms"]}
    assert len(results["predictions"]) == 12 * 3
    assert by_arm["LR"] == by_arm["HR"] == by_arm["HR+SRAugment(bicubic)"]
    assert len(set(by_arm["HR"])) == 12
    for p in results["predictions"]:
        assert p["label"] == labels[results["data"]["ids"].index(p["image"])] and p["prediction"] in (0, 1)

    # seeds recorded, curves per epoch, one seed per fold shared by its arms
    assert len(results["runs"]) == 2 * 3
    for run in results["runs"]:
        assert len(run["curves"]["test_accuracy"]) == len(run["curves"]["train_accuracy"]) == 2
    assert {r["seed"] for r in results["runs"] if r["fold"] == 0} == {0}
    assert results["config"]["protocol"]["chosen"].startswith("fixed in advance")

    # statistics: every arm has CIs around its estimate, every pair a difference, McNemar and Holm
    for arm, s in results["summary"].items():
        a = s["accuracy"]
        assert a["low"] <= a["estimate"] <= a["high"]
        hits = [p["prediction"] == p["label"] for p in results["predictions"] if p["arm"] == arm]
        assert a["estimate"] == pytest.approx(np.mean(hits))
        assert set(s["per_class"]) == {"astronaut", "chelsea"}
    assert len(results["pairs"]) == 3
    assert all(0 <= pair["mcnemar"]["p_holm"] <= 1 for pair in results["pairs"])

    report = (out / "report.md").read_text()
    for needle in ("](study.png)", "](curves.png)", "Holm", "Per-class accuracy", "fixed in advance",
                   "SR generated in this run"):
        assert needle in report, needle
    for name in ("study.png", "curves.png", "samples.png"):
        assert Image.open(out / name).size[0] > 100, name
    assert results["sr_generated"]["bicubic"] == 12  # every image's SRAugment variant: one, bicubic is deterministic
    assert results["config"]["variants"] == {"bicubic": 1}

    assert _run(data, tmp_path / "again", cache_dir) == 0  # the same study again: everything from the cache
    again = json.loads((tmp_path / "again" / "results.json").read_text())
    assert again["sr_generated"] == {"bicubic": 0}
    assert again["folds"] == results["folds"]
    assert [p["prediction"] for p in again["predictions"]] == [p["prediction"] for p in results["predictions"]]


@pytest.mark.slow  # trains 13 small CNNs
def test_a_cut_off_study_resumes_from_its_checkpoints_and_retrains_a_damaged_or_stale_one(tmp_path, cache_dir,
                                                                                       capsys):
    data = _photo_classes(tmp_path / "data", placeholder=False)
    out = tmp_path / "out"
    assert _run(data, out, cache_dir) == 0
    first = json.loads((out / "results.json").read_text())
    saved = sorted((out / "trainings").glob("*.json"))
    assert len(saved) == 6 and first["trainings_resumed"] == 0
    capsys.readouterr()

    saved[0].write_text('{"key": "')  # cut off mid-write (or damaged): trained again
    assert _run(data, out, cache_dir) == 0
    printed = capsys.readouterr().out
    again = json.loads((out / "results.json").read_text())
    assert again["trainings_resumed"] == 5 and f"{saved[0]}: ignored, not a readable checkpoint" in printed
    assert "5 of 6 trainings were saved by an earlier run" in printed and "estimate: 1 trainings" in printed
    assert "Trainings reused from an earlier run of this study (`trainings/`): 5 of 6." in (out / "report.md").read_text()
    assert [p["prediction"] for p in again["predictions"]] == [p["prediction"] for p in first["predictions"]]

    planted = json.loads(saved[1].read_text())
    saved[1].write_text(json.dumps({**planted, "curves": {}}))  # the right key, nothing the report can read
    assert _run(data, out, cache_dir) == 0
    assert f"{saved[1]}: ignored, it belongs to other settings or is damaged" in capsys.readouterr().out

    assert _run(data, out, cache_dir, "--epochs", "1") == 0  # other settings: nothing reused
    stale = json.loads((out / "results.json").read_text())
    assert stale["trainings_resumed"] == 0 and "belongs to other settings" in capsys.readouterr().out


def test_folds_are_stratified_repeated_and_refuse_too_small_classes():
    labels = np.array([0] * 6 + [1] * 9)
    plan = make_folds(labels, 3, 2, seed=0, classes=["a", "b"])
    assert [(f["repeat"], f["fold"]) for f in plan] == [(r, k) for r in range(2) for k in range(3)]
    for repeat in (0, 1):
        tested = np.concatenate([f["test"] for f in plan if f["repeat"] == repeat])
        assert sorted(tested.tolist()) == list(range(15))
    for f in plan:
        assert np.bincount(labels[f["test"]]).tolist() == [2, 3]
        assert not set(f["train"]) & set(f["test"])
    assert [f["test"].tolist() for f in plan[:3]] != [f["test"].tolist() for f in plan[3:]]  # redrawn
    with pytest.raises(ValueError, match="a has 6"):
        make_folds(labels, 7, 1, seed=0, classes=["a", "b"])


def test_collect_pools_train_and_val_and_takes_a_seeded_subset(tmp_path):
    root = tmp_path / "split"
    _photo_classes(root / "train", per_class=4, placeholder=False)
    _photo_classes(root / "val", per_class=2, placeholder=False)
    data = collect(root)
    assert data.classes == ["astronaut", "chelsea"] and len(data.items) == 12 and "pooled" in data.layout
    subset = collect(root, per_class=3, seed=1)
    assert Counter(label for _, label in subset.items) == {0: 3, 1: 3}
    assert subset.items == collect(root, per_class=3, seed=1).items


def test_engine_list_takes_parameters_presets_and_module_classes():
    assert parse_engines("bicubic,dat-light") == [EngineChoice("bicubic"), EngineChoice("dat-light")]
    assert parse_engines("sr4:fast, sr4:preset=fidelity:steps=2") == [
        EngineChoice("sr4", {"preset": "fast"}), EngineChoice("sr4", {"preset": "fidelity", "steps": 2})]
    assert parse_engines('realesrgan:degrade=["blur","noise"],mypkg.engines:MyEngine:size=3') == [
        EngineChoice("realesrgan", {"degrade": ["blur", "noise"]}), EngineChoice("mypkg.engines:MyEngine", {"size": 3})]
    assert EngineChoice("sr4", {"preset": "fast"}).label == "sr4:preset=fast"
    with pytest.raises(ValueError, match="twice"):
        parse_engines("bicubic,bicubic")
    with pytest.raises(ValueError, match="empty"):
        parse_engines("bicubic,")


def test_degrade_in_the_engine_list_gives_varied_variants_and_its_own_keys():
    """`dat-light:degrade=light` in --engines: a deterministic engine whose HR+SRAugment variants differ
    (the study then keeps --variants for it) and whose keys are not the clean engine's."""
    from sr_augment.engines.determinism import is_deterministic

    built = build_engines(parse_engines("bicubic,bicubic:degrade=light"), lr_factor=4)
    clean, degraded = built["bicubic"], built["bicubic:degrade=light"]
    assert is_deterministic(clean) and not is_deterministic(degraded)
    assert degraded.fingerprint != clean.fingerprint
    with pytest.raises(ValueError, match="degrade"):
        build_engines(parse_engines("bicubic:degrade=lihgt"), lr_factor=4)


def test_a_bad_engine_or_folder_is_named_before_any_training(tmp_path, cache_dir, capsys):
    data = _photo_classes(tmp_path / "data", per_class=2, placeholder=False)
    with pytest.raises(SystemExit, match="bicubic:colour=1"):
        _run(data, tmp_path / "o", cache_dir, "--engines", "bicubic:colour=1")
    with pytest.raises(SystemExit, match="at least 3 images per class"):
        _run(data, tmp_path / "o", cache_dir, "--folds", "3")
    (tmp_path / "only").mkdir()
    capsys.readouterr()
    with pytest.raises(SystemExit, match="class folders"):
        _run(tmp_path / "only", tmp_path / "o", cache_dir)
    assert "deterministic" not in capsys.readouterr().out  # the refusal comes first, alone (independent run)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("option, value, problem", [
    ("--device", "tpu", "the device must be one of"), ("--engine-device", "gpu", "the device must be one of"),
    ("--engine-dtype", "fp13", "the dtype must be one of"), ("--batch-size", "0", "must be >= 1")])
def test_a_bad_device_dtype_or_batch_size_is_a_usage_error_before_anything_runs(tmp_path, cache_dir, capsys,
                                                                                 option, value, problem):
    with pytest.raises(SystemExit) as exit_info:
        _run(tmp_path / "missing", tmp_path / "o", cache_dir, option, value)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert option in err and problem in err and value in err
    assert not (tmp_path / "o").exists()


def test_an_engine_and_its_degraded_self_share_one_sr_arm_and_bicubic_never_gets_one():
    from sr_augment.experiment.study import arm_names

    assert arm_names(parse_engines("realesr-animevideov3:degrade=light,realesr-animevideov3")) == [
        "LR", "SR(realesr-animevideov3)", "HR", "HR+SRAugment(realesr-animevideov3:degrade=light)",
        "HR+SRAugment(realesr-animevideov3)"]
    assert arm_names(parse_engines("bicubic:degrade=light,dat-light:degrade=light:tile=32")) == [
        "LR", "SR(dat-light:tile=32)", "HR", "HR+SRAugment(bicubic:degrade=light)",
        "HR+SRAugment(dat-light:degrade=light:tile=32)"]


def test_the_sr_arm_of_a_degraded_engine_is_built_once_from_the_clean_engine(cache_dir):
    """dat-light:degrade=light and dat-light share SR(dat-light), made by the clean engine (so its cache
    entries are the clean engine's); bicubic:degrade=light adds no SR arm (LR is bicubic SR)."""
    from sr_augment.cache import SRCache
    from sr_augment.experiment.study import build_arm_images
    from sr_augment.images import resize

    built = build_engines(parse_engines("bicubic:degrade=light,dat-light:degrade=light"), lr_factor=4)
    hr = np.stack([photo("astronaut")[:32, :32], photo("chelsea")[:32, :32]])
    cache = SRCache(cache_dir)
    images, _ = build_arm_images(hr, built, cache, 4, 1, 2, progress=False)
    assert sorted(images) == ["HR", "HR+SRAugment(bicubic:degrade=light)", "HR+SRAugment(dat-light:degrade=light)",
                              "LR", "SR(dat-light)"]
    clean = build_engines(parse_engines("dat-light"), lr_factor=4)["dat-light"]
    assert cache.plan([resize(im, (8, 8)) for im in hr], clean, "upscale", 1) == []


def test_training_warnings_name_unsettled_batchnorm_and_a_collapsed_arm():
    """An independent run on a data set we had not used (scikit-learn's digits, 8 epochs of 200 images)
    reported "significant" differences between arms whose models predicted one class for every test
    image: their BatchNorm statistics had not settled. The report now says so."""
    from sr_augment.experiment.study import training_warnings

    def run(arm, train, fit, steps=24):
        return {"arm": arm, "repeat": 0, "fold": 1, "curves": {"train_accuracy": [0.5, train]},
                "diagnostics": {"steps": steps, "eval_train_accuracy": fit}}

    def arm(share):
        return {"per_class": {"a": {"predicted_share": share}, "b": {"predicted_share": (1 - share) / 2},
                              "c": {"predicted_share": (1 - share) / 2}}}

    healthy = [run("LR", 0.80, 0.85), run("HR", 0.90, 0.88)]
    assert training_warnings(healthy, {"LR": arm(0.34), "HR": arm(0.40)}, 3) == []
    assert training_warnings([{**healthy[0], "diagnostics": None}], {"LR": arm(0.34)}, 3) == []  # old checkpoint
    unsettled = training_warnings([run("LR", 0.80, 0.85), run("HR", 0.88, 0.09)], {"LR": arm(0.34), "HR": arm(0.4)}, 3)
    assert len(unsettled) == 1 and "1 of 2 trainings" in unsettled[0] and "HR, repeat 0 fold 1: 0.09" in unsettled[0]
    assert "24 optimiser steps" in unsettled[0] and "--epochs" in unsettled[0]
    collapsed = training_warnings(healthy, {"LR": arm(0.34), "HR": arm(0.98)}, 3)
    assert len(collapsed) == 1 and "HR (98%)" in collapsed[0] and "LR" not in collapsed[0]


@pytest.mark.slow  # trains one small CNN on 200 digits
def test_too_few_steps_leave_a_model_that_cannot_predict_its_own_training_images():
    """What the independent run found, with the study's own trainer: 8 epochs of 200 images (24 steps)
    train to a high accuracy in train mode, but the model as it predicts gets its own training images
    about as right as chance; the diagnostics catch it and `training_warnings` says so."""
    from sklearn.datasets import load_digits

    from sr_augment.experiment import stats, torch_cnn
    from sr_augment.experiment.study import training_warnings
    from sr_augment.images import resize

    digits = load_digits()
    keep = np.concatenate([np.flatnonzero(digits.target == k)[:20] for k in range(10)])
    x = np.stack([resize(np.repeat((digits.images[i] * 255 / 16).astype(np.uint8)[..., None], 3, axis=2), (32, 32))
                  for i in keep])
    y = digits.target[keep]
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = torch_cnn.train_and_predict(x, y, x[:20], y[:20], 10, epochs=8, seed=0, width=8,
                                             class_weight=stats.class_weights(y, 10))
    finally:
        torch.set_num_threads(threads)
    diagnostics = result["diagnostics"]
    assert diagnostics["steps"] == 8 * 3  # 200 images, batches of 64, the last partial one dropped
    assert diagnostics["eval_train_accuracy"] < 0.5 * result["curves"]["train_accuracy"][-1]
    run = {"arm": "HR", "repeat": 0, "fold": 0, "curves": result["curves"], "diagnostics": diagnostics}
    assert "BatchNorm statistics have not settled" in training_warnings([run], {}, 10)[0]
