"""How sr4's `diverse` preset was chosen: spread between variants vs Y-PSNR over a grid of sampler settings.

    python bench/sr4_diverse_sweep.py [--crops-per-photo 6] [--variants 4] [--strength 0.7 1.0]
        [--eta 0 0.5 1] [--steps 5 10 20] [--json out.json]

Selection photos: the 4 photos that `sr-augment train data/T91 data/BSD200` (seed 0) held out of the
built-in model's training, recomputed here with the training code's own split, so neither a training
photo nor an evaluation set (Set5, Set14, the docs' real-photo crops) decides the preset. From each,
`--crops-per-photo` seeded random 128 px HR crops, bicubic-downscaled to 32 px (the `resynthesize`
degradation), `--variants` seeds each. Per setting: mean Y-PSNR (4 px shaved) over crops and variants
against bicubic's, the inter-variant spread (`sr_augment.metrics`: mean absolute difference over
variant pairs, per-pixel standard deviation, both in 0-255 units) and the gradient ratio SR/HR.
Rule: the largest mean pairwise difference among settings whose mean Y-PSNR is above bicubic's.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

import torch  # noqa: E402,F401  (before anything that might import tensorflow)

from sr_augment import get_engine  # noqa: E402
from sr_augment.images import resize  # noqa: E402
from sr_augment.metrics import gradient_magnitude, psnr_y, variant_spread  # noqa: E402
from sr_augment.sr4.train import load_photos, split_holdout  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
SCALE, CROP = 4, 128


def held_out_crops(per_photo: int, seed: int = 0) -> tuple[list[str], list[np.ndarray]]:
    photos, names = load_photos([DATA / "T91", DATA / "BSD200"], CROP, log=lambda *_: None)
    _, held, held_names = split_holdout(photos, names, 4, 0)
    rng = np.random.default_rng(seed)
    crops = []
    for photo in held:
        for _ in range(per_photo):
            top = int(rng.integers(0, photo.shape[0] - CROP + 1))
            left = int(rng.integers(0, photo.shape[1] - CROP + 1))
            crops.append(np.ascontiguousarray(photo[top:top + CROP, left:left + CROP]))
    return [Path(n).name for n in held_names], crops


def measure(engine, crops, lrs, variants: int) -> dict:
    outs = engine.upscale([lr for lr in lrs for _ in range(variants)], seeds=[v for _ in lrs for v in range(variants)])
    psnrs, spreads, grads = [], [], []
    for i, hr in enumerate(crops):
        group = outs[i * variants:(i + 1) * variants]
        psnrs += [psnr_y(o, hr, SCALE) for o in group]
        grads += [gradient_magnitude(o, SCALE) / gradient_magnitude(hr, SCALE) for o in group]
        spreads.append(variant_spread(group, SCALE))
    return {"psnr_y": float(np.mean(psnrs)), "grad_ratio": float(np.mean(grads)),
            "pair_mad": float(np.mean([s["pair_mad"] for s in spreads])),
            "pixel_std": float(np.mean([s["pixel_std"] for s in spreads]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crops-per-photo", type=int, default=6)
    parser.add_argument("--variants", type=int, default=4)
    parser.add_argument("--strength", type=float, nargs="+", default=[0.7, 1.0])
    parser.add_argument("--eta", type=float, nargs="+", default=[0.0, 0.5, 1.0])
    parser.add_argument("--steps", type=int, nargs="+", default=[5, 10, 20])
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if not (DATA / "BSD200").is_dir():
        sys.exit(f"skipped: benchmark data not found at {DATA}")
    names, crops = held_out_crops(args.crops_per_photo)
    lrs = [resize(hr, (CROP // SCALE, CROP // SCALE)) for hr in crops]
    bicubic = get_engine("bicubic").upscale(lrs, seeds=[0] * len(lrs))
    base = float(np.mean([psnr_y(b, hr, SCALE) for b, hr in zip(bicubic, crops)]))
    print(f"selection photos (held out of sr4's training): {', '.join(names)}; {len(crops)} crops {CROP} px "
          f"from {CROP // SCALE} px, {args.variants} variants each")
    print(f"bicubic Y-PSNR {base:.2f} dB\n")
    print("| strength | eta | steps | Y-PSNR (dB) | vs bicubic | pairwise MAD | pixel std | gradient SR/HR |")
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    for strength, eta, steps in itertools.product(args.strength, args.eta, args.steps):
        engine = get_engine("sr4", device="cpu", steps=steps, strength=strength, eta=eta, batch_size=32)
        row = {"strength": strength, "eta": eta, "steps": steps, **measure(engine, crops, lrs, args.variants)}
        rows.append(row)
        print(f"| {strength} | {eta} | {steps} | {row['psnr_y']:.2f} | {row['psnr_y'] - base:+.2f} | "
              f"{row['pair_mad']:.2f} | {row['pixel_std']:.2f} | {row['grad_ratio']:.3f} |", flush=True)
    eligible = [r for r in rows if r["psnr_y"] > base]
    best = max(eligible, key=lambda r: r["pair_mad"]) if eligible else None
    print(f"\nchosen (largest pairwise MAD with Y-PSNR above bicubic): {best}")
    if args.json:
        Path(args.json).write_text(json.dumps({"bicubic_psnr_y": base, "photos": names, "rows": rows,
                                               "chosen": best}, indent=2))


if __name__ == "__main__":
    main()
