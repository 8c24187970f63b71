"""torchvision `SRAugment`: every input kind, Compose, pickle, torch RNG, on_miss, DataLoader workers."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")
from PIL import Image  # noqa: E402
from torchvision import transforms as v1  # noqa: E402
from torchvision import tv_tensors  # noqa: E402
from torchvision.transforms import v2  # noqa: E402

from fakes import CountingEngine  # noqa: E402
from sr_augment.cache import CacheMiss, SRCache  # noqa: E402
from sr_augment.images import ImageDecodeError, ImageShapeError, bicubic_resize  # noqa: E402
from sr_augment.torch_transforms import SRAugment  # noqa: E402


def _hwc(rng, h=6, w=5):
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _to_numpy(out) -> np.ndarray:
    if isinstance(out, Image.Image):
        return np.asarray(out)
    array = out.permute(1, 2, 0).numpy() if out.ndim == 3 else out.permute(0, 2, 3, 1).numpy()
    return np.rint(array * 255).astype(np.uint8) if out.is_floating_point() else array


KINDS = {
    "pil": lambda a: Image.fromarray(a),
    "uint8-chw": lambda a: torch.from_numpy(a).permute(2, 0, 1).contiguous(),
    "float-chw": lambda a: torch.from_numpy(a).permute(2, 0, 1).float() / 255,
    "tv-image": lambda a: tv_tensors.Image(torch.from_numpy(a).permute(2, 0, 1)),
    "uint8-nchw": lambda a: torch.from_numpy(np.stack([a, a[::-1]])).permute(0, 3, 1, 2).contiguous(),
    "float64-nchw": lambda a: torch.from_numpy(np.stack([a, a[::-1]])).permute(0, 3, 1, 2).double() / 255,
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", ["upscale", "resynthesize"])
def test_every_input_kind_keeps_its_kind_dtype_and_gets_the_sr_pixels(kind, mode, cache_dir, rng):
    pixels = _hwc(rng, 8, 12)
    inpt = KINDS[kind](pixels)
    out = SRAugment(engine="bicubic", mode=mode, scale=2, cache_dir=cache_dir)(inpt)
    assert type(out) is type(inpt)
    if isinstance(inpt, torch.Tensor):
        assert out.dtype == inpt.dtype and out.ndim == inpt.ndim
    images = [pixels, pixels[::-1]] if kind.endswith("nchw") else [pixels]
    got = _to_numpy(out)
    got = list(got) if kind.endswith("nchw") else [got]
    for image, result in zip(images, got):
        expected = bicubic_resize(image, 2)
        if mode == "resynthesize":
            small = np.asarray(Image.fromarray(image).resize((6, 4), Image.BICUBIC))
            expected = np.asarray(Image.fromarray(bicubic_resize(small, 2)))
        assert result.shape == expected.shape
        assert np.abs(result.astype(int) - expected.astype(int)).max() <= 1  # float paths round once


def test_output_size_and_composes(cache_dir, rng):
    pil = Image.fromarray(_hwc(rng))
    for compose in (v1.Compose, v2.Compose):
        pipeline = compose([SRAugment(engine="bicubic", output_size=(10, 7), cache_dir=cache_dir),
                            v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])
        out = pipeline(pil)
        assert out.shape == (3, 10, 7) and out.dtype == torch.float32


def test_pickle_round_trip_keeps_settings_and_works(cache_dir, rng):
    t = SRAugment(engine="bicubic", mode="resynthesize", scale=2, variants=3, p=0.5, output_size=16,
                  cache_dir=cache_dir, device="cpu")
    t(torch.zeros(3, 8, 8, dtype=torch.uint8))  # opens the cache: that state must not be pickled
    clone = pickle.loads(pickle.dumps(t))
    assert clone.core.config() == t.core.config()
    assert clone(torch.zeros(3, 8, 8, dtype=torch.uint8)).shape == (3, 16, 16)


def test_p_and_variant_come_from_torch_rng(cache_dir, rng):
    t = SRAugment(engine=CountingEngine(), mode="resynthesize", scale=2, variants=4, p=0.5, cache_dir=cache_dir)
    batch = torch.from_numpy(np.stack([_hwc(rng, 8, 8) for _ in range(16)])).permute(0, 3, 1, 2)
    torch.manual_seed(7)
    a = t(batch)
    torch.manual_seed(7)
    b = t(batch)
    torch.manual_seed(8)
    c = t(batch)
    assert torch.equal(a, b) and not torch.equal(a, c)
    unchanged = [torch.equal(x, y) for x, y in zip(a, batch)]
    assert 0 < sum(unchanged) < 16  # p=0.5: some images kept, some replaced
    assert SRAugment(engine=CountingEngine(), mode="resynthesize", scale=2, p=0.0, cache_dir=cache_dir)(batch).equal(batch)


def test_on_miss_error_names_the_key_and_passthrough_counts_a_miss(cache_dir, rng):
    pixels = _hwc(rng)
    with pytest.raises(CacheMiss) as info:
        SRAugment(engine=CountingEngine(), scale=2, on_miss="error", cache_dir=cache_dir)(Image.fromarray(pixels))
    with SRCache(cache_dir) as cache:
        assert cache.key(pixels, CountingEngine(), "upscale", 0) in str(info.value)
    t = SRAugment(engine=CountingEngine(), scale=2, on_miss="passthrough", cache_dir=cache_dir)
    out = t(Image.fromarray(pixels))
    assert np.array_equal(np.asarray(out), bicubic_resize(pixels, 2))
    stats = t.core.cache.stats()
    assert stats.misses == 1 and stats.generated == 0 and stats.entries == 0


@pytest.mark.parametrize(
    "inpt, error, message",
    [
        (torch.zeros(5, 8, 8, dtype=torch.uint8), ImageShapeError, "channels"),
        (torch.zeros(1, 1, 3, 8, 8), ImageShapeError, "shape"),
        (torch.full((3, 4, 4), 2.0), ImageDecodeError, r"\[0, 1\]"),
        (torch.full((3, 4, 4), float("nan")), ImageDecodeError, "NaN"),
    ],
    ids=["five-channels", "rank-5", "float-above-1", "nan"],
)
def test_bad_tensors_raise_clear_errors(inpt, error, message, cache_dir):
    with pytest.raises(error, match=message):
        SRAugment(engine="bicubic", cache_dir=cache_dir)(inpt)


def test_bad_settings_raise(cache_dir):
    for kwargs, message in [({"mode": "up"}, "mode"), ({"on_miss": "skip"}, "on_miss"), ({"p": 2}, "p must"),
                            ({"variants": 0}, "variants"), ({"output_size": (1, 2, 3)}, "output_size")]:
        with pytest.raises(ValueError, match=message):
            SRAugment(engine="bicubic", cache_dir=cache_dir, **kwargs)


class _Images(torch.utils.data.Dataset):
    def __init__(self, images, transform):
        self.images, self.transform = images, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return self.transform(Image.fromarray(self.images[index])), index


@pytest.mark.parametrize("start_method", ["spawn", "fork"])
@pytest.mark.slow  # DataLoader worker processes and the engine service
def test_dataloader_workers_share_one_model_and_return_cached_images(start_method, tiny_ldm_dir, tmp_path, rng, monkeypatch):
    monkeypatch.setenv("SR_AUGMENT_SERVICE_LINGER", "2")
    cache_dir = tmp_path / "cache"
    images = [_hwc(rng, 8, 8) for _ in range(8)]
    transform = v2.Compose([SRAugment(engine=tiny_ldm_dir, mode="upscale", variants=2, cache_dir=cache_dir, steps=1),
                            v2.PILToTensor()])
    loader = torch.utils.data.DataLoader(_Images(images, transform), batch_size=4, num_workers=2,
                                         multiprocessing_context=start_method)
    outputs = {int(i): x for batch, index in loader for x, i in zip(batch, index)}
    assert sorted(outputs) == list(range(8))
    logs = list(Path(os.environ["SR_AUGMENT_SERVICE_DIR"]).glob("*.log"))
    loads = [line for log in logs for line in log.read_text().splitlines() if "loaded" in line]
    assert len(loads) == 1, loads  # one service process, one model load, for both workers
    identity = next((cache_dir / "identities").glob("*.json"))
    fingerprint = json.loads(identity.read_text())["identity"]["fingerprint"]
    engine = type("Remote", (), {"fingerprint": fingerprint, "scale": 4, "name": "tiny"})()
    with SRCache(cache_dir) as cache:
        for index, image in enumerate(images):
            cached = [cache.get(image, engine, "upscale", v) for v in range(2)]
            got = outputs[index].permute(1, 2, 0).numpy()
            assert any(c is not None and np.array_equal(c, got) for c in cached), index


# ---------------------------------------------------------------------------------------------------------
# torch conventions: torch.compile, seed=, engine specs checked at construction
# ---------------------------------------------------------------------------------------------------------
def test_torch_compile_of_a_function_calling_the_transform_gives_the_eager_output(tmp_path, rng):
    def make_step(folder):
        transform = SRAugment(engine=CountingEngine(), mode="resynthesize", scale=2, variants=3, p=0.5,
                              cache_dir=tmp_path / folder)
        return lambda batch: transform(batch.float() / 255) * 2 - 1

    batch = torch.from_numpy(np.stack([_hwc(rng, 8, 8) for _ in range(6)])).permute(0, 3, 1, 2)
    torch._dynamo.reset()
    compiled_step = torch.compile(make_step("compiled"), backend="eager")
    results = []
    for step in (compiled_step, compiled_step, make_step("eager")):  # misses (engine, store), hits, eager
        torch.manual_seed(0)
        results.append(step(batch))  # compiled: a graph break around the transform, no crash inside dynamo
    assert torch.equal(results[0], results[2]) and torch.equal(results[1], results[2])
    assert not torch.equal(results[2], batch.float() / 255 * 2 - 1)  # p=0.5 replaced some images


def _draws(transform, count: int = 32) -> dict:
    return transform.make_params([torch.zeros(count, 3, 4, 4, dtype=torch.uint8)])


def _seeded(seed, cache_dir):
    return SRAugment(engine=CountingEngine(), variants=8, p=0.5, seed=seed, cache_dir=cache_dir)


def test_transforms_with_the_same_seed_draw_the_same_and_different_seeds_differ(cache_dir, rng):
    first, same, other = _seeded(5, cache_dir), _seeded(5, cache_dir), _seeded(6, cache_dir)
    draws = [_draws(first) for _ in range(3)]
    assert draws == [_draws(same) for _ in range(3)]
    assert draws != [_draws(other) for _ in range(3)]
    assert draws[0] != draws[1]  # one stream, advancing call by call
    batch = torch.from_numpy(np.stack([_hwc(rng, 8, 8) for _ in range(12)])).permute(0, 3, 1, 2)
    outputs = [SRAugment(engine=CountingEngine(), mode="resynthesize", scale=2, variants=4, p=0.5, seed=9,
                         cache_dir=cache_dir)(batch) for _ in range(2)]
    assert torch.equal(outputs[0], outputs[1]) and not torch.equal(outputs[0], batch)


def test_global_manual_seed_does_not_change_the_draws_of_a_seeded_transform(cache_dir):
    torch.manual_seed(0)
    seeded_a, unseeded_a = _draws(_seeded(5, cache_dir)), _draws(_seeded(None, cache_dir))
    torch.manual_seed(1)
    seeded_b, unseeded_b = _draws(_seeded(5, cache_dir)), _draws(_seeded(None, cache_dir))
    assert seeded_a == seeded_b
    assert unseeded_a != unseeded_b  # seed=None: torch's global RNG, as before


class _Draws(torch.utils.data.Dataset):
    """Each item: the variant the transform draws for it, in whichever worker loads it."""

    def __init__(self, transform):
        self.transform = transform

    def __len__(self):
        return 8

    def __getitem__(self, index):
        return _draws(self.transform, 1)["variant"][0]


def test_seeded_transform_in_dataloader_workers_differs_per_worker_and_epoch_and_repeats_per_run(cache_dir):
    transform = SRAugment(engine=CountingEngine(), variants=10**6, seed=5, cache_dir=cache_dir)
    _draws(transform)  # the parent's generator exists before the fork: each worker must re-seed its own
    loader = torch.utils.data.DataLoader(_Draws(transform), batch_size=None, num_workers=2)

    def epoch():
        values = list(loader)
        return values[0::2], values[1::2]  # worker 0 loads items 0, 2, ...; worker 1 items 1, 3, ...

    torch.manual_seed(0)
    run = epoch()
    next_epoch = epoch()
    torch.manual_seed(0)
    again = epoch()
    assert run[0] != run[1]  # the two workers draw differently
    assert run == again  # the loader's base seed repeats: the run repeats
    assert next_epoch != run  # a new epoch, a new base seed: new draws


def _adapter_class(adapter: str):
    if adapter == "torch":
        return SRAugment
    pytest.importorskip("tensorflow")  # conftest imported torch first, so this process may import TF
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "tensorflow":
        pytest.skip("needs the TensorFlow backend")
    from sr_augment.keras_layers import SRAugment as KerasSRAugment

    return KerasSRAugment


@pytest.mark.parametrize("adapter", ["torch", "keras"])
def test_a_misspelt_engine_fails_at_construction_naming_the_closest_name(adapter, cache_dir):
    with pytest.raises(ValueError, match=r"did you mean 'sd-x4-upscaler'\?.*hub id 'owner/name'"):
        _adapter_class(adapter)(engine="sd-x4-upscalr", cache_dir=cache_dir)
    assert not cache_dir.exists()  # no service started, nothing written


@pytest.mark.parametrize("spec, message", [
    ("bicubc", "did you mean 'bicubic'"),
    ("no_such_package.module:Engine", "module 'no_such_package.module' .* cannot be found"),
    ("sr_augment.no_such_module:Engine", "cannot be found"),
    ("./no/such/folder", "no such folder"),
    ("a b", "Unknown engine 'a b'"),
])
def test_bad_engine_specs_raise_value_error_saying_what_is_accepted(spec, message, cache_dir):
    with pytest.raises(ValueError, match=message):
        SRAugment(engine=spec, cache_dir=cache_dir)


@pytest.mark.parametrize("spec", ["bicubic", "sr4", "sd-x4-upscaler", "ldm-4x", "owner/name", "faults:SlowEngine",
                                  "folder"])
def test_every_form_of_engine_spec_is_accepted_without_starting_anything(spec, tmp_path, cache_dir):
    if spec == "folder":
        spec = str(tmp_path)
    assert SRAugment(engine=spec, cache_dir=cache_dir).core.engine_spec == spec
    assert not cache_dir.exists()


def test_checking_an_engine_spec_imports_no_torch(tmp_path):
    """A TensorFlow process constructs the Keras layer through the same check: it must not import torch."""
    code = ("import sys\n"
            "from sr_augment.augment import AugmentCore\n"
            "AugmentCore(engine='sd-x4-upscaler')\n"
            "try:\n    AugmentCore(engine='sd-x4-upscalr')\nexcept ValueError:\n    pass\n"
            "else:\n    sys.exit('no ValueError')\n"
            "sys.exit('torch imported' if 'torch' in sys.modules else 0)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
