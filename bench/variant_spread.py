"""How different the variants of one image are, per engine and `degrade=` setting (the docs' "Variants from
a deterministic engine" table).

    python bench/variant_spread.py [--variants 4] [--rows ROW ...] [--json out.json]

Inputs: the centre 256 px crops of scikit-image's bundled astronaut, coffee and chelsea photos (no
download), bicubic-downscaled x4 to 64 px; each engine super-resolves them x4 (upscale mode) through
`AugmentCore` and a throw-away cache, variants 0..K-1. A row is "ENGINE" or "ENGINE degrade=PRESET", e.g.
"dat-light degrade=light"; sr4 rows take its presets ("sr4 preset=diverse").

Columns (0-255 units, means over the photos): `pair MAD`, the mean absolute difference of two variants over
every pair (`metrics.variant_spread`); `MAD to v0`, of each variant k > 0 to the clean variant 0; Y-PSNR
of variant 0 and of the variants k > 0 against the 256 px crop (4 px shaved).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np
import torch  # noqa: F401  (before anything that might import tensorflow)

from sr_augment.augment import AugmentCore
from sr_augment.engines import get_engine
from sr_augment.images import center_crop, resize
from sr_augment.metrics import psnr_y, variant_spread

PHOTOS = ("astronaut", "coffee", "chelsea")
DEFAULT_ROWS = ["bicubic", "bicubic degrade=light", "bicubic degrade=realistic",
                "dat-light", "dat-light degrade=light", "dat-light degrade=realistic", "sr4"]


def photos(side: int = 256) -> list[np.ndarray]:
    from skimage import data

    return [np.ascontiguousarray(center_crop(getattr(data, name)()[..., :3], side)) for name in PHOTOS]


def run_row(row: str, hrs: list[np.ndarray], variants: int) -> dict:
    engine_name, *pairs = row.split()
    settings = dict(pair.split("=", 1) for pair in pairs)
    degrade = settings.pop("degrade", None)
    engine = get_engine(engine_name, scale=4, **settings)
    spreads, to_clean, clean_psnr, other_psnr = [], [], [], []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as cache_dir:
        core = AugmentCore(engine=engine, scale=4, variants=variants, degrade=degrade, cache_dir=cache_dir)
        for hr in hrs:
            lr = resize(hr, (hr.shape[0] // 4, hr.shape[1] // 4))
            outs = core.apply_many([lr] * variants, {"augment": [True] * variants, "variant": list(range(variants))})
            spreads.append(variant_spread(outs)["pair_mad"])
            to_clean.append(np.mean([np.abs(o.astype(np.float64) - outs[0]).mean() for o in outs[1:]]))
            clean_psnr.append(psnr_y(outs[0], hr, shave=4))
            other_psnr.append(np.mean([psnr_y(o, hr, shave=4) for o in outs[1:]]))
        core.cache.close()
    return {"row": row, "pair_mad": float(np.mean(spreads)), "mad_to_v0": float(np.mean(to_clean)),
            "psnr_v0": float(np.mean(clean_psnr)), "psnr_others": float(np.mean(other_psnr)),
            "seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", type=int, default=4)
    parser.add_argument("--rows", nargs="+", default=DEFAULT_ROWS)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    hrs = photos()
    results = [run_row(row, hrs, args.variants) for row in args.rows]
    print("| engine, degrade | pair MAD | MAD to v0 | Y-PSNR v0 | Y-PSNR v>0 |\n|---|---|---|---|---|")
    for r in results:
        print(f"| {r['row']} | {r['pair_mad']:.2f} | {r['mad_to_v0']:.2f} | {r['psnr_v0']:.2f} | {r['psnr_others']:.2f} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"variants": args.variants, "photos": list(PHOTOS), "results": results}, fh, indent=1)


if __name__ == "__main__":
    main()
