"""SRCache: keys from pixels and settings, exact hits, variants, damage detection, limits, stats."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fakes import CountingEngine
from sr_augment import get_engine
from sr_augment.cache import CODECS, SRCache
from sr_augment.cache.codec import DamagedEntry, decode, encode


@pytest.fixture
def cache(cache_dir):
    with SRCache(cache_dir) as c:
        yield c


def _image(rng, h=6, w=5):
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("codec", CODECS)
def test_hit_returns_exactly_what_was_stored(cache_dir, rng, codec):
    engine = CountingEngine()
    image = _image(rng)
    with SRCache(cache_dir, codec=codec) as cache:
        assert cache.get(image, engine) is None
        made = cache.get_or_create(image, engine)
        hit = cache.get(image, engine)
        assert made.shape == (12, 10, 3) and np.array_equal(hit, made)
        assert hit.flags.writeable
        assert engine.calls == [1]
        stats = cache.stats()
        assert (stats.entries, stats.hits, stats.misses, stats.generated) == (1, 1, 2, 1)


def test_same_pixels_from_two_paths_hit_once(cache, tmp_path, rng):
    engine = CountingEngine()
    pixels = _image(rng)
    a, b = tmp_path / "a.png", tmp_path / "sub" / "b.png"
    b.parent.mkdir()
    for path in (a, b):
        Image.fromarray(pixels).save(path)
    first = cache.get_or_create(a, engine)
    second = cache.get_or_create(b, engine)
    third = cache.get_or_create(pixels, engine)  # from memory
    assert engine.calls == [1] and np.array_equal(first, second) and np.array_equal(first, third)
    assert cache.key(a, engine) == cache.key(pixels.copy(), engine)


def test_settings_mode_scale_and_variant_change_the_key(cache, rng):
    image = _image(rng)
    keys = {
        cache.key(image, CountingEngine()),
        cache.key(image, CountingEngine(tag="other steps")),
        cache.key(image, CountingEngine(scale=3)),
        cache.key(image, CountingEngine(), mode="resynthesize"),
        cache.key(image, CountingEngine(), variant=1),
        cache.key(image[:, ::-1], CountingEngine()),
    }
    assert len(keys) == 6


def test_variants_use_distinct_derived_seeds(cache, rng):
    engine = CountingEngine()
    image = _image(rng)
    outs = cache.get_or_create_many([image] * 3, engine, variants=[0, 1, 2])
    assert engine.calls == [3]  # one batched call for all misses
    assert not np.array_equal(outs[0], outs[1]) and not np.array_equal(outs[1], outs[2])
    with SRCache(cache.directory / "other") as other:  # another machine derives the same seeds
        again = other.get_or_create_many([image] * 3, CountingEngine(), variants=[0, 1, 2])
    assert all(np.array_equal(x, y) for x, y in zip(outs, again))


def test_resynthesize_keeps_the_input_shape(cache, rng):
    engine = CountingEngine(scale=4)
    image = _image(rng, 18, 13)  # not divisible by 4
    out = cache.get_or_create(image, engine, mode="resynthesize")
    assert out.shape == image.shape
    assert engine.calls == [1]


def test_with_diffusers_engine_changing_steps_prompt_or_dtype_misses(cache, tiny_sd_dir, rng):
    image = _image(rng, 8, 8)
    base = get_engine(tiny_sd_dir, steps=1)
    cache.get_or_create(image, base)
    assert cache.get(image, get_engine(tiny_sd_dir, steps=1)) is not None  # a new engine object hits
    for changed in (dict(steps=2), dict(prompt="a photo"), dict(dtype="bf16")):
        assert cache.get(image, get_engine(tiny_sd_dir, **{"steps": 1, **changed})) is None, changed


def test_damaged_entry_is_detected_counted_and_regenerated(cache, rng):
    engine = CountingEngine()
    image = _image(rng)
    good = cache.get_or_create(image, engine)
    key = cache.key(image, engine)
    record = bytearray(cache.record(key))
    record[len(record) // 2] ^= 0x01  # one flipped bit on disk
    cache._entries.set(key, bytes(record))  # diskcache's own writer: the public API never stores a damaged record
    assert cache.get(image, engine) is None
    assert cache.stats().damaged == 1 and key not in cache
    again = cache.get_or_create(image, engine)
    assert np.array_equal(again, good) and engine.calls == [1, 1]


def test_put_stores_a_result_computed_elsewhere_under_its_key(cache, rng):
    engine = CountingEngine()
    image = _image(rng)
    result = _image(rng, 12, 10)
    key = cache.put(image, engine, result, variant=1)
    assert key == cache.key(image, engine, variant=1) and key in cache
    assert np.array_equal(cache.get(image, engine, variant=1), result)
    assert cache.get(image, engine) is None  # variant 0 is another entry
    assert engine.calls == [] and cache.stats().generated == 1
    with pytest.raises(DamagedEntry):  # a 4-channel result does not round-trip as RGB: refused, not stored
        cache.put(image, engine, _image(rng, 12, 10)[..., [0, 1, 2, 0]], mode="resynthesize")
    assert cache.key(image, engine, mode="resynthesize") not in cache and len(cache) == 1


def test_keys_and_record_list_what_is_stored_without_counting(cache_dir, rng):
    engine = CountingEngine()
    images = [_image(rng) for _ in range(3)]
    with SRCache(cache_dir) as cache:
        assert cache.keys() == [] and cache.record("0" * 32 + ":0") is None
        made = cache.get_or_create_many(images, engine, variants=[0, 1, 0])
        keys = [cache.key(image, engine, variant=v) for image, v in zip(images, [0, 1, 0])]
        assert cache.keys() == keys and len(cache) == 3 and all(key in cache for key in keys)  # oldest first
        assert all(np.array_equal(decode(cache.record(key)), out) for key, out in zip(keys, made))
        stats = cache.stats()
        assert (stats.hits, stats.misses) == (0, 3)  # listing and reading records count no hit or miss
        first = cache.record(keys[0])
    with SRCache(cache_dir, read_only=True) as reader:  # read-only: the same entries
        assert reader.keys() == keys and reader.record(keys[0]) == first
    with SRCache(cache_dir) as writer:
        assert writer.add_record("f" * 32 + ":9", first)  # a record moves as it is
        assert writer.keys() == keys + ["f" * 32 + ":9"]


@pytest.mark.parametrize("damage", [lambda r: r[:-7], lambda r: b"XXXX" + r[4:], lambda r: r[:8] + b"\0" * (len(r) - 8)])
def test_codec_rejects_damaged_records(rng, damage):
    record = encode(_image(rng))
    assert np.array_equal(decode(record), decode(bytes(record)))
    with pytest.raises(DamagedEntry):
        decode(damage(record))


def test_size_limit_evicts_and_reports_evictions(cache_dir, rng):
    engine = CountingEngine(scale=8)
    with SRCache(cache_dir, size_limit=200_000, codec="raw") as cache:
        for _ in range(40):  # 40 x 48 KiB raw records > 200 kB
            cache.get_or_create(_image(rng, 16, 16), engine)
        stats = cache.stats()
    assert stats.entries < 40 and stats.evictions == 40 - stats.entries
    assert stats.bytes <= 400_000  # diskcache culls back towards the limit


def test_stats_persist_across_processes_and_clear_resets(cache_dir, rng):
    engine = CountingEngine()
    image = _image(rng)
    with SRCache(cache_dir) as cache:
        cache.get_or_create(image, engine)
    with SRCache(cache_dir) as cache:
        cache.get(image, engine)
        stats = cache.stats()
        assert (stats.hits, stats.misses, stats.generated) == (1, 1, 1)
        assert [seen["name"] for seen in stats.engines.values()] == ["counting"]
        assert cache.clear() == 1
        assert cache.stats().entries == 0 and cache.stats().hits == 0


def test_bad_arguments_are_clear_errors(cache_dir, rng):
    with pytest.raises(ValueError, match="codec"):
        SRCache(cache_dir, codec="gif")
    with pytest.raises(ValueError, match="size_limit"):
        SRCache(cache_dir, size_limit=0)
    with SRCache(cache_dir) as cache:
        with pytest.raises(ValueError, match="mode"):
            cache.get(_image(rng), CountingEngine(), mode="upsample")
        with pytest.raises(ValueError, match="variant"):
            cache.get(_image(rng), CountingEngine(), variant=-1)


def test_default_directory_follows_env(monkeypatch, tmp_path):
    from sr_augment.cache import default_cache_dir

    monkeypatch.setenv("SR_AUGMENT_CACHE_DIR", str(tmp_path / "here"))
    assert default_cache_dir() == tmp_path / "here"
    monkeypatch.delenv("SR_AUGMENT_CACHE_DIR")
    assert default_cache_dir().name == "sr_augment"


def test_diffusers_variants_differ_and_hit_exactly(cache, tiny_ldm_dir, rng):
    engine = get_engine(tiny_ldm_dir, steps=2)
    image = _image(rng, 8, 8)
    v0, v1 = cache.get_or_create_many([image, image], engine, variants=[0, 1])
    assert v0.shape == (32, 32, 3) and np.abs(v0.astype(int) - v1.astype(int)).mean() > 1.0
    assert np.array_equal(cache.get(image, engine, variant=1), v1)


def test_a_dropped_cache_is_collected_and_its_counters_are_kept(cache_dir, rng):
    import gc
    import weakref

    from sr_augment.cache import SRCache
    from sr_augment.engines import BicubicEngine

    engine = BicubicEngine(2)
    cache = SRCache(cache_dir)
    image = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    cache.get_or_create(image, engine)
    cache.get(image, engine)
    ref = weakref.ref(cache)
    del cache
    gc.collect()
    assert ref() is None  # nothing (atexit, Finalize) keeps a cache alive for the process's life
    with SRCache(cache_dir) as again:
        stats = again.stats()
    assert (stats.misses, stats.hits, stats.generated) == (1, 1, 1)


def test_a_cache_on_a_network_filesystem_warns(cache_dir, monkeypatch, recwarn):
    from sr_augment.cache import SRCache, filesystem

    mounts = [("/", "ext4"), (str(cache_dir.parent.resolve()), "nfs4"), ("/elsewhere", "nfs")]
    monkeypatch.setattr(filesystem, "_mount_table", lambda: mounts)
    assert filesystem.filesystem_type(cache_dir) == "nfs4"
    with pytest.warns(filesystem.NetworkFilesystemWarning, match="network filesystem .nfs4."):
        SRCache(cache_dir).close()
    monkeypatch.setattr(filesystem, "_mount_table", lambda: [("/", "ext4")])
    SRCache(cache_dir).close()
    assert not [w for w in recwarn if issubclass(w.category, filesystem.NetworkFilesystemWarning)]


def test_forked_children_neither_lose_nor_double_count_counters(cache_dir, rng):
    import multiprocessing

    engine = CountingEngine()
    cache = SRCache(cache_dir)
    for _ in range(10):  # 10 misses pending in the parent, not yet written
        cache.get(_image(rng), engine)
    children = [multiprocessing.get_context("fork").Process(target=cache.get, args=(_image(rng), engine))
                for _ in range(3)]  # each child uses the inherited cache for one miss and exits
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=60)
    assert [child.exitcode for child in children] == [0, 0, 0]
    assert cache.stats().misses == 13  # was 43: each child wrote the parent's 10 again
    cache.close()
