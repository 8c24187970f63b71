"""The `sr-augment` command line: warm, clear, verify, engines, eval-sr, experiment, train, demo; info, export,
import and merge live in `cache_commands`."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from sr_augment.engines import DEFAULT_ENGINE, EngineUnavailable, get_engine
from sr_augment.warm import options as warm_options


def _engine_help() -> str:
    """`--engine`'s help from the engine registry (its names, then the spec forms its kinds accept), so a
    new engine is listed the day it is registered."""
    from sr_augment.engines.kinds import REGISTRY

    forms = [kind.accepts for kind in REGISTRY.listing() if kind.accepts]
    forms[-1:] = [f"or {forms[-1]} (your own Engine)"] if forms else []
    text = ", ".join([*REGISTRY.names(), *forms]).replace("%", "%%")
    return f"{text}; `sr-augment engines` lists them (default: %(default)s)"


def _add_engine_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("engine")
    group.add_argument("--engine", default=DEFAULT_ENGINE, help=_engine_help())
    group.add_argument("--scale", type=positive_count, default=None,
                       help="upscaling factor (default: 4; a spandrel checkpoint: its model's own factor)")
    group.add_argument("--steps", type=positive_count, default=None, help="denoising steps (default: the engine's)")
    group.add_argument("--device", default="auto", type=engine_device, help="auto, cpu, cuda, cuda:1, mps (default: %(default)s)")
    group.add_argument("--dtype", default="auto", type=engine_dtype, help="auto, fp32, fp16, bf16 (default: %(default)s)")
    group.add_argument("--set", dest="params", action="append", default=[], metavar="KEY=VALUE",
                       help="engine parameter, e.g. --set noise_level=30 --set prompt='a photo' (repeatable)")


def engine_device(text: str) -> str:
    """`--device`: a device an engine can run on (`registry.device_problem`), else argparse's usage error."""
    from sr_augment.engines.registry import device_problem

    if device_problem(text):
        raise argparse.ArgumentTypeError(device_problem(text, "the device"))
    return text


def engine_dtype(text: str) -> str:
    """`--dtype`: an engine dtype (`registry.dtype_problem`), else argparse's usage error."""
    from sr_augment.engines.registry import dtype_problem

    if dtype_problem(text):
        raise argparse.ArgumentTypeError(dtype_problem(text, "the dtype"))
    return text


def size_limit(text: str) -> int:
    """`--size-limit`: a positive whole number of bytes; anything else is argparse's usage error (exit 2),
    never a traceback from `SRCache`."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number of bytes, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of bytes, got {value}")
    return value


def positive_count(text: str) -> int:
    """A count option (`--variants`, `--batch-size`, `--scale`, ...): a whole number >= 1, else argparse's usage
    error (exit 2), never a traceback."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _escaped(text) -> str:
    """Text for the terminal: control characters escaped as `printable` does (a name may come from a shared
    folder or a crafted argument: it must not move the cursor, retitle the terminal or forge lines), except
    newline and tab, and carriage return (the progress bar redraws its line with it)."""
    return "".join(c if c.isprintable() or c in "\n\t\r" else repr(c)[1:-1] for c in str(text))


class _EscapingStream:
    """stdout / stderr while a command runs: every write escaped (`_escaped`), everything else the stream's."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(_escaped(text))
        return len(text)

    def __getattr__(self, name):
        return getattr(self._stream, name)


@contextlib.contextmanager
def _escaped_output():
    """Escape what the command (and argparse, warnings, logging) prints; a `SystemExit` message too (Python
    prints it after `main` returns, outside this block)."""
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _EscapingStream(sys.stdout), _EscapingStream(sys.stderr)
    try:
        yield
    except SystemExit as exc:
        if isinstance(exc.code, str):
            raise SystemExit(_escaped(exc.code)) from None
        raise
    finally:
        sys.stdout, sys.stderr = saved


def _add_cache_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache-dir", default=None, help="cache folder (default: $SR_AUGMENT_CACHE_DIR or the user cache dir)")


def _open_cache(args):
    from sr_augment.cache import SRCache

    return SRCache(args.cache_dir, size_limit=getattr(args, "size_limit", None))


def _build_engine(args, batch_size: int | None = None):
    params = warm_options.engine_params(args.params)
    if batch_size is not None and args.engine != "bicubic":
        params.setdefault("batch_size", batch_size)
    try:
        engine = get_engine(args.engine, scale=args.scale, steps=args.steps, device=args.device, dtype=args.dtype, **params)
    except (EngineUnavailable, ValueError, TypeError) as exc:
        raise SystemExit(f"sr-augment: {exc}") from None
    if args.scale is None:  # not given: the engine's (4, or a spandrel checkpoint's own factor)
        args.scale = int(engine.scale)
    return engine


def cmd_warm(args) -> int:
    from sr_augment.cache import CacheWriteError
    from sr_augment.warm.accelerate import accelerate_job
    from sr_augment.warm.local import warm
    from sr_augment.warm.options import WarmOptions, dry_run

    options = WarmOptions.from_args(args)  # the one read of the namespace: every path below takes `options`
    if options.dry_run:  # plans against the local cache; nothing runs or is written
        return dry_run(options)
    if options.ray is not None or options.out:  # a Ray cluster writing shards (sr_augment.warm.ray)
        from sr_augment.warm.ray import run_ray_warm
        return run_ray_warm(options)
    job = accelerate_job()  # None unless `accelerate launch` started several processes: each then warms a share
    engine = job.build_engine(options) if job else options.build_engine()
    with _open_cache(options) as cache:  # its cache_dir and size_limit
        before = cache.stats().evictions
        try:
            report = (job.warm if job else warm)(list(options.paths), engine, cache, mode=options.mode,
                                                 variants=options.variants, batch_size=options.batch_size,
                                                 progress=options.progress, loader=options.file_loader)
        except FileNotFoundError as exc:
            raise SystemExit(f"sr-augment: {exc}") from None
        try:
            evicted = cache.stats().evictions - before
        except CacheWriteError:  # the disk is full: the counters cannot be updated, the report stands
            evicted = 0
    if report.interrupted:
        code = 143 if report.stopped_by == "SIGTERM" else 130
    else:
        code = 1 if report.failed or report.error else 0
    if job and not job.is_main:
        return code  # the main process reports the whole job
    for failure in report.failures:  # decode errors already start with the path
        error = failure["error"]
        from sr_augment.cache.inventory import printable  # file names: printed escaped

        print(printable(f"failed: {error if error.startswith(failure['path']) else failure['path'] + ': ' + error}"),
              file=sys.stderr)
    if evicted:
        print(f"warning: {evicted} entries were evicted to stay under the cache size limit; "
              f"raise --size-limit or the warmed set will not all stay cached", file=sys.stderr)
    if report.error:
        from sr_augment.cache.inventory import printable  # the error names an image and the cache

        print(printable(f"error: {report.error}"), file=sys.stderr)
    if report.interrupted:
        print(f"interrupted ({report.stopped_by or 'stopped'}): every finished batch is cached; run the same "
              f"command again to resume", file=sys.stderr)
    if options.json:
        print(json.dumps(report.as_dict()))
    else:
        print(f"{report.images} images: {report.generated} generated, {report.cached} already cached, "
              f"{report.failed} failed in {report.seconds:.1f} s")
    return code


def cmd_clear(args) -> int:
    from sr_augment.cache.inventory import printable  # names: printed escaped

    if not args.yes:
        if not sys.stdin.isatty():
            raise SystemExit("sr-augment: clear deletes every cached SR image; pass --yes to confirm")
        if input("Delete every cached SR image? [y/N] ").strip().lower() not in ("y", "yes"):
            print("nothing deleted")
            return 0
    from sr_augment.cache import default_cache_dir
    from sr_augment.cache.clearing import clear_cache
    from sr_augment.cache.writers import can_write

    directory = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    if not can_write(directory):
        raise SystemExit(f"sr-augment: the cache {directory} is read-only for this user; nothing deleted")
    removed = clear_cache(directory)  # works on a damaged database too: removes the cache's own files
    print(printable(f"removed {removed} entries from {directory}"))
    return 0


def cmd_verify(args) -> int:
    from sr_augment.cache import default_cache_dir
    from sr_augment.cache.verify import verify

    directory = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    if args.repair:
        from sr_augment.cache.writers import can_write

        if not can_write(directory):
            raise SystemExit(f"sr-augment: the cache {directory} is read-only for this user; verify it without --repair")
    from sr_augment.cache.inventory import printable  # names from the cache folder: printed escaped

    report = verify(directory, repair=args.repair, progress=not (args.json or args.no_progress))
    if args.json:
        print(json.dumps(report.as_dict()))
    elif report.unchecked:  # the disk, not the cache: no advice to delete anything
        done = "the repair stopped part way, no entry was deleted" if report.repaired else "nothing was changed"
        print(printable(f"sr-augment: could not check the cache {directory}, {done}: {report.unchecked}"), file=sys.stderr)
    else:
        for problem in report.problems:
            print(printable(f"{problem['kind']}: {problem['where']}: {problem['reason']}"), file=sys.stderr)
        if report.database_damaged:
            print(printable(f"error: {report.database_damaged}"), file=sys.stderr)
        print(f"{report.rows} rows: {report.ok} ok, {report.damaged} damaged, {report.missing} missing, "
              f"{report.untrusted} untrusted, {report.orphans} orphan value files, {report.settings} bad settings"
              + (" (repaired)" if report.repaired else "" if report.clean else "; run with --repair to fix them"))
    return VERIFY_UNCHECKED if report.unchecked else 0 if report.clean else 1


VERIFY_UNCHECKED = 3
"""`verify`'s exit status when it could not check (full disk, I/O error, no permission): nothing changed."""


def cmd_engines(args) -> int:
    from sr_augment.engines.listing import builtin_engines, format_table

    entries = builtin_engines()
    print(json.dumps([e.as_dict() for e in entries]) if args.json else format_table(entries))
    return 0


def cmd_demo(args) -> int:
    from sr_augment.cli.demo import run_from_args

    return run_from_args(args)


def cmd_eval_sr(args) -> int:
    from sr_augment.engines.degrade import with_degradation
    from sr_augment.evaluate import eval_sr, summary_markdown, write_report

    engine = with_degradation(_build_engine(args, args.batch_size), args.degrade)
    with _open_cache(args) as cache:
        try:
            report = eval_sr(args.hr, engine, cache, scale=args.scale, crop=args.crop,
                             crops_per_image=args.crops_per_image, batch_size=args.batch_size,
                             progress=not args.no_progress, variants=args.variants, label=_eval_label(args, engine))
        except (FileNotFoundError, ValueError) as exc:
            raise SystemExit(f"sr-augment: {exc}") from None
    from sr_augment.cache.inventory import printable  # file and engine names: printed escaped

    for reason in report.skipped:
        print(printable(f"skipped: {reason}"), file=sys.stderr)
    paths = write_report(report, Path(args.out))
    print("\n".join(printable(line) for line in summary_markdown(report).split("\n")))
    print(printable(f"wrote {paths['csv']}, {paths['json']}, {paths['markdown']}"))
    return 0


def _eval_label(args, engine) -> str | None:
    """The engine's row in the eval-sr report: its name, the settings given and the degradation
    (`sr4 [preset=fast]`, `realesrgan + degrade light`; a JSON --degrade is `custom`)."""
    from sr_augment.engines.degrade import undegraded

    given = ([f"steps={args.steps}"] if args.steps is not None else []) + list(args.params)
    label = f"{undegraded(engine).name} [{', '.join(given)}]" if given else None
    if args.degrade is not None:
        label = f"{label or undegraded(engine).name} + degrade {args.degrade if isinstance(args.degrade, str) else 'custom'}"
    return label


def cmd_experiment(args) -> int:
    from sr_augment.experiment.options import run_from_args

    with _open_cache(args) as cache:
        return run_from_args(args, cache)


def cmd_train(args) -> int:
    from sr_augment.sr4.train import CHECKPOINT, train  # torch: imported only for this command

    settings = {k: getattr(args, k) for k in ("scale", "steps", "batch_size", "crop", "lr", "checkpoint_every", "seed")}
    try:
        out = train(args.data, args.out, resume=args.resume, device=args.device, progress=not args.no_progress, **settings)
    except (FileExistsError, FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"sr-augment: {exc}") from None
    except KeyboardInterrupt:
        if (Path(args.out) / CHECKPOINT).exists():
            print(f"interrupted: the last checkpoint in {args.out} is kept; add --resume to continue", file=sys.stderr)
        else:
            print("interrupted before the first checkpoint: nothing to resume", file=sys.stderr)
        return 130
    print(f"trained model in {out}: use it with --engine {out} or get_engine('{out}')")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from sr_augment import __version__

    parser = argparse.ArgumentParser(prog="sr-augment", description="Diffusion super-resolution as a data augmentation.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("warm", help="generate and cache SR images for folders/files ahead of training")
    p.add_argument("paths", nargs="+", help="image files or folders (searched recursively)")
    _add_engine_options(p)
    p.add_argument("--mode", choices=["upscale", "resynthesize"], default="upscale",
                   help="upscale: the files are LR, results are --scale x larger; resynthesize: down by --scale, "
                        "SR back to the same size (what SRAugment(mode='resynthesize') looks up) (default: %(default)s)")
    p.add_argument("--variants", type=positive_count, default=1, help="stochastic samples per image (default: %(default)s)")
    p.add_argument("--batch-size", type=positive_count, default=8, help="requests per engine call (default: %(default)s)")
    _add_cache_options(p)
    p.add_argument("--size-limit", type=size_limit, default=None,
                   help="cache size limit in bytes, remembered by the cache folder (default: the folder's, else 20 GiB)")
    p.add_argument("--json", action="store_true", help="print one JSON summary object last")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    warm_options.add_arguments(p)  # --resize, --center-crop, --dry-run
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="generate on a Ray cluster (ADDRESS; 'auto': the one running here; none: start one) into --out")
    p.add_argument("--out", default=None, metavar="URI", help="with --ray: folder or URI (s3://...) for the shards")
    p.add_argument("--actors", type=positive_count, default=2,
                   help="with --ray: engine actors, one GPU each where there are GPUs (default: %(default)s)")
    p.set_defaults(func=cmd_warm)

    from sr_augment.cli import cache_commands

    cache_commands.add_commands(sub)  # info, export, import, merge

    p = sub.add_parser("clear", help="delete every cached entry and reset the counters")
    _add_cache_options(p)
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.set_defaults(func=cmd_clear)

    p = sub.add_parser("engines", help="the named engines, what each needs, and which can run here (nothing is loaded)")
    p.add_argument("--json", action="store_true", help="print the list as JSON")
    p.set_defaults(func=cmd_engines)

    p = sub.add_parser("verify", help="check every cached entry and the cache's settings; --repair removes damaged, "
                                      "untrusted and orphaned entries and resets bad settings. Exit 0: clean (or "
                                      "repaired), 1: problems found, 3: could not check (disk full, I/O error, no "
                                      "permission), nothing changed")
    _add_cache_options(p)
    p.add_argument("--repair", action="store_true", help="remove what is bad (rows by rowid, orphan value files)")
    p.add_argument("--json", action="store_true", help="print one JSON report")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("eval-sr", help="SR quality against HR: Y-channel PSNR/SSIM per image and mean, bicubic as baseline")
    p.add_argument("hr", nargs="+", metavar="HR_DIR", help="folders or files of HR images")
    _add_engine_options(p)
    p.add_argument("--crop", type=int, default=512, help="HR crop side; smaller images are used whole (default: %(default)s)")
    p.add_argument("--crops-per-image", type=int, default=1,
                   help="1 = centre crop, N = N seeded random crops (default: %(default)s)")
    p.add_argument("--variants", type=positive_count, default=1,
                   help="SR samples per crop (variants 0..K-1); K > 1 adds the spread between them: mean absolute "
                        "difference over variant pairs and per-pixel standard deviation (default: %(default)s)")
    p.add_argument("--degrade", type=warm_options._degrade, default=None, metavar="PRESET|JSON",
                   help="variants > 0 super-resolve a seeded degradation of the LR crop (the adapters' degrade=: "
                        "'light', 'realistic' or a JSON object of operations); variant 0 stays clean")
    p.add_argument("--batch-size", type=int, default=8, help="crops per engine call (default: %(default)s)")
    p.add_argument("--out", default="sr-augment-eval", help="report folder (default: %(default)s)")
    _add_cache_options(p)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=cmd_eval_sr)

    from sr_augment.experiment.options import add_experiment_arguments

    p = sub.add_parser("experiment", help="classifier study: LR, SR, HR and HR+SRAugment arms over repeated "
                                          "stratified K-fold; paired bootstrap CIs, McNemar, figures")
    add_experiment_arguments(p)
    _add_cache_options(p)
    p.set_defaults(func=cmd_experiment)

    p = sub.add_parser("train", help="train a built-in-style sr4 diffusion SR model on folders of HR photos")
    p.add_argument("data", nargs="*", help="folders or files of HR photos (crops are degraded on the fly); "
                                           "optional with --resume")
    p.add_argument("--out", required=True, help="run folder: checkpoint, sample grids, and the loadable model")
    p.add_argument("--scale", type=int, default=None, help="upscaling factor (default: 4)")
    p.add_argument("--steps", type=int, default=None, help="total optimizer steps (default: 10000)")
    p.add_argument("--batch-size", type=int, default=None, help="crops per step (default: 16)")
    p.add_argument("--crop", type=int, default=None, help="HR crop side in pixels (default: 128)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: 2e-4)")
    p.add_argument("--checkpoint-every", type=int, default=None, help="steps between checkpoints and sample grids (default: 500)")
    p.add_argument("--seed", type=int, default=None, help="random seed of crops, noise and initial weights (default: 0)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint; options not given keep the run's values")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("demo", help="offline: every engine available here side by side on sample photos, two "
                                    "variants each: a comparison grid PNG and per-engine timings")
    _add_engine_options(p)
    from sr_augment.cli.demo import add_demo_options

    add_demo_options(p)
    p.set_defaults(func=cmd_demo)
    for command in sub.choices.values():  # every command's --size-limit (cache_commands' too): positive only
        for action in command._actions:
            if action.dest == "size_limit":
                action.type = size_limit
    return parser


def main(argv: list[str] | None = None) -> int:
    from sr_augment.cache import CacheWriteError
    from sr_augment.cache.rows import CacheUnavailable, DatabaseDamaged

    with _escaped_output():  # names in any message (a folder, a file, an argument) never reach the terminal raw
        args = build_parser().parse_args(argv)
        try:
            return args.func(args)
        except (DatabaseDamaged, CacheWriteError, CacheUnavailable) as exc:  # clear errors naming the folder and the way out
            print(_escaped(f"sr-augment: {exc}"), file=sys.stderr)
            return 1


if __name__ == "__main__":
    sys.exit(main())
