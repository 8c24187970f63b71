"""Export and import speed (MB/s) of a cache of N bicubic entries, side by side in one run.

    python bench/bench_shards.py --entries 2000 --side 64 --repeats 3

Builds a cache of N bicubic x4 results of random images (side -> 4*side, the cache's default codec, printed;
noise is the worst case for a codec, so entries are large; raw records are exported as PNG), then times, for
each repeat: `export` to a fresh shard folder, `import` of those shards into a fresh cache (every record
rebuilt, checksummed and decoded), and `merge` of the cache into a fresh one; and, as the reference, reading
every record of the cache (`iter_records`, the export's input side) and a plain file copy of the cache folder.
MB are the records' bytes (the same for every row), medians over the repeats.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sr_augment.cache import SRCache, codec  # noqa: E402
from sr_augment.cache.transfer import TransferReport, export_cache, import_shards, iter_records, merge_caches  # noqa: E402
from sr_augment.engines import BicubicEngine  # noqa: E402


def build(cache_dir: Path, entries: int, side: int) -> int:
    rng = np.random.default_rng(0)
    engine = BicubicEngine()
    with SRCache(cache_dir) as cache:
        for start in range(0, entries, 64):
            images = [rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for _ in range(min(64, entries - start))]
            cache.get_or_create_many(images, engine)
    report, codecs = TransferReport(), set()
    for _, record in iter_records(cache_dir, report):
        codecs.add(codec.split(record)[0]["codec"])
    return report.bytes, ", ".join(sorted(codecs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=2000)
    parser.add_argument("--side", type=int, default=64, help="input side; entries are 4x this")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shard-size", type=int, default=256 * 2**20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        size, codecs = build(tmp / "cache", args.entries, args.side)
        print(f"cache: {args.entries} entries ({args.side}->{4 * args.side} px, stored as {codecs}), "
              f"{size / 1e6:.1f} MB of records")
        times: dict[str, list[float]] = {"read records (reference)": [], "copy folder (reference)": [], "export": [],
                                         "import": [], "merge": []}
        for repeat in range(args.repeats):
            start = time.perf_counter()
            for _ in iter_records(tmp / "cache", TransferReport()):
                pass
            times["read records (reference)"].append(time.perf_counter() - start)
            start = time.perf_counter()
            shutil.copytree(tmp / "cache", tmp / f"copy{repeat}")
            times["copy folder (reference)"].append(time.perf_counter() - start)
            report = export_cache(tmp / "cache", str(tmp / f"shards{repeat}"), shard_size=args.shard_size, progress=False)
            assert report.copied == args.entries
            times["export"].append(report.seconds)
            with SRCache(tmp / f"node{repeat}") as node:
                report = import_shards([str(tmp / f"shards{repeat}")], node, progress=False)
            assert report.copied == args.entries and not report.refused
            times["import"].append(report.seconds)
            with SRCache(tmp / f"merged{repeat}") as merged:
                report = merge_caches([tmp / "cache"], merged, progress=False)
            assert report.copied == args.entries
            times["merge"].append(report.seconds)
            for name in ("copy", "shards", "node", "merged"):
                shutil.rmtree(tmp / f"{name}{repeat}")
        print(f"\n| operation | seconds (median of {args.repeats}) | MB/s | entries/s |")
        print("|---|---|---|---|")
        for name, values in times.items():
            seconds = statistics.median(values)
            print(f"| {name} | {seconds:.2f} | {size / 1e6 / seconds:.1f} | {args.entries / seconds:.0f} |")


if __name__ == "__main__":
    main()
