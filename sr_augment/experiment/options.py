"""`sr-augment experiment`'s command-line options and the run from them (the CLI's parser calls
`add_experiment_arguments`; `cmd_experiment` calls `run_from_args`)."""

from __future__ import annotations

import argparse
import sys

DEFAULTS = {"engines": "bicubic,sr4:fast", "folds": 2, "repeats": 2, "epochs": 15, "image_size": 64, "lr_factor": 4,
            "variants": 2, "p": 0.5, "width": 32}
"""The default study: sr4 `fast` (the SR engine the published study found best) against the bicubic
control, 2-fold x 2 repeats. On a 2-core CPU, 2,000 Imagewoof photos took 26 min with the SR images
cached (docs: Evidence); generating sr4's images costs about 0.3 s per 16 px input more."""

GPU_SCALE = {"folds": 5, "repeats": 3, "epochs": 40, "image_size": 128, "width": 64}
"""`--gpu-scale`: the same study larger (inputs 128 px, LR 32 px at x4; a wider net; more folds, repeats
and epochs); each is overridden by its own option when given."""


def add_experiment_arguments(p: argparse.ArgumentParser) -> None:
    from sr_augment.cli.main import engine_device, engine_dtype, positive_count  # warm's checks: usage errors

    p.add_argument("data", metavar="DATA_DIR", help="class folders, or train/ and val/ (or test/) holding them "
                                                    "(pooled: cross-validation tests every image)")
    p.add_argument("--engines", "--engine", default=DEFAULTS["engines"], metavar="LIST",
                   help="comma-separated engines, each with optional :key=value parameters or :preset, e.g. "
                        "bicubic,dat-light,realesrgan,sr4:fast; each adds SR(engine) and HR+SRAugment(engine) "
                        "arms (bicubic: only the latter, LR is bicubic SR) (default: %(default)s)")
    p.add_argument("--folds", type=int, default=None, help=f"K of the stratified K-fold (default: {DEFAULTS['folds']})")
    p.add_argument("--repeats", type=int, default=None,
                   help=f"times the K-fold is redrawn; every image is tested this often (default: {DEFAULTS['repeats']})")
    p.add_argument("--epochs", type=int, default=None, help=f"epochs per training (default: {DEFAULTS['epochs']})")
    p.add_argument("--image-size", type=int, default=None,
                   help=f"square HR side the CNN sees, px (default: {DEFAULTS['image_size']})")
    p.add_argument("--lr-factor", "--scale", type=int, default=DEFAULTS["lr_factor"],
                   help="LR = HR downscaled by this; the engines upscale by it (default: %(default)s)")
    p.add_argument("--width", type=int, default=None, help=f"the CNN's first width (default: {DEFAULTS['width']})")
    p.add_argument("--variants", type=int, default=DEFAULTS["variants"],
                   help="SRAugment variants per image in the HR+SRAugment arms (default: %(default)s)")
    p.add_argument("--p", type=float, default=DEFAULTS["p"],
                   help="SRAugment's probability per training sample (default: %(default)s)")
    p.add_argument("--per-class", type=int, default=None, help="use at most this many images per class (a subset)")
    p.add_argument("--seed", type=int, default=0, help="seed of the folds, the subset and the trainings (default: 0)")
    p.add_argument("--gpu-scale", action="store_true",
                   help="the larger study: " + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in GPU_SCALE.items())
                        + "; trains on the GPU")
    p.add_argument("--framework", choices=["torch", "keras"], default="torch",
                   help="which framework trains the CNN (default: %(default)s)")
    p.add_argument("--device", default="auto", type=engine_device,
                   help="training device: auto, cpu, cuda, cuda:1 (default: %(default)s)")
    p.add_argument("--engine-device", default="auto", type=engine_device, help="SR engines' device (default: %(default)s)")
    p.add_argument("--engine-dtype", default="auto", type=engine_dtype,
                   help="SR engines' dtype: auto, fp32, fp16, bf16 (default: %(default)s)")
    p.add_argument("--batch-size", type=positive_count, default=16, help="images per SR engine call (default: %(default)s)")
    p.add_argument("--out", default="sr-augment-experiment", help="report folder (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def settings(args) -> dict:
    """The study's settings: each option's value, else the --gpu-scale value, else the default."""
    scale = GPU_SCALE if args.gpu_scale else {}
    chosen = {}
    for name in ("folds", "repeats", "epochs", "image_size", "width"):
        given = getattr(args, name)
        chosen[name] = given if given is not None else scale.get(name, DEFAULTS[name])
    return chosen


def run_from_args(args, cache) -> int:
    from sr_augment.cache.inventory import printable  # file and engine names: printed escaped
    from sr_augment.experiment.report import report_markdown
    from sr_augment.experiment.study import parse_engines, run_experiment

    try:
        engines = parse_engines(args.engines)
        results = run_experiment(args.data, args.out, engines=engines, cache=cache, lr_factor=args.lr_factor,
                                 variants=args.variants, p=args.p, per_class=args.per_class, seed=args.seed,
                                 framework=args.framework, device=args.device, engine_device=args.engine_device,
                                 engine_dtype=args.engine_dtype, batch_size=args.batch_size,
                                 progress=not args.no_progress, log=lambda line: print(printable(line), flush=True),
                                 **settings(args))
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"sr-augment: {exc}") from None
    print("\n".join(printable(line) for line in report_markdown(results).split("\n")))
    print(printable(f"wrote {args.out}/results.json, report.md, study.png, curves.png, samples.png"), file=sys.stderr)
    return 0
