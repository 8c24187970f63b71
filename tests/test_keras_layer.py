"""Keras `SRAugment`: tf.data maps, training flag, p / variants / seed, on_miss, saving, bad input, and a
TF-first process that trains a model with a diffusers engine (in the shared service) without torch."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from fakes import CountingEngine  # noqa: E402
from sr_augment.cache import CacheMiss, SRCache  # noqa: E402
from sr_augment.engines import BicubicEngine  # noqa: E402
from sr_augment.keras_layers import SRAugment  # noqa: E402

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="needs the TensorFlow backend")


def _images(n=3, h=6, w=5, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def _pillow(image: np.ndarray, size) -> np.ndarray:
    """Pillow bicubic to (height, width)."""
    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.BICUBIC))


def _expected(image: np.ndarray, mode: str, scale: int, output_size) -> np.ndarray:
    h, w = image.shape[:2]
    if mode == "upscale":
        result = _pillow(image, (h * scale, w * scale))
    else:
        low = _pillow(image, (round(h / scale), round(w / scale)))
        result = _pillow(low, (low.shape[0] * scale, low.shape[1] * scale))
        result = _pillow(result, (h, w)) if result.shape[:2] != (h, w) else result
    return result if output_size is None else _pillow(result, output_size)


# ---------------------------------------------------------------------------------------------------------
# tf.data, static shapes, values
# ---------------------------------------------------------------------------------------------------------
CASES = {
    "upscale-x2": dict(mode="upscale", scale=2, output_size=None),
    "upscale-output-size": dict(mode="upscale", scale=2, output_size=(7, 9)),
    "resynthesize": dict(mode="resynthesize", scale=2, output_size=None),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", ["uint8", "float32"])
@pytest.mark.parametrize("batched", [True, False], ids=["rank4", "rank3"])
def test_tf_data_map_shapes_dtypes_and_values(cache_dir, case, dtype, batched):
    settings = CASES[case]
    layer = SRAugment(engine="bicubic", cache_dir=cache_dir, **settings)
    images = _images(n=4, h=8, w=6)
    ds = tf.data.Dataset.from_tensor_slices(images.astype(dtype))
    if batched:
        ds = ds.batch(2, drop_remainder=True)
    h, w = images.shape[1:3]
    scale, size = settings["scale"], settings["output_size"]
    out_hw = size or ((h * scale, w * scale) if settings["mode"] == "upscale" else (h, w))
    expected = np.stack([_expected(img, settings["mode"], scale, size) for img in images]).astype(dtype)
    for mapped in (ds.map(layer), ds.map(lambda x: layer(x, training=True), num_parallel_calls=2)):
        static = tuple(mapped.element_spec.shape)
        assert static == ((2,) if batched else ()) + (*out_hw, 3)
        assert mapped.element_spec.dtype == tf.as_dtype(dtype)
        got = [e.numpy() for e in mapped]
        assert all(g.shape == static and g.dtype == np.dtype(dtype) for g in got)
        np.testing.assert_array_equal(np.concatenate(got) if batched else np.stack(got), expected)
    # eager call on the same data agrees
    np.testing.assert_array_equal(layer(tf.constant(images.astype(dtype))).numpy(), expected)


def test_tf_data_with_labels_and_unknown_spatial_size(cache_dir):
    sizes = [(6, 5), (4, 8)]

    def gen():
        for i, (h, w) in enumerate(sizes):
            yield _images(1, h, w, seed=i)[0], i

    ds = tf.data.Dataset.from_generator(gen, output_signature=(tf.TensorSpec((None, None, 3), tf.uint8),
                                                               tf.TensorSpec((), tf.int64)))
    up = SRAugment(engine="bicubic", scale=2, cache_dir=cache_dir)
    mapped = ds.map(lambda x, y: (up(x, training=True), y))
    assert tuple(mapped.element_spec[0].shape) == (None, None, 3)
    got = list(mapped)
    assert [tuple(x.shape) for x, _ in got] == [(12, 10, 3), (8, 16, 3)] and [int(y) for _, y in got] == [0, 1]
    np.testing.assert_array_equal(got[0][0].numpy(), _pillow(_images(1, 6, 5, seed=0)[0], (12, 10)))
    fixed = SRAugment(engine="bicubic", mode="resynthesize", output_size=(5, 7), cache_dir=cache_dir)
    mapped = ds.map(lambda x, y: (fixed(x, training=True), y))
    assert tuple(mapped.element_spec[0].shape) == (5, 7, 3)
    assert [tuple(x.shape) for x, _ in mapped] == [(5, 7, 3)] * 2


def test_in_an_augmentation_stack_mapped_over_tf_data(cache_dir):
    """The documented Keras use: Sequential([RandomFlip, SRAugment]) in ds.map with training=True."""
    augment = keras.Sequential([
        keras.layers.RandomFlip("horizontal", seed=0),
        SRAugment(engine="bicubic", mode="resynthesize", p=0.5, variants=2, seed=0, cache_dir=cache_dir),
    ])
    images, labels = _images(8, 8, 8), np.arange(8)
    ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(4)
    ds = ds.map(lambda x, y: (augment(x, training=True), y))
    assert tuple(ds.element_spec[0].shape) == (None, 8, 8, 3) and ds.element_spec[0].dtype == tf.float32
    out = np.concatenate([x.numpy() for x, _ in ds])
    assert out.shape == (8, 8, 8, 3) and out.min() >= 0 and out.max() <= 255


def test_numpy_input_returns_a_tensor(cache_dir):
    images = _images(2)
    out = SRAugment(engine="bicubic", scale=2, cache_dir=cache_dir)(images)
    assert tf.is_tensor(out) and out.dtype == tf.uint8 and tuple(out.shape) == (2, 12, 10, 3)


# ---------------------------------------------------------------------------------------------------------
# training flag, p, variants, seed
# ---------------------------------------------------------------------------------------------------------
def test_training_false_returns_the_input_or_in_upscale_mode_its_bicubic_upscale_without_the_cache(cache_dir):
    """Inference gives what an image that is not augmented gets, with the training output's shape."""
    x = tf.constant(_images(2).astype("float32") + 0.25)
    same = SRAugment(engine="bicubic", mode="resynthesize", scale=2, cache_dir=cache_dir)
    assert same(x, training=False) is x
    up = SRAugment(engine="bicubic", scale=2, cache_dir=cache_dir)
    expected = np.stack([_pillow(img, (12, 10)) for img in np.round(x.numpy()).astype(np.uint8)]).astype("float32")
    np.testing.assert_array_equal(up(x, training=False).numpy(), expected)
    mapped = tf.data.Dataset.from_tensors(x).map(lambda b: up(b, training=False))
    assert tuple(mapped.element_spec.shape) == (2, 12, 10, 3)
    np.testing.assert_array_equal(next(iter(mapped)).numpy(), expected)
    model = keras.Sequential([keras.Input((6, 5, 3)), up])
    np.testing.assert_array_equal(model.predict(x, verbose=0), expected)  # predict: training=False
    assert len(SRCache(cache_dir)) == 0


def test_p_zero_passes_through_and_upscale_gets_bicubic(cache_dir):
    engine = CountingEngine()
    x = np.minimum(_images(3), 254).astype("float32") + 0.25  # non-integer: the passthrough must be exact
    same = SRAugment(engine=engine, mode="resynthesize", scale=2, p=0.0, cache_dir=cache_dir)
    np.testing.assert_array_equal(same(tf.constant(x)).numpy(), x)
    up = SRAugment(engine=engine, mode="upscale", scale=2, p=0.0, cache_dir=cache_dir)
    expected = np.stack([_pillow(img, (12, 10)) for img in np.round(x).astype(np.uint8)]).astype("float32")
    np.testing.assert_array_equal(up(tf.constant(x)).numpy(), expected)
    assert engine.calls == []


def test_p_half_augments_about_half(cache_dir):
    images = _images(64, 4, 4)
    layer = SRAugment(engine=CountingEngine(), mode="resynthesize", scale=2, p=0.5, seed=0, cache_dir=cache_dir)
    out = layer(tf.constant(images)).numpy()
    unchanged = sum(np.array_equal(o, i) for o, i in zip(out, images))
    assert 16 <= unchanged <= 48


def test_same_seed_same_variants(cache_dir):
    image = np.repeat(_images(1, 4, 4), 16, axis=0)  # the same picture 16 times: one key, 4 variants

    def outputs(seed):
        layer = SRAugment(engine=CountingEngine(), mode="upscale", scale=2, variants=4, seed=seed, cache_dir=cache_dir)
        return np.concatenate([layer(tf.constant(image)).numpy() for _ in range(3)])

    first, again, other = outputs(7), outputs(7), outputs(8)
    np.testing.assert_array_equal(first, again)
    distinct = {o.tobytes() for o in first}
    assert len(distinct) == 4  # every variant drawn (48 draws of 4)
    assert not np.array_equal(first, other)
    assert len(SRCache(cache_dir)) == 4


def test_generate_sends_a_batch_of_misses_in_one_engine_call(cache_dir):
    engine = CountingEngine()
    layer = SRAugment(engine=engine, scale=2, cache_dir=cache_dir)
    images = tf.constant(_images(4))
    first = layer(images).numpy()
    np.testing.assert_array_equal(layer(images).numpy(), first)
    assert engine.calls == [4]  # one batched call, then all hits
    stats = layer.core.cache.stats()
    assert (stats.generated, stats.hits) == (4, 4)


# ---------------------------------------------------------------------------------------------------------
# on_miss
# ---------------------------------------------------------------------------------------------------------
def test_on_miss_error_names_the_key(cache_dir):
    images = _images(1)
    layer = SRAugment(engine="bicubic", scale=2, on_miss="error", cache_dir=cache_dir)
    key = SRCache(cache_dir).key(images[0], BicubicEngine(2), "upscale", 0)
    with pytest.raises(CacheMiss, match=key):  # eager: the exception itself
        layer(tf.constant(images))
    mapped = tf.data.Dataset.from_tensor_slices(images).map(layer)
    with pytest.raises(tf.errors.OpError, match=key):  # graph: through tf.numpy_function
        list(mapped)
    warm = SRAugment(engine="bicubic", scale=2, cache_dir=cache_dir)
    expected = warm(tf.constant(images)).numpy()
    np.testing.assert_array_equal(layer(tf.constant(images)).numpy(), expected)  # warmed: a hit


def test_on_miss_passthrough_returns_bicubic_and_counts_the_miss(cache_dir):
    engine = CountingEngine()
    images = _images(2)
    layer = SRAugment(engine=engine, scale=2, on_miss="passthrough", cache_dir=cache_dir)
    out = layer(tf.constant(images)).numpy()
    np.testing.assert_array_equal(out, np.stack([_pillow(img, (12, 10)) for img in images]))
    stats = layer.core.cache.stats()
    assert (stats.misses, stats.entries, engine.calls) == (2, 0, [])


# ---------------------------------------------------------------------------------------------------------
# config and saving
# ---------------------------------------------------------------------------------------------------------
def test_config_round_trip(cache_dir):
    layer = SRAugment(engine="some/hub-id", mode="resynthesize", scale=2, variants=3, p=0.5, output_size=32,
                      on_miss="error", cache_dir=cache_dir, seed=5, steps=7, engine_dtype="bf16", noise_level=30,
                      name="sr")
    config = layer.get_config()
    assert config["output_size"] == [32, 32] and config["noise_level"] == 30 and config["engine_dtype"] == "bf16"
    json.dumps(config)
    clone = SRAugment.from_config(config)
    assert clone.get_config() == config and clone.name == "sr"
    assert clone.core.config() == layer.core.config()
    assert keras.layers.deserialize(keras.layers.serialize(layer)).get_config() == config
    assert pickle.loads(pickle.dumps(layer)).get_config() == config  # Keras pickles through the config
    assert layer.supports_jit is False  # Python per image: a model holding it is never XLA-compiled
    with pytest.raises(TypeError, match="Engine object"):
        SRAugment(engine=CountingEngine(), cache_dir=cache_dir).get_config()


def test_functional_model_output_spec_keeps_dtype(cache_dir):
    inputs = keras.Input((8, 6, 3), dtype="uint8")
    outputs = SRAugment(engine="bicubic", scale=2, cache_dir=cache_dir)(inputs)
    assert tuple(outputs.shape) == (None, 16, 12, 3) and outputs.dtype == "uint8"


def test_model_saves_and_loads(cache_dir, tmp_path):
    model = keras.Sequential([
        keras.Input((8, 8, 3)),
        SRAugment(engine="bicubic", mode="resynthesize", scale=2, cache_dir=cache_dir, seed=1, name="sr"),
        keras.layers.Conv2D(2, 3),
        keras.layers.GlobalAveragePooling2D(),
    ])
    x = _images(2, 8, 8).astype("float32")
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.get_layer("sr"), SRAugment)
    assert loaded.get_layer("sr").get_config() == model.get_layer("sr").get_config()
    for training in (False, True):
        np.testing.assert_allclose(loaded(x, training=training).numpy(), model(x, training=training).numpy())
    assert not np.allclose(model(x, training=True).numpy(), model(x, training=False).numpy())


# ---------------------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad, error, message", [
    (np.zeros((6, 5), np.uint8), ValueError, "3D .* or 4D"),
    (np.zeros((1, 2, 6, 5, 3), np.uint8), ValueError, "3D .* or 4D"),
    (np.zeros((6, 5, 2), np.uint8), ValueError, "3 channels"),
    (np.zeros((6, 5, 3), np.int32), TypeError, "uint8 or float"),
    (np.full((6, 5, 3), np.nan, np.float32), ValueError, "NaN"),
    # beyond what a resize can overshoot (values within 1.5 range widths are clipped, see test_loader_review)
    (np.full((6, 5, 3), 700.0, np.float32), ValueError, r"\[0, 255\]"),
    (np.full((6, 5, 3), -400.0, np.float32), ValueError, r"\[0, 255\]"),
])
def test_bad_input_is_a_clear_error(cache_dir, bad, error, message):
    layer = SRAugment(engine="bicubic", scale=2, cache_dir=cache_dir)
    for value in (tf.constant(bad), bad):  # a TF tensor, and numpy
        with pytest.raises(error, match=message):
            layer(value)


def test_bad_values_in_a_graph_are_a_clear_error(cache_dir):
    layer = SRAugment(engine="bicubic", scale=2, cache_dir=cache_dir)
    nan = tf.data.Dataset.from_tensors(np.full((6, 5, 3), np.nan, np.float32)).map(layer)
    with pytest.raises(tf.errors.OpError, match="NaN"):
        list(nan)
    with pytest.raises(ValueError, match="3 channels"):  # static shape: caught when the map is traced
        tf.data.Dataset.from_tensors(np.zeros((6, 5, 2), np.uint8)).map(layer)


def test_settings_are_validated(cache_dir):
    with pytest.raises(ValueError, match="mode"):
        SRAugment(mode="sideways")
    with pytest.raises(ValueError, match="on_miss"):
        SRAugment(on_miss="ignore")
    with pytest.raises(ValueError, match="p must be"):
        SRAugment(p=1.5)


# ---------------------------------------------------------------------------------------------------------
# TF first, a diffusers engine, model.fit, and no torch in the process
# ---------------------------------------------------------------------------------------------------------
TF_FIRST_SCRIPT = textwrap.dedent("""
    import json, os, sys
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow  # FIRST: importing torch after this would abort the process
    import keras
    import numpy as np
    from sr_augment.keras_layers import SRAugment

    engine_dir, cache_dir = sys.argv[1], sys.argv[2]
    keras.utils.set_random_seed(0)
    augment = SRAugment(engine=engine_dir, mode="resynthesize", steps=1, variants=1, p=1.0, on_miss="generate",
                        cache_dir=cache_dir, seed=0)
    model = keras.Sequential([keras.Input((16, 16, 3)), augment, keras.layers.Rescaling(1 / 255),
                              keras.layers.Conv2D(4, 3), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (8, 16, 16, 3)).astype("float32")
    y = rng.integers(0, 2, 8)
    history = [model.fit(x, y, batch_size=4, epochs=1, verbose=0).history["loss"][0]]
    first = augment.core.cache.stats().as_dict()
    history.append(model.fit(x, y, batch_size=4, epochs=1, verbose=0).history["loss"][0])
    second = augment.core.cache.stats().as_dict()
    print("RESULT " + json.dumps({
        "finished": True, "loss": history, "first": first, "second": second,
        "batches": augment.core.engine.info()["batches"],
        "heavy_modules": sorted(m for m in ("torch", "diffusers", "transformers") if m in sys.modules),
    }))
""")


@pytest.mark.slow
def test_tf_first_process_trains_with_a_diffusers_engine_without_torch(tiny_ldm_dir, tmp_path):
    cache = tmp_path / "cache"
    script = tmp_path / "tf_first.py"
    script.write_text(TF_FIRST_SCRIPT)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(script), str(tiny_ldm_dir), str(cache)], capture_output=True,
                          text=True, timeout=300, env=env, cwd=tmp_path)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    result = json.loads(lines[-1][len("RESULT "):])
    assert result["finished"] and result["heavy_modules"] == []
    assert all(np.isfinite(result["loss"]))
    first, second = result["first"], result["second"]
    assert (first["generated"], first["entries"], first["hits"]) == (8, 8, 0)  # epoch 1: the engine, once each
    assert second["generated"] == first["generated"] and second["entries"] == 8  # epoch 2: nothing generated
    assert second["hits"] - first["hits"] == 8  # ... every image from the cache
    assert sorted(result["batches"]) == [4, 4]  # each training batch's misses: one engine batch
