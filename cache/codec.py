"""Stored records: a checksummed header + an encoded image, so damage is detected, never returned.

Layout: b"SRA1" | crc32 (4 bytes, of everything after it) | header length (2) | JSON header | payload.
The default, "auto", stores small results (at most `AUTO_RAW_PIXELS`, 256x256) raw and larger ones
as WebP lossless. Measured (bench/NOTES.md sections 1 and 3): WebP decodes faster than PNG and stores
smaller entries, but at 128x128 its decode (0.48 ms) is most of a cache hit and ~12% of a whole
torchvision pipeline, while raw costs nothing to decode (a copy) for 2.3x the disk (48 KiB); no
compressed form (zlib, lz4, zstd, with or without a PNG-style delta filter) was both small and fast.
WebP's slower encode is paid once, next to seconds of diffusion. Images wider or taller than WebP's
16383 px limit, larger than Pillow's decompression-bomb limit, or a Pillow without WebP, use PNG. The
codec is named in each record's header, so records of every codec read in any cache.
"""

from __future__ import annotations

import io
import json
import struct
import zlib

import numpy as np
from PIL import Image, PngImagePlugin, WebPImagePlugin, features

from sr_augment.cache import entrymeta
from sr_augment.errors import DamagedEntry  # noqa: F401  (defined in errors, named here too)

MAGIC = b"SRA1"
CODECS = ("webp", "png", "raw")
"""The codecs a record may name in its header."""
CHOICES = ("auto",) + CODECS
"""What a cache may be asked to store with: a codec, or "auto" (raw when small, else WebP)."""
DEFAULT_CODEC = "auto"
AUTO_RAW_PIXELS = 256 * 256
"""The largest result (height x width) "auto" stores raw: 192 KiB at most."""
_WEBP_MAX_SIDE = 16383
_HAS_WEBP = features.check("webp")
# Our own checksummed records must never trip Pillow's decompression-bomb limit: a legitimately huge
# SR result (4x of a 4000 px photo is 256 megapixels) would read as damaged on every hit and be
# regenerated forever. `Image.open` and the WebP reader apply the limit; the PNG reader does not. So
# results over the limit are stored as PNG, and records are opened with the format's reader directly.
_PILLOW_MAX_PIXELS = 89_478_485
"""Pillow's default limit, fixed: a process that raised `Image.MAX_IMAGE_PIXELS` must not store WebP
records that a process with the default limit cannot read."""
_READERS = {"png": PngImagePlugin.PngImageFile, "webp": WebPImagePlugin.WebPImageFile}


def _webp_can_hold(image: np.ndarray) -> bool:
    height, width = image.shape[:2]
    pixel_limit = min(_PILLOW_MAX_PIXELS, Image.MAX_IMAGE_PIXELS or _PILLOW_MAX_PIXELS)
    return _HAS_WEBP and max(height, width) <= _WEBP_MAX_SIDE and height * width <= pixel_limit


def encode(image: np.ndarray, codec: str = DEFAULT_CODEC, meta: dict | None = None) -> bytes:
    """A record of `image`; `meta` (JSON: engine, fingerprint, mode, ... see `cache.entrymeta`) rides in
    the header, under the checksum. Readers ignore header fields they do not know, so records with and
    without it read alike (the layout, magic SRA1, is unchanged)."""
    if codec not in CHOICES:
        raise ValueError(f"codec must be one of {', '.join(CHOICES)}; got {codec!r}")
    too_large = entrymeta.over_pixel_limit(*image.shape[:2])  # the one limit of every path (warm, merge, import)
    if too_large:
        raise ValueError(f"cannot store {too_large}")
    if codec == "auto":
        codec = "raw" if image.shape[0] * image.shape[1] <= AUTO_RAW_PIXELS else "webp"
    if codec == "webp" and not _webp_can_hold(image):
        codec = "png"
    if codec == "raw":
        payload = np.ascontiguousarray(image, dtype=np.uint8).tobytes()
    else:
        buffer = io.BytesIO()
        if codec == "png":
            Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
        else:
            Image.fromarray(image).save(buffer, format="WEBP", lossless=True, quality=0, method=0)
        payload = buffer.getvalue()
    header = {"codec": codec, "shape": list(image.shape)}
    if meta:
        header["meta"] = meta
    return join(json.dumps(header).encode(), payload)


def check(record: bytes) -> memoryview:
    """The record's body after its magic and checksum are verified; raises `DamagedEntry` (no decode)."""
    if not isinstance(record, (bytes, bytearray)) or len(record) < 10 or record[:4] != MAGIC:
        raise DamagedEntry("bad magic")
    (crc,) = struct.unpack_from("<I", record, 4)
    body = memoryview(record)[8:]
    if zlib.crc32(body) != crc:
        raise DamagedEntry("checksum mismatch")
    return body


def decode(record: bytes, expected_shape: tuple | None = None) -> np.ndarray:
    """The image in a record; raises `DamagedEntry` on any corruption. With `expected_shape` (what the
    lookup's mode and scale make), a record of another shape is refused before anything is decoded,
    and an image whose own header disagrees with the record's is never decoded either: a small planted
    record cannot make a read allocate gigabytes."""
    try:
        body = check(record)
        (header_len,) = struct.unpack_from("<H", body, 0)
        header = json.loads(bytes(body[2:2 + header_len]))
        payload = body[2 + header_len:]
        if not _is_shape(header.get("shape")):
            raise DamagedEntry(f"stored shape {str(header.get('shape'))[:80]} is not three non-negative integers")
        shape = tuple(header["shape"])
        if shape[2] != 3:  # every codec holds RGB only (a raw RGBA must not pass)
            raise DamagedEntry(f"stored shape {shape} is not an RGB image")
        if entrymeta.over_pixel_limit(shape[0], shape[1]):
            raise DamagedEntry(entrymeta.over_pixel_limit(shape[0], shape[1]))
        if expected_shape is not None and shape != tuple(expected_shape):
            raise DamagedEntry(f"stored shape {shape} is not the {tuple(expected_shape)} this lookup needs")
        if header["codec"] == "raw":
            image = np.frombuffer(payload, dtype=np.uint8).reshape(shape).copy()
        else:
            with _READERS[header["codec"]](io.BytesIO(payload)) as img:
                if img.size != (shape[1], shape[0]):  # Pillow read only the image's header so far
                    raise DamagedEntry(f"encoded image is {img.size[0]}x{img.size[1]}, the record says {shape[1]}x{shape[0]}")
                image = np.array(img.convert("RGB"), dtype=np.uint8)
        if image.shape != shape:
            raise DamagedEntry(f"decoded shape {image.shape} != stored shape {shape}")
        return image
    except DamagedEntry:
        raise
    except Exception as exc:  # struct, json, Pillow and numpy each raise their own types
        raise DamagedEntry(f"undecodable record ({type(exc).__name__}: {exc})") from None


def join(header: bytes, payload) -> bytes:
    """A record from its JSON header bytes and payload (the layout above, checksum added)."""
    body = struct.pack("<H", len(header)) + bytes(header) + bytes(payload)
    return MAGIC + struct.pack("<I", zlib.crc32(body)) + body


def split(record: bytes) -> tuple[dict, bytes, memoryview]:
    """(header, header bytes, payload) of a record whose checksum is verified (no decode); `DamagedEntry`
    for a bad checksum or header. Export and import use it to move a record without re-encoding it."""
    body = check(record)
    try:
        (header_len,) = struct.unpack_from("<H", body, 0)
        header_bytes = bytes(body[2:2 + header_len])
        header = json.loads(header_bytes)
    except (struct.error, ValueError, RecursionError) as exc:  # RecursionError: planted deeply nested JSON
        raise DamagedEntry(f"unreadable record header ({type(exc).__name__}: {exc})") from None
    if not isinstance(header, dict) or header.get("codec") not in CODECS or not _is_shape(header.get("shape")):
        raise DamagedEntry("record header is not {codec, shape}: a codec name and three non-negative integers")
    return header, header_bytes, body[2 + header_len:]


def _is_shape(shape) -> bool:
    """Three plain non-negative integers: checked before any arithmetic on them (a planted ["x", 2e9, 3]
    would make a string of gigabytes, a float or a bool would pass a size test it should fail)."""
    return (isinstance(shape, list) and len(shape) == 3
            and all(type(n) is int and 0 <= n < 2**31 for n in shape))
