"""sr4 presets side by side: seconds per 128x128 -> 512x512 image, `fast` (the default) vs `fidelity` (the earlier default).

    python bench/bench_sr4_presets.py [--images 6] [--presets fast,fidelity] [--json out.json]

Inputs: the centre 128x128 crop of the first `--images` Set14 photos (real photos; the crop is the LR
input). Each preset's engine is built once and warmed up with one call; then, image by image, every preset
runs on the same input in turn (interleaved, so a change in the machine's load hits all of them alike).
Per preset: median wall seconds and median process CPU seconds per image, the UNet calls per image, and
each preset's ratio to the last one listed (default: fidelity).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import torch  # noqa: E402  (before anything that might import tensorflow)

from sr_augment import get_engine  # noqa: E402
from sr_augment.images import center_crop, iter_image_files, load_image  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "Set14"
SIDE = 128


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--presets", default="fast,fidelity")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if not DATA.is_dir():
        sys.exit(f"skipped: benchmark data not found at {DATA}")
    inputs = [center_crop(load_image(p), SIDE) for p in sorted(iter_image_files([DATA]))[: args.images]]
    presets = args.presets.split(",")
    engines = {name: get_engine("sr4", device=args.device, preset=name) for name in presets}
    calls = {}
    for name, engine in engines.items():
        counted = []
        handle = engine.pipe.unet.register_forward_hook(lambda *_, c=counted: c.append(1))
        engine.upscale([inputs[0]], seeds=[0])  # warm-up: loads the model, counts the UNet calls
        handle.remove()
        calls[name] = len(counted)
    wall = {name: [] for name in presets}
    cpu = {name: [] for name in presets}
    for i, image in enumerate(inputs):
        for name, engine in engines.items():
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            out = engine.upscale([image], seeds=[i + 1])[0]
            wall[name].append(time.perf_counter() - start_wall)
            cpu[name].append(time.process_time() - start_cpu)
            assert out.shape == (4 * SIDE, 4 * SIDE, 3)
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, {args.device}"
    print(f"sr4 presets, {len(inputs)} Set14 centre crops {SIDE} -> {4 * SIDE}, interleaved; {machine}\n")
    print("| preset | steps | strength | eta | UNet calls | wall s/image (median) | CPU s/image (median) | wall ratio |")
    print("|---|---|---|---|---|---|---|---|")
    reference = statistics.median(wall[presets[-1]])
    results = {"machine": machine, "images": len(inputs), "presets": {}}
    for name, engine in engines.items():
        median_wall, median_cpu = statistics.median(wall[name]), statistics.median(cpu[name])
        results["presets"][name] = {"steps": engine.steps, "strength": engine.strength, "eta": engine.eta,
                                    "unet_calls": calls[name], "wall_s": wall[name], "cpu_s": cpu[name],
                                    "median_wall_s": median_wall, "median_cpu_s": median_cpu}
        print(f"| {name} | {engine.steps} | {engine.strength} | {engine.eta} | {calls[name]} | {median_wall:.2f} | "
              f"{median_cpu:.2f} | {reference / median_wall:.2f}x faster than {presets[-1]} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
