"""Keras 3 conventions of the Keras `SRAugment`: `value_range`, dict inputs (labels, bounding boxes,
segmentation masks, compared with `keras.layers.Resizing`), seeding through `keras.utils.set_random_seed`,
`CacheMiss` through tf.data, inference in upscale mode, Keras' own `run_layer_test`, and the JAX and
torch backends (in subprocesses: a backend is chosen once per process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from keras.src import testing  # noqa: E402  (Keras' own layer test harness)

from fakes import CountingEngine  # noqa: E402
from sr_augment.cache import SRCache  # noqa: E402
from sr_augment.engines import BicubicEngine  # noqa: E402
from sr_augment.keras_layers import SRAugment  # noqa: E402

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="needs the TensorFlow backend")
ROOT = Path(__file__).resolve().parents[1]


def _images(n=3, h=6, w=8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def _upscaled(images, scale=2):
    return np.stack([np.asarray(Image.fromarray(i).resize((i.shape[1] * scale, i.shape[0] * scale), Image.BICUBIC))
                     for i in images])


def _run(script: str, *args, env=None, timeout=240) -> dict:
    """Run `script` in a fresh Python; it prints one line `RESULT <json>`."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
                                                                      **(env or {})})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads(lines[-1][len("RESULT "):])


def _run_parallel(*runs) -> list[dict]:
    """`_run(script, *args)` for each `(script, args)` at once (each one imports TensorFlow: seconds)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(runs)) as pool:
        return list(pool.map(lambda run: _run(run[0], *run[1]), runs))


# ---------------------------------------------------------------------------------------------------------
# value_range
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["upscale", "resynthesize"])
def test_a_float_image_in_0_1_with_value_range_0_1_gives_the_uint8_result_scaled(cache_dir, mode):
    images = _images()
    uint8_out = SRAugment(engine="bicubic", mode=mode, scale=2, cache_dir=cache_dir)(images).numpy()
    unit = SRAugment(engine="bicubic", mode=mode, scale=2, cache_dir=cache_dir, value_range=(0, 1))
    x = images.astype("float32") / 255
    for out in (unit(tf.constant(x)), next(iter(tf.data.Dataset.from_tensors(x).map(unit)))):
        assert out.dtype == tf.float32 and out.numpy().min() >= 0 and out.numpy().max() <= 1
        np.testing.assert_allclose(out.numpy(), uint8_out / 255, atol=1e-6)
    assert len(SRCache(cache_dir)) == len(images)  # the same keys: the same pixels reached the cache


def test_float_rounding_just_past_the_range_is_accepted(cache_dir):
    x = _images(1).astype("float32") / 255
    x[0, 0, 0, 0] = 1.0000005
    out = SRAugment(engine="bicubic", scale=2, cache_dir=cache_dir, value_range=(0, 1))(x).numpy()
    assert out.shape == (1, 12, 16, 3) and out.max() <= 1


def test_input_of_0_255_with_value_range_0_1_is_a_clear_error(cache_dir):
    layer = SRAugment(engine="bicubic", scale=2, cache_dir=cache_dir, value_range=(0, 1))
    x = _images(1).astype("float32")
    with pytest.raises(ValueError, match=r"outside value_range=\[0, 1\]"):
        layer(tf.constant(x))
    with pytest.raises(tf.errors.OpError, match="value_range"):
        list(tf.data.Dataset.from_tensors(x).map(layer))
    assert len(SRCache(cache_dir)) == 0
    with pytest.raises(ValueError, match="value_range"):
        SRAugment(value_range=(1, 0))


def test_value_range_survives_get_config():
    layer = SRAugment(engine="bicubic", value_range=(-1, 1), bounding_box_format="rel_xyxy")
    clone = SRAugment.from_config(layer.get_config())
    assert clone.value_range == (-1, 1) and clone.bounding_box_format == "rel_xyxy"


# ---------------------------------------------------------------------------------------------------------
# dict inputs
# ---------------------------------------------------------------------------------------------------------
def _data(n=2, h=6, w=8):
    rng = np.random.default_rng(1)
    boxes = np.array([[[1, 1, 4, 5], [0, 0, 8, 6]], [[2, 1, 3, 2], [5, 3, 7, 5]]], np.float32)[:n]
    return {"images": _images(n, h, w), "labels": np.arange(n),
            "bounding_boxes": {"boxes": boxes, "labels": np.array([[0, 1], [2, 3]], np.int32)[:n]},
            "segmentation_masks": rng.integers(0, 3, (n, h, w, 1), dtype=np.uint8)}


def _resizing(data, size, box_format):
    """What keras.layers.Resizing does to boxes and masks for the same output size."""
    resizer = keras.layers.Resizing(*size, interpolation="nearest", bounding_box_format=box_format)
    return resizer({"images": data["images"], "bounding_boxes": dict(data["bounding_boxes"]),
                    "segmentation_masks": data["segmentation_masks"]})


def _rel(data, h, w):
    boxes = data["bounding_boxes"]["boxes"] / np.array([w, h, w, h], np.float32)
    return {**data, "bounding_boxes": {**data["bounding_boxes"], "boxes": boxes}}


@pytest.mark.parametrize("box_format", ["xyxy", "rel_xyxy", "xywh"])
@pytest.mark.parametrize("settings", [dict(mode="upscale"), dict(mode="resynthesize", output_size=(9, 5))],
                         ids=["upscale", "output-size"])
def test_boxes_and_masks_follow_as_keras_resizing_moves_them_and_labels_pass(cache_dir, box_format, settings):
    data = _rel(_data(), 6, 8) if box_format.startswith("rel") else _data()
    layer = SRAugment(engine="bicubic", scale=2, cache_dir=cache_dir, bounding_box_format=box_format, **settings)
    size = settings.get("output_size") or (12, 16)
    expected = _resizing(data, size, box_format)
    images = layer(data["images"]).numpy()
    batched = tf.data.Dataset.from_tensors(data).map(layer)
    single = tf.data.Dataset.from_tensor_slices(data).map(layer).batch(2)
    for out in (layer(dict(data)), next(iter(batched)), next(iter(single))):
        np.testing.assert_array_equal(np.asarray(out["images"]), images)
        np.testing.assert_array_equal(np.asarray(out["labels"]), data["labels"])
        np.testing.assert_allclose(np.asarray(out["bounding_boxes"]["boxes"]), expected["bounding_boxes"]["boxes"])
        np.testing.assert_array_equal(np.asarray(out["bounding_boxes"]["labels"]), data["bounding_boxes"]["labels"])
        assert np.asarray(out["bounding_boxes"]["labels"]).dtype == np.int32
        masks = np.asarray(out["segmentation_masks"])
        assert masks.dtype == np.uint8 and masks.shape == (2, *size, 1)
        np.testing.assert_array_equal(masks, np.asarray(expected["segmentation_masks"]))
    # scale 2, no clipping: every coordinate doubled (or kept, relative)
    if settings["mode"] == "upscale" and box_format != "xywh":
        factor = 1 if box_format.startswith("rel") else 2
        np.testing.assert_allclose(expected["bounding_boxes"]["boxes"], data["bounding_boxes"]["boxes"] * factor)


def test_resynthesize_without_output_size_leaves_boxes_masks_and_labels_untouched(cache_dir):
    data = _data()
    layer = SRAugment(engine="bicubic", mode="resynthesize", scale=2, cache_dir=cache_dir)  # no box format needed
    out = layer(dict(data))
    np.testing.assert_array_equal(out["images"].numpy(), layer(data["images"]).numpy())
    assert not np.array_equal(out["images"].numpy(), data["images"])  # the images did change
    for key in ("labels", "bounding_boxes", "segmentation_masks"):
        assert out[key] is data[key]
    graph = next(iter(tf.data.Dataset.from_tensors(data).map(layer)))
    np.testing.assert_array_equal(graph["segmentation_masks"].numpy(), data["segmentation_masks"])
    np.testing.assert_array_equal(graph["bounding_boxes"]["boxes"].numpy(), data["bounding_boxes"]["boxes"])


def test_boxes_that_must_be_scaled_need_a_bounding_box_format(cache_dir):
    layer = SRAugment(engine="bicubic", scale=2, cache_dir=cache_dir)
    with pytest.raises(ValueError, match="bounding_box_format"):
        layer(_data())
    with pytest.raises(ValueError, match="'images' entry"):
        layer({"pictures": _images()})


def test_a_functional_model_takes_the_dict_convention(cache_dir):
    inputs = {"images": keras.Input((6, 8, 3), dtype="uint8"), "segmentation_masks": keras.Input((6, 8, 1))}
    outputs = SRAugment(engine="bicubic", scale=2, cache_dir=cache_dir)(inputs)
    assert tuple(outputs["images"].shape) == (None, 12, 16, 3) and outputs["images"].dtype == "uint8"
    assert tuple(outputs["segmentation_masks"].shape) == (None, 12, 16, 1)


# ---------------------------------------------------------------------------------------------------------
# seeding, CacheMiss in tf.data, inference in upscale mode
# ---------------------------------------------------------------------------------------------------------
SEEDED_SCRIPT = """
    import json, sys
    import tensorflow as tf
    import keras
    import numpy as np
    from sr_augment.keras_layers import SRAugment

    images = np.random.default_rng(0).integers(0, 256, (32, 4, 4, 3), dtype=np.uint8)
    changed = lambda out: [int(not np.array_equal(o, i)) for o, i in zip(out, images)]
    result = {}
    for global_seed in (1, 2):
        keras.utils.set_random_seed(global_seed)
        layer = SRAugment(engine="bicubic", mode="resynthesize", scale=2, p=0.5, cache_dir=sys.argv[1])  # seed=None
        eager = layer(images).numpy()
        graph = np.concatenate([b.numpy() for b in tf.data.Dataset.from_tensor_slices(images).batch(8).map(layer)])
        result[global_seed] = {"eager": changed(eager), "graph": changed(graph)}
    print("RESULT " + json.dumps(result))
"""


@pytest.mark.slow  # fresh interpreters
def test_set_random_seed_repeats_the_draws_of_an_unseeded_layer_across_processes(tmp_path):
    first, again = _run_parallel((SEEDED_SCRIPT, [tmp_path / "a"]), (SEEDED_SCRIPT, [tmp_path / "b"]))
    assert first == again
    assert first["1"] != first["2"]
    one = first["1"]
    assert 4 <= sum(one["eager"]) <= 28 and one["eager"] != one["graph"]  # p=0.5, a new draw per batch


def test_on_miss_error_in_tf_data_is_an_unknown_error_carrying_the_key_and_the_hint(cache_dir):
    images = _images(1)
    layer = SRAugment(engine="bicubic", scale=2, on_miss="error", cache_dir=cache_dir)
    key = SRCache(cache_dir).key(images[0], BicubicEngine(2), "upscale", 0)
    with pytest.raises(tf.errors.UnknownError) as caught:
        list(tf.data.Dataset.from_tensor_slices(images).map(layer))
    assert "CacheMiss" in caught.value.message and key in caught.value.message
    assert "warm the cache first" in caught.value.message


@pytest.mark.slow  # trains a model
def test_a_model_with_an_upscale_layer_trains_with_fit_and_predicts(cache_dir):
    engine = CountingEngine()
    augment = SRAugment(engine=engine, mode="upscale", scale=2, cache_dir=cache_dir, name="sr")
    model = keras.Sequential([keras.Input((6, 8, 3)), augment, keras.layers.Rescaling(1 / 255),
                              keras.layers.Conv2D(4, 3), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(2, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")
    x, y = _images(8).astype("float32"), np.arange(8) % 2
    history = model.fit(x, y, epochs=2, batch_size=4, verbose=0)
    assert np.all(np.isfinite(history.history["loss"])) and sum(engine.calls) == 8  # fit: the engine, once each
    assert model.predict(x, verbose=0).shape == (8, 2)
    assert sum(engine.calls) == 8  # predict: bicubic, no engine
    head = keras.Model(model.inputs, model.get_layer("sr").output)
    np.testing.assert_array_equal(head.predict(x, verbose=0), _upscaled(_images(8)).astype("float32"))


# ---------------------------------------------------------------------------------------------------------
# Keras' own layer test, and the JAX and torch backends
# ---------------------------------------------------------------------------------------------------------
class TestKerasOwnLayerTest(testing.TestCase):
    def test_run_layer_test_accepts_the_layer_in_both_modes(self):
        import tempfile

        with tempfile.TemporaryDirectory() as folder:
            for mode, out_hw in (("resynthesize", (8, 6)), ("upscale", (16, 12))):
                self.run_layer_test(SRAugment, init_kwargs=dict(engine="bicubic", mode=mode, scale=2, seed=1,
                                                                cache_dir=folder),
                                    input_shape=(2, 8, 6, 3), expected_output_shape=(2, *out_hw, 3),
                                    expected_num_trainable_weights=0, expected_num_non_trainable_weights=0,
                                    expected_num_seed_generators=1, supports_masking=False,
                                    run_training_check=False, run_mixed_precision_check=False)


BACKEND_SCRIPT = """
    import json, sys, warnings
    import keras
    import numpy as np
    from sr_augment.keras_layers import SRAugment

    images = np.random.default_rng(0).integers(0, 256, (2, 6, 8, 3), dtype=np.uint8)
    result = {"backend": keras.backend.backend()}
    layer = SRAugment(engine="bicubic", scale=2, p=1.0, seed=3, cache_dir=sys.argv[1], bounding_box_format="xyxy")
    for dtype in ("uint8", "float32"):
        out = layer(keras.ops.convert_to_tensor(images.astype(dtype)))
        result[dtype] = [type(out).__module__.split(".")[0], keras.backend.standardize_dtype(out.dtype),
                         list(out.shape), keras.ops.convert_to_numpy(out).astype("uint8").tolist()]
    result["inference"] = keras.ops.convert_to_numpy(layer(images, training=False)).tolist()
    masks = np.arange(96, dtype="int32").reshape(2, 6, 8, 1) % 3
    out = layer({"images": images, "segmentation_masks": masks})
    result["masks"] = list(keras.ops.convert_to_numpy(out["segmentation_masks"]).shape)
    with warnings.catch_warnings():  # bicubic with variants=4 warns: only the draws matter here
        warnings.simplefilter("ignore")
        result["draws"] = SRAugment(engine="bicubic", p=0.5, variants=4, seed=3)._draw_params(8)
    if sys.argv[2] == "tfdata":  # the layer mapped over tf.data on this backend
        import tensorflow as tf
        ds = tf.data.Dataset.from_tensors({"images": images, "segmentation_masks": masks}).map(layer)
        element = next(iter(ds))
        result["tfdata"] = [element["images"].numpy().tolist(), list(element["segmentation_masks"].shape)]
    print("RESULT " + json.dumps(result))
"""


@pytest.mark.parametrize("backend, module", [("jax", "jax"), ("torch", "torch")])
@pytest.mark.slow  # fresh interpreters
def test_the_layer_runs_eagerly_on_the_jax_and_torch_backends(tmp_path, backend, module):
    if subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True).returncode != 0:
        pytest.skip(f"{module} is not installed: the {backend} backend cannot be tested (pip install 'jax[cpu]')")
    tfdata = "tfdata" if backend == "jax" else "eager"  # torch after TensorFlow aborts the process: no tf.data there
    result = _run(BACKEND_SCRIPT, tmp_path / "cache", tfdata, env={"KERAS_BACKEND": backend})
    expected = _upscaled(_images(2)).tolist()
    assert result["backend"] == backend
    for dtype in ("uint8", "float32"):  # a tensor of the backend (jax: jaxlib's array), the input's dtype
        assert result[dtype][0].startswith(module) and result[dtype][1:] == [dtype, [2, 12, 16, 3], expected]
    assert result["inference"] == expected and result["masks"] == [2, 12, 16, 1]
    assert result["draws"] == SRAugment(engine=CountingEngine(), p=0.5, variants=4, seed=3)._draw_params(8)  # as TF
    if tfdata == "tfdata":
        assert result["tfdata"] == [expected, [2, 12, 16, 1]]
