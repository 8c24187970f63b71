"""Warm on a Ray cluster: generate every (image, variant) with an actor pool, write portable shards.

Why this shape:
- The inputs become a Ray dataset of (path, variant) work items; `map_batches` runs them through a
  callable class that builds the engine ONCE per actor (`num_gpus=1` per actor where the cluster has
  GPUs, else one CPU), `batch_size` items per engine call, `actors` actors.
- Keys and seeds are computed in the actors exactly as `SRCache` does (`cache.keys`: pixels, engine
  fingerprint, mode, scale, variant), so an imported shard entry is the entry a local warm would store.
- Results come back to the driver as record bytes (`cache.codec`, checksummed, verified in the actor)
  and are written as WebDataset shards + Parquet manifests (`cache.shards`) to any filesystem fsspec /
  pyarrow reach (a local folder, `s3://`). Each finished shard is complete on its own: a preempted run
  keeps every shard it closed, and a rerun reads the manifests first and skips the keys they hold.
- Ray is optional (`pip install 'sr-augment[ray]'`); nothing here imports it before `ray_warm` runs.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from sr_augment.cache.results import entry_request  # the same keys as SRCache, so shard keys are cache keys
from sr_augment.errors import RayUnavailable  # noqa: F401  (defined in errors, named here too)
from sr_augment.images import IMAGE_SUFFIXES, ImageDecodeError, decode_image, iter_image_files, load_image
from sr_augment.warm.local import WarmReport

RAY_MISSING = ("`--ray` needs Ray Data, which is not installed: pip install 'sr-augment[ray]' "
               "(or pip install 'ray[data]>=2.9')")


@dataclass
class RayWarmReport(WarmReport):
    """A `WarmReport` of a Ray run: `generated` counts entries written to shards, `cached` those already
    in the output's manifests (or duplicates of an entry written earlier in this run); plus the shard
    files this run wrote and the number of actors."""
    shards: list = field(default_factory=list)
    actors: int = 0
    lost: list = field(default_factory=list)  # shards the output's manifest listed that were gone or cut short


def _is_uri(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def list_inputs(paths: Iterable, suffixes=IMAGE_SUFFIXES) -> list[str]:
    """Image files under local paths or fsspec URIs (folders recursively, by image suffix: `suffixes`),
    sorted. Local paths are made absolute so every worker of a (shared-filesystem) cluster finds them."""
    found: list[str] = []
    for raw in paths:
        text = str(raw)
        if not _is_uri(text):
            found.extend(str(p.resolve()) for p in iter_image_files([text.removeprefix("file://")], suffixes))
            continue
        import fsspec

        fs, root = fsspec.core.url_to_fs(text)
        if fs.isdir(root):
            names = sorted(p for p in fs.find(root) if os.path.splitext(p)[1].lower() in suffixes)
            found.extend(fs.unstrip_protocol(p) for p in names)
        elif fs.exists(root):
            found.append(text)
        else:
            raise FileNotFoundError(f"{text}: no such file or folder")
    return found


def read_image(path: str, loader=None):
    """uint8 HWC RGB from a local path or an fsspec URI, decoded by `loader` (`sr_augment.loaders.FileLoader`:
    as the training pipeline's loader, with its resize) or, without one, by `images.load_image`'s rules,
    raising `ImageDecodeError` naming the file."""
    if not _is_uri(path):
        local = path.removeprefix("file://")
        return load_image(local) if loader is None else loader(local)
    import fsspec

    try:
        with fsspec.open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        raise ImageDecodeError(f"{path}: no such file") from None
    except Exception as exc:  # every fsspec backend raises its own types
        raise ImageDecodeError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from None
    if not data:
        raise ImageDecodeError(f"{path}: empty file (0 bytes)")
    if loader is not None:
        return loader.decode(io.BytesIO(data), path)
    return decode_image(io.BytesIO(data), path)  # the same decoder and errors as a local file


RESULT_COLUMNS = ("key", "path", "variant", "record", "status", "error")


class GenerateBatch:
    """The Ray Data callable class: one engine per actor, built in `__init__`; `__call__` turns a batch of
    (path, variant) items into result rows (status "generated" with the record, "cached" for a key the
    output already holds, "failed" with the reason). A batch the engine fails on is retried one item at
    a time, so one bad image fails alone."""

    def __init__(self, engine_spec, engine_options: dict, mode: str, codec: str, skip: frozenset, preprocess=None,
                 degrade=None, loader=None):
        from sr_augment.engines import get_engine
        from sr_augment.engines.degrade import with_degradation

        self.engine = with_degradation(get_engine(engine_spec, **engine_options), degrade)
        self.mode, self.codec, self.skip, self.preprocess = mode, codec, skip, preprocess
        self.loader = loader

    def __call__(self, batch):
        import pyarrow as pa

        paths, variants = batch.column("path").to_pylist(), batch.column("variant").to_pylist()
        rows, todo, images, seen = [], [], {}, set()
        for path, variant in zip(paths, variants):
            row = dict.fromkeys(RESULT_COLUMNS)
            row.update(path=path, variant=int(variant))
            rows.append(row)
            try:
                if path not in images:
                    image = read_image(path, self.loader)
                    images[path] = self.preprocess(image) if self.preprocess is not None else image
                request = entry_request(images[path], self.engine, self.mode, variant)
            except (ImageDecodeError, OSError, ValueError) as exc:
                row.update(status="failed", error=str(exc))
                continue
            row["key"] = request.key
            if request.key in self.skip or request.key in seen:
                row["status"] = "cached"
            else:
                seen.add(request.key)
                todo.append((row, request))
        self._generate(todo)
        return pa.Table.from_pylist(rows, schema=result_schema())

    def _generate(self, todo: Sequence) -> None:
        import numpy as np

        from sr_augment.cache import codec, entrymeta
        from sr_augment.modes import mode_result, request_input

        if not todo:
            return
        try:
            inputs = [request_input(self.engine, r, self.mode) for _, r in todo]
            outputs = self.engine.upscale(inputs, [r.seed for _, r in todo])
            records = []
            for (_, request), out in zip(todo, outputs):
                result = np.ascontiguousarray(mode_result(out, request.image, self.mode), dtype=np.uint8)
                record = codec.encode(result, self.codec, entrymeta.make(self.engine, self.mode, request))
                codec.decode(record)  # verify before it leaves the actor, as SRCache does before publishing
                records.append(record)
        except Exception as exc:  # isolate the item that broke the batch
            if len(todo) > 1:
                for item in todo:
                    self._generate([item])
            else:
                todo[0][0].update(status="failed", error=f"generation failed: {type(exc).__name__}: {exc}")
            return
        for (row, _), record in zip(todo, records):
            row.update(status="generated", record=record)


def result_schema():
    import pyarrow as pa

    return pa.schema([("key", pa.string()), ("path", pa.string()), ("variant", pa.int64()), ("record", pa.binary()),
                      ("status", pa.string()), ("error", pa.string())])


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise RayUnavailable(RAY_MISSING) from None
    return ray


def ray_warm(paths: Iterable, engine_spec, out: str, *, address: str | None = None, actors: int = 2,
             num_gpus_per_actor: float | None = None, mode: str = "upscale", scale: int = 4, variants: int = 1,
             batch_size: int = 8, engine_params: dict | None = None, codec: str = "webp",
             shard_size: int | str | None = None, preprocess=None, progress: bool = True,
             degrade=None, loader=None) -> RayWarmReport:
    """Generate every (image, variant) under `paths` on a Ray cluster and write the results as shards to `out`.

    Args:
        paths: local files/folders or fsspec URIs (`s3://bucket/train`); on a multi-node cluster local
            paths must be on a filesystem every node mounts.
        engine_spec: what `get_engine` takes (a string: each actor builds its own engine).
        out: folder or URI the shards and manifests go to; keys its manifests already hold are skipped.
        address: Ray cluster address (None: the running local cluster, else a new one started here and
            stopped at the end; a cluster already initialised in this process is used as it is).
        actors: engine-holding actors (`map_batches` actor pool size).
        num_gpus_per_actor: GPUs per actor; None = 1 where the cluster has GPUs, else 0 (one CPU each).
        mode, scale, variants, batch_size: as `sr-augment warm` (`batch_size` items per engine call).
        engine_params: `steps`, `device`, `dtype` and engine parameters, passed to `get_engine`.
        codec: record codec ("webp", "png"; as `SRCache`).
        preprocess: a picklable callable applied to each decoded image before keying (`warm --resize
            --center-crop`: `tv_geometry.Preprocess`), as `warm` does.
        loader: how each file is decoded and resized (`sr_augment.loaders.file_loader`, as `warm --loader`),
            listing the files its library lists; None: `images.load_image` (EXIF applied), then `preprocess`.
        shard_size: bytes per shard file (`cache.shards.parse_byte_size` forms: "256MB"); default 1 GB. A
            preempted run loses at most the shard it had open.
        degrade: seeded input degradations for variants > 0 (`sr_augment.engines.degrade`), applied in
            each actor as `warm --degrade` and the adapters' `degrade=` apply them: the same keys.
    """
    from sr_augment.cache import shards as _shards
    from sr_augment.engines.degrade import degrade_config
    from sr_augment.modes import check_mode

    check_mode(mode)
    degrade = degrade_config(degrade)  # refused here, not in every actor
    if variants < 1 or batch_size < 1 or actors < 1:
        raise ValueError(f"variants, batch_size and actors must be >= 1, got {variants}, {batch_size} and {actors}")
    shard_size = _shards.DEFAULT_SHARD_SIZE if shard_size is None else _shards.parse_byte_size(shard_size)
    if not isinstance(engine_spec, str):
        raise TypeError("ray_warm needs the engine as a spec string (each actor builds its own), "
                        f"got {type(engine_spec).__name__}")
    ray = _import_ray()
    start = time.perf_counter()
    files = list_inputs(paths, getattr(loader, "suffixes", IMAGE_SUFFIXES))
    report = RayWarmReport(images=len(files), actors=actors)
    lost: dict = {}  # the manifest is the truth: a listed shard that is gone or cut short is generated again
    done = frozenset(_shards.written_keys(out, lost=lost))  # resume: what earlier (maybe preempted) runs wrote
    report.lost = sorted(lost)
    started_here = _connect(ray, address, actors)
    try:
        ds = _dataset(ray, files, variants, batch_size, actors, num_gpus_per_actor,
                      engine_spec=_absolute_engine_path(engine_spec), engine_options={"scale": scale, **(engine_params or {})},
                      mode=mode, codec=codec, skip=done, preprocess=preprocess, degrade=degrade,
                      loader=loader)
        _collect(ds, out, report, total=len(files) * variants, shard_size=shard_size, progress=progress)
        if lost:  # their keys are in new shards now: the stale manifest parts go (`shards.retire`)
            _shards.retire(out, lost)
    except KeyboardInterrupt:
        report.interrupted = True
    finally:
        if started_here:
            ray.shutdown()
            with contextlib.suppress(OSError):
                os.rmdir(started_here)
        report.seconds = round(time.perf_counter() - start, 3)
    return report


def _connect(ray, address: str | None, actors: int) -> str | None:
    """Initialise Ray unless this process already did; the private folder it was started from when this call
    started it, else None. A local cluster started here gets more logical CPUs than actors: with every CPU
    held by an actor, Ray Data has none left for its own tasks and stalls (measured: `ray.init(num_cpus=2)`
    with two 1-CPU actors deadlocks a `map_batches` followed by an aggregate; `num_cpus=4` runs).

    Ray puts the driver's working folder on every worker's `sys.path` (and starts a local cluster's workers
    in it), so a module planted where the user runs (`argparse.py` in a team folder) would load in the
    actors: Ray is started from a private empty folder instead, and this process goes back at once."""
    if ray.is_initialized():
        return None
    here, private = os.getcwd(), tempfile.mkdtemp(prefix="sr-augment-ray-")
    os.chdir(private)
    try:
        if address or os.environ.get("RAY_ADDRESS"):
            ray.init(address=address or None, log_to_driver=False)
        else:
            ray.init(num_cpus=max(os.cpu_count() or 1, actors + 2), include_dashboard=False, log_to_driver=False)
    except BaseException:
        os.chdir(here)
        os.rmdir(private)
        raise
    os.chdir(here)
    return private


def _absolute_engine_path(spec: str) -> str:
    """A relative engine folder or checkpoint file as an absolute path: actors do not run in the caller's
    working folder. Engine names, hub ids and `module:Class` specs stay as they are."""
    from sr_augment.engines.kinds import REGISTRY

    local = Path(spec).expanduser()
    if spec in REGISTRY.names() or local.is_absolute() or not local.exists():
        return spec
    return str(local.resolve())


def _dataset(ray, files: list[str], variants: int, batch_size: int, actors: int, num_gpus: float | None,
             **constructor):
    items = [{"path": path, "variant": v} for path in files for v in range(variants)]
    if num_gpus is None:
        num_gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
    resources = {"num_gpus": num_gpus} if num_gpus else {"num_cpus": 1}
    # about one engine batch per block and at least one per actor, so every actor gets work; capped
    blocks = max(1, min(len(items), max(actors, math.ceil(len(items) / batch_size)), 4096))
    ds = ray.data.from_items(items, override_num_blocks=blocks)
    return ds.map_batches(GenerateBatch, fn_constructor_kwargs=constructor, batch_size=batch_size,
                          batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=actors), **resources)


def _collect(ds, out: str, report: RayWarmReport, *, total: int, shard_size: int, progress: bool) -> None:
    """Stream the result rows into shards (in the driver); count what happened."""
    from sr_augment.cache import shards as _shards

    written: set[str] = set()
    failed_paths: set[str] = set()
    bar = tqdm(total=total, unit="entry", desc="ray warm", disable=not progress, dynamic_ncols=True)
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False  # ours below counts entries, not blocks
    writer = _shards.ShardWriter(out, shard_size=shard_size)
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            for row in batch.to_pylist():
                if row["status"] == "failed":
                    if row["path"] not in failed_paths:
                        failed_paths.add(row["path"])
                        report.failures.append({"path": row["path"], "error": row["error"]})
                        report.failed += 1
                elif row["status"] == "generated" and row["key"] not in written:
                    written.add(row["key"])
                    writer.add(row["key"], row["record"])
                    report.generated += 1
                else:
                    report.cached += 1
            bar.update(batch.num_rows)
            bar.set_postfix(generated=report.generated, cached=report.cached, failed=report.failed, refresh=False)
    finally:
        bar.close()
        report.shards.extend(writer.close())


def run_ray_warm(options) -> int:
    """`sr-augment warm PATH... --ray [ADDRESS] --out URI`: the CLI's warm command on a Ray cluster, from its
    `WarmOptions`."""
    import json
    import sys

    from sr_augment.engines import check_spec

    if options.ray is None:
        raise SystemExit("sr-augment: warm --out writes shards from a Ray cluster: add --ray [ADDRESS] "
                         "(without --ray, warm fills the local cache: --cache-dir)")
    if not options.out:
        raise SystemExit("sr-augment: warm --ray writes shards, not a cache: give --out FOLDER_OR_URI "
                         "(then `sr-augment import` it where training runs)")
    try:
        _import_ray()
        check_spec(options.engine)  # a misspelt engine fails here, not in every actor
    except (RayUnavailable, ValueError, TypeError) as exc:
        raise SystemExit(f"sr-augment: {exc}") from None
    params = options.engine_kwargs()
    params.update(steps=options.steps, device=options.device, dtype=options.dtype)
    try:
        report = ray_warm(list(options.paths), options.engine, options.out, address=options.ray or None,
                          actors=options.actors, mode=options.mode, scale=options.scale, variants=options.variants,
                          batch_size=options.batch_size, engine_params=params, loader=options.file_loader,
                          progress=options.progress, degrade=options.degrade)
    except FileNotFoundError as exc:
        raise SystemExit(f"sr-augment: {exc}") from None
    from sr_augment.cache.inventory import printable

    for shard in report.lost:
        print(printable(f"warning: {options.out}: {shard} is listed in the manifest but gone or cut short: its samples "
                        f"were generated again"), file=sys.stderr)
    for failure in report.failures:  # paths and errors name user files: printed escaped
        error = failure["error"]
        named = error if error.startswith(failure["path"]) else f"{failure['path']}: {error}"
        print(printable(f"failed: {named}"), file=sys.stderr)
    if report.interrupted:
        print("interrupted: every shard closed so far is complete; run the same command again to resume",
              file=sys.stderr)
    if options.json:
        print(json.dumps(report.as_dict()))
    else:
        print(printable(f"{report.images} images: {report.generated} generated into {len(report.shards)} shards at "
                        f"{options.out}, {report.cached} already there, {report.failed} failed in {report.seconds:.1f} s "
                        f"({report.actors} Ray actors)"))
    return 130 if report.interrupted else 1 if report.failed else 0
