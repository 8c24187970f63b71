"""Mistakes caught at construction: an adapter argument of the wrong type or out of range (`scale`, `variants`,
`p`, `seed`, `device`, `engine_dtype`) and an engine parameter outside its range (`strength`, `steps`, `tile`,
...) are refused when `SRAugment(...)` is built, with an error naming the argument, the value and what is
accepted, before any model is loaded or torch imported; nothing is coerced (`scale=3.5` never runs at x3)."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest

from sr_augment import AdapterArgumentError, EngineParameterError
from sr_augment.augment import AugmentCore
from sr_augment.cli import main
from sr_augment.engines.kinds import REGISTRY


@pytest.mark.parametrize("kwargs, accepted", [
    ({"scale": 3.5}, "whole number >= 1"),
    ({"scale": True}, "whole number >= 1"),
    ({"scale": "4"}, "whole number >= 1"),
    ({"scale": 0}, "whole number >= 1"),
    ({"variants": "4"}, "whole number >= 1"),
    ({"variants": 2.0}, "whole number >= 1"),
    ({"p": "0.5"}, "number in [0, 1]"),
    ({"p": True}, "number in [0, 1]"),
    ({"p": float("nan")}, "number in [0, 1]"),
    ({"seed": "1"}, "an int or None"),
    ({"device": "gpu"}, "cuda:N"),
    ({"device": "cuda:x"}, "cuda:N"),
    ({"engine_dtype": "fp13"}, "bf16"),
    ({"on_miss": "skip"}, "'passthrough'"),
])
def test_an_adapter_argument_is_refused_at_construction_naming_it(kwargs, accepted, tmp_path):
    with pytest.raises(AdapterArgumentError) as info:
        AugmentCore(engine="bicubic", cache_dir=tmp_path, **kwargs)
    message = str(info.value)
    (name, value), = kwargs.items()
    assert f"{name} must" in message and repr(value) in message and accepted in message, message
    assert isinstance(info.value, ValueError) and isinstance(info.value, TypeError)  # either catch still works


def test_the_torch_adapter_refuses_them_too_and_accepts_what_is_right(tmp_path):
    from sr_augment.torch_transforms import SRAugment

    with pytest.raises(AdapterArgumentError, match=r"scale must .* got 3\.5"):
        SRAugment(engine="bicubic", scale=3.5, cache_dir=tmp_path)
    ok = SRAugment(engine="bicubic", scale=np.int64(2), variants=np.int32(1), p=np.float32(0.5), seed=np.int64(3),
                   cache_dir=tmp_path)
    assert ok.core.scale == 2 and ok.core.p == 0.5
    for device in ("auto", "cpu", "cuda", "cuda:1", "mps"):
        AugmentCore(engine="bicubic", device=device, cache_dir=tmp_path)
    for dtype in ("auto", "fp32", "fp16", "bf16", "float32", "float16", "bfloat16"):
        AugmentCore(engine="bicubic", engine_dtype=dtype, cache_dir=tmp_path)


def test_the_dtypes_refused_at_construction_are_the_ones_the_engines_refuse():
    from sr_augment.engines.registry import DTYPES
    from sr_augment.torch_device import _DTYPES

    assert set(DTYPES) == {"auto", *_DTYPES}


@pytest.mark.parametrize("spec, params, expected", [
    ("sr4", {"strength": 3.0}, "strength must be in (0, 1], got 3.0"),
    ("sr4", {"strength": 0}, "strength must be in (0, 1], got 0"),
    ("sr4", {"steps": -1}, "steps must be >= 1, got -1"),
    ("sr4", {"eta": 1.5}, "eta must be in [0, 1], got 1.5"),
    ("sr4", {"tile": 4}, "tile must be >= 8, got 4"),
    ("sd-x4-upscaler", {"noise_level": 351}, "noise_level must be in [0, 350], got 351"),
    ("sd-x4-upscaler", {"batch_size": 0}, "batch_size must be >= 1, got 0"),
    ("dat-light", {"tile": 4}, "tile must be >= 8 or 0, got 4"),
    ("dat-light", {"overlap": -1}, "overlap must be >= 0, got -1"),
    ("realesrgan", {"batch_size": 0}, "batch_size must be >= 1, got 0"),
])
def test_an_engine_parameter_out_of_range_is_refused_at_construction(spec, params, expected, tmp_path):
    with pytest.raises(EngineParameterError) as info:
        AugmentCore(engine=spec, cache_dir=tmp_path, **params)
    assert str(info.value) == f"engine {spec!r}: {expected}"


def test_values_in_range_pass():
    REGISTRY.check("sr4", {"strength": 1, "steps": 1, "eta": 0, "tile": 8, "overlap": 0})
    REGISTRY.check("sr4", {"strength": None, "tile": None})
    REGISTRY.check("dat-light", {"tile": 0, "batch_size": 1})
    REGISTRY.check("sd-x4-upscaler", {"noise_level": 350, "guidance_scale": 7.5})


def test_the_cli_set_gets_the_same_range_check(tmp_path):
    with pytest.raises(SystemExit) as info:
        main(["warm", str(tmp_path), "--engine", "sr4", "--set", "strength=3", "--cache-dir", str(tmp_path / "c")])
    assert str(info.value.code) == "sr-augment: engine 'sr4': strength must be in (0, 1], got 3"
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("option, value", [("--device", "gpu"), ("--dtype", "fp13")])
def test_the_cli_refuses_a_bad_device_or_dtype_as_a_usage_error(option, value, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["warm", str(tmp_path), "--engine", "dat-light", option, value, "--cache-dir", str(tmp_path / "c")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}" in err and repr(value) in err and "Traceback" not in err


def test_the_checks_import_no_torch():
    code = (
        "import sys\n"
        "from sr_augment.augment import AugmentCore\n"
        "from sr_augment.errors import SRAugmentError\n"
        "for kwargs in [dict(engine='sr4', strength=3.0), dict(engine='sr4', device='gpu'),\n"
        "               dict(engine='sr4', scale=3.5), dict(engine='dat-light', tile=4)]:\n"
        "    try:\n"
        "        AugmentCore(**kwargs)\n"
        "    except SRAugmentError:\n"
        "        pass\n"
        "    else:\n"
        "        raise AssertionError(kwargs)\n"
        "assert 'torch' not in sys.modules\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def _documented_range(parameter) -> str:
    """How the engines reference writes a parameter's range, after its name: "(>= 1", "(0 to 1", ..."""
    if parameter.low is not None and parameter.high is not None:
        text = f"above {parameter.low}, at most {parameter.high}" if parameter.low_open else \
            f"{parameter.low} to {parameter.high}"
    else:
        text = f">= {parameter.low}"
    return f"`{parameter.name}` ({text}" + "".join(f", or {v}" for v in parameter.also)


def test_the_engines_reference_gives_each_declared_range():
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "reference" / "engines.md").read_text()
    rows = {line.split("|")[1].split("`")[1]: line for line in page.splitlines()
            if line.startswith("| `") and line.count("|") == 3}
    for spec in ("sr4", "dat-light", "realesrgan", "osediff", "pisa-sr"):
        ranged = [p for p in REGISTRY.kind_of(spec).accepted(spec) if p.low is not None or p.high is not None]
        assert ranged, spec
        for parameter in ranged:
            assert _documented_range(parameter) in rows[spec], (spec, parameter.name)


# --- a model run at another scale than its own is said where the user is ---------------------------------

@pytest.fixture(scope="module")
def x2_checkpoint(tmp_path_factory):
    """A tiny ESRGAN x2 with seeded random weights, saved as users get one (torch.save of a state dict)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("spandrel")
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("models") / "tiny-x2.pth"
    torch.save(ESRGAN(num_filters=8, num_blocks=1, scale=2).state_dict(), path)
    return path


def _scale_warnings(caught) -> list:
    from sr_augment import ModelScaleWarning

    return [w for w in caught if issubclass(w.category, ModelScaleWarning)]


@pytest.mark.slow  # starts the engine service (a process importing torch)
def test_the_adapter_says_the_models_scale_in_the_process_that_uses_it(x2_checkpoint, tmp_path):
    """The engine service's own warning goes to its log; the adapter's process says it too, once, at the
    user's line, from the identity (whose fingerprint names the model's own factor)."""
    from PIL import Image

    from sr_augment.torch_transforms import SRAugment

    transform = SRAugment(engine=x2_checkpoint, scale=4, device="cpu", cache_dir=tmp_path / "cache")
    image = Image.fromarray(np.zeros((8, 8, 3), np.uint8))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert transform(image).size == (32, 32)
        assert transform(image).size == (32, 32)
    said = _scale_warnings(caught)
    assert len(said) == 1, [str(w.message) for w in caught]
    assert "tiny-x2.pth is a x2 model" in str(said[0].message) and "scale=4" in str(said[0].message)
    assert said[0].filename == __file__  # this line, not one inside sr-augment


def test_the_command_lines_warning_shows_no_line_of_the_library(x2_checkpoint, tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["warm", str(folder), "--engine", str(x2_checkpoint), "--scale", "4", "--device", "cpu",
                     "--cache-dir", str(tmp_path / "cache"), "--no-progress"]) == 0
    said = _scale_warnings(caught)
    assert len(said) == 1 and said[0].filename == __file__
    shown = warnings.formatwarning(said[0].message, said[0].category, said[0].filename, said[0].lineno)
    assert "kind.build" not in shown and "sr_augment" not in shown


def test_the_identity_says_the_models_own_scale_without_loading_it():
    from sr_augment.engines.base import make_fingerprint
    from sr_augment.engines.kinds.spandrel import identity_scale_message

    fingerprint = make_fingerprint(engine="spandrel", architecture="ESRGAN", scale=4, native_scale=2)
    message = identity_scale_message({"name": "x2.pth", "scale": 4, "fingerprint": fingerprint})
    assert message.startswith("x2.pth is a x2 model (ESRGAN); with scale=4")
    assert identity_scale_message({"name": "x2.pth", "scale": 2, "fingerprint": fingerprint.replace(":4", ":2")}) is None
    sr4 = make_fingerprint(engine="diffusers", scale=2, native_scale=4)  # sr4 at x2: its own way, no warning
    assert identity_scale_message({"name": "sr4", "scale": 2, "fingerprint": sr4}) is None
    assert identity_scale_message({"name": "x", "scale": 4, "fingerprint": "not json"}) is None


# --- a missing checkpoint with on_miss="generate" -------------------------------------------------------

def test_a_missing_checkpoint_with_generate_says_what_is_missing_and_what_a_cache_only_node_needs(tmp_path):
    from sr_augment import EngineSpecError

    spec = str(tmp_path / "models" / "x4.pth")  # not there
    with pytest.raises(EngineSpecError) as info:
        AugmentCore(engine=spec, cache_dir=tmp_path / "cache", on_miss="generate")
    message = str(info.value)
    assert message.startswith(f"{spec}: no such file: its weights are missing") and "on_miss='generate'" in message
    assert "on_miss='error' or 'passthrough'" in message and "identity" in message
    assert f"the cache {tmp_path / 'cache'} holds none" in message
    assert "An engine is one of" not in message  # the spec is a checkpoint: no list of every engine
    assert not (tmp_path / "cache").exists()  # looking wrote nothing


def test_the_refusal_says_when_the_cache_holds_the_engines_identity(x2_checkpoint, tmp_path):
    import shutil

    from PIL import Image

    from sr_augment import EngineSpecError

    (tmp_path / "data").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "data" / "0.png")
    spec = str(shutil.copy(x2_checkpoint, tmp_path / "x2.pth"))
    cache = tmp_path / "cache"
    assert main(["warm", str(tmp_path / "data"), "--engine", spec, "--device", "cpu", "--cache-dir", str(cache),
                 "--no-progress"]) == 0
    (tmp_path / "x2.pth").unlink()
    with pytest.raises(EngineSpecError, match=rf"the cache {cache} holds it$"):
        AugmentCore(engine=spec, device="cpu", cache_dir=cache, on_miss="generate")
    AugmentCore(engine=spec, device="cpu", cache_dir=cache, on_miss="error")  # what the message advises works
