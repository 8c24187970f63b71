"""Cache keys: the pixels (never a path) + the engine fingerprint + mode + scale + variant + format.

The same pixels hit from any path or from memory; changing any generation setting (which changes the
engine fingerprint) misses. Variant i's seed is derived from the key, so every machine that warms the
same image generates the same sample for the same variant.
"""

from __future__ import annotations

import hashlib

import numpy as np

CACHE_FORMAT_VERSION = 1


def pixel_digest(image: np.ndarray) -> str:
    """Hash of a normalised uint8 HWC RGB image's shape and bytes."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(repr(image.shape).encode())
    digest.update(memoryview(np.ascontiguousarray(image)).cast("B"))
    return digest.hexdigest()


def base_key(pixels: str, fingerprint: str, mode: str, scale: int) -> str:
    """Key of an (image, engine settings, mode, scale) without the variant index."""
    text = f"v{CACHE_FORMAT_VERSION}\0{pixels}\0{mode}\0{scale}\0{fingerprint}"
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def entry_key(base: str, variant: int) -> str:
    return f"{base}:{int(variant)}"


def variant_seed(base: str, variant: int) -> int:
    """A 63-bit seed derived from the key and the variant index."""
    digest = hashlib.blake2b(f"seed\0{base}\0{int(variant)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1
