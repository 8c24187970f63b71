"""`SRAugment`: diffusion super-resolution as a Keras 3 preprocessing layer.

The layer is a thin adapter over `sr_augment.augment.AugmentCore`: it turns a batch of tensors into
uint8 HWC numpy images, draws `p` and the variant index from its own seeded numpy RNG, asks the core for
each result (cache hit, or the engine per `on_miss`), and turns the results back into tensors of the
input's dtype.

How it runs:
- the per-batch work is Python: eagerly it runs directly on the tensor's numpy value (so errors such as
  `CacheMiss` surface as themselves); in a graph (`tf.data` map, `model.fit`'s `tf.function`) it runs
  through `tf.numpy_function`, with the static output shape set from `AugmentCore.result_shape`;
- this module imports neither torch nor diffusers: "bicubic" and `Engine` objects run inline, every
  other engine runs in the shared engine service process (`sr_augment.service`). A process that
  imported TensorFlow must never import torch (with the CUDA torch build it aborts).
"""

from __future__ import annotations

import sys
import threading

import keras
import numpy as np

from sr_augment.augment import AugmentCore
from sr_augment.engines import DEFAULT_ENGINE
from sr_augment.images import ImageShapeError

# Keyword arguments that belong to `keras.layers.Layer`; every other extra keyword is an engine setting.
_LAYER_KWARGS = frozenset({"name", "dtype", "trainable", "autocast", "input_shape", "input_dim", "batch_size",
                           "batch_input_shape", "activity_regularizer"})
_FLOAT_DTYPES = ("float16", "float32", "float64")
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

    Like `keras.layers.RandomFlip`, the layer is active only in training: `training` defaults to
    `True` in `call` (so `ds.map(layer)` augments), a model passes `training=True` in `fit` and
    `training=False` in `predict`/`evaluate`, and with `training=False` the input is returned
    unchanged. In `upscale` mode this means the inference output keeps the input's shape: upscale mode
    is meant for `tf.data` maps with `training=True`; inside a model, use `resynthesize`.

    With probability `1 - p` an image is not augmented: in `resynthesize` mode it passes through
    unchanged; in `upscale` mode (where every image of a batch must have the same shape) it gets the
    bicubic upscale instead. An augmented image uses a variant drawn uniformly from `range(variants)`.
    Both draws come from a numpy `Generator` seeded with `seed` (shared by all threads, behind a
    lock): the same seed gives the same draws in the same call order (a parallel `tf.data` map may
    reorder calls).

    Pixel values: `uint8` input in [0, 255]; floating input (float16/32/64) must also lie in
    [0, 255], as Keras' image layers assume (a float image in [0, 1] would be ambiguous), and is
    rounded to uint8 for the engine. The output has the input's dtype and value range. NaN or values
    outside [0, 255] raise an error.

    Runs on the TensorFlow backend (eager, `tf.data` graphs, `model.fit`); its per-image work is
    Python (`tf.numpy_function` inside graphs), so it cannot be XLA-compiled (`supports_jit` is False).

    Input shape:
        3D (unbatched) or 4D (batched) tensor with shape `(..., height, width, 3)`, RGB,
        `"channels_last"` format, dtype uint8 or float.

    Output shape:
        3D (unbatched) or 4D (batched) tensor with shape `(..., out_height, out_width, 3)` and the
        input's dtype: `output_size` if given, else `(height, width)` in `resynthesize` mode and
        `(height * scale, width * scale)` in `upscale` mode. With `training=False`: the input.

    Args:
        engine: "bicubic", "sr4", "sd-x4-upscaler", "ldm-4x", a local diffusers SR pipeline folder,
            a hub id, or an `Engine` object (runs inline; such a layer cannot be saved). Defaults to
            `sr_augment.engines.DEFAULT_ENGINE`.
        mode: "upscale" or "resynthesize" (see above).
        scale: the super-resolution factor.
        variants: number of cached samples per image; each call picks one at random.
        p: probability of augmenting each image.
        output_size: int or `(height, width)` to resize every result to, or None.
        on_miss: what to do when a result is not cached: "generate" (run the engine, store, return),
            "passthrough" (return the bicubic result and count a miss) or "error" (raise
            `sr_augment.cache.CacheMiss` naming the key).
        cache_dir: cache folder (default: `SR_AUGMENT_CACHE_DIR`, else the user cache folder).
        seed: seed of the layer's RNG for `p` and the variant draws (None: fresh entropy).
        steps: denoising steps of a diffusion engine (None: the model's default).
        device: engine device, "auto" = cuda > mps > cpu (the engine service's device).
        engine_dtype: engine dtype, "auto" = fp16/bf16 on GPU, fp32 on CPU. (Named so because
            `dtype` is the Keras layer argument; this layer returns the input's dtype.)
        **kwargs: other engine settings (e.g. `noise_level`, `prompt`, `tile`; see
            `sr_augment.engines.get_engine`) and the base layer's keyword arguments (`name`, ...).

    Example:

    ```python
    from sr_augment.keras_layers import SRAugment

    # in a model: shape-preserving, active in fit() only
    model = keras.Sequential([
        keras.Input((64, 64, 3)),
        keras.layers.RandomFlip("horizontal"),
        SRAugment(engine="sr4", mode="resynthesize", p=0.5, variants=4),
        keras.layers.Rescaling(1 / 255),
        ...
    ])

    # over tf.data: low-resolution images to 4x super-resolved ones, resized to 224x224
    augment = SRAugment(engine="sd-x4-upscaler", mode="upscale", output_size=224)
    ds = ds.map(lambda x, y: (augment(x, training=True), y))
    ```
    """

    def __init__(self, engine=DEFAULT_ENGINE, mode: str = "upscale", scale: int = 4, variants: int = 1,
                 p: float = 1.0, output_size=None, on_miss: str = "generate", cache_dir=None, seed=None,
                 steps: int | None = None, device: str = "auto", engine_dtype: str = "auto", **kwargs):
        layer_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in _LAYER_KWARGS}
        layer_kwargs.setdefault("autocast", False)  # the output keeps the input's dtype
        super().__init__(**layer_kwargs)
        self.core = AugmentCore(engine=engine, mode=mode, scale=scale, variants=variants, p=p,
                                output_size=output_size, on_miss=on_miss, cache_dir=cache_dir, seed=seed, steps=steps,
                                device=device, engine_dtype=engine_dtype, **kwargs)
        self._rng = np.random.default_rng(self.core.seed)
        self._sr_rng_lock = None
        self.supports_jit = False  # Python per image: no XLA
        self._convert_input_args = False  # keep uint8 as uint8, tf.data tensors as they are
        self._allow_non_tensor_positional_args = True
        self.input_spec = None

    @property
    def seed(self):
        """The seed of the layer's RNG (kept once, in `core`, which `get_config` saves)."""
        return self.core.seed

    # -- Keras API -------------------------------------------------------------------------------------
    def call(self, inputs, training=True):
        if not training:
            return inputs
        tf = sys.modules.get("tensorflow")  # a TF tensor means TensorFlow is imported already
        if tf is None or not tf.is_tensor(inputs):  # numpy input, or another backend's eager tensor
            try:
                array = keras.ops.convert_to_numpy(inputs)
            except Exception as exc:
                raise TypeError(
                    f"SRAugment runs Python per image and cannot run inside a {keras.backend.backend()} "
                    f"trace; use the TensorFlow backend or apply it in a tf.data pipeline ({exc})"
                ) from None
            return keras.ops.convert_to_tensor(self._augment(array))
        dtype, rank = self._check_tensor(inputs)
        batch = inputs if rank == 4 else inputs[None]
        if tf.executing_eagerly():
            out = tf.convert_to_tensor(self._augment_batch(batch.numpy()))
        else:
            out = tf.numpy_function(self._augment_batch, [batch], Tout=dtype, stateful=True,
                                    name="sr_augment")
            out.set_shape(self._batch_shape(batch.shape))
        return out if rank == 4 else out[0]

    def compute_output_shape(self, input_shape):
        input_shape = tuple(input_shape)
        if len(input_shape) not in (3, 4):
            raise ImageShapeError(f"SRAugment expects a 3D (HWC) or 4D (NHWC) input, got shape {input_shape}")
        return (*input_shape[:-3], *self.core.result_shape(input_shape[-3], input_shape[-2]))

    def compute_output_spec(self, inputs, training=True):
        if training is False:
            return keras.KerasTensor(inputs.shape, dtype=inputs.dtype)
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
        return {**super().get_config(), **config}

    # -- the work --------------------------------------------------------------------------------------
    def _check_tensor(self, inputs):
        _check_input(inputs.dtype.name, inputs.shape.rank, inputs.shape[-1] if inputs.shape.rank else None,
                     inputs.shape)
        return inputs.dtype, inputs.shape.rank

    def _batch_shape(self, shape) -> tuple:
        return (shape[0], *self.core.result_shape(shape[1], shape[2]))

    def _augment(self, array: np.ndarray) -> np.ndarray:
        """numpy path (eager non-TF input): same checks, batched or not."""
        array = np.asarray(array)
        _check_input(array.dtype.name, array.ndim, array.shape[-1] if array.ndim else None, array.shape)
        out = self._augment_batch(array if array.ndim == 4 else array[None])
        return out if array.ndim == 4 else out[0]

    def _draw_lock(self) -> threading.Lock:
        if self._sr_rng_lock is None:
            with _LOCK_GUARD:
                if self._sr_rng_lock is None:
                    self._sr_rng_lock = threading.Lock()
        return self._sr_rng_lock

    def _draw_params(self, n: int) -> dict:
        """Which of `n` images to augment, and the variant of each, from the layer's RNG (tf.data may
        call from several threads): {"augment": [bool], "variant": [int]}, as `AugmentCore.apply_many`
        takes them."""
        with self._draw_lock():
            augment = self._rng.random(n) < self.core.p
            variant = self._rng.integers(0, self.core.variants, n)
        return {"augment": augment.tolist(), "variant": variant.tolist()}

    def _augment_batch(self, batch: np.ndarray) -> np.ndarray:
        """NHWC uint8 or float [0, 255] in, NHWC results of the same dtype out."""
        _check_input(batch.dtype.name, batch.ndim, batch.shape[-1], batch.shape)
        images = _to_uint8(batch)
        shape = self._batch_shape(batch.shape)
        if len(images) == 0:
            return np.zeros(shape, batch.dtype)
        results = self.core.apply_many(images, self._draw_params(len(images)))
        for i, result in enumerate(results):
            if result is None:  # resynthesize, not augmented: the input itself (exact, also for floats)
                results[i] = batch[i]
            elif result.shape != shape[1:]:
                raise ValueError(f"SRAugment: result {i} has shape {result.shape}, expected {shape[1:]}")
        return np.stack(results).astype(batch.dtype, copy=False)


def _check_input(dtype: str, rank, channels, shape) -> None:
    if dtype not in ("uint8", *_FLOAT_DTYPES):
        raise TypeError(f"SRAugment expects uint8 or float (float16/32/64) images, got {dtype}")
    if rank not in (3, 4):
        raise ImageShapeError(f"SRAugment expects a 3D (height, width, 3) or 4D (batch, height, width, 3) input, got "
                         f"shape {shape}" + ("" if rank is not None else " (unknown rank: set the shape)"))
    if channels is not None and channels != 3:
        raise ImageShapeError(f"SRAugment expects RGB images with 3 channels (channels last), got shape {shape}")


def _to_uint8(batch: np.ndarray) -> np.ndarray:
    """uint8 as is; float in [0, 255] rounded (NaN, infinity or values outside [0, 255] are an error)."""
    if batch.dtype == np.uint8:
        return np.ascontiguousarray(batch)
    if batch.size:
        if not np.all(np.isfinite(batch)):
            raise ValueError("SRAugment: float image contains NaN or infinity")
        lo, hi = float(batch.min()), float(batch.max())
        if lo < 0.0 or hi > 255.0:
            raise ValueError(
                f"SRAugment: float images must lie in [0, 255] (Keras' image convention), got values in "
                f"[{lo:.4g}, {hi:.4g}]; for images in [0, 1], multiply by 255 first"
            )
    return np.round(batch.astype(np.float32)).astype(np.uint8)


__all__ = ["SRAugment"]
