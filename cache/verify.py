"""`sr-augment verify`: check every row and value file of a cache; `--repair` removes what is bad.

Checks per row: its shape (a text key, inline bytes or a value file named as diskcache names them,
inside the cache), then the record's checksum and a full decode. Value files no row names are orphans
(a database truncated or replaced under them) once older than `ORPHAN_AGE` seconds: a writer writes its
value file before it publishes the row, so a younger unnamed file may belong to a write in flight.
Bad rows are deleted by rowid with SQL in one transaction (never through diskcache), orphans by name
shape. A database that cannot be read at all is reported; `--repair` then empties the cache.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from sr_augment.cache import clearing, codec, rows, writers
from sr_augment.cache.counters import META_TIMEOUT

ORPHAN_AGE = 15 * 60
"""Seconds after which a value file that no row names is an orphan (writes retry for at most ~5 min)."""
_SHOWN = 20
"""Problems listed by name in a report (the counts cover all)."""


@dataclass
class VerifyReport:
    directory: str
    rows: int = 0
    ok: int = 0
    damaged: int = 0
    missing: int = 0
    untrusted: int = 0
    orphans: int = 0
    database_damaged: str | None = None
    repaired: bool = False
    problems: list = field(default_factory=list)

    @property
    def clean(self) -> bool:
        bad = self.damaged + self.missing + self.untrusted + self.orphans + bool(self.database_damaged)
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
    entries = directory / "entries"
    report = VerifyReport(str(directory))
    try:
        bad, named = _check_rows(entries, report, progress)
    except rows.DatabaseDamaged as exc:
        report.database_damaged = str(exc)
        if repair:
            clearing.remove_cache_files(directory)
            report.repaired = True
        return report
    links = clearing.planted_links(entries)
    for name in links:
        report._note("untrusted", entries / name, "a symbolic link where the cache keeps its own value folders and "
                                                   "files (a write through it would land outside the cache)")
    now = time.time()
    orphans = [name for name in rows.iter_value_files(entries)
               if name not in named and now - (entries / name).lstat().st_mtime > ORPHAN_AGE]
    for name in orphans:
        report._note("orphans", entries / name, "no row names this value file")
    if repair and (bad or orphans or links):
        clearing.remove_planted_links(entries, links)
        removed = rows.delete_rows(entries, bad) + sum(rows.remove_value_file(entries, name) for name in orphans)
        _count_removed(directory, removed)
        report.repaired = True
    return report


def _count_removed(directory: Path, count: int) -> None:
    """Entries removed by repair are not evictions: count them as removed (an orphan is an entry whose
    row was lost with its database), so `info` reports no phantom evictions."""
    if count:
        meta = writers.open_writer(directory / "meta", timeout=META_TIMEOUT, eviction_policy="none")
        try:
            meta.incr("removed", count)
        finally:
            meta.close()


def _check_rows(entries: Path, report: VerifyReport, progress: bool):
    con = rows.connect_readonly(entries)
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
            else:
                report._note(kind, key if isinstance(key, str) else f"row {rowid}", reason)
                bad.append((rowid, filename, value))
    except sqlite3.DatabaseError as exc:
        raise rows.damaged(entries, str(exc)) from exc
    finally:
        con.close()
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
    return "ok", ""
