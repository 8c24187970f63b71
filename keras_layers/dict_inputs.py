"""Keras 3's dict convention for augmentation layers: `{"images", "labels", "bounding_boxes",
"segmentation_masks"}`.

SRAugment changes only the pixels and, where the output size differs from the input's (upscale mode,
or `output_size`), the geometry: then boxes and masks follow exactly as `keras.layers.Resizing` moves
them to that size (boxes scaled in `bounding_box_format`, then clipped; masks nearest-neighbour), by
running a `Resizing` layer on them, which also works inside tf.data on any Keras backend. Labels,
and every other entry, pass through untouched.
"""

from __future__ import annotations

import sys

import keras

GEOMETRY_KEYS = ("bounding_boxes", "segmentation_masks")


def check_dict(data: dict) -> None:
    if "images" not in data:
        raise ValueError(f"SRAugment: a dict input needs an 'images' entry (Keras' convention: images, labels, "
                         f"bounding_boxes, segmentation_masks), got keys {sorted(data)}")


def output_spec(data: dict, image_spec, output_hw) -> dict:
    """Symbolic outputs (functional models): images as `image_spec`, masks resized, the rest as is."""
    out = dict(data)
    out["images"] = image_spec
    if "segmentation_masks" in data:
        masks = data["segmentation_masks"]
        shape = (*masks.shape[:-3], *output_hw, masks.shape[-1])
        out["segmentation_masks"] = keras.KerasTensor(shape, dtype=masks.dtype)
    return out


def with_geometry(data: dict, images, output_hw, resized: bool, bounding_box_format) -> dict:
    """`data` with the SR `images`, and boxes and masks moved to `output_hw` when `resized`."""
    out = dict(data)
    out["images"] = images
    targets = {key: data[key] for key in GEOMETRY_KEYS if key in data}
    if not resized or not targets:
        return out
    if "bounding_boxes" in targets:
        if not bounding_box_format:
            raise ValueError("SRAugment: the input has 'bounding_boxes' and this layer changes the image size; pass "
                             "`bounding_box_format` (e.g. bounding_box_format='xyxy') so the boxes can be scaled")
        targets["bounding_boxes"] = dict(targets["bounding_boxes"])  # Resizing writes into the dict it gets
    if output_hw[0] is None or output_hw[1] is None:
        raise ValueError("SRAugment: boxes and masks can only follow an image of known height and width, or a "
                         "fixed `output_size`; set the images' static shape")
    resizer = keras.layers.Resizing(int(output_hw[0]), int(output_hw[1]), interpolation="nearest",
                                    bounding_box_format=bounding_box_format)
    moved = resizer({"images": data["images"], **targets})
    if "segmentation_masks" in targets:
        out["segmentation_masks"] = _cast_like(moved["segmentation_masks"], data["segmentation_masks"])
    if "bounding_boxes" in targets:
        boxes = dict(moved["bounding_boxes"])
        if "labels" in data["bounding_boxes"]:  # Resizing casts them to float in tf.data: keep the user's
            boxes["labels"] = _cast_like(boxes["labels"], data["bounding_boxes"]["labels"])
        out["bounding_boxes"] = boxes
    return out


def _cast_like(value, reference):
    """`value` in `reference`'s dtype, with the framework that made `value` (TF inside tf.data)."""
    tf = sys.modules.get("tensorflow")
    if tf is not None and tf.is_tensor(value):
        dtype = reference.dtype if tf.is_tensor(reference) else tf.as_dtype(keras.backend.standardize_dtype(
            reference.dtype))
        return tf.cast(value, dtype)
    return keras.ops.cast(value, keras.backend.standardize_dtype(reference.dtype))
