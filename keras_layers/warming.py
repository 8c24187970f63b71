"""`SRAugment.warm` of the Keras layer: the images of a `tf.data.Dataset` or numpy arrays, converted by the
layer's own code.

Elements may be images (batched or not), `(images, labels, ...)` tuples, or Keras' dict convention
(`{"images": ...}`). Each batch goes through the layer's conversion hook `rgb_images` (dtype checks,
`value_range` to uint8), the code its lookups run, so the warmed keys are the ones the layer will look
up (see `sr_augment.warm.pipeline`). Nothing is drawn from the layer's `SeedGenerator`. Runs
eagerly; imports neither torch nor (unless `data` is a tf.data dataset, which brings it) TensorFlow.
"""

from __future__ import annotations

import sys

import numpy as np

from sr_augment.keras_layers import dict_inputs
from sr_augment.warm import WarmReport
from sr_augment.warm.pipeline import adapter_images, warm_through


def element_images(element):
    """The images part of one element: the element itself, the first item of a tuple (not of a list: a
    list is a list of images), or `"images"`."""
    if isinstance(element, dict):
        dict_inputs.check_dict(element)
        return element["images"]
    if isinstance(element, tuple) and element:
        return element[0]
    return element


def batch_images(layer, images) -> list:
    """The uint8 HWC RGB images `layer` would look up for one image or batch (numpy or tensor)."""
    return adapter_images(layer, [images])


def _sources(layer, data, batch_size: int):
    """((name, loader) items, number of images when known) of a tf.data dataset, arrays, or an iterable."""
    tf = sys.modules.get("tensorflow")
    if tf is not None and isinstance(data, tf.data.Dataset):
        spec = element_images(data.element_spec)
        count = int(data.cardinality())
        total = count if count >= 0 and spec.shape.rank == 3 else None
        return ((f"element {i}", (lambda e=e: batch_images(layer, element_images(e))))
                for i, e in enumerate(data.as_numpy_iterator())), total
    images = element_images(data)
    if isinstance(images, np.ndarray) or hasattr(images, "numpy") and hasattr(images, "shape"):
        array = np.asarray(images)
        if array.ndim == 3:
            return iter([("image 0", lambda: batch_images(layer, array))]), 1
        return ((f"images {i}:{i + batch_size}", (lambda i=i: batch_images(layer, array[i:i + batch_size])))
                for i in range(0, len(array), batch_size)), len(array)
    return ((f"element {i}", (lambda e=e: batch_images(layer, element_images(e)))) for i, e in enumerate(data)), None


def warm_layer(layer, data, *, batch_size: int = 8, progress: bool = True) -> WarmReport:
    """Warm every variant of every image of `data` for `layer`'s settings."""
    sources, total = _sources(layer, data, batch_size)
    return warm_through(layer.core, sources, total=total, batch_size=batch_size, progress=progress)
