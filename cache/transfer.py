"""Moving entries between caches and shards: export, import, merge, and export as PNG files.

Why one module: all four walk entries of an untrusted source (a cache folder read by SQL and value-file
name shape, never a pickle: `rows`; or shards: `shard_reader`), verify each record, and report what
was skipped or refused by name without stopping on it. Each reports bytes moved and MB/s, with a
tqdm progress bar. Import and merge skip keys the target already holds; export skips keys already
committed under its output (a rerun after more `warm` adds only the new entries). The manifest is the
truth: import counts what it lists and no shard holds as `missing` (exit 1), and export writes the
samples of a listed shard that is gone or cut short again. Only regular files are read as shards (a
FIFO never blocks), and `export --images` never writes through a link planted in its folder. The
engines' identity records travel too (`OUT/identities/<id>.json`; `service.identity`), so an imported or
merged cache starts no engine service; a refused record is a warning, named.
"""

from __future__ import annotations

import csv
import errno
import fnmatch
import os
import posixpath
import secrets
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image
from tqdm.auto import tqdm

from sr_augment.cache import codec, entrymeta, layout, rows
from sr_augment.cache.disk import FULL_ERRNOS
from sr_augment.cache.shard_reader import SampleRefused, rebuild, samples
from sr_augment.cache.shards import (
    DEFAULT_SHARD_SIZE,
    MANIFEST_DIR,
    NotARegularFile,
    ShardWriter,
    filesystem,
    open_regular,
    parts_listing,
    read_manifest,
    retire,
    stem_of,
    written_keys,
)
from sr_augment.errors import ExportWriteError

_SHOWN = 50
"""Problems listed by name in a report (the counts cover all)."""


@dataclass
class TransferReport:
    entries: int = 0  # entries or samples read from the sources
    copied: int = 0  # written to the shards, the cache or the folder
    present: int = 0  # skipped: already in the target
    refused: int = 0  # damaged, tampered or not ours: not copied
    missing: int = 0  # listed in a shard manifest but not found in the shards read (import)
    bytes: int = 0  # bytes read from the sources
    seconds: float = 0.0
    shards: list = field(default_factory=list)
    problems: list = field(default_factory=list)  # {"source", "member" or "entry", "reason"[, "kind"]}

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0

    def note(self, problem: dict) -> None:
        if len(self.problems) < _SHOWN:
            self.problems.append(problem)

    def as_dict(self) -> dict:
        return {**asdict(self), "mb_per_s": round(self.mb_per_s, 2)}


def count_entries(directory) -> int:
    return rows.count_rows(Path(directory) / layout.ENTRIES)


def iter_records(directory, report: TransferReport) -> Iterator[tuple[str, bytes]]:
    """(key, record) of every entry of the cache at `directory` whose checksum holds; others are noted
    in `report` and skipped (rows sr-augment never writes, lost value files, damaged records)."""
    entries = Path(directory) / layout.ENTRIES
    con = rows.connect_readonly(entries)
    if con is None:
        return
    try:
        cursor = con.execute("SELECT rowid, key, raw, mode, filename, value FROM Cache ORDER BY rowid")
        for rowid, key, raw, mode, filename, value in cursor:
            report.entries += 1
            where = key if isinstance(key, str) else f"row {rowid}"
            try:
                if raw != 1 or not isinstance(key, str) or not entrymeta.KEY.fullmatch(key):
                    raise rows.UntrustedRow("not a key sr-augment writes")
                record = rows.row_value(entries, mode, filename, value)
                codec.split(record)
            except (rows.UntrustedRow, FileNotFoundError, codec.DamagedEntry) as exc:
                report.refused += 1
                report.note({"source": str(directory), "entry": where, "reason": f"{type(exc).__name__}: {exc}"})
                continue
            report.bytes += len(record)
            yield key, record
    except sqlite3.DatabaseError as exc:
        raise rows.damaged(entries, str(exc)) from exc
    finally:
        con.close()


def _bar(total: int, desc: str, progress: bool, unit: str = "B"):
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, disable=not progress, dynamic_ncols=True)


def _require_cache(directory) -> Path:
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"no cache at {directory}")
    return directory


_READ_ERRORS = (rows.CacheUnavailable, rows.DatabaseDamaged)
"""Errors of the source cache, not of the output: raised as they are (the CLI names the cache)."""


def _write_error(where, exc: OSError) -> ExportWriteError:
    full = getattr(exc, "errno", None) in FULL_ERRNOS
    hint = (" The disk (or a quota or file-size limit) looks full: free space and run the export again; it "
            "resumes." if full else " Fix that and run the export again; it resumes.")
    error = ExportWriteError(f"cannot write to {where}: {type(exc).__name__}: {exc.strerror or exc}.{hint} Nothing "
                             f"half-written was left under a final name.")
    error.errno = getattr(exc, "errno", None) or errno.EIO
    return error


def export_cache(cache_dir, out: str, *, shard_size: int = DEFAULT_SHARD_SIZE, prefix: str | None = None,
                 progress: bool = True, storage_options: dict | None = None) -> TransferReport:
    """Write every entry of the cache at `cache_dir` not yet under `out` as shards (`shards`).

    The manifest is the truth, for export as for import: a key counts as already there only in a shard
    that holds what the manifest lists for it (`shards.bad_shards`: there, complete, every member where
    the manifest says, JSON members matching their SHA-256). The samples of a shard that does not are
    exported again and the shard retired (`shards.retire`); one that cannot be retired (its manifest part
    lists other shards too) is reported `refused` by name, and listed samples this cache no longer holds
    `missing`, so exit 0 means an `import` of `out` gets every sample its manifest lists. A write that
    fails (a full disk) raises `ExportWriteError` naming `out`; the open shard is removed first."""
    cache_dir = _require_cache(cache_dir)
    report, start = TransferReport(), time.perf_counter()
    lost: dict = {}
    done = written_keys(out, storage_options, lost)  # a shard listed but gone, cut short or not as listed: again
    for shard, (why, keys) in sorted(lost.items()):
        report.note({"source": str(out), "reason": f"{shard} is listed in the manifest but {why}; its {len(keys)} "
                                                    f"samples are exported again, then the shard is retired where that is safe"})
    writer, written = None, set(done)
    try:
        writer = ShardWriter(out, prefix=prefix, shard_size=shard_size, storage_options=storage_options)
        for path in writer.leftovers:
            report.note({"source": str(out), "reason": f"removed {posixpath.basename(path)}, left by an export that "
                                                        f"was interrupted"})
        with _bar(count_entries(cache_dir), "export", progress, unit="entry") as bar:
            for key, record in iter_records(cache_dir, report):
                bar.update(1)
                if key in done:
                    report.present += 1
                    continue
                writer.add(key, record)
                written.add(key)
                report.copied += 1
        report.shards = writer.close()
        removed = retire(out, lost, storage_options, written) if lost else []
        _export_identities(cache_dir, out, report, storage_options)
    except BaseException as exc:
        if writer is not None:
            writer.abort()
        if isinstance(exc, OSError) and not isinstance(exc, _READ_ERRORS):
            raise _write_error(out, exc) from None
        raise
    _unretired(out, lost, removed, written, report, storage_options)
    report.seconds = time.perf_counter() - start
    return report


def _export_identities(cache_dir: Path, out: str, report: TransferReport, storage_options: dict | None) -> None:
    """The cache's engine identity records as `out/identities/<id>.json`, so a cache imported from the shards
    starts no engine service (`service.identity`); a record that cannot travel is noted, not exported."""
    from sr_augment.service.identity import FOLDER, records

    found, problems = records(cache_dir)
    for name, why in problems:
        report.note({"source": str(cache_dir / FOLDER), "member": name, "kind": "warning",
                     "reason": f"engine identity record not exported: {why}"})
    if not found:
        return
    fs, root = filesystem(out, storage_options)
    folder = f"{root.rstrip('/')}/{FOLDER}"
    fs.makedirs(folder, exist_ok=True)
    for name, data in found:
        if fs.isfile(f"{folder}/{name}") and fs.cat_file(f"{folder}/{name}") == data:
            continue
        if _is_local_fs(fs):
            with _new_file(Path(folder), name, "wb") as fh:  # never written through a planted link
                fh.write(data)
        else:
            fs.pipe_file(f"{folder}/{name}", data)


def _is_local_fs(fs) -> bool:
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(fs, LocalFileSystem)


def _import_identities(fs, folder: str, cache, report: TransferReport) -> None:
    """Store the engine identity records under `folder/identities/` (shards: untrusted) in `cache`: each is
    validated and must be filed under the id of the engine settings it names; a refused one is noted by
    name (a warning: the entries do not depend on it)."""
    from sr_augment.service.identity import FOLDER, store_record
    from sr_augment.service.identity import MAX_BYTES as _MAX_BYTES

    for path in sorted(fs.glob(f"{folder.rstrip('/')}/{FOLDER}/*.json")):
        name = posixpath.basename(path)
        try:
            with open_regular(fs, path) as fh:
                data = fh.read(_MAX_BYTES + 1)
            if len(data) > _MAX_BYTES:
                raise ValueError(f"larger than {_MAX_BYTES} bytes")
            store_record(cache.directory, name, data)
        except (OSError, ValueError) as exc:
            report.note({"source": f"{folder.rstrip('/')}/{FOLDER}", "member": name, "kind": "warning",
                         "reason": f"engine identity record not imported: {exc}"})


def _merge_identities(source: Path, into, report: TransferReport) -> None:
    """Copy the engine identity records of the cache at `source` into `into` (see `_import_identities`)."""
    from sr_augment.service.identity import FOLDER, records, store_record

    found, problems = records(source)
    for name, data in found:
        try:
            store_record(into.directory, name, data)
        except (OSError, ValueError) as exc:
            problems.append((name, str(exc)))
    for name, why in problems:
        report.note({"source": str(source / FOLDER), "member": name, "kind": "warning",
                     "reason": f"engine identity record not merged: {why}"})


def _unretired(out: str, lost: dict, removed: list, written: set, report: TransferReport,
               storage_options: dict | None = None) -> None:
    """Report the lost or bad shards `retire` could not remove: their samples that are written nowhere are
    `missing` (not in this cache any more); a shard whose samples are all written again but whose manifest
    part cannot be removed safely is `refused`, to be removed by hand (an import would refuse it)."""
    retired = {posixpath.basename(path)[: -len(".parquet")] + ".tar" for path in removed}
    for shard, (why, keys) in sorted(lost.items()):
        if shard in retired:
            continue
        unwritten = [key for key in keys if key not in written]
        if unwritten:
            report.missing += len(unwritten)
            report.note({"source": str(out), "member": shard, "kind": "missing",
                         "reason": f"{len(unwritten)} of its samples are not in this cache, so they were not exported "
                                   f"again (the manifest keeps listing them; an import reports them missing): "
                                   f"{', '.join(unwritten[:5])}{' ...' if len(unwritten) > 5 else ''}"})
        else:
            report.refused += 1
            parts = [f"{MANIFEST_DIR}/{name}" for name in parts_listing(out, shard, storage_options)]
            report.note({"source": str(out), "member": shard,
                         "reason": f"{why}; its samples are exported again, but its rows stay in the manifest because "
                                   f"its manifest part ({', '.join(parts) or 'none found'}) lists other shards or is not "
                                   f"named after it: remove {shard} and its rows by hand (an import of this folder "
                                   f"refuses them)"})


def _shard_paths(fs, root: str) -> tuple[list[str], str, str]:
    """(shard paths, their folder, the pattern of the manifest's shards this URI stands for)."""
    if fs.isdir(root):
        return sorted(fs.glob(f"{root.rstrip('/')}/*.tar")), root.rstrip("/"), "*"
    folder, name = posixpath.split(root)
    if any(c in root for c in "*?["):
        return sorted(fs.glob(root)), folder, name if not any(c in folder for c in "*?[") else ""
    if not fs.exists(root):
        raise FileNotFoundError(f"no shards at {root}")
    return [root], folder, name


def import_shards(uris, cache, *, progress: bool = True, storage_options: dict | None = None) -> TransferReport:
    """Import shards (folders, tar files or globs, local or fsspec URLs) into `cache` (an `SRCache`).
    Only regular files are read (a FIFO named `x.tar` is refused by name, never opened blocking). The
    manifest is the truth: every sample it lists for the shards a URI names (a folder: all of its
    manifest) that no shard read holds is counted `missing` and reported by shard and member."""
    report, start = TransferReport(), time.perf_counter()
    located, folders = [], {}
    for uri in uris:
        fs, root = filesystem(uri, storage_options)
        paths, folder, pattern = _shard_paths(fs, root)
        if folder not in folders:
            by_shard, problems = read_manifest(folder, fs=fs)
            folders[folder] = (fs, by_shard, set())
            for problem in problems:
                report.note({"source": folder, "member": "", "reason": problem})
        wanted = folders[folder][2]
        wanted.update(s for s in folders[folder][1] if pattern and fnmatch.fnmatchcase(s, pattern))
        wanted.update(posixpath.basename(p) for p in paths)
        if not paths and not wanted:
            raise FileNotFoundError(f"no .tar shards at {uri}")
        located += [(fs, path) for path in paths if (fs, path) not in located]
    seen, opened = set(), set()
    with _bar(sum(fs.size(path) or 0 for fs, path in located), "import", progress) as bar:
        for fs, path in located:
            folder, shard = posixpath.split(path)
            manifest = folders[folder][1].get(shard)
            problems: list = []
            try:
                fh = open_regular(fs, path)
            except (NotARegularFile, OSError) as exc:
                report.refused += 1
                report.note({"source": folder, "member": shard, "reason": str(exc).removeprefix(f"{path}: ")})
                continue
            opened.add((folder, shard))
            with fh:
                for sample in samples(fh, shard, problems):
                    report.entries += 1
                    report.bytes += sample.size
                    seen.add(sample.key)
                    bar.update(sample.size)
                    if sample.key in cache:
                        report.present += 1
                        continue
                    try:
                        if manifest is not None and sample.key not in manifest:
                            raise SampleRefused(", ".join(sample.members.values()),
                                                "not in the shard's manifest (added after export)")
                        record = rebuild(sample, None if manifest is None else manifest[sample.key])
                    except SampleRefused as exc:
                        report.refused += 1
                        report.note({"source": path, "member": exc.member, "reason": exc.reason})
                        continue
                    try:
                        stored = cache.add_record(sample.key, record)  # decodes the record first
                    except codec.DamagedEntry as exc:
                        image = next(n for e, n in sample.members.items() if e != "json")
                        report.refused += 1
                        report.note({"source": path, "member": image, "reason": f"does not decode ({exc})"})
                        continue
                    report.copied += stored
                    report.present += not stored
            for problem in problems:
                report.note({"source": path, "member": problem["member"], "reason": problem["reason"]})
            report.refused += len(problems)
    for folder, (fs, _, _) in folders.items():
        _import_identities(fs, folder, cache, report)
    _missing(folders, opened, seen, report)
    report.seconds = time.perf_counter() - start
    return report


def _missing(folders: dict, read: set, seen: set, report: TransferReport) -> None:
    """Count and name the samples the manifest lists for the wanted shards that no shard read held."""
    for folder, (_, by_shard, wanted) in folders.items():
        for shard in sorted(wanted):
            rows = [row for key, row in by_shard.get(shard, {}).items() if key not in seen]
            if not rows:
                continue
            report.missing += len(rows)
            source = f"{folder}/{shard}"
            if (folder, shard) not in read:
                report.note({"source": source, "member": "", "kind": "missing",
                             "reason": f"listed in the manifest with {len(rows)} samples, but the shard file is gone "
                                       f"or was not read; none of them imported"})
                continue
            for row in rows:
                report.note({"source": source, "member": row["image_member"], "kind": "missing",
                             "reason": "listed in the shard's manifest but not in the shard (cut off or removed); "
                                       "not imported"})


def merge_caches(sources, into, *, progress: bool = True) -> TransferReport:
    """Copy every verified entry of the caches at `sources` that `into` (an `SRCache`) lacks."""
    report, start = TransferReport(), time.perf_counter()
    sources = [_require_cache(s) for s in sources]
    for source in sources:
        if source.resolve() == Path(into.directory).resolve():
            raise ValueError(f"{source} is the cache being merged into")
    with _bar(sum(count_entries(s) for s in sources), "merge", progress, unit="entry") as bar:
        for source in sources:
            for key, record in iter_records(source, report):
                bar.update(1)
                if key in into:
                    report.present += 1
                    continue
                try:
                    stored = into.add_record(key, record)
                except codec.DamagedEntry as exc:
                    report.refused += 1
                    report.note({"source": str(source), "entry": key, "reason": f"does not decode ({exc})"})
                    continue
                report.copied += stored
                report.present += not stored
    for source in sources:
        _merge_identities(source, into, report)
    report.seconds = time.perf_counter() - start
    return report


class _new_file:
    """A file written as `folder/name` without ever writing through what is there: the data goes to a new
    file created exclusively (O_CREAT | O_EXCL | O_NOFOLLOW, a random name, mode 0o666 less the umask as
    `open` gives) in `folder`, renamed onto `name` when complete. A rename replaces a planted symbolic link
    itself, never its target, and no reader sees a half-written file; on an error the new file is removed
    and `name` is left as it was."""

    def __init__(self, folder: Path, name: str, mode: str, **kwargs):
        self.target, self.part = Path(folder) / name, Path(folder) / f".{name}.{secrets.token_hex(8)}.part"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        self.file = os.fdopen(os.open(self.part, flags, 0o666), mode, **kwargs)

    def __enter__(self):
        return self.file

    def __exit__(self, kind, *exc) -> None:
        try:
            self.file.close()
            if kind is None:
                os.replace(self.part, self.target)
        finally:
            if self.part.exists():
                self.part.unlink()


IMAGE_COLUMNS = ("key", "file", "engine", "mode", "scale", "variant", "seed", "source_size", "size", "fingerprint")


def export_images(cache_dir, out_dir, *, progress: bool = True) -> TransferReport:
    """Every entry as `<out_dir>/<key with _>.png` and `<out_dir>/index.csv` (IMAGE_COLUMNS): a way to look
    at the results. Source file paths are never stored (a key is pixels), so `source_size` (HxW) is
    what is known of the source, and only for entries stored with their meta."""
    cache_dir = _require_cache(cache_dir)
    out_dir = Path(out_dir)
    report, start = TransferReport(), time.perf_counter()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        _write_images(cache_dir, out_dir, report, progress)
    except OSError as exc:  # a full disk: every file is written under a temporary name, so none is left half-written
        if isinstance(exc, _READ_ERRORS):
            raise
        raise _write_error(out_dir, exc) from None
    report.seconds = time.perf_counter() - start
    return report


def _write_images(cache_dir: Path, out_dir: Path, report: TransferReport, progress: bool) -> None:
    with (_new_file(out_dir, "index.csv", "w", newline="") as fh,
          _bar(count_entries(cache_dir), "images", progress, "entry") as bar):
        table = csv.DictWriter(fh, IMAGE_COLUMNS)
        table.writeheader()
        for key, record in iter_records(cache_dir, report):
            bar.update(1)
            try:
                pixels = codec.decode(record)
            except codec.DamagedEntry as exc:
                report.refused += 1
                report.note({"source": str(cache_dir), "entry": key, "reason": str(exc)})
                continue
            name = f"{stem_of(key)}.png"
            try:
                with _new_file(out_dir, name, "wb") as image_file:
                    Image.fromarray(pixels).save(image_file, format="PNG", compress_level=1)
            except OSError as exc:  # e.g. a folder planted under the file's name: that entry only
                if exc.errno in FULL_ERRNOS:  # a full disk: every later file fails too
                    raise
                report.refused += 1
                report.note({"source": str(out_dir), "entry": key, "reason": f"{name} not written ({exc})"})
                continue
            meta = entrymeta.of_header(codec.split(record)[0])
            source = meta.get("source")
            table.writerow({"key": key, "file": name, "engine": meta.get("engine", ""), "mode": meta.get("mode", ""),
                            "scale": meta.get("scale", ""), "variant": entrymeta.variant_of(key), "seed": meta.get("seed", ""),
                            "source_size": f"{source[0]}x{source[1]}" if source else "",
                            "size": f"{pixels.shape[0]}x{pixels.shape[1]}", "fingerprint": meta.get("fingerprint", "")})
            report.copied += 1
