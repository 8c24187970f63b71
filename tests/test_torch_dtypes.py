"""The torchvision transform keeps every image dtype's meaning (torchvision v2's conventions): uint8 in
[0, 255], uint16 in [0, 65535], float (float16, bfloat16, float32, float64) in [0, 1]. The output has the
input's dtype and range; an image that is not augmented comes back exactly as given; any other dtype is
refused with a message naming it and what is supported."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")
from torchvision import tv_tensors  # noqa: E402

from fakes import CountingEngine  # noqa: E402
from sr_augment.cache import SRCache  # noqa: E402
from sr_augment.images import bicubic_resize  # noqa: E402
from sr_augment.torch_transforms import SRAugment  # noqa: E402

FLOATS = ["float16", "bfloat16", "float32", "float64"]
IMAGES = np.random.default_rng(3).integers(0, 256, (3, 6, 8, 3), dtype=np.uint8)  # NHWC


def _nchw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


def _engine_results(images: np.ndarray, mode: str, cache_dir) -> np.ndarray:
    """What the fake engine makes of each uint8 image, from a cache of its own (NHWC)."""
    with SRCache(cache_dir) as cache:
        return np.stack([cache.get_or_create(image, CountingEngine(), mode, 0) for image in images])


def _off_grid(dtype: str) -> torch.Tensor:
    """A float batch in [0, 1] whose values are NOT multiples of 1/255 (so rounding to 8 bits would show)."""
    values = torch.rand(3, 3, 6, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    return values.to(getattr(torch, dtype))


@pytest.mark.parametrize("mode", ["upscale", "resynthesize"])
@pytest.mark.parametrize("batched", [True, False], ids=["batch", "image"])
def test_uint16_comes_back_uint16_in_full_range(mode, batched, tmp_path):
    inpt = _nchw(IMAGES).to(torch.int32).mul(257).to(torch.uint16)  # the uint8 pictures, 16-bit
    inpt = inpt if batched else inpt[0]
    out = SRAugment(engine=CountingEngine(), mode=mode, scale=2, cache_dir=tmp_path / "cache")(inpt)
    assert out.dtype == torch.uint16 and out.ndim == inpt.ndim
    expected = _engine_results(IMAGES if batched else IMAGES[:1], mode, tmp_path / "reference")
    got = out.numpy().astype(np.int64)
    got = got[None] if got.ndim == 3 else got
    np.testing.assert_array_equal(got, expected.transpose(0, 3, 1, 2).astype(np.int64) * 257)
    assert got.max() > 255  # the full 16-bit range, not 8-bit values in a uint16 tensor


def test_uint16_keys_as_its_8_bit_version_so_a_warm_cache_serves_it(tmp_path):
    """value / 257 rounded, as `images.array_to_rgb` keys a 16-bit array: one key for one picture."""
    t = SRAugment(engine=CountingEngine(), mode="upscale", scale=2, cache_dir=tmp_path / "cache")
    t(_nchw(IMAGES))  # warms the uint8 keys
    engine = t.core.engine
    sixteen = _nchw(IMAGES).to(torch.int32).mul(257).add(100).clamp(max=65535).to(torch.uint16)  # off the grid
    out = t(sixteen)
    assert engine.calls == [3]  # all hits: nothing generated for the uint16 batch
    np.testing.assert_array_equal(out.numpy().astype(np.int64) // 257,
                                  _engine_results(IMAGES, "upscale", tmp_path / "ref").transpose(0, 3, 1, 2))


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("mode", ["upscale", "resynthesize"])
def test_every_float_dtype_is_computed_and_returned_in_its_own_dtype(dtype, mode, tmp_path):
    inpt = _nchw(IMAGES).to(getattr(torch, dtype)) / 255
    inpt = inpt.to(getattr(torch, dtype))
    out = SRAugment(engine=CountingEngine(), mode=mode, scale=2, cache_dir=tmp_path / "cache")(inpt)
    assert out.dtype == inpt.dtype
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    expected = _engine_results(IMAGES, mode, tmp_path / "reference").transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(torch.round(out.double() * 255).numpy().astype(np.uint8), expected)


@pytest.mark.parametrize("dtype", ["uint8", "uint16", *FLOATS])
@pytest.mark.parametrize("kind", ["tensor", "tv_image", "chw"])
def test_p0_in_resynthesize_mode_returns_the_input_untouched(dtype, kind, tmp_path):
    inpt = _off_grid(dtype) if dtype in FLOATS else \
        torch.randint(0, 256 if dtype == "uint8" else 65536, (3, 3, 6, 8), dtype=torch.int32).to(getattr(torch, dtype))
    inpt = tv_tensors.Image(inpt) if kind == "tv_image" else inpt[0] if kind == "chw" else inpt
    before = inpt.clone()
    t = SRAugment(engine=CountingEngine(), mode="resynthesize", scale=2, p=0.0, cache_dir=tmp_path / "cache")
    out = t(inpt)
    assert type(out) is type(inpt) and out.dtype == inpt.dtype and out.shape == inpt.shape
    assert torch.equal(out, before)  # bit-identical: not rounded to 8 bits
    assert torch.equal(inpt, before)


@pytest.mark.parametrize("dtype", ["uint16", "float32", "bfloat16"])
def test_a_mixed_batch_keeps_the_images_it_does_not_augment_exactly(dtype, tmp_path):
    inpt = _off_grid(dtype) if dtype != "uint16" else \
        torch.randint(0, 65536, (3, 3, 6, 8), dtype=torch.int32, generator=torch.Generator().manual_seed(2)).to(torch.uint16)
    inpt = inpt.repeat(4, 1, 1, 1)  # 12 images
    t = SRAugment(engine=CountingEngine(), mode="resynthesize", scale=2, p=0.5, seed=1, cache_dir=tmp_path / "cache")
    twin = SRAugment(engine=CountingEngine(), mode="resynthesize", scale=2, p=0.5, seed=1, cache_dir=tmp_path / "cache")
    augment = twin.make_params([inpt])["augment"]  # the draws `t` is about to make
    assert 0 < sum(augment) < len(augment)
    out = t(inpt)
    assert out.dtype == inpt.dtype
    for i, augmented in enumerate(augment):
        assert torch.equal(out[i], inpt[i]) != augmented, i


@pytest.mark.parametrize("dtype", ["uint16", "float32", "bfloat16"])
def test_one_and_four_channel_images_not_augmented_keep_their_values_and_channels(dtype, tmp_path):
    base = _off_grid(dtype) if dtype != "uint16" else \
        torch.randint(0, 65536, (3, 3, 6, 8), dtype=torch.int32).to(torch.uint16)
    t = SRAugment(engine=CountingEngine(), mode="resynthesize", scale=2, p=0.0, cache_dir=tmp_path / "cache")
    gray = base[:, :1]
    assert torch.equal(t(gray), gray)
    rgba = torch.cat([base, base[:, :1]], dim=1)
    assert torch.equal(t(rgba), rgba)


def test_upscale_p0_gives_the_bicubic_result_in_the_input_dtype_and_range(tmp_path):
    inpt = _nchw(IMAGES).to(torch.int32).mul(257).to(torch.uint16)
    out = SRAugment(engine=CountingEngine(), mode="upscale", scale=2, p=0.0, cache_dir=tmp_path / "cache")(inpt)
    expected = np.stack([bicubic_resize(image, 2) for image in IMAGES]).transpose(0, 3, 1, 2)
    assert out.dtype == torch.uint16
    np.testing.assert_array_equal(out.numpy().astype(np.int64), expected.astype(np.int64) * 257)


@pytest.mark.parametrize("dtype", ["int8", "int16", "int32", "int64", "bool", "uint32", "complex64"])
def test_other_dtypes_are_refused_naming_the_dtype_and_the_supported_ones(dtype, tmp_path):
    torch_dtype = getattr(torch, dtype, None)
    if torch_dtype is None:
        pytest.skip(f"torch {torch.__version__} has no {dtype}")
    inpt = torch.zeros(3, 6, 8, dtype=torch_dtype)
    t = SRAugment(engine=CountingEngine(), mode="resynthesize", scale=2, p=1.0, cache_dir=tmp_path / "cache")
    with pytest.raises(TypeError, match=rf"(?s){dtype}.*uint8.*uint16.*float.*ToDtype"):
        t(inpt)
    with pytest.raises(TypeError, match=dtype):  # also when the image would not be augmented
        SRAugment(engine=CountingEngine(), mode="resynthesize", scale=2, p=0.0, cache_dir=tmp_path / "c2")(inpt)
    assert not (tmp_path / "cache").exists() or len(t.core.cache) == 0


# ---------------------------------------------------------------------------------------------------------
# The Keras layer, same question: it supports uint8 and float16/32/64 exactly (value_range) and refuses the
# rest by name (a regression pin: it already did)
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["uint16", "bfloat16", "int32"])
def test_the_keras_layer_refuses_other_dtypes_by_name(dtype, tmp_path):
    tf = pytest.importorskip("tensorflow")
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "tensorflow":
        pytest.skip("needs the TensorFlow backend")
    from sr_augment.keras_layers import SRAugment as KerasSRAugment

    images = tf.cast(tf.constant(IMAGES), dtype)
    with pytest.raises(TypeError, match=rf"uint8 or float.*got {dtype}"):
        KerasSRAugment(engine=CountingEngine(), mode="resynthesize", scale=2, cache_dir=tmp_path / "cache")(images)


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_the_keras_layer_returns_images_it_does_not_augment_exactly(dtype, tmp_path):
    tf = pytest.importorskip("tensorflow")
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "tensorflow":
        pytest.skip("needs the TensorFlow backend")
    from sr_augment.keras_layers import SRAugment as KerasSRAugment

    values = np.random.default_rng(4).random((3, 6, 8, 3)).astype(dtype)  # off the 8-bit grid
    layer = KerasSRAugment(engine=CountingEngine(), mode="resynthesize", scale=2, p=0.0, value_range=(0, 1),
                           cache_dir=tmp_path / "cache")
    out = layer(tf.constant(values))
    assert out.dtype.name == dtype
    np.testing.assert_array_equal(out.numpy(), values)
