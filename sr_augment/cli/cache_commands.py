"""The cache commands of the CLI that move or describe entries: info, export, import, merge.

Why a module of its own: `cli.py` holds the parser of every command and stays under its size budget;
these commands share the transfer reports (`sr_augment.cache.transfer`) and their output.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _cache_dir(args) -> Path:
    from sr_augment.cache import default_cache_dir

    return Path(args.cache_dir) if args.cache_dir else default_cache_dir()


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def cmd_info(args) -> int:
    """Statistics and entries per engine and mode; a missing folder is "no cache at DIR", exit 1,
    and is not created."""
    from sr_augment.cache import SRCache
    from sr_augment.cache.inventory import by_engine, format_table, printable

    directory = _cache_dir(args)
    if not directory.is_dir():
        print(printable(f"no cache at {directory}"), file=sys.stderr)
        if args.json:
            print(json.dumps({"directory": str(directory), "exists": False}))
        return 1
    with SRCache(directory) as cache:
        stats = cache.stats().as_dict()
        stats["by_engine"] = by_engine(directory, True if cache.read_only else None)
    if args.json:
        print(json.dumps({**stats, "exists": True}))
        return 0
    print(printable(f"cache      {stats['directory']}{' (read-only)' if stats['read_only'] else ''}"))
    print(f"entries    {stats['entries']}")
    print(f"size       {_size(stats['bytes'])} of {_size(stats['size_limit'])} limit")
    print(f"hits       {stats['hits']}")
    print(f"misses     {stats['misses']}")
    print(f"generated  {stats['generated']}")
    print(f"damaged    {stats['damaged']} (detected and removed)")
    print(f"evictions  {stats['evictions']}")
    for fingerprint, seen in stats["engines"].items():  # text from the cache folder: printable only
        print(f"engine     {printable(seen['name'])}: {seen['generated']} generated  {printable(fingerprint)}")
    if stats["by_engine"]:
        print("\nentries per engine and mode:")
        print(format_table(stats["by_engine"]))
    return 0


def _print_report(report, args, verb: str) -> int:
    """Each problem on stderr ("refused:", "missing:" or "warning:"), then the summary; exit 1 when anything
    was refused or is missing. Names come from shards and cache folders: printed `printable` (escaped)."""
    from sr_augment.cache.inventory import printable

    for problem in report.problems:
        where = problem.get("member") or problem.get("entry") or ""
        kind = problem.get("kind") or ("refused" if where else "warning")
        parts = [problem["source"], where, problem["reason"]] if where else [problem["source"], problem["reason"]]
        print(printable(f"{kind}: " + ": ".join(map(str, parts))), file=sys.stderr)
    if args.json:
        print(json.dumps(report.as_dict()))
    else:
        print(printable(f"{report.entries} read: {report.copied} {verb}, {report.present} already there, "
                        f"{report.refused} refused, {report.missing} missing; {report.bytes / 1e6:.1f} MB in "
                        f"{report.seconds:.1f} s ({report.mb_per_s:.1f} MB/s)"))
    return 1 if report.refused or report.missing else 0


def _exit(exc: BaseException) -> SystemExit:
    """The CLI's exit with a clear one-line error; names come from the command line and shard folders:
    printed `printable` (escaped)."""
    from sr_augment.cache.inventory import printable

    return SystemExit(printable(f"sr-augment: {exc}"))


def cmd_export(args) -> int:
    from sr_augment.cache.shards import parse_byte_size
    from sr_augment.cache.transfer import ExportWriteError, export_cache, export_images

    if (args.out is None) == (args.images is None):
        raise SystemExit("sr-augment: export needs exactly one of --out URI (shards) or --images DIR (PNG files)")
    try:
        if args.images:
            report = export_images(_cache_dir(args), args.images, progress=not args.no_progress)
            verb = f"written to {args.images}"
        else:
            report = export_cache(_cache_dir(args), args.out, shard_size=parse_byte_size(args.shard_size),
                                  progress=not args.no_progress)
            verb = f"exported in {len(report.shards)} shards to {args.out}"
    except (FileNotFoundError, ValueError, ExportWriteError) as exc:  # a full disk: named, no half-written shard
        raise _exit(exc) from None
    return _print_report(report, args, verb)


def cmd_import(args) -> int:
    from sr_augment.cache import SRCache
    from sr_augment.cache.transfer import import_shards

    with SRCache(args.cache_dir, size_limit=args.size_limit) as cache:
        try:
            report = import_shards(args.uris, cache, progress=not args.no_progress)
        except (FileNotFoundError, ValueError) as exc:
            raise _exit(exc) from None
    return _print_report(report, args, "imported")


def cmd_merge(args) -> int:
    from sr_augment.cache import SRCache
    from sr_augment.cache.transfer import merge_caches

    with SRCache(args.into, size_limit=args.size_limit) as cache:
        try:
            report = merge_caches(args.sources, cache, progress=not args.no_progress)
        except (FileNotFoundError, ValueError) as exc:
            raise _exit(exc) from None
    return _print_report(report, args, f"merged into {args.into}")


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register info, export, import and merge on the CLI's subparsers."""
    def common(p, progress=True):
        p.add_argument("--json", action="store_true", help="print one JSON object")
        if progress:
            p.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    cache_help = "cache folder (default: $SR_AUGMENT_CACHE_DIR or the user cache dir)"
    p = sub.add_parser("info", help="cache entries (per engine and mode), size, hit/miss counters, engines seen; "
                                    "exit 1 with 'no cache at DIR' when the folder does not exist")
    p.add_argument("--cache-dir", default=None, help=cache_help)
    common(p, progress=False)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("export", help="write the cache as WebDataset tar shards + a Parquet manifest (--out, any fsspec URL), "
                                      "or as PNG files + index.csv (--images)")
    p.add_argument("--cache-dir", default=None, help=cache_help)
    p.add_argument("--out", default=None, metavar="URI",
                   help="shard folder: a path or an fsspec URL such as s3://bucket/sr-shards; "
                        "a rerun adds only entries not exported there yet")
    p.add_argument("--shard-size", default="1GB", help="bytes per shard, e.g. 1GB, 500MiB (default: %(default)s)")
    p.add_argument("--images", default=None, metavar="DIR", help="write every entry as a PNG file and index.csv instead")
    common(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("import", help="import shards into a local cache, verifying every record (checksum, decode) and "
                                      "refusing tampered members by name; keys already cached are skipped")
    p.add_argument("uris", nargs="+", metavar="URI", help="shard folders, .tar files or globs; paths or fsspec URLs")
    p.add_argument("--cache-dir", default=None, help=cache_help)
    p.add_argument("--size-limit", type=int, default=None, help="cache size limit in bytes, remembered by the folder")
    common(p)
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("merge", help="merge caches (e.g. one per machine) into one, verifying every record")
    p.add_argument("sources", nargs="+", metavar="CACHE_DIR", help="cache folders to copy from (read only)")
    p.add_argument("--into", required=True, metavar="DIR", help="the cache folder to merge into")
    p.add_argument("--size-limit", type=int, default=None, help="cache size limit in bytes, remembered by the folder")
    common(p)
    p.set_defaults(func=cmd_merge)
