"""Warm throughput with 1 and N processes under `accelerate launch`, side by side in one run.

    python bench/bench_scaleout.py [--crops 24] [--crop 64] [--processes 2] [--engine sr4] [--json out.json]

Protocol: `--crops` LR crops of `--crop` px (centre-ish crops of BSD200 photos from ../shared/data, else
seeded noise), written to a temporary folder. Each configuration warms them into its own fresh cache
with `accelerate launch [...] -m sr_augment warm` (sr4, 1 variant, batch 8), as a user would run it:
- `1 proc x all threads`: `accelerate launch --num_processes 1` (the plain, one-process warm), torch
  using every core (OMP_NUM_THREADS = cores);
- `1 proc x T threads`: the same with the threads one process of the N-process run gets;
- `N procs x T threads`: `accelerate launch --multi_gpu --num_processes N` (CPU processes over gloo
  here), T = cores // N threads each.
Before the runs, the engine is built and run once in this process, so no run pays for reading the
weights from a cold disk. With `--repeats R`, each configuration runs R times (in turn) and its fastest
run counts. Throughput = entries / the job's warm seconds (from the JSON summary: the model load, which sr4 does
on first use, is inside it; process start-up and imports are not); wall = the whole command. Scaling
efficiency = throughput(N) / (N x throughput(1 proc x T threads)), and the plain speed-up over the
one-process run using the whole machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "BSD200"


def write_crops(folder: Path, count: int, side: int) -> str:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    photos = sorted(DATA.glob("*.png")) if DATA.is_dir() else []
    for i in range(count):
        if photos:
            image = np.asarray(Image.open(photos[i % len(photos)]).convert("RGB"))
            y = rng.integers(0, image.shape[0] - side + 1)
            x = rng.integers(0, image.shape[1] - side + 1)
            crop = image[y:y + side, x:x + side]
        else:
            crop = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        Image.fromarray(crop).save(folder / f"{i:03d}.png")
    return f"{min(count, len(photos))} BSD200 photos" if photos else "seeded noise (BSD200 not found)"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(crops: Path, cache: Path, processes: int, threads: int, args) -> dict:
    launch = [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", "--num_processes", str(processes),
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--num_cpu_threads_per_process", str(threads)]
    if processes > 1:
        launch += ["--multi_gpu", "--main_process_port", str(free_port())]
    command = [*launch, "-m", "sr_augment", "warm", str(crops), "--engine", args.engine, "--cache-dir", str(cache),
               "--batch-size", str(args.batch_size), "--json", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1",
           "HF_HOME": str(cache.parent / "hf")}  # no user accelerate config decides anything
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    entries = summary["generated"] + summary["cached"]
    assert summary["generated"] == entries == args.crops, summary
    ranks = summary.get("ranks") or [{"rank": 0, "images": summary["images"], "seconds": summary["seconds"]}]
    return {"processes": processes, "threads": threads, "entries": entries, "warm_s": summary["seconds"],
            "wall_s": round(wall, 2), "per_s": entries / summary["seconds"],
            "rank_s": [r["seconds"] for r in ranks], "rank_images": [r["images"] for r in ranks]}


def heat_page_cache(engine: str, side: int) -> None:
    """Load the engine and run it once here, so the weights are in the OS page cache for every run."""
    from sr_augment import get_engine

    get_engine(engine).upscale([np.zeros((side, side, 3), np.uint8)], seeds=[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crops", type=int, default=24)
    parser.add_argument("--crop", type=int, default=64, help="LR crop side (sr4 makes it 4x)")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--engine", default="sr4")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    per_process = max(1, cores // args.processes)
    with tempfile.TemporaryDirectory(prefix="bench-scaleout-") as tmp:
        tmp = Path(tmp)
        source = write_crops(tmp / "crops", args.crops, args.crop)
        configs = [("1 proc x all threads", 1, cores), (f"1 proc x {per_process} threads", 1, per_process),
                   (f"{args.processes} procs x {per_process} threads", args.processes, per_process)]
        heat_page_cache(args.engine, args.crop)
        rows = {}
        for repeat in range(args.repeats):
            for i, (name, processes, threads) in enumerate(configs):
                row = run(tmp / "crops", tmp / f"cache{repeat}-{i}", processes, threads, args)
                print(f"{name}: {row}", flush=True)
                if name not in rows or row["warm_s"] < rows[name]["warm_s"]:
                    rows[name] = row
    whole, single, many = (rows[name] for name, _, _ in configs)
    efficiency = many["per_s"] / (args.processes * single["per_s"])
    speedup = many["per_s"] / whole["per_s"]
    imbalance = max(many["rank_s"]) / (sum(many["rank_s"]) / len(many["rank_s"]))
    print(f"\n{platform.processor() or platform.machine()}, {cores} cores; {args.crops} crops of {args.crop}px from "
          f"{source}; engine {args.engine}, batch {args.batch_size}\n")
    print("| run | entries | warm s | entries/s | wall s (incl. launch) | per-process s |")
    print("|---|---|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['entries']} | {row['warm_s']:.1f} | {row['per_s']:.2f} | {row['wall_s']:.1f} | "
              f"{', '.join(f'{s:.1f}' for s in row['rank_s'])} |")
    print(f"\nscaling efficiency {args.processes} procs vs {args.processes} x one {per_process}-thread process: "
          f"{efficiency:.2f}; speed-up over one process using all {cores} cores: {speedup:.2f}x; "
          f"slowest process / mean: {imbalance:.2f}")
    print(f"seconds per entry: {whole['warm_s'] / whole['entries']:.3f} (1 proc, all cores), "
          f"{single['warm_s'] / single['entries']:.3f} (1 proc, {per_process} threads)")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "efficiency": efficiency, "speedup": speedup,
                                               "imbalance": imbalance, "cores": cores}, indent=2))


if __name__ == "__main__":
    main()
