"""The study's data: class folders found and pooled, folds drawn, images decoded into squares of one size.

Its own module so the statistics and the training loop can be read (and tested) without the file
layout rules, and `collect` can check a folder before any model is trained.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sr_augment.images import IMAGE_SUFFIXES, ImageDecodeError, center_crop, load_image, resize


@dataclass
class ImageSet:
    classes: list
    items: list            # (path, label), every image of the study
    layout: str
    root: Path
    skipped: list = field(default_factory=list)


def _class_files(folder: Path) -> dict[str, list[Path]]:
    classes = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    return {c.name: sorted(p for p in c.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            for c in classes}


def collect(data_dir, *, per_class: int | None = None, seed: int = 0) -> ImageSet:
    """Every image of `data_dir`, pooled: class folders, or `train/` and `val/` (or `test/`) holding the
    same class folders (cross-validation tests every image, so the given split is not kept).

    `per_class` keeps that many images of each class (a seeded random choice, for a quick subset).
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder")
    test_name = next((n for n in ("test", "val") if (root / n).is_dir()), None)
    if (root / "train").is_dir() and test_name:
        parts = {"train": _class_files(root / "train"), test_name: _class_files(root / test_name)}
        if sorted(parts["train"]) != sorted(parts[test_name]):
            raise ValueError(f"{root}: train classes {sorted(parts['train'])} differ from {test_name} classes "
                             f"{sorted(parts[test_name])}")
        files = {c: parts["train"][c] + parts[test_name][c] for c in parts["train"]}
        layout = f"train/ and {test_name}/ pooled"
    else:
        files = _class_files(root)
        layout = "class folders"
    empty = [c for c, f in files.items() if not f]
    if empty:
        raise ValueError(f"{root}: class folders without images: {', '.join(empty)}")
    classes = sorted(files)
    if len(classes) < 2:
        raise ValueError(f"{root}: expected at least 2 class folders (or train/ and val/ or test/ holding them), "
                         f"found {len(classes)}")
    if per_class is not None:
        if per_class < 1:
            raise ValueError(f"--per-class must be >= 1, got {per_class}")
        rng = np.random.default_rng(seed)
        files = {c: sorted(rng.choice(f, size=min(per_class, len(f)), replace=False).tolist()) for c, f in files.items()}
        layout += f", {per_class} per class at most (seed {seed})"
    items = [(Path(p), i) for i, c in enumerate(classes) for p in files[c]]
    return ImageSet(classes, items, layout, root)


def make_folds(labels: np.ndarray, folds: int, repeats: int, seed: int, classes: list[str] | None = None) -> list[dict]:
    """Repeated stratified K-fold (scikit-learn's `RepeatedStratifiedKFold`, seeded): one dict per
    (repeat, fold) with its train and test indices; within a repeat every image is tested exactly once."""
    from sklearn.model_selection import RepeatedStratifiedKFold

    if folds < 2 or repeats < 1:
        raise ValueError(f"--folds must be >= 2 and --repeats >= 1, got {folds} and {repeats}")
    counts = np.bincount(labels, minlength=len(classes) if classes else 0)
    small = {(classes[k] if classes else str(k)): int(n) for k, n in enumerate(counts) if n < folds}
    if small:
        raise ValueError(f"{folds} stratified folds need at least {folds} images per class; "
                         f"{', '.join(f'{c} has {n}' for c, n in small.items())}: lower --folds or add images")
    splitter = RepeatedStratifiedKFold(n_splits=folds, n_repeats=repeats, random_state=seed)
    return [{"repeat": i // folds, "fold": i % folds, "train": train, "test": test}
            for i, (train, test) in enumerate(splitter.split(np.zeros(len(labels)), labels))]


def square(image: np.ndarray, size: int) -> np.ndarray:
    """Resize the shorter side to `size` (bicubic) and centre-crop a `size` x `size` square."""
    height, width = image.shape[:2]
    factor = size / min(height, width)
    return center_crop(resize(image, (max(size, round(height * factor)), max(size, round(width * factor)))), size)


def load_items(items, size: int, skipped: list, root: Path | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Decode, square and stack; unreadable files are recorded in `skipped` (path: reason). Returns the
    images, labels and image ids (paths relative to `root` when given)."""
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
        names.append(str(path.relative_to(root)) if root is not None else str(path))
    if not images:
        raise ValueError(f"none of the {len(items)} images could be read (first: {skipped[-1]})")
    return np.stack(images), np.asarray(labels), names
