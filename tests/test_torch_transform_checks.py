"""torchvision's own kind of transform checks, run on `SRAugment` for every input kind it takes.

`check_transform` below does in spirit what torchvision's test helper of that name does for its own
transforms: the output is of the input's kind, dtype, device, channels (PIL: mode) and of the size the
transform documents; boxes, masks, labels and strings of a sample come out as `v2.Resize` to that size
moves them (or untouched); a pickled copy, `v2.Compose([t])` and a second transform with the same seed
give the same result; `torch.jit.script` says plainly that it cannot script the transform.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")
from PIL import Image  # noqa: E402
from torchvision import tv_tensors  # noqa: E402
from torchvision.transforms import v2  # noqa: E402
from torchvision.transforms.v2 import functional as F  # noqa: E402

from sr_augment.torch_transforms import SRAugment  # noqa: E402

H, W = 8, 12
PIXELS = np.random.default_rng(0).integers(0, 256, (H, W, 4), dtype=np.uint8)
BICUBIC = F.InterpolationMode.BICUBIC
ALL_SETTINGS = [("upscale", 1.0), ("resynthesize", 0.5), ("upscale", 0.0), ("resynthesize", 1.0), ("resynthesize", 0.0)]
"""(mode, p) pairs every input kind is checked under."""
SETTINGS = ALL_SETTINGS[:2] + [pytest.param(*setting, marks=pytest.mark.slow) for setting in ALL_SETTINGS[2:]]
"""ALL_SETTINGS as parameters: the whole matrix in CI, the first two in the everyday loop (-m "not slow")."""


def _sr(tmp_path, mode="resynthesize", p=1.0, **kwargs) -> SRAugment:
    kwargs.setdefault("seed", 3)
    return SRAugment(engine="bicubic", mode=mode, scale=2, p=p, cache_dir=tmp_path / "cache", **kwargs)


def _tensor(channels: int, dtype: torch.dtype, batch: int | None = None) -> torch.Tensor:
    chw = torch.from_numpy(PIXELS[:, :, :channels].copy()).permute(2, 0, 1)
    if batch is not None:
        chw = torch.stack([chw.roll(i, dims=2) for i in range(batch)])
    if dtype == torch.uint8:
        return chw.contiguous()
    if dtype == torch.uint16:
        return (chw.to(torch.int32) * 257).to(torch.uint16)
    return (chw.to(torch.float64) / 255).to(dtype)


def _pil(mode: str) -> Image.Image:
    if mode == "I;16":
        return Image.fromarray(PIXELS[:, :, 0].astype(np.uint16) * 257)
    if mode == "P+transparency":
        image = Image.fromarray(PIXELS[:, :, :3]).convert("P")
        image.info["transparency"] = 0
        return image
    if mode in ("RGBA", "LA", "PA"):
        return Image.fromarray(PIXELS).convert(mode)
    return Image.fromarray(PIXELS[:, :, :3]).convert(mode)


PIL_MODES = {"RGB": "RGB", "RGBA": "RGBA", "L": "L", "LA": "LA", "1": "L", "P": "RGB", "P+transparency": "RGBA",
             "PA": "RGBA", "I;16": "I;16", "I": "I", "F": "F", "CMYK": "CMYK", "YCbCr": "YCbCr", "HSV": "HSV",
             "LAB": "LAB"}
"""Each PIL mode and the mode an image of it comes back in when it is augmented (or resized)."""

def _input(kind: str, channels: int, dtype: str, batch: int | None):
    def make():
        tensor = _tensor(channels, getattr(torch, dtype), batch)
        return tv_tensors.Image(tensor) if kind == "image" else tensor
    return make


TENSORS = {
    f"{kind}-{channels}ch-{dtype}-{'nchw' if batch else 'chw'}": _input(kind, channels, dtype, batch)
    for kind in ("tensor", "image") for channels in (1, 2, 3, 4) for batch in (None, 3)
    for dtype in ("uint8", "uint16", "float32", "bfloat16") if kind == "tensor" or dtype in ("uint8", "float32")
}


def _size(image) -> tuple[int, int]:
    return (image.height, image.width) if isinstance(image, Image.Image) else tuple(image.shape[-2:])


def _same(a, b) -> bool:
    if isinstance(a, Image.Image):
        return isinstance(b, Image.Image) and a.mode == b.mode and np.array_equal(np.asarray(a), np.asarray(b))
    return type(a) is type(b) and a.dtype == b.dtype and torch.equal(a, b)


def check_transform(make, inpt, expected_size, expected_mode=None) -> None:
    """The checks every input kind passes; `make()` builds a fresh, seeded transform."""
    transform = make()
    out = transform(inpt)
    assert type(out) is type(inpt)
    assert _size(out) == tuple(expected_size)
    if isinstance(inpt, torch.Tensor):
        assert out.dtype == inpt.dtype and out.device == inpt.device
        assert out.shape[:-2] == inpt.shape[:-2]  # batch and channels kept
    else:
        assert out.mode == expected_mode
    # the same draws give the same result: a second transform, a pickled copy, the transform inside v2.Compose
    assert _same(make()(inpt), out)
    assert _same(pickle.loads(pickle.dumps(make()))(inpt), out)
    assert _same(v2.Compose([make()])(inpt), out)
    # a sample: the image as alone, the rest as v2.Resize moves it to the images' new size, or untouched
    height, width = _size(inpt)
    boxes = tv_tensors.BoundingBoxes(torch.tensor([[1.0, 2.0, 7.0, 6.0]]), format="XYXY", canvas_size=(height, width))
    mask = tv_tensors.Mask(torch.from_numpy(PIXELS[:, :, 0] % 3))
    label, name = torch.tensor(3), "sample-0"
    image, target = make()((inpt, {"boxes": boxes, "mask": mask, "label": label, "name": name}))
    assert _same(image, out)
    moved = v2.Resize(list(expected_size))({"boxes": boxes, "mask": mask})
    assert torch.equal(target["boxes"], moved["boxes"]) and target["boxes"].canvas_size == tuple(expected_size)
    assert torch.equal(target["mask"], moved["mask"])
    assert target["label"] is label and target["name"] is name
    # scripting: a plain refusal that says so
    with pytest.raises(RuntimeError, match="cannot be JIT scripted"):
        torch.jit.script(make())


@pytest.mark.parametrize("mode, p", SETTINGS)
@pytest.mark.parametrize("kind", TENSORS)
def test_every_tensor_kind_passes_the_transform_checks(kind, mode, p, tmp_path):
    inpt = TENSORS[kind]()
    check_transform(lambda: _sr(tmp_path, mode, p), inpt, (2 * H, 2 * W) if mode == "upscale" else (H, W))


@pytest.mark.parametrize("mode, p", SETTINGS)
@pytest.mark.parametrize("pil_mode", PIL_MODES)
def test_every_pil_mode_passes_the_transform_checks(pil_mode, mode, p, tmp_path):
    inpt = _pil(pil_mode)
    expected = PIL_MODES[pil_mode] if mode == "upscale" or p > 0 else None
    transform = _sr(tmp_path, mode, p)
    if expected is None or (mode == "resynthesize" and not transform.make_params([inpt])["augment"][0]):
        expected = inpt.mode  # not augmented in resynthesize mode: the image itself
    check_transform(lambda: _sr(tmp_path, mode, p), inpt, (2 * H, 2 * W) if mode == "upscale" else (H, W), expected)


@pytest.mark.parametrize("pil_mode", PIL_MODES)
def test_every_pil_mode_resized_but_not_augmented_comes_back_in_the_augmented_mode(pil_mode, tmp_path):
    inpt = _pil(pil_mode)
    check_transform(lambda: _sr(tmp_path, "resynthesize", 0.0, output_size=(10, 14)), inpt, (10, 14),
                    PIL_MODES[pil_mode] if pil_mode in ("1", "P", "P+transparency", "PA") else pil_mode)


# --- channels: grey stays grey, alpha is carried ---------------------------------------------------------
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
@pytest.mark.parametrize("mode", ["upscale", "resynthesize"])
def test_a_grey_tensor_comes_back_grey_as_the_grey_of_its_rgb_twin(dtype, mode, tmp_path):
    grey = _tensor(1, getattr(torch, dtype), batch=2)
    twin = grey.expand(-1, 3, -1, -1).contiguous()
    out = _sr(tmp_path, mode)(grey)
    assert out.shape[1] == 1
    assert torch.equal(out, _sr(tmp_path, mode)(twin)[:, :1])
    assert len(_sr(tmp_path, mode).core.cache) == 2  # the grey image and its twin share their keys


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
@pytest.mark.parametrize("mode", ["upscale", "resynthesize"])
def test_an_rgba_tensor_keeps_its_alpha_resized_bicubic_and_its_colour_super_resolved(dtype, mode, tmp_path):
    rgba = _tensor(4, getattr(torch, dtype))
    out = _sr(tmp_path, mode)(rgba)
    assert torch.equal(out[:3], _sr(tmp_path, mode)(rgba[:3].contiguous()))
    alpha = rgba[3:]
    if mode == "upscale":
        expected = F.resize(alpha.float(), [2 * H, 2 * W], interpolation=BICUBIC, antialias=True)
        limit = 1.0 if alpha.is_floating_point() else float(torch.iinfo(alpha.dtype).max)
        expected = expected.clamp(0, limit)
        expected = expected.to(alpha.dtype) if alpha.is_floating_point() else expected.round().to(alpha.dtype)
        assert torch.equal(out[3:], expected)
    else:
        assert torch.equal(out[3:], alpha)  # same size: the alpha itself, exactly
    assert len(_sr(tmp_path, mode).core.cache) == 1  # RGBA and RGB share their key


@pytest.mark.parametrize("mode", ["upscale", "resynthesize"])
def test_a_grey_pil_image_comes_back_l_as_the_l_conversion_of_its_rgb_twin(mode, tmp_path):
    image = _pil("L")
    out = _sr(tmp_path, mode)(image)
    twin = _sr(tmp_path, mode)(image.convert("RGB"))
    assert out.mode == "L" and np.array_equal(np.asarray(out), np.asarray(twin.convert("L")))


@pytest.mark.parametrize("pil_mode", ["RGBA", "LA"])
def test_a_pil_image_with_alpha_keeps_it_resized_bicubic(pil_mode, tmp_path):
    image = _pil(pil_mode)
    out = _sr(tmp_path, "upscale")(image)
    assert out.mode == pil_mode and out.size == (2 * W, 2 * H)
    colour = _sr(tmp_path, "upscale")(image.convert("RGB"))
    if pil_mode == "LA":
        colour = colour.convert("L")
    assert np.array_equal(np.asarray(out)[..., :-1].squeeze(-1) if pil_mode == "LA" else np.asarray(out)[..., :3],
                          np.asarray(colour))
    expected_alpha = image.getchannel("A").resize((2 * W, 2 * H), Image.BICUBIC)
    assert np.array_equal(np.asarray(out.getchannel("A")), np.asarray(expected_alpha))


# --- samples holding several images -----------------------------------------------------------------------
def test_a_batched_image_and_a_single_image_in_one_sample_each_get_their_own_draws(tmp_path):
    batch, single = tv_tensors.Image(_tensor(3, torch.uint8, batch=3)), tv_tensors.Image(_tensor(1, torch.uint8))
    make = lambda: _sr(tmp_path, "resynthesize", 0.5, seed=5)  # noqa: E731
    params = make().make_params([batch, single])
    assert len(params["augment"]) == len(params["variant"]) == 4
    out_batch, out_single, label = make()((batch, single, 7))
    assert out_batch.shape == batch.shape and out_single.shape == single.shape and label == 7
    kept = [torch.equal(a, b) for a, b in zip([*out_batch, out_single], [*batch, single])]
    assert kept == [not a for a in params["augment"]]
    up_batch, up_single = _sr(tmp_path, "upscale")((batch, single))
    assert torch.equal(up_batch, _sr(tmp_path, "upscale")(batch))
    assert torch.equal(up_single, _sr(tmp_path, "upscale")(single))


# --- output_size: an int is the shorter side, as in v2.Resize ---------------------------------------------
@pytest.mark.parametrize("kind", ["tensor", "pil"])
@pytest.mark.parametrize("output_size", [16, [16], (16, 16), (10, 20)])
def test_output_size_means_what_it_means_to_v2_resize(kind, output_size, tmp_path):
    pixels = np.random.default_rng(1).integers(0, 256, (17, 11, 3), dtype=np.uint8)
    inpt = Image.fromarray(pixels) if kind == "pil" else torch.from_numpy(pixels).permute(2, 0, 1).contiguous()
    expected = _size(v2.Resize(output_size)(inpt))
    assert expected == {16: (24, 16), (16, 16): (16, 16), (10, 20): (10, 20)}[
        output_size if not isinstance(output_size, list) else 16]
    for mode, p in ALL_SETTINGS:
        check_transform(lambda mode=mode, p=p: _sr(tmp_path, mode, p, output_size=output_size), inpt, expected, "RGB")


def test_output_size_is_refused_plainly_when_it_is_not_a_size(tmp_path):
    for bad in (0, (1, 2, 3), [], (4, 0), "16"):
        with pytest.raises(ValueError, match="output_size"):
            _sr(tmp_path, output_size=bad)


# --- DataLoader workers ------------------------------------------------------------------------------------
class _Mixed(torch.utils.data.Dataset):
    def __init__(self, transform):
        self.transform = transform
        self.items = [_pil("L"), _pil("RGBA"), _tensor(1, torch.float32), tv_tensors.Image(_tensor(4, torch.uint8))]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return self.transform(self.items[index])


def test_every_kind_keeps_its_channels_under_dataloader_workers(tmp_path):
    transform = _sr(tmp_path, "upscale")
    loader = torch.utils.data.DataLoader(_Mixed(transform), batch_size=None, num_workers=2)
    got = list(loader)
    expected = [transform(item) for item in _Mixed(transform).items]
    assert [g.mode if isinstance(g, Image.Image) else g.shape[0] for g in got] == ["L", "RGBA", 1, 4]
    assert all(_same(g, e) for g, e in zip(got, expected))


# --- warm: the keys of every kind are the ones its lookups use ---------------------------------------------
def test_warm_covers_grey_alpha_and_pil_modes_so_on_miss_error_finds_every_image(tmp_path):
    items = [_tensor(2, torch.uint8), tv_tensors.Image(_tensor(4, torch.float32, batch=2)), _pil("LA"), _pil("1"),
             (_tensor(1, torch.uint16, batch=2), _pil("P+transparency"))]
    _sr(tmp_path, "upscale").warm(items, progress=False)
    strict = _sr(tmp_path, "upscale", on_miss="error")
    for item in items:
        strict(item)  # no CacheMiss: warm keyed each image by its RGB pixels, as the lookups do
