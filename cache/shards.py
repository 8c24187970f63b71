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
from sr_augment.errors import NotARegularFile  # noqa: F401  (defined in errors, named here too)

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


def parse_byte_size(text) -> int:
    """A number of bytes from `1GB`, `500MiB`, `2e9` or an int."""
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
        self._index, self._file, self._tar, self._rows, self._part = 0, None, None, [], None
        self.leftovers = remove_leftovers(self.fs, self.root)  # of writers that crashed here, never a live one's

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
        if _is_local(self.fs):  # a temporary name, renamed when complete: no cut-off shard under a final name
            self._file, self._part = _temporary(self.root, name)
        else:  # object stores have no rename: written in place, removed on failure (`abort`)
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

        shard = f"{self.root}/{self.shards[-1]}"
        self._tar.close()
        self._file.flush()
        if self._part is not None:
            os.replace(self._part, shard)  # still locked: a cleaner never takes a complete shard for a leftover
            self._part = None
        self._file.close()
        self._tar, self._file = None, None
        table = pa.Table.from_pylist(self._rows, schema=manifest_schema())
        manifest = f"{self.root}/{MANIFEST_DIR}/{self.shards[-1][:-4]}.parquet"
        try:  # after the tar: the manifest part is the shard's commit mark
            if _is_local(self.fs):
                fh, part = _temporary(f"{self.root}/{MANIFEST_DIR}", posixpath.basename(manifest))
                try:
                    with fh:
                        pq.write_table(table, fh)
                    os.replace(part, manifest)
                except BaseException:
                    _remove(part)
                    raise
            else:
                with self.fs.open(manifest, "wb") as fh:
                    pq.write_table(table, fh)
        except BaseException:  # not committed: the tar goes too, so nothing is left that no manifest lists
            self.shards.pop()
            try:
                self.fs.rm(shard)
            except OSError:
                pass
            raise
        self._rows = []

    def close(self) -> list[str]:
        """Finish the open shard; returns the shard names written (relative to `out`). On an error (a full
        disk) the open shard is removed (`abort`) before the error is raised."""
        if self._tar is not None:
            try:
                self._finish_shard()
            except BaseException:
                self.abort()
                raise
        return list(self.shards)

    def abort(self) -> None:
        """Drop the open shard (after a failed write, an interrupt): its partial tar is removed, committed
        shards stay. Never raises."""
        tar, fh, part = self._tar, self._file, self._part
        self._tar, self._file, self._part, self._rows = None, None, None, []
        if fh is None:
            return
        name = self.shards.pop()
        for close in (getattr(tar, "close", None), fh.close):
            try:  # the tar's close writes its end blocks: on a full disk it fails too
                if close is not None:
                    close()
            except Exception:  # noqa: BLE001  (the file is dropped either way)
                pass
        if part is not None:
            _remove(part)
            return
        try:
            self.fs.rm(f"{self.root}/{name}")
        except Exception:  # noqa: BLE001  (an object store may never have made it)
            pass

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, kind, *exc) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()


LEFTOVER = re.compile(r"\.([A-Za-z0-9][A-Za-z0-9._-]{0,100}-[0-9]{6}\.(?:tar|parquet))\.[0-9a-f]{16}\.part")
"""The temporary names a local `ShardWriter` writes a shard or manifest part under before renaming it."""


def _temporary(folder: str, name: str):
    """(a new file opened for writing, its path): `folder/.<name>.<16 hex>.part`, created exclusively
    (O_EXCL | O_NOFOLLOW, so nothing planted there is written through) and locked (flock) for as long as
    it is open, so `remove_leftovers` tells a crashed writer's file (unlocked) from a live one's."""
    import fcntl

    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    while True:
        path = f"{folder}/.{name}.{secrets.token_hex(8)}.part"
        fd = os.open(path, flags, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.path.samestat(os.fstat(fd), os.lstat(path)):  # not removed as a leftover before it was locked
                return os.fdopen(fd, "wb"), path
        except FileNotFoundError:
            pass
        except BaseException:
            os.close(fd)
            _remove(path)
            raise
        os.close(fd)


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def remove_leftovers(fs, root: str) -> list[str]:
    """Remove the temporary files (`LEFTOVER` names, regular files) that local shard writers which crashed
    left under `root` and its manifest folder; a live writer's file is locked and stays. Returns the
    paths removed. Object stores have none (shards are written in place there)."""
    if not _is_local(fs):
        return []
    import fcntl

    removed = []
    for folder in (root, f"{root}/{MANIFEST_DIR}"):
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        for name in names:
            if not LEFTOVER.fullmatch(name):
                continue
            path = f"{folder}/{name}"
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
            except OSError:  # a link, gone meanwhile, not ours to read: left alone
                continue
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    continue
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:  # a live writer holds it
                    continue
                if os.path.samestat(os.fstat(fd), os.lstat(path)):
                    os.unlink(path)
                    removed.append(path)
            except OSError:
                continue
            finally:
                os.close(fd)
    return removed


def _is_local(fs) -> bool:
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(fs, LocalFileSystem)


def open_regular(fs, path: str):
    """`path` on `fs` opened for reading in binary mode, if it is a regular file; `NotARegularFile` naming it
    otherwise. Locally the file is opened with O_NONBLOCK and checked with fstat before a byte is read
    (as `rows.read_value_file` does for value files), so a FIFO named `x.tar` cannot block the open or
    the read, and the file checked is the file read (no race with a swap after the check)."""
    if not _is_local(fs):
        kind = fs.info(path).get("type")
        if kind != "file":
            raise NotARegularFile(f"{path}: not a regular file ({kind}); not read")
        return fs.open(path, "rb")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotARegularFile(f"{path}: not a regular file (a FIFO, device, folder or socket); not read")
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


def parts_listing(out: str, shard: str, storage_options: dict | None = None) -> list[str]:
    """Names of the manifest parts under `out` with a row of `shard`."""
    fs, root = filesystem(out, storage_options)
    return sorted(posixpath.basename(path) for path, rows in _manifest_parts(fs, root)[0]
                  if any(row["shard"] == shard for row in rows))


CONFLICT = "conflict"
"""The field `read_manifest` adds to the row of a key a shard's manifest lists twice with different rows."""


def read_manifest(out: str, storage_options: dict | None = None, fs=None) -> tuple[dict[str, dict], list[str]]:
    """({shard name: {key: manifest row}}, problems) of the manifest parts under `out`. Parts that cannot
    be read, are not regular files or have the wrong columns are reported and ignored (their shards are
    then read without the member checksums). With `fs`, `out` is a path on that filesystem.

    A key listed twice for one shard with identical rows (a part copied twice, a row duplicated) is
    harmless: one row stands for both. A key listed twice for one shard with different rows cannot be
    told true from forged: its row carries `CONFLICT` (why), `import` refuses that sample by name and
    `export` writes the shard again. One key in two shards is normal (a sample written again)."""
    fs, root = (fs, out) if fs is not None else filesystem(out, storage_options)
    parts, problems = _manifest_parts(fs, root)
    by_shard: dict[str, dict] = {}
    for _, rows in parts:
        for row in rows:
            listed = by_shard.setdefault(row["shard"], {})
            first = listed.get(row["key"])
            if first is None:
                listed[row["key"]] = row
            elif {k: v for k, v in first.items() if k != CONFLICT} != row:
                listed[row["key"]] = {**first, CONFLICT: "listed twice in the shard's manifest with different rows"}
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


_MAX_JSON_MEMBER = 64 * 1024  # as `shard_reader.MAX_JSON_BYTES`: a JSON member is read whole to check it


def _layout_problem(fh, rows: dict) -> str | None:
    """Why the open shard `fh` does not hold exactly what its manifest rows list (None when it does): every
    member a tar header of the listed name and size at the listed offset, one after the other from byte
    0 with no member between them and the end of the archive after the last; each JSON member's bytes
    match their SHA-256. Reads the tar headers and the small JSON members, never the images' pixels."""
    members = []
    for key, row in sorted(rows.items()):
        if row.get(CONFLICT):
            return f"its manifest lists {key} twice with different rows"
        for column, exts in (("image", IMAGE_EXTS), ("json", ("json",))):
            name, at, size = row.get(f"{column}_member"), row.get(f"{column}_offset"), row.get(f"{column}_size")
            match = MEMBER.fullmatch(name) if isinstance(name, str) else None
            if (match is None or match.group(1) != stem_of(key) or match.group(2) not in exts or type(at) is not int
                    or type(size) is not int or size < 0 or (column == "json" and size > _MAX_JSON_MEMBER)):
                return f"its manifest row of {key} is not one a shard writer makes"
            members.append((at, size, name, row.get("json_sha256") if column == "json" else None))
    at_header = 0
    for at, size, name, sha in sorted(members):
        if at != at_header + _TAR_HEADER:
            return f"{name} is not at byte {at} where its manifest lists it (members missing, added or moved)"
        fh.seek(at_header)
        try:
            info = tarfile.TarInfo.frombuf(fh.read(_TAR_HEADER), "utf-8", "surrogateescape")
        except tarfile.TarError:
            return f"no tar header of {name} at byte {at_header}"
        if info.name != name or info.size != size or not info.isreg():
            return f"holds {info.name!r} ({info.size} bytes) where its manifest lists {name} ({size} bytes)"
        if sha is not None and hashlib.sha256(fh.read(size)).hexdigest() != sha:
            return f"{name} does not match its SHA-256 in the manifest (changed after export)"
        at_header = at + -(-size // _TAR_HEADER) * _TAR_HEADER
    fh.seek(at_header)
    if fh.read(_TAR_HEADER) != bytes(_TAR_HEADER):
        return f"holds a member its manifest does not list, or breaks off, at byte {at_header}"
    return None


def bad_shards(fs, root: str, by_shard: dict[str, dict]) -> dict[str, str]:
    """{shard: why} of the shards the manifest lists that do not hold what it lists: `lost_shards` (gone,
    cut short, not a regular file), then each one left read for its layout (`_layout_problem`: tar
    headers and JSON members, not pixels). What an export rerun must write again. Image bytes changed in
    place at the same size are not seen here; `import` refuses them by their SHA-256."""
    bad = lost_shards(fs, root, by_shard)
    for shard, rows in by_shard.items():
        if shard in bad:
            continue
        try:
            with open_regular(fs, f"{root.rstrip('/')}/{shard}") as fh:
                why = _layout_problem(fh, rows)
        except (OSError, ValueError) as exc:
            why = f"cannot be read ({type(exc).__name__}: {exc})"
        if why:
            bad[shard] = f"does not hold what its manifest lists: {why}"
    return bad


def written_keys(out: str, storage_options: dict | None = None, lost: dict | None = None) -> set[str]:
    """Keys of the committed shards under `out` (those with a manifest part) that hold what their manifest
    lists (`bad_shards`): what a rerun may skip. The manifest is the truth of what should be there, so the
    keys of a shard it lists that is gone, cut short or not as listed are not written; with `lost`, it is
    filled {shard: (why, [its keys])} so the caller can say so and `retire` those shards after writing the
    keys again."""
    fs, root = filesystem(out, storage_options)
    by_shard, _ = read_manifest(root, fs=fs)
    gone = bad_shards(fs, root, by_shard)
    if lost is not None:
        lost.update({shard: (why, sorted(by_shard[shard])) for shard, why in gone.items()})
    return {key for shard, rows in by_shard.items() if shard not in gone for key in rows}


def retire(out: str, lost: dict, storage_options: dict | None = None, written: set | None = None) -> list[str]:
    """Remove the manifest parts (then the tar) of shards found lost or bad (`written_keys`'s `lost`)
    whose every key is now written again in good shards (`written`: those keys; default: `written_keys`
    read again), so the manifest lists only what is there; a lost shard with a key not written again
    keeps its part (`import` keeps reporting it). Only a part named after its shard and listing no other
    shard is removed, and only names a shard writer makes. Returns the parts removed."""
    fs, root = filesystem(out, storage_options)
    root = root.rstrip("/")
    written = written_keys(out, storage_options) if written is None else written
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
