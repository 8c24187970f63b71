"""sr4 presets: fast (one UNet call, the default), fidelity (the earlier default, same cache keys as before
presets), diverse."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import photo
from sr_augment.cli import main
from sr_augment.engines import get_engine
from sr_augment.errors import EngineParameterError
from sr_augment.images import center_crop
from sr_augment.metrics import psnr_y

# The built-in model's fingerprint at its defaults, as it was before presets existed: every cache warmed
# with the default sr4 holds keys made from exactly this string.
FIDELITY_FINGERPRINT = (
    '{"dtype":"float32","engine":"diffusers","eta":0.0,"native_scale":4,"overlap":16,"pipeline":"SR4Pipeline",'
    '"scale":4,"scheduler":"DDIMScheduler","steps":10,"strength":0.5,"tile":256,'
    '"weights":"sr4:3877afa51769d527746dbfe1bcab3ef0"}'
)


def test_fidelity_keeps_the_fingerprint_of_existing_caches_and_no_preset_is_fast():
    assert get_engine("sr4", device="cpu", preset="fidelity").fingerprint == FIDELITY_FINGERPRINT
    default = get_engine("sr4", device="cpu")
    assert default.fingerprint == get_engine("sr4", device="cpu", preset="fast").fingerprint != FIDELITY_FINGERPRINT
    assert (default.steps, default.strength, default.eta) == (1, 1.0, 0.0)


def test_the_other_presets_change_the_fingerprint():
    fingerprints = {name: get_engine("sr4", device="cpu", preset=name).fingerprint
                    for name in ("fidelity", "fast", "diverse")}
    assert len(set(fingerprints.values())) == 3
    fast = get_engine("sr4", device="cpu", preset="fast")
    assert (fast.steps, fast.strength, fast.eta) == (1, 1.0, 0.0)
    diverse = get_engine("sr4", device="cpu", preset="diverse")
    assert diverse.eta > 0


def test_explicit_parameters_override_the_preset():
    engine = get_engine("sr4", device="cpu", preset="fast", steps=3)
    assert (engine.steps, engine.strength) == (3, 1.0)
    engine = get_engine("sr4", device="cpu", preset="diverse", eta=0.0, strength=0.5)
    assert (engine.eta, engine.strength) == (0.0, 0.5)
    assert engine.steps == get_engine("sr4", device="cpu", preset="diverse").steps
    # the preset's values given by hand are the same engine: same pixels, same keys
    assert get_engine("sr4", device="cpu", steps=1, strength=1.0).fingerprint == \
        get_engine("sr4", device="cpu", preset="fast").fingerprint


def test_an_unknown_preset_is_refused_with_the_closest_name():
    with pytest.raises(EngineParameterError, match=r"did you mean 'fast'\?") as info:
        get_engine("sr4", preset="fsat")
    assert "preset" in str(info.value) and "fidelity" in str(info.value) and "diverse" in str(info.value)
    with pytest.raises(EngineParameterError, match="preset"):
        get_engine("sr4", preset=1)
    with pytest.raises(EngineParameterError, match="preset"):  # presets are the built-in model's
        get_engine("dat-light", preset="fast")


def test_the_torch_adapter_takes_a_preset_and_refuses_a_misspelt_one(cache_dir):
    import pickle

    from sr_augment.torch_transforms import SRAugment

    with pytest.raises(EngineParameterError, match=r"did you mean 'diverse'\?"):
        SRAugment(engine="sr4", preset="divers")
    transform = pickle.loads(pickle.dumps(SRAugment(engine="sr4", preset="fast", p=1.0, on_miss="passthrough",
                                                          cache_dir=cache_dir)))
    image = center_crop(photo("coffee"), 32)
    assert transform(image).shape == image.shape  # built, pickled, and run (a passthrough miss: no model)


def test_the_cli_checks_the_preset_before_anything_runs(tmp_path):
    with pytest.raises(SystemExit) as info:
        main(["eval-sr", str(tmp_path), "--engine", "sr4", "--set", "preset=diverce", "--out", str(tmp_path / "o"),
              "--cache-dir", str(tmp_path / "c"), "--no-progress"])
    assert "did you mean 'diverse'?" in str(info.value.code)


def test_checking_a_preset_imports_no_torch():
    code = ("import sys\nfrom sr_augment.engines.registry import REGISTRY\nimport sr_augment.engines\n"
            "REGISTRY.check('sr4', {'preset': 'fast'})\n"
            "try:\n    REGISTRY.check('sr4', {'preset': 'fsat'})\nexcept ValueError:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def _unet_calls(engine, image) -> int:
    calls = []
    handle = engine.pipe.unet.register_forward_hook(lambda *_: calls.append(1))
    try:
        engine.upscale([image], seeds=[0])
    finally:
        handle.remove()
    return len(calls)


def test_fast_the_default_is_one_unet_call_and_fidelity_six():
    image = center_crop(photo("coffee"), 32)
    assert _unet_calls(get_engine("sr4", device="cpu", preset="fast"), image) == 1
    assert _unet_calls(get_engine("sr4", device="cpu"), image) == 1
    assert _unet_calls(get_engine("sr4", device="cpu", preset="fidelity"), image) == 6  # 1 estimate + round(10 * 0.5)


def test_every_preset_beats_bicubic_on_a_real_photo_and_diverse_varies_most():
    """The 128 px centre of scikit-image's coffee photo from 32 px, two variants per preset (measured Y-PSNR:
    bicubic 28.74 dB; fast 30.37 / 30.20, fidelity 30.37 / 30.31, diverse 29.99 / 29.70)."""
    hr = center_crop(photo("coffee"), 128)
    lr = np.asarray(Image.fromarray(hr).resize((32, 32), Image.BICUBIC))
    bicubic = psnr_y(get_engine("bicubic").upscale([lr], seeds=[0])[0], hr, shave=4)
    spread = {}
    for name in ("fast", "fidelity", "diverse"):
        a, b = get_engine("sr4", device="cpu", preset=name).upscale([lr, lr], seeds=[0, 1])
        assert psnr_y(a, hr, shave=4) > bicubic and psnr_y(b, hr, shave=4) > bicubic, name
        spread[name] = np.abs(a.astype(int) - b.astype(int)).mean()
    # measured: 2.34 (fast), 2.43 (fidelity), 3.79 (diverse) grey levels between the two variants
    assert spread["diverse"] > 1.3 * max(spread["fast"], spread["fidelity"]) and spread["fast"] > 0
