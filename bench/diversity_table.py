"""The "Diversity" table of the docs: `eval-sr --variants K` per engine and setting, on two sets of real photos.

    python bench/diversity_table.py [--variants 4] [--photos 60] [--rows ROW ...] [--json out.json]
    python bench/diversity_table.py --speed [--rows ROW ...]

Each row is one `sr-augment eval-sr` run (the command line's own code, through a throw-away cache):
"ENGINE" or "ENGINE KEY=VALUE ..." (the pairs go to `--set`; a token starting with "--", e.g.
"--degrade=light", goes to eval-sr as it is), e.g. "sr4 preset=diverse" or "realesrgan --degrade=light"
(shown as "realesrgan + degrade light"). To add an engine or a setting, pass `--rows` with the default
rows and the new ones (see DEFAULT_ROWS). Sets:

- Set14: the centre 256 px crop of each photo (smaller sides used whole), bicubic-downscaled x4 by eval-sr
  (64 -> 256 px), `eval-sr --crop 256`;
- photos: `--photos` hymenoptera val photos (evenly spaced over the sorted list, ants and bees), each
  resized (antialiased bicubic) to a 128 px short side and centre-cropped to 128 px (the classifier
  study's input), then bicubic-downscaled x4 by eval-sr (32 -> 128 px), `eval-sr --crop 128`.

Columns: Y-PSNR and SSIM (mean over crops and variants, 4 px shaved), gradient SR/HR (mean Sobel magnitude
of the SR over that of the HR crop), pairwise MAD and pixel std (`metrics.variant_spread`, 0-255 units).

`--speed` measures instead, per row, the seconds one 128x128 -> 512x512 image takes: the centre 128 px
crop of Set14's first photo, fed as variant 1 (so a `--degrade` row includes making the degraded input),
after one warm-up call on a 32 px input (weights loaded, first-call costs paid); the median of
`--repeat` calls, with the load average before and after (the CPU may be shared).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

import torch  # noqa: E402,F401  (before anything that might import tensorflow)

from sr_augment.cli import main as eval_cli  # noqa: E402
from sr_augment.images import center_crop, iter_image_files, load_image, resize  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
DEFAULT_ROWS = ["bicubic", "dat-light", "sr4 preset=fast", "sr4 preset=fidelity", "sr4 preset=diverse"]


def photo_crops(folder: Path, count: int, side: int = 128) -> Path:
    """`count` photos, evenly spaced, resized to a `side` short side and centre-cropped, as PNGs in `folder`."""
    paths = sorted(iter_image_files([DATA / "hymenoptera" / "val"]))
    picked = [paths[int(i)] for i in np.linspace(0, len(paths) - 1, min(count, len(paths)))]
    folder.mkdir(parents=True, exist_ok=True)
    for path in picked:
        image = load_image(path)
        height, width = image.shape[:2]
        factor = side / min(height, width)
        image = resize(image, (max(side, round(height * factor)), max(side, round(width * factor))))
        Image.fromarray(center_crop(image, side)).save(folder / f"{path.parent.name}_{path.stem}.png")
    return folder


def run_row(row: str, data: Path, crop: int, variants: int, work: Path, index: int) -> dict:
    engine, *params = row.split()
    out = work / f"{data.name}-{index}"
    args = ["eval-sr", str(data), "--engine", engine, "--crop", str(crop), "--variants", str(variants),
            "--out", str(out), "--cache-dir", str(work / "cache"), "--no-progress"]
    for param in params:
        args += [param] if param.startswith("--") else ["--set", param]
    if eval_cli(args) != 0:
        raise SystemExit(f"eval-sr failed for {row!r}")
    return json.loads((out / "summary.json").read_text())


def display(row: str) -> str:
    """A row as the table shows it: "--degrade=light" as "+ degrade light"; "--variants=N" left to its column."""
    words = []
    for token in row.split():
        if token.startswith("--degrade="):
            words.append(f"+ degrade {token.split('=', 1)[1]}")
        elif not token.startswith("--variants="):
            words.append(token)
    return " ".join(words)


def _upscale_once(engine, picture: np.ndarray) -> None:
    """Variant 1 of `picture` in upscale mode: the engine's own input (degraded by a `--degrade` row), then SR."""
    from sr_augment.modes import engine_input

    prepare = getattr(engine, "prepare_input", None)
    lowres = prepare(picture, "upscale", seed=1, variant=1) if prepare else engine_input(picture, "upscale", engine.scale)
    engine.upscale([lowres], [1])


def speed(rows: list[str], repeat: int) -> str:
    """Seconds per 128x128 -> 512x512 image of each row's engine (see the module docstring)."""
    from sr_augment.engines import get_engine
    from sr_augment.engines.degrade import parse_degrade_option, with_degradation
    from sr_augment.warm.options import engine_params

    first = sorted(iter_image_files([DATA / "Set14"]))[0]
    image = center_crop(load_image(first), 128)
    lines = [f"input: centre 128 px of {first.name}; median of {repeat} after a warm-up", "",
             "| row | s per 128->512 image | load average before / after |", "|---|---|---|"]
    for row in rows:
        name, *params = row.split()
        degrade = next((parse_degrade_option(p.split("=", 1)[1]) for p in params if p.startswith("--degrade=")), None)
        engine = with_degradation(get_engine(name, **engine_params([p for p in params if not p.startswith("--")])),
                                  degrade)
        _upscale_once(engine, np.ascontiguousarray(image[:32, :32]))
        before = os.getloadavg()[0]
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            _upscale_once(engine, image)
            times.append(time.perf_counter() - start)
        lines.append(f"| {display(row)} | {statistics.median(times):.3g} | {before:.1f} / {os.getloadavg()[0]:.1f} |")
        print(lines[-1], flush=True)
    return "\n".join(lines)


def table(results: list[tuple[str, dict]]) -> str:
    lines = ["| method | crops | variants | Y-PSNR (dB) | vs bicubic | SSIM | gradient SR/HR | pairwise MAD | pixel std |",
             "|---|---|---|---|---|---|---|---|---|"]
    base = results[0][1]["summary"]["bicubic"]
    shown = [("bicubic", base)] + [(row, next(v for k, v in s["summary"].items() if k != "bicubic"))
                                   for row, s in results if row != "bicubic"]
    for name, s in shown:
        spread = [("-" if s[k] is None else f"{s[k]:.2f}") for k in ("pair_mad", "pixel_std")]
        if name == "bicubic":
            spread = ["0", "0"]  # no seed: every variant is the same pixels
        lines.append(f"| {display(name)} | {s['crops']} | {s['variants'] if name != 'bicubic' else '-'} | {s['psnr_y']:.2f} | "
                     f"{s['psnr_y'] - base['psnr_y']:+.2f} | {s['ssim_y']:.4f} | {s['grad_ratio']:.3f} | "
                     f"{spread[0]} | {spread[1]} |")
    lpips = results[-1][1]["optional_metrics"].get("lpips")
    lines.append(f"\nLPIPS: {lpips:.4f}" if isinstance(lpips, float) else f"\nLPIPS: {lpips}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", type=int, default=4)
    parser.add_argument("--photos", type=int, default=60, help="hymenoptera val photos (default: %(default)s)")
    parser.add_argument("--sets", default="Set14,photos")
    parser.add_argument("--rows", nargs="+", default=DEFAULT_ROWS)
    parser.add_argument("--json", default=None)
    parser.add_argument("--speed", action="store_true", help="seconds per 128 -> 512 image of each row instead")
    parser.add_argument("--repeat", type=int, default=1, help="with --speed: timed calls per row (default: %(default)s)")
    args = parser.parse_args()
    if not (DATA / "Set14").is_dir():
        sys.exit(f"skipped: benchmark data not found at {DATA}")
    if args.speed:
        print(f"\n{speed(args.rows, args.repeat)}")
        return
    report = {}
    with tempfile.TemporaryDirectory(prefix="sr-augment-diversity-") as tmp:
        work = Path(tmp)
        sets = {"Set14": (DATA / "Set14", 256),
                "photos": (lambda: photo_crops(work / "photos", args.photos), 128)}
        for name in args.sets.split(","):
            source, crop = sets[name]
            data = source() if callable(source) else source
            results = [(row, run_row(row, data, crop, args.variants, work, i)) for i, row in enumerate(args.rows)]
            report[name] = {row: summary for row, summary in results}
            print(f"\n### {name} (eval-sr --crop {crop} --variants {args.variants})\n\n{table(results)}\n", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
