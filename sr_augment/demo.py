"""`sr-augment demo`: the whole loop on sample photos that scikit-image ships, offline.

HR crop -> bicubic-downscaled LR -> warm a temporary cache -> read it back -> a comparison grid PNG
(LR | bicubic | SR variants | original) and the cost of generating, of a cache hit, and of decoding
the same image from a PNG file.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from sr_augment.cache import SRCache
from sr_augment.engines.bicubic import bicubic_resize
from sr_augment.images import resize

SAMPLES = ("astronaut", "coffee", "chelsea", "rocket")
LR_SIZE = 64


def sample_images(lr_size: int = LR_SIZE, scale: int = 4) -> dict[str, np.ndarray]:
    """Centre crops (lr_size * scale square) of scikit-image's bundled photos, as uint8 RGB."""
    from skimage import data

    hr_size = lr_size * scale
    out = {}
    for name in SAMPLES:
        image = getattr(data, name)()
        side = min(image.shape[:2])
        top, left = (image.shape[0] - side) // 2, (image.shape[1] - side) // 2
        out[name] = resize(np.ascontiguousarray(image[top:top + side, left:left + side, :3]), (hr_size, hr_size))
    return out


def _label(tile: np.ndarray, text: str) -> np.ndarray:
    img = Image.fromarray(tile)
    draw = ImageDraw.Draw(img)
    draw.rectangle((0, 0, 8 + 7 * len(text), 16), fill=(0, 0, 0))
    draw.text((4, 3), text, fill=(255, 255, 255))
    return np.asarray(img)


def comparison_grid(rows: list[list[tuple[str, np.ndarray]]], gap: int = 4) -> Image.Image:
    """Rows of labelled, equally sized tiles on a white background."""
    height, width = rows[0][0][1].shape[:2]
    columns = max(len(row) for row in rows)
    canvas = np.full((len(rows) * (height + gap) + gap, columns * (width + gap) + gap, 3), 255, np.uint8)
    for r, row in enumerate(rows):
        for c, (text, tile) in enumerate(row):
            y, x = gap + r * (height + gap), gap + c * (width + gap)
            canvas[y:y + height, x:x + width] = _label(tile, text)
    return Image.fromarray(canvas)


def median_ms(fn, repeats: int) -> float:
    """Median wall time of `repeats` calls of `fn`, in milliseconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000.0


def run_demo(engine, out_dir: str | Path = "sr-augment-demo", variants: int = 2, repeats: int = 5) -> dict:
    """Run the demo with `engine`; writes grid.png and timings.json into `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scale = engine.scale
    hr = sample_images(LR_SIZE, scale)
    lr = {name: resize(image, (LR_SIZE, LR_SIZE)) for name, image in hr.items()}
    names = list(hr)
    with tempfile.TemporaryDirectory(prefix="sr-augment-demo-") as tmp:
        with SRCache(tmp) as cache:
            start = time.perf_counter()
            images = [lr[n] for n in names for _ in range(variants)]
            cache.get_or_create_many(images, engine, "upscale", [v for _ in names for v in range(variants)])
            generate_ms = (time.perf_counter() - start) * 1000.0 / len(images)
            sr = {n: [cache.get(lr[n], engine, "upscale", v) for v in range(variants)] for n in names}
            hit_ms = median_ms(lambda: [cache.get(lr[n], engine, "upscale", v) for n in names for v in range(variants)],
                                repeats) / len(images)
            png_paths = []
            for n in names:
                path = Path(tmp) / f"{n}.png"
                Image.fromarray(sr[n][0]).save(path)
                png_paths.append(path)
            png_ms = median_ms(lambda: [np.asarray(Image.open(p).convert("RGB")) for p in png_paths], repeats) / len(names)
            stats = cache.stats().as_dict()
    rows = []
    for n in names:
        row = [("LR (nearest)", np.asarray(Image.fromarray(lr[n]).resize(hr[n].shape[1::-1], Image.NEAREST))),
               ("bicubic", bicubic_resize(lr[n], scale))]
        row += [(f"{engine.name} v{v}", sr[n][v]) for v in range(variants)]
        row.append(("original", hr[n]))
        rows.append(row)
    grid_path = out_dir / "grid.png"
    comparison_grid(rows).save(grid_path)
    result = {
        "engine": engine.name, "fingerprint": engine.fingerprint, "images": len(names), "variants": variants,
        "lr_size": LR_SIZE, "scale": scale, "generate_ms_per_entry": round(generate_ms, 3),
        "hit_ms_per_entry": round(hit_ms, 3), "png_decode_ms_per_entry": round(png_ms, 3),
        "cache_hits": stats["hits"], "cache_misses": stats["misses"], "grid": str(grid_path),
    }
    (out_dir / "timings.json").write_text(json.dumps(result, indent=2))
    return result
