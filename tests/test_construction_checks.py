"""Mistakes caught at construction: an adapter argument of the wrong type or out of range (`scale`, `variants`,
`p`, `seed`, `device`, `engine_dtype`) and an engine parameter outside its range (`strength`, `steps`, `tile`,
...) are refused when `SRAugment(...)` is built, with an error naming the argument, the value and what is
accepted, before any model is loaded or torch imported; nothing is coerced (`scale=3.5` never runs at x3)."""

from __future__ import annotations

import subprocess
import sys

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
