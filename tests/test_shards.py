"""Shards (export / import) and merge: pixel-exact round trips, untrusted shards refused by member name,
and shards any WebDataset or pyarrow user can read without sr-augment."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from sr_augment.cache import SRCache, codec
from sr_augment.cache.inventory import by_engine
from sr_augment.cache.shards import ShardWriter, written_keys
from sr_augment.cli import main
from sr_augment.engines import BicubicEngine

pyarrow_parquet = pytest.importorskip("pyarrow.parquet", reason="shards need the [shards] extra (pyarrow)")
pytest.importorskip("fsspec", reason="shards need the [shards] extra (fsspec)")


def _warmed(cache_dir: Path, rng, count: int = 6, codec_name: str = "webp") -> list[tuple[np.ndarray, int]]:
    """Entries of several sizes (inline rows and value files), two variants each."""
    images = [rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for side in [8] * (count // 2) + [40] * (count - count // 2)]
    with SRCache(cache_dir, codec=codec_name) as cache:
        cache.get_or_create_many(images * 2, BicubicEngine(), variants=[0] * count + [1] * count)
    return [(image, variant) for variant in (0, 1) for image in images]


def _run(capsys, *argv) -> tuple[int, dict, str]:
    code = main([*argv, "--json", "--no-progress"])
    out, err = capsys.readouterr()
    return code, json.loads(out.strip().splitlines()[-1]), err


@pytest.mark.parametrize("codec_name", ["webp", "png", "raw"])
def test_export_then_import_gives_back_every_entry_pixel_exact_and_reruns_copy_nothing(capsys, tmp_path, rng, codec_name):
    entries = _warmed(tmp_path / "cache", rng, codec_name=codec_name)
    code, report, _ = _run(capsys, "export", "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "shards"),
                           "--shard-size", "20KB")
    assert code == 0 and report["copied"] == 12 and len(report["shards"]) > 1 and report["mb_per_s"] > 0
    code, report, _ = _run(capsys, "import", str(tmp_path / "shards"), "--cache-dir", str(tmp_path / "node"))
    assert code == 0 and (report["copied"], report["present"], report["refused"]) == (12, 0, 0)
    engine = BicubicEngine()
    with SRCache(tmp_path / "cache") as source, SRCache(tmp_path / "node") as node:
        for image, variant in entries:
            expected = source.get(image, engine, variant=variant)
            got = node.get(image, engine, variant=variant)
            assert got is not None and got.dtype == np.uint8 and np.array_equal(got, expected)
        assert node.stats().misses == 0
    assert by_engine(tmp_path / "node")[0]["entries"] == 12  # the meta travelled with the records
    code, report, _ = _run(capsys, "import", str(tmp_path / "shards"), "--cache-dir", str(tmp_path / "node"))
    assert (report["copied"], report["present"]) == (0, 12)
    code, report, _ = _run(capsys, "export", "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "shards"))
    assert (report["copied"], report["present"], report["shards"]) == (0, 12, [])


def _shard_and_manifest(folder: Path):
    table = pyarrow_parquet.read_table(folder / "manifest").to_pylist()
    return table


@pytest.mark.parametrize("with_manifest", [True, False])
def test_a_tampered_shard_member_is_refused_with_its_name_and_nothing_else_is_lost(capsys, tmp_path, rng, with_manifest):
    _warmed(tmp_path / "cache", rng)
    main(["export", "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "shards"), "--no-progress"])
    row = _shard_and_manifest(tmp_path / "shards")[3]
    shard = tmp_path / "shards" / row["shard"]
    data = bytearray(shard.read_bytes())
    data[row["image_offset"] + row["image_size"] // 2] ^= 0x55  # one flipped byte inside one image member
    shard.write_bytes(bytes(data))
    if not with_manifest:
        for part in (tmp_path / "shards" / "manifest").iterdir():
            part.unlink()
    code, report, err = _run(capsys, "import", str(tmp_path / "shards"), "--cache-dir", str(tmp_path / "node"))
    assert code == 1 and (report["copied"], report["refused"]) == (11, 1)
    assert f"{row['shard']}: {row['image_member']}:" in err, err
    assert row["key"] not in SRCache(tmp_path / "node") and len(SRCache(tmp_path / "node")) == 11


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> None:
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, None if data is None else io.BytesIO(data))


def _info(name: str, size: int = 0, kind=tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.type, info.linkname = size, kind, link
    return info


def test_hostile_members_are_refused_by_name_never_written_and_the_good_sample_still_imports(capsys, tmp_path, rng):
    _warmed(tmp_path / "cache", rng, count=2)
    main(["export", "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "shards"), "--no-progress"])
    good = next((tmp_path / "shards").glob("*.tar"))
    with tarfile.open(good) as tar:
        sample = [(m, tar.extractfile(m).read()) for m in tar.getmembers()[:2]]  # one whole sample
    stem = sample[0][0].name.split(".")[0]
    big = b"{" + b" " * 70_000 + b"}"
    hostile = [(_info("../escape.json", 2), b"{}"), (_info(f"sub/{stem}.json", 2), b"{}"),
               (_info(f"{stem}.webp", kind=tarfile.SYMTYPE, link="/etc/passwd"), None),
               (_info("0" * 32 + "_0.json", kind=tarfile.LNKTYPE, link="x"), None),
               (_info("1" * 32 + "_0.json", len(big)), big), (_info("notes.txt", 5), b"hello"),
               (_info("2" * 32 + "_0.webp", 9), b"not webp!"), (_info("2" * 32 + "_0.json", 2), b"[]")]
    evil = tmp_path / "evil" / "evil.tar"
    evil.parent.mkdir()
    _tar(evil, hostile + [(m, d) for m, d in sample])
    code, report, err = _run(capsys, "import", str(evil), "--cache-dir", str(tmp_path / "node"))
    assert code == 1 and report["copied"] == 1
    for name in ("../escape.json", f"sub/{stem}.json", f"{stem}.webp", "0" * 32 + "_0.json", "1" * 32 + "_0.json",
                 "notes.txt", "2" * 32 + "_0.json"):
        assert f"evil.tar: {name}:" in err, (name, err)
    assert "a link" in err and "over the 65536-byte limit" in err and "unusable sample JSON" in err
    assert not (tmp_path / "escape.json").exists() and sorted(p.name for p in evil.parent.iterdir()) == ["evil.tar"]


def test_a_shard_cut_off_midway_imports_the_samples_before_the_break(capsys, tmp_path, rng):
    _warmed(tmp_path / "cache", rng)
    main(["export", "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "shards"), "--no-progress"])
    rows = _shard_and_manifest(tmp_path / "shards")
    shard = tmp_path / "shards" / rows[0]["shard"]
    shard.write_bytes(shard.read_bytes()[: rows[5]["image_offset"] + 10])  # inside the 6th sample's image
    code, report, err = _run(capsys, "import", str(shard), "--cache-dir", str(tmp_path / "node"))
    assert code == 1 and report["copied"] == 5 and "breaks off" in err


@pytest.mark.slow  # imports webdataset and pyarrow
def test_shards_are_read_by_webdataset_and_pyarrow_without_sr_augment(capsys, tmp_path, rng):
    entries = _warmed(tmp_path / "cache", rng)
    main(["export", "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "shards"), "--shard-size", "30KB",
          "--no-progress"])
    script = r"""
import glob, io, json, sys, tarfile
import numpy as np, pyarrow.parquet as pq
from PIL import Image
out = sys.argv[1]
manifest = pq.read_table(out + "/manifest").to_pylist()
shards = sorted(glob.glob(out + "/*.tar"))
try:
    import webdataset as wds
    samples = [(s["__key__"], s["webp"], json.loads(s["json"])) for s in wds.WebDataset(shards, shardshuffle=False)]
    reader = "webdataset"
except ImportError:  # plain tarfile: members of a sample are next to each other
    samples, reader = [], "tarfile"
    for shard in shards:
        members = {}
        with tarfile.open(shard) as tar:
            for m in tar:
                members.setdefault(m.name.split(".")[0], {})[m.name.split(".")[1]] = tar.extractfile(m).read()
        samples += [(k, v["webp"], json.loads(v["json"])) for k, v in members.items()]
for row in manifest:  # the manifest's offsets and sizes address the image bytes inside the shard
    with open(out + "/" + row["shard"], "rb") as fh:
        fh.seek(row["image_offset"])
        assert fh.read(row["image_size"]) == next(s[1] for s in samples if s[0] + ".webp" == row["image_member"])
pixels = {meta["key"]: np.asarray(Image.open(io.BytesIO(image)).convert("RGB")).tolist() for _, image, meta in samples}
print(json.dumps({"reader": reader, "sr_augment": "sr_augment" in sys.modules, "pixels": pixels,
                  "meta": [meta for _, _, meta in samples][0], "manifest_keys": sorted(r["key"] for r in manifest)}))
"""
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "shards")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert not result["sr_augment"] and len(result["pixels"]) == len(entries) == len(result["manifest_keys"])
    meta = result["meta"]
    assert (meta["engine"], meta["mode"], meta["scale"], meta["codec"]) == ("bicubic", "upscale", 4, "webp")
    assert {"fingerprint", "variant", "seed", "source_size", "record_crc32"} <= set(meta)
    with SRCache(tmp_path / "cache") as cache:
        engine = BicubicEngine()
        for image, variant in entries:
            key = cache.key(image, engine, variant=variant)
            assert np.array_equal(np.array(result["pixels"][key], np.uint8), cache.get(image, engine, variant=variant))


def test_records_stored_before_their_meta_export_import_and_count_as_unknown(capsys, tmp_path, rng):
    image = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    engine = BicubicEngine()
    with SRCache(tmp_path / "cache") as cache:  # a record as sr-augment wrote it before entries had meta
        key = cache.key(image, engine)
        assert cache._add(key, codec.encode(engine.upscale([image], [0])[0]))
    code, report, _ = _run(capsys, "export", "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "shards"))
    assert code == 0 and report["copied"] == 1
    code, report, _ = _run(capsys, "import", str(tmp_path / "shards"), "--cache-dir", str(tmp_path / "node"))
    assert code == 0 and report["copied"] == 1
    assert np.array_equal(SRCache(tmp_path / "node").get(image, engine), SRCache(tmp_path / "cache").get(image, engine))
    assert [(g["engine"], g["mode"], g["entries"]) for g in by_engine(tmp_path / "node")] == [("unknown", "unknown", 1)]


def test_merge_joins_caches_verifies_every_record_and_refuses_a_damaged_one_by_key(capsys, tmp_path, rng):
    first = _warmed(tmp_path / "a", rng, count=4)
    second = _warmed(tmp_path / "b", rng, count=4) + first[:2]
    with SRCache(tmp_path / "b") as cache:  # b also holds two of a's entries
        cache.get_or_create_many([image for image, _ in first[:2]], BicubicEngine(), variants=[v for _, v in first[:2]])
    victim = max((tmp_path / "b" / "entries").rglob("*.val"), key=lambda p: p.name)
    data = bytearray(victim.read_bytes())
    data[-5] ^= 0xFF
    victim.write_bytes(bytes(data))
    code, report, err = _run(capsys, "merge", str(tmp_path / "a"), str(tmp_path / "b"), "--into", str(tmp_path / "all"))
    assert code == 1 and report["refused"] == 1 and report["present"] == 2 and report["copied"] == 8 + 10 - 2 - 1
    assert "checksum mismatch" in err and str(tmp_path / "b") in err
    with SRCache(tmp_path / "all") as merged, SRCache(tmp_path / "a") as a:
        for image, variant in first:
            assert np.array_equal(merged.get(image, BicubicEngine(), variant=variant),
                                  a.get(image, BicubicEngine(), variant=variant))
    assert len(SRCache(tmp_path / "all")) == 15 and len(second) == 10


def test_the_shard_writer_commits_a_shard_with_its_manifest_so_a_rerun_can_skip_what_is_written(tmp_path, rng):
    _warmed(tmp_path / "cache", rng, count=2)
    from sr_augment.cache.transfer import TransferReport, iter_records

    records = list(iter_records(tmp_path / "cache", TransferReport()))
    writer = ShardWriter(str(tmp_path / "out"), prefix="run1", shard_size=1)  # one sample per shard
    for key, record in records:
        writer.add(key, record)
    assert written_keys(str(tmp_path / "out")) == {key for key, _ in records[:-1]}  # the last shard is still open
    assert writer.close() == [f"run1-{i:06d}.tar" for i in range(len(records))]
    assert written_keys(str(tmp_path / "out")) == {key for key, _ in records}
    with pytest.raises(codec.DamagedEntry):
        ShardWriter(str(tmp_path / "out2")).add(records[0][0], records[0][1][:-3] + b"xyz")
