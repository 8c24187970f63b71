"""`sr-augment eval-sr`: how close an engine's SR comes to the HR originals, against bicubic.

Protocol (the SeeSR paper's and the seed thesis's): HR crops -> bicubic-downscaled LR (the
`resynthesize` mode's degradation) -> SR -> Y-channel PSNR and SSIM against the HR crop with `scale`
border pixels shaved. SR results go through the cache, so a second run, or `warm` beforehand, costs no
diffusion. With `variants` > 1 each crop is super-resolved that many times (variants 0..K-1, the seeds the
adapters use) and the report adds the spread between them (`metrics.variant_spread`: mean absolute
difference over variant pairs, per-pixel standard deviation), so diversity is measured, not guessed.
FID and LPIPS need network weights (Inception, AlexNet): they are computed only when the
packages and their weights are already on this machine, and the report says why when they are not.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sr_augment.engines import BicubicEngine
from sr_augment.images import ImageDecodeError, center_crop, iter_image_files, load_image
from sr_augment.metrics import gradient_magnitude, psnr_y, ssim_y, variant_spread
from sr_augment.modes import engine_input, mode_result

SSIM_WINDOW = 11
"""Side of SSIM's Gaussian window (sigma 1.5): the smallest image it can score."""


@dataclass
class Crop:
    image: str
    index: int
    pixels: np.ndarray


@dataclass
class EvalReport:
    rows: list = field(default_factory=list)       # one dict per (crop, method)
    summary: dict = field(default_factory=dict)    # method -> mean metrics
    skipped: list = field(default_factory=list)    # files that could not be read, with the reason
    optional: dict = field(default_factory=dict)   # metric -> value or the reason it was not computed
    settings: dict = field(default_factory=dict)   # what made the numbers: engine, fingerprint, degrade, crops


def hr_crops(paths, crop: int, crops_per_image: int, scale: int, seed: int = 0) -> tuple[list[Crop], list[str]]:
    """`crops_per_image` crops of side `crop` per image (centre crop when 1, else seeded random ones).

    Images smaller than `crop` are used whole (cut to a multiple of `scale`). Unreadable files are
    returned as skip reasons, never raised, so one bad file does not stop an evaluation.
    """
    rng = np.random.default_rng(seed)
    crops, skipped = [], []
    for path in iter_image_files(paths):
        try:
            image = load_image(path)
        except ImageDecodeError as exc:
            skipped.append(str(exc))
            continue
        height, width = image.shape[:2]
        side_h = min(crop, height) // scale * scale
        side_w = min(crop, width) // scale * scale
        if min(side_h, side_w) - 2 * scale < SSIM_WINDOW:
            skipped.append(f"{path}: {width}x{height} is too small for x{scale} evaluation (SSIM needs "
                           f"{SSIM_WINDOW} px after shaving {scale} px borders)")
            continue
        if crops_per_image == 1:
            crops.append(Crop(str(path), 0, center_crop(image, (side_h, side_w))))
            continue
        for index in range(crops_per_image):
            top, left = int(rng.integers(0, height - side_h + 1)), int(rng.integers(0, width - side_w + 1))
            crops.append(Crop(str(path), index, np.ascontiguousarray(image[top:top + side_h, left:left + side_w])))
    return crops, skipped


def optional_metrics() -> dict[str, str | None]:
    """For LPIPS and FID: None when they can run here, else the reason they cannot."""
    if importlib.util.find_spec("torch") is None:
        return {m: "not computed: torch is not installed" for m in ("lpips", "fid")}
    hub = None
    needs = {
        "lpips": (("lpips",), "alexnet-owt-7be5be79.pth"),
        "fid": (("torchmetrics", "torch_fidelity"), "weights-inception-2015-12-05-6726825d.pth"),
    }
    status = {}
    for metric, (packages, weights) in needs.items():
        missing = [p for p in packages if importlib.util.find_spec(p) is None]
        if missing:
            status[metric] = f"not computed: {', '.join(f'`{p}`' for p in missing)} not installed"
            continue
        if hub is None:  # importing torch costs seconds: only when a metric's packages are there
            import torch

            hub = Path(torch.hub.get_dir()) / "checkpoints"
        if not (hub / weights).is_file():
            status[metric] = f"not computed: weights not present ({weights} is not in {hub}; never downloaded here)"
        else:
            status[metric] = None
    return status


def _lpips(pairs) -> float:
    import lpips
    import torch

    model = lpips.LPIPS(net="alex", verbose=False)
    to_tensor = lambda a: torch.from_numpy(a).permute(2, 0, 1)[None].float() / 127.5 - 1.0  # noqa: E731
    with torch.no_grad():
        return float(np.mean([model(to_tensor(sr), to_tensor(hr)).item() for sr, hr in pairs]))


def _fid(pairs) -> float:
    import torch
    from torchmetrics.image.fid import FrechetInceptionDistance

    fid = FrechetInceptionDistance(normalize=False)
    for sr, hr in pairs:
        fid.update(torch.from_numpy(hr).permute(2, 0, 1)[None], real=True)
        fid.update(torch.from_numpy(sr).permute(2, 0, 1)[None], real=False)
    return float(fid.compute())


def _quality(result: np.ndarray, hr: np.ndarray, scale: int) -> dict:
    return {"psnr_y": psnr_y(result, hr, scale), "ssim_y": ssim_y(result, hr, scale),
            "grad_ratio": gradient_magnitude(result, scale) / max(gradient_magnitude(hr, scale), 1e-12)}


def eval_sr(paths, engine, cache, *, scale: int = 4, crop: int = 512, crops_per_image: int = 1,
            batch_size: int = 8, seed: int = 0, progress: bool = True, variants: int = 1,
            label: str | None = None) -> EvalReport:
    """Score `engine` (through `cache`) and bicubic on HR crops of the images under `paths`.

    `variants`: SR samples per crop (variants 0..K-1); each is scored, and with K > 1 the spread between
    them is reported per crop and per method (bicubic, which has no seed, has none). `label`: the
    engine's row name (default: its name).
    """
    from tqdm.auto import tqdm

    if int(variants) < 1:
        raise ValueError(f"variants must be >= 1, got {variants}")
    variants = int(variants)
    if getattr(engine, "scale", scale) != scale:
        raise ValueError(f"the engine upscales x{engine.scale} but the evaluation degrades by x{scale}")
    crops, skipped = hr_crops(paths, crop, crops_per_image, scale, seed)
    if not crops:
        raise ValueError(f"no usable images under {', '.join(map(str, paths))}" + (f" ({skipped[0]})" if skipped else ""))
    from sr_augment.engines.degrade import DegradedEngine

    name = getattr(engine, "name", "sr")
    report = EvalReport(skipped=skipped, settings={
        "engine": name, "fingerprint": getattr(engine, "fingerprint", None),
        "degrade": engine.settings if isinstance(engine, DegradedEngine) else None, "variants": variants,
        "scale": scale, "crop": crop, "crops_per_image": crops_per_image, "seed": seed})
    bicubic = BicubicEngine(scale)
    method = label or (name if name != "bicubic" else "bicubic (engine)")
    if method == "bicubic":
        method = "bicubic (engine)"
    pairs, spreads = [], {"bicubic": [], method: []}
    per_batch = max(1, batch_size // variants)  # crops per cache call: about batch_size engine inputs
    with tqdm(total=len(crops), desc=f"eval-sr {name}", unit="crop", disable=not progress) as bar:
        for start in range(0, len(crops), per_batch):
            batch = crops[start:start + per_batch]
            outputs = cache.get_or_create_many([c.pixels for c in batch for _ in range(variants)], engine,
                                               mode="resynthesize", variants=list(range(variants)) * len(batch))
            for i, c in enumerate(batch):
                samples = outputs[i * variants:(i + 1) * variants]
                baseline = mode_result(bicubic.upscale([engine_input(c.pixels, "resynthesize", scale)], [0])[0],
                                       c.pixels, "resynthesize")
                common = {"image": c.image, "crop": c.index}
                size = {"height": c.pixels.shape[0], "width": c.pixels.shape[1]}
                report.rows.append({**common, "method": "bicubic", "variant": 0, **size,
                                    **_quality(baseline, c.pixels, scale)})
                for variant, sr in enumerate(samples):
                    report.rows.append({**common, "method": method, "variant": variant, **size,
                                        **_quality(sr, c.pixels, scale)})
                    pairs.append((sr, c.pixels))
                if variants > 1:
                    spreads[method].append(variant_spread(samples, scale))
                    spreads["bicubic"].append({"pair_mad": 0.0, "pixel_std": 0.0})  # no seed: one result
            bar.update(len(batch))
    for row_name in ("bicubic", method):
        rows = [r for r in report.rows if r["method"] == row_name]
        finite = [r["psnr_y"] for r in rows if math.isfinite(r["psnr_y"])]
        report.summary[row_name] = {
            "crops": len(crops),
            "variants": variants if row_name == method else 1,
            "psnr_y": statistics.mean(finite) if finite else math.inf,
            "ssim_y": statistics.mean(r["ssim_y"] for r in rows),
            "grad_ratio": statistics.mean(r["grad_ratio"] for r in rows),
            **{key: statistics.mean(s[key] for s in spreads[row_name]) if spreads[row_name] else None
               for key in ("pair_mad", "pixel_std")},
        }
    for metric, reason in optional_metrics().items():
        if reason is None and metric == "fid" and len(pairs) < 2:
            reason = "not computed: FID needs at least 2 crops"
        if reason is not None:
            report.optional[metric] = reason
            continue
        try:
            report.optional[metric] = (_lpips if metric == "lpips" else _fid)(pairs)
        except Exception as exc:  # an optional metric must never cost the report that is already computed
            report.optional[metric] = f"not computed: {type(exc).__name__}: {exc}"
    return report


def write_report(report: EvalReport, out: Path) -> dict[str, Path]:
    """per_image.csv, summary.json and summary.md in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "per_image.csv", "json": out / "summary.json", "markdown": out / "summary.md"}
    with open(paths["csv"], "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(report.rows[0]))
        writer.writeheader()
        writer.writerows(report.rows)
    paths["json"].write_text(json.dumps({"settings": report.settings, "summary": report.summary,
                                         "optional_metrics": report.optional, "skipped": report.skipped}, indent=2))
    paths["markdown"].write_text(summary_markdown(report))
    return paths


def summary_markdown(report: EvalReport) -> str:
    """The summary table: one row per method; the spread columns are "-" for one variant."""
    lines = ["| method | crops | variants | PSNR-Y (dB) | SSIM-Y | gradient SR/HR | pairwise MAD | pixel std |",
             "|---|---|---|---|---|---|---|---|"]
    spread = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    for label, s in report.summary.items():
        lines.append(f"| {label} | {s['crops']} | {s['variants']} | {s['psnr_y']:.2f} | {s['ssim_y']:.4f} | "
                     f"{s['grad_ratio']:.3f} | {spread(s['pair_mad'])} | {spread(s['pixel_std'])} |")
    for metric, value in report.optional.items():
        lines.append(f"\n{metric.upper()}: {value:.4f}" if isinstance(value, float) else f"\n{metric.upper()}: {value}")
    return "\n".join(lines) + "\n"
