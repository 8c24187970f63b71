"""Warm on every GPU of one machine: `accelerate launch --num_processes N -m sr_augment warm PATH ...`.

Why a separate module: the plain `sr-augment warm` must stay one process that imports neither torch
nor accelerate. Here, each process started by the launcher takes a deterministic, pixel-balanced share
of the files (the main process reads the image headers and sends the shares to all), builds the engine
on its own device (`PartialState().device`), and runs the ordinary `warm` on its share, writing the one
local cache (SQLite/diskcache: several processes on one machine are safe in it). The main process
shows one progress bar for the whole job (each process publishes its count in a small file, the main
one sums them) and the summary: every process's report is gathered (`gather_object`) and merged.

A process that dies loses only its batch in flight, as with `warm`: a rerun skips what is cached.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

from tqdm.auto import tqdm

from sr_augment.images import IMAGE_SUFFIXES, iter_image_files
from sr_augment.warm.balance import split_by_pixels
from sr_augment.warm.local import WarmReport, warm

_SIZE_VARIABLES = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")  # as accelerate reads them


@dataclass
class AccelerateWarmReport(WarmReport):
    """A `WarmReport` of the whole job (counts summed over the processes, failures merged), plus each
    process's own counts under `ranks`."""
    processes: int = 1
    ranks: list = field(default_factory=list)


def launched_processes() -> int:
    """How many processes the launcher says this job has (1 when not started by one)."""
    for name in _SIZE_VARIABLES:
        try:
            return max(1, int(os.environ[name]))
        except (KeyError, ValueError):
            continue
    return 1


def accelerate_job() -> AccelerateJob | None:
    """The job this process is one rank of, or None for a plain run (nothing imported: the launcher's
    environment variables say whether there is one)."""
    if launched_processes() <= 1:
        return None
    if importlib.util.find_spec("accelerate") is None:
        raise SystemExit(f"sr-augment: started as one of {launched_processes()} processes, but accelerate is not "
                         f"installed: pip install 'sr-augment[diffusion]' (or run plain `sr-augment warm`)")
    from accelerate import PartialState

    state = PartialState(cpu=_cpu_only())
    return AccelerateJob(state) if state.num_processes > 1 else None


def _cpu_only() -> bool:
    """True when the processes must use the CPU (`accelerate launch --multi_gpu` on a machine without
    GPUs, as in the tests): accelerate picks no backend there unless told `cpu=True`."""
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes"):
        return True
    import torch

    return not (torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available()))


class AccelerateJob:
    """This process's part in an `accelerate launch` job: rank, device, and the warm of its share."""

    def __init__(self, state):
        self.state = state
        self.rank, self.processes = state.process_index, state.num_processes
        self.is_main, self.device = state.is_main_process, str(state.device)

    def build_engine(self, options):
        """The engine of `options` (a `WarmOptions`) with `--device auto` meaning this process's device. The
        engine's remembered settings keep the device the user asked for, so the identity record in the cache
        is the one a plain warm, or an adapter with the same settings, looks up."""
        requested = options.device
        engine = options.build_engine(device=self.device if requested == "auto" else requested)
        from sr_augment.engines.degrade import undegraded

        config = getattr(undegraded(engine), "service_config", None)  # --degrade: the engine it wraps
        if isinstance(config, dict):
            config["device"] = requested
        return engine

    def warm(self, paths, engine, cache, *, mode: str = "upscale", variants: int = 1, batch_size: int = 8,
             progress: bool = True, **options) -> AccelerateWarmReport:
        """Warm this process's share (`options` go to `warm`: `preprocess`, ...); every process returns the
        merged report of the whole job."""
        from accelerate.utils import broadcast_object_list, gather_object

        start = time.perf_counter()
        plan = [None]
        if self.is_main:
            try:
                files = iter_image_files(paths, getattr(options.get("loader"), "suffixes", IMAGE_SUFFIXES))
                shares = [[str(p) for p in share] for share in split_by_pixels(files, self.processes, progress=progress)]
                folder = tempfile.mkdtemp(prefix="sr-augment-warm-") if progress else None
                plan = [{"shares": shares, "progress": folder}]
            except FileNotFoundError as exc:
                plan = [{"error": str(exc)}]
        broadcast_object_list(plan)
        plan = plan[0]
        if "error" in plan:
            if self.is_main:
                raise FileNotFoundError(plan["error"])
            raise SystemExit(1)  # the main process says why
        share, folder = plan["shares"][self.rank], plan["progress"]
        total = sum(len(s) for s in plan["shares"]) * variants
        with _JobProgress(folder, self.rank, self.processes, total, engine.name, show=self.is_main) as board:
            mine = _warm_share(share, engine, cache, mode=mode, variants=variants, batch_size=batch_size,
                               publish=board.publish, **options)
            reports = gather_object([mine.as_dict()])
        if self.is_main and folder:
            shutil.rmtree(folder, ignore_errors=True)
        merged = merge_reports(reports)
        merged.seconds = round(time.perf_counter() - start, 3)
        _leave_process_group()
        return merged


def _leave_process_group() -> None:
    """Every process waits for the others, then tears the process group down: a process that exits
    with gloo's threads still running aborts ("terminate called without an active exception", exit -6),
    which the launcher reports as a failure of the whole job."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _warm_share(files, engine, cache, *, mode, variants, batch_size, publish, **options) -> WarmReport:
    """`warm` over `files`, `batch_size` files at a time (`variants` full engine batches per call), so the
    process can publish its progress between calls. SIGINT/SIGTERM between two calls stop it too."""
    start, report = time.perf_counter(), WarmReport()
    stop = {"signal": None}
    previous = {}

    def handle(signum, frame):
        stop["signal"] = signal.Signals(signum).name

    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for begin in range(0, len(files), batch_size):
            if stop["signal"]:
                report.interrupted, report.stopped_by = True, stop["signal"]
                break
            chunk = files[begin:begin + batch_size]
            present = [path for path in chunk if os.path.exists(path)]
            part = warm(present, engine, cache, mode=mode, variants=variants, batch_size=batch_size, progress=False,
                        **options)
            _add(report, part)
            for path in sorted(set(chunk) - set(present)):  # removed since the main process listed it
                report.images += 1
                report.failed += 1
                report.failures.append({"path": str(path), "error": f"{path}: no such file (removed during the warm)"})
            publish(min(len(files), begin + batch_size) * variants, report)
            if part.interrupted or part.error:
                break
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        report.seconds = round(time.perf_counter() - start, 3)
    return report


def _add(total: WarmReport, part: WarmReport) -> None:
    total.images += part.images
    total.generated += part.generated
    total.cached += part.cached
    total.failed += part.failed
    total.failures.extend(part.failures)
    total.interrupted = total.interrupted or part.interrupted
    total.stopped_by = total.stopped_by or part.stopped_by
    total.error = total.error or part.error


def merge_reports(reports: list[dict]) -> AccelerateWarmReport:
    """One report of the whole job from each process's `WarmReport.as_dict()`, in rank order."""
    merged = AccelerateWarmReport(processes=len(reports))
    for rank, report in enumerate(reports):
        part = WarmReport(**{f.name: report[f.name] for f in fields(WarmReport) if f.name in report})
        _add(merged, part)
        merged.ranks.append({"rank": rank, "images": part.images, "generated": part.generated, "cached": part.cached,
                             "failed": part.failed, "seconds": part.seconds})
    merged.failures.sort(key=lambda failure: failure["path"])
    return merged


class _JobProgress:
    """One progress bar in the main process for the whole job: each process writes its count to
    `<folder>/<rank>.json` (atomic replace) after each step, and a thread of the main process sums them."""

    def __init__(self, folder, rank: int, processes: int, total: int, name: str, *, show: bool):
        self.folder, self.rank, self.processes, self.show = folder and Path(folder), rank, processes, show
        self.bar = tqdm(total=total, unit="entry", desc=f"warm {name} x{processes}", dynamic_ncols=True,
                        disable=not (show and folder))
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True) if show and folder else None

    def __enter__(self) -> _JobProgress:
        if self._thread:
            self._thread.start()
        return self

    def publish(self, done: int, report: WarmReport) -> None:
        if not self.folder:
            return
        text = json.dumps({"done": done, "generated": report.generated, "cached": report.cached, "failed": report.failed})
        tmp = self.folder / f".{self.rank}.tmp"
        tmp.write_text(text)
        os.replace(tmp, self.folder / f"{self.rank}.json")

    def _poll(self) -> None:
        while not self._done.wait(0.5):
            self._refresh()

    def _refresh(self) -> None:
        counts = []
        for rank in range(self.processes):
            try:
                counts.append(json.loads((self.folder / f"{rank}.json").read_text()))
            except (OSError, ValueError):
                continue  # not written yet, or being replaced
        self.bar.n = sum(int(c.get("done", 0)) for c in counts)
        self.bar.set_postfix(generated=sum(int(c.get("generated", 0)) for c in counts),
                             cached=sum(int(c.get("cached", 0)) for c in counts), refresh=False)
        self.bar.refresh()

    def __exit__(self, *exc) -> None:
        self._done.set()
        if self._thread:
            self._thread.join()
            self._refresh()
        self.bar.close()
