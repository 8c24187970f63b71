"""Opening a cache folder for writing, and only when something is written.

Why a module of its own: diskcache's `Cache()` writes on open (its Settings table, pragmas, WAL files),
so a read-only or full disk cannot even be opened through it, and it applies Settings values from the
database as PRAGMA text. So readers never open one (see `rows`), and a writer is opened on the first
write, after two things diskcache leaves out: its Settings are checked (`rows.check_settings`), and its
folder and database are created with the modes the umask asks for (diskcache makes its folder 0o755 and
SQLite its database 0o644 whatever the umask, which locks a group out of a team cache).
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import diskcache
from diskcache.core import DBNAME

from sr_augment.cache import rows
from sr_augment.cache.disk import WRITE_ATTEMPTS, SafeDisk, write_error



def can_write(directory: Path) -> bool:
    """Whether this process can write the cache at `directory`: the folder (or the nearest existing
    parent, for a cache not made yet) and any diskcache folder and database in it."""
    directory = Path(directory)
    probe = directory
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    paths = [probe] + [directory / sub / name for sub in ("entries", "meta") for name in ("", DBNAME)]
    return all(writable(path) for path in paths if path.exists())


def writable(path: Path) -> bool:
    """os.access by the effective user (the one the kernel checks when SQLite opens the file)."""
    return os.access(path, os.W_OK, effective_ids=os.access in os.supports_effective_ids)


def _create_with_umask(folder: Path) -> None:
    """Make the folder and an empty database file (SQLite reads an empty file as an empty database)
    ourselves, so both get 0o777/0o666 masked by the umask; SQLite gives its -wal/-shm files the
    database's mode, diskcache's value files and hex folders already follow the umask."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(folder / DBNAME, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666))
    except FileExistsError:
        pass


def open_writer(folder: Path, **settings) -> diskcache.Cache:
    """A diskcache.Cache on `folder` (SafeDisk), after the checks above. Raises `DatabaseDamaged`
    for a damaged or tampered database and `CacheWriteError` when the folder cannot be written."""
    folder = Path(folder)
    try:
        rows.refuse_links(folder)  # before anything is created: a planted link must not be followed
        _create_with_umask(folder)
        rows.check_settings(folder)
        return diskcache.Cache(str(folder), disk=SafeDisk, **settings)
    except rows.DatabaseDamaged:
        raise
    except sqlite3.OperationalError as exc:  # locked, read-only, disk full
        raise write_error(rows.cache_root(folder), exc) from exc
    except sqlite3.DatabaseError as exc:  # not a database, malformed
        raise rows.damaged(folder, str(exc)) from exc
    except OSError as exc:
        raise write_error(rows.cache_root(folder), exc) from exc


def add_unless_present(entries: diskcache.Cache, directory: Path, key: str, record: bytes, tag: str | None = None) -> bool:
    """Publish `record` under `key` unless the key is stored (True when this call stored it). A locked
    database is retried `WRITE_ATTEMPTS` times (diskcache's retry=True would loop forever), then, like a
    full disk, raised as `CacheWriteError` naming the folder; a value file whose insert failed is removed."""
    disk = entries.disk
    for _ in range(WRITE_ATTEMPTS):
        try:
            return entries.add(key, record, retry=False, tag=tag)
        except diskcache.Timeout:
            disk.discard_unpublished()
        except (OSError, sqlite3.OperationalError) as exc:
            disk.discard_unpublished()
            raise write_error(directory, exc) from exc
        except sqlite3.DatabaseError as exc:  # malformed: no retry helps
            disk.discard_unpublished()
            raise rows.damaged(Path(directory) / "entries", str(exc)) from exc
    raise write_error(directory, TimeoutError(f"the database stayed locked through {WRITE_ATTEMPTS} attempts"))
