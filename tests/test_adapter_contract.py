"""One contract, both adapters: what every `SRAugment` (torchvision transform, Keras layer) must do.

In the spirit of torchvision's `check_transform` and kornia's `CommonTests`: each check is written
once and run through a small driver per framework, which only converts images to and from that
framework's types (torch: NCHW tensors, float in [0, 1]; Keras: NHWC tensors, float in [0, 255]).
The expected pixels come from outside the adapters: Pillow's bicubic, and a reference cache that runs
the shared fake engine itself. The framework-specific behaviour (tf.data graphs, DataLoader workers,
PIL input, model saving) is tested in test_torch_transform.py and test_keras_layer.py.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from PIL import Image

from fakes import CountingEngine
from sr_augment.cache import CacheMiss, SRCache

IMAGES = np.random.default_rng(0).integers(0, 256, (3, 6, 8, 3), dtype=np.uint8)  # NHWC, even sides


class TorchDriver:
    """torchvision `SRAugment`: a CHW image or an NCHW batch; uint8, or float in [0, 1]."""

    def __init__(self):
        self.torch = pytest.importorskip("torch")
        pytest.importorskip("torchvision")
        from sr_augment.torch_transforms import SRAugment

        self.adapter_class = SRAugment

    def to_input(self, images: np.ndarray, dtype: str, batched: bool = True):
        tensor = self.torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
        if dtype != "uint8":
            tensor = tensor.to(getattr(self.torch, dtype)) / 255
        return tensor if batched else tensor[0]

    def run(self, adapter, inpt):
        self.torch.manual_seed(0)  # the transform draws from torch's RNG
        return adapter(inpt)

    def values(self, out) -> np.ndarray:
        """The raw values, NHWC (a batch of one for a single image)."""
        array = out.numpy()
        return array.transpose(1, 2, 0)[None] if array.ndim == 3 else array.transpose(0, 2, 3, 1)

    def to_uint8(self, out) -> np.ndarray:
        array = self.values(out)
        return np.rint(array * 255).astype(np.uint8) if out.is_floating_point() else array

    def same_kind(self, out, inpt) -> bool:
        return type(out) is type(inpt) and out.dtype == inpt.dtype and out.ndim == inpt.ndim

    def round_trips(self, adapter) -> list:
        return [pickle.loads(pickle.dumps(adapter))]


class KerasDriver:
    """Keras `SRAugment` (TensorFlow backend, eager): an HWC image or an NHWC batch; uint8, or float
    in [0, 255]."""

    def __init__(self):
        self.tf = pytest.importorskip("tensorflow")
        self.keras = pytest.importorskip("keras")
        if self.keras.backend.backend() != "tensorflow":
            pytest.skip("needs the TensorFlow backend")
        from sr_augment.keras_layers import SRAugment

        self.adapter_class = SRAugment

    def to_input(self, images: np.ndarray, dtype: str, batched: bool = True):
        tensor = self.tf.constant(images.astype(dtype))
        return tensor if batched else tensor[0]

    def run(self, adapter, inpt):
        return adapter(inpt)  # training defaults to True: the layer augments

    def values(self, out) -> np.ndarray:
        array = out.numpy()
        return array[None] if array.ndim == 3 else array

    def to_uint8(self, out) -> np.ndarray:
        return np.rint(self.values(out)).astype(np.uint8)

    def same_kind(self, out, inpt) -> bool:
        return self.tf.is_tensor(out) and out.dtype == inpt.dtype and out.shape.rank == inpt.shape.rank

    def round_trips(self, adapter) -> list:
        config = adapter.get_config()
        return [self.adapter_class.from_config(config),
                self.keras.layers.deserialize(self.keras.layers.serialize(adapter)),
                pickle.loads(pickle.dumps(adapter))]


DRIVERS = {"torch": TorchDriver, "keras": KerasDriver}


@pytest.fixture(params=sorted(DRIVERS))
def driver(request):
    return DRIVERS[request.param]()


def _bicubic(image: np.ndarray, size) -> np.ndarray:
    """Pillow bicubic to (height, width)."""
    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.BICUBIC))


def _upscaled(images: np.ndarray, scale: int = 2) -> np.ndarray:
    return np.stack([_bicubic(image, (image.shape[0] * scale, image.shape[1] * scale)) for image in images])


def _engine_results(images: np.ndarray, mode: str, folder) -> np.ndarray:
    """What the fake engine makes of each image (variant 0), through a cache of its own."""
    with SRCache(folder) as cache:
        return np.stack([cache.get_or_create(image, CountingEngine(), mode, 0) for image in images])


# ---------------------------------------------------------------------------------------------------------
# settings survive a round trip (torch: pickle; Keras: get_config / from_config, serialize, pickle)
# ---------------------------------------------------------------------------------------------------------
def test_settings_survive_a_round_trip_and_the_copy_works(driver, tmp_path):
    settings = dict(engine="bicubic", mode="resynthesize", scale=2, variants=3, p=0.5, output_size=(5, 7),
                    on_miss="passthrough", cache_dir=str(tmp_path / "cache"), seed=3, steps=None)  # bicubic: no steps
    adapter = driver.adapter_class(**settings)
    config = adapter.core.config()
    assert {key: config[key] for key in settings} == settings
    images = np.random.default_rng(1).integers(0, 256, (12, 6, 8, 3), dtype=np.uint8)
    inpt = driver.to_input(images, "uint8")
    copies = driver.round_trips(adapter)  # before the first call: the copies start where the original does
    expected = driver.values(driver.run(adapter, inpt))
    assert expected.shape == (12, 5, 7, 3)
    for clone in copies:
        assert type(clone) is type(adapter) and clone is not adapter
        assert clone.core.config() == config
        np.testing.assert_array_equal(driver.values(driver.run(clone, inpt)), expected)  # same draws, same results


# ---------------------------------------------------------------------------------------------------------
# p=1: the engine's result, in the input's kind and dtype; p=0: the input, or bicubic in upscale mode
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["upscale", "resynthesize"])
@pytest.mark.parametrize("dtype", ["uint8", "float32"])
@pytest.mark.parametrize("batched", [True, False], ids=["batch", "image"])
def test_p1_returns_the_engine_result_in_the_input_kind_and_dtype(driver, mode, dtype, batched, tmp_path):
    images = IMAGES if batched else IMAGES[:1]
    engine = CountingEngine()
    adapter = driver.adapter_class(engine=engine, mode=mode, scale=2, p=1.0, cache_dir=tmp_path / "cache")
    inpt = driver.to_input(images, dtype, batched)
    out = driver.run(adapter, inpt)
    assert driver.same_kind(out, inpt)
    expected = _engine_results(images, mode, tmp_path / "reference")
    assert expected.shape[1:3] == ((12, 16) if mode == "upscale" else (6, 8))
    np.testing.assert_array_equal(driver.to_uint8(out), expected)
    assert engine.calls == [len(images)]  # the misses of one call: one engine batch


@pytest.mark.parametrize("mode", ["upscale", "resynthesize"])
@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_p0_returns_the_input_or_in_upscale_mode_bicubic(driver, mode, dtype, tmp_path):
    engine = CountingEngine()
    adapter = driver.adapter_class(engine=engine, mode=mode, scale=2, p=0.0, cache_dir=tmp_path / "cache")
    inpt = driver.to_input(IMAGES, dtype)
    out = driver.run(adapter, inpt)
    assert driver.same_kind(out, inpt)
    if mode == "resynthesize":
        np.testing.assert_array_equal(driver.values(out), driver.values(inpt))
    else:
        np.testing.assert_array_equal(driver.to_uint8(out), _upscaled(IMAGES))
    assert engine.calls == [] and len(adapter.core.cache) == 0


# ---------------------------------------------------------------------------------------------------------
# on_miss
# ---------------------------------------------------------------------------------------------------------
def test_on_miss_generate_stores_and_returns_the_result(driver, tmp_path):
    engine = CountingEngine()
    adapter = driver.adapter_class(engine=engine, scale=2, on_miss="generate", cache_dir=tmp_path / "cache")
    inpt = driver.to_input(IMAGES, "uint8")
    first = driver.to_uint8(driver.run(adapter, inpt))
    stats = adapter.core.cache.stats()
    assert (stats.generated, stats.entries, engine.calls) == (3, 3, [3])
    with SRCache(tmp_path / "cache") as cache:
        stored = np.stack([cache.get(image, CountingEngine(), "upscale", 0) for image in IMAGES])
    np.testing.assert_array_equal(first, stored)
    assert not np.array_equal(first, _upscaled(IMAGES))  # the engine's, not the bicubic stand-in
    np.testing.assert_array_equal(driver.to_uint8(driver.run(adapter, inpt)), first)
    assert engine.calls == [3]  # the second call: all hits


def test_on_miss_passthrough_returns_bicubic_and_counts_the_misses(driver, tmp_path):
    engine = CountingEngine()
    adapter = driver.adapter_class(engine=engine, scale=2, on_miss="passthrough", cache_dir=tmp_path / "cache")
    out = driver.run(adapter, driver.to_input(IMAGES, "uint8"))
    np.testing.assert_array_equal(driver.to_uint8(out), _upscaled(IMAGES))
    stats = adapter.core.cache.stats()
    assert (stats.misses, stats.entries, stats.generated, engine.calls) == (3, 0, 0, [])


def test_on_miss_error_raises_cache_miss_naming_the_key_and_serves_hits(driver, tmp_path):
    engine = CountingEngine()
    adapter = driver.adapter_class(engine=engine, scale=2, on_miss="error", cache_dir=tmp_path / "cache")
    inpt = driver.to_input(IMAGES, "uint8")
    with SRCache(tmp_path / "cache") as cache:
        key = cache.key(IMAGES[0], CountingEngine(), "upscale", 0)
    with pytest.raises(CacheMiss, match=key):
        driver.run(adapter, inpt)
    assert engine.calls == [] and len(adapter.core.cache) == 0
    warmed = _engine_results(IMAGES, "upscale", tmp_path / "cache")  # warm the same cache
    np.testing.assert_array_equal(driver.to_uint8(driver.run(adapter, inpt)), warmed)
    assert engine.calls == []
