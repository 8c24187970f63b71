"""The options of `sr-augment warm` that shape what is keyed and whether anything runs: `--loader` (decode
each file as the training pipeline's library does, `sr_augment.loaders`), `--resize`, `--center-crop` (the
deterministic resize of a torchvision pipeline, `tv_geometry`; Keras' `image_size` with `--loader keras`),
`--interpolation`, `--crop-to-aspect-ratio`, `--pad-to-aspect-ratio` and `--dry-run`.

`WarmOptions` is what the command was asked, typed: the CLI builds it once from its argparse namespace
and passes it to the local, accelerate, Ray and dry-run paths, so none of them reads the namespace.

Kept out of `cli.py` so the command-line module stays a table of commands. A dry run opens the cache
read-only (nothing is written, not even a counter or the engine's identity) and builds the engine from
its spec without running it: the built-in and diffusers engines know their fingerprint from their
configs, so no model is loaded; a `module:Class` engine is constructed (its constructor decides).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from dataclasses import dataclass, field

from sr_augment.engines import DEFAULT_ENGINE
from sr_augment.loaders import DEFAULT_LOADER, LOADERS, FileLoader, file_loader
from sr_augment.warm.tv_geometry import Preprocess, Size, parse_image_size


def _size(text: str):
    try:
        return parse_image_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _degrade(text: str):
    from sr_augment.engines.degrade import parse_degrade_option

    try:
        return parse_degrade_option(text)
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
    parser.add_argument("--degrade", type=_degrade, default=None, metavar="PRESET|JSON",
                        help="variants > 0 super-resolve a seeded degradation of their input (blur, downscale "
                             "kernel, noise, JPEG), so a deterministic engine gives real variants; variant 0 stays "
                             "clean. 'light', 'realistic' or a JSON object of operations, e.g. "
                             "'{\"jpeg\": {\"quality\": [50, 90]}}'; the same value as the adapters' degrade= "
                             "gives the same keys")
    parser.add_argument("--loader", choices=LOADERS, default=DEFAULT_LOADER,
                        help="decode each file as the training pipeline's loader does, so the keys match: torchvision "
                             "(datasets.ImageFolder: PIL convert('RGB'), no EXIF turn, 16-bit clipped), keras "
                             "(image_dataset_from_directory, TensorFlow's decode and resize: --resize HxW is its "
                             "image_size, default 256x256), exif (sr_augment.load_image: EXIF orientation applied, "
                             "16-bit scaled /257), exif-transpose (PIL ImageOps.exif_transpose(Image.open(f))"
                             ".convert('RGB'): EXIF orientation applied, 16-bit clipped) (default: %(default)s)")
    parser.add_argument("--interpolation", default=None, metavar="NAME",
                        help="with --loader keras: image_dataset_from_directory's interpolation (default bilinear); "
                             "the torchvision and exif loaders resize bilinear only")
    parser.add_argument("--crop-to-aspect-ratio", action="store_true",
                        help="with --loader keras: image_dataset_from_directory(crop_to_aspect_ratio=True)")
    parser.add_argument("--pad-to-aspect-ratio", action="store_true",
                        help="with --loader keras: image_dataset_from_directory(pad_to_aspect_ratio=True)")
    parser.add_argument("--dry-run", action="store_true",
                        help="report what would be generated (same summary) without loading a model or writing "
                             "anything to the cache")


def preprocess(args) -> Preprocess | None:
    """The deterministic resize / centre crop the options (`WarmOptions` or a namespace) ask for, or None."""
    steps = Preprocess(getattr(args, "resize", None), getattr(args, "center_crop", None))
    return steps if steps else None


@dataclass(frozen=True)
class WarmOptions:
    """What `sr-augment warm` was asked, typed and checked once (`from_args`); the local, accelerate, Ray
    and dry-run warms take this, never the argparse namespace. `engine_params` are the parsed `--set`."""
    paths: tuple = ()
    engine: str = DEFAULT_ENGINE
    scale: int | None = None
    """None (not given): 4, or a spandrel checkpoint's own factor (`engines.default_scale`)."""
    steps: int | None = None
    device: str = "auto"
    dtype: str = "auto"
    engine_params: dict = field(default_factory=dict)
    mode: str = "upscale"
    variants: int = 1
    batch_size: int = 8
    cache_dir: str | None = None
    size_limit: int | None = None
    json: bool = False
    progress: bool = True
    resize: Size | None = None
    center_crop: Size | None = None
    dry_run: bool = False
    ray: str | None = None
    """--ray: None (not given), "" (start a local cluster) or an address."""
    out: str | None = None
    actors: int = 2
    loader: str = DEFAULT_LOADER
    """--loader: how each file is decoded (`sr_augment.loaders`)."""
    interpolation: str | None = None
    crop_to_aspect_ratio: bool = False
    pad_to_aspect_ratio: bool = False
    degrade: str | dict | None = None
    """--degrade: a preset name or canonical settings (`sr_augment.engines.degrade`), or None."""

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> WarmOptions:
        """The options of a parsed `warm` command line; `SystemExit` for a malformed `--set`, or an engine or
        engine parameter its kind refuses (`check_engine`)."""
        options = cls(paths=tuple(args.paths), engine=args.engine, scale=args.scale, steps=args.steps,
                      device=args.device, dtype=args.dtype, engine_params=engine_params(args.params), mode=args.mode,
                      variants=args.variants, batch_size=args.batch_size, cache_dir=args.cache_dir,
                      size_limit=args.size_limit, json=args.json, progress=not args.no_progress, resize=args.resize,
                      center_crop=args.center_crop, dry_run=args.dry_run, ray=args.ray, out=args.out, actors=args.actors,
                      degrade=getattr(args, "degrade", None))
        options = options.replace(loader=getattr(args, "loader", DEFAULT_LOADER),
                                  interpolation=getattr(args, "interpolation", None),
                                  crop_to_aspect_ratio=getattr(args, "crop_to_aspect_ratio", False),
                                  pad_to_aspect_ratio=getattr(args, "pad_to_aspect_ratio", False))
        try:
            options.file_loader  # noqa: B018  (checks the loader's options before anything is opened)
        except ValueError as exc:
            raise SystemExit(f"sr-augment: {exc}") from None
        options.check_engine()
        return options

    @property
    def file_loader(self) -> FileLoader:
        """How each file is decoded, resized and cropped (`--loader` with `--resize`, `--center-crop`,
        `--interpolation`, `--crop/pad-to-aspect-ratio`); `ValueError` for a combination it cannot match."""
        return file_loader(self.loader, resize=self.resize, center_crop=self.center_crop,
                           interpolation=self.interpolation, crop_to_aspect_ratio=self.crop_to_aspect_ratio,
                           pad_to_aspect_ratio=self.pad_to_aspect_ratio)

    def check_engine(self) -> None:
        """`SystemExit` saying what is wrong when the engine spec or its parameters (`--set`, `--steps`) are
        refused by its kind: a misspelt name with the closest one, a wrong type, a missing LoRA file.
        Nothing is loaded and torch is not imported, so this runs before any cache is opened or worker started."""
        from sr_augment.engines import EngineUnavailable, check_spec, with_steps

        try:
            check_spec(self.engine, with_steps(self.engine_kwargs(), self.steps))
        except (EngineUnavailable, ValueError, TypeError) as exc:
            raise SystemExit(f"sr-augment: {exc}") from None

    @property
    def preprocess(self) -> Preprocess | None:
        """The deterministic resize / centre crop asked for, or None."""
        return preprocess(self)

    def engine_kwargs(self) -> dict:
        """The engine parameters with `--batch-size` as the engine's batch size (unless `--set` gave one;
        bicubic has none)."""
        params = dict(self.engine_params)
        if self.engine != "bicubic":
            params.setdefault("batch_size", self.batch_size)
        return params

    def build_engine(self, device: str | None = None):
        """The engine asked for (on `device` instead of `--device` when given), wrapped in a
        `DegradedEngine` with `--degrade`; `SystemExit` saying why when it cannot be built."""
        from sr_augment.engines import EngineUnavailable, get_engine
        from sr_augment.engines.degrade import with_degradation

        try:
            return with_degradation(get_engine(self.engine, scale=self.scale, steps=self.steps,
                                               device=device or self.device, dtype=self.dtype,
                                               **self.engine_kwargs()), self.degrade)
        except (EngineUnavailable, ValueError, TypeError) as exc:
            raise SystemExit(f"sr-augment: {exc}") from None

    def replace(self, **changes) -> WarmOptions:
        return dataclasses.replace(self, **changes)


def dry_run(options: WarmOptions) -> int:
    """`warm --dry-run`: the summary of a warm that generates nothing (`generated`: what it would)."""
    from sr_augment.cache import SRCache
    from sr_augment.warm.local import warm

    engine = options.build_engine()
    cache = SRCache(options.cache_dir, read_only=True)  # opening creates nothing; damaged entries are left alone
    try:
        report = warm(list(options.paths), engine, cache, mode=options.mode, variants=options.variants,
                      batch_size=options.batch_size, progress=options.progress, loader=options.file_loader,
                      dry_run=True)
    except FileNotFoundError as exc:
        raise SystemExit(f"sr-augment: {exc}") from None
    finally:
        cache.close()
    for failure in report.failures:
        error = failure["error"]
        print(f"failed: {error if error.startswith(failure['path']) else failure['path'] + ': ' + error}", file=sys.stderr)
    if options.json:
        print(json.dumps({**report.as_dict(), "dry_run": True}))
    else:
        print(f"dry run: {report.images} images: {report.generated} entries would be generated, {report.cached} "
              f"already cached, {report.failed} failed (nothing generated or written)")
    return 1 if report.failed else 0


OWN_OPTIONS = ("scale", "steps", "device", "dtype")
"""Settings with an option of their own (`--scale`, ...), refused in `--set`, where they would collide with it."""


def engine_params(pairs: list[str]) -> dict:
    """`--set KEY=VALUE` pairs as engine parameters (values parsed as JSON where they are JSON, else
    text), shared by the local, accelerate and Ray warms."""
    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"sr-augment: --set expects KEY=VALUE, got {pair!r}")
        if key in OWN_OPTIONS:
            raise SystemExit(f"sr-augment: --set {key}: {key} is an option of its own, not an engine parameter: "
                             f"use --{key}")
        try:
            params[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            params[key.replace("-", "_")] = value
    return params
