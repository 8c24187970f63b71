"""torchvision `SRAugment`: every input kind, Compose, pickle, torch RNG, on_miss, DataLoader workers."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")
from PIL import Image  # noqa: E402
from torchvision import transforms as v1  # noqa: E402
from torchvision import tv_tensors  # noqa: E402
from torchvision.transforms import v2  # noqa: E402

from sr_augment.cache import CacheMiss, SRCache  # noqa: E402
from sr_augment.images import ImageDecodeError, ImageShapeError, bicubic_resize  # noqa: E402
from sr_augment.torch_transforms import SRAugment  # noqa: E402

from fakes import CountingEngine  # noqa: E402


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
                  cache_dir=cache_dir, steps=3)
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
        (torch.zeros(2, 8, 8, dtype=torch.uint8), ImageShapeError, "channels"),
        (torch.zeros(1, 1, 3, 8, 8), ImageShapeError, "shape"),
        (torch.full((3, 4, 4), 2.0), ImageDecodeError, r"\[0, 1\]"),
        (torch.full((3, 4, 4), float("nan")), ImageDecodeError, "NaN"),
    ],
    ids=["two-channels", "rank-5", "float-above-1", "nan"],
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
    logs = list((cache_dir / "services").glob("*.log"))
    loads = [line for log in logs for line in log.read_text().splitlines() if "loaded" in line]
    assert len(loads) == 1, loads  # one service process, one model load, for both workers
    identity = next((cache_dir / "services").glob("*.identity.json"))
    fingerprint = json.loads(identity.read_text())["identity"]["fingerprint"]
    engine = type("Remote", (), {"fingerprint": fingerprint, "scale": 4, "name": "tiny"})()
    with SRCache(cache_dir) as cache:
        for index, image in enumerate(images):
            cached = [cache.get(image, engine, "upscale", v) for v in range(2)]
            got = outputs[index].permute(1, 2, 0).numpy()
            assert any(c is not None and np.array_equal(c, got) for c in cached), index
