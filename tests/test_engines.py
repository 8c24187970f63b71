"""Engines: the registry, bicubic, and real diffusers pipelines loaded with `from_pretrained`.

The diffusers pipelines are tiny, randomly initialised, built from configs and saved to a temp dir
(tests/tiny_pipelines.py), then loaded through `get_engine(path)`: the code path users run.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from sr_augment import EngineUnavailable, get_engine
from sr_augment.engines import BicubicEngine

pytest.importorskip("diffusers")


def _lr(rng, height=24, width=32):
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_bicubic_scales_and_matches_pillow(rng):
    from PIL import Image

    image = _lr(rng)
    out = get_engine("bicubic", scale=3).upscale([image], [0])[0]
    expected = np.asarray(Image.fromarray(image).resize((96, 72), Image.BICUBIC))
    assert out.shape == (72, 96, 3) and np.array_equal(out, expected)


def test_registry_rejects_bad_specs(tmp_path):
    with pytest.raises(EngineUnavailable, match="Unknown engine 'no such engine'"):
        get_engine("no such engine")
    with pytest.raises(EngineUnavailable, match="no model_index.json"):
        get_engine(tmp_path)
    with pytest.raises(TypeError, match="Engine object"):
        get_engine(42)
    engine = BicubicEngine(2)
    assert get_engine(engine) is engine


@pytest.mark.parametrize("fixture", ["tiny_sd_dir", "tiny_ldm_dir"])
@pytest.mark.slow  # tiny diffusion pipelines
def test_diffusers_engine_scale_seed_and_variants(request, fixture, rng):
    engine = get_engine(request.getfixturevalue(fixture), steps=2)
    assert engine.scale == 4 and engine.dtype == "float32" and engine.device == "cpu"
    images = [_lr(rng, 24, 32), _lr(rng, 20, 20)]
    first = engine.upscale(images, seeds=[1, 2])
    assert [o.shape for o in first] == [(96, 128, 3), (80, 80, 3)]
    assert all(o.dtype == np.uint8 for o in first)
    again = engine.upscale(images[:1], seeds=[1])[0]  # same (image, seed), different batch
    assert np.abs(again.astype(int) - first[0].astype(int)).max() <= 1
    other = engine.upscale(images[:1], seeds=[3])[0]
    assert np.abs(other.astype(int) - first[0].astype(int)).mean() > 1.0


def test_sd_engine_keeps_vae_fp32_and_disables_safety(tiny_sd_dir):
    import torch

    engine = get_engine(tiny_sd_dir, steps=1, dtype="bf16")
    assert engine.pipe.unet.dtype == torch.bfloat16
    assert engine.pipe.vae.dtype == torch.float32
    assert engine.pipe.safety_checker is None and engine.pipe.watermarker is None


def test_fingerprint_tracks_every_generation_setting(tiny_sd_dir):
    base = get_engine(tiny_sd_dir, steps=2)
    assert get_engine(tiny_sd_dir, steps=2).fingerprint == base.fingerprint
    for changed in [dict(steps=3), dict(prompt="a photo"), dict(dtype="bf16"), dict(noise_level=30),
                    dict(scheduler="ddim"), dict(guidance_scale=4.0)]:
        params = {"steps": 2, **changed}
        assert get_engine(tiny_sd_dir, **params).fingerprint != base.fingerprint, changed


def test_weights_identity_changes_with_the_files(tiny_ldm_dir, tmp_path):
    import shutil

    copy = tmp_path / "ldm-copy"
    shutil.copytree(tiny_ldm_dir, copy)
    same = get_engine(copy, steps=2).fingerprint
    assert same == get_engine(tiny_ldm_dir, steps=2).fingerprint  # content, not path
    weights = next(copy.glob("unet/*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert get_engine(copy, steps=2).fingerprint != same


@pytest.mark.slow  # tiny diffusion pipelines
def test_ldm_eta_noise_is_per_image(tiny_ldm_dir, rng):
    """diffusers' LDM pipeline draws eta noise from the global RNG; ours is seeded per image."""
    import torch

    engine = get_engine(tiny_ldm_dir, steps=3, eta=1.0)
    image = _lr(rng, 16, 16)
    torch.manual_seed(0)
    a = engine.upscale([image, _lr(rng, 16, 16)], seeds=[5, 6])[0]
    torch.manual_seed(123)
    b = engine.upscale([image], seeds=[5])[0]
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_large_inputs_are_tiled_without_seams(rng):
    """Tiled bicubic (a translation-equivariant upscaler) must match whole-image bicubic everywhere.

    Each tile's own borders are wrong (bicubic sees padding there); feathered blending keeps those
    errors out of the result, where a hard cut would leave a visible seam.
    """
    from PIL import Image

    from sr_augment.engines.tiling import upscale_tiled
    from sr_augment.images import bicubic_resize

    small = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
    image = np.asarray(Image.fromarray(small).resize((72, 60), Image.BICUBIC))  # smooth 60x72 photo-like
    whole = bicubic_resize(image, 4).astype(int)
    calls = []

    def run(batch, seeds):
        calls.append(len(batch))
        return [bicubic_resize(b, 4) for b in batch]

    tiled = upscale_tiled([image], [0], run, scale=4, tile=24, overlap=8, multiple=8, batch_size=3)[0].astype(int)
    hard = upscale_tiled([image], [0], run, scale=4, tile=24, overlap=0, multiple=8, batch_size=3)[0].astype(int)
    assert tiled.shape == whole.shape == (240, 288, 3)
    assert sum(calls) > 2 and max(calls) <= 3  # really tiled, and batched
    blended_error = np.abs(tiled - whole).max()
    hard_error = np.abs(hard - whole).max()
    assert blended_error <= 3 < hard_error, (blended_error, hard_error)


def test_tile_context_gives_a_wide_receptive_field_the_whole_image_s_neighbourhood(rng):
    """A "model" that sees 4 px around each pixel (a 9x9 box mean, mirrored at its input's edges): tiles run
    without context see a mirror where the image goes on, so they differ near tile edges even after
    blending; with 4 px of context every kept pixel sees what it sees in the whole image."""
    from scipy.ndimage import uniform_filter

    from sr_augment.engines.tiling import upscale_tiled

    image = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)

    def run(batch, seeds):
        return [np.repeat(np.repeat(uniform_filter(b.astype(np.float32), size=(9, 9, 1), mode="mirror"), 2, 0), 2, 1)
                for b in batch]

    whole = np.clip(np.rint(run([image], [0])[0]), 0, 255).astype(int)
    settings = dict(scale=2, tile=16, overlap=4, multiple=1, batch_size=4)
    without = upscale_tiled([image], [0], run, **settings)[0].astype(int)
    with_context = upscale_tiled([image], [0], run, context=4, **settings)[0].astype(int)
    assert with_context.shape == whole.shape == (100, 140, 3)
    assert np.abs(with_context - whole).max() <= 1 < np.abs(without - whole).max()


def test_diffusers_engine_tiles_large_inputs(tiny_ldm_dir, rng):
    engine = get_engine(tiny_ldm_dir, steps=1, tile=16, overlap=4, batch_size=2)
    calls = []
    run = engine._run
    engine._run = lambda batch, seeds: calls.append(len(batch)) or run(batch, seeds)
    out = engine.upscale([_lr(rng, 40, 24)], [0])[0]
    assert out.shape == (160, 96, 3) and len(calls) >= 3


def test_tiling_blends_overlaps_exactly():
    from sr_augment.engines.tiling import Stitcher, plan_tiles

    tiles = plan_tiles(50, 37, tile=16, overlap=4)
    covered = np.zeros((50, 37), int)
    for t in tiles:
        covered[t.top:t.top + t.height, t.left:t.left + t.width] += 1
    assert covered.min() >= 1
    stitcher = Stitcher(50, 37, scale=2, overlap=4)
    constant = np.full((32, 32, 3), 77, np.uint8)
    for t in tiles:
        stitcher.add(t, constant)
    assert np.all(stitcher.result() == 77)  # weights normalise: overlaps never brighten or darken


@pytest.mark.slow  # a fresh interpreter
def test_missing_weights_offline_give_one_plain_paragraph(tmp_path):
    """No weights and no hub: a short message naming the model and how to provide it, no traceback."""
    code = (
        "from sr_augment import get_engine\n"
        "try:\n    get_engine('sd-x4-upscaler')\n"
        "except Exception as exc:\n    print(type(exc).__name__); print(exc)\n"
    )
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    lines = out.stdout.strip().splitlines()
    assert lines[0] == "EngineUnavailable", out.stdout + out.stderr
    message = "\n".join(lines[1:])
    assert "stabilityai/stable-diffusion-x4-upscaler" in message
    assert "huggingface-cli download" in message and "save_pretrained" in message
    assert "Traceback" not in out.stderr


def test_diffusion_engine_without_diffusers_says_what_to_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "diffusers" else real(name, *a))
    with pytest.raises(EngineUnavailable, match=r"pip install 'sr-augment\[diffusion\]'"):
        get_engine("sr4")
    assert get_engine("bicubic").name == "bicubic"


def test_small_tiles_are_mirror_padded_up_to_the_minimum_side():
    from sr_augment.engines.tiling import pad_to_multiple

    image = np.arange(6 * 5 * 3, dtype=np.uint8).reshape(6, 5, 3)
    padded = pad_to_multiple(image, 8, min_side=20)
    assert padded.shape == (24, 24, 3)
    assert np.array_equal(padded[:6, :5], image) and np.array_equal(padded[6:12, :5], image[::-1])
    assert pad_to_multiple(image, 8).shape == (8, 8, 3)
    assert pad_to_multiple(np.zeros((1, 1, 3), np.uint8), 8, min_side=16).shape == (16, 16, 3)


def test_a_missing_local_folder_is_named_not_looked_up_on_the_hub(tmp_path):
    with pytest.raises(EngineUnavailable, match="no such folder"):
        get_engine(str(tmp_path / "runs" / "mine"))


# ---------------------------------------------------------------------------------------------------------
# out of memory: smaller batches, then one at a time, then a clear error
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.slow  # tiny diffusion pipelines
def test_out_of_memory_halves_the_batch_then_runs_per_image_and_remembers(tiny_ldm_dir, rng):
    import torch

    from sr_augment.engines.backoff import OutOfMemoryBackoffWarning

    engine = get_engine(tiny_ldm_dir, steps=1, batch_size=4)
    images = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(4)]
    expected = engine.upscale(images, [1, 2, 3, 4])
    real, sizes = engine._run, []

    def fits_one(batch, seeds):  # a device with room for one tile
        sizes.append(len(batch))
        if len(batch) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(batch, seeds)

    engine._run = fits_one
    with pytest.warns(OutOfMemoryBackoffWarning, match="batch size 4 .*retrying with batch size 2"):
        out = engine.upscale(images, [1, 2, 3, 4])
    assert sizes == [4, 2, 1, 1, 1, 1]
    # the same images as one batch of 4, up to float rounding of batched convolutions (<= 1 level)
    assert all(np.abs(a.astype(int) - b.astype(int)).max() <= 1 for a, b in zip(out, expected))
    sizes.clear()
    engine.upscale(images, [1, 2, 3, 4])
    assert sizes == [1, 1, 1, 1]  # the size that fit is kept


def test_out_of_memory_on_one_tile_is_a_clear_error_and_other_errors_pass_through(tiny_ldm_dir, rng):
    import torch

    from sr_augment.engines.backoff import EngineOutOfMemory

    engine = get_engine(tiny_ldm_dir, steps=1, batch_size=2)

    def never_fits(batch, seeds):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    engine._run = never_fits
    image = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    with pytest.warns(ResourceWarning), pytest.raises(EngineOutOfMemory, match=r"one 8x8 tile .* even alone .*tile="):
        engine.upscale([image, image], [0, 1])

    def broken(batch, seeds):
        raise RuntimeError("shape mismatch")

    engine._run = broken
    with pytest.raises(RuntimeError, match="shape mismatch"):  # not memory: no retry, no rewording
        engine.upscale([image], [0])


def test_warm_reports_an_image_that_does_not_fit_and_caches_the_others(cache_dir, tmp_path, rng):
    from PIL import Image

    from sr_augment.cache import SRCache
    from sr_augment.engines.backoff import EngineOutOfMemory
    from sr_augment.warm import warm

    class SmallMemoryEngine(BicubicEngine):
        def upscale(self, images, seeds):
            if any(image.shape[0] > 16 for image in images):
                raise EngineOutOfMemory("one 32x32 tile does not fit in accelerator memory even alone")
            return super().upscale(images, seeds)

    for name, side in [("a.png", 8), ("b.png", 32), ("c.png", 8), ("d.png", 8)]:
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(tmp_path / name)
    with SRCache(cache_dir) as cache:
        report = warm([tmp_path], SmallMemoryEngine(), cache, batch_size=4, progress=False)
        assert report.generated == 3 and len(cache) == 3
    assert [f["path"] for f in report.failures] == [str(tmp_path / "b.png")]
    assert "EngineOutOfMemory" in report.failures[0]["error"] and "even alone" in report.failures[0]["error"]
