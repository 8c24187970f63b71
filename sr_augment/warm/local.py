"""Pre-warm the cache offline: generate every (image, variant) that is not cached yet.

One loop, `warm_items`, warms any iterable of (source name, loader) items: the files of `sr-augment
warm` (`warm`, a thin wrapper, decoding each file as the training pipeline's loader does:
`sr_augment.loaders`), the samples of a training pipeline (`SRAugment.warm` of both adapters),
or a share of the files per process (distributed warm). A loader returns the pixels of its source
(one uint8 HWC RGB image, or a list of them: a batch), already as the adapter will key them.

Work is batched across sources (the engine sees `batch_size` requests at a time), each finished batch
is stored at once (a crash, even SIGKILL, loses at most the batch in flight, and a rerun resumes from
the cache), and one bad source is reported with its name and reason without stopping the others.
`dry_run` plans the same work and reports what would be generated, running and writing nothing.

Stopping: SIGINT (Ctrl-C) or SIGTERM (a scheduler preempting the job) lets the batch in flight finish
and be stored, then the run ends with `report.stopped_by` set; a second Ctrl-C stops at once. A cache
that cannot be written (disk full) ends the run too: generating more would only throw the work away.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from sr_augment.cache import layout
from sr_augment.cache.disk import CacheWriteError
from sr_augment.cache.results import EntryRequest
from sr_augment.engines.determinism import warn_deterministic_variants
from sr_augment.errors import CacheInUse
from sr_augment.images import IMAGE_SUFFIXES, ImageDecodeError, iter_image_files, to_rgb

if TYPE_CHECKING:
    from sr_augment.loaders import FileLoader

Loader = Callable[[], "np.ndarray | Sequence[np.ndarray]"]
LOAD_ERRORS = (ImageDecodeError, OSError)
"""What a loader may raise for a bad source (reported, the run goes on); anything else is a bug or a
caller's mistake (e.g. `ImageShapeError`) and propagates."""


@dataclass
class WarmReport:
    images: int = 0
    """Images found (files, or images a pipeline produced; a source that failed counts as one)."""
    generated: int = 0
    """Entries (image x variant) this run generated and stored (a lost or damaged entry is regenerated);
    with `dry_run`, the entries it would generate."""
    cached: int = 0
    """Entries already in the cache (or duplicates of an entry generated earlier in this run, or stored by
    another writer first)."""
    failed: int = 0
    """Sources (files, samples) that could not be read or generated."""
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

    def __enter__(self) -> _StopOnSignal:
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


def path_items(files: Iterable, preprocess: Callable[[np.ndarray], np.ndarray] | None = None,
               loader: Callable[[Path], np.ndarray] | None = None):
    """(path, loader) items of image files: the loader decodes the file (`loader`, by default
    `sr_augment.loaders.FileLoader()`: torchvision's `ImageFolder` decode) and applies `preprocess` (e.g.
    `sr_augment.warm.tv_geometry.Preprocess`: a deterministic resize and centre crop)."""
    if loader is None:
        from sr_augment.loaders import FileLoader  # loaders uses warm.tv_geometry: imported here, not at the top

        loader = FileLoader()
    for path in files:
        path = Path(path)
        if preprocess is None:
            yield path, (lambda p=path: loader(p))
        else:
            yield path, (lambda p=path: preprocess(loader(p)))


def warm(paths: Iterable, engine, cache, *, mode: str = "upscale", variants: int = 1, batch_size: int = 8,
         progress: bool = True, preprocess: Callable[[np.ndarray], np.ndarray] | None = None,
         dry_run: bool = False, loader: FileLoader | None = None) -> WarmReport:
    """Make sure every image under `paths` has `variants` cached results for this engine and mode
    (each decoded by `loader`, then passed through `preprocess` when given, before keying).

    `loader` (`sr_augment.loaders.file_loader`) decodes as the training pipeline's loader does and lists
    the files its library lists; the default is torchvision's `ImageFolder` loader (no EXIF turn),
    as `sr-augment warm`'s. `loader=file_loader("exif")` decodes as `sr_augment.load_image`."""
    if loader is None:
        from sr_augment.loaders import FileLoader

        loader = FileLoader()
    files = iter_image_files(paths, getattr(loader, "suffixes", IMAGE_SUFFIXES))
    if not dry_run and variants >= 1:
        warn_deterministic_variants(engine, variants)  # here, so the warning points at warm()'s caller
    return warm_items(path_items(files, preprocess, loader), engine, cache, mode=mode, variants=variants,
                      batch_size=batch_size, progress=progress, total=len(files), dry_run=dry_run,
                      warn_deterministic=False)


def _as_images(loaded) -> list[np.ndarray]:
    if isinstance(loaded, np.ndarray) and loaded.ndim != 4:
        return [to_rgb(loaded)]
    return [to_rgb(image) for image in loaded]


def warm_items(items: Iterable[tuple[object, Loader]], engine, cache, *, mode: str = "upscale", variants: int = 1,
               batch_size: int = 8, progress: bool = True, total: int | None = None,
               dry_run: bool = False, warn_deterministic: bool = True) -> WarmReport:
    """Warm the images of (source name, loader) items; `total` (images, when known) sizes the progress
    bar. With `dry_run` nothing is generated, written or remembered: `generated` counts what would be
    (open the cache with `read_only=True` so that not even a damaged entry is removed).
    `warn_deterministic=False` where the caller has warned about identical variants already (an adapter)."""
    if variants < 1 or batch_size < 1:
        raise ValueError(f"variants and batch_size must be >= 1, got {variants} and {batch_size}")
    if warn_deterministic and not dry_run:
        warn_deterministic_variants(engine, variants)  # identical variants: say so once, before the work
    from sr_augment.cache.inventory import printable  # an engine name may be a folder name

    start = time.perf_counter()
    report = WarmReport()
    if not dry_run:
        _remember_engine_identity(cache, engine)
    pending: list[tuple[object, EntryRequest]] = []
    pending_keys: set[str] = set()  # in a dry run: every key it would generate
    failed_sources: set = set()
    bar = tqdm(total=None if total is None else total * variants, unit="entry",
               desc=printable(f"warm {getattr(engine, 'name', 'engine')}") + (" (dry run)" if dry_run else ""),
               disable=not progress, dynamic_ncols=True)

    def fail(source, error: str) -> None:
        if source not in failed_sources:
            failed_sources.add(source)
            report.failures.append({"path": str(source), "error": error})
            report.failed += 1

    def run(batch: Sequence[tuple[object, EntryRequest]]) -> None:
        try:
            _, stored = cache.generate_counted(engine, [request for _, request in batch], mode)
            report.generated += stored  # what it stored, not what it computed
            report.cached += len(batch) - stored  # another writer stored these first
        except CacheWriteError as exc:  # the cache, not this batch, is the problem: stop the run
            report.generated += sum(request.key in cache for _, request in batch)  # stored before it failed
            source = next((s for s, r in batch if r.key == getattr(exc, "key", None)), None)  # EntryTooLarge
            if source is not None:
                report.error = f"{source}: {exc}"
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
            if not dry_run:
                _hold_writer(cache)
            for source, load in items:
                if stop.received is not None:
                    break
                try:
                    images = _as_images(load())
                except LOAD_ERRORS as exc:
                    report.images += 1
                    fail(source, str(exc))
                    bar.update(variants)
                    continue
                report.images += len(images)
                todo = []
                for request in cache.plan(images, engine, mode, variants):
                    if request.key in pending_keys:
                        continue
                    pending_keys.add(request.key)
                    todo.append((source, request))
                report.cached += len(images) * variants - len(todo)
                if dry_run:
                    report.generated += len(todo)
                    bar.update(len(images) * variants)
                    continue
                bar.update(len(images) * variants - len(todo))
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
        report.error = report.error or str(exc)
    finally:
        bar.close()
        if stop.received is not None:
            report.interrupted, report.stopped_by = True, stop.name
        if not dry_run:
            try:
                cache.flush()
            except CacheWriteError:
                pass  # counters are best effort; the entries themselves are stored or absent, never partial
        report.seconds = round(time.perf_counter() - start, 3)
    return report


def _hold_writer(cache) -> None:
    """Open the cache's entries for writing, and with them its writer lock, before anything is planned:
    from here on a `clear` refuses (naming this run), so no entry this run counts as cached or generated
    can be removed under it. A read-only cache is left alone (a fully warm one still reports all cached).
    A cache that cannot be opened for writing now (a full disk, where SQLite cannot even make its -wal
    file) is read like a read-only one: a warm with nothing to generate needs no write and succeeds; the
    first batch to generate opens the writer again and stops the run with the error. A `clear` running
    (`CacheInUse`) still stops it: planning while the entries are removed would count them as cached."""
    if not getattr(cache, "read_only", True) and callable(getattr(cache, "_writer", None)):
        try:
            cache._writer(layout.ENTRIES)
        except CacheInUse:
            raise
        except CacheWriteError:
            pass


def _remember_engine_identity(cache, engine) -> None:
    """Record the engine's identity in the cache (the engine service package keeps the format), so an
    adapter on this warmed cache, even a copy of it elsewhere, never starts the engine service."""
    from sr_augment.engines.degrade import undegraded
    from sr_augment.service.identity import load_identity, remember_engine_identity

    engine = undegraded(engine)  # `--degrade` runs in the caller: the service's engine is the inner one
    directory = getattr(cache, "directory", None)
    if directory is None:
        return
    config = getattr(engine, "service_config", None)
    if isinstance(config, dict):  # recorded already (same settings, version and weights): nothing to write
        current = {"name": str(engine.name), "scale": int(engine.scale), "fingerprint": str(engine.fingerprint)}
        if load_identity(directory, config) == current:
            return
    remember_engine_identity(directory, engine)
