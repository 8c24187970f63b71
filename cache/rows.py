"""Reading diskcache's files as untrusted data: rows by SQL, value files by name shape, never a pickle.

Why not diskcache's own reader: anyone who can write a shared cache folder can plant rows, and
diskcache (1) unpickles rows stored in pickle mode and keys stored with `raw=0`, (2) joins a row's
`filename` to the folder without checking it (a row naming `../../x` made a read delete an outside
file), (3) rewrites its Settings table and pragmas on every open (so a read-only or copied cache
cannot be opened) and applies Settings values as `PRAGMA` text. Our records are bytes we wrote
ourselves, so the only row shapes a cache may hold are: a text key (`raw=1`) and a bytes value,
inline (`MODE_RAW`) or in a value file (`MODE_BINARY`) named the way `diskcache.Disk.filename` names
them (`xx/yy/<28 hex>.val`) inside the cache's own folder. Everything else is refused by shape,
before any byte of it is interpreted. Writes still go through diskcache (its transactions and
eviction are the well-kept part); these functions are the read side, the checks, and removal by rowid.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shlex
import sqlite3
import stat
from pathlib import Path

from diskcache.core import DBNAME, DEFAULT_SETTINGS, EVICTION_POLICY, METADATA, MODE_BINARY, MODE_RAW

from sr_augment.cache.filesystem import CacheUnavailable, is_environment_error, unavailable  # noqa: F401  (rows.*)
from sr_augment.errors import DatabaseDamaged, UntrustedRow  # noqa: F401  (defined in errors, named here too)

VALUE_FILE = re.compile(r"[0-9a-f]{2}/[0-9a-f]{2}/[0-9a-f]{28}\.val")
"""The only value-file names diskcache's `Disk.filename` makes (two levels of hex folders)."""
_SETTING_STRINGS = {"eviction_policy": frozenset(EVICTION_POLICY),
                    "sqlite_journal_mode": frozenset({"wal"})}
"""The only text values sr-augment's diskcache folders hold in their Settings table (SRCache always uses
WAL: another journal mode planted there makes every write stall on the lock); every other setting is a number."""


def cache_root(folder: Path) -> Path:
    """The cache folder a diskcache folder (`<cache>/entries`, `<cache>/meta`) belongs to."""
    return Path(folder).parent


def quoted(path) -> str:
    """A path as one shell word, so advice can be pasted as it is printed (a folder with a space)."""
    return shlex.quote(str(path))


def repair_command(root: Path) -> str:
    return f"sr-augment verify --cache-dir {quoted(root)} --repair"


def damaged(folder: Path, problem: str) -> DatabaseDamaged:
    root = cache_root(folder)
    return DatabaseDamaged(f"the sr-augment cache {root} is damaged: {Path(folder) / DBNAME}: {problem}. "
                           f"Run `{repair_command(root)}`, or `sr-augment clear --cache-dir "
                           f"{quoted(root)} --yes` to start it empty.")


def value_path(directory: Path, filename: str) -> Path:
    """The value file a row names, or `UntrustedRow` if the name is not one diskcache makes: no `..`,
    no absolute path, no other shape, so a planted row can never point outside the cache."""
    return Path(_value_file(directory, filename))


def _value_file(directory, filename) -> str:
    """`value_path` as a str (no pathlib objects: this runs on every hit of a value file)."""
    if not isinstance(filename, str) or not VALUE_FILE.fullmatch(filename):
        raise UntrustedRow(f"row names value file {filename!r}, which is not a cache value file name; refused")
    directory = os.fspath(directory)
    for folder in (os.path.join(directory, filename[:2]), os.path.join(directory, filename[:5])):
        try:  # two lstat calls, not resolve() (~0.1 ms a hit)
            is_link = stat.S_ISLNK(os.lstat(folder).st_mode)
        except FileNotFoundError:
            break  # reading it raises FileNotFoundError (a lost value file)
        if is_link:  # a planted folder symlink, wherever it points
            raise UntrustedRow(f"value file {os.path.join(directory, filename)} lies under a symbolic link "
                               f"({folder}); refused")
    return os.path.join(directory, filename)


MAX_VALUE_BYTES = 1 << 30
"""No record is larger (a 16383 px square result as PNG is well under it); a bigger value file is
planted (a sparse file takes no disk but every reader would allocate its size)."""


def read_value_file(path: Path, max_bytes: int = MAX_VALUE_BYTES) -> bytes:
    """The bytes of a value file, refusing symlinks and anything but a regular file (no following a
    planted link out of the cache; O_NONBLOCK so a planted FIFO cannot block the open) and files
    larger than `max_bytes`. FileNotFoundError when it is gone."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
                     | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a symlink
            raise UntrustedRow(f"value file {path} is a symbolic link; refused") from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UntrustedRow(f"value file {path} is not a regular file; refused")
        if info.st_size > max_bytes:
            raise UntrustedRow(f"value file {path} is {info.st_size} bytes, larger than any record ({max_bytes}); refused")
        data = os.read(fd, info.st_size + 1)  # one read, no file object (a cut file fails its checksum)
        if len(data) > info.st_size:  # it grew since fstat: read the rest
            parts = [data]
            while chunk := os.read(fd, 1 << 20):
                parts.append(chunk)
                if sum(map(len, parts)) > max_bytes:
                    raise UntrustedRow(f"value file {path} grew past {max_bytes} bytes while read; refused")
            data = b"".join(parts)
        return data
    finally:
        os.close(fd)


def remove_value_file(directory: Path, filename) -> bool:
    """Remove one value file by name shape (never a path a row made up, never through a link) and its
    emptied hex folders. False when the name is refused or the file is already gone."""
    try:
        path = value_path(directory, filename)
        os.unlink(path)  # unlink removes a link itself, never its target
    except (UntrustedRow, OSError):
        return False
    for folder in (path.parent, path.parent.parent):
        try:
            folder.rmdir()  # only when empty
        except OSError:
            break
    return True


def iter_value_files(directory: Path):
    """Relative names (`xx/yy/<hex>.val`) of the value files under `directory`, by name shape, without
    following links."""
    directory = Path(directory)
    for first in _scan_dirs(directory, 2):
        for second in _scan_dirs(directory / first, 2):
            with os.scandir(directory / first / second) as entries:
                for entry in entries:
                    name = f"{first}/{second}/{entry.name}"
                    if VALUE_FILE.fullmatch(name) and entry.is_file(follow_symlinks=False):
                        yield name


def _scan_dirs(folder: Path, width: int) -> list[str]:
    try:
        with os.scandir(folder) as entries:
            return sorted(e.name for e in entries if len(e.name) == width and e.is_dir(follow_symlinks=False)
                          and re.fullmatch(r"[0-9a-f]+", e.name))
    except FileNotFoundError:
        return []


def row_value(directory: Path, mode: int, filename, value) -> bytes:
    """The stored bytes of one row: inline bytes or its value file. Pickle, text and every other mode
    are refused by number, before anything is read."""
    if mode == MODE_RAW:
        if not isinstance(value, (bytes, memoryview)):
            raise UntrustedRow(f"inline row holds {type(value).__name__}, not bytes; refused")
        return bytes(value)
    if mode == MODE_BINARY:
        return read_value_file(_value_file(directory, filename))
    raise UntrustedRow(f"row stored in diskcache mode {mode} (pickle or text), which sr-augment never writes; refused")


def connect_readonly(folder: Path, immutable: bool | None = None, fallback: bool = True) -> sqlite3.Connection | None:
    """A connection that can never write: `mode=ro`, or `immutable=1` (which creates no -wal/-shm
    file either) for a cache opened read-only or one SQLite could not even create its shared-memory
    file in (a read-only mount, a folder of another user; None: decided by access). None when nothing
    is stored yet (no database, an empty file, no Cache table); `DatabaseDamaged` when unreadable.

    A `mode=ro` open that fails because of the environment (a full disk: SQLite cannot create the
    `-shm`/`-wal` files a new reader of a WAL database needs, "disk I/O error") is retried with
    `immutable=1` (`fallback`; see `open_readonly`); `CacheUnavailable` when that fails too, or at once
    without `fallback` (verify: a check must never read a database whose writers it cannot see)."""
    return open_readonly(folder, immutable, fallback)[0]


def open_readonly(folder: Path, immutable: bool | None = None,
                  fallback: bool = True) -> tuple[sqlite3.Connection | None, bool]:
    """`connect_readonly`, and whether the connection is the immutable fallback of a full disk (it does
    not see later writes: a reader reopens it after a while, see `reader.Reader`)."""
    db = Path(folder) / DBNAME
    refuse_links(folder)
    try:
        if db.stat().st_size == 0:
            return None, False
    except FileNotFoundError:
        return None, False
    except OSError as exc:  # EACCES on the folder, EIO
        raise unavailable(db, exc) from exc
    uri = db.resolve().as_uri()
    if immutable is None:
        effective = os.access in os.supports_effective_ids
        immutable = not all(os.access(p, os.W_OK, effective_ids=effective) for p in (folder, db))
    try:
        return _probe(folder, f"{uri}?immutable=1" if immutable else f"{uri}?mode=ro"), False
    except CacheUnavailable:
        if immutable or not fallback:
            raise
    return _probe(folder, f"{uri}?immutable=1"), True


def _probe(folder: Path, uri: str) -> sqlite3.Connection | None:
    """Open `uri` and read one row (SQLite opens lazily: the first read meets every problem)."""
    try:
        con = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise (unavailable(Path(folder) / DBNAME, exc) if is_environment_error(exc)
               else damaged(folder, str(exc))) from exc
    try:
        con.execute("SELECT key FROM Cache LIMIT 1").fetchall()
    except sqlite3.DatabaseError as exc:
        con.close()
        if "no such table" in str(exc):
            return None
        raise query_error(folder, exc) from exc
    return con


def query_error(folder: Path, exc: sqlite3.Error) -> DatabaseDamaged | CacheUnavailable:
    """The error a failed read of a diskcache folder's database raises: `CacheUnavailable` for the
    environment (full disk, I/O error, permissions, a lock), `DatabaseDamaged` for damage."""
    if is_environment_error(exc):
        return unavailable(Path(folder) / DBNAME, exc)
    return damaged(folder, str(exc))


def refuse_links(folder: Path) -> None:
    """`DatabaseDamaged` when a diskcache folder or its database files are symbolic links: SQLite and
    diskcache follow them, so a planted link would make a writer create or change files outside the cache."""
    folder = Path(folder)
    for path in (folder, folder / DBNAME, folder / f"{DBNAME}-wal", folder / f"{DBNAME}-shm"):
        if path.is_symlink():
            raise damaged(folder, f"{path} is a symbolic link; a cache's own folders and database files never are, "
                                  f"and links are not followed")


def bad_settings(folder: Path, fallback: bool = True) -> list[tuple[str, object]]:
    """The (key, value) rows of a database's Settings table that diskcache does not write itself:
    an unknown key, a text where a number belongs, a journal mode or eviction policy it never uses."""
    con = connect_readonly(folder, fallback=fallback)
    if con is None:
        return []
    try:
        settings = con.execute("SELECT key, value FROM Settings").fetchall()
    except sqlite3.DatabaseError as exc:
        if is_environment_error(exc):
            raise unavailable(Path(folder) / DBNAME, exc) from exc
        settings = []  # no Settings table: diskcache creates it
    finally:
        con.close()
    bad = []
    for key, value in settings:
        if key in _SETTING_STRINGS:
            ok = isinstance(value, str) and value.lower() in _SETTING_STRINGS[key]
        else:
            ok = key in DEFAULT_SETTINGS or key in METADATA
            ok = ok and type(value) in (int, float)
        if not ok:
            bad.append((key, value))
    return bad


def check_settings(folder: Path) -> None:
    """Refuse (`DatabaseDamaged`) a database whose Settings table holds anything diskcache does not
    write itself: diskcache runs `sqlite_*` values as PRAGMA text on open, so a planted value is SQL.
    The message names the command that resets it (`verify --repair`, which keeps the entries)."""
    bad = bad_settings(folder)
    if bad:
        key, value = bad[0]
        root = cache_root(folder)
        raise DatabaseDamaged(
            f"the sr-augment cache {root} has a bad setting: {Path(folder) / DBNAME}: its Settings table holds "
            f"{key!r} = {value!r}{f' (and {len(bad) - 1} more)' if len(bad) > 1 else ''}, which diskcache never writes "
            f"(diskcache would run it as SQL); refused to open it for writing. Run `{repair_command(root)}` to reset "
            f"the settings to sr-augment's values (the entries are kept), or `sr-augment clear --cache-dir "
            f"{quoted(root)} --yes` to start it empty.")


@contextlib.contextmanager
def _write_transaction(folder: Path, timeout: float):
    """A plain SQL connection to `folder`'s database inside one `BEGIN IMMEDIATE` transaction: committed
    when the block ends, rolled back on any error, closed either way."""
    con = sqlite3.connect(str(Path(folder) / DBNAME), timeout=timeout, isolation_level=None)
    try:
        con.execute("BEGIN IMMEDIATE")
        yield con
        con.execute("COMMIT")
    except BaseException:
        if con.in_transaction:
            con.execute("ROLLBACK")
        raise
    finally:
        con.close()


def reset_settings(folder: Path, keys, library: dict, timeout: float = 60.0) -> int:
    """Reset Settings rows `keys` with SQL (never through diskcache, which would run them): a diskcache
    setting to `library`'s value, a counter diskcache keeps to what the table holds, any other key
    deleted. Returns the number of rows changed."""
    changed = 0
    with _write_transaction(folder, timeout) as con:
        for key in keys:
            if key in library:
                value = library[key]
            elif key == "count":
                value = con.execute("SELECT COUNT(*) FROM Cache").fetchone()[0]
            elif key == "size":
                value = con.execute("SELECT COALESCE(SUM(CASE WHEN typeof(size) = 'integer' THEN size END), 0) "
                                    "FROM Cache").fetchone()[0]
            elif key in METADATA:
                value = METADATA[key]
            else:
                changed += con.execute("DELETE FROM Settings WHERE key IS ?", (key,)).rowcount
                continue
            changed += con.execute("UPDATE Settings SET value = ? WHERE key IS ?", (value, key)).rowcount
    return changed


def read_meta(folder: Path, immutable: bool | None = None) -> dict:
    """The text-keyed numbers and strings of a metadata folder (counters, size limit, engines as
    JSON text); every other row is ignored, never interpreted."""
    con = connect_readonly(folder, immutable)
    if con is None:
        return {}
    try:
        rows = con.execute("SELECT key, value FROM Cache WHERE raw = 1 AND mode = ?", (MODE_RAW,)).fetchall()
    except sqlite3.DatabaseError as exc:
        raise query_error(folder, exc) from exc
    finally:
        con.close()
    return {k: v for k, v in rows if isinstance(k, str) and type(v) in (int, float, str)}


def delete_rows(folder: Path, rows, timeout: float = 60.0) -> int:
    """Delete rows `(rowid, filename, value)` with SQL in one transaction (never through diskcache,
    which would unpickle), each only if still exactly as read (a row replaced since stays), then
    their value files by name shape. Returns the number of rows deleted."""
    gone = []
    with _write_transaction(folder, timeout) as con:
        for rowid, filename, value in rows:
            cursor = con.execute("DELETE FROM Cache WHERE rowid = ? AND filename IS ? AND value IS ?",
                                 (rowid, filename, value))
            if cursor.rowcount:
                gone.append(filename)
    for filename in gone:
        if filename is not None:
            remove_value_file(folder, filename)
    return len(gone)


def count_rows(folder: Path) -> int:
    """How many rows a diskcache folder's database holds; 0 when none is stored or it cannot be read
    (counting is for reports and progress bars, never a reason to fail)."""
    try:
        con = connect_readonly(folder)
        if con is None:
            return 0
        try:
            return int(con.execute("SELECT COUNT(*) FROM Cache").fetchone()[0])
        finally:
            con.close()
    except (DatabaseDamaged, CacheUnavailable, sqlite3.DatabaseError):
        return 0
