"""The hit path: the "auto" stored form, old records, batch lookups and the adapter's conversions.

Speed itself is measured in bench/bench_hitpath.py; these tests hold what the faster path must keep.
"""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from fakes import CountingEngine
from sr_augment.cache import SRCache, codec
from sr_augment.cache.codec import AUTO_RAW_PIXELS, DamagedEntry


def _image(rng, h=8, w=8):
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _stored_codec(cache: SRCache, key: str) -> str:
    return codec.split(cache._fetch(key)[1])[0]["codec"]


def _old_record(image: np.ndarray, name: str) -> bytes:
    """A record exactly as sr-augment wrote it before entries carried meta: {codec, shape} and the payload."""
    if name == "raw":
        payload = image.tobytes()
    else:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format=name.upper(), **({"lossless": True} if name == "webp" else {}))
        payload = buffer.getvalue()
    return codec.join(json.dumps({"codec": name, "shape": list(image.shape)}).encode(), payload)


def test_auto_stores_small_results_raw_and_large_ones_as_webp_and_both_round_trip_exactly(rng):
    side = int(AUTO_RAW_PIXELS ** 0.5)
    for shape, expected in (((side, side, 3), "raw"), ((side, side + 1, 3), "webp"), ((5, 7, 3), "raw")):
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        record = codec.encode(image, "auto")
        assert codec.split(record)[0]["codec"] == expected
        assert np.array_equal(codec.decode(record), image)


def test_the_default_cache_stores_a_128_px_result_raw_and_returns_it_exactly(cache_dir, rng):
    engine = CountingEngine(scale=4)
    image = _image(rng, 32, 32)
    with SRCache(cache_dir) as cache:
        made = cache.get_or_create(image, engine)
        assert made.shape == (128, 128, 3) and _stored_codec(cache, cache.key(image, engine)) == "raw"
        hit = cache.get(image, engine)
        assert np.array_equal(hit, made) and hit.flags.writeable


@pytest.mark.parametrize("where", [10, 2000, -1])
def test_a_damaged_raw_record_is_detected_removed_and_regenerated(cache_dir, rng, where):
    engine = CountingEngine(scale=4)
    image = _image(rng, 32, 32)  # a 48 KiB raw record: a value file
    with SRCache(cache_dir) as cache:
        good = cache.get_or_create(image, engine)
    (value_file,) = (cache_dir / "entries").rglob("*.val")
    data = bytearray(value_file.read_bytes())
    data[where] ^= 0x40  # one bit in the header, the payload, the last pixel
    value_file.write_bytes(bytes(data))
    with pytest.raises(DamagedEntry):
        codec.decode(bytes(data))
    with SRCache(cache_dir) as cache:
        assert cache.get(image, engine) is None and cache.stats().damaged == 1
        assert np.array_equal(cache.get_or_create(image, engine), good) and engine.calls == [1, 1]


def test_a_raw_record_of_four_channels_is_refused_as_damaged(rng):
    rgba = rng.integers(0, 256, (6, 5, 4), dtype=np.uint8)
    with pytest.raises(DamagedEntry, match="not an RGB image"):
        codec.decode(codec.encode(rgba, "raw"))


@pytest.mark.parametrize("name", ["webp", "png", "raw"])
def test_records_written_before_auto_and_meta_read_exactly_in_a_default_cache(cache_dir, rng, name):
    engine = CountingEngine(scale=4)
    image = _image(rng, 32, 32)
    result = rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)
    with SRCache(cache_dir) as cache:
        key = cache.key(image, engine)
        assert cache.add_record(key, _old_record(result, name))
    with SRCache(cache_dir) as cache:
        assert cache.codec == "auto" and _stored_codec(cache, key) == name
        assert np.array_equal(cache.get(image, engine), result) and engine.calls == []


def test_get_many_reads_a_batch_with_one_query_and_answers_like_get(cache_dir, rng):
    engine = CountingEngine()
    images = [_image(rng) for _ in range(5)]
    with SRCache(cache_dir) as cache:
        cache.get_or_create_many(images[:3], engine, variants=[0, 1, 0])
        statements: list[str] = []
        cache._reader._con().set_trace_callback(statements.append)
        batch = [images[0], images[1], images[3], images[0], images[2]]
        found = cache.get_many(batch, engine, variants=[0, 1, 0, 0, 0])
        assert len([s for s in statements if "FROM Cache" in s]) == 1
        cache._reader._con().set_trace_callback(None)
        singles = [cache.get(img, engine, variant=v) for img, v in zip(batch, [0, 1, 0, 0, 0])]
        assert [f is None for f in found] == [False, False, True, False, False]
        assert all(f is None and s is None or np.array_equal(f, s) for f, s in zip(found, singles))
        assert cache.stats().hits == 4 + 4 and cache.stats().misses == 3 + 1 + 1  # warm, batch, singles


def test_a_damaged_entry_asked_twice_in_one_batch_is_counted_once_and_misses_both_times(cache_dir, rng):
    engine = CountingEngine(scale=4)
    image = _image(rng, 32, 32)
    with SRCache(cache_dir) as cache:
        cache.get_or_create(image, engine)
    (value_file,) = (cache_dir / "entries").rglob("*.val")
    value_file.write_bytes(value_file.read_bytes()[:-1])
    with SRCache(cache_dir) as cache:
        assert cache.get_many([image, image], engine) == [None, None]
        assert cache.stats().damaged == 1


def test_a_value_file_under_a_planted_folder_symlink_is_refused_and_its_target_stays(cache_dir, tmp_path, rng):
    engine = CountingEngine(scale=4)
    image = _image(rng, 32, 32)
    with SRCache(cache_dir) as cache:
        cache.get_or_create(image, engine)
    (value_file,) = (cache_dir / "entries").rglob("*.val")
    folder = value_file.parent
    outside = tmp_path / "outside"
    folder.rename(outside)
    folder.symlink_to(outside, target_is_directory=True)  # entries/xx/yy -> a folder out of the cache
    with SRCache(cache_dir) as cache:
        assert cache.get(image, engine) is None and cache.stats().damaged == 1
    assert (outside / value_file.name).exists()


def test_a_lost_value_file_reads_as_a_miss_and_is_regenerated(cache_dir, rng):
    engine = CountingEngine(scale=4)
    image = _image(rng, 32, 32)
    with SRCache(cache_dir) as cache:
        cache.get_or_create(image, engine)
    (value_file,) = (cache_dir / "entries").rglob("*.val")
    os.remove(value_file)
    os.rmdir(value_file.parent)  # its hex folder gone too
    with SRCache(cache_dir) as cache:
        assert cache.get(image, engine) is None and cache.stats().damaged == 1
        assert cache.get_or_create(image, engine).shape == (128, 128, 3) and engine.calls == [1, 1]



def test_draws_with_one_possible_outcome_leave_torch_global_rng_untouched(cache_dir):
    torch = pytest.importorskip("torch")
    from sr_augment.torch_transforms import SRAugment

    batch = [torch.zeros(4, 3, 8, 8, dtype=torch.uint8)]
    state = torch.get_rng_state()
    for p in (0.0, 1.0):
        params = SRAugment(engine=CountingEngine(), p=p, variants=1, cache_dir=cache_dir).make_params(batch)
        assert params["augment"] == [p == 1.0] * 4 and params["variant"] == [0] * 4
    assert torch.equal(state, torch.get_rng_state())
    SRAugment(engine=CountingEngine(), p=0.5, variants=1, cache_dir=cache_dir).make_params(batch)
    assert not torch.equal(state, torch.get_rng_state())  # a real draw still comes from torch's RNG


def test_a_warm_batch_tensor_is_looked_up_with_one_query_and_comes_back_in_its_dtype(cache_dir, rng):
    torch = pytest.importorskip("torch")
    from sr_augment.torch_transforms import SRAugment

    engine = CountingEngine()
    arrays = np.stack([_image(rng) for _ in range(4)])
    batch = torch.from_numpy(arrays).permute(0, 3, 1, 2)
    warm = SRAugment(engine=engine, cache_dir=cache_dir)(batch)
    strict = SRAugment(engine=engine, on_miss="error", cache_dir=cache_dir)
    strict(batch)  # opens the cache
    statements: list[str] = []
    strict.core.cache._reader._con().set_trace_callback(statements.append)
    again = strict(batch)
    assert len([s for s in statements if "FROM Cache" in s]) == 1
    assert again.dtype == torch.uint8 and again.is_contiguous() and torch.equal(again, warm)
    as_float = strict(batch.float() / 255)
    assert as_float.dtype == torch.float32 and torch.equal(as_float, warm.float() / 255)


def test_an_empty_batch_tensor_gives_an_empty_batch_of_the_output_size(cache_dir):
    torch = pytest.importorskip("torch")
    from sr_augment.torch_transforms import SRAugment

    empty = torch.zeros(0, 3, 8, 6, dtype=torch.uint8)
    assert SRAugment(engine=CountingEngine(), scale=2, cache_dir=cache_dir)(empty).shape == (0, 3, 16, 12)
    same = SRAugment(engine=CountingEngine(), mode="resynthesize", scale=2, cache_dir=cache_dir)(empty.float())
    assert same.shape == (0, 3, 8, 6) and same.dtype == torch.float32
