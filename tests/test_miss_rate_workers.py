"""`CacheMissRateWarning` where the lookups happen in worker processes, and counters flushed from workers.

A `DataLoader` without `persistent_workers` starts new workers every epoch, so a per-process count of a
small dataset's lookups never reaches the check: the count must survive the workers. Warnings raised
in a worker reach the user as the worker's stderr (a warning filter or recorder of the main process
never sees them), so the tests read that stderr (`capfd`), with Python's default warning display.
"""

from __future__ import annotations

import pickle
import re
import sqlite3
import sys
import warnings

import numpy as np
import pytest

from sr_augment import CacheMissRateWarning
from sr_augment.cache import SRCache, counters
from sr_augment.cache.counters import TALLY_PREFIX, Tally
from sr_augment.miss_rate import MISS_WARNING_LOOKUPS

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

from torchvision.transforms import v2  # noqa: E402

from sr_augment.torch_transforms import SRAugment  # noqa: E402

IMAGES = 150
"""Images per epoch: two epochs (300 lookups) pass `MISS_WARNING_LOOKUPS`, one (75 per worker) does not."""


class _Photos(torch.utils.data.Dataset):
    """Small uint8 CHW images through a transform, as a DataLoader's workers read them."""

    def __init__(self, images, transform):
        self.images, self.transform = images, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return self.transform(self.images[index])


def _images(rng, count=IMAGES, side=32):
    """Images whose random 16-pixel crops hit the warmed centre crop once in 289 draws."""
    torch.manual_seed(0)  # the crops drawn (also the DataLoader workers' seeds)
    return [torch.from_numpy(rng.integers(0, 256, (3, side, side), dtype=np.uint8)) for _ in range(count)]


def _warmed(cache_dir, images, **settings):
    """The cache warmed through the right pipeline (a centre crop before SRAugment)."""
    SRAugment(engine="bicubic", mode="resynthesize", scale=2, cache_dir=cache_dir, **settings).warm(
        [v2.CenterCrop(16)(image) for image in images], progress=False)


def _epochs(dataset, epochs):
    loader = torch.utils.data.DataLoader(dataset, batch_size=10, num_workers=2, persistent_workers=False)
    for _ in range(epochs):
        assert sum(batch.shape[0] for batch in loader) == len(dataset)


@pytest.fixture
def worker_warnings_shown():
    """Warnings shown on stderr, with the default filter, in this process and so in the forked workers,
    as a user's script shows them (pytest records them instead, where a worker's copy keeps them)."""

    def show(message, category, filename, lineno, file=None, line=None):
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))
        sys.stderr.flush()

    with warnings.catch_warnings():
        warnings.resetwarnings()
        warnings.simplefilter("default")
        warnings.showwarning = show
        yield


def _shown(err: str) -> list[str]:
    return re.findall(r"CacheMissRateWarning: (.*)", err)


@pytest.mark.parametrize("on_miss", ["passthrough", "generate"])
def test_random_crop_before_sraugment_warns_once_within_two_epochs_of_fresh_workers(
        on_miss, cache_dir, rng, capfd, worker_warnings_shown):
    images = _images(rng)
    _warmed(cache_dir, images)
    sr = SRAugment(engine="bicubic", mode="resynthesize", scale=2, on_miss=on_miss, cache_dir=cache_dir)
    wrong = _Photos(images, v2.Compose([v2.RandomCrop(16), sr]))  # random pixels every call: misses
    before = SRCache(cache_dir).stats()

    _epochs(wrong, 1)  # 75 lookups per worker: no process, nor all together, has seen enough yet
    assert _shown(capfd.readouterr().err) == []
    _epochs(wrong, 1)  # the workers of epoch 2 see the count epoch 1's workers left
    shown = _shown(capfd.readouterr().err)
    assert len(shown) == 1, shown  # once, not once per worker
    _epochs(wrong, 1)
    assert _shown(capfd.readouterr().err) == []  # nor once per epoch
    assert "random transform before SRAugment" in shown[0] and "SRAugment(...).warm(" in shown[0]
    lookups = int(re.search(r"missed (\d+) of its (\d+) cache lookups", shown[0]).group(2))
    assert MISS_WARNING_LOOKUPS <= lookups <= 2 * IMAGES
    if on_miss == "generate":  # what the trap costs: entries nobody will look up again
        added = int(re.search(r"added (\d+) entries", shown[0]).group(1))
        assert MISS_WARNING_LOOKUPS * 0.95 <= added <= lookups
    else:
        assert "added" not in shown[0]
    after = SRCache(cache_dir).stats()  # every worker's count was kept
    assert after.hits + after.misses - before.hits - before.misses == 3 * IMAGES


def test_a_warmed_pipeline_in_fresh_workers_does_not_warn(cache_dir, rng, capfd, worker_warnings_shown):
    images = _images(rng)
    _warmed(cache_dir, images)
    sr = SRAugment(engine="bicubic", mode="resynthesize", scale=2, on_miss="passthrough", cache_dir=cache_dir)
    right = _Photos(images, v2.Compose([v2.CenterCrop(16), sr, v2.RandomCrop(12)]))
    hits = SRCache(cache_dir).stats().hits
    _epochs(right, 2)
    assert _shown(capfd.readouterr().err) == []
    assert SRCache(cache_dir).stats().hits - hits == 2 * IMAGES


def test_the_warning_is_an_adapters_once_also_in_the_process_itself(cache_dir, rng):
    """The in-process path keeps its behaviour: a pipeline called in this process warns once, and a
    second adapter (its own count) may warn once more."""
    images = _images(rng, count=20)
    _warmed(cache_dir, images)
    for _ in range(2):
        sr = SRAugment(engine="bicubic", mode="resynthesize", scale=2, on_miss="passthrough", cache_dir=cache_dir)
        wrong = v2.Compose([v2.RandomCrop(16), sr])
        with pytest.warns(CacheMissRateWarning) as caught:
            for _ in range(2 * MISS_WARNING_LOOKUPS // len(images)):
                for image in images:
                    wrong(image)
        assert len([w for w in caught if w.category is CacheMissRateWarning]) == 1


# ---------------------------------------------------------------------------------------------------------
# Hugging Face datasets: map(num_proc=2)
# ---------------------------------------------------------------------------------------------------------
def test_datasets_map_workers_hits_are_all_counted(cache_dir, rng, tmp_path, monkeypatch):
    hf = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    images = [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(55)]
    sr = SRAugment(engine="bicubic", mode="resynthesize", scale=2, on_miss="error", cache_dir=cache_dir)
    sr.warm([torch.from_numpy(image).permute(2, 0, 1) for image in images], progress=False)
    before = SRCache(cache_dir).stats()

    def augment(example):
        image = torch.tensor(np.asarray(example["image"], np.uint8)).permute(2, 0, 1)
        return {"image": sr(image).permute(1, 2, 0).numpy()}

    data = hf.Dataset.from_dict({"image": images})
    out = data.map(augment, num_proc=2, load_from_cache_file=False)
    assert len(out) == 55
    after = SRCache(cache_dir).stats()
    assert (after.hits - before.hits, after.misses - before.misses) == (55, 0)


# ---------------------------------------------------------------------------------------------------------
# The lookup tallies in the cache
# ---------------------------------------------------------------------------------------------------------
def _tally_rows(cache_dir):
    from sr_augment.cache.rows import read_meta

    return {key: value for key, value in read_meta(cache_dir / "meta").items() if key.startswith(TALLY_PREFIX)}


def test_two_processes_of_one_adapter_add_up_and_only_one_gives_the_warning(cache_dir):
    first, second = SRCache(cache_dir), SRCache(cache_dir)  # as two workers open the one folder
    first.counters.count_lookups("a1", 10, 9)
    first.flush()
    second.counters.count_lookups("a1", 5, 5)
    second.flush()  # writing, it learns what the other process wrote
    assert second.counters.tally("a1") == Tally(15, 14, False)
    assert first.counters.tally("a1") == Tally(10, 9, False)  # until its next flush
    assert second.counters.claim_warning("a1") is True
    assert first.counters.claim_warning("a1") is False and second.counters.claim_warning("a1") is False
    assert SRCache(cache_dir).counters.claim_warning("a1") is False  # a later epoch's worker
    assert SRCache(cache_dir).counters.claim_warning("b2") is True  # another adapter


def test_a_read_only_cache_tallies_in_this_process_and_warns_once(cache_dir):
    SRCache(cache_dir).close()
    with SRCache(cache_dir, read_only=True) as cache:
        cache.counters.count_lookups("a1", 7, 7)
        cache.flush()
        cache.counters.count_lookups("a1", 3, 2)
        assert cache.counters.tally("a1") == Tally(10, 9, False)
        assert cache.counters.claim_warning("a1") is True and cache.counters.claim_warning("a1") is False
        assert cache.counters.tally("a1").warned
    assert _tally_rows(cache_dir) == {}  # nothing written


def test_only_the_most_recently_written_tallies_are_kept(cache_dir, monkeypatch):
    monkeypatch.setattr(counters, "MAX_TALLIES", 3)
    with SRCache(cache_dir) as cache:
        for number in range(5):
            cache.counters.count_lookups(f"t{number}", 1, 1)
            cache.flush()
        cache.counters.count_lookups("t1", 1, 0)  # an old row written again: it is recent now
        cache.flush()
    assert sorted(_tally_rows(cache_dir)) == [f"{TALLY_PREFIX}t{n}" for n in (1, 3, 4)]


def test_planted_or_malformed_tally_rows_are_replaced_never_unpickled(cache_dir, tmp_path):
    marker = tmp_path / "pwned"
    with SRCache(cache_dir) as cache:
        for tally_id in ("p", "j", "n"):
            cache.counters.count_lookups(tally_id, 1, 1)
        cache.flush()
    with sqlite3.connect(cache_dir / "meta" / "cache.db", isolation_level=None) as con:
        con.execute("UPDATE Cache SET mode = 4, value = ? WHERE key = ?", (pickle.dumps(_Payload(marker)), f"{TALLY_PREFIX}p"))
        con.execute("UPDATE Cache SET value = ? WHERE key = ?", ("[" * 100000, f"{TALLY_PREFIX}j"))
        con.execute("UPDATE Cache SET value = ? WHERE key = ?",
                    ('{"lookups": 5, "misses": 9, "warned": "yes", "time": "soon"}', f"{TALLY_PREFIX}n"))
    with SRCache(cache_dir) as cache:
        for tally_id in ("p", "j", "n"):
            cache.counters.count_lookups(tally_id, 2, 1)
        cache.flush()
        assert [cache.counters.tally(t) for t in ("p", "j", "n")] == [Tally(2, 1, False)] * 3
        assert cache.counters.claim_warning("n") is True
    assert not marker.exists()


class _Payload:
    """Unpickling this creates the marker file: proof that a pickle ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))
