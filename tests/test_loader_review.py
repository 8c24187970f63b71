"""`sr-augment warm` against the real training loaders, on the cases a review found: folder links, resize
overshoot of Keras' bicubic / Lanczos interpolation, the usage errors of `warm`'s numeric options, the
`--engine` help and the image size a `CacheMiss` names."""

from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image

from sr_augment.cli.main import main
from sr_augment.images import iter_image_files

SCALE = 2


def _noise_png(path, seed: int, size=(12, 14)) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)


def _warm(root, cache_dir, capsys, *options) -> dict:
    code = main(["warm", str(root), "--engine", "bicubic", "--scale", str(SCALE), "--cache-dir", str(cache_dir),
                 "--no-progress", "--json", *options])
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(out.out.strip().splitlines()[-1])


# -- folder links ----------------------------------------------------------------------------------------


def test_warm_follows_a_linked_class_folder_as_imagefolder_does(tmp_path, capsys):
    """data/dog -> another disk's folder: ImageFolder (os.walk followlinks=True) lists its files, so warm must."""
    from torchvision import datasets

    from sr_augment.torch_transforms import SRAugment

    root, elsewhere = tmp_path / "data", tmp_path / "other_disk" / "dogs"
    (root / "cat").mkdir(parents=True)
    elsewhere.mkdir(parents=True)
    for i in range(2):
        _noise_png(root / "cat" / f"{i}.png", i)
        _noise_png(elsewhere / f"{i}.png", 10 + i)
    os.symlink(elsewhere, root / "dog", target_is_directory=True)
    report = _warm(root, tmp_path / "cache", capsys)
    sr = SRAugment(engine="bicubic", scale=SCALE, on_miss="error", cache_dir=str(tmp_path / "cache"))
    data = datasets.ImageFolder(str(root), transform=sr)
    assert report["images"] == len(data) == 4 and report["failed"] == 0, report
    for image, _ in data:  # on_miss="error": every sample, the linked dogs included, hits
        assert image.size == (14 * SCALE, 12 * SCALE)


def test_a_folder_reached_twice_or_through_a_link_loop_is_listed_once(tmp_path):
    """A link back to a parent (a loop) ends; two links to one folder list its files once, under the first
    path in sorted order."""
    root = tmp_path / "data"
    (root / "a").mkdir(parents=True)
    _noise_png(root / "a" / "1.png", 0)
    os.symlink(root, root / "a" / "loop", target_is_directory=True)  # data/a/loop -> data
    os.symlink(root / "a", root / "b", target_is_directory=True)  # data/b -> data/a
    os.symlink(tmp_path / "missing", root / "dangling", target_is_directory=True)
    found = [p.relative_to(root).as_posix() for p in iter_image_files([root])]
    assert found == ["a/1.png"]
    # the link itself named as the root: its folder's files, by the path given
    assert [p.relative_to(root).as_posix() for p in iter_image_files([root / "b"])] == ["b/1.png"]
