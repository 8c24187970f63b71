"""`sr-augment verify`: check every row and value file of a cache; `--repair` removes what is bad.

Checks per row: its shape (a text key, inline bytes or a value file named as diskcache names them,
inside the cache), then the record's checksum and a full decode. Value files no row names are orphans
(a database truncated or replaced under them): all of them when no writer runs (verify holds the cache's
writer lock, `writers.LOCK_NAME`), else only those older than `ORPHAN_AGE` seconds (a writer writes its
value file before it publishes the row, so a younger unnamed file may belong to a write in flight).
Symbolic links where value folders or files belong are reported as untrusted; `--repair` removes them.
So is anything but a regular file where the writer lock file belongs (a directory, FIFO or link: no writer
can lock the cache, each refuses it), and `--repair` removes it.
Bad rows are deleted by rowid with SQL in one transaction (never through diskcache), orphans by name
shape. A database that cannot be read at all is reported; `--repair` then empties the cache.

Settings (both databases) that diskcache never writes are reported too (a writer refuses to open such a
database, and its error names `verify --repair`), and `--repair` resets them to sr-augment's values with
SQL, keeping the entries; a damaged `meta` database (counters, size limit) is removed on its own.

An environment error (a full disk, a file-size limit, an I/O error, no permission, a lock) is not damage:
the report says what could not be checked and why (`unchecked`), and nothing is deleted or changed.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from diskcache.core import DBNAME, DEFAULT_SETTINGS
from tqdm.auto import tqdm

from sr_augment.cache import clearing, codec, layout, rows, writers
from sr_augment.cache.counters import META_TIMEOUT

ORPHAN_AGE = 15 * 60
"""Seconds after which a value file that no row names is an orphan (writes retry for at most ~5 min)."""
_SHOWN = 20
"""Problems listed by name in a report (the counts cover all)."""
LIBRARY_SETTINGS = {layout.ENTRIES: dict(DEFAULT_SETTINGS),
                    layout.META: {**DEFAULT_SETTINGS, "eviction_policy": "none"}}
"""What `--repair` resets a bad Settings row to (SRCache passes its size limit and eviction policy on open)."""


@dataclass
class VerifyReport:
    directory: str
    rows: int = 0
    ok: int = 0
    damaged: int = 0
    missing: int = 0
    untrusted: int = 0
    orphans: int = 0
    settings: int = 0
    unreadable: int = 0
    database_damaged: str | None = None
    unchecked: str | None = None
    repaired: bool = False
    problems: list = field(default_factory=list)

    @property
    def clean(self) -> bool:
        if self.unchecked:
            return False
        bad = self.damaged + self.missing + self.untrusted + self.orphans + self.settings + bool(self.database_damaged)
        return bad == 0 or self.repaired

    def as_dict(self) -> dict:
        return {**asdict(self), "clean": self.clean}

    def _note(self, kind: str, where, reason) -> None:
        setattr(self, kind, getattr(self, kind) + 1)
        if len(self.problems) < _SHOWN:
            self.problems.append({"kind": kind, "where": str(where), "reason": str(reason)})


def verify(directory, repair: bool = False, progress: bool = True) -> VerifyReport:
    """Check (and with `repair`, fix) the cache at `directory`; see the module docstring."""
    directory = Path(directory)
    entries = directory / layout.ENTRIES
    report = VerifyReport(str(directory))
    try:
        return _verify(directory, entries, report, repair, progress)
    except (rows.CacheUnavailable, sqlite3.OperationalError, OSError) as exc:
        if not rows.is_environment_error(exc):
            raise
        report.unchecked = str(exc if isinstance(exc, rows.CacheUnavailable) else rows.unavailable(directory, exc, "check"))
        return report


def _verify(directory: Path, entries: Path, report: VerifyReport, repair: bool, progress: bool) -> VerifyReport:
    _check_lock_file(directory, report, repair)
    try:
        bad, named = _check_rows(entries, report, progress)
    except rows.DatabaseDamaged as exc:
        report.database_damaged = str(exc)
        if repair:
            clearing.remove_cache_files(directory)
            report.repaired = True
        return report
    if report.unchecked:  # some value file could not be read: change nothing
        return report
    settings = _check_settings(directory, report)
    if report.database_damaged:  # meta only: the entries are fine
        if repair:
            _remove_database(directory / layout.META)
            report.repaired = True
        return report
    links = clearing.planted_links(entries)
    for name in links:
        report._note("untrusted", entries / name, "a symbolic link where the cache keeps its own value folders and "
                                                   "files (a write through it would land outside the cache)")
    orphans = _orphans(directory, entries, named, repair)
    for name in orphans:
        report._note("orphans", entries / name, "no row names this value file")
    if repair and any(settings.values()):
        for name, keys in settings.items():
            if keys:
                rows.reset_settings(directory / name, keys, LIBRARY_SETTINGS[name])
        report.repaired = True
    if repair and (bad or orphans or links):
        clearing.remove_planted_links(entries, links)
        removed = rows.delete_rows(entries, bad) + sum(rows.remove_value_file(entries, name) for name in orphans)
        _count_removed(directory, removed)
        report.repaired = True
    return report


def _check_lock_file(directory: Path, report: VerifyReport, repair: bool) -> None:
    """A directory, FIFO, socket, device or link where the writer lock file belongs (no writer can lock the
    cache: each refuses it) is reported as untrusted; `repair` removes it (a writer makes the file again)."""
    kind = writers.lock_kind(directory)
    if kind is None:
        return
    report._note("untrusted", directory / writers.LOCK_NAME, f"{kind}, not a regular file: something was planted "
                                                              f"where the cache's writer lock belongs, and no writer can "
                                                              f"lock the cache; --repair removes it")
    if repair and writers.remove_bad_lock(directory):
        report.repaired = True


def _check_settings(directory: Path, report: VerifyReport) -> dict[str, list]:
    """The bad Settings keys of each database (noted in the report); a damaged `meta` database is
    noted as `database_damaged`."""
    found = {}
    for name in layout.FOLDERS:
        try:
            bad = rows.bad_settings(directory / name, fallback=False)
        except rows.DatabaseDamaged as exc:
            if name == layout.ENTRIES:
                raise
            report.database_damaged = str(exc)
            bad = []
        for key, value in bad:
            report._note("settings", directory / name / DBNAME, f"Settings holds {key!r} = {value!r}, which diskcache "
                                                                f"never writes; --repair resets it to sr-augment's value")
        found[name] = [key for key, _ in bad]
    return found


def _remove_database(folder: Path) -> None:
    """Remove a diskcache folder's database files (never following a link): `meta` holds only counters
    and the size limit, so a damaged one is dropped rather than the entries with it."""
    if folder.is_symlink():  # a planted link: removed itself, never followed
        folder.unlink()
        return
    for suffix in ("", "-wal", "-shm", "-journal"):
        try:
            (folder / f"{DBNAME}{suffix}").unlink()
        except FileNotFoundError:
            pass


def _count_removed(directory: Path, count: int) -> None:
    """Entries removed by repair are not evictions: count them as removed (an orphan is an entry whose
    row was lost with its database), so `info` reports no phantom evictions."""
    if count:
        try:
            meta = writers.open_writer(directory / layout.META, timeout=META_TIMEOUT, eviction_policy="none")
            try:
                meta.incr("removed", count)
            finally:
                meta.close()
        except (OSError, sqlite3.Error, rows.DatabaseDamaged):  # the entries are removed; only a counter is lost
            pass


def _check_rows(entries: Path, report: VerifyReport, progress: bool):
    con = rows.connect_readonly(entries, fallback=False)  # a full disk's immutable view could be stale: no check
    if con is None:
        return [], set()
    bad, named = [], set()
    try:
        (total,) = con.execute("SELECT COUNT(*) FROM Cache").fetchone()
        cursor = con.execute("SELECT rowid, key, raw, mode, filename, value FROM Cache")
        for rowid, key, raw, mode, filename, value in tqdm(cursor, total=total, unit="entry", desc="verify",
                                                           disable=not progress, dynamic_ncols=True):
            report.rows += 1
            if isinstance(filename, str):
                named.add(filename)
            kind, reason = _check_row(entries, key, raw, mode, filename, value)
            if kind == "ok":
                report.ok += 1
            elif kind == "unreadable":  # the environment's fault: never removed, and the report is unchecked
                report._note(kind, key, reason)
                report.unchecked = report.unchecked or str(reason)
            else:
                report._note(kind, key if isinstance(key, str) else f"row {rowid}", reason)
                bad.append((rowid, filename, value))
    except sqlite3.DatabaseError as exc:
        raise rows.query_error(entries, exc) from exc
    finally:
        con.close()
    if report.unreadable > 1:
        report.unchecked += f" ({report.unreadable} value files could not be read)"
    return bad, named


def _check_row(entries: Path, key, raw, mode, filename, value) -> tuple[str, str]:
    if raw != 1 or not isinstance(key, str):
        return "untrusted", "a key stored pickled (raw=0), which sr-augment never writes"
    try:
        codec.decode(rows.row_value(entries, mode, filename, value))
    except rows.UntrustedRow as exc:
        return "untrusted", exc
    except FileNotFoundError:
        return "missing", f"value file {filename} is gone"
    except codec.DamagedEntry as exc:
        return "damaged", exc
    except OSError as exc:
        if not rows.is_environment_error(exc):
            raise
        return "unreadable", rows.unavailable(entries / filename, exc)
    return "ok", ""


def _orphans(directory: Path, entries: Path, named: set, repair: bool) -> list[str]:
    """Value files no row names. With the cache's writer lock held exclusive (no writer runs, so none has
    a value file written but not yet published), every such file, the names re-read under the lock (a
    writer may have published since the rows were checked); when a writer holds it (or there is no lock
    file and this is no repair), only those older than `ORPHAN_AGE`. A file named as an orphan is never
    reused: writers create value files with random names and O_EXCL."""
    with writers.exclusive(directory, required=False, create=repair) as alone:
        if alone:
            named = named | _named_files(entries)
            return [name for name in rows.iter_value_files(entries) if name not in named]
    now = time.time()
    return [name for name in rows.iter_value_files(entries)
            if name not in named and now - (entries / name).lstat().st_mtime > ORPHAN_AGE]


def _named_files(entries: Path) -> set:
    con = rows.connect_readonly(entries, fallback=False)
    if con is None:
        return set()
    try:
        return {name for (name,) in con.execute("SELECT filename FROM Cache WHERE filename IS NOT NULL")
                if isinstance(name, str)}
    except sqlite3.DatabaseError as exc:
        raise rows.query_error(entries, exc) from exc
    finally:
        con.close()
