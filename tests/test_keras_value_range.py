"""`value_range` mistakes of the Keras `SRAugment` are caught (issue "Keys that match the user's loader...", 2).

Float images in [0, 1] fed to a layer with the default `value_range=(0, 255)` would come back as {0, 1}:
the layer warns (`ValueRangeWarning`, once per layer instance) naming the fix. A warning, not an error: a
batch of genuinely dark [0, 255] float images can have a maximum of at most 1. The reverse mistake, [0, 255]
values with `value_range=(0, 1)`, is an error (values outside `value_range` are never clipped). Tested
eagerly and in a tf.data map on the TensorFlow backend, and on the JAX and torch backends in subprocesses
(a backend is chosen once per process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

import sr_augment  # noqa: E402
from sr_augment.errors import SRAugmentWarning, ValueRangeWarning  # noqa: E402
from sr_augment.keras_layers import SRAugment  # noqa: E402

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="needs the TensorFlow backend")
ROOT = Path(__file__).resolve().parents[1]


def _unit_images(n=2, h=6, w=8, seed=0) -> np.ndarray:
    """Float images in [0, 1], as after `Rescaling(1 / 255)`."""
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3)).astype("float32") / 255


def _range_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, ValueRangeWarning)]


def _recording():
    """Record every warning (also those raised in tf.data's threads: the filters are process-wide)."""
    return warnings.catch_warnings(record=True)


def test_the_warning_class_is_public_and_an_sr_augment_warning():
    assert issubclass(ValueRangeWarning, SRAugmentWarning) and issubclass(ValueRangeWarning, UserWarning)
    assert sr_augment.ValueRangeWarning is ValueRangeWarning and "ValueRangeWarning" in sr_augment.__all__


def test_unit_floats_with_the_default_range_warn_once_eagerly_naming_the_fix(cache_dir):
    layer = SRAugment(engine="bicubic", scale=2, cache_dir=cache_dir, name="aug")
    x = _unit_images()
    with _recording() as caught:
        warnings.simplefilter("always")
        outs = [layer(tf.constant(x)).numpy() for _ in range(3)] + [layer(x[0]).numpy()]
    messages = _range_warnings(caught)
    assert len(messages) == 1, messages
    message = messages[0]
    for part in ("'aug'", "value_range=(0, 255)", "value_range=(0, 1)", "Rescaling", "ValueRangeWarning"):
        assert part in message, message
    # a warning, not an error: the batch is still read as [0, 255] (dark images are legal), so {0, 1} comes back
    assert set(np.unique(outs[0])) <= {0.0, 1.0} and outs[0].shape == (2, 12, 16, 3)


def test_unit_floats_in_a_tf_data_map_warn_once(cache_dir):
    layer = SRAugment(engine="bicubic", scale=2, cache_dir=cache_dir)
    ds = tf.data.Dataset.from_tensor_slices(_unit_images(6)).batch(2).map(layer)  # graph mode: numpy_function
    with _recording() as caught:
        warnings.simplefilter("always")
        elements = list(ds) + list(ds)
    assert len(elements) == 6 and elements[0].shape == (2, 12, 16, 3)
    messages = _range_warnings(caught)
    assert len(messages) == 1 and "value_range=(0, 1)" in messages[0], messages


def test_each_layer_instance_warns_once(cache_dir):
    x = _unit_images()
    first, second = (SRAugment(engine="bicubic", scale=2, cache_dir=cache_dir) for _ in range(2))
    with _recording() as caught:
        warnings.simplefilter("default")  # Python's own once-per-message rule must not hide the second layer
        for layer in (first, second, first, second):
            layer(x)
    assert len(_range_warnings(caught)) == 2


def test_warming_unit_floats_with_the_default_range_warns_too(cache_dir):
    layer = SRAugment(engine="bicubic", scale=2, cache_dir=cache_dir)
    with _recording() as caught:
        warnings.simplefilter("always")
        layer.warm(_unit_images(), progress=False)
    assert len(_range_warnings(caught)) == 1


@pytest.mark.parametrize("x, value_range", [
    (_unit_images() * 255, (0, 255)),                      # floats in [0, 255]
    (_unit_images(), (0, 1)),                              # the right range for [0, 1]
    ((_unit_images() * 255).astype("uint8") // 200, (0, 255)),   # dark uint8 images: uint8 means [0, 255]
    (np.zeros((2, 6, 8, 3), "float32"), (0, 255)),         # black: the same result in either reading
    (_unit_images() * 2 - 1, (-1, 1)),                     # another range entirely
])
def test_inputs_that_fit_their_range_do_not_warn(cache_dir, x, value_range):
    layer = SRAugment(engine="bicubic", scale=2, cache_dir=cache_dir, value_range=value_range)
    with _recording() as caught:
        warnings.simplefilter("always")
        layer(x)
        list(tf.data.Dataset.from_tensors(x).map(layer))
    assert _range_warnings(caught) == []


@pytest.mark.parametrize("dtype", ["float32", "uint8"])
def test_the_reverse_0_255_values_with_value_range_0_1_is_an_error_eagerly_and_in_tf_data(cache_dir, dtype):
    layer = SRAugment(engine="bicubic", scale=2, cache_dir=cache_dir, value_range=(0, 1))
    x = (_unit_images() * 255).astype(dtype)
    with pytest.raises(ValueError, match=r"outside value_range=\[0, 1\]"):
        layer(tf.constant(x))
    with pytest.raises(tf.errors.OpError, match=r"outside value_range=\[0, 1\]"):
        list(tf.data.Dataset.from_tensors(x).map(layer))


BACKEND_SCRIPT = """
    import json, sys, warnings
    import keras
    import numpy as np
    from sr_augment.errors import ValueRangeWarning
    from sr_augment.keras_layers import SRAugment

    unit = np.random.default_rng(0).integers(0, 256, (2, 6, 8, 3)).astype("float32") / 255
    result = {"backend": keras.backend.backend()}
    layer = SRAugment(engine="bicubic", scale=2, cache_dir=sys.argv[1])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            out = layer(keras.ops.convert_to_tensor(unit))
        result["eager"] = [str(w.message) for w in caught if issubclass(w.category, ValueRangeWarning)]
    result["shape"] = list(out.shape)
    try:
        SRAugment(engine="bicubic", scale=2, cache_dir=sys.argv[1], value_range=(0, 1))(unit * 255)
        result["reverse"] = None
    except ValueError as exc:
        result["reverse"] = str(exc)
    if sys.argv[2] == "tfdata":  # a fresh layer mapped over tf.data on this backend
        import tensorflow as tf
        mapped = SRAugment(engine="bicubic", scale=2, cache_dir=sys.argv[1])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            list(tf.data.Dataset.from_tensor_slices(unit).batch(1).map(mapped))
            result["tfdata"] = [str(w.message) for w in caught if issubclass(w.category, ValueRangeWarning)]
    print("RESULT " + json.dumps(result))
"""


def _run(script: str, *args, env=None, timeout=240) -> dict:
    """Run `script` in a fresh Python; it prints one line `RESULT <json>`."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
                                                                      **(env or {})})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads(lines[-1][len("RESULT "):])


@pytest.mark.parametrize("backend, module", [("jax", "jax"), ("torch", "torch")])
@pytest.mark.slow  # a fresh interpreter per backend
def test_the_mistakes_are_caught_on_the_jax_and_torch_backends(tmp_path, backend, module):
    if subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True).returncode != 0:
        pytest.skip(f"{module} is not installed: the {backend} backend cannot be tested")
    tfdata = "tfdata" if backend == "jax" else "eager"  # torch after TensorFlow aborts the process: no tf.data there
    result = _run(BACKEND_SCRIPT, tmp_path / "cache", tfdata, env={"KERAS_BACKEND": backend})
    assert result["backend"] == backend and result["shape"] == [2, 12, 16, 3]
    assert len(result["eager"]) == 1 and "value_range=(0, 1)" in result["eager"][0], result["eager"]
    assert result["reverse"] is not None and "outside value_range=[0, 1]" in result["reverse"]
    if tfdata == "tfdata":
        assert len(result["tfdata"]) == 1, result["tfdata"]
