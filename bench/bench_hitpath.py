"""What SRAugment costs on a warm cache: the torchvision pipeline with and without it, side by side.

    python bench/bench_hitpath.py [--repeats 9] [--images 120] [--engine bicubic|sr4] [--codecs webp,raw]

One process, on the first `--images` photos of ../shared/data/hymenoptera/train (ImageFolder's loader):
- plain: decode -> v2.Resize(128) -> v2.CenterCrop(128) -> v2.ToImage -> v2.ToDtype(float32, scale=True);
- sr[codec]: the same with SRAugment(mode="resynthesize", on_miss="error") after CenterCrop, on a cache
  warmed beforehand with that codec (one cache per codec; the first is the default codec's);
- SRAugment alone: the transform on the PIL crops (conversions, draws, the hit);
- get: `SRCache.get` alone on the 128x128 crops, and its parts: the key (normalise + hash) and the
  record decode.
The calls are interleaved image by image (the order rotates), timed in this process's CPU time by
default (other processes on a shared machine inflate wall time unevenly; `--clock wall` to compare);
the median per-image time of the repeats is printed, and the ratio sr/plain as the median of the
per-repeat ratios. The hit path does not depend on the engine (bicubic warms in a second; sr4 in ~15 s).
torch runs on one thread: the numbers are one data-loading worker's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "hymenoptera" / "train"
SIZE = 128


def photos(folder: Path, count: int) -> list[Path]:
    """The first `count` files ImageFolder's loader decodes (the GIF placeholder decodes too)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMG_EXTENSIONS)
    return files[:count]


CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}


def per_image_ms(fn, items, clock=time.perf_counter) -> float:
    start = clock()
    for item in items:
        fn(item)
    return (clock() - start) * 1000.0 / len(items)


def interleaved_ms(timed: dict, repeats: int, clock) -> dict[str, list[float]]:
    """Per repeat, each name's mean ms per item; the calls are interleaved item by item (the order of
    the names rotates with the item), so load from elsewhere falls on every name alike."""
    names = list(timed)
    times = {name: [] for name in names}
    count = len(next(iter(timed.values()))[1])
    for _ in range(repeats):
        totals = dict.fromkeys(names, 0.0)
        for i in range(count):
            shift = i % len(names)
            for name in names[shift:] + names[:shift]:
                fn, items = timed[name]
                start = clock()
                fn(items[i])
                totals[name] += clock() - start
        for name in names:
            times[name].append(totals[name] * 1000.0 / count)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--images", type=int, default=120)
    parser.add_argument("--engine", default="bicubic", choices=("bicubic", "sr4"))
    parser.add_argument("--clock", default="cpu", choices=tuple(CLOCKS),
                        help="cpu: this process's CPU time (robust to other processes on a shared machine); wall")
    parser.add_argument("--codecs", default=None, help="comma-separated stored forms to compare (default: the default codec)")
    args = parser.parse_args()
    if not DATA.is_dir():
        print(f"skipped: the hymenoptera photos are not at {DATA}")
        return

    import torch
    from torchvision.datasets.folder import pil_loader
    from torchvision.transforms import v2

    from sr_augment import get_engine
    from sr_augment.cache import SRCache
    from sr_augment.cache import codec as codec_module
    from sr_augment.images import pil_to_rgb
    from sr_augment.torch_transforms import SRAugment

    torch.set_num_threads(1)
    codecs = args.codecs.split(",") if args.codecs else [codec_module.DEFAULT_CODEC]
    files = photos(DATA, args.images)
    engine = get_engine(args.engine)
    head = [v2.Resize(SIZE), v2.CenterCrop(SIZE)]
    tail = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    crop_images = [v2.Compose(head)(pil_loader(str(f))) for f in files]  # what SRAugment receives (PIL)
    crops = [pil_to_rgb(image) for image in crop_images]  # the pixels it keys on

    with tempfile.TemporaryDirectory() as tmp:
        pipelines = {"plain": v2.Compose(head + tail)}
        caches = {}
        for name in codecs:
            folder = Path(tmp) / name
            with SRCache(folder, codec=name) as warm_cache:
                warm_cache.get_or_create_many(crops, engine, "resynthesize", [0] * len(crops))
                kib = warm_cache.stats().bytes / 1024 / len(crops)
            sr = SRAugment(engine=engine, mode="resynthesize", on_miss="error", cache_dir=folder)
            pipelines[f"sr[{name}]"] = v2.Compose(head + [sr] + tail)
            caches[name] = (sr.core.cache, kib)
        get_cache = caches[codecs[0]][0]
        records = [get_cache._fetch(get_cache.key(c, engine, "resynthesize", 0))[1] for c in crops]

        def run_pipeline(transform):
            return lambda path: transform(pil_loader(str(path)))

        timed = {name: (run_pipeline(t), files) for name, t in pipelines.items()}
        timed["SRAugment alone"] = (pipelines[f"sr[{codecs[0]}]"].transforms[2], crop_images)
        timed["get"] = (lambda c: get_cache.get(c, engine, "resynthesize", 0), crops)
        timed["get: key"] = (lambda c: get_cache.key(c, engine, "resynthesize", 0), crops)
        timed["get: decode"] = (codec_module.decode, records)
        for fn, items in timed.values():  # warm-up: file pages, imports, SQLite pages
            per_image_ms(fn, items)
        times = interleaved_ms(timed, args.repeats, CLOCKS[args.clock])

    print(f"hit path: {len(files)} hymenoptera photos at {SIZE} px, engine {args.engine}, "
          f"median of {args.repeats} interleaved repeats, {args.clock} time, torch threads 1")
    print(f"{'what':<18}{'ms/image':>10}{'ratio':>8}{'KiB/entry':>11}")
    plain = times["plain"]
    for name, values in times.items():
        ratio = ""
        kib = ""
        if name.startswith("sr["):
            ratio = f"{statistics.median(s / p for s, p in zip(values, plain)):.3f}"
            kib = f"{caches[name[3:-1]][1]:.1f}"
        print(f"{name:<18}{statistics.median(values):>10.3f}{ratio:>8}{kib:>11}")
    print(f"ratio sr/plain, stored form {codecs[0]} (default {codec_module.DEFAULT_CODEC}): "
          f"{statistics.median(s / p for s, p in zip(times[f'sr[{codecs[0]}]'], plain)):.3f}")


if __name__ == "__main__":
    sys.exit(main())
