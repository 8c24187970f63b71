"""Core benchmark: warm throughput (bicubic, tiny diffusers pipeline) and what a cache hit costs.

    python bench/bench_core.py [--repeats 7] [--json out.json]

Measures side by side in one run, on this machine:
1. `warm` images/s on 64x64 LR crops of ../shared/data/Set14 with the bicubic engine and with the
   tiny SD x4 pipeline of the tests (random weights: the speed of the machinery, not of a real model).
2. A cache hit (`SRCache.get`: normalise, hash, diskcache read, checksum, decode) against decoding the
   same SR image from a PNG file with Pillow, for each codec; median of `--repeats` runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import torch  # noqa: E402,F401  (before anything that might import tensorflow)

from sr_augment import get_engine  # noqa: E402
from sr_augment.cache import CODECS, SRCache  # noqa: E402
from sr_augment.images import center_crop, iter_image_files, load_image, resize  # noqa: E402
from sr_augment.timing import median_ms  # noqa: E402
from sr_augment.warm import warm  # noqa: E402

DATA = ROOT.parent / "shared" / "data"


def lr_crops(folder: Path, size: int) -> list[np.ndarray]:
    return [resize(center_crop(load_image(path), size * 4), (size, size)) for path in iter_image_files([folder])]


def bench_warm(engine, images_dir: Path, repeats: int, batch_size: int) -> dict:
    rates = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp, SRCache(tmp) as cache:
            report = warm([images_dir], engine, cache, batch_size=batch_size, progress=False)
            rates.append(report.images / report.seconds)
    return {"engine": engine.name, "images": report.images, "images_per_s": round(statistics.median(rates), 2)}


def bench_hit(sr_images: list[np.ndarray], lr_images: list[np.ndarray], repeats: int) -> list[dict]:
    engine = get_engine("bicubic")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        png_paths = []
        for i, sr in enumerate(sr_images):
            path = Path(tmp) / f"{i}.png"
            Image.fromarray(sr).save(path)
            png_paths.append(path)
        file_ms = median_ms(lambda: [np.asarray(Image.open(p).convert("RGB")) for p in png_paths], repeats) / len(png_paths)
        for codec in CODECS:
            with SRCache(Path(tmp) / codec, codec=codec) as cache:
                for lr in lr_images:
                    cache.get_or_create(lr, engine)
                hit_ms = median_ms(lambda: [cache.get(lr, engine) for lr in lr_images], repeats) / len(lr_images)
                size = cache.stats().bytes / len(lr_images)
            rows.append({"codec": codec, "hit_ms": round(hit_ms, 3), "png_file_decode_ms": round(file_ms, 3),
                         "hit_over_file": round(hit_ms / file_ms, 2), "kib_per_entry": round(size / 1024, 1)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if not (DATA / "Set14").exists():
        sys.exit(f"benchmark data not found at {DATA / 'Set14'}")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    from tiny_pipelines import build_tiny_sd_upscaler

    results = {"torch_threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        lr_dir = Path(tmp) / "lr"
        lr_dir.mkdir()
        crops = lr_crops(DATA / "Set14", 64)
        for i, crop in enumerate(crops):
            Image.fromarray(crop).save(lr_dir / f"{i:02d}.png")
        tiny = get_engine(build_tiny_sd_upscaler(Path(tmp) / "tiny-sd"), steps=4, batch_size=8)
        results["warm"] = [
            bench_warm(get_engine("bicubic"), lr_dir, args.repeats, 8),
            {**bench_warm(tiny, lr_dir, max(1, args.repeats // 3), 8), "steps": 4, "note": "tiny random SD x4, 64->256"},
        ]
    hr_512 = [load_image(p) for p in iter_image_files([DATA / "Set14"])]
    lr_128 = [resize(im, (128, 128)) for im in hr_512]
    sr_512 = [get_engine("bicubic").upscale([lr], [0])[0] for lr in lr_128]
    results["hit"] = bench_hit(sr_512, lr_128, args.repeats)

    print(f"\nwarm throughput (64x64 LR crops of Set14, x4, median of runs, {results['torch_threads']} torch threads)")
    print(f"{'engine':<14}{'images':>8}{'images/s':>10}")
    for row in results["warm"]:
        print(f"{row['engine']:<14}{row['images']:>8}{row['images_per_s']:>10.2f}")
    print(f"\ncache hit vs PNG file decode (512x512 SR of Set14, median of {args.repeats})")
    print(f"{'codec':<8}{'hit ms':>9}{'file ms':>9}{'hit/file':>10}{'KiB/entry':>11}")
    for row in results["hit"]:
        print(f"{row['codec']:<8}{row['hit_ms']:>9.2f}{row['png_file_decode_ms']:>9.2f}{row['hit_over_file']:>10.2f}{row['kib_per_entry']:>11.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
