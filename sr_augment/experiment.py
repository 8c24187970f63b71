"""`sr-augment experiment`: train the same CNN on LR, SR and HR data (and HR + SRAugment) and compare.

The seed thesis's question, answered honestly: several seeds, class weights against imbalance, and
McNemar's exact test on the paired test predictions of every pair of arms.

Arms (every image is square `image_size` px, so one architecture serves all; each arm is trained and
tested in its own representation, paired by test image):
- `LR`: HR downscaled by `lr_factor` (antialiased bicubic) and upscaled back by bicubic;
- `SR`: the engine on the same LR images (through the cache);
- `HR`: the originals;
- `HR+SRAugment`: HR training images with the `SRAugment` adapter (resynthesize, `variants`, p=0.5)
  of the chosen framework, over a pre-warmed cache (`on_miss="error"`), tested on HR.
"""

from __future__ import annotations

import itertools
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sr_augment.images import IMAGE_SUFFIXES, ImageDecodeError, load_image, resize

ARMS = ("LR", "SR", "HR", "HR+SRAugment")
METRICS = ("accuracy", "precision", "recall", "f1")


@dataclass
class ImageSet:
    classes: list
    train: list            # (path, label)
    test: list
    layout: str
    skipped: list = field(default_factory=list)


def _class_files(folder: Path) -> dict[str, list[Path]]:
    classes = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    return {c.name: sorted(p for p in c.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES) for c in classes}


def discover(data_dir, seed: int = 0) -> ImageSet:
    """`train/` + `test/` (or `val/`) class folders, or one folder of class folders split 80/10/10.

    The single-folder split is stratified with a fixed seed; its 10% validation part is set aside (the
    experiment trains for a fixed number of epochs, so nothing is selected on it) and the last 10% is
    the test set.
    """
    from sklearn.model_selection import train_test_split

    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder")
    test_name = next((n for n in ("test", "val") if (root / n).is_dir()), None)
    if (root / "train").is_dir() and test_name:
        train_files, test_files = _class_files(root / "train"), _class_files(root / test_name)
        classes = sorted(train_files)
        empty = [f"{split}/{c}" for split, files in (("train", train_files), (test_name, test_files))
                 for c, f in files.items() if not f]
        if empty:
            raise ValueError(f"{root}: class folders without images: {', '.join(empty)}")
        if sorted(test_files) != classes:
            raise ValueError(f"{root}: train classes {classes} differ from {test_name} classes {sorted(test_files)}")
        index = {c: i for i, c in enumerate(classes)}
        train = [(p, index[c]) for c in classes for p in train_files[c]]
        test = [(p, index[c]) for c in classes for p in test_files[c]]
        layout = f"train/ + {test_name}/"
    else:
        files = _class_files(root)
        classes = sorted(c for c, f in files.items() if f)
        items = [(p, i) for i, c in enumerate(classes) for p in files[c]]
        if len(classes) < 2:
            raise ValueError(f"{root}: expected class folders (or train/ and val/ or test/), found {len(classes)} class(es)")
        labels = [label for _, label in items]
        small = {c: len(files[c]) for c in classes if len(files[c]) < 10}
        if small:
            raise ValueError(f"{root}: a stratified 80/10/10 split needs at least 10 images per class; "
                             f"{', '.join(f'{c} has {n}' for c, n in small.items())}. Give train/ and test/ folders instead")
        train, rest = train_test_split(items, test_size=0.2, stratify=labels, random_state=seed)
        _, test = train_test_split(rest, test_size=0.5, stratify=[label for _, label in rest], random_state=seed)
        layout = "one folder, stratified 80/10/10 split (seed %d)" % seed
    if len(classes) < 2:
        raise ValueError(f"{root}: need at least 2 classes, found {classes}")
    return ImageSet(classes, train, test, layout)


def square(image: np.ndarray, size: int) -> np.ndarray:
    """Resize the shorter side to `size` (bicubic) and centre-crop a `size` x `size` square."""
    height, width = image.shape[:2]
    factor = size / min(height, width)
    resized = resize(image, (max(size, round(height * factor)), max(size, round(width * factor))))
    top, left = (resized.shape[0] - size) // 2, (resized.shape[1] - size) // 2
    return np.ascontiguousarray(resized[top:top + size, left:left + size])


def load_items(items, size: int, skipped: list) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Decode, square and stack; unreadable files are recorded in `skipped` (path: reason)."""
    images, labels, names = [], [], []
    if not items:
        raise ValueError("no images to load")
    for path, label in items:
        try:
            images.append(square(load_image(path), size))
        except ImageDecodeError as exc:
            skipped.append(str(exc))
            continue
        labels.append(label)
        names.append(str(path))
    if not images:
        raise ValueError(f"none of the {len(items)} images could be read (first: {skipped[-1]})")
    return np.stack(images), np.asarray(labels), names


def mcnemar_exact(correct_a: np.ndarray, correct_b: np.ndarray) -> dict:
    """McNemar's exact test on paired right/wrong outcomes: a two-sided binomial test on the discordant
    pairs (b = A right and B wrong, c = A wrong and B right); p = 1 when there are none."""
    from scipy.stats import binomtest

    correct_a, correct_b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    b = int(np.sum(correct_a & ~correct_b))
    c = int(np.sum(~correct_a & correct_b))
    p = 1.0 if b + c == 0 else float(binomtest(min(b, c), b + c, 0.5).pvalue)
    return {"b": b, "c": c, "p": p}


def classification_metrics(y_true, y_pred, classes) -> dict:
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    labels = list(range(len(classes)))
    precision, recall, f1, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, average="macro", zero_division=0)
    per_p, per_r, per_f, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)), "precision": float(precision), "recall": float(recall),
        "f1": float(f1),
        "per_class": {c: {"precision": float(per_p[i]), "recall": float(per_r[i]), "f1": float(per_f[i]),
                          "support": int(support[i])} for i, c in enumerate(classes)},
        "confusion": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def class_weights(labels: np.ndarray, count: int) -> np.ndarray:
    """sklearn's "balanced" weights: n_samples / (n_classes * count of the class)."""
    from sklearn.utils.class_weight import compute_class_weight

    return compute_class_weight("balanced", classes=np.arange(count), y=labels).astype(np.float32)


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
    from sr_augment.experiment_report import write_outputs

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
        from sr_augment.experiment_torch import train_and_predict
    else:
        from sr_augment.experiment_keras import train_and_predict
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
                       "std": {m: statistics.stdev(x[m] for x in r) if len(r) > 1 else 0.0 for m in METRICS}} for arm, r in runs.items()},
        "mcnemar": {f"{a} vs {b}": [{"seed": ra["seed"], **mcnemar_exact(np.array(ra["predictions"]) == y_test,
                                                                          np.array(rb["predictions"]) == y_test)}
                                    for ra, rb in zip(runs[a], runs[b])]
                    for a, b in itertools.combinations(ARMS, 2)},
    }
    results["wall_seconds"] = round(time.perf_counter() - started, 1)
    write_outputs(results, arms, Path(out), engine_name=results["config"]["engine"])
    return results
