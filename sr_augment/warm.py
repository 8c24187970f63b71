"""Pre-warm the cache offline: generate every (image, variant) that is not cached yet.

Work is batched across images (the engine sees `batch_size` requests at a time), each finished batch is
stored at once (a crash, even SIGKILL, loses at most the batch in flight, and a rerun resumes from the
cache), and one bad file is reported with its path and reason without stopping the others.

Stopping: SIGINT (Ctrl-C) or SIGTERM (a scheduler preempting the job) lets the batch in flight finish
and be stored, then the run ends with `report.stopped_by` set; a second Ctrl-C stops at once. A cache
that cannot be written (disk full) ends the run too: generating more would only throw the work away.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from tqdm.auto import tqdm

from sr_augment.cache.disk import CacheWriteError
from sr_augment.cache.store import EntryRequest
from sr_augment.engines.base import warn_deterministic_variants
from sr_augment.images import ImageDecodeError, iter_image_files, load_image


@dataclass
class WarmReport:
    images: int = 0
    """Image files found."""
    generated: int = 0
    """Entries (image x variant) this run generated and stored (a lost or damaged entry is regenerated)."""
    cached: int = 0
    """Entries already in the cache (or duplicates of an entry generated earlier in this run, or stored by
    another writer first)."""
    failed: int = 0
    """Files that could not be read or generated."""
    failures: list = field(default_factory=list)
    seconds: float = 0.0
    interrupted: bool = False
    """True when a signal (or Ctrl-C) stopped the run early; every batch finished before it is stored."""
    stopped_by: str | None = None
    """"SIGINT" or "SIGTERM" when a signal stopped the run, else None."""
    error: str | None = None
    """Why the run stopped early when the cache could not be written (disk full), else None."""

    def as_dict(self) -> dict:
        return asdict(self)


class _StopOnSignal:
    """While active, SIGINT/SIGTERM only ask the run to stop after the batch in flight (a second SIGINT
    raises KeyboardInterrupt at once). Handlers can be set from the main thread only; elsewhere the
    process's own handling is left alone."""

    def __init__(self, announce):
        self.received: int | None = None
        self._announce, self._previous = announce, {}

    def __enter__(self) -> "_StopOnSignal":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.received is None:
            self._announce(f"{signal.Signals(signum).name}: stopping after the batch in flight "
                           f"(Ctrl-C again to stop at once)")
        self.received = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    @property
    def name(self) -> str | None:
        return None if self.received is None else signal.Signals(self.received).name


def warm(paths: Iterable, engine, cache, *, mode: str = "upscale", variants: int = 1, batch_size: int = 8,
         progress: bool = True) -> WarmReport:
    """Make sure every image under `paths` has `variants` cached results for this engine and mode."""
    if variants < 1 or batch_size < 1:
        raise ValueError(f"variants and batch_size must be >= 1, got {variants} and {batch_size}")
    warn_deterministic_variants(engine, variants)  # identical variants: say so once, before the work
    start = time.perf_counter()
    files = iter_image_files(paths)
    report = WarmReport(images=len(files))
    _remember_engine_identity(cache, engine)
    pending: list[tuple[Path, EntryRequest]] = []
    pending_keys: set[str] = set()
    failed_paths: set[Path] = set()
    bar = tqdm(total=len(files) * variants, unit="entry", desc=f"warm {engine.name}", disable=not progress,
               dynamic_ncols=True)

    def fail(path: Path, error: str) -> None:
        if path not in failed_paths:
            failed_paths.add(path)
            report.failures.append({"path": str(path), "error": error})
            report.failed += 1

    def run(batch: Sequence[tuple[Path, EntryRequest]]) -> None:
        try:
            _, stored = cache.generate_counted(engine, [request for _, request in batch], mode)
            report.generated += stored  # what it stored, not what it computed
            report.cached += len(batch) - stored  # another writer stored these first
        except CacheWriteError:  # the cache, not this batch, is the problem: stop the run
            report.generated += sum(request.key in cache for _, request in batch)  # stored before it failed
            raise
        except Exception as exc:  # isolate the request that broke the batch
            if len(batch) == 1:
                fail(batch[0][0], f"generation failed: {type(exc).__name__}: {exc}")
            else:
                for item in batch:
                    run([item])
                return
        bar.update(len(batch))
        bar.set_postfix(generated=report.generated, cached=report.cached, failed=report.failed, refresh=False)

    stop = _StopOnSignal(lambda text: os.write(2, f"\n{text}\n".encode()))  # no locks in a handler
    try:
        with stop:
            for path in files:
                if stop.received is not None:
                    break
                try:
                    image = load_image(path)
                except (ImageDecodeError, OSError) as exc:
                    fail(path, str(exc))
                    bar.update(variants)
                    continue
                todo = []
                for request in cache.plan([image], engine, mode, variants):
                    if request.key in pending_keys:
                        continue
                    pending_keys.add(request.key)
                    todo.append((path, request))
                report.cached += variants - len(todo)
                bar.update(variants - len(todo))
                pending.extend(todo)
                while len(pending) >= batch_size and stop.received is None:
                    batch, pending = pending[:batch_size], pending[batch_size:]
                    run(batch)
                    pending_keys.difference_update(r.key for _, r in batch)
            if pending and stop.received is None:
                run(pending)
    except KeyboardInterrupt:
        report.interrupted = True
        report.stopped_by = "SIGINT"
    except CacheWriteError as exc:
        report.error = str(exc)
    finally:
        bar.close()
        if stop.received is not None:
            report.interrupted, report.stopped_by = True, stop.name
        try:
            cache.flush()
        except CacheWriteError:
            pass  # counters are best effort; the entries themselves are stored or absent, never partial
        report.seconds = round(time.perf_counter() - start, 3)
    return report


def _remember_engine_identity(cache, engine) -> None:
    """Record the engine's identity in the cache (the engine service package keeps the format), so an
    adapter on this warmed cache, even a copy of it elsewhere, never starts the engine service."""
    from sr_augment.service.identity import remember_engine_identity

    if getattr(cache, "directory", None) is not None:
        remember_engine_identity(cache.directory, engine)
