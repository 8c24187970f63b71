"""A full disk (or another environment error) is never read as a damaged cache.

The disk is made full for real: a subprocess with `RLIMIT_FSIZE` 0 (SIGXFSZ ignored) can create no file
of any size above 0, so SQLite cannot set up the `-shm`/`-wal` files a new reader of a WAL database
needs ("disk I/O error"), exactly as on a full disk. Nothing is monkeypatched.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from sr_augment.cache import SRCache
from sr_augment.engines import BicubicEngine

resource = pytest.importorskip("resource", reason="RLIMIT_FSIZE needs a POSIX system")

_FULL_DISK = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing us
HARD = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
resource.setrlimit(resource.RLIMIT_FSIZE, (0, HARD))  # no file can grow: the disk is full for this process
"""


def _warmed(cache_dir: Path, rng) -> list[np.ndarray]:
    """Three entries: one in a value file (160x160 result), two inline; the cache closed cleanly."""
    images = [rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for side in (40, 8, 8)]
    with SRCache(cache_dir) as cache:
        cache.get_or_create_many(images, BicubicEngine())
    return images


def _rows(cache_dir: Path) -> int:
    con = sqlite3.connect(f"{(cache_dir / 'entries' / 'cache.db').as_uri()}?mode=ro", uri=True)
    try:
        return con.execute("SELECT COUNT(*) FROM Cache").fetchone()[0]
    finally:
        con.close()


def _run_full(script: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """`script` in a fresh interpreter (-I, its own cwd) on a full disk."""
    cwd = tmp_path / "cwd"
    cwd.mkdir(exist_ok=True)
    code = _FULL_DISK + textwrap.dedent(script)
    return subprocess.run([sys.executable, "-I", "-c", code, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})


def _assert_no_wal_files(cache_dir: Path) -> None:
    left = [p.name for p in cache_dir.rglob("cache.db-*")]
    assert not left, f"a cleanly closed cache keeps no -wal/-shm file, so the new process must create them: {left}"


def test_a_new_process_on_a_full_disk_reads_hits_and_a_miss_to_generate_says_the_disk_is_full(tmp_path, rng):
    cache_dir = tmp_path / "cache"
    images = _warmed(cache_dir, rng)
    np.savez(tmp_path / "images.npz", *images)
    _assert_no_wal_files(cache_dir)
    script = """
        import json, sys
        import numpy as np
        from sr_augment.cache import CacheWriteError, DatabaseDamaged, SRCache
        from sr_augment.engines import BicubicEngine
        with np.load(sys.argv[2]) as saved:
            images = [saved[f"arr_{i}"] for i in range(3)]
        engine, out = BicubicEngine(), {}
        with SRCache(sys.argv[1]) as cache:
            out["hits"] = [bool(np.array_equal(cache.get(i, engine), engine.upscale([i], [0])[0])) for i in images]
            out["batch"] = [r is not None for r in cache.get_many(images, engine)]
            out["miss"] = cache.get(np.full((8, 8, 3), 7, np.uint8), engine) is None
            try:
                cache.get_or_create(np.full((8, 8, 3), 7, np.uint8), engine)
            except Exception as exc:
                out["error"] = [type(exc).__name__, isinstance(exc, CacheWriteError),
                                isinstance(exc, DatabaseDamaged), str(exc)]
        print(json.dumps(out))
    """
    done = _run_full(script, tmp_path, str(cache_dir), str(tmp_path / "images.npz"))
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["hits"] == [True, True, True] and out["batch"] == [True, True, True] and out["miss"]
    name, is_write_error, is_damaged, message = out["error"]
    assert is_write_error and not is_damaged, out["error"]
    assert str(cache_dir) in message and "full" in message and "damaged" not in message
    assert _rows(cache_dir) == 3
    with SRCache(cache_dir) as cache:  # with space again, everything is still there
        assert all(cache.get(image, BicubicEngine()) is not None for image in images)


@pytest.mark.parametrize("repair", [False, True])
def test_verify_on_a_full_disk_deletes_nothing_says_it_could_not_check_and_exits_3(tmp_path, rng, repair):
    cache_dir = tmp_path / "cache"
    images = _warmed(cache_dir, rng)
    _assert_no_wal_files(cache_dir)
    value_files = sorted(p.relative_to(cache_dir) for p in (cache_dir / "entries").rglob("*.val"))
    script = """
        import sys
        from sr_augment.cli import main
        sys.exit(main(sys.argv[1:]))
    """
    args = ["verify", "--cache-dir", str(cache_dir), "--no-progress"] + (["--repair"] if repair else [])
    done = _run_full(script, tmp_path, *args)
    assert done.returncode == 3, (done.returncode, done.stdout, done.stderr)
    assert "could not check" in done.stderr and str(cache_dir) in done.stderr
    assert "disk I/O error" in done.stderr and "nothing was changed" in done.stderr
    assert "--repair" not in done.stderr  # no advice to delete anything
    assert _rows(cache_dir) == 3
    assert sorted(p.relative_to(cache_dir) for p in (cache_dir / "entries").rglob("*.val")) == value_files
    with SRCache(cache_dir) as cache:
        assert all(cache.get(image, BicubicEngine()) is not None for image in images)


def test_verify_json_on_a_full_disk_reports_why_it_could_not_check(tmp_path, rng):
    cache_dir = tmp_path / "cache"
    _warmed(cache_dir, rng)
    script = """
        import sys
        from sr_augment.cli import main
        sys.exit(main(sys.argv[1:]))
    """
    done = _run_full(script, tmp_path, "verify", "--cache-dir", str(cache_dir), "--repair", "--json")
    assert done.returncode == 3, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["unchecked"] and "disk I/O error" in report["unchecked"] and not report["clean"]
    assert not report["repaired"] and report["database_damaged"] is None
    assert _rows(cache_dir) == 3


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root reads a file whatever its mode, so no EACCES can be made this way")
def test_verify_repair_deletes_no_entry_whose_value_file_it_may_not_read(tmp_path, rng, capsys):
    from sr_augment.cli import main

    cache_dir = tmp_path / "cache"
    _warmed(cache_dir, rng)
    (value_file,) = (cache_dir / "entries").rglob("*.val")
    value_file.chmod(0)
    try:
        code = main(["verify", "--cache-dir", str(cache_dir), "--repair", "--no-progress"])
    finally:
        value_file.chmod(0o644)
    err = capsys.readouterr().err
    assert code == 3 and "could not check" in err and str(value_file) in err and "Permission" in err
    assert _rows(cache_dir) == 3 and value_file.exists()


def test_a_database_that_really_is_damaged_is_still_reported_as_damaged(tmp_path, rng, capsys):
    from sr_augment.cli import main

    cache_dir = tmp_path / "cache"
    _warmed(cache_dir, rng)
    (cache_dir / "entries" / "cache.db").write_bytes(b"this is not a database" * 100)
    assert main(["verify", "--cache-dir", str(cache_dir), "--no-progress", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["database_damaged"] and "not a database" in report["database_damaged"] and not report["unchecked"]


def test_a_reader_that_fell_back_on_a_full_disk_sees_entries_written_once_there_is_space(tmp_path, rng):
    """The immutable fallback sees no later write, so it is reopened (`FALLBACK_SECONDS`, 0 here): once
    the disk has space again, an entry another writer stores is a hit in the same reader."""
    cache_dir = tmp_path / "cache"
    _warmed(cache_dir, rng)
    script = """
        import json, sys
        import numpy as np
        from sr_augment.cache import SRCache, reader
        from sr_augment.engines import BicubicEngine
        reader.FALLBACK_SECONDS = 0.0
        engine, new = BicubicEngine(), np.full((8, 8, 3), 9, np.uint8)
        cache = SRCache(sys.argv[1])
        out = {"before": cache.get(new, engine) is None, "fallback": cache._reader.fallback}
        resource.setrlimit(resource.RLIMIT_FSIZE, (HARD, HARD))
        with SRCache(sys.argv[1]) as writer:  # space again: another writer stores the entry
            writer.get_or_create(new, engine)
        out["after"] = cache.get(new, engine) is not None
        out["normal_again"] = not cache._reader.fallback
        cache.close()
        print(json.dumps(out))
    """
    done = _run_full(script, tmp_path, str(cache_dir))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"before": True, "fallback": True, "after": True,
                                                                "normal_again": True}


def test_clear_on_a_full_disk_says_what_it_removed_and_the_size_limit_it_could_not_store_again(tmp_path, rng):
    cache_dir = tmp_path / "cache"
    with SRCache(cache_dir, size_limit=123_456_789) as cache:
        cache.get_or_create(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), BicubicEngine())
    script = """
        import sys
        from sr_augment.cli import main
        sys.exit(main(sys.argv[1:]))
    """
    done = _run_full(script, tmp_path, "clear", "--cache-dir", str(cache_dir), "--yes")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "removed 1 entries" in done.stderr and "123456789" in done.stderr and "--size-limit 123456789" in done.stderr
    assert "intact" not in done.stderr  # the entries were removed, as asked: never say otherwise
