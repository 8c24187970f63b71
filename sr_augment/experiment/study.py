"""The study's run: pool the images, draw the folds, build every arm's images, train every arm on every
(repeat, fold), compare the arms on the pooled predictions.

The one place that knows the order of the study; data and folds, arms' images, statistics, the CNNs and
the report each live in their own module of this package.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sr_augment.experiment import stats
from sr_augment.experiment.data import collect, load_items, make_folds
from sr_augment.experiment.options import DEFAULTS
from sr_augment.images import resize

BASELINE = "HR"
"""The arm every other is compared with in the figure: training on the originals, as users do today."""

@dataclass
class EngineChoice:
    """One engine of `--engines`: the spec `get_engine` takes, its parameters, and the label arms use."""

    spec: str
    params: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.spec + "".join(f":{k}={json.dumps(v) if not isinstance(v, str) else v}"
                                   for k, v in self.params.items())


def _split_top_level(text: str, sep: str) -> list[str]:
    """`text` split on `sep` outside brackets and quotes (a JSON value may hold commas and colons)."""
    parts, depth, quote, current = [], 0, None, []
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    parts.append("".join(current))
    return parts


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_engines(text: str) -> list[EngineChoice]:
    """`--engines`: comma-separated engine specs, each optionally followed by `:key=value` parameters
    (values read as JSON where they are JSON, else text) or, after a named engine, `:preset` as short
    for `:preset=preset`. E.g. `bicubic,dat-light,sr4:fast,sr4:preset=fidelity,realesrgan:degrade=light`.
    A `module:Class` or a path keeps its colon. Duplicates are refused."""
    from sr_augment.engines.listing import builtin_engines

    names = {entry.spec for entry in builtin_engines()}
    choices = []
    for item in (part.strip() for part in _split_top_level(text, ",")):
        if not item:
            raise ValueError(f"--engines {text!r}: an empty engine name")
        segments = _split_top_level(item, ":")
        params = {}
        while len(segments) > 1 and "=" in segments[-1]:
            key, _, value = segments.pop().partition("=")
            if not key:
                raise ValueError(f"--engines {item!r}: a parameter without a name")
            params[key.strip().replace("-", "_")] = _value(value)
        if len(segments) == 2 and segments[0] in names and segments[1]:
            params["preset"] = segments.pop()
        choice = EngineChoice(":".join(segments), dict(sorted(params.items())))
        if any(c.label == choice.label for c in choices):
            raise ValueError(f"--engines: {choice.label} is given twice")
        choices.append(choice)
    return choices


def sr_arm(choice: EngineChoice) -> str | None:
    """The SR arm of an engine: named after it without its `degrade=` settings (its SR is the clean
    engine's, variant 0), or None for bicubic (the LR arm is bicubic SR)."""
    if choice.spec == "bicubic":
        return None
    return f"SR({EngineChoice(choice.spec, {k: v for k, v in choice.params.items() if k != 'degrade'}).label})"


def arm_names(engines: list[EngineChoice]) -> list[str]:
    """LR, SR(e) for every engine but bicubic (without its degrade settings; each such arm once), HR,
    HR+SRAugment(e) for each engine (with its full label)."""
    sr = list(dict.fromkeys(arm for arm in map(sr_arm, engines) if arm is not None))
    return ["LR"] + sr + [BASELINE] + [f"HR+SRAugment({e.label})" for e in engines]


def _upscaled(cache, engine, lows: list, size: int, batch_size: int, bar) -> tuple[np.ndarray, int]:
    """The engine's SR of `lows` through the cache, resized to `size` if the engine's output differs;
    and how many the engine generated (0 when all were cached)."""
    generated, out = 0, []
    for start in range(0, len(lows), batch_size):
        batch = lows[start:start + batch_size]
        missing = cache.plan(batch, engine, "upscale", 1)
        if missing:
            generated += cache.generate_counted(engine, missing, "upscale")[1]
        results = cache.get_many(batch, engine, "upscale")
        if any(r is None for r in results):  # evicted at once by a tiny size limit: generate in place
            results = cache.get_or_create_many(batch, engine, "upscale")
        out += [r if r.shape[:2] == (size, size) else resize(r, (size, size)) for r in results]
        bar.update(len(batch))
    return np.stack(out), generated


def _warm_variants(cache, engine, images: np.ndarray, variants: int, batch_size: int, bar) -> int:
    """Every image's SRAugment variants cached (each image trains in some fold); how many were generated."""
    generated = 0
    for start in range(0, len(images), batch_size):
        chunk = list(images[start:start + batch_size])
        missing = cache.plan(chunk, engine, "resynthesize", variants)
        for i in range(0, len(missing), batch_size):
            generated += cache.generate_counted(engine, missing[i:i + batch_size], "resynthesize")[1]
        bar.update(len(chunk) * variants)
    return generated


def build_arm_images(hr: np.ndarray, engines: dict, cache, lr_factor: int, variants, batch_size: int,
                     progress: bool, sr_arms: dict | None = None) -> tuple[dict, dict]:
    """{arm: images} (the HR+SRAugment arms train on HR) and {engine label: SR images generated};
    `engines`: {label: engine} as `build_engines` gives; `variants`: SRAugment variants, one number or one
    per engine label; `sr_arms`: {label: its `sr_arm`} (default: from the labels read back by `parse_engines`).
    An SR arm is made once, by the engine without its degradation."""
    from tqdm.auto import tqdm

    from sr_augment.engines.degrade import undegraded

    size = hr.shape[1]
    low = max(1, round(size / lr_factor))
    variants = variants if isinstance(variants, dict) else {label: variants for label in engines}
    lows = [resize(im, (low, low)) for im in hr]
    images = {"LR": np.stack([resize(im, (size, size)) for im in lows]), BASELINE: hr}
    generated = {}
    for label, engine in engines.items():
        count = 0
        arm = sr_arms[label] if sr_arms is not None else sr_arm(parse_engines(label)[0])
        if arm is not None and arm not in images:
            with tqdm(total=len(lows), desc=arm, unit="img", disable=not progress) as bar:
                images[arm], count = _upscaled(cache, undegraded(engine), lows, size, batch_size, bar)
        with tqdm(total=len(hr) * variants[label], desc=f"SRAugment variants {label}", unit="img",
                  disable=not progress) as bar:
            count += _warm_variants(cache, engine, hr, variants[label], batch_size, bar)
        images[f"HR+SRAugment({label})"] = hr
        generated[label] = count
    return images, generated


def estimate_seconds(trainings: int, epochs: int, train_images: int, seconds_per_image: float) -> float:
    """Training time of the study: optimiser steps' time, plus a third for data loading and evaluation
    (measured on this protocol at 64 px on a CPU)."""
    return trainings * epochs * train_images * seconds_per_image * 4 / 3


def build_engines(engines: list[EngineChoice], lr_factor: int, device: str = "auto", dtype: str = "auto") -> dict:
    """{label: engine} for `--engines`, each checked and built; `degrade=` wraps an engine so that its
    variants k > 0 super-resolve seeded degradations (`sr_augment.engines.degrade`). A ValueError names
    the engine that cannot be built."""
    from sr_augment.engines import get_engine
    from sr_augment.engines.degrade import with_degradation

    built = {}
    for choice in engines:
        params = dict(choice.params)
        degrade = params.pop("degrade", None)
        try:
            built[choice.label] = with_degradation(get_engine(choice.spec, scale=lr_factor, device=device,
                                                              dtype=dtype, **params), degrade)
        except Exception as exc:
            raise ValueError(f"--engines {choice.label}: {exc}") from exc
    return built


CHECKPOINTS = "trainings"
"""Sub-folder of `--out` holding one JSON file per finished training, so a cut-off study resumes."""


def training_key(settings: dict, arm: str, split: dict, seed: int, ids: list[str]) -> str:
    """A digest of everything one training's predictions depend on: a checkpoint is reused only on a match."""
    blob = json.dumps({"settings": settings, "arm": arm, "repeat": split["repeat"], "fold": split["fold"],
                       "seed": seed, "train": [ids[i] for i in split["train"]],
                       "test": [ids[i] for i in split["test"]]}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def load_checkpoint(path: Path, key: str, test_size: int, num_classes: int, log=print) -> dict | None:
    """The saved training at `path` if it is this training's (same key) and well formed, else None.

    The file is plain JSON, never unpickled; a stale or damaged one is ignored with a line saying why.
    """
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
        predictions = saved["predictions"]
        ok = (saved["key"] == key and isinstance(predictions, list) and len(predictions) == test_size
              and all(isinstance(v, int) and 0 <= v < num_classes for v in predictions)
              and isinstance(saved["curves"], dict) and isinstance(saved["seconds"], (int, float))
              and all(isinstance(saved["curves"].get(k), list) and saved["curves"][k]
                      and all(isinstance(v, (int, float)) for v in saved["curves"][k])
                      for k in ("train_accuracy", "test_accuracy")))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log(f"{path}: ignored, not a readable checkpoint ({exc}); training again")
        return None
    if not ok:
        log(f"{path}: ignored, it belongs to other settings or is damaged; training again")
        return None
    return saved


def save_checkpoint(path: Path, key: str, result: dict, seconds: float) -> None:
    """Write atomically: a crash mid-write leaves the old file or none, never half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"key": key, "predictions": [int(v) for v in result["predictions"]],
                               "curves": result["curves"], "diagnostics": result.get("diagnostics"),
                               "seconds": round(seconds, 1)}))
    os.replace(tmp, path)


def training_warnings(runs: list[dict], summary: dict, num_classes: int) -> list[str]:
    """What makes the numbers untrustworthy, in words: a model that, as it predicts, fits its own training
    images far worse than it did in training (BatchNorm statistics that never settled: too few optimiser
    steps), or an arm whose predictions one class swallows. Empty when nothing looks wrong."""
    warnings = []
    unsettled = [r for r in runs if isinstance(r.get("diagnostics"), dict)
                 and isinstance(r["diagnostics"].get("eval_train_accuracy"), (int, float))
                 and r["diagnostics"]["eval_train_accuracy"] < 0.5 * r["curves"]["train_accuracy"][-1]]
    if unsettled:
        worst = min(unsettled, key=lambda r: r["diagnostics"]["eval_train_accuracy"])
        warnings.append(
            f"{len(unsettled)} of {len(runs)} trainings predict their own training images far worse than they "
            f"trained (e.g. {worst['arm']}, repeat {worst['repeat']} fold {worst['fold']}: "
            f"{worst['diagnostics']['eval_train_accuracy']:.2f} against a train accuracy of "
            f"{worst['curves']['train_accuracy'][-1]:.2f}, after {worst['diagnostics']['steps']} optimiser steps): "
            f"the model's BatchNorm statistics have not settled, so its test predictions are not meaningful. "
            f"Train longer (--epochs) or on more images.")
    limit = min(0.9, 3.0 / num_classes)
    swallowed = {arm: max(c["predicted_share"] for c in s["per_class"].values()) for arm, s in summary.items()}
    swallowed = {arm: share for arm, share in swallowed.items() if share > limit}
    if swallowed:
        warnings.append(
            "one class receives most predictions in " + ", ".join(f"{arm} ({share:.0%})" for arm, share in
                                                                  swallowed.items())
            + f" (balanced: {1 / num_classes:.0%}): a collapsed classifier; its accuracy and differences are "
              f"not evidence about SR.")
    return warnings


def run_experiment(data_dir, out, *, engines: list[EngineChoice], cache, folds: int = DEFAULTS["folds"],
                   repeats: int = DEFAULTS["repeats"], epochs: int = DEFAULTS["epochs"],
                   image_size: int = DEFAULTS["image_size"], lr_factor: int = DEFAULTS["lr_factor"],
                   variants: int = DEFAULTS["variants"], p: float = DEFAULTS["p"], width: int = DEFAULTS["width"],
                   per_class: int | None = None, seed: int = 0, framework: str = "torch", device: str = "auto",
                   engine_device: str = "auto", engine_dtype: str = "auto", batch_size: int = 16,
                   progress: bool = True, log=print) -> dict:
    """Run the study; write results.json, report.md and the figures to `out`; return the results."""
    from sr_augment.experiment.report import write_outputs

    if framework not in ("torch", "keras"):
        raise ValueError(f"framework must be 'torch' or 'keras', got {framework!r}")
    for name, value in (("--lr-factor", lr_factor), ("--epochs", epochs), ("--variants", variants),
                        ("--image-size", image_size), ("--width", width)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"--p must be in [0, 1], got {p}")
    if image_size < 4 * lr_factor:
        raise ValueError(f"--image-size {image_size} is too small for --lr-factor {lr_factor}: the LR images "
                         f"would be under 4 px")
    if not engines:
        raise ValueError("--engines: no engine given")
    started = time.perf_counter()
    built = build_engines(engines, lr_factor, engine_device, engine_dtype)  # before any image is read
    from sr_augment.engines.determinism import is_deterministic

    data = collect(data_dir, per_class=per_class, seed=seed)  # a bad folder is refused before anything is said
    engine_variants = {}  # a deterministic engine's variants would all be the same pixels: one is enough
    for label, engine in built.items():
        engine_variants[label] = 1 if is_deterministic(engine) else variants
        if engine_variants[label] < variants:
            log(f"{label} is deterministic: 1 SRAugment variant (its variants would be identical)")
    images, labels, ids = load_items(data.items, image_size, data.skipped, root=data.root)
    for reason in data.skipped:
        log(f"skipped: {reason}")
    plan = make_folds(labels, folds, repeats, seed, data.classes)
    arms = arm_names(engines)
    log(f"{len(images)} images, {len(data.classes)} classes ({data.layout}); {folds} folds x {repeats} repeats, "
        f"{len(arms)} arms: {', '.join(arms)}")
    arm_images, generated = build_arm_images(images, built, cache, lr_factor, engine_variants, batch_size,
                                             progress, sr_arms={c.label: sr_arm(c) for c in engines})
    log(f"SR generated: {sum(generated.values())} (the rest came from the cache)")

    if framework == "torch":
        from sr_augment.experiment import torch_cnn as trainer
    else:
        from sr_augment.experiment import keras_cnn as trainer
    trainings = len(arms) * len(plan)
    settings = {"engines": {c.label: getattr(built[c.label], "fingerprint", "") for c in engines},
                "epochs": epochs, "image_size": image_size, "lr_factor": lr_factor, "variants": engine_variants,
                "p": p, "width": width, "framework": framework, "protocol": trainer.PROTOCOL, "data": str(data_dir)}
    jobs = []  # (split, arm, seed, key, checkpoint path, the checkpoint's saved training or None)
    for split, arm in itertools.product(plan, arms):
        run_seed = seed * 1000 + split["repeat"] * 100 + split["fold"]
        key = training_key(settings, arm, split, run_seed, ids)
        slug = "".join(c if c.isalnum() else "-" for c in arm).strip("-")
        checkpoint = Path(out) / CHECKPOINTS / f"r{split['repeat']}-f{split['fold']}-{slug}.json"
        jobs.append((split, arm, run_seed, key, checkpoint,
                     load_checkpoint(checkpoint, key, len(split["test"]), len(data.classes), log)))
    resumed = sum(job[-1] is not None for job in jobs)
    if resumed:
        log(f"{resumed} of {trainings} trainings were saved by an earlier run of this study ({Path(out) / CHECKPOINTS}):"
            f" reused")
    train_size = int(np.mean([len(f["train"]) for f in plan]))
    if resumed < trainings:
        per_image = trainer.time_step(image_size, len(data.classes), width=width, device=device)
        estimate = estimate_seconds(trainings - resumed, epochs, train_size, per_image)
        log(f"estimate: {trainings - resumed} trainings x {epochs} epochs x {train_size} images at "
            f"{per_image * 1e3:.2f} ms per image-step: about {estimate / 60:.0f} min of training")
    else:
        estimate = 0.0

    predictions = {arm: np.full((repeats, len(images)), -1, np.int64) for arm in arms}
    runs = []
    cache_dir = str(cache.directory)
    for index, (split, arm, run_seed, key, checkpoint, saved) in enumerate(jobs):
        engine_label = arm[len("HR+SRAugment("):-1] if arm.startswith("HR+SRAugment(") else None
        augment = None if engine_label is None else {"engine": built[engine_label], "p": p, "scale": lr_factor,
                                                     "variants": engine_variants[engine_label], "cache_dir": cache_dir}
        x = arm_images[arm]
        train, test = split["train"], split["test"]
        weights = stats.class_weights(labels[train], len(data.classes))
        if saved is not None:
            result = {"predictions": saved["predictions"], "curves": saved["curves"],
                      "diagnostics": saved.get("diagnostics")}
            seconds = saved["seconds"]
        else:
            t0 = time.perf_counter()
            result = trainer.train_and_predict(x[train], labels[train], x[test], labels[test], len(data.classes),
                                               epochs=epochs, seed=run_seed, class_weight=weights, width=width,
                                               device=device, augment=augment)
            seconds = time.perf_counter() - t0
            save_checkpoint(checkpoint, key, result, seconds)
        predictions[arm][split["repeat"], test] = result["predictions"]
        runs.append({"arm": arm, "repeat": split["repeat"], "fold": split["fold"], "seed": run_seed,
                     "train_images": len(train), "test_images": len(test), "seconds": round(seconds, 1),
                     "test_accuracy": result["curves"]["test_accuracy"][-1], "curves": result["curves"],
                     "diagnostics": result.get("diagnostics")})
        left = (trainings - index - 1) * sum(r["seconds"] for r in runs) / len(runs)
        log(f"[{index + 1}/{trainings}] repeat {split['repeat']} fold {split['fold']} {arm}: test accuracy "
            f"{runs[-1]['test_accuracy']:.3f}, train accuracy {result['curves']['train_accuracy'][-1]:.3f} "
            f"({seconds:.0f} s{', saved earlier' if saved is not None else ''}; about {left / 60:.0f} min left)")

    results = {
        "config": {"data": str(data_dir), "engines": [{"label": c.label, "spec": c.spec, "params": c.params,
                                                       "fingerprint": getattr(built[c.label], "fingerprint", "")}
                                                      for c in engines],
                   "folds": folds, "repeats": repeats, "epochs": epochs, "image_size": image_size,
                   "lr_size": max(1, round(image_size / lr_factor)), "lr_factor": lr_factor, "variants": engine_variants,
                   "p": p, "seed": seed, "per_class": per_class, "framework": framework, "baseline": BASELINE,
                   "protocol": {**trainer.PROTOCOL, "width": width, "epochs": epochs}},
        "data": {"classes": data.classes, "layout": data.layout, "images": len(images), "skipped": data.skipped,
                 "counts": np.bincount(labels, minlength=len(data.classes)).tolist(), "ids": ids,
                 "labels": labels.tolist()},
        "folds": [{"repeat": f["repeat"], "fold": f["fold"], "test": f["test"].tolist()} for f in plan],
        "arms": arms,
        "runs": runs,
        "predictions": [{"image": ids[i], "fold": f["fold"], "repeat": f["repeat"], "arm": arm,
                         "label": int(labels[i]), "prediction": int(predictions[arm][f["repeat"], i])}
                        for f in plan for arm in arms for i in f["test"].tolist()],
        "sr_generated": generated,
        "trainings_resumed": resumed,
        **compare(labels, predictions, data.classes, seed),
        "estimate_seconds": round(estimate, 1),
    }
    results["warnings"] = training_warnings(runs, results["summary"], len(data.classes))
    for warning in results["warnings"]:
        log(f"WARNING: {warning}")
    results["wall_seconds"] = round(time.perf_counter() - started, 1)
    write_outputs(results, arm_images, Path(out))
    return results


def compare(labels: np.ndarray, predictions: dict, classes: list[str], seed: int = 0) -> dict:
    """Per arm: accuracy and macro-F1 with bootstrap CIs, per-class accuracy, the confusion matrix. Per
    pair of arms: the accuracy difference with a paired bootstrap CI, McNemar per repeat and combined,
    Holm-adjusted p over all pairs."""
    n, k = len(labels), len(classes)
    summary = {}
    for arm, pred in predictions.items():
        correct = pred == labels[None]
        summary[arm] = {"accuracy": stats.bootstrap_ci(stats.accuracy_statistic(correct), n, seed=seed),
                        "macro_f1": stats.bootstrap_ci(stats.macro_f1_statistic(labels, pred, k), n, seed=seed),
                        "accuracy_per_repeat": correct.mean(axis=1).tolist(),
                        "per_class": stats.per_class_accuracy(labels, pred, classes),
                        "confusion": stats.confusion(labels, pred, k)}
    pairs = []
    for a, b in itertools.combinations(predictions, 2):
        ca, cb = predictions[a] == labels[None], predictions[b] == labels[None]
        per_repeat = [stats.mcnemar_exact(ca[r], cb[r]) for r in range(len(ca))]
        pairs.append({"a": a, "b": b,
                      "difference": stats.bootstrap_ci(stats.difference_statistic(ca, cb), n, seed=seed),
                      "mcnemar": {"per_repeat": per_repeat, "combined": stats.mcnemar_combined(per_repeat)}})
    for pair, adjusted in zip(pairs, stats.holm([pair["mcnemar"]["combined"]["p"] for pair in pairs])):
        pair["mcnemar"]["p_holm"] = adjusted
    return {"summary": summary, "pairs": pairs}
