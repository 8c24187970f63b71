"""The options of `sr-augment warm` that shape what is keyed and whether anything runs: `--resize`,
`--center-crop` (the deterministic resize of a torchvision pipeline, `tv_geometry`) and `--dry-run`.

Kept out of `cli.py` so the command-line module stays a table of commands. A dry run opens the cache
read-only (nothing is written, not even a counter or the engine's identity) and builds the engine from
its spec without running it: the built-in and diffusers engines know their fingerprint from their
configs, so no model is loaded; a `module:Class` engine is constructed (its constructor decides).
"""

from __future__ import annotations

import argparse
import json
import sys

from sr_augment.warm.tv_geometry import Preprocess, parse_image_size


def _size(text: str):
    try:
        return parse_image_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--resize", type=_size, default=None, metavar="N|HxW",
                        help="after decoding, resize as torchvision's v2.Resize(N) on PIL images does (shorter side "
                             "to N, aspect kept; HxW: exactly) with Pillow bilinear, so the keys match a pipeline "
                             "Resize -> [CenterCrop] -> SRAugment. Other resizers (tf.image.resize, Keras Resizing, "
                             "OpenCV, torchvision on tensors) give other pixels: warm those with SRAugment.warm")
    parser.add_argument("--center-crop", type=_size, default=None, metavar="N|HxW",
                        help="after --resize, crop the centre as torchvision's v2.CenterCrop(N) on PIL images does")
    parser.add_argument("--dry-run", action="store_true",
                        help="report what would be generated (same summary) without loading a model or writing "
                             "anything to the cache")


def preprocess(args) -> Preprocess | None:
    """The deterministic resize / centre crop the options ask for, or None."""
    steps = Preprocess(getattr(args, "resize", None), getattr(args, "center_crop", None))
    return steps if steps else None


def dry_run(args, build_engine) -> int:
    """`warm --dry-run`: the summary of a warm that generates nothing (`generated`: what it would)."""
    from sr_augment.cache import SRCache
    from sr_augment.warm.local import warm

    engine = build_engine(args, args.batch_size)
    cache = SRCache(args.cache_dir, read_only=True)  # opening creates nothing; damaged entries are left alone
    try:
        report = warm(args.paths, engine, cache, mode=args.mode, variants=args.variants, batch_size=args.batch_size,
                      progress=not args.no_progress, preprocess=preprocess(args), dry_run=True)
    except FileNotFoundError as exc:
        raise SystemExit(f"sr-augment: {exc}") from None
    finally:
        cache.close()
    for failure in report.failures:
        error = failure["error"]
        print(f"failed: {error if error.startswith(failure['path']) else failure['path'] + ': ' + error}", file=sys.stderr)
    if args.json:
        print(json.dumps({**report.as_dict(), "dry_run": True}))
    else:
        print(f"dry run: {report.images} images: {report.generated} entries would be generated, {report.cached} "
              f"already cached, {report.failed} failed (nothing generated or written)")
    return 1 if report.failed else 0


def engine_params(pairs: list[str]) -> dict:
    """`--set KEY=VALUE` pairs as engine parameters (values parsed as JSON where they are JSON, else
    text), shared by the local, accelerate and Ray warms."""
    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"sr-augment: --set expects KEY=VALUE, got {pair!r}")
        try:
            params[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            params[key.replace("-", "_")] = value
    return params
