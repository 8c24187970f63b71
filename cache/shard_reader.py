"""Reading shards as untrusted data: every member checked by name, type and size, every record rebuilt
and verified (checksum and a full decode) before it may enter a cache.

Why so strict: shards come from other machines and object stores; a planted or damaged member must be
refused with its name while every good sample still imports. Nothing is ever extracted to disk, so no
member name becomes a path; only regular files named `<32 hex>_<variant>.{webp,png,json}` are read,
JSON members up to 64 KiB (nested too deeply to parse: refused), images up to `MAX_IMAGE_BYTES` and
`entrymeta.MAX_PIXELS` (the limit every path uses), and an image's declared size is checked against its
record header before it is decoded. The record is rebuilt from the JSON's header and the
image bytes and must match the CRC32 it had in the exporting cache (records exported as PNG from
another codec must match a digest of their pixels instead); where the shard has a manifest part,
each member must also match its SHA-256 there, which names the member that changed. This proves
integrity, not authorship: import only shards from writers you trust with your cache.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import PngImagePlugin, WebPImagePlugin

from sr_augment.cache import codec, entrymeta
from sr_augment.cache.shards import CONFLICT, FORMAT, IMAGE_EXTS, MEMBER, key_of, pixels_digest
from sr_augment.errors import SampleRefused  # noqa: F401  (defined in errors, named here too)

MAX_JSON_BYTES = 64 * 1024
MAX_IMAGE_BYTES = 1 << 30
_READERS = {"png": PngImagePlugin.PngImageFile, "webp": WebPImagePlugin.WebPImageFile}


@dataclass
class Sample:
    key: str
    members: dict  # extension -> member name
    data: dict  # extension -> bytes
    size: int


def check_member(member: tarfile.TarInfo) -> str | None:
    """Why a tar member may not be read (None when it may)."""
    if not MEMBER.fullmatch(member.name):
        return "not a sample member name (<32 hex digits>_<variant>.webp|png|json); not read"
    if not member.isreg() or member.issparse():
        return "not a regular file (a link, folder, device or sparse file); not read"
    limit = MAX_JSON_BYTES if member.name.endswith(".json") else MAX_IMAGE_BYTES
    if member.size > limit:
        return f"{member.size} bytes, over the {limit}-byte limit; not read"
    return None


def samples(fh, shard: str, problems: list) -> Iterator[Sample]:
    """The samples of an open tar stream; refused members and broken samples go to `problems` as
    {"shard", "member", "reason"} and reading goes on (a tar that breaks off ends the shard)."""
    current: Sample | None = None
    name = "(the tar header)"
    try:
        with tarfile.open(fileobj=fh, mode="r|") as tar:
            for member in tar:
                name = member.name
                reason = check_member(member)
                if reason:
                    problems.append({"shard": shard, "member": member.name, "reason": reason})
                    continue
                stem, ext = member.name.rsplit(".", 1)
                key = key_of(stem)
                if current is not None and current.key != key:
                    yield current
                    current = None
                if current is None:
                    current = Sample(key, {}, {}, 0)
                if ext in current.data or (ext != "json" and any(e in current.data for e in IMAGE_EXTS)):
                    problems.append({"shard": shard, "member": member.name,
                                     "reason": "a second image or JSON of one sample; not read"})
                    continue
                current.data[ext] = tar.extractfile(member).read()
                current.members[ext] = member.name
                current.size += member.size
    except (tarfile.TarError, OSError, EOFError) as exc:
        problems.append({"shard": shard, "member": name, "reason": f"the tar breaks off at or after this member "
                         f"({type(exc).__name__}: {exc}); the rest of the shard is not read"})
        return
    if current is not None:
        yield current


def rebuild(sample: Sample, manifest_row: dict | None) -> bytes:
    """The record of a sample, its checksum verified; `SampleRefused` naming the member at fault otherwise.
    The caller decodes it (`SRCache.add_record`) before it enters a cache."""
    image_ext = next((e for e in IMAGE_EXTS if e in sample.data), None)
    if "json" not in sample.data or image_ext is None:
        present = ", ".join(sample.members.values())
        raise SampleRefused(present, "a sample needs one .json and one .webp or .png member; this one is incomplete")
    json_name, image_name = sample.members["json"], sample.members[image_ext]
    image = sample.data[image_ext]
    if manifest_row is not None and manifest_row.get(CONFLICT):  # which of the two rows is true cannot be told
        raise SampleRefused(image_name, f"{manifest_row[CONFLICT]}; not imported")
    if manifest_row is not None:
        for ext, name in (("json", json_name), (image_ext, image_name)):
            column = "json" if ext == "json" else "image"
            if (manifest_row.get(f"{column}_member") != name
                    or hashlib.sha256(sample.data[ext]).hexdigest() != manifest_row.get(f"{column}_sha256")):
                raise SampleRefused(name, "does not match its SHA-256 in the shard's manifest (changed after export)")
    try:
        info = json.loads(sample.data["json"])
        if not isinstance(info, dict) or info.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} object")
        if info.get("key") != sample.key:
            raise ValueError(f"its key {info.get('key')!r} is not the member's {sample.key!r}")
        header_text, crc = info["record_header"], info["record_crc32"]
        if not isinstance(header_text, str) or type(crc) is not int:
            raise ValueError("record_header must be text and record_crc32 an integer")
        header = json.loads(header_text)
        shape = header["shape"] if isinstance(header, dict) else None
        if header.get("codec") not in codec.CODECS or not (isinstance(shape, list) and len(shape) == 3
                                                            and all(type(n) is int and n > 0 for n in shape) and shape[2] == 3):
            raise ValueError("record_header is not a header sr-augment writes")
    except RecursionError:  # the C decoder too: planted [[[[...]]]] is refused, not a crash of the import
        raise SampleRefused(json_name, "unusable sample JSON (nested too deeply to parse)") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SampleRefused(json_name, f"unusable sample JSON ({exc})") from None
    too_large = entrymeta.over_pixel_limit(shape[0], shape[1])  # the limit every path uses, checked before decoding
    if too_large:
        raise SampleRefused(json_name, too_large)
    _check_declared_size(image, image_ext, shape, image_name)
    if header["codec"] == image_ext:  # the stored payload, byte for byte: the record must be the exported one
        record = codec.join(header_text.encode(), image)
        if zlib.crc32(record[8:]) != crc:
            raise SampleRefused(image_name,
                                "the rebuilt record's CRC32 is not the exported one (the image or its JSON was changed)")
    else:  # exported as PNG from another codec (raw): the pixels must be the exported ones
        pixels = _decode(image, image_ext, image_name)
        if pixels.shape != tuple(shape) or pixels_digest(pixels) != info.get("pixels_blake2b"):
            raise SampleRefused(image_name, "its pixels are not the exported ones (digest mismatch)")
        record = codec.encode(pixels, header["codec"], header.get("meta") if isinstance(header.get("meta"), dict) else None)
    return record  # not decoded here: `SRCache.add_record` decodes it once before publishing it


def _check_declared_size(image: bytes, ext: str, shape: list, name: str) -> None:
    """The image's own header must declare the record's size: no decoding of a bomb."""
    try:
        with _READERS[ext](io.BytesIO(image)) as img:
            size = img.size
    except Exception as exc:  # Pillow raises many types on garbage
        raise SampleRefused(name, f"not a readable {ext.upper()} ({type(exc).__name__}: {exc})") from None
    if size != (shape[1], shape[0]):
        raise SampleRefused(name, f"declares {size[0]}x{size[1]} pixels, not the record's {shape[1]}x{shape[0]}")


def _decode(image: bytes, ext: str, name: str) -> np.ndarray:
    try:
        with _READERS[ext](io.BytesIO(image)) as img:
            return np.array(img.convert("RGB"), dtype=np.uint8)
    except Exception as exc:
        raise SampleRefused(name, f"does not decode ({type(exc).__name__}: {exc})") from None

