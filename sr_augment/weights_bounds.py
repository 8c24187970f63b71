"""Bound what reading a weight file can cost before it is read: no file inflates in memory.

A `torch.save` checkpoint is a zip whose records `torch.load` inflates to their declared sizes (a 1 MB
deflated record can declare 1 GiB of zeros); a safetensors file starts with a header length that its
reader parses before anything else. `check_weights_file` looks only at the zip's central directory
(Python's `zipfile`, never a record's content) or the 8-byte safetensors length, and refuses, naming the
file, whatever would take more memory than the file's size allows:

- zip (`.pth`, `.pt`, `.ckpt`, `.bin`, LoRA `.pkl`): every record's declared size, and their total, at
  most `MAX_INFLATION` times the file's size (torch.save stores records uncompressed: its files are about
  their content's size) and at most `MAX_WEIGHTS_BYTES`;
- safetensors: the header at most `MAX_SAFETENSORS_HEADER` bytes and inside the file (the safetensors
  library then checks every tensor's offsets against the file);
- anything else (a legacy, pre-zip torch file): the file itself at most `MAX_WEIGHTS_BYTES`.
"""

from __future__ import annotations

import os
import struct
import zipfile
from pathlib import Path

from sr_augment.errors import WeightsTooLarge  # noqa: F401  (defined in errors, named here too)

MAX_WEIGHTS_BYTES = 8 << 30
"""The most one weight file may hold once read (8 GiB: an SR checkpoint or a LoRA file is far smaller)."""
MAX_INFLATION = 2
"""How many times its size on disk a zip checkpoint may inflate to when read."""
INFLATION_SLACK = 1 << 20
"""Bytes allowed above MAX_INFLATION x size: a tiny file's records may well exceed its zipped size."""
MAX_SAFETENSORS_HEADER = 16 << 20
"""The largest safetensors JSON header accepted (a full SD pipeline's is well under 1 MiB)."""

_ZIP_MAGIC = b"PK\x03\x04"


def check_weights_file(path: str | os.PathLike, *, limit: int = MAX_WEIGHTS_BYTES) -> int:
    """The bytes reading `path` will hold at most; `WeightsTooLarge` (a ValueError) naming the file and
    the problem when that is over `limit` or out of proportion to the file's size. Reads the zip
    central directory or the safetensors length only."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
    if path.suffix.lower() == ".safetensors":
        return _check_safetensors(path, head, size, limit)
    if head[:4] == _ZIP_MAGIC:
        return _check_zip(path, size, limit)
    if size > limit:
        raise WeightsTooLarge(f"{path}: {size} bytes, over the {_gib(limit)} a weight file may hold")
    return size


def _check_zip(path: Path, size: int, limit: int) -> int:
    try:
        with zipfile.ZipFile(path) as archive:
            records = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError) as exc:
        raise ValueError(f"{path}: starts like a zip checkpoint but its directory cannot be read ({exc})") from None
    allowed = min(limit, MAX_INFLATION * size + INFLATION_SLACK)
    total = 0
    for record in records:
        total += record.file_size
        if record.file_size > allowed or total > allowed:
            what = (f"its record {record.filename!r} declares {record.file_size} bytes" if record.file_size > allowed
                    else f"its records declare {total}+ bytes in all")
            raise WeightsTooLarge(
                f"{path}: {what} once inflated, from a {size}-byte file; refused before reading it (at most "
                f"{MAX_INFLATION} x the file's size and {_gib(limit)}: a torch.save checkpoint stores its tensors "
                f"uncompressed, so this is a zip bomb or not a checkpoint)")
    return total


def _check_safetensors(path: Path, head: bytes, size: int, limit: int) -> int:
    if len(head) < 8:
        raise ValueError(f"{path}: {size} bytes, too short for a safetensors file (8-byte header length first)")
    (header,) = struct.unpack("<Q", head)
    if header > MAX_SAFETENSORS_HEADER or header > size - 8:
        raise WeightsTooLarge(f"{path}: its safetensors header claims {header} bytes, over "
                              f"{'the file' if header > size - 8 else f'the {MAX_SAFETENSORS_HEADER >> 20} MiB accepted'} "
                              f"({size} bytes); refused before reading it")
    if size > limit:
        raise WeightsTooLarge(f"{path}: {size} bytes, over the {_gib(limit)} a weight file may hold")
    return size


def _gib(n: int) -> str:
    return f"{n / (1 << 30):g} GiB"
