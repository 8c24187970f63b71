"""`sr-augment demo`: the whole loop on sample photos that scikit-image ships, offline.

HR crop -> bicubic-downscaled LR -> warm a temporary cache -> read it back -> a comparison grid PNG
(LR | bicubic | SR variants | original) and the cost of generating, of a cache hit, and of decoding
the same image from a PNG file.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from sr_augment.cache import SRCache
from sr_augment.grid import comparison_grid
from sr_augment.images import bicubic_resize, center_crop, resize
from sr_augment.timing import median_ms

SAMPLES = ("astronaut", "coffee", "chelsea", "rocket")
LR_SIZE = 64


def sample_images(lr_size: int = LR_SIZE, scale: int = 4) -> dict[str, np.ndarray]:
    """Centre crops (lr_size * scale square) of scikit-image's bundled photos, as uint8 RGB."""
    from skimage import data

    hr_size = lr_size * scale
    out = {}
    for name in SAMPLES:
        image = getattr(data, name)()[:, :, :3]
        out[name] = resize(center_crop(image, min(image.shape[:2])), (hr_size, hr_size))
    return out


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
        row = [("LR (nearest)", resize(lr[n], hr[n].shape[:2], Image.NEAREST)),
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
