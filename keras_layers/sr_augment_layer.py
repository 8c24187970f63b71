"""`SRAugment`: diffusion super-resolution as a Keras 3 preprocessing layer.

A thin adapter over `sr_augment.augment.AugmentCore`: it turns a batch into uint8 HWC numpy images
(through `value_range`, `pixels.py`), draws `p` and the variant index, asks the core for each result
(cache hit, or the engine per `on_miss`) and turns the results back into the input's dtype and range.
Dict inputs (`images`, `labels`, `bounding_boxes`, `segmentation_masks`) are in `dict_inputs.py`.

How it runs: the per-batch work is Python. Eagerly it runs on the tensor's numpy value (so errors such
as `CacheMiss` surface as themselves); in a graph (a `tf.data` map, `model.fit`'s `tf.function`) it
runs through `tf.numpy_function` with the static output shape set from `AugmentCore.result_shape`.
The draws come from a `keras.random.SeedGenerator` (so `keras.utils.set_random_seed` repeats a run):
each batch takes the generator's next state, at run time inside that Python, and seeds a numpy
`Generator` with it, which works in graphs on every backend. This module imports neither torch nor
diffusers: a process that imported TensorFlow must never import torch (with CUDA torch it aborts).
"""

from __future__ import annotations

import sys
import threading
import warnings

import keras
import numpy as np

from sr_augment.augment import AugmentCore
from sr_augment.engines import DEFAULT_ENGINE
from sr_augment.errors import ValueRangeWarning
from sr_augment.images import ImageShapeError
from sr_augment.keras_layers import dict_inputs
from sr_augment.keras_layers.pixels import (
    check_input,
    check_value_range,
    from_uint8,
    to_uint8,
    unit_range_message,
    unit_range_suspected,
)

# Keyword arguments that belong to `keras.layers.Layer`; every other extra keyword is an engine setting.
_LAYER_KWARGS = frozenset({"name", "dtype", "trainable", "autocast", "input_shape", "input_dim", "batch_size",
                           "batch_input_shape", "activity_regularizer"})
_LOCK_GUARD = threading.Lock()  # creates each layer's own lock on first use (a lock cannot be pickled)


@keras.saving.register_keras_serializable(package="sr_augment")
class SRAugment(keras.layers.Layer):
    """Diffusion super-resolution augmentation, served from an on-disk cache.

    Each image is replaced by a super-resolved version of itself: in `mode="upscale"` the input is
    low-resolution and the output is `scale` times larger (optionally resized to `output_size`); in
    `mode="resynthesize"` the image is downscaled by `scale` and super-resolved back to its own size, so
    the shape is kept and only the high-frequency detail changes. Results are cached on disk, keyed by
    the pixels, the engine settings, the mode and the variant, so after the first epoch (or after
    `sr-augment warm`) every call is a cache hit. Diffusion engines run in one shared engine process;
    this layer never imports torch, so it is safe in a process that imported TensorFlow.

    Training and inference. Like `keras.layers.RandomFlip`, the layer augments only in training:
    `training` defaults to `True` in `call` (so `ds.map(layer)` augments); a model passes
    `training=True` in `fit` and `training=False` in `predict`/`evaluate`. With `training=False` the
    layer returns what an image that is not augmented gets, with the training output's shape, so a
    model that holds it predicts: in `resynthesize` mode the input (resized to `output_size` if set),
    in `upscale` mode the bicubic upscale. Inference never reads the cache or runs an engine.

    With probability `1 - p` an image is not augmented (the same stand-in as inference). An augmented
    image uses a variant drawn uniformly from `range(variants)`. The draws come from a
    `keras.random.SeedGenerator(seed)`: a fixed `seed`, or `keras.utils.set_random_seed` with
    `seed=None`, repeats them in the same call order (a parallel `tf.data` map may reorder calls).

    Pixel values: `value_range` gives the input's range, as in Keras' image layers: `(0, 255)` by
    default, `(0, 1)` after `Rescaling(1 / 255)`. The input is mapped to uint8 for the engine and the
    output is mapped back: same dtype, same range. Values slightly outside `value_range` (the overshoot
    of a bicubic or Lanczos resize) are clipped to it, as Keras' image layers clip; NaN, or values more
    than 1.5 range widths outside it, raise a `ValueError` naming `value_range`. Float images whose batch maximum is at most 1
    with the default `(0, 255)` (most likely [0, 1] images, which would come back as {0, 1}) give a
    `sr_augment.ValueRangeWarning` naming the fix, once per layer, eagerly and in `tf.data` alike (not
    an error: genuinely dark [0, 255] images can be that dark).

    Dict input, the Keras 3 convention: `{"images": ..., "labels": ..., "bounding_boxes": {"boxes":
    ..., "labels": ...}, "segmentation_masks": ...}` (any of the last three). Labels pass through. When
    the size changes (`upscale` mode, or `output_size`), boxes and masks follow exactly as
    `keras.layers.Resizing` moves them to the output size (boxes per `bounding_box_format`; masks
    nearest-neighbour); in `resynthesize` mode without `output_size` they pass through untouched.

    Errors inside `tf.data`: an exception raised in the layer's Python reaches the iterating code as
    a `tf.errors.OpError` (`on_miss="error"`'s `CacheMiss` as `tf.errors.UnknownError`) whose message
    holds the original one: the key and the hint. Catch it with `except tf.errors.UnknownError as e`
    and test `"CacheMiss" in e.message`. Eagerly, `CacheMiss` is raised as itself.

    Backends: TensorFlow (eager, `tf.data`, `model.fit`/`predict`) and, with any backend, a `tf.data`
    map. On JAX and torch it runs eagerly on concrete arrays, not inside a jitted/traced function.
    Its work is Python per image, so it cannot be XLA-compiled (`supports_jit` is False).

    Input shape:
        3D (unbatched) or 4D (batched) tensor with shape `(..., height, width, 3)`, RGB,
        `"channels_last"` format, dtype uint8 or float; or a dict with such an `"images"` entry.

    Output shape:
        3D (unbatched) or 4D (batched) tensor with shape `(..., out_height, out_width, 3)` and the
        input's dtype: `output_size` if given, else `(height, width)` in `resynthesize` mode and
        `(height * scale, width * scale)` in `upscale` mode (also with `training=False`). A dict
        input gives a dict with the same keys.

    Args:
        engine: "bicubic", "sr4", "sd-x4-upscaler", "ldm-4x", a local diffusers SR pipeline folder,
            a hub id, or an `Engine` object (runs inline; such a layer cannot be saved). Defaults to
            `sr_augment.engines.DEFAULT_ENGINE`.
        mode: "upscale" or "resynthesize" (see above).
        scale: the super-resolution factor (default: 4; a spandrel checkpoint's own factor).
        variants: number of cached samples per image; each call picks one at random.
        p: probability of augmenting each image.
        output_size: int or `(height, width)` to resize every result to, or None.
        on_miss: what to do when a result is not cached: "generate" (run the engine, store, return),
            "passthrough" (return the bicubic result and count a miss) or "error" (raise
            `sr_augment.cache.CacheMiss` naming the key; see "Errors inside tf.data").
        cache_dir: cache folder (default: `SR_AUGMENT_CACHE_DIR`, else the user cache folder).
        seed: integer seed of the layer's `SeedGenerator` (None: from Keras' global seed).
        steps: denoising steps of a diffusion engine (None: the model's default).
        device: engine device, "auto" = cuda > mps > cpu (the engine service's device).
        engine_dtype: engine dtype, "auto" = fp16/bf16 on GPU, fp32 on CPU. (Named so because
            `dtype` is the Keras layer argument; this layer returns the input's dtype.)
        value_range: `(low, high)` of the input's pixel values. Defaults to `(0, 255)`.
        bounding_box_format: format of `bounding_boxes["boxes"]` in a dict input ("xyxy",
            "rel_xyxy", "xywh", "center_xywh", "yxyx", ...), as in Keras; needed when boxes must be
            scaled.
        degrade: None, "light", "realistic" or a dict of operations (`sr_augment.engines.degrade`):
            variants k > 0 super-resolve a seeded, label-preserving degradation of the input (blur,
            downscale kernel, noise, JPEG), so a deterministic engine gives real variants; variant 0
            stays the clean result. Part of the key; `warm --degrade` with the same value warms it.
        **kwargs: other engine settings (e.g. `noise_level`, `prompt`, `tile`; see
            `sr_augment.engines.get_engine`) and the base layer's keyword arguments (`name`, ...).

    Example:

    ```python
    from sr_augment.keras_layers import SRAugment

    # in a model: active in fit(); predict() sees the un-augmented input
    model = keras.Sequential([
        keras.Input((64, 64, 3)),
        keras.layers.Rescaling(1 / 255),
        SRAugment(engine="sr4", mode="resynthesize", p=0.5, variants=4, value_range=(0, 1)),
        keras.layers.RandomFlip("horizontal"),
        ...
    ])

    # over tf.data: low-resolution images (and their boxes) to 4x, resized to 224x224
    augment = SRAugment(engine="sd-x4-upscaler", mode="upscale", output_size=224,
                        bounding_box_format="xyxy")
    ds = ds.map(lambda images, boxes: augment({"images": images, "bounding_boxes": boxes}))
    ```
    """

    def __init__(self, engine=DEFAULT_ENGINE, mode: str = "upscale", scale: int | None = None, variants: int = 1,
                 p: float = 1.0, output_size=None, on_miss: str = "generate", cache_dir=None, seed=None,
                 steps: int | None = None, device: str = "auto", engine_dtype: str = "auto",
                 value_range=(0, 255), bounding_box_format=None, degrade=None, **kwargs):
        layer_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in _LAYER_KWARGS}
        layer_kwargs.setdefault("autocast", False)  # the output keeps the input's dtype
        super().__init__(**layer_kwargs)
        self.core = AugmentCore(engine=engine, mode=mode, scale=scale, variants=variants, p=p,
                                output_size=output_size, on_miss=on_miss, cache_dir=cache_dir, seed=seed, steps=steps,
                                device=device, engine_dtype=engine_dtype, degrade=degrade, **kwargs)
        self.value_range = check_value_range(value_range)
        self.bounding_box_format = bounding_box_format
        self.generator = keras.random.SeedGenerator(seed)  # seed=None: from Keras' global seed
        self._sr_rng_lock = None
        self._sr_range_warned = False  # ValueRangeWarning: once per layer
        self.supports_jit = False  # Python per image: no XLA
        self._convert_input_args = False  # keep uint8 as uint8, tf.data tensors as they are
        self._allow_non_tensor_positional_args = True
        self.input_spec = None

    @property
    def seed(self):
        """The `seed` argument (kept once, in `core`, which `get_config` saves)."""
        return self.core.seed

    # -- Keras API -------------------------------------------------------------------------------------
    def call(self, inputs, training=True):
        if isinstance(inputs, dict):
            dict_inputs.check_dict(inputs)
            images = inputs["images"]
            out = self._call_images(images, training)
            height, width = _static_hw(out)
            resized = self.core.mode == "upscale" or self.core.output_size is not None
            return dict_inputs.with_geometry(inputs, out, (height, width), resized, self.bounding_box_format)
        return self._call_images(inputs, training)

    def compute_output_shape(self, input_shape):
        input_shape = tuple(input_shape)
        if len(input_shape) not in (3, 4):
            raise ImageShapeError(f"SRAugment expects a 3D (HWC) or 4D (NHWC) input, got shape {input_shape}")
        return (*input_shape[:-3], *self.core.result_shape(input_shape[-3], input_shape[-2]))

    def compute_output_spec(self, inputs, training=True):
        if isinstance(inputs, dict):
            images = inputs["images"]
            spec = keras.KerasTensor(self.compute_output_shape(images.shape), dtype=images.dtype)
            return dict_inputs.output_spec(inputs, spec, spec.shape[-3:-1])
        return keras.KerasTensor(self.compute_output_shape(inputs.shape), dtype=inputs.dtype)

    def get_config(self):
        config = self.core.config()
        if not isinstance(config["engine"], str):
            raise TypeError(
                f"SRAugment with an Engine object ({type(config['engine']).__name__}) cannot be serialised: "
                f"only an engine spec (a name such as 'bicubic', a local folder or a hub id) can be saved. "
                f"Pass the spec as `engine=` to save or clone this layer."
            )
        if config["output_size"] is not None:
            config["output_size"] = list(config["output_size"])
        config["value_range"] = list(self.value_range)
        config["bounding_box_format"] = self.bounding_box_format
        return {**super().get_config(), **config}

    def warm(self, data, *, batch_size: int = 8, progress: bool = True):
        """Generate and cache every variant of every image in `data` that is not cached yet, with exactly
        the keys this layer will look up (same `value_range` conversion, engine, mode, scale, variants);
        returns the `WarmReport` of `sr-augment warm`.

        `data` is what the pipeline feeds this layer: a `tf.data.Dataset` whose elements are images,
        `(images, labels, ...)` or `{"images": ...}` (batched or not), or numpy arrays (NHWC, HWC, or
        `(x, y)`), i.e. the dataset before the `map` that applies the layer. Misses go to the engine
        `batch_size` at a time and are stored batch by batch; a rerun generates nothing; nothing is
        drawn from the layer's SeedGenerator. Example:

            ds = tf.data.Dataset.from_tensor_slices((x, y)).map(resize).batch(32)   # before the layer
            augment = SRAugment(engine="sr4", mode="resynthesize", variants=4)
            augment.warm(ds)
            ds = ds.map(lambda images, labels: (augment(images), labels))
        """
        from sr_augment.keras_layers.warming import warm_layer

        return warm_layer(self, data, batch_size=batch_size, progress=progress)

    def rgb_images(self, images) -> np.ndarray:
        """The conversion hook: the uint8 HWC RGB images this layer keys for one image or a batch (numpy
        or an eager tensor, in `value_range`), as an NHWC uint8 array, with the checks and conversion its
        lookups run. `warm` calls it; nothing is looked up or drawn."""
        array = np.asarray(images)
        check_input(array.dtype.name, array.ndim, array.shape[-1] if array.ndim else None, array.shape)
        rgb = to_uint8(array if array.ndim == 4 else array[None], self.value_range)
        if not self._sr_range_warned:
            self._warn_if_unit_range(array)
        return rgb

    def _warn_if_unit_range(self, array: np.ndarray) -> None:
        """`ValueRangeWarning` once per layer for float [0, 1]-looking input with `value_range=(0, 255)`.
        Every path (eager numpy, a tf.data map's `numpy_function`, another backend, `warm`) sees the
        batch as numpy here, so the check is one place; the flag is set under the lock (tf.data threads)."""
        bounds = unit_range_suspected(array, self.value_range)
        if bounds is None:
            return
        with self._draw_lock():
            if self._sr_range_warned:
                return
            self._sr_range_warned = True
        warnings.warn(unit_range_message(self.name, bounds), ValueRangeWarning, stacklevel=3)

    # -- the work --------------------------------------------------------------------------------------
    def _call_images(self, inputs, training):
        if not training and self.core.mode == "resynthesize" and self.core.output_size is None:
            return inputs  # inference: the input itself
        draw = bool(training)
        tf = sys.modules.get("tensorflow")  # a TF tensor means TensorFlow is imported already
        if tf is None or not tf.is_tensor(inputs):  # numpy input, or another backend's eager tensor
            try:
                array = keras.ops.convert_to_numpy(inputs)
            except Exception as exc:
                raise TypeError(
                    f"SRAugment runs Python per image and cannot run inside a {keras.backend.backend()} "
                    f"trace; use the TensorFlow backend or apply it in a tf.data pipeline ({exc})"
                ) from None
            return keras.ops.convert_to_tensor(self._augment(array, draw))
        check_input(inputs.dtype.name, inputs.shape.rank, inputs.shape[-1] if inputs.shape.rank else None,
                    inputs.shape)
        rank = inputs.shape.rank
        batch = inputs if rank == 4 else inputs[None]
        if tf.executing_eagerly():
            out = tf.convert_to_tensor(self._augment_batch(batch.numpy(), draw))
        else:
            out = tf.numpy_function(lambda b: self._augment_batch(b, draw), [batch], Tout=inputs.dtype,
                                    stateful=True, name="sr_augment")
            out.set_shape(self._batch_shape(batch.shape))
        return out if rank == 4 else out[0]

    def _batch_shape(self, shape) -> tuple:
        return (shape[0], *self.core.result_shape(shape[1], shape[2]))

    def _augment(self, array: np.ndarray, draw: bool = True) -> np.ndarray:
        """numpy path (eager non-TF input): same checks, batched or not."""
        array = np.asarray(array)
        check_input(array.dtype.name, array.ndim, array.shape[-1] if array.ndim else None, array.shape)
        out = self._augment_batch(array if array.ndim == 4 else array[None], draw)
        return out if array.ndim == 4 else out[0]

    def _draw_lock(self) -> threading.Lock:
        if self._sr_rng_lock is None:
            with _LOCK_GUARD:
                if self._sr_rng_lock is None:
                    self._sr_rng_lock = threading.Lock()
        return self._sr_rng_lock

    def _draw_params(self, n: int) -> dict:
        """Which of `n` images to augment, and the variant of each: {"augment": [bool], "variant": [int]},
        as `AugmentCore.apply_many` takes them. Each batch takes the SeedGenerator's next state (under a
        lock: tf.data calls from several threads) and draws from a numpy Generator seeded with it."""
        with self._draw_lock():
            state = keras.ops.convert_to_numpy(self.generator.next())
        rng = np.random.default_rng([int(v) % 2**64 for v in np.ravel(state)])
        augment = rng.random(n) < self.core.p
        variant = rng.integers(0, self.core.variants, n)
        return {"augment": augment.tolist(), "variant": variant.tolist()}

    def _augment_batch(self, batch: np.ndarray, draw: bool = True) -> np.ndarray:
        """NHWC in `value_range` in, NHWC results of the same dtype and range out. `draw=False`
        (inference) gives every image the stand-in of an image that is not augmented."""
        images = self.rgb_images(batch)
        shape = self._batch_shape(batch.shape)
        if len(images) == 0:
            return np.zeros(shape, batch.dtype)
        n = len(images)
        params = self._draw_params(n) if draw else {"augment": [False] * n, "variant": [0] * n}
        results = self.core.apply_many(images, params)
        out = np.empty(shape, batch.dtype)
        for i, result in enumerate(results):
            if result is None:  # resynthesize, not augmented: the input itself (exact, also for floats)
                out[i] = batch[i]
            elif result.shape != shape[1:]:
                raise ValueError(f"SRAugment: result {i} has shape {result.shape}, expected {shape[1:]}")
            else:
                out[i] = from_uint8(result, self.value_range, batch.dtype)
        return out


def _static_hw(images) -> tuple:
    shape = tuple(images.shape)
    return shape[-3], shape[-2]


__all__ = ["SRAugment"]
