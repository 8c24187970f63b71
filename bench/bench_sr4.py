"""sr4 quality and speed bar: Set5 and Set14 at x4 against bicubic.

    python bench/bench_sr4.py [--engine sr4] [--variants 3] [--json out.json]

Protocol: HR cropped to a multiple of 4 -> Pillow bicubic downscale (antialiased) -> SR -> compared with
HR on the Y channel with 4 border pixels shaved (`sr_augment.metrics`). Rows, side by side in one run:
- bicubic (the baseline);
- sr4 at its default sampler settings, seed 0;
- sr4 with 1 step: the model's one-shot x0 estimate from pure noise, which approximates the conditional
  mean, i.e. what a plain regression network trained on the same data would output (no separate
  regression model was trained);
- sr4 with strength 1: full sampling from pure noise (10 DDIM steps), the most invented detail.
Variants: `--variants` seeds per image at default settings: their mean absolute pixel difference and the
worst variant's PSNR margin over (bicubic PSNR - 0.5 dB). Speed: one 128x128 -> 512x512 image at default
settings, median of 3 after a warm-up call, on this machine's device.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

import torch  # noqa: E402  (before anything that might import tensorflow)

from sr_augment import get_engine  # noqa: E402
from sr_augment.images import iter_image_files, load_image, resize  # noqa: E402
from sr_augment.metrics import gradient_magnitude, psnr_y, ssim_y  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
SCALE = 4


def pairs(folder: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, HR cropped to a multiple of the scale, bicubic-downscaled LR) for each image."""
    out = []
    for path in iter_image_files([folder]):
        hr = load_image(path)
        hr = hr[: hr.shape[0] // SCALE * SCALE, : hr.shape[1] // SCALE * SCALE]
        lr = resize(hr, (hr.shape[0] // SCALE, hr.shape[1] // SCALE))
        out.append((path.name, hr, lr))
    return out


def score(engine, data, seed: int = 0) -> dict:
    rows = []
    for name, hr, lr in data:
        sr = engine.upscale([lr], seeds=[seed])[0]
        rows.append({"image": name, "psnr": psnr_y(sr, hr, SCALE), "ssim": ssim_y(sr, hr, SCALE),
                     "grad_ratio": gradient_magnitude(sr, SCALE) / gradient_magnitude(hr, SCALE), "sr": sr})
    return {"psnr": statistics.mean(r["psnr"] for r in rows), "ssim": statistics.mean(r["ssim"] for r in rows),
            "grad_ratio": statistics.mean(r["grad_ratio"] for r in rows), "per_image": rows}


def variants(engine, data, bicubic_rows, count: int) -> dict:
    diffs, margins = [], []
    for (_name, hr, lr), base in zip(data, bicubic_rows):
        outs = engine.upscale([lr] * count, seeds=list(range(count)))
        diffs += [np.abs(a.astype(int) - b.astype(int)).mean() for a, b in itertools.combinations(outs, 2)]
        margins += [psnr_y(o, hr, SCALE) - (base["psnr"] - 0.5) for o in outs]
    return {"mean_abs_diff": float(np.mean(diffs)), "worst_margin_db": float(min(margins))}


def cpu_time(engine) -> float:
    lr = np.asarray(Image.open(DATA / "Set14" / "baboon.png").convert("RGB"))[:128, :128]
    engine.upscale([lr], seeds=[0])
    times = []
    for seed in range(3):
        start = time.perf_counter()
        out = engine.upscale([lr], seeds=[seed + 1])[0]
        times.append(time.perf_counter() - start)
    assert out.shape == (512, 512, 3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", default="sr4")
    parser.add_argument("--variants", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if not (DATA / "Set5").is_dir():
        sys.exit(f"skipped: benchmark data not found at {DATA}: the real images live in ../shared/data beside the project")

    default = get_engine(args.engine, device=args.device)
    engines = {
        "bicubic": get_engine("bicubic"),
        f"{args.engine} default ({default.steps} DDIM steps, strength {default.strength}, eta {default.eta})": default,
        f"{args.engine} 1 step (~ regression mean)": get_engine(args.engine, steps=1, strength=1.0, device=args.device),
        f"{args.engine} strength 1 (sampling from noise)": get_engine(args.engine, strength=1.0, device=args.device),
    }
    default_name = list(engines)[1]
    results = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
                          f"device {engines[default_name].device}", "sets": {}}
    for set_name in ("Set5", "Set14"):
        data = pairs(DATA / set_name)
        rows = {name: score(engine, data) for name, engine in engines.items()}
        var = variants(engines[default_name], data, rows["bicubic"]["per_image"], args.variants)
        for row in rows.values():
            for r in row["per_image"]:
                r.pop("sr")
        results["sets"][set_name] = {"rows": rows, "variants": var}

        print(f"\n{set_name} (x{SCALE}, Y channel, {SCALE} px shaved, {len(data)} images)\n")
        print("| method | PSNR (dB) | SSIM | grad SR/HR |")
        print("|---|---|---|---|")
        for name, row in rows.items():
            print(f"| {name} | {row['psnr']:.2f} | {row['ssim']:.4f} | {row['grad_ratio']:.3f} |")
        gain = rows[default_name]["psnr"] - rows["bicubic"]["psnr"]
        print(f"\n{args.engine} - bicubic: {gain:+.2f} dB (bar: +0.50); "
              f"{args.variants} variants: mean |difference| {var['mean_abs_diff']:.2f}/255, worst variant "
              f"{var['worst_margin_db']:+.2f} dB from (bicubic - 0.5 dB) (bar: > 0)")

    seconds = cpu_time(engines[default_name])
    results["seconds_128_to_512"] = seconds
    print(f"\n128x128 -> 512x512, default settings, {results['machine']}: {seconds:.2f} s (median of 3)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
