"""Ray warm throughput with 1 and 2 actors, side by side in one run (and the plain local warm as reference).

    python bench/bench_ray.py [--crops 32] [--crop 64] [--engine sr4] [--repeats 1] [--json out.json]

Protocol: the crops of `bench_scaleout.write_crops` (BSD200 photos from ../shared/data, else seeded noise).
One local Ray cluster is started first (`ray.init(num_cpus=cores + 2)`: more logical CPUs than actors, as Ray
Data needs free CPUs for its own tasks or stalls) and is not timed. Each Ray row is one `ray_warm(...)` call
into a fresh shard folder (1 variant, batch 8): its seconds include starting the actors, building the engine
in each, reading the images, generating and writing the shards, which is what a user waits for. Each actor
holds one logical CPU, so Ray gives it OMP_NUM_THREADS=1: 1 actor uses one core, 2 actors two. The reference
row is `sr_augment.warm.warm` in this process into a fresh cache (torch's default threads: every core). With
`--repeats R` each row runs R times in turn and its fastest run counts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402,F401  (before anything that might import tensorflow)
from bench_scaleout import write_crops  # noqa: E402


def ray_row(crops: Path, out: Path, actors: int, args) -> dict:
    from sr_augment.warm.ray import ray_warm

    start = time.perf_counter()
    report = ray_warm([crops], args.engine, str(out), actors=actors, batch_size=args.batch_size, progress=False)
    seconds = time.perf_counter() - start
    assert report.generated == args.crops and report.failed == 0, report
    return {"entries": report.generated, "seconds": round(seconds, 2), "per_s": report.generated / seconds}


def local_row(crops: Path, cache_dir: Path, args) -> dict:
    from sr_augment import get_engine
    from sr_augment.cache import SRCache
    from sr_augment.warm import warm

    start = time.perf_counter()
    engine = get_engine(args.engine)
    with SRCache(cache_dir) as cache:
        report = warm([crops], engine, cache, batch_size=args.batch_size, progress=False)
    seconds = time.perf_counter() - start
    assert report.generated == args.crops, report
    return {"entries": report.generated, "seconds": round(seconds, 2), "per_s": report.generated / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crops", type=int, default=32, help="32 = 4 batches of 8: 2 per actor")
    parser.add_argument("--crop", type=int, default=64, help="LR crop side (sr4 makes it 4x)")
    parser.add_argument("--engine", default="sr4")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    import ray

    cores = os.cpu_count() or 1
    ray.init(num_cpus=cores + 2, include_dashboard=False, log_to_driver=False)
    rows: dict[str, dict] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
            tmp = Path(tmp)
            source = write_crops(tmp / "crops", args.crops, args.crop)
            local_row(tmp / "crops", tmp / "heat", args)  # weights into the page cache; not counted
            for repeat in range(args.repeats):
                for name, run in (("local warm (no Ray)", lambda r=repeat: local_row(tmp / "crops", tmp / f"c{r}", args)),
                                  ("Ray, 1 actor", lambda r=repeat: ray_row(tmp / "crops", tmp / f"o1-{r}", 1, args)),
                                  ("Ray, 2 actors", lambda r=repeat: ray_row(tmp / "crops", tmp / f"o2-{r}", 2, args))):
                    row = run()
                    print(f"{name}: {row}", flush=True)
                    if name not in rows or row["seconds"] < rows[name]["seconds"]:
                        rows[name] = row
    finally:
        ray.shutdown()
    print(f"\n{platform.processor() or platform.machine()}, {cores} cores; {args.crops} crops of {args.crop}px from "
          f"{source}; engine {args.engine}, batch {args.batch_size}\n")
    print("| run | entries | s | entries/s |")
    print("|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['entries']} | {row['seconds']:.1f} | {row['per_s']:.2f} |")
    ratio = rows["Ray, 2 actors"]["per_s"] / rows["Ray, 1 actor"]["per_s"]
    print(f"\n2 actors / 1 actor throughput: {ratio:.2f}x; 2 actors / local warm: "
          f"{rows['Ray, 2 actors']['per_s'] / rows['local warm (no Ray)']['per_s']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "ratio_2_over_1": ratio, "cores": cores}, indent=2))


if __name__ == "__main__":
    main()
