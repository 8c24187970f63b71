"""Second review of "Trust, round 2": a resume checkpoint is bounded and checked before it is used, cache
rows whose shape is not three integers are refused by key with bounded memory (the rest still move), and
the advice for a planted writer lock works when pasted, even with a space in the cache's path."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sr_augment.cache import SRCache, codec
from sr_augment.cli import main
from sr_augment.engines import BicubicEngine

torch = pytest.importorskip("torch")


def _cli(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-I", "-m", "sr_augment", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def _inflating(source: Path, target: Path, inflated: int = 64 << 20) -> Path:
    """`source` (a torch.save zip) with its tensor record rewritten as `inflated` bytes of deflated zeros."""
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w") as zout:
        tensor = next(i.filename for i in zin.infolist() if "/data/" in i.filename and not i.filename.endswith(".pkl"))
        for info in zin.infolist():
            if info.filename == tensor:
                zout.writestr(zipfile.ZipInfo(info.filename, date_time=info.date_time), bytes(inflated),
                              compress_type=zipfile.ZIP_DEFLATED)
            else:
                zout.writestr(info, zin.read(info.filename))
    assert target.stat().st_size < inflated // 100
    return target


def test_a_resume_checkpoint_that_inflates_is_refused_before_torch_reads_it(tmp_path, monkeypatch):
    state = tmp_path / "run" / "checkpoint" / "state.pt"
    state.parent.mkdir(parents=True)
    torch.save({"config": {"data": []}, "w": torch.zeros(64)}, tmp_path / "plain.pt")
    _inflating(tmp_path / "plain.pt", state)
    loads = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a) or {})
    with pytest.raises(SystemExit, match="is not a checkpoint this command wrote") as raised:
        main(["train", "--out", str(tmp_path / "run"), "--steps", "2", "--resume", "--device", "cpu", "--no-progress"])
    assert loads == [], "the checkpoint was handed to torch.load before its records were bounded"
    assert str(state) in str(raised.value) and "inflate" in str(raised.value)


def test_a_resume_checkpoint_that_holds_data_but_not_a_training_state_is_refused_plainly(tmp_path):
    state = tmp_path / "run" / "checkpoint" / "state.pt"
    state.parent.mkdir(parents=True)
    torch.save({"config": {"steps": 10}, "w": torch.zeros(4)}, state)
    with pytest.raises(SystemExit, match="is not a checkpoint this command wrote.*missing: step"):
        main(["train", "--out", str(tmp_path / "run"), "--steps", "2", "--resume", "--device", "cpu", "--no-progress"])


@pytest.mark.parametrize("shape", [["x", 2_000_000_000, 3], [1.5, 2, 3], [True, 2, 3], [4, 4], [-1, 4, 3]])
def test_a_row_whose_shape_is_not_three_integers_is_refused_by_key_and_the_good_entry_still_moves(tmp_path, shape):
    cache_dir = tmp_path / "cache"
    with SRCache(cache_dir) as cache:
        cache.get_or_create(np.zeros((8, 8, 3), np.uint8), BicubicEngine())
        bad = "e" * 32 + ":0"
        cache._add(bad, codec.join(json.dumps({"codec": "raw", "shape": shape}).encode(), b"\0" * 9),
                   "m1:upscale:" + "0" * 16)
    with pytest.raises(codec.DamagedEntry, match="three non-negative integers"):
        codec.decode(codec.join(json.dumps({"codec": "raw", "shape": shape}).encode(), b"\0" * 9))
    verify = _cli("verify", "--cache-dir", cache_dir, "--json", "--no-progress", cwd=tmp_path)
    assert verify.returncode == 1 and bad in verify.stdout, verify.stdout + verify.stderr
    export = _cli("export", "--cache-dir", cache_dir, "--out", tmp_path / "shards", "--no-progress", cwd=tmp_path)
    assert export.returncode == 1 and "Traceback" not in export.stderr, export.stderr
    assert bad in export.stderr and "1 exported" in export.stdout, export.stdout + export.stderr
    assert len(list((tmp_path / "shards").glob("*.tar"))) == 1


def test_the_advice_for_a_planted_writer_lock_works_when_pasted_with_a_space_in_the_path(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for i in range(2):
        Image.fromarray(np.full((8, 8, 3), 60 * i, np.uint8)).save(data / f"{i}.png")
    cache_dir = tmp_path / "team cache" / "c"
    assert _cli("warm", data, "--engine", "bicubic", "--cache-dir", cache_dir, "--no-progress", cwd=tmp_path).returncode == 0
    (cache_dir / "writers.lock").unlink(missing_ok=True)
    (cache_dir / "writers.lock").mkdir()
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(data / "new.png")
    failed = _cli("warm", data, "--engine", "bicubic", "--cache-dir", cache_dir, "--no-progress", cwd=tmp_path)
    assert failed.returncode == 1
    advice = [part for part in failed.stderr.split("`") if part.startswith("sr-augment ")]
    assert advice, failed.stderr
    fix = subprocess.run([sys.executable, "-I", "-m", "sr_augment", *shlex.split(advice[0])[1:]], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert fix.returncode == 0, fix.stdout + fix.stderr
    again = _cli("warm", data, "--engine", "bicubic", "--cache-dir", cache_dir, "--no-progress", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert os.path.isfile(cache_dir / "writers.lock")
