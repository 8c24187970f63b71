"""The portable form of a cache: WebDataset tar shards plus a Parquet manifest, on any fsspec filesystem.

Why: a diskcache folder is SQLite, unsafe on network filesystems and tied to one machine's layout;
training nodes and object stores want plain files any tool can read. Layout under `OUT` (a local
folder or any fsspec URL, e.g. `s3://bucket/sr-shards`):

    OUT/<prefix>-000000.tar        one sample per entry, two members next to each other:
        <stem>.webp | <stem>.png   the stored image, byte for byte as in the record (raw records: PNG)
        <stem>.json                key, engine, fingerprint, mode, scale, variant, seed, source size,
                                   codec, the record's CRC32 and header (see `sample_json`)
    OUT/manifest/<prefix>-000000.parquet   one row per sample: key -> shard, member names, data
                                   offsets, sizes and SHA-256s, plus the entry's meta as columns

`<stem>` is the cache key with ':' written '_' (a name every filesystem takes; WebDataset's `__key__`).
A shard's manifest part is written after its tar is complete: it is the shard's commit mark (object
stores have no rename), so `written_keys` (resume) only trusts shards with a manifest, and only while
their tar is there and complete: the manifest is the truth of what should be there, so a shard lost
later is written again (`export`, the Ray warm) or reported missing (`import`).
`pq.read_table("OUT/manifest")` reads the whole manifest; `webdataset.WebDataset("OUT/x-{000000..000009}.tar")`
reads the samples. Tar files are written with the standard library's `tarfile` (USTAR, fixed owner and
mtime, so a data offset is the header's offset + 512); the reading side, which treats shards as
untrusted, is `shard_reader`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import re
import secrets
import stat
import struct
import tarfile
import time

import numpy as np
from PIL import Image

from sr_augment.cache import codec, entrymeta
from sr_augment.errors import NotAFile  # noqa: F401  (defined in errors, named here too)

FORMAT = "sr-augment-shard/1"
DEFAULT_SHARD_SIZE = 1 << 30
IMAGE_EXTS = ("webp", "png")
MEMBER = re.compile(r"([0-9a-f]{32}_[0-9]{1,9})\.(webp|png|json)")
"""The only member names a shard may hold: no folders, no other names."""
MANIFEST_DIR = "manifest"
SHARD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,100}-[0-9]{6}\.tar")
"""The names `ShardWriter` gives shards: `<prefix>-NNNNNN.tar`."""
_TAR_HEADER = tarfile.BLOCKSIZE


def stem_of(key: str) -> str:
    return key.replace(":", "_")


def key_of(stem: str) -> str:
    base, _, variant = stem.rpartition("_")
    return f"{base}:{variant}"


def parse_size(text) -> int:
    """Bytes from `1GB`, `500MiB`, `2e9` or an int."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*([0-9.e+]+)\s*([kmgt]?)(i?b?)\s*", str(text).lower())
    if not match:
        raise ValueError(f"not a size: {text!r} (e.g. 1GB, 500MiB, 2000000)")
    number, unit, binary = float(match.group(1)), match.group(2), match.group(3).startswith("i")
    power = "kmgt".index(unit) + 1 if unit else 0
    return int(number * (1024 if binary else 1000) ** power)


def filesystem(uri: str, storage_options: dict | None = None):
    """(fsspec filesystem, path) of a local path or URL."""
    import fsspec

    return fsspec.core.url_to_fs(str(uri), **(storage_options or {}))


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def pixels_digest(image: np.ndarray) -> str:
    digest = hashlib.blake2b(repr(tuple(image.shape)).encode(), digest_size=16)
    digest.update(memoryview(np.ascontiguousarray(image)).cast("B"))
    return digest.hexdigest()


def sample_json(key: str, record: bytes) -> tuple[dict, str, bytes]:
    """(the JSON member's object, the image member's extension, the image member's bytes) of one record.
    WebP and PNG payloads are exported byte for byte; other codecs (raw) as PNG, with a digest of the
    pixels so an import can prove them exact."""
    header, header_bytes, payload = codec.split(record)  # DamagedEntry when the checksum fails
    meta = entrymeta.of_header(header)
    info = {"format": FORMAT, "key": key, "engine": meta.get("engine"), "fingerprint": meta.get("fingerprint"),
            "mode": meta.get("mode"), "scale": meta.get("scale"), "variant": entrymeta.variant_of(key),
            "seed": meta.get("seed"), "source_size": meta.get("source"), "size": list(header["shape"][:2]),
            "stored_codec": header["codec"], "record_crc32": struct.unpack_from("<I", record, 4)[0],
            "record_header": header_bytes.decode()}
    if header["codec"] in IMAGE_EXTS:
        info["codec"] = header["codec"]
        return info, header["codec"], bytes(payload)
    pixels = codec.decode(record)
    info["codec"], info["pixels_blake2b"] = "png", pixels_digest(pixels)
    return info, "png", png_bytes(pixels)


MANIFEST_COLUMNS = ("key", "shard", "image_member", "image_offset", "image_size", "image_sha256", "json_member",
                    "json_offset", "json_size", "json_sha256", "record_crc32", "engine", "fingerprint", "mode",
                    "scale", "variant", "codec")


def manifest_schema():
    import pyarrow as pa

    types = {"image_offset": pa.int64(), "image_size": pa.int64(), "json_offset": pa.int64(), "json_size": pa.int64(),
             "record_crc32": pa.int64(), "scale": pa.int32(), "variant": pa.int32()}
    return pa.schema([(name, types.get(name, pa.string())) for name in MANIFEST_COLUMNS])


class ShardWriter:
    """Writes records as shards under `out` (see the module docstring); the unit `export` and the Ray
    warm write with. `add(key, record)` takes a record from `codec.encode(result, meta=entrymeta.make(...))`
    (its checksum is verified; a damaged one raises `codec.DamagedEntry`). Shards are `<prefix>-NNNNNN.tar`
    (default prefix: a time stamp and a random token, so writers never collide); a shard is closed and
    its manifest part written when the next sample would take it past `shard_size` bytes, and on `close()`.

    Example:
        >>> with ShardWriter("/tmp/out") as writer:          # doctest: +SKIP
        ...     writer.add(key, record)
    """

    def __init__(self, out: str, *, prefix: str | None = None, shard_size: int = DEFAULT_SHARD_SIZE,
                 storage_options: dict | None = None, mtime: float | None = None):
        self.fs, self.root = filesystem(out, storage_options)
        self.root = self.root.rstrip("/")
        self.prefix = prefix or f"sr-{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(3)}"
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,100}", self.prefix):
            raise ValueError(f"shard prefix {self.prefix!r}: use letters, digits, '.', '_' and '-'")
        self.shard_size = int(shard_size)
        self.mtime = int(time.time() if mtime is None else mtime)
        self.fs.makedirs(f"{self.root}/{MANIFEST_DIR}", exist_ok=True)
        self.shards: list[str] = []
        self.samples = 0
        self.bytes = 0
        self._index, self._file, self._tar, self._rows = 0, None, None, []

    def add(self, key: str, record: bytes) -> None:
        if not isinstance(key, str) or not entrymeta.KEY.fullmatch(key):
            raise ValueError(f"{key!r} is not a cache entry key")
        info, ext, image = sample_json(key, record)
        text = json.dumps(info, sort_keys=True).encode()
        if self._tar is not None and self._rows and self._tar.offset + len(image) + len(text) + 4 * _TAR_HEADER > self.shard_size:
            self._finish_shard()
        if self._tar is None:
            self._open_shard()
        stem = stem_of(key)
        image_at, image_sha = self._member(f"{stem}.{ext}", image)
        json_at, json_sha = self._member(f"{stem}.json", text)
        self._rows.append({"key": key, "shard": self.shards[-1], "image_member": f"{stem}.{ext}", "image_offset": image_at,
                           "image_size": len(image), "image_sha256": image_sha, "json_member": f"{stem}.json",
                           "json_offset": json_at, "json_size": len(text), "json_sha256": json_sha,
                           "record_crc32": info["record_crc32"], "engine": info["engine"],
                           "fingerprint": info["fingerprint"], "mode": info["mode"], "scale": info["scale"],
                           "variant": info["variant"], "codec": ext})
        self.samples += 1
        self.bytes += len(image) + len(text)

    def _open_shard(self) -> None:
        name = f"{self.prefix}-{self._index:06d}.tar"
        self._index += 1
        self.shards.append(name)
        self._file = self.fs.open(f"{self.root}/{name}", "wb")
        self._tar = tarfile.open(fileobj=self._file, mode="w|", format=tarfile.USTAR_FORMAT)

    def _member(self, name: str, data: bytes) -> tuple[int, str]:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode, info.type = len(data), self.mtime, 0o444, tarfile.REGTYPE
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        at = self._tar.offset + _TAR_HEADER  # USTAR, a short name: one header block, then the data
        self._tar.addfile(info, io.BytesIO(data))
        return at, hashlib.sha256(data).hexdigest()

    def _finish_shard(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._tar.close()
        self._file.close()
        table = pa.Table.from_pylist(self._rows, schema=manifest_schema())
        with self.fs.open(f"{self.root}/{MANIFEST_DIR}/{self.shards[-1][:-4]}.parquet", "wb") as fh:
            pq.write_table(table, fh)  # after the tar: the manifest part is the shard's commit mark
        self._tar, self._file, self._rows = None, None, []

    def close(self) -> list[str]:
        """Finish the open shard; returns the shard names written (relative to `out`)."""
        if self._tar is not None:
            self._finish_shard()
        return list(self.shards)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _is_local(fs) -> bool:
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(fs, LocalFileSystem)


def open_regular(fs, path: str):
    """`path` on `fs` opened for reading in binary mode, if it is a regular file; `NotAFile` naming it
    otherwise. Locally the file is opened with O_NONBLOCK and checked with fstat before a byte is read
    (as `rows.read_value_file` does for value files), so a FIFO named `x.tar` cannot block the open or
    the read, and the file checked is the file read (no race with a swap after the check)."""
    if not _is_local(fs):
        kind = fs.info(path).get("type")
        if kind != "file":
            raise NotAFile(f"{path}: not a regular file ({kind}); not read")
        return fs.open(path, "rb")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotAFile(f"{path}: not a regular file (a FIFO, device, folder or socket); not read")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _manifest_parts(fs, root: str) -> tuple[list[tuple[str, list[dict]]], list[str]]:
    """([(part path, its rows)], problems) of the manifest parts under `root`; a part that cannot be read,
    is not a regular file or has the wrong columns is a problem, not a part."""
    import pyarrow.parquet as pq

    parts, problems = [], []
    for path in sorted(fs.glob(f"{root.rstrip('/')}/{MANIFEST_DIR}/*.parquet")):
        try:
            with open_regular(fs, path) as fh:
                table = pq.read_table(fh, columns=list(MANIFEST_COLUMNS))
            if not table.schema.equals(manifest_schema(), check_metadata=False):
                raise ValueError(f"columns are {table.schema.names} with types {table.schema.types}")
            parts.append((path, [row for row in table.to_pylist() if isinstance(row["shard"], str)
                                 and isinstance(row["key"], str)]))
        except Exception as exc:  # pyarrow raises many types on a bad file: report and go on
            problems.append(f"{path}: unreadable manifest part ({type(exc).__name__}: {exc}); ignored")
    return parts, problems


def read_manifest(out: str, storage_options: dict | None = None, fs=None) -> tuple[dict[str, dict], list[str]]:
    """({shard name: {key: manifest row}}, problems) of the manifest parts under `out`. Parts that cannot
    be read, are not regular files or have the wrong columns are reported and ignored (their shards are
    then read without the member checksums). With `fs`, `out` is a path on that filesystem."""
    fs, root = (fs, out) if fs is not None else filesystem(out, storage_options)
    parts, problems = _manifest_parts(fs, root)
    by_shard: dict[str, dict] = {}
    for _, rows in parts:
        for row in rows:
            by_shard.setdefault(row["shard"], {})[row["key"]] = row
    return by_shard, problems


def shard_end(rows) -> int:
    """The least size of a shard holding these manifest rows: the end of its last member's data."""
    return max((max((r.get(f"{c}_offset") or 0) + (r.get(f"{c}_size") or 0) for c in ("image", "json")) for r in rows),
               default=0)


def lost_shards(fs, root: str, by_shard: dict[str, dict]) -> dict[str, str]:
    """{shard: why} of the shards the manifest lists that are not under `root` as a regular file at least
    as long as its members (deleted, cut short, replaced by something else). One listing, no reads."""
    root = root.rstrip("/")
    try:
        listed = {posixpath.basename(e["name"].rstrip("/")): e for e in fs.ls(root, detail=True)}
    except FileNotFoundError:
        listed = {}
    lost = {}
    for shard, rows in by_shard.items():
        entry = listed.get(shard)
        if entry is None or posixpath.basename(shard) != shard:
            lost[shard] = "the shard file is gone"
        elif entry.get("type") != "file" or entry.get("islink"):
            lost[shard] = "not a regular file"
        elif (entry.get("size") or 0) < shard_end(rows.values()):
            lost[shard] = f"cut short: {entry.get('size') or 0} bytes, its members end at byte {shard_end(rows.values())}"
    return lost


def written_keys(out: str, storage_options: dict | None = None, lost: dict | None = None) -> set[str]:
    """Keys of the committed shards under `out` (those with a manifest part) whose tar is there and
    complete: what a rerun may skip. The manifest is the truth of what should be there, so the keys of a
    shard it lists that is gone or cut short are not written; with `lost`, it is filled {shard: (why,
    [its keys])} so the caller can say so and `retire` the stale parts after writing the keys again."""
    fs, root = filesystem(out, storage_options)
    by_shard, _ = read_manifest(root, fs=fs)
    gone = lost_shards(fs, root, by_shard)
    if lost is not None:
        lost.update({shard: (why, sorted(by_shard[shard])) for shard, why in gone.items()})
    return {key for shard, rows in by_shard.items() if shard not in gone for key in rows}


def retire(out: str, lost: dict, storage_options: dict | None = None) -> list[str]:
    """Remove the manifest parts (then what is left of the tar) of shards found lost (`written_keys`'s
    `lost`) whose every key is now written again in complete shards, so the manifest lists only what is
    there; a lost shard with a key not written again keeps its part (`import` keeps reporting it
    missing). Only a part named after its shard and listing no other shard is removed, and only names a
    shard writer makes. Returns the parts removed."""
    fs, root = filesystem(out, storage_options)
    root = root.rstrip("/")
    written = written_keys(out, storage_options)
    parts, _ = _manifest_parts(fs, root)
    removed = []
    for path, rows in parts:
        shards = {row["shard"] for row in rows}
        if len(shards) != 1:
            continue
        shard = shards.pop()
        if shard not in lost or not SHARD_NAME.fullmatch(shard) or posixpath.basename(path) != f"{shard[:-4]}.parquet":
            continue
        if not {row["key"] for row in rows} <= written:
            continue
        fs.rm(path)  # first the commit mark: a crash after it leaves an uncommitted partial tar, as a preemption does
        removed.append(path)
        try:
            fs.rm(f"{root}/{shard}")
        except FileNotFoundError:
            pass
    return removed
