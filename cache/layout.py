"""The names of the parts of a cache folder, in one place so that every module agrees on them.

    <cache>/
      entries/        diskcache folder of the records (one SQLite database, value files in hex folders)
      meta/           diskcache folder of the counters, the size limit and the per-engine statistics
      writers.lock    the advisory lock every writer holds (see `cache.writers`)
      identities/     the engines' identities, so a warm cache starts no engine service (see `service.identity`)

Each diskcache folder holds its SQLite database `DATABASE` (diskcache's `cache.db`) and its -wal/-shm files.
"""

from __future__ import annotations

from diskcache.core import DBNAME as DATABASE

ENTRIES = "entries"
"""The diskcache folder of the records."""
META = "meta"
"""The diskcache folder of the counters, the size limit and the per-engine statistics (never a pickle)."""
FOLDERS = (ENTRIES, META)
"""The cache's diskcache folders."""
WRITERS_LOCK = "writers.lock"
"""The advisory lock file (fcntl.flock) every process with the cache's entries open for writing holds."""
IDENTITIES = "identities"
"""The folder of engine identities (`<id>.json`)."""

__all__ = ["DATABASE", "ENTRIES", "FOLDERS", "IDENTITIES", "META", "WRITERS_LOCK"]
