"""What a cache holds, per engine and mode: one SQL `GROUP BY` over diskcache's `tag` column.

Why the tag: counting by reading every record would open every value file (minutes on a big cache);
the tag (`entrymeta.tag`: mode + a digest of the fingerprint) is written with each entry, so the
counts are one query, and only one record per group is read to name its engine. Evicted entries
leave with their rows, so the counts are always current. Entries stored before the tag existed (or
rows sr-augment never wrote) are counted as engine "unknown". Read-only: writes nothing.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sr_augment.cache import codec, entrymeta, layout, rows


def by_engine(directory, immutable: bool | None = None) -> list[dict]:
    """[{engine, mode, scale, fingerprint, entries, bytes}] of the cache at `directory`, largest first."""
    entries = Path(directory) / layout.ENTRIES
    con = rows.connect_readonly(entries, immutable)
    if con is None:
        return []
    try:
        groups = con.execute(
            "SELECT tag, COUNT(*), COALESCE(SUM(CASE WHEN filename IS NULL THEN length(value) "
            "WHEN typeof(size) = 'integer' THEN size END), 0), MIN(rowid) "
            "FROM Cache GROUP BY tag").fetchall()
        found = []
        for tag, count, size, rowid in groups:
            parsed = entrymeta.parse_tag(tag)
            meta = _meta_of_row(con, entries, rowid) if parsed else {}
            if not parsed or entrymeta.fingerprint_digest(meta.get("fingerprint", "")) != parsed[1]:
                meta, parsed = {}, None
            found.append({"engine": meta.get("engine", "unknown"), "mode": parsed[0] if parsed else "unknown",
                          "scale": meta.get("scale"), "fingerprint": meta.get("fingerprint"), "entries": int(count),
                          "bytes": int(size)})
    except sqlite3.DatabaseError as exc:
        raise rows.damaged(entries, str(exc)) from exc
    finally:
        con.close()
    merged: dict[tuple, dict] = {}
    for group in found:  # planted tags that fail their check fold into "unknown"
        key = (group["engine"], group["mode"], group["fingerprint"])
        if key in merged:
            merged[key]["entries"] += group["entries"]
            merged[key]["bytes"] += group["bytes"]
        else:
            merged[key] = group
    return sorted(merged.values(), key=lambda g: (-g["entries"], g["engine"], g["mode"]))


def _meta_of_row(con: sqlite3.Connection, entries: Path, rowid: int) -> dict:
    """The meta in the record of one row, or {} when the row or record is not usable."""
    row = con.execute("SELECT raw, mode, filename, value FROM Cache WHERE rowid = ?", (rowid,)).fetchone()
    if row is None or row[0] != 1:
        return {}
    try:
        return entrymeta.of_header(codec.split(rows.row_value(entries, row[1], row[2], row[3]))[0])
    except (rows.UntrustedRow, FileNotFoundError, codec.DamagedEntry):
        return {}


def printable(text) -> str:
    """Text read from a (possibly shared) cache folder, control characters escaped, so a planted name
    cannot move the cursor, retitle the terminal or forge lines of a report."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def format_table(groups: list[dict]) -> str:
    """A plain-text table of `by_engine`'s groups (fingerprints as their 16-hex digest)."""
    header = ("engine", "mode", "scale", "entries", "size", "fingerprint")
    lines = [(printable(g["engine"]), printable(g["mode"]), "" if g["scale"] is None else f"x{g['scale']}", str(g["entries"]),
              f"{g['bytes'] / 2**20:.1f} MiB", entrymeta.fingerprint_digest(g["fingerprint"]) if g["fingerprint"] else "")
             for g in groups]
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *lines])
