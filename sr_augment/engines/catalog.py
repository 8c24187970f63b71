"""What engines exist, what each needs, and whether it can run here: `sr-augment engines`.

Why a separate module: the answer must come without building any engine (no model load, no torch
import, no network), so a user can see at once why an engine is unavailable and what to install.
"""

from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass

HUB_ALIASES = {
    # the short names of the published diffusers SR pipelines sr-augment knows
    "sd-x4-upscaler": "stabilityai/stable-diffusion-x4-upscaler",
    "ldm-4x": "CompVis/ldm-super-resolution-4x-openimages",
}


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


def _missing(*modules: str) -> list[str]:
    return [m for m in modules if importlib.util.find_spec(m) is None]


def _hub_cached(repo: str) -> bool:
    """Whether the Hugging Face cache holds the pipeline's model_index.json (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    found = try_to_load_from_cache(repo, "model_index.json")
    return isinstance(found, str)


def builtin_engines() -> list[EngineEntry]:
    """The named engines, with availability checked on this machine without loading any of them."""
    diffusion_missing = _missing("torch", "diffusers")
    extra = "pip install 'sr-augment[diffusion]'"
    entries = [EngineEntry("bicubic", "Pillow bicubic, the baseline", "nothing", True, True, "")]
    entries.append(EngineEntry(
        "sr4", "built-in pixel-space diffusion model (weights inside the package)", "[diffusion]; a CPU is enough",
        False, not diffusion_missing,
        f"needs {' and '.join(diffusion_missing)}: {extra}" if diffusion_missing else ""))
    for name, repo in HUB_ALIASES.items():
        if diffusion_missing:
            available, reason = False, f"needs {' and '.join(diffusion_missing)}: {extra}"
        elif _hub_cached(repo):
            available, reason = True, ""
        else:
            available, reason = False, f"weights of {repo} not in the local Hugging Face cache: huggingface-cli download {repo}"
        entries.append(EngineEntry(name, f"diffusers pipeline {repo}", "[diffusion], its weights, a GPU in practice",
                                   False, available, reason))
    return entries


OTHER_SPECS = [
    ("DIR", "a local diffusers SR pipeline folder (save_pretrained output, or `sr-augment train` output)"),
    ("owner/name", "a Hugging Face hub id of a diffusers SR pipeline (needs network or the HF cache)"),
    ("package.module:Class", "your own class implementing the Engine protocol"),
]


def format_table(entries: list[EngineEntry]) -> str:
    rows = [("engine", "available", "deterministic", "needs / why not")]
    for e in entries:
        rows.append((e.spec, "yes" if e.available else "no", "yes" if e.deterministic else "no",
                     e.needs if e.available else e.reason))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(r[i].ljust(widths[i]) for i in range(3)) + "  " + r[3] for r in rows]
    lines.append("")
    lines += [f"{spec:<22}{what}" for spec, what in OTHER_SPECS]
    return "\n".join(lines)
