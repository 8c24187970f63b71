"""`SRAugment.warm` of the torchvision transform: find each sample's images as v2 does, key them as the
transform does.

Which items of a sample are images is decided by the transform's own v2 machinery (`tree_flatten`,
`_needs_transform_list`: PIL images and `tv_tensors.Image`, else the first plain tensor), and each is
converted by the transform's conversion hook `rgb_images`, the code its lookups run, so the warmed keys
are the ones the transform will look up (see `sr_augment.warm.pipeline`). Nothing is drawn from the
transform's RNG.
"""

from __future__ import annotations

from typing import Any

from torch.utils._pytree import tree_flatten

from sr_augment.torch_transforms import samples
from sr_augment.warm import WarmReport
from sr_augment.warm.pipeline import adapter_images, indexed, warm_through


def sample_images(transform, sample: Any) -> list:
    """The uint8 HWC RGB images `transform` would look up for one sample (images, or tuples and dicts
    of images, targets, boxes...)."""
    flat, _ = tree_flatten(sample)
    transform.check_inputs(flat)
    images = [item for item, needed in zip(flat, transform._needs_transform_list(flat))
              if needed and samples.is_image(item)]
    return adapter_images(transform, images)


def warm_transform(transform, data, *, batch_size: int = 8, progress: bool = True) -> WarmReport:
    """Warm every variant of every image of `data` (a Dataset, a DataLoader or any iterable of samples)."""
    items, total = indexed(data)
    sources = ((name, (lambda item=item: sample_images(transform, item.get()))) for name, item in items)
    return warm_through(transform.core, sources, total=total, batch_size=batch_size, progress=progress)
