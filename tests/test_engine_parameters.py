"""Engine parameters are checked against each engine kind's accepted parameters when an adapter is built,
when `get_engine` is called and when the CLI parses `--set`: a misspelt name ("did you mean"), a wrong type,
a missing required weights file fail there, with the same message, before any model is loaded or torch
imported (not at the first image, as a `ServiceError` wrapping the engine service's traceback)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from sr_augment import EngineParameterError, EngineSpecError, EngineUnavailable
from sr_augment.augment import AugmentCore
from sr_augment.cli import main
from sr_augment.engines import get_engine
from sr_augment.engines.kinds import REGISTRY

ONESTEP_ENV = ("SR_AUGMENT_OSEDIFF_LORA", "SR_AUGMENT_PISA_SR_LORA")


def _message(call, *args, **kwargs) -> str:
    with pytest.raises(EngineParameterError) as info:
        call(*args, **kwargs)
    return str(info.value)


def test_a_misspelt_parameter_fails_at_the_torch_adapter_constructor_with_did_you_mean():
    from sr_augment.torch_transforms import SRAugment

    message = _message(SRAugment, engine="sr4", strenght=0.3)
    assert "'strenght'" in message and "did you mean 'strength'?" in message and "'sr4'" in message
    assert "noise_level" in message  # the accepted ones are listed
    error = pytest.raises(EngineParameterError, SRAugment, engine="sr4", strenght=0.3).value
    assert isinstance(error, EngineSpecError) and isinstance(error, ValueError) and isinstance(error, TypeError)


def test_get_engine_and_the_core_give_the_same_error():
    via_get_engine = _message(get_engine, "sr4", strenght=0.3)
    assert via_get_engine == _message(AugmentCore, engine="sr4", strenght=0.3)
    assert "did you mean 'strength'?" in via_get_engine


def test_the_cli_set_is_checked_before_anything_runs(tmp_path, capsys):
    folder = tmp_path / "empty"
    folder.mkdir()
    base = ["warm", str(folder), "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    with pytest.raises(SystemExit) as info:
        main([*base, "--engine", "sr4", "--set", "strenght=0.3"])
    assert "did you mean 'strength'?" in str(info.value.code) and str(info.value.code).startswith("sr-augment: ")
    with pytest.raises(SystemExit) as info:
        main([*base, "--engine", "sr4", "--set", "noise_level=high"])
    assert "noise_level" in str(info.value.code) and "'high'" in str(info.value.code)
    with pytest.raises(SystemExit) as info:  # --steps is the option; --set steps would collide with it
        main([*base, "--engine", "sr4", "--set", "steps=5"])
    assert "--steps" in str(info.value.code)
    assert not (tmp_path / "cache").exists()  # refused before the cache was opened


def test_the_cli_exits_1_with_the_message_and_no_traceback(tmp_path):
    out = subprocess.run([sys.executable, "-m", "sr_augment", "warm", str(tmp_path), "--engine", "dat-light",
                          "--set", "tiel=64", "--cache-dir", str(tmp_path / "cache")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stderr
    assert "did you mean 'tile'?" in out.stderr and "Traceback" not in out.stderr


def test_the_cli_unknown_engine_lists_every_builtin_name_and_the_closest(tmp_path):
    with pytest.raises(SystemExit) as info:
        main(["warm", str(tmp_path), "--engine", "pisa-rs", "--cache-dir", str(tmp_path / "cache")])
    message = str(info.value.code)
    assert "did you mean 'pisa-sr'?" in message
    for name in ("bicubic", "sr4", "sd-x4-upscaler", "ldm-4x", "dat-light", "osediff", "pisa-sr"):
        assert repr(name) in message, name


@pytest.mark.parametrize("spec", ["osediff", "pisa-sr"])
def test_a_one_step_engine_without_its_lora_fails_at_construction(spec, monkeypatch):
    for name in ONESTEP_ENV:
        monkeypatch.delenv(name, raising=False)
    message = _message(AugmentCore, engine=spec)
    assert "lora=PATH" in message and ("osediff.pkl" if spec == "osediff" else "pisa_sr.pkl") in message
    assert isinstance(pytest.raises(EngineUnavailable, AugmentCore, engine=spec).value, EngineParameterError)


def test_a_one_step_engine_with_its_lora_file_passes_the_check(tmp_path, monkeypatch):
    for name in ONESTEP_ENV:
        monkeypatch.delenv(name, raising=False)
    lora = tmp_path / "osediff.pkl"
    with pytest.raises(EngineParameterError, match="no such file"):
        REGISTRY.check("osediff", {"lora": str(lora)})
    lora.write_bytes(b"not read by the check")
    assert REGISTRY.check("osediff", {"lora": str(lora), "color_fix": "none", "process_size": 0}).id == "onestep"
    assert "pisa-sr only" in _message(REGISTRY.check, "osediff", {"lora": str(lora), "lambda_pix": 1.0})
    assert REGISTRY.check("pisa-sr", {"lora": lora, "lambda_pix": 1.0}).id == "onestep"
    assert "'adain'" in _message(REGISTRY.check, "osediff", {"lora": str(lora), "color_fix": "fancy"})
    monkeypatch.setenv("SR_AUGMENT_OSEDIFF_LORA", str(lora))
    AugmentCore(engine="osediff")  # the environment is the fallback


def test_wrong_types_fail_at_construction():
    message = _message(AugmentCore, engine="sr4", steps="ten")
    assert "steps" in message and "'ten'" in message and "int" in message
    assert "tile" in _message(AugmentCore, engine="sr4", tile=64.5)
    assert "batch_size" in _message(AugmentCore, engine="sd-x4-upscaler", batch_size=True)  # a bool is not a count
    assert "scheduler" in _message(AugmentCore, engine="sr4", scheduler="fancy")
    assert "not a diffusion model" in _message(AugmentCore, engine="dat-light", steps=10)
    assert "engine_dtype" in _message(AugmentCore, engine="sr4", dtype="float16")  # the adapters' own argument


def test_an_overlap_not_below_the_tile_fails_at_construction_saying_so(tmp_path, capsys):
    """The review found `tile=32, overlap=40` refused only when the engine was built, as a bare
    "got 4, 32, 40"; and `tile=8` alone refused for the default overlap (16) it never named."""
    for spec in ("sr4", "dat-light", "realesr-animevideov3"):
        message = _message(AugmentCore, engine=spec, tile=32, overlap=40)
        assert "overlap must be less than tile" in message and "tile=32, overlap=40" in message, message
        assert message == _message(get_engine, spec, tile=32, overlap=40)
    assert "overlap=16 (the default)" in _message(AugmentCore, engine="dat-light", tile=8)
    AugmentCore(engine="dat-light", tile=0, overlap=40)  # tile=0: never tiled, any overlap
    AugmentCore(engine="dat-light", tile=8, overlap=2)
    folder = tmp_path / "empty"
    folder.mkdir()
    with pytest.raises(SystemExit) as info:
        main(["warm", str(folder), "--cache-dir", str(tmp_path / "cache"), "--no-progress", "--engine", "dat-light",
              "--set", "tile=32", "--set", "overlap=32"])
    assert "overlap must be less than tile" in str(info.value.code)
    assert not (tmp_path / "cache").exists()


def test_a_valid_parameter_set_still_builds(tmp_path):
    import numpy as np

    AugmentCore(engine="sr4", steps=5, strength=0.3, eta=0, tile=64, overlap=8, scheduler=None, batch_size=2)
    AugmentCore(engine="sd-x4-upscaler", noise_level=30, prompt="a photo", guidance_scale=1, revision="main")
    AugmentCore(engine="dat-light", tile=0, batch_size=np.int64(2))
    assert get_engine("bicubic", scale=2).scale == 2
    assert "not a diffusion model" in _message(AugmentCore, engine="bicubic", steps=3)  # bicubic refuses steps
    assert "takes no parameter" in _message(get_engine, "bicubic", tile=64)


def test_the_torch_adapter_keeps_its_engine_parameters_through_pickle():
    import pickle

    from sr_augment.torch_transforms import SRAugment

    transform = SRAugment(engine="sd-x4-upscaler", noise_level=30, prompt="a photo", steps=7)
    assert pickle.loads(pickle.dumps(transform)).core.config() == transform.core.config()
    assert transform.core.config()["noise_level"] == 30


def test_a_user_class_is_checked_from_its_signature():
    message = _message(AugmentCore, engine="faults:SlowEngine", dealy=0.1)
    assert "did you mean 'delay'?" in message
    AugmentCore(engine="faults:SlowEngine", delay=0.0, log=None, batch_size=3)  # batch_size: passed when taken


def test_the_check_imports_no_torch(tmp_path):
    code = (
        "import sys\n"
        "from sr_augment.augment import AugmentCore\n"
        "from sr_augment.errors import EngineParameterError\n"
        "AugmentCore(engine='sr4', steps=5, strength=0.3)\n"
        "AugmentCore(engine='dat-light', tile=64)\n"
        "AugmentCore(engine='faults:SlowEngine', delay=0.0)\n"
        "for spec, params in [('sr4', {'strenght': 0.3}), ('osediff', {}), ('sr4', {'steps': 'ten'}),\n"
        "                     ('faults:SlowEngine', {'dealy': 1})]:\n"
        "    try:\n"
        "        AugmentCore(engine=spec, **params)\n"
        "    except EngineParameterError:\n"
        "        pass\n"
        "    else:\n"
        "        raise AssertionError(spec)\n"
        "heavy = [m for m in ('torch', 'diffusers', 'spandrel', 'peft', 'faults') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k not in ONESTEP_ENV}
    env["PYTHONPATH"] = str(__import__("pathlib").Path(__file__).parent)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr


def test_the_scheduler_names_are_the_engines():
    from sr_augment.engines.diffusers_engine import SCHEDULERS
    from sr_augment.engines.kinds.diffusers import SCHEDULER_NAMES

    assert SCHEDULER_NAMES == tuple(SCHEDULERS)


def test_each_described_parameter_is_taken_by_the_engine_constructor():
    import inspect

    from sr_augment.engines.diffusers_engine import DiffusersEngine
    from sr_augment.engines.onestep_engine import OneStepEngine
    from sr_augment.engines.realesrgan_engine import RealESRGANEngine
    from sr_augment.engines.spandrel_engine import SpandrelEngine

    for spec, cls in [("sr4", DiffusersEngine), ("dat-light", SpandrelEngine), ("pisa-sr", OneStepEngine),
                      ("realesrgan", RealESRGANEngine)]:
        taken = set(inspect.signature(cls).parameters) - {"self", "spec", "path", "kind", "scale", "device", "dtype",
                                                          "steps"}  # steps: taken by get_engine (refused by some kinds)
        described = {p.name for p in REGISTRY.kind_of(spec).accepted(spec)} - {"steps"}
        assert described == taken, spec


def test_the_engines_reference_lists_each_engines_parameters():
    import re
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "reference" / "engines.md").read_text()
    rows = [line.split("|")[1:3] for line in page.splitlines() if line.startswith("| `") and line.count("|") == 3]
    table = {re.findall(r"`([^`]+)`", specs)[0]: set(re.findall(r"`([a-z_]+)`", names)) for specs, names in rows}
    for spec in ("sr4", "dat-light", "realesrgan", "osediff", "pisa-sr"):
        documented = table[spec] - {"adain", "none"}  # color_fix's choices
        taken = {p.name for p in REGISTRY.kind_of(spec).accepted(spec) if not (p.note and p.types == (type(None),))}
        assert documented == taken, spec  # (a parameter that is only ever None, with a note, is one refused)
    assert table["bicubic"] == {"steps"} and REGISTRY.kind_of("bicubic").accepted("bicubic") == ()


@pytest.mark.slow  # importing Keras and TensorFlow takes seconds
def test_the_keras_layer_gets_the_same_check():
    pytest.importorskip("tensorflow")
    pytest.importorskip("keras")
    from sr_augment.keras_layers import SRAugment as KerasSRAugment

    assert _message(KerasSRAugment, engine="sr4", strenght=0.3) == _message(get_engine, "sr4", strenght=0.3)
