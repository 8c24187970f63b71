"""Split large inputs into overlapping tiles and blend the upscaled tiles back without seams.

Diffusion SR models are trained on small crops and their memory grows with the square of the input
side, so large images are processed as tiles of at most `tile` LR pixels overlapping by `overlap`.
Each output pixel is a weighted mean of the tiles that cover it, with weights that ramp linearly to
(almost) zero towards a tile's edges, so no tile boundary shows as a hard seam.

Small inputs are padded (reflect) up to a multiple the model needs and the padding is cropped off.

A model whose receptive field is wider than the overlap (a GAN such as Real-ESRGAN) still changes near a
tile's edge, where it sees less of the image than on the whole image. `context` extends every tile by that
many real pixels on each side (where the image has them); the model runs on the extended tile and only
the tile itself is kept and blended, so its edges are computed with the neighbourhood they have in the
whole image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

DEFAULT_OVERLAP = 16
"""The tile overlap, in input pixels, every tiling engine's constructor defaults to."""


@dataclass(frozen=True)
class Tile:
    top: int
    left: int
    height: int
    width: int


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Evenly spaced start offsets covering [0, length) with tiles of `tile` overlapping >= `overlap`."""
    if length <= tile:
        return [0]
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile), got overlap={overlap}, tile={tile}")
    count = math.ceil((length - overlap) / (tile - overlap))
    last = length - tile
    return [round(i * last / (count - 1)) for i in range(count)]


def plan_tiles(height: int, width: int, tile: int, overlap: int) -> list[Tile]:
    """The tiles for an image of the given size (one tile, the whole image, when it fits)."""
    rows = tile_starts(height, tile, overlap)
    cols = tile_starts(width, tile, overlap)
    return [Tile(top, left, min(tile, height), min(tile, width)) for top in rows for left in cols]


def pad_to_multiple(image: np.ndarray, multiple: int, min_side: int = 0) -> np.ndarray:
    """Pad bottom/right so both sides are multiples of `multiple` and at least `min_side`.

    Mirror padding (reflect, or symmetric when the padding is longer than the image), so a model
    that was trained on larger crops sees natural-looking context rather than a flat border.
    """
    height, width = image.shape[:2]
    pad_h = -(-max(min_side, height) // multiple) * multiple - height  # up to a multiple of at least min_side
    pad_w = -(-max(min_side, width) // multiple) * multiple - width
    if pad_h == 0 and pad_w == 0:
        return image
    if height == 1 or width == 1:
        mode = "edge"
    else:
        mode = "reflect" if pad_h < height and pad_w < width else "symmetric"
    return np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode=mode)


def blend_weights(height: int, width: int, ramp: int) -> np.ndarray:
    """HxW weights: 1 in the middle, linear ramps of `ramp` pixels towards each edge (never 0)."""

    def axis(n: int) -> np.ndarray:
        pos = np.arange(n, dtype=np.float32) + 0.5
        r = max(1, min(ramp, n // 2))
        return np.clip(np.minimum(pos, n - pos) / r, 1e-3, 1.0)

    return np.outer(axis(height), axis(width)).astype(np.float32)


class Stitcher:
    """Accumulates upscaled tiles into one output image with feathered blending."""

    def __init__(self, height: int, width: int, scale: int, overlap: int):
        self.scale = scale
        self.ramp = max(1, overlap * scale)
        self.total = np.zeros((height * scale, width * scale, 3), dtype=np.float32)
        self.weight = np.zeros((height * scale, width * scale, 1), dtype=np.float32)

    def add(self, tile: Tile, upscaled: np.ndarray) -> None:
        s = self.scale
        h, w = tile.height * s, tile.width * s
        patch = upscaled[:h, :w].astype(np.float32)
        weights = blend_weights(h, w, self.ramp)[:, :, None]
        region = (slice(tile.top * s, tile.top * s + h), slice(tile.left * s, tile.left * s + w))
        self.total[region] += patch * weights
        self.weight[region] += weights

    def result(self) -> np.ndarray:
        if np.any(self.weight == 0):
            raise RuntimeError("tiling left output pixels uncovered (a bug: please report it)")
        return np.clip(np.rint(self.total / self.weight), 0, 255).astype(np.uint8)


def tile_seed(seed: int, tile_number: int) -> int:
    """Seed of one tile: the image's own seed for tile 0, a distinct derived seed for the others."""
    if tile_number == 0:
        return int(seed) % (2**63)
    return int(np.random.SeedSequence([int(seed) % (2**63), tile_number]).generate_state(1, np.uint64)[0] >> 1)


def with_context(tile: Tile, height: int, width: int, context: int) -> Tile:
    """`tile` grown by `context` pixels on every side, clipped to the image."""
    top, left = max(0, tile.top - context), max(0, tile.left - context)
    bottom = min(height, tile.top + tile.height + context)
    right = min(width, tile.left + tile.width + context)
    return Tile(top, left, bottom - top, right - left)


def upscale_tiled(images, seeds, run_batch, *, scale: int, tile: int, overlap: int, multiple: int,
                  batch_size: int, min_side: int = 0, context: int = 0) -> list[np.ndarray]:
    """Upscale images of any size with `run_batch(list of equal-shape arrays, seeds) -> list of arrays`.

    Every image is cut into tiles (one when it fits), each tile is padded to `multiple` (and to at
    least `min_side`, for models that fail on inputs much smaller than their training crops), tiles of all
    images are grouped by shape and run `batch_size` at a time, and the outputs are stitched back. With
    `context`, each tile runs with that many extra image pixels around it, cropped off before blending.
    """
    jobs = []  # (image index, tile, padded pixels, tile seed, (rows, cols) of the tile in the output)
    stitchers = []
    for index, (image, seed) in enumerate(zip(images, seeds)):
        height, width = image.shape[:2]
        stitchers.append(Stitcher(height, width, scale, overlap))
        boxes = plan_tiles(height, width, tile, overlap)
        for number, tile_box in enumerate(boxes):
            run_box = with_context(tile_box, height, width, context) if len(boxes) > 1 else tile_box
            pixels = image[run_box.top:run_box.top + run_box.height, run_box.left:run_box.left + run_box.width]
            top, left = (tile_box.top - run_box.top) * scale, (tile_box.left - run_box.left) * scale
            keep = (slice(top, top + tile_box.height * scale), slice(left, left + tile_box.width * scale))
            jobs.append((index, tile_box, pad_to_multiple(pixels, multiple, min_side), tile_seed(seed, number), keep))
    by_shape: dict[tuple, list] = {}
    for job in jobs:
        by_shape.setdefault(job[2].shape, []).append(job)
    for group in by_shape.values():
        for start in range(0, len(group), batch_size):
            chunk = group[start:start + batch_size]
            outputs = run_batch([job[2] for job in chunk], [job[3] for job in chunk])
            for (index, tile_box, _, _, keep), out in zip(chunk, outputs):
                stitchers[index].add(tile_box, out[keep])
    return [stitcher.result() for stitcher in stitchers]


def upscale_to_scale(images, seeds, run, *, native_scale: int, scale: int, tile: int, overlap: int, multiple: int,
                     batch_size: int, min_side: int = 0, context: int = 0) -> list[np.ndarray]:
    """`upscale_tiled` at the model's own factor, then the output resized (bicubic) to the requested
    `scale` where the two differ: what every model-backed engine does, so `scale=4` always means 4x."""
    from sr_augment.images import resize

    results = upscale_tiled(images, seeds, run, scale=native_scale, tile=tile, overlap=overlap, multiple=multiple,
                            batch_size=batch_size, min_side=min_side, context=context)
    if scale != native_scale:
        results = [resize(out, (image.shape[0] * scale, image.shape[1] * scale)) for out, image in zip(results, images)]
    return results
