"""Property-based tests (hypothesis) of the image normaliser: whatever array comes in, the result is
uint8 HWC RGB of the same height and width, or a clear error (`ImageDecodeError`, `ImageShapeError`)
that names the input."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from sr_augment.images import ImageDecodeError, ImageShapeError, array_to_rgb, pil_to_rgb

sides = st.integers(1, 12)
dtypes = st.sampled_from([np.uint8, np.uint16, np.bool_, np.float32, np.float64])


@st.composite
def images(draw):
    dtype = draw(dtypes)
    shape = (draw(sides), draw(sides)) + draw(st.sampled_from([(), (1,), (3,), (4,)]))
    if np.issubdtype(dtype, np.floating):
        elements = st.floats(0.0, 1.0, width=32 if dtype == np.float32 else 64)
        return draw(arrays(dtype, shape, elements=elements))
    return draw(arrays(dtype, shape))


@settings(max_examples=200, deadline=None)
@given(images())
def test_every_valid_array_becomes_uint8_rgb_of_the_same_size(image):
    out = array_to_rgb(image, "x")
    assert out.dtype == np.uint8 and out.shape == image.shape[:2] + (3,) and out.flags["C_CONTIGUOUS"]
    first = image if image.ndim == 2 else image[..., 0]
    scale = {np.dtype(np.uint8): 1.0, np.dtype(np.uint16): 1 / 257, np.dtype(np.bool_): 255.0}.get(image.dtype, 255.0)
    assert np.abs(out[..., 0].astype(float) - first.astype(float) * scale).max() <= 0.5 + 1e-9
    if image.ndim == 2 or image.shape[2] == 1:  # gray is replicated, never tinted
        assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])
    assert np.array_equal(array_to_rgb(out, "again"), out)  # idempotent on its own output


@settings(max_examples=100, deadline=None)
@given(arrays(np.float64, st.tuples(sides, sides, st.just(3)),
              elements=st.floats(allow_nan=True, allow_infinity=True, width=64)))
def test_floats_out_of_range_or_not_finite_are_refused_by_name(image):
    if np.all(np.isfinite(image)) and image.min() >= 0 and image.max() <= 1:
        assert array_to_rgb(image, "frame7").shape == image.shape
        return
    try:
        array_to_rgb(image, "frame7")
    except ImageDecodeError as exc:
        assert "frame7" in str(exc)
    else:
        raise AssertionError("an out-of-range or non-finite float image was accepted")


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6), st.integers(1, 6), st.sampled_from([(0,), (2,), (5,)]), dtypes)
def test_wrong_rank_or_channel_count_is_a_clear_error(height, width, channels, dtype):
    image = np.zeros((height, width) + channels, dtype) if channels != (0,) else np.zeros((height, width, 2, 2), dtype)
    try:
        array_to_rgb(image, "bad.npy")
    except ImageShapeError as exc:
        assert "bad.npy" in str(exc)
    else:
        raise AssertionError(f"shape {image.shape} was accepted")


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["L", "LA", "P", "RGBA", "CMYK", "I;16", "1", "YCbCr"]), sides, sides, st.integers(0, 2**16 - 1))
def test_every_pil_mode_becomes_uint8_rgb(mode, height, width, seed):
    from PIL import Image

    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    image = rgb.convert(mode) if mode != "I;16" else Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.uint16))
    out = pil_to_rgb(image)
    assert out.dtype == np.uint8 and out.shape == (height, width, 3)
