"""Every error and warning sr-augment raises, in one place, with one base class each.

    >>> from sr_augment import SRAugmentError, CacheMiss
    >>> issubclass(CacheMiss, SRAugmentError) and issubclass(CacheMiss, LookupError)
    True

Catch `SRAugmentError` for any error of the library, or the class named in the docs of the call. Each
class also keeps the built-in base that says what kind of problem it is (`CacheWriteError` is an
`OSError`, `ImageShapeError` a `ValueError`, `CacheMiss` a `LookupError`, ...), so code that catches
those still catches it. Warnings derive from `SRAugmentWarning` (and `UserWarning` or `ResourceWarning`),
so `warnings.filterwarnings("ignore", category=SRAugmentWarning)` silences them all.

The modules that raise these import them from here; the old import paths (`sr_augment.cache.CacheMiss`,
`sr_augment.engines.EngineUnavailable`, ...) name the same classes. This module imports nothing.
"""

from __future__ import annotations

__all__ = [
    "SRAugmentError", "SRAugmentWarning",
    # images
    "ImageDecodeError", "ImageShapeError",
    # engines
    "EngineUnavailable", "EngineSpecError", "EngineParameterError", "EngineOutOfMemory", "WeightsTooLarge",
    "DegradeSettingsError", "AdapterArgumentError",
    "DeterministicEngineWarning", "OutOfMemoryBackoffWarning", "ModelScaleWarning",
    # engine service
    "ServiceError",
    # cache
    "CacheMiss", "CacheWriteError", "CacheReadOnly", "CacheInUse", "EntryTooLarge", "CacheUnavailable",
    "DatabaseDamaged", "DamagedEntry", "UntrustedRow", "CacheMissRateWarning", "NetworkFilesystemWarning",
    # adapters
    "ValueRangeWarning",
    # shards
    "NotARegularFile", "SampleRefused", "ExportWriteError",
    # Ray
    "RayUnavailable",
]


class SRAugmentError(Exception):
    """The base of every error sr-augment raises on purpose; the message says what happened and what to do."""


class SRAugmentWarning(UserWarning):
    """The base of every warning sr-augment emits."""


# --- images ---------------------------------------------------------------------------------------------

class ImageDecodeError(ValueError, SRAugmentError):
    """An input could not be turned into an RGB image; the message names the input and the reason."""


class ImageShapeError(ValueError, SRAugmentError):
    """An array or tensor has the wrong layout for an image (rank, channel count): a caller's mistake,
    not a damaged file, so it is not an `ImageDecodeError`; the message names the input and its shape."""


# --- engines --------------------------------------------------------------------------------------------

class EngineUnavailable(RuntimeError, SRAugmentError):
    """The engine's weights or runtime cannot be had here; the message says how to provide them."""


class EngineSpecError(ValueError, EngineUnavailable):
    """An engine spec that names no engine: misspelt, a missing file or folder, a module that cannot be
    found. The one error for a bad spec, raised alike by `check_spec` (an adapter's constructor) and
    `get_engine`; both a `ValueError` and an `EngineUnavailable`, so either `except` catches it. The
    message names the problem, the closest name when there is one, and every form an engine may take."""



class EngineParameterError(EngineSpecError, TypeError):
    """An engine parameter its engine kind does not take (the message names the closest accepted one and
    lists them all), a value of the wrong type or outside the accepted choices, or a required one missing
    (the one-step engines' LoRA file). Raised where the spec is checked: an adapter's constructor,
    `get_engine`, the CLI's `--set`; before any model is loaded. An `EngineSpecError` (so a `ValueError`
    and an `EngineUnavailable`) and a `TypeError`, as an unexpected keyword argument would be."""


class AdapterArgumentError(ValueError, TypeError, SRAugmentError):
    """An `SRAugment` argument of the wrong type or outside what it accepts (`scale`, `variants`, `p`, `seed`,
    `on_miss`, `device`, `engine_dtype`), refused when the adapter is built; the message names the argument,
    the value and what is accepted. Both a `ValueError` and a `TypeError`."""


class DegradeSettingsError(ValueError, SRAugmentError):
    """`degrade=` settings refused: an unknown preset, operation or field (the message names the closest
    accepted one and lists them), or a value of the wrong type or outside its range. Raised where the
    settings are given (an adapter's constructor, `warm --degrade`), before anything is loaded."""


class EngineOutOfMemory(RuntimeError, SRAugmentError):
    """One tile does not fit in accelerator memory even alone; the message says what to change."""


class WeightsTooLarge(ValueError, SRAugmentError):
    """A weight file that would take more memory to read than its size, or the cap, allows."""


class DeterministicEngineWarning(SRAugmentWarning):
    """variants > 1 with an engine whose output does not depend on the seed: every variant is the same image."""


class OutOfMemoryBackoffWarning(ResourceWarning, SRAugmentWarning):
    """A batch ran out of accelerator memory and is being retried smaller."""


class ModelScaleWarning(SRAugmentWarning):
    """A `scale` other than the model's own factor (a x2 checkpoint asked for x4): the model's output is
    resized (bicubic) to that scale. Said once, when the engine is built; leave `scale` unset to run a
    checkpoint at its own factor."""


# --- engine service -------------------------------------------------------------------------------------

class ServiceError(RuntimeError, SRAugmentError):
    """The engine service failed to start, died, or timed out, or its files are unsafe; the message says which."""


# --- cache ----------------------------------------------------------------------------------------------

class CacheMiss(LookupError, SRAugmentError):
    """Raised (with `on_miss="error"`) when an image's SR result is not cached; names the key."""


class CacheWriteError(OSError, SRAugmentError):
    """A result could not be stored (disk full, quota, file-size limit, read-only or I/O error).

    Nothing partial is left behind: entries stored before the failure stay readable."""


class EntryTooLarge(CacheWriteError):
    """An entry larger than the cache's whole size limit: it could never stay stored (diskcache would
    store it, then evict it at once), so it is not stored and this says so, naming sizes and the way out."""


class CacheReadOnly(CacheWriteError):
    """The cache folder cannot be written (a read-only mount, another user's folder, `read_only=True`):
    hits are served, nothing can be stored."""


class CacheInUse(CacheWriteError):
    """The cache cannot be cleared now: another process writes to it (or, for a writer, the cache is
    being cleared). The message names the cache and, where the system tells, the other process."""


class CacheUnavailable(OSError, SRAugmentError):
    """The cache's files cannot be read or written because of where they are, not what they hold: a
    full disk or quota, a file-size limit, an I/O error, no permission, a read-only filesystem, a lock
    held too long. Never a reason to delete anything: the message names the file and the cause."""


class DatabaseDamaged(RuntimeError, SRAugmentError):
    """The cache's SQLite database cannot be read (truncated, garbled, not a database) or holds
    settings diskcache never writes; the message names the folder and the command that recovers."""


class DamagedEntry(ValueError, SRAugmentError):
    """A stored record failed its checksum or could not be decoded."""


class UntrustedRow(ValueError, SRAugmentError):
    """A row or value file that sr-augment never writes (pickle mode, a path out of the cache, a
    symlink, a non-text key): refused without being interpreted."""


class CacheMissRateWarning(SRAugmentWarning):
    """An SRAugment transform keeps missing a cache that holds this engine's entries (counted over all
    the processes it runs in, DataLoader workers included): the pixels SRAugment receives are not the
    ones that were warmed (a random transform before it, or another resize than the warm's). Emitted
    once per transform object, by one of its processes."""


class NetworkFilesystemWarning(SRAugmentWarning):
    """The cache folder is on a network filesystem, where SQLite's locking is not reliable."""


# --- adapters -------------------------------------------------------------------------------------------

class ValueRangeWarning(SRAugmentWarning):
    """Float images whose batch maximum is at most 1 reached a Keras `SRAugment` with the default
    `value_range=(0, 255)`: most likely [0, 1] images (after `Rescaling(1 / 255)`), which would come back
    as {0, 1}. The message names the fix (`value_range=(0, 1)`, or `Rescaling` after the layer). A warning,
    not an error, because genuinely dark [0, 255] images can be that dark; emitted once per layer."""


# --- shards ---------------------------------------------------------------------------------------------

class NotARegularFile(ValueError, SRAugmentError):
    """A path that is not a regular file (a FIFO, a device, a folder, a socket): never opened for reading."""


class ExportWriteError(OSError, SRAugmentError):
    """An export could not write its output (a full disk, a quota or file-size limit, no permission): the
    message names the folder and the cause. Nothing half-written is left under a shard's or file's final
    name, what was committed before stays, and a rerun with space resumes."""


class SampleRefused(ValueError, SRAugmentError):
    """A shard sample that may not enter a cache; `member` names the shard member at fault."""

    def __init__(self, member: str, reason: str):
        super().__init__(f"{member}: {reason}")
        self.member, self.reason = member, reason


# --- Ray ------------------------------------------------------------------------------------------------

class RayUnavailable(ImportError, SRAugmentError):
    """Ray Data is not installed; the message says what to install."""
