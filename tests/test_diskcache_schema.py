"""What the cache reads of diskcache's private parts, checked against the installed diskcache.

sr-augment reads diskcache's SQLite tables directly (read-only lookups that never unpickle, verify,
inventory, export) and uses constants of `diskcache.core`. These are not diskcache's public API, so
pyproject pins `diskcache>=5.6,<6`, and this test fails first when a diskcache release changes them.
"""

from __future__ import annotations

import ast
import re
import sqlite3
from pathlib import Path

import diskcache
import diskcache.core
import pytest

from sr_augment.cache import layout

ROOT = Path(__file__).resolve().parents[1]

CACHE_COLUMNS = {"rowid", "key", "raw", "mode", "filename", "value", "size", "tag"}
"""The columns of diskcache's `Cache` table the project's SQL names (cache/reader.py, rows.py, verify.py,
inventory.py, transfer.py)."""
SETTINGS_COLUMNS = {"key", "value"}
"""The columns of its `Settings` table the project's SQL names (cache/rows.py)."""

SQL_WORDS = {"select", "from", "where", "and", "or", "is", "not", "null", "in", "order", "by", "group", "limit", "count",
             "coalesce", "sum", "min", "max", "case", "when", "then", "else", "end", "typeof", "length", "integer", "delete",
             "update", "set", "as", "asc", "desc", "cache", "settings"}
_SQL = re.compile(r"^\s*(SELECT|UPDATE|DELETE|INSERT)\b.*\b(Cache|Settings)\b", re.S)


def _columns(folder: Path, table: str) -> set[str]:
    con = sqlite3.connect(str(folder / layout.DATABASE))
    try:
        return {row[1] for row in con.execute(f"PRAGMA table_info({table})")}
    finally:
        con.close()


@pytest.fixture(scope="module")
def schema(tmp_path_factory):
    folder = tmp_path_factory.mktemp("diskcache") / layout.ENTRIES
    with diskcache.Cache(str(folder)) as cache:
        cache.set("k", b"v")
    return {"Cache": _columns(folder, "Cache"), "Settings": _columns(folder, "Settings")}


def test_the_cache_table_has_every_column_the_cache_reads(schema):
    # rowid: diskcache declares `rowid INTEGER PRIMARY KEY`, so it is a named column as well as SQLite's row id
    assert CACHE_COLUMNS <= schema["Cache"], CACHE_COLUMNS - schema["Cache"]


def test_the_settings_table_has_every_column_the_cache_reads(schema):
    assert SETTINGS_COLUMNS <= schema["Settings"], SETTINGS_COLUMNS - schema["Settings"]


def _sql_strings():
    """(file, SQL text) of every string literal in cache/ that queries the Cache or Settings table (the
    constant parts of an f-string, with `?` for what is filled in)."""
    for path in sorted((ROOT / "cache").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                text = node.value
            elif isinstance(node, ast.JoinedStr):
                text = "".join(part.value if isinstance(part, ast.Constant) else "?" for part in node.values)
            else:
                continue
            if _SQL.match(text):
                yield path.name, text


def test_the_projects_sql_names_only_those_columns():
    found = list(_sql_strings())
    assert len(found) >= 10  # the scan finds the queries (reader, rows, verify, inventory, transfer)
    for name, text in found:
        words = {word.lower() for word in re.findall(r"[A-Za-z_]+", re.sub(r"'[^']*'", "", text))}
        unknown = words - SQL_WORDS - CACHE_COLUMNS - SETTINGS_COLUMNS
        assert not unknown, f"{name}: {text!r} names {sorted(unknown)}: add them above and check diskcache has them"


def test_the_diskcache_core_constants_the_cache_uses():
    core = diskcache.core
    assert core.DBNAME == layout.DATABASE == "cache.db"
    assert (core.MODE_RAW, core.MODE_BINARY) == (1, 2)  # rows store bytes in MODE_BINARY; raw keys, never pickled
    assert {"least-recently-stored", "least-recently-used", "least-frequently-used", "none"} <= set(core.EVICTION_POLICY)
    assert {"size_limit", "eviction_policy", "sqlite_journal_mode"} <= set(core.DEFAULT_SETTINGS)
    assert {"count", "size", "hits", "misses"} <= set(core.METADATA)
    assert callable(core.Disk.filename) and callable(core.Disk.remove)  # cache.disk builds on both


def test_the_pin_is_declared():
    text = (ROOT / "pyproject.toml").read_text()
    assert '"diskcache>=5.6,<6"' in text
    assert int(diskcache.__version__.split(".")[0]) == 5
