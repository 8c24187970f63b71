"""The experiment's data: class folders found, split and decoded into square images of one size.

Its own module so the statistics and the training loop can be read (and tested) without the file
layout rules, and `discover` can check a folder before any model is trained.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sr_augment.images import IMAGE_SUFFIXES, ImageDecodeError, center_crop, load_image, resize


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
        layout = f"one folder, stratified 80/10/10 split (seed {seed:d})"
    if len(classes) < 2:
        raise ValueError(f"{root}: need at least 2 classes, found {classes}")
    return ImageSet(classes, train, test, layout)


def square(image: np.ndarray, size: int) -> np.ndarray:
    """Resize the shorter side to `size` (bicubic) and centre-crop a `size` x `size` square."""
    height, width = image.shape[:2]
    factor = size / min(height, width)
    return center_crop(resize(image, (max(size, round(height * factor)), max(size, round(width * factor)))), size)


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
