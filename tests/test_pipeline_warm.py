"""`SRAugment.warm` through the training pipeline (torchvision and Keras) and `CacheMissRateWarning`.

The proof of a warm is a full epoch with `on_miss="error"`: every key the adapter looks up is there.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

from torchvision import datasets, tv_tensors  # noqa: E402
from torchvision.transforms import v2  # noqa: E402

from fakes import CountingEngine  # noqa: E402
from sr_augment import CacheMissRateWarning  # noqa: E402
from sr_augment.cache import CacheMiss, SRCache  # noqa: E402
from sr_augment.torch_transforms import SRAugment  # noqa: E402


def _image_folder(root, rng, sizes=((50, 70), (64, 48), (41, 41), (90, 60), (45, 80), (72, 72))):
    """Two classes of PNG photos of mixed sizes, as `datasets.ImageFolder` reads them."""
    for label in ("ants", "bees"):
        (root / label).mkdir(parents=True)
        for i, (h, w) in enumerate(sizes):
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / label / f"{i}.png")
    return root


# ---------------------------------------------------------------------------------------------------------
# torchvision
# ---------------------------------------------------------------------------------------------------------
def test_warming_through_the_pipeline_prefix_makes_a_two_worker_epoch_with_on_miss_error_pass(tmp_path, rng, cache_dir):
    root = _image_folder(tmp_path / "train", rng)
    before = v2.Compose([v2.Resize(40), v2.CenterCrop(40)])  # what comes before SRAugment: deterministic
    engine = CountingEngine(scale=2)
    sr = SRAugment(engine=engine, mode="resynthesize", variants=3, cache_dir=cache_dir)

    report = sr.warm(datasets.ImageFolder(root, transform=before), batch_size=4, progress=False)
    assert (report.images, report.generated, report.cached, report.failed) == (12, 36, 0, 0)
    assert max(engine.calls) <= 4 and sum(engine.calls) == 36  # misses batched to the engine

    again = sr.warm(datasets.ImageFolder(root, transform=before), batch_size=4, progress=False)
    assert (again.generated, again.cached) == (0, 36) and sum(engine.calls) == 36  # resumes: nothing to do

    strict = SRAugment(engine=CountingEngine(scale=2), mode="resynthesize", variants=3, on_miss="error",
                       cache_dir=cache_dir)
    train = datasets.ImageFolder(root, transform=v2.Compose([
        before, strict, v2.RandomHorizontalFlip(), v2.ColorJitter(0.2), v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]))
    loader = torch.utils.data.DataLoader(train, batch_size=4, num_workers=2, shuffle=True)
    for _ in range(2):  # two epochs: every variant drawn is there
        seen = sum(images.shape[0] for images, _ in loader)
        assert seen == 12
    assert SRCache(cache_dir).stats().misses == 0


def test_without_the_warm_the_same_epoch_raises_cache_miss(tmp_path, rng, cache_dir):
    root = _image_folder(tmp_path / "train", rng)
    strict = SRAugment(engine=CountingEngine(scale=2), mode="resynthesize", on_miss="error", cache_dir=cache_dir)
    train = datasets.ImageFolder(root, transform=v2.Compose([v2.Resize(40), v2.CenterCrop(40), strict, v2.ToImage()]))
    with pytest.raises(CacheMiss):
        train[0]


def test_every_kind_of_sample_is_warmed_with_the_keys_the_transform_looks_up(cache_dir, rng):
    pixels = lambda h, w: rng.integers(0, 256, (h, w, 3), dtype=np.uint8)  # noqa: E731
    chw = lambda h, w: torch.from_numpy(pixels(h, w)).permute(2, 0, 1).contiguous()  # noqa: E731
    boxes = tv_tensors.BoundingBoxes([[1, 1, 5, 5]], format="XYXY", canvas_size=(9, 11))
    data = [
        Image.fromarray(pixels(10, 12)),
        (chw(8, 6), 3),                                          # the first plain tensor is the image
        (tv_tensors.Image(chw(7, 7)), torch.tensor(1)),          # an Image: the label tensor is not an image
        chw(6, 9).float() / 255,                                 # float in [0, 1]
        torch.stack([chw(5, 5), chw(5, 5), chw(5, 5)]),          # NCHW batch: three images
        {"image": tv_tensors.Image(chw(9, 11)), "boxes": boxes, "label": 2},
        Image.fromarray(pixels(10, 12)).convert("L"),            # grayscale PIL: RGB as the transform makes it
    ]
    sr = SRAugment(engine="bicubic", mode="upscale", scale=2, cache_dir=cache_dir, seed=3)
    state = torch.get_rng_state()
    report = sr.warm(data, batch_size=3, progress=False)
    assert torch.equal(state, torch.get_rng_state())  # nothing drawn from torch's RNG
    assert (report.images, report.generated, report.failed) == (9, 9, 0)

    strict = SRAugment(engine="bicubic", mode="upscale", scale=2, on_miss="error", cache_dir=cache_dir)
    for sample in data:
        strict(sample)  # every image of every sample is a hit
    assert SRCache(cache_dir).stats().misses == 0


def test_a_file_that_cannot_be_read_is_reported_by_path_and_the_others_are_warmed(tmp_path, rng, cache_dir):
    root = _image_folder(tmp_path / "train", rng, sizes=((20, 20), (30, 20)))
    (root / "ants" / "broken.png").write_bytes(b"not an image")
    sr = SRAugment(engine="bicubic", mode="resynthesize", cache_dir=cache_dir)
    report = sr.warm(datasets.ImageFolder(root, transform=v2.Resize(16)), progress=False)
    assert (report.images, report.generated, report.failed) == (5, 4, 1)
    assert report.failures[0]["path"] == str(root / "ants" / "broken.png")


@pytest.mark.slow  # the engine service
def test_the_tiny_ldm_pipeline_is_warmed_through_the_engine_service(tiny_ldm_dir, tmp_path, rng, cache_dir):
    images = [Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)) for _ in range(3)]
    settings = dict(engine=str(tiny_ldm_dir), steps=1, mode="upscale", variants=2, cache_dir=cache_dir)
    report = SRAugment(**settings).warm(images, batch_size=4, progress=False)
    assert (report.images, report.generated, report.failed) == (3, 6, 0)
    strict = SRAugment(**settings, on_miss="error")
    for image in images:
        assert strict(image).size == (48, 48)


# ---------------------------------------------------------------------------------------------------------
# CacheMissRateWarning
# ---------------------------------------------------------------------------------------------------------
def _run(transform, images, epochs):
    for _ in range(epochs):
        for image in images:
            transform(image)


@pytest.mark.parametrize("on_miss", ["passthrough", "generate"])
def test_random_crops_before_sraugment_on_a_warmed_cache_warn_once(on_miss, cache_dir, rng):
    images = [Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in range(10)]
    SRAugment(engine="bicubic", mode="resynthesize", scale=2, cache_dir=cache_dir).warm(
        [v2.CenterCrop(32)(image) for image in images], progress=False)
    sr = SRAugment(engine="bicubic", mode="resynthesize", scale=2, on_miss=on_miss, cache_dir=cache_dir)
    wrong = v2.Compose([v2.RandomCrop(32), sr])  # random pixels every call: permanent misses
    with pytest.warns(CacheMissRateWarning, match="random transform before SRAugment") as caught:
        _run(wrong, images, epochs=45)  # 450 lookups: checked at 200 and 400, said once
    assert len([w for w in caught if w.category is CacheMissRateWarning]) == 1
    assert "SRAugment(...).warm(" in str(caught[0].message)


def test_a_healthy_warmed_pipeline_and_a_cold_cache_do_not_warn(cache_dir, tmp_path, rng):
    images = [Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)) for _ in range(10)]
    SRAugment(engine="bicubic", mode="resynthesize", scale=2, cache_dir=cache_dir).warm(
        [v2.CenterCrop(32)(image) for image in images], progress=False)
    healthy = v2.Compose([v2.CenterCrop(32), SRAugment(engine="bicubic", mode="resynthesize", scale=2,
                                                       on_miss="passthrough", cache_dir=cache_dir), v2.RandomCrop(24)])
    cold = v2.Compose([v2.RandomCrop(32), SRAugment(engine="bicubic", mode="resynthesize", scale=2,
                                                    on_miss="passthrough", cache_dir=tmp_path / "cold")])
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheMissRateWarning)
        _run(healthy, images, epochs=25)  # 250 hits
        _run(cold, images, epochs=25)  # 250 misses, but nothing was ever warmed: nothing to point at
    healthy_stats, cold_stats = (pipeline.transforms[1].core.cache.stats() for pipeline in (healthy, cold))
    assert healthy_stats.hits == 250 and healthy_stats.misses == 0  # silent because it really hit
    assert cold_stats.misses == 250 and cold_stats.hits == 0  # silent although it really missed


# ---------------------------------------------------------------------------------------------------------
# Keras (in this process: conftest imports torch first)
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.slow  # a Keras layer over tf.data
def test_keras_layer_warm_of_the_dataset_before_the_map_makes_an_on_miss_error_epoch_pass(cache_dir, rng):
    tf = pytest.importorskip("tensorflow")
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "tensorflow":
        pytest.skip("needs the TensorFlow backend")
    from sr_augment.keras_layers import SRAugment as KerasSRAugment

    x = rng.integers(0, 256, (10, 12, 12, 3), dtype=np.uint8)
    y = np.arange(10) % 2
    before = tf.data.Dataset.from_tensor_slices((x, y)).map(lambda a, b: (tf.cast(a, tf.float32) / 255.0, b)).batch(4)
    settings = dict(engine="bicubic", mode="upscale", scale=2, value_range=(0, 1), cache_dir=str(cache_dir))
    report = KerasSRAugment(**settings).warm(before, batch_size=3, progress=False)
    assert (report.images, report.generated, report.failed) == (10, 10, 0)

    # the same pixels as unbatched dict elements, and as numpy arrays: the same keys, nothing new
    as_dicts = before.unbatch().map(lambda a, b: {"images": a, "labels": b})
    assert KerasSRAugment(**settings).warm(as_dicts, progress=False).generated == 0
    assert KerasSRAugment(**settings).warm(x.astype("float32") / 255.0, progress=False).cached == 10

    strict = KerasSRAugment(**settings, on_miss="error", seed=1)
    out = before.map(lambda a, b: (strict(a, training=True), b))
    shapes = [images.shape for images, _ in out]
    assert sum(s[0] for s in shapes) == 10 and all(s[1:] == (24, 24, 3) for s in shapes)
    assert SRCache(cache_dir).stats().misses == 0
