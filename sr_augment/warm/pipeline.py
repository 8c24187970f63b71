"""`SRAugment.warm`: warm the cache through the training pipeline itself, with exactly the adapter's keys.

The key is the pixels SRAugment receives after the adapter's own conversion (PIL, tensors, `value_range`
...). Rather than re-implement that conversion, each adapter exposes it as one conversion hook,
`rgb_images(images) -> [uint8 HWC RGB arrays]`, the same code its lookups run (`AugmentCore` only looks
up; it knows nothing of warming). The adapter's warming module finds the images of each sample and
calls the hook (`adapter_images`); those go through `warm.warm_items` (batched misses, resume, progress
bar, the `WarmReport` of the CLI), with the adapter's own cache, engine, mode, scale and variants.

How to warm a pipeline: give `warm` what the pipeline feeds SRAugment, that is the dataset with the
part of the transform that comes before SRAugment (decoding and deterministic resizing), e.g.

    before = v2.Compose([v2.Resize(256), v2.CenterCrop(256)])
    sr = SRAugment(engine="sr4", mode="resynthesize", variants=4)
    sr.warm(datasets.ImageFolder("data/train", transform=before))
    train = datasets.ImageFolder("data/train", transform=v2.Compose([before, sr, v2.RandomHorizontalFlip(), ...]))
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from sr_augment.warm.local import WarmReport, warm_items


def warm_through(core, sources: Iterable[tuple[Any, Callable[[], list]]], *, total: int | None,
                 batch_size: int, progress: bool) -> WarmReport:
    """Warm every variant of the images the (name, loader) `sources` give, for `core`'s settings."""
    return warm_items(sources, core.engine, core.cache, mode=core.mode, variants=core.variants,
                      batch_size=batch_size, progress=progress, total=total,
                      warn_deterministic=False)  # the adapter's constructor has said so


def adapter_images(adapter, images: Iterable[Any]) -> list:
    """The uint8 HWC RGB images `adapter` keys for each of `images` (one image or a batch each), through
    its conversion hook `rgb_images`: exactly the pixels its lookups will key."""
    return [rgb for image in images for rgb in adapter.rgb_images(image)]


def indexed(data) -> tuple[Iterator[tuple[str, Any]], int | None]:
    """(name, sample) pairs of a map-style dataset (by index, so `len` sizes the progress bar) or of any
    iterable (a DataLoader, a generator, a list), and the number of samples when it is known."""
    if hasattr(data, "__getitem__") and hasattr(data, "__len__") and not isinstance(data, (str, bytes, dict)):
        name = type(data).__name__
        size = len(data)
        paths = _sample_paths(data)
        return ((paths[i] if paths else f"{name}[{i}]", _Item(data, i)) for i in range(size)), size
    size = len(data) if hasattr(data, "__len__") else None
    return ((f"sample {i}", _Value(sample)) for i, sample in enumerate(data)), size


def _sample_paths(data) -> list | None:
    """`ImageFolder`-style datasets name their files (`samples`: [(path, target)]): failures name them."""
    samples = getattr(data, "samples", None)
    if isinstance(samples, list) and len(samples) == len(data) and all(
            isinstance(s, (tuple, list)) and s and isinstance(s[0], str) for s in samples[:1]):
        return [s[0] for s in samples]
    return None


class _Item:
    """A sample read when its loader runs (so one bad file is reported, not raised)."""

    def __init__(self, data, index: int):
        self.data, self.index = data, index

    def get(self):
        return self.data[self.index]


class _Value:
    def __init__(self, value):
        self.value = value

    def get(self):
        return self.value
