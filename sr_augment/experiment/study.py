"""The experiment's run: build the four arms' data, train every arm for every seed, compare them.

The one place that knows the arms and the order of the study; data loading, statistics, the CNNs and
the report each live in their own module of this package.
"""

from __future__ import annotations

import itertools
import statistics
import time
from pathlib import Path

import numpy as np

from sr_augment.experiment.data import discover, load_items
from sr_augment.experiment.stats import class_weights, classification_metrics, mcnemar_exact
from sr_augment.images import resize

ARMS = ("LR", "SR", "HR", "HR+SRAugment")
METRICS = ("accuracy", "precision", "recall", "f1")


def build_arms(hr_train, hr_test, engine, cache, lr_factor: int, variants: int, batch_size: int, progress: bool) -> dict:
    """{arm: (train images, test images)}; SR images and the augment arm's variants go through `cache`."""
    from tqdm.auto import tqdm

    size = hr_train.shape[1]
    low = max(1, round(size / lr_factor))
    lr_train, lr_test = ([resize(im, (low, low)) for im in images] for images in (hr_train, hr_test))

    def upsized(images):  # LR back to the CNN's input size (bicubic)
        return np.stack([resize(im, (size, size)) for im in images])

    def to_sr(lows, desc):
        out = []
        with tqdm(total=len(lows), desc=desc, unit="img", disable=not progress) as bar:
            for start in range(0, len(lows), batch_size):
                batch = lows[start:start + batch_size]
                out += [resize(sr, (size, size)) for sr in cache.get_or_create_many(batch, engine, "upscale")]
                bar.update(len(batch))
        return np.stack(out)

    arms = {"LR": (upsized(lr_train), upsized(lr_test)), "SR": (to_sr(lr_train, "SR train"), to_sr(lr_test, "SR test")),
            "HR": (hr_train, hr_test), "HR+SRAugment": (hr_train, hr_test)}
    with tqdm(total=len(hr_train) * variants, desc="warm SRAugment variants", unit="img", disable=not progress) as bar:
        for start in range(0, len(hr_train), batch_size):
            chunk = list(hr_train[start:start + batch_size])
            cache.get_or_create_many([im for im in chunk for _ in range(variants)], engine, "resynthesize",
                                     [v for _ in chunk for v in range(variants)])
            bar.update(len(chunk) * variants)
    return arms


def run_experiment(data_dir, out, *, engine, cache, lr_factor: int = 4, seeds: int = 3, epochs: int = 15,
                   framework: str = "torch", image_size: int = 128, batch_size: int = 32, variants: int = 2,
                   p: float = 0.5, progress: bool = True, log=print) -> dict:
    """Run all arms for `seeds` seeds; write results.json, report.md, confusion PNGs and samples.png."""
    from sr_augment.experiment.report import write_outputs

    if framework not in ("torch", "keras"):
        raise ValueError(f"framework must be 'torch' or 'keras', got {framework!r}")
    if lr_factor < 1 or seeds < 1 or epochs < 1:
        raise ValueError("--lr-factor, --seeds and --epochs must be >= 1")
    if getattr(engine, "scale", lr_factor) != lr_factor:
        raise ValueError(f"the engine upscales x{engine.scale} but LR images are downscaled by {lr_factor}")
    started = time.perf_counter()
    data = discover(data_dir)
    hr_train, y_train, _ = load_items(data.train, image_size, data.skipped)
    hr_test, y_test, test_names = load_items(data.test, image_size, data.skipped)
    for reason in data.skipped:
        log(f"skipped: {reason}")
    log(f"{len(hr_train)} training and {len(hr_test)} test images, classes {data.classes} ({data.layout})")
    arms = build_arms(hr_train, hr_test, engine, cache, lr_factor, variants, batch_size, progress)
    weights = class_weights(y_train, len(data.classes))

    if framework == "torch":
        from sr_augment.experiment.torch_cnn import train_and_predict
    else:
        from sr_augment.experiment.keras_cnn import train_and_predict
    augment = {"engine": engine, "variants": variants, "p": p, "cache_dir": str(cache.directory)}
    runs = {arm: [] for arm in ARMS}
    for seed, arm in itertools.product(range(seeds), ARMS):
        train_x, test_x = arms[arm]
        log(f"seed {seed}: training on {arm}")
        predictions = train_and_predict(train_x, y_train, test_x, len(data.classes), epochs=epochs, seed=seed,
                                        class_weight=weights, batch_size=batch_size,
                                        augment=augment if arm == "HR+SRAugment" else None)
        runs[arm].append({"seed": seed, "predictions": predictions.tolist(),
                          **classification_metrics(y_test, predictions, data.classes)})

    results = {
        "config": {"data": str(data_dir), "layout": data.layout, "engine": getattr(engine, "name", str(engine)),
                   "fingerprint": getattr(engine, "fingerprint", ""), "lr_factor": lr_factor, "seeds": seeds,
                   "epochs": epochs, "framework": framework, "image_size": image_size, "batch_size": batch_size,
                   "variants": variants, "p": p},
        "data": {"classes": data.classes, "train": len(hr_train), "test": len(hr_test), "skipped": data.skipped,
                 "train_counts": np.bincount(y_train, minlength=len(data.classes)).tolist(),
                 "class_weights": weights.tolist(), "test_images": test_names, "test_labels": y_test.tolist()},
        "arms": {arm: {"runs": r, "mean": {m: statistics.mean(x[m] for x in r) for m in METRICS},
                       "std": {m: statistics.stdev(x[m] for x in r) if len(r) > 1 else 0.0 for m in METRICS}}
                 for arm, r in runs.items()},
        "mcnemar": {f"{a} vs {b}": [{"seed": ra["seed"], **mcnemar_exact(np.array(ra["predictions"]) == y_test,
                                                                          np.array(rb["predictions"]) == y_test)}
                                    for ra, rb in zip(runs[a], runs[b])]
                    for a, b in itertools.combinations(ARMS, 2)},
    }
    results["wall_seconds"] = round(time.perf_counter() - started, 1)
    write_outputs(results, arms, Path(out), engine_name=results["config"]["engine"])
    return results
