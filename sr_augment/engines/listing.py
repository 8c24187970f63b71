"""The named engines and whether each can run here, for `sr-augment engines`: asked of every kind in
the engine registry.

Why a module above the kinds: the rows come from the kinds in `REGISTRY` (built in `kinds`), and the
kinds import the facts in `catalog`; kept here, imports among the engine modules run one way.
"""

from __future__ import annotations

from sr_augment.engines.catalog import EngineEntry
from sr_augment.engines.kinds import REGISTRY


def builtin_engines() -> list[EngineEntry]:
    """The named engines, with availability checked on this machine without loading any of them: each
    kind of the engine registry describes its own (`EngineKind.describe`), in listing order."""
    return [entry for kind in REGISTRY.listing() for entry in kind.describe()]


def format_table(entries: list[EngineEntry]) -> str:
    """The `sr-augment engines` table of `entries`, then the spec forms that are patterns, not names."""
    rows = [("engine", "available", "deterministic", "needs / why not")]
    for e in entries:
        rows.append((e.spec, "yes" if e.available else "no", "yes" if e.deterministic else "no",
                     e.needs if e.available else e.reason))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(r[i].ljust(widths[i]) for i in range(3)) + "  " + r[3] for r in rows]
    lines.append("")
    lines += [f"{spec:<22}{what}" for spec, what in REGISTRY.forms()]
    return "\n".join(lines)
