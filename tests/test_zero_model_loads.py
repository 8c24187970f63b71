"""A warm cache costs no model load: an engine's fingerprint comes from its settings and its weights'
identity (the pipeline's JSON configs and file hashes), and the weights load on the first real call."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("diffusers")

from diffusers import DiffusionPipeline  # noqa: E402

from sr_augment.cli import main  # noqa: E402
from sr_augment.engines import get_engine  # noqa: E402
from sr_augment.sr4.pipeline import SR4Pipeline  # noqa: E402


def _forbid_model_loads(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(DiffusionPipeline, "from_pretrained", refuse)
    monkeypatch.setattr(SR4Pipeline, "from_pretrained", refuse)


@pytest.mark.parametrize("fixture", ["tiny_ldm_dir", "tiny_sd_dir", None])
def test_an_engine_knows_its_fingerprint_before_loading_and_it_matches_the_loaded_pipeline(request, fixture, monkeypatch, rng):
    spec = "sr4" if fixture is None else str(request.getfixturevalue(fixture))
    with monkeypatch.context() as patch:
        _forbid_model_loads(patch)
        engine = get_engine(spec, steps=2)
        fingerprint = json.loads(engine.fingerprint)
    # what the fingerprint says from the configs is what the loaded pipeline is
    assert fingerprint["scheduler"] == type(engine.pipe.scheduler).__name__
    assert engine.multiple == max(8, 2 ** (len(engine.pipe.unet.config.block_out_channels) - 1))
    out = engine.upscale([rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)], [0])[0]
    assert out.shape == (8 * engine.native_scale, 8 * engine.native_scale, 3)
    assert engine.fingerprint == json.dumps(fingerprint, sort_keys=True, separators=(",", ":"))


def test_a_repeat_warm_on_a_full_cache_loads_no_model(tiny_ldm_dir, tmp_path, monkeypatch, rng, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(photos / f"{i}.png")
    args = ["warm", str(photos), "--engine", str(tiny_ldm_dir), "--steps", "1", "--variants", "2",
            "--cache-dir", str(tmp_path / "cache"), "--json", "--no-progress"]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert first["generated"] == 6
    _forbid_model_loads(monkeypatch)
    assert main(args) == 0
    second = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert second["generated"] == 0 and second["cached"] == 6
