"""`sr-augment warm --loader`: the CLI warms the very pixels the training pipeline's loader gives SRAugment.

A folder of messy files (an EXIF-rotated phone JPEG, 16-bit and 8-bit grey PNGs, RGBA, palette with
transparency, CMYK, an int32 TIFF, WebP) is warmed through the CLI, then loaded with the real library
(torchvision `ImageFolder` + v2 `Resize`/`CenterCrop`; Keras `image_dataset_from_directory`) and fed to
the real SRAugment adapter with `on_miss="error"`: every file must hit, with exactly those pixels.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from conftest import photo
from sr_augment.cache import CacheMiss, SRCache
from sr_augment.cli.main import main
from sr_augment.engines import BicubicEngine
from sr_augment.images import load_image
from sr_augment.warm.tv_geometry import Preprocess

SCALE = 2


def _rgb(height: int, width: int, name: str = "astronaut") -> np.ndarray:
    return np.ascontiguousarray(photo(name)[100:100 + height * 4:4, 120:120 + width * 4:4])


def _make_files(folder) -> dict:
    """One file of each troublesome kind in `folder`; returns {file name: kind}."""
    folder.mkdir(parents=True, exist_ok=True)
    rgb = _rgb(30, 44)
    exif = Image.Exif()
    exif[0x0112] = 6  # a phone photo held upright: "rotate 90 degrees clockwise to display"
    Image.fromarray(rgb).save(folder / "phone.jpg", quality=92, exif=exif)
    ramp = (np.arange(28 * 36, dtype=np.uint32).reshape(28, 36) * 61 % 65536).astype(np.uint16)
    Image.fromarray(ramp).save(folder / "grey16.png")  # mode I;16, values far above 255
    Image.fromarray(rgb[:, :, 1].copy()).save(folder / "grey8.png")
    rgba = np.dstack([_rgb(26, 34, "coffee"), np.linspace(0, 255, 26 * 34).reshape(26, 34).astype(np.uint8)])
    Image.fromarray(rgba).save(folder / "rgba.png")
    palette = Image.fromarray(_rgb(32, 24, "chelsea")).quantize(16)
    palette.save(folder / "palette.png", transparency=0)
    Image.fromarray(_rgb(24, 40, "rocket")).convert("CMYK").save(folder / "cmyk.jpg", quality=90)
    Image.fromarray(_rgb(34, 30, "coffee")).save(folder / "lossless.webp", lossless=True)
    names = {"phone.jpg": "exif", "grey16.png": "I;16", "grey8.png": "L", "rgba.png": "RGBA",
             "palette.png": "P", "cmyk.jpg": "CMYK", "lossless.webp": "webp"}
    tifffile = pytest.importorskip("tifffile")
    values = (np.arange(22 * 30, dtype=np.int64).reshape(22, 30) * 997 - 3000).astype(np.int32)
    tifffile.imwrite(folder / "int32.tif", values)  # negative and > 65535 values
    names["int32.tif"] = "I"
    return names


@pytest.fixture
def messy(tmp_path):
    root = tmp_path / "data"
    names = _make_files(root / "class_a")
    return root, names


def _warm(root, cache_dir, capsys, *options) -> dict:
    code = main(["warm", str(root), "--engine", "bicubic", "--scale", str(SCALE), "--cache-dir", str(cache_dir),
                 "--no-progress", "--json", *options])
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(out.out.strip().splitlines()[-1])


def _hits(cache_dir, images) -> list[bool]:
    with SRCache(cache_dir) as cache:
        return [cache.get(image, BicubicEngine(SCALE), "upscale", 0) is not None for image in images]


def test_the_default_loader_warms_what_torchvision_imagefolder_and_v2_give_sraugment(messy, tmp_path, capsys):
    from torchvision import datasets
    from torchvision.transforms import v2

    from sr_augment.torch_transforms import SRAugment

    root, names = messy
    cache_dir = tmp_path / "cache"
    report = _warm(root, cache_dir, capsys, "--resize", "24", "--center-crop", "20x22")
    geometry = [v2.Resize(24), v2.CenterCrop((20, 22))]
    plain = datasets.ImageFolder(str(root), transform=v2.Compose(geometry))
    assert report["images"] == len(plain) == len(names) and report["failed"] == 0
    pixels = [np.asarray(image) for image, _ in plain]
    assert all(image.shape == (20, 22, 3) for image in pixels)
    assert all(_hits(cache_dir, pixels)), dict(zip(sorted(names), _hits(cache_dir, pixels)))
    # the real pipeline: every sample hits (on_miss="error" raises at the first miss)
    sr = SRAugment(engine="bicubic", scale=SCALE, on_miss="error", cache_dir=str(cache_dir))
    for image, _ in datasets.ImageFolder(str(root), transform=v2.Compose([*geometry, sr])):
        assert image.size == (22 * SCALE, 20 * SCALE)


def test_the_default_loader_without_geometry_keys_the_undecorated_pixels(messy, tmp_path, capsys):
    """No EXIF turn, 16-bit and int32 clipped as Pillow's convert("RGB") does, alpha dropped: torchvision's
    loader, also when the pipeline makes a tensor of it (v2.ToImage) before SRAugment."""
    from torchvision import datasets
    from torchvision.transforms import v2

    from sr_augment.torch_transforms import SRAugment

    root, names = messy
    cache_dir = tmp_path / "cache"
    _warm(root, cache_dir, capsys)
    sr = SRAugment(engine="bicubic", scale=SCALE, on_miss="error", cache_dir=str(cache_dir))
    for tensor, _ in datasets.ImageFolder(str(root), transform=v2.Compose([v2.ToImage(), sr])):
        assert tensor.shape[0] == 3
    phone = np.asarray(datasets.ImageFolder(str(root))[sorted(names).index("phone.jpg")][0])
    assert phone.shape == (30, 44, 3)  # as stored, not turned upright


def test_the_exif_loader_keeps_load_images_decode(messy, tmp_path, capsys):
    root, names = messy
    cache_dir = tmp_path / "cache"
    _warm(root, cache_dir, capsys, "--loader", "exif", "--resize", "24")
    files = sorted((root / "class_a").iterdir())
    turned = [Preprocess((24,))(load_image(path)) for path in files]
    assert all(_hits(cache_dir, turned))
    assert load_image(root / "class_a" / "phone.jpg").shape == (44, 30, 3)  # turned upright


def test_the_default_python_warm_matches_the_cli_default(messy, tmp_path, capsys):
    """`sr_augment.warm.local.warm` decodes as the CLI does by default: one cache, no new entries."""
    from sr_augment.warm.local import warm

    root, names = messy
    cache_dir = tmp_path / "cache"
    _warm(root, cache_dir, capsys)
    with SRCache(cache_dir) as cache:
        report = warm([root], BicubicEngine(SCALE), cache, progress=False)
    assert report.images == len(names) and report.cached == len(names) and report.generated == 0


def test_the_loaders_list_the_files_their_library_lists():
    from torchvision.datasets.folder import IMG_EXTENSIONS

    from sr_augment.loaders import TORCHVISION_SUFFIXES

    assert TORCHVISION_SUFFIXES == frozenset(IMG_EXTENSIONS)  # Keras' list: in the (slow) Keras test


@pytest.mark.parametrize("options, words", [
    (["--loader", "keras", "--center-crop", "20"], ["--center-crop", "--crop-to-aspect-ratio"]),
    (["--loader", "keras", "--resize", "24"], ["--resize 24x24", "image_size"]),
    (["--loader", "keras", "--resize", "24x24", "--crop-to-aspect-ratio", "--pad-to-aspect-ratio"],
     ["only one"]),
    (["--crop-to-aspect-ratio"], ["keras"]),
    (["--interpolation", "bicubic"], ["bilinear", "torchvision"]),
    (["--loader", "keras", "--resize", "24x24", "--interpolation", "cubic"], ["cubic", "bicubic"]),
])
def test_options_no_loader_can_match_are_refused_with_the_reason(tmp_path, options, words):
    (tmp_path / "a.png").write_bytes(b"")
    with pytest.raises(SystemExit) as exc:
        main(["warm", str(tmp_path), "--engine", "bicubic", "--cache-dir", str(tmp_path / "c"), "--no-progress",
              *options])
    message = str(exc.value)
    assert all(word in message for word in words), message


def test_a_cache_miss_names_the_likely_causes_and_the_image_size(tmp_path):
    from sr_augment.torch_transforms import SRAugment

    sr = SRAugment(engine="bicubic", scale=SCALE, on_miss="error", cache_dir=str(tmp_path / "cache"))
    with pytest.raises(CacheMiss) as exc:
        sr(Image.fromarray(_rgb(12, 16)))
    message = str(exc.value)
    assert "12x16 (height x width" in message and "EXIF" in message and "--loader" in message and "16-bit" in message


def test_a_cache_miss_names_the_source_file_when_it_is_known(tmp_path):
    from sr_augment.augment import AugmentCore

    core = AugmentCore(engine="bicubic", scale=SCALE, on_miss="error", cache_dir=str(tmp_path / "cache"))
    with pytest.raises(CacheMiss, match="photos/cat.jpg"):
        core.apply(_rgb(12, 16), 0, source="photos/cat.jpg")


@pytest.mark.slow
def test_the_keras_loader_warms_what_image_dataset_from_directory_gives_sraugment(messy, tmp_path, capsys):
    """TensorFlow's own decode and resize (through the CLI): bilinear, crop_to_aspect_ratio, nearest."""
    keras = pytest.importorskip("keras")
    pytest.importorskip("tensorflow")
    from keras.src.utils.image_dataset_utils import ALLOWLIST_FORMATS

    from sr_augment.keras_layers import SRAugment
    from sr_augment.loaders import KERAS_SUFFIXES

    assert KERAS_SUFFIXES == frozenset(ALLOWLIST_FORMATS)
    root, names = messy
    keras_names = sorted(n for n in names if n.rsplit(".", 1)[-1] in ("jpg", "png"))
    for case, (cli, kwargs) in enumerate([
        (["--resize", "20x24"], {"image_size": (20, 24)}),
        (["--resize", "18x18", "--crop-to-aspect-ratio"], {"image_size": (18, 18), "crop_to_aspect_ratio": True}),
        (["--resize", "16x20", "--interpolation", "nearest", "--pad-to-aspect-ratio"],
         {"image_size": (16, 20), "interpolation": "nearest", "pad_to_aspect_ratio": True}),
    ]):
        cache_dir = tmp_path / f"cache{case}"
        report = _warm(root, cache_dir, capsys, "--loader", "keras", *cli)
        assert report["images"] == len(keras_names) and report["failed"] == 0, report  # no .tif, .webp: Keras skips them
        data = keras.utils.image_dataset_from_directory(str(root), labels=None, batch_size=None, shuffle=False,
                                                        **kwargs)
        images = [np.asarray(image) for image in data]
        assert len(images) == len(keras_names)
        layer = SRAugment(engine="bicubic", scale=SCALE, on_miss="error", cache_dir=str(cache_dir))
        for image in images:
            out = np.asarray(layer(image[None]))
            assert out.shape == (1, kwargs["image_size"][0] * SCALE, kwargs["image_size"][1] * SCALE, 3)


def test_the_ray_warm_decodes_local_files_and_uris_with_the_loader(messy):
    """`warm --ray` reads each file (local or an fsspec URI) with the same loader, listing its library's files."""
    fsspec = pytest.importorskip("fsspec")
    from torchvision import datasets
    from torchvision.transforms import v2

    from sr_augment.loaders import file_loader
    from sr_augment.warm.ray import list_inputs, read_image

    root, names = messy
    loader = file_loader("torchvision", resize=(24,), center_crop=(20,))
    expected = [np.asarray(image) for image, _ in
                datasets.ImageFolder(str(root), transform=v2.Compose([v2.Resize(24), v2.CenterCrop(20)]))]
    local = list_inputs([root], loader.suffixes)
    assert [read_image(path, loader).tolist() for path in local] == [image.tolist() for image in expected]
    fs = fsspec.filesystem("memory")
    for name in names:
        fs.pipe(f"/loader-keys/{name}", (root / "class_a" / name).read_bytes())
    try:
        uris = list_inputs(["memory://loader-keys"], loader.suffixes)
        assert [read_image(uri, loader).tolist() for uri in uris] == [image.tolist() for image in expected]
        assert len(list_inputs(["memory://loader-keys"], file_loader("keras").suffixes)) == 6  # no .tif, .webp
    finally:
        fs.rm("/loader-keys", recursive=True)
