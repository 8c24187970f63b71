"""Read-only, copied, shared and full-disk caches: opening one and reading hits writes nothing and
needs no free space; a team cache follows the umask."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import diskcache
import numpy as np
import pytest
from PIL import Image

from sr_augment.cache import CacheReadOnly, CacheWriteError, SRCache
from sr_augment.cli import main
from sr_augment.engines import BicubicEngine


def _warmed(cache_dir: Path, rng, count: int = 3, side: int = 8) -> list[np.ndarray]:
    images = [rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for _ in range(count)]
    with SRCache(cache_dir) as cache:
        cache.get_or_create_many(images, BicubicEngine())
    return images


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns, p.stat().st_mode)
            for p in sorted(folder.rglob("*"))}


def test_a_cache_opened_read_only_serves_hits_writes_nothing_and_refuses_to_generate(tmp_path, rng, capsys):
    images = _warmed(tmp_path / "warm", rng, side=40)  # 160x160 results: value files as well as inline rows
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "warm", copy)
    before = _snapshot(copy)
    engine = BicubicEngine()
    with SRCache(copy, read_only=True) as cache:
        assert cache.read_only
        for image in images:
            assert np.array_equal(cache.get(image, engine), engine.upscale([image], [0])[0])
        miss = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        assert cache.get(miss, engine) is None
        with pytest.raises(CacheReadOnly, match="read-only") as info:
            cache.get_or_create(miss, engine)
        assert "on_miss='passthrough'" in str(info.value) and str(copy) in str(info.value)
        assert isinstance(info.value, CacheWriteError)
        stats = cache.stats()
        assert stats.read_only and (stats.hits, stats.misses, stats.entries) == (3, 3 + 2, 3)  # warm's 3 misses + 2 in memory
    assert _snapshot(copy) == before  # not a byte, not a -wal or -shm file


def test_a_cache_this_process_cannot_write_is_opened_read_only(tmp_path, rng, monkeypatch, capsys):
    images = _warmed(tmp_path / "cache", rng)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if mode & os.W_OK else real_access(path, mode, **kw))
    before = _snapshot(tmp_path / "cache")
    with SRCache(tmp_path / "cache") as cache:
        assert cache.read_only and cache.get(images[0], BicubicEngine()) is not None
    assert main(["info", "--cache-dir", str(tmp_path / "cache")]) == 0
    assert "read-only" in capsys.readouterr().out
    assert _snapshot(tmp_path / "cache") == before


_READER = """
import json, sys
import numpy as np
from sr_augment.cache import SRCache
from sr_augment.engines import BicubicEngine
images = np.load(sys.argv[2])
with SRCache(sys.argv[1]) as cache:
    hits = [cache.get(image, BicubicEngine()) is not None for image in images]
    print(json.dumps({"read_only": cache.read_only, "hits": hits, "stats": cache.stats().as_dict()}))
"""


def test_a_copy_another_user_cannot_write_serves_hits(tmp_path, rng):
    """Truly unwritable: as root, the reader runs as user `nobody`; otherwise the copy is chmod a-w."""
    images = _warmed(tmp_path / "cache", rng)
    shared = Path(tempfile.mkdtemp(prefix="sr-augment-ro-"))
    try:
        os.chmod(shared, 0o755)
        copy = shared / "cache"
        shutil.copytree(tmp_path / "cache", copy)
        np.save(shared / "images.npy", np.stack(images))
        for path in [copy, *copy.rglob("*")]:
            os.chmod(path, (0o555 if path.is_dir() else 0o444))
        as_nobody = None
        if os.geteuid() == 0:
            def as_nobody():
                os.setgid(65534)
                os.setuid(65534)
        before = _snapshot(copy)
        try:
            done = subprocess.run([sys.executable, "-c", _READER, str(copy), str(shared / "images.npy")],
                                  capture_output=True, text=True, timeout=120, preexec_fn=as_nobody, cwd=shared,
                                  env={**os.environ, "HOME": str(shared)})
        except PermissionError as exc:  # this Python lives where user nobody cannot reach it
            pytest.skip(f"running as root, and user nobody cannot run {sys.executable}: {exc}")
        if done.returncode and "Permission denied" in done.stderr and os.geteuid() == 0:
            pytest.skip(f"running as root, and user nobody cannot import sr_augment: {done.stderr[-300:]}")
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout.strip().splitlines()[-1])
        assert result["read_only"] and result["hits"] == [True] * 3 and result["stats"]["read_only"]
        assert _snapshot(copy) == before
    finally:
        for path in [shared, *shared.rglob("*")]:
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        shutil.rmtree(shared)


@pytest.mark.skipif(os.geteuid() != 0, reason="switches the effective user to nobody, which needs root")
def test_a_copy_the_effective_user_cannot_write_is_opened_read_only_and_serves_hits(tmp_path, rng):
    """Truly unwritable, in this process: the kernel, not a flag, refuses the writes (euid nobody)."""
    images = _warmed(tmp_path / "cache", rng, side=40)
    shared = Path(tempfile.mkdtemp(prefix="sr-augment-ro-"))
    try:
        os.chmod(shared, 0o755)
        copy = shared / "cache"
        shutil.copytree(tmp_path / "cache", copy)
        for path in [copy, *copy.rglob("*")]:
            os.chmod(path, 0o555 if path.is_dir() else 0o444)
        before = _snapshot(copy)
        engine = BicubicEngine()
        os.seteuid(65534)
        try:
            with SRCache(copy) as cache:
                hits = [np.array_equal(cache.get(image, engine), engine.upscale([image], [0])[0]) for image in images]
                read_only, stats = cache.read_only, cache.stats()
                with pytest.raises(CacheReadOnly):
                    cache.get_or_create(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), engine)
        finally:
            os.seteuid(0)
        assert read_only and hits == [True] * 3 and stats.read_only and stats.entries == 3
        assert _snapshot(copy) == before
    finally:
        shutil.rmtree(shared)


def test_with_umask_002_every_folder_and_file_of_a_warmed_cache_is_group_writable(tmp_path, rng):
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    cache_dir = tmp_path / "team"
    done = subprocess.run([sys.executable, "-m", "sr_augment.cli", "warm", str(tmp_path), "--engine", "bicubic",
                           "--cache-dir", str(cache_dir), "--no-progress"], capture_output=True, text=True,
                          timeout=120, preexec_fn=lambda: os.umask(0o002))
    assert done.returncode == 0, done.stderr
    paths = [cache_dir, *cache_dir.rglob("*")]
    assert any(p.suffix == ".val" for p in paths) and any(p.name == "cache.db" for p in paths)
    not_shared = [f"{p} {stat.filemode(p.stat().st_mode)}" for p in paths if not p.stat().st_mode & stat.S_IWGRP]
    assert not_shared == []


def test_with_the_disk_full_a_new_process_opens_the_cache_and_reads_hits(tmp_path, rng, monkeypatch):
    images = _warmed(tmp_path / "cache", rng)

    def disk_full(*args, **kwargs):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(diskcache.Cache, "__init__", disk_full)  # no diskcache.Cache can be opened
    monkeypatch.setattr("sr_augment.cache.counters._FLUSH_EVERY", 1)  # every read tries to flush its counters
    engine = BicubicEngine()
    with SRCache(tmp_path / "cache") as cache:
        assert not cache.read_only
        for image in images:  # a DataLoader worker's pure hits
            assert np.array_equal(cache.get_or_create(image, engine), engine.upscale([image], [0])[0])
        assert cache.get(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), engine) is None  # passthrough's miss
        with pytest.raises(CacheWriteError, match="full"):
            cache.get_or_create(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), engine)


def test_a_read_only_cache_serves_training_with_passthrough_on_a_miss(tmp_path, rng):
    from sr_augment.augment import AugmentCore

    images = _warmed(tmp_path / "cache", rng)
    core = AugmentCore(engine="bicubic", on_miss="passthrough", cache_dir=tmp_path / "cache")
    core._local()["cache"] = SRCache(tmp_path / "cache", read_only=True)  # as on a read-only mount
    before = _snapshot(tmp_path / "cache")
    assert all(core.apply(image, 0).shape == (32, 32, 3) for image in images)  # hits
    assert core.apply(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), 0).shape == (32, 32, 3)  # bicubic stand-in
    assert _snapshot(tmp_path / "cache") == before
