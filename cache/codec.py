"""Stored records: a checksummed header + an encoded image, so damage is detected, never returned.

Layout: b"SRA1" | crc32 (4 bytes, of everything after it) | header length (2) | JSON header | payload.
The default codec is WebP lossless: measured in bench/bench_core.py (bench/NOTES.md) it decodes
faster than PNG and stores smaller entries; its slower encode is paid once, next to seconds of
diffusion. Images wider or taller than WebP's 16383 px limit, larger than Pillow's decompression-bomb
limit, or a Pillow without WebP, use PNG.
"""

from __future__ import annotations

import io
import json
import struct
import zlib

import numpy as np
from PIL import Image, PngImagePlugin, WebPImagePlugin, features

MAGIC = b"SRA1"
CODECS = ("webp", "png", "raw")
DEFAULT_CODEC = "webp"
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


class DamagedEntry(ValueError):
    """A stored record failed its checksum or could not be decoded."""


def _webp_can_hold(image: np.ndarray) -> bool:
    height, width = image.shape[:2]
    pixel_limit = min(_PILLOW_MAX_PIXELS, Image.MAX_IMAGE_PIXELS or _PILLOW_MAX_PIXELS)
    return _HAS_WEBP and max(height, width) <= _WEBP_MAX_SIDE and height * width <= pixel_limit


def encode(image: np.ndarray, codec: str = DEFAULT_CODEC) -> bytes:
    if codec not in CODECS:
        raise ValueError(f"codec must be one of {', '.join(CODECS)}; got {codec!r}")
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
    header = json.dumps({"codec": codec, "shape": list(image.shape)}).encode()
    body = struct.pack("<H", len(header)) + header + payload
    return MAGIC + struct.pack("<I", zlib.crc32(body)) + body


def check(record: bytes) -> memoryview:
    """The record's body after its magic and checksum are verified; raises `DamagedEntry` (no decode)."""
    if not isinstance(record, (bytes, bytearray)) or len(record) < 10 or record[:4] != MAGIC:
        raise DamagedEntry("bad magic")
    (crc,) = struct.unpack_from("<I", record, 4)
    body = memoryview(record)[8:]
    if zlib.crc32(body) != crc:
        raise DamagedEntry("checksum mismatch")
    return body


def decode(record: bytes) -> np.ndarray:
    """The image in a record; raises `DamagedEntry` on any corruption."""
    try:
        body = check(record)
        (header_len,) = struct.unpack_from("<H", body, 0)
        header = json.loads(bytes(body[2:2 + header_len]))
        payload = body[2 + header_len:]
        shape = tuple(header["shape"])
        if header["codec"] == "raw":
            image = np.frombuffer(payload, dtype=np.uint8).reshape(shape).copy()
        else:
            with _READERS[header["codec"]](io.BytesIO(payload)) as img:
                image = np.array(img.convert("RGB"), dtype=np.uint8)
        if image.shape != shape:
            raise DamagedEntry(f"decoded shape {image.shape} != stored shape {shape}")
        return image
    except DamagedEntry:
        raise
    except Exception as exc:  # struct, json, Pillow and numpy each raise their own types
        raise DamagedEntry(f"undecodable record ({type(exc).__name__}: {exc})") from None
