"""Pixel values of the Keras layer: input checks, and `value_range` to uint8 and back.

The engines and the cache work on uint8 RGB. Keras' image layers take any dtype and say which values
the input spans with `value_range` (default `(0, 255)`); a float image in [0, 1] after
`Rescaling(1 / 255)` must be told apart from a dark [0, 255] image, so values far outside
`value_range` are an error, never silently clipped. Values a little outside it are clipped to it, as
Keras' own image layers clip: bicubic, Lanczos and Mitchell-cubic resizes (`image_dataset_from_directory(
interpolation=...)`, `Resizing`) overshoot sharp edges, by up to about one range width on a one-pixel
checkerboard (Lanczos 5); anything within `OVERSHOOT` range widths of `value_range` is taken as such
overshoot. Floats become uint8 rounding halves up, with a small tolerance for float error
(`round_half_up`), so a half keys alike before and after `Rescaling(1 / 255)`. The one mistake no range
check can see, float [0, 1]
images with the default `(0, 255)`, is suspected by `unit_range_suspected` and the layer warns once
(`ValueRangeWarning`): a dark [0, 255] batch may legally look the same.
"""

from __future__ import annotations

import numpy as np

from sr_augment.images import ImageShapeError

FLOAT_DTYPES = ("float16", "float32", "float64")
# Float rounding (e.g. 1.0000001 after a division): what `unit_range_suspected` still counts as 1.
RANGE_TOLERANCE = 1e-3
# Float error in [0, 255] units that float -> uint8 still reads as a half (see `round_half_up`).
HALF_TOLERANCE = 1e-3
OVERSHOOT = 1.5
"""Values within this many widths of `value_range` outside it are a resize's overshoot and are clipped to it;
anything further out (a [0, 255] image given value_range=(0, 1): 255 widths) is an error."""
_USUAL_RANGES = ((0, 1), (-1, 1), (0, 255), (0, 65535))


def check_value_range(value_range) -> tuple[float, float]:
    """`(low, high)` with low < high, as Keras' image layers take it."""
    if not isinstance(value_range, (tuple, list)) or len(value_range) != 2:
        raise ValueError(f"value_range must be a tuple of two numbers (low, high), got {value_range!r}")
    low, high = (float(v) for v in value_range)
    if not (np.isfinite(low) and np.isfinite(high) and low < high):
        raise ValueError(f"value_range must be two finite numbers with low < high, got {value_range!r}")
    return (int(low) if low.is_integer() else low, int(high) if high.is_integer() else high)


def check_input(dtype: str, rank, channels, shape) -> None:
    if dtype not in ("uint8", *FLOAT_DTYPES):
        raise TypeError(f"SRAugment expects uint8 or float (float16/32/64) images, got {dtype}")
    if rank not in (3, 4):
        raise ImageShapeError(f"SRAugment expects a 3D (height, width, 3) or 4D (batch, height, width, 3) input, "
                              f"got shape {shape}" + ("" if rank is not None else " (unknown rank: set the shape)"))
    if channels is not None and channels != 3:
        raise ImageShapeError(f"SRAugment expects RGB images with 3 channels (channels last), got shape {shape}")


def _is_uint8_range(value_range) -> bool:
    return tuple(value_range) == (0, 255)


def to_uint8(batch: np.ndarray, value_range) -> np.ndarray:
    """The engine's uint8 [0, 255] from `batch` in `value_range`, clipped to it (NaN, infinity or values
    more than `OVERSHOOT` widths outside `value_range` are an error)."""
    if batch.dtype == np.uint8 and _is_uint8_range(value_range):
        return np.ascontiguousarray(batch)
    low, high = value_range
    if batch.size:
        if batch.dtype != np.uint8 and not np.all(np.isfinite(batch)):
            raise ValueError("SRAugment: float image contains NaN or infinity")
        lo, hi = float(batch.min()), float(batch.max())
        slack = OVERSHOOT * (high - low)
        if lo < low - slack or hi > high + slack:
            fits = [r for r in _USUAL_RANGES if r[0] - OVERSHOOT * (r[1] - r[0]) <= lo
                    and hi <= r[1] + OVERSHOOT * (r[1] - r[0]) and r != tuple(value_range)]
            hint = f"; pass the range your images are in, e.g. value_range={fits[0]}" if fits else \
                "; pass the range your images are in as value_range"
            raise ValueError(f"SRAugment: input values in [{lo:.4g}, {hi:.4g}] lie outside value_range=[{low}, {high}] "
                             f"by more than a resize's overshoot ({OVERSHOOT:g} x its width, clipped){hint}")
    values = batch.astype(np.float64)
    if not _is_uint8_range(value_range):
        values = (values - low) * (255.0 / (high - low))
    return round_half_up(np.clip(values, 0.0, 255.0))


def round_half_up(values: np.ndarray) -> np.ndarray:
    """uint8 of `values` in [0, 255], halves rounded up after a `HALF_TOLERANCE` slack: a resize's exact
    half (126.5) and the same half after a float32 round trip through another range (126.49999x after
    x (1 / 255) and back) both give 127, where round-half-to-even would give 126 and 127."""
    return np.minimum(np.floor(values + (0.5 + HALF_TOLERANCE)), 255.0).astype(np.uint8)


def unit_range_suspected(batch: np.ndarray, value_range) -> tuple[float, float] | None:
    """`(min, max)` of a float `batch` that most likely holds [0, 1] images given the default `(0, 255)`
    range: finite values, none negative, maximum above 0 and at most 1 (plus float rounding); else None.
    Read in [0, 255] such a batch rounds to {0, 1}. An all-black batch is not suspected: either reading
    gives the same result."""
    if batch.dtype.name not in FLOAT_DTYPES or not _is_uint8_range(value_range) or not batch.size:
        return None
    lo, hi = float(batch.min()), float(batch.max())
    if np.isfinite(lo) and np.isfinite(hi) and lo >= 0 and 0 < hi <= 1 + RANGE_TOLERANCE:
        return lo, hi
    return None


def unit_range_message(layer_name: str, bounds: tuple[float, float]) -> str:
    lo, hi = bounds
    return (f"SRAugment layer {layer_name!r} got float images with values in [{lo:.4g}, {hi:.4g}] and "
            f"value_range=(0, 255): they are read as [0, 255] pixels, so images in [0, 1] (e.g. after "
            f"Rescaling(1 / 255)) come back as {{0, 1}}. If your images are in [0, 1], pass value_range=(0, 1), "
            f"or put Rescaling(1 / 255) after SRAugment. If they really are very dark [0, 255] images, ignore "
            f"this: warnings.filterwarnings('ignore', category=sr_augment.ValueRangeWarning). "
            f"(Warned once per layer.)")


def from_uint8(images: np.ndarray, value_range, dtype) -> np.ndarray:
    """uint8 [0, 255] results back to `value_range`, in `dtype` (exact for (0, 255))."""
    dtype = np.dtype(dtype)
    if _is_uint8_range(value_range):
        return images.astype(dtype, copy=False)
    low, high = value_range
    values = images.astype(np.float64) * ((high - low) / 255.0) + low
    if dtype == np.uint8:
        values = np.round(np.clip(values, 0, 255))
    return values.astype(dtype)
