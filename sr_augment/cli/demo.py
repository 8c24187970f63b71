"""`sr-augment demo`: the engines that run offline, side by side on sample photos that scikit-image ships.

HR crop -> bicubic-downscaled LR -> each engine warms a temporary cache with two variants of every image
-> read back -> one comparison grid PNG (rows: photos; columns: LR (nearest) | bicubic | each engine's
variants | original) and, per engine, the cost of generating an entry and of a cache hit (timings.json,
and a table on stdout).

A deterministic engine (bicubic, dat-light, Real-ESRGAN) gives the same pixels for every seed, so it runs
with `degrade="light"` (`sr_augment.engines.degrade`): variant 0 is its clean output, variant 1 the SR of
a seeded mild degradation of the input, so the grid shows what variants of that engine add. Engines not
available here are skipped and named, with what to install (`sr-augment engines` says the same).
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from sr_augment.engines.base import EngineUnavailable
from sr_augment.grid import comparison_grid
from sr_augment.images import center_crop, resize
from sr_augment.timing import median_ms

SAMPLES = ("astronaut", "coffee", "chelsea")
"""scikit-image's bundled photos the demo crops (one grid row each)."""

LR_SIZE = 48
"""Side of the LR crops in pixels: x4 gives 192 px tiles, and every default engine runs in seconds on a CPU."""

DEMO_ENGINES = ("sr4", "dat-light", "realesrgan")
"""What `sr-augment demo` runs by default: every engine that runs offline on a CPU from weights a package
ships (bicubic is the baseline column). `--engines` names others (e.g. realesr-animevideov3)."""

DEGRADE = "light"
"""The degradation preset that gives deterministic engines varied variants in the demo."""


def sample_images(lr_size: int = LR_SIZE, scale: int = 4, samples=SAMPLES) -> dict[str, np.ndarray]:
    """Centre crops (lr_size * scale square) of scikit-image's bundled photos, as uint8 RGB."""
    from skimage import data

    hr_size = lr_size * scale
    out = {}
    for name in samples:
        image = getattr(data, name)()[:, :, :3]
        out[name] = resize(center_crop(image, min(image.shape[:2])), (hr_size, hr_size))
    return out


@dataclass
class DemoEngine:
    """One engine of the demo: what it was asked as, the engine that runs (wrapped in a `DegradedEngine`
    when deterministic) and the grid label of each variant."""

    spec: str
    engine: object
    degrade: str | dict | None
    load_s: float
    labels: list[str] = field(default_factory=list)


def _spec_name(spec) -> str:
    return spec if isinstance(spec, str) else getattr(spec, "name", type(spec).__name__)


def unavailable(specs) -> dict[str, str]:
    """{spec: why it cannot run here} for those of `specs` that `sr-augment engines` lists as unavailable
    (found without loading anything). Specs it does not list (files, classes, Engine objects) are not
    judged here: building them says."""
    from sr_augment.engines.listing import builtin_engines

    entries = {entry.spec: entry for entry in builtin_engines()}
    return {spec: entries[spec].reason for spec in specs
            if isinstance(spec, str) and spec in entries and not entries[spec].available}


def build_engines(specs, *, scale: int | None = None, variants: int = 2, degrade: str | None = DEGRADE,
                  device: str = "auto", dtype: str = "auto", params: dict | None = None,
                  steps: int | None = None) -> tuple[list[DemoEngine], dict[str, str], int]:
    """Build the demo's engines: (engines, {spec: why skipped}, scale). An engine that is not available
    is skipped with the reason; a bad spec or parameter raises (`ValueError`, `TypeError`). `scale` None:
    the first engine's own (4 for every named engine), then every other engine at that scale."""
    from sr_augment.engines import get_engine
    from sr_augment.engines.degrade import with_degradation
    from sr_augment.engines.determinism import is_deterministic

    specs = list(dict.fromkeys(specs))  # each once, in the order given
    skipped = unavailable(specs)
    built = []
    for spec in specs:
        name = _spec_name(spec)
        if name in skipped:
            continue
        start = time.perf_counter()
        try:
            engine = get_engine(spec, scale=scale, steps=steps, device=device, dtype=dtype, **(params or {}))
        except EngineUnavailable as exc:
            skipped[name] = str(exc)
            continue
        if scale is None:
            scale = int(engine.scale)
        chosen = degrade if is_deterministic(engine) else None
        engine = with_degradation(engine, chosen)
        engine.upscale([np.zeros((16, 16, 3), np.uint8)], seeds=[0])  # loads the model: not counted as generating
        item = DemoEngine(name, engine, chosen, time.perf_counter() - start)
        how = chosen if chosen is None or isinstance(chosen, str) else "custom"
        for v in range(variants):
            if how is None:
                item.labels.append(f"{name} v{v}")
            else:
                item.labels.append(f"{name} v{v} (clean)" if v == 0 else f"{name} v{v} (degrade {how})")
        built.append(item)
    return built, skipped, 4 if scale is None else int(scale)


def _timed_entries(cache, engine, lr: dict, variants: int, repeats: int) -> tuple[dict, dict]:
    """Generate `variants` entries per image through `cache` (one batched engine call), read them back;
    (the results per image, the cost per entry)."""
    names = list(lr)
    before = cache.stats().as_dict()
    start = time.perf_counter()
    cache.get_or_create_many([lr[n] for n in names for _ in range(variants)], engine, "upscale",
                             [v for _ in names for v in range(variants)])
    generate_ms = (time.perf_counter() - start) * 1000.0 / (len(names) * variants)
    sr = {n: [cache.get(lr[n], engine, "upscale", v) for v in range(variants)] for n in names}
    hit_ms = median_ms(lambda: [cache.get(lr[n], engine, "upscale", v) for n in names for v in range(variants)],
                       repeats) / (len(names) * variants)
    after = cache.stats().as_dict()
    return sr, {"entries": len(names) * variants, "generate_ms_per_entry": round(generate_ms, 3),
                "hit_ms_per_entry": round(hit_ms, 3), "cache_hits": after["hits"] - before["hits"],
                "cache_misses": after["misses"] - before["misses"]}


def run_demo(engines=DEMO_ENGINES, out_dir: str | Path = "sr-augment-demo", variants: int = 2, repeats: int = 5, *,
             lr_size: int = LR_SIZE, samples=SAMPLES, scale: int | None = None, degrade: str | None = DEGRADE,
             device: str = "auto", dtype: str = "auto", params: dict | None = None, steps: int | None = None) -> dict:
    """Run the demo: `engines` (specs or `Engine` objects; unavailable ones are skipped and named) on crops
    of `samples`, `variants` each; writes grid.png and timings.json into `out_dir` and returns the
    timings' dict (`engines`: per engine, `skipped`: {spec: why}, `columns`: the grid's column labels)."""
    if isinstance(engines, str) or not isinstance(engines, (list, tuple)):
        engines = [engines]
    if int(variants) < 1:
        raise ValueError(f"variants must be at least 1, got {variants}")
    if int(lr_size) < 8:
        raise ValueError(f"lr_size must be at least 8 pixels, got {lr_size}")
    from sr_augment.cache import SRCache

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    begin = time.perf_counter()
    built, skipped, scale = build_engines(engines, scale=scale, variants=variants, degrade=degrade, device=device,
                                          dtype=dtype, params=params, steps=steps)
    from sr_augment.engines import get_engine

    baseline = get_engine("bicubic", scale=scale)
    hr = sample_images(lr_size, scale, samples)
    lr = {name: resize(image, (lr_size, lr_size)) for name, image in hr.items()}
    names = list(hr)
    timings = {}
    try:
        with tempfile.TemporaryDirectory(prefix="sr-augment-demo-") as tmp:
            with SRCache(tmp) as cache:
                bicubic, timings["bicubic"] = _timed_entries(cache, baseline, lr, 1, repeats)
                timings["bicubic"].update(fingerprint=baseline.fingerprint, degrade=None, load_s=0.0)
                results = {}
                for item in built:
                    if item.spec in timings:  # bicubic asked as an engine: its degraded variants, apart from the baseline
                        item.spec = item.engine.name
                    results[item.spec], timings[item.spec] = _timed_entries(cache, item.engine, lr, variants, repeats)
                    timings[item.spec].update(fingerprint=item.engine.fingerprint, degrade=item.degrade,
                                              load_s=round(item.load_s, 3))
                png_paths = []
                for n in names:
                    path = Path(tmp) / f"{n}.png"
                    Image.fromarray(hr[n]).save(path)
                    png_paths.append(path)
                png_ms = median_ms(lambda: [np.asarray(Image.open(p).convert("RGB")) for p in png_paths],
                                   repeats) / len(names)
                stats = cache.stats().as_dict()
    finally:
        for item in built:
            close = getattr(item.engine, "close", None)
            if callable(close):
                close()
    columns = ["LR (nearest)", "bicubic", *[label for item in built for label in item.labels], "original"]
    rows = []
    for n in names:
        row = [("LR (nearest)", resize(lr[n], hr[n].shape[:2], Image.NEAREST)), ("bicubic", bicubic[n][0])]
        row += [(label, results[item.spec][n][v]) for item in built for v, label in enumerate(item.labels)]
        row.append(("original", hr[n]))
        rows.append(row)
    grid_path = out_dir / "grid.png"
    comparison_grid(rows).save(grid_path)
    result = {
        "samples": names, "images": len(names), "variants": variants, "lr_size": lr_size, "scale": scale,
        "columns": columns, "engines": timings, "skipped": skipped,
        "png_decode_ms_per_entry": round(png_ms, 3), "cache_hits": stats["hits"], "cache_misses": stats["misses"],
        "total_s": round(time.perf_counter() - begin, 3), "grid": str(grid_path),
    }
    (out_dir / "timings.json").write_text(json.dumps(result, indent=2))
    return result


def timings_table(result: dict) -> str:
    """The per-engine timings of `run_demo`'s result as a small text table, then the skipped engines."""
    rows = [("engine", "variants", "load s", "generate ms/entry", "hit ms/entry")]
    for name, t in result["engines"].items():
        how = t["degrade"] if t["degrade"] is None or isinstance(t["degrade"], str) else "custom"
        count = str(t["entries"] // result["images"])
        rows.append((name, count if how is None else f"{count} (v1+: degrade {how})", f"{t['load_s']:.1f}",
                     f"{t['generate_ms_per_entry']:.1f}", f"{t['hit_ms_per_entry']:.2f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
             for r in rows]
    lines.append(f"PNG file decode of the same size: {result['png_decode_ms_per_entry']:.2f} ms/entry")
    lines += [f"skipped {name}: {why}" for name, why in result["skipped"].items()]
    return "\n".join(lines)


# -- the command line ----------------------------------------------------------------------------------------
def add_demo_options(parser) -> None:
    """The `demo` command's own options (the engine options come first, shared with the other commands)."""
    for action in parser._actions:
        if action.dest == "engine":  # not given: every available engine of --engines
            action.help = ("run just this engine (any spec `sr-augment engines` lists, a checkpoint file, ...) "
                           "instead of --engines")
    parser.set_defaults(engine=None)
    parser.add_argument("--engines", default=",".join(DEMO_ENGINES), metavar="A,B,...",
                        help="engines to compare, comma-separated; those not available here are skipped and named "
                             "with what to install (default: %(default)s)")
    parser.add_argument("--variants", type=int, default=2, help="variants per image and engine (default: %(default)s)")
    parser.add_argument("--degrade", default=DEGRADE, metavar="PRESET|JSON|none",
                        help="degradation preset (or JSON settings, as warm --degrade) that gives deterministic "
                             "engines varied variants (variant 0 stays clean); none: their variants are copies "
                             "(default: %(default)s)")
    parser.add_argument("--lr-size", type=int, default=LR_SIZE,
                        help="side of the LR crops in pixels; tiles are --scale times that (default: %(default)s)")
    parser.add_argument("--out", default="sr-augment-demo", help="output folder (default: %(default)s)")


def run_from_args(args) -> int:
    """`sr-augment demo`: run, print the grid's path and the timings table."""
    from sr_augment.engines.degrade import parse_degrade_option
    from sr_augment.errors import DegradeSettingsError
    from sr_augment.warm import options as warm_options

    if args.engine is not None:
        specs = [args.engine]
    else:
        specs = [s.strip() for s in args.engines.split(",") if s.strip()]
        if not specs:
            raise SystemExit("sr-augment: --engines names no engine")
        if args.params or args.steps is not None:
            raise SystemExit("sr-augment: --set and --steps are settings of one engine: give it with --engine")
    try:
        degrade = None if args.degrade.strip().lower() == "none" else parse_degrade_option(args.degrade)
        result = run_demo(specs, out_dir=args.out, variants=args.variants, lr_size=args.lr_size, scale=args.scale,
                          degrade=degrade, device=args.device, dtype=args.dtype,
                          params=warm_options.engine_params(args.params), steps=args.steps)
    except (DegradeSettingsError, ValueError, TypeError) as exc:
        raise SystemExit(f"sr-augment: {exc}") from None
    print(f"wrote {result['grid']} ({result['images']} photos x {len(result['columns'])} columns: "
          f"{', '.join(result['columns'])})")
    print(timings_table(result))
    return 0
