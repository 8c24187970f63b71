"""Where a diffusers pipeline's weights are and what identifies them, without loading anything.

Why a module of its own: the engine, the one-step engines, the catalog and the engine service's
identity record all need a pipeline folder's files and content hash, and none of them should have to
import the engine (or torch) for it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from sr_augment.engines.base import EngineUnavailable
from sr_augment.engines.registry import REGISTRY
from sr_augment.engines.specs import HUB_ALIASES, is_hub_id

BUILTIN = "sr4"
"""The model that ships inside the package (sr_augment/sr4/weights)."""


def builtin_weights() -> Path:
    """The folder of the shipped sr4 model."""
    return Path(__file__).resolve().parent.parent / "sr4" / "weights"


def _offline_message(spec: str, repo: str, reason: str) -> str:
    return (
        f"Engine {spec!r} needs the diffusers weights of {repo!r}, which are not in the local Hugging Face "
        f"cache and could not be downloaded ({reason}). Provide them in one of two ways: on a machine with "
        f"network access run `huggingface-cli download {repo}` (copy the resulting HF cache, e.g. "
        f"~/.cache/huggingface, to this machine, or point HF_HOME at it), or save the pipeline with "
        f"`save_pretrained(DIR)` and pass that folder as the engine, e.g. get_engine('DIR') or "
        f"`--engine DIR`. Set HF_HUB_OFFLINE=1 to stop sr-augment from trying the network at all."
    )


_HASH_MEMO: dict[tuple, str] = {}


def pipeline_files(folder: Path) -> list[Path]:
    """model_index.json and the files of the components it names: what `from_pretrained` reads, not
    the checkpoints, sample grids or logs a training run keeps beside them."""
    try:
        components = [k for k, v in json.loads((folder / "model_index.json").read_text()).items()
                      if isinstance(v, list) and not k.startswith("_")]
    except (OSError, ValueError):
        components = None
    roots = [folder / c for c in components] if components is not None else [folder]
    files = [folder / "model_index.json"] if components is not None else []
    for root in roots:
        files += [p for p in root.rglob("*") if p.is_file()]
    return sorted(p for p in files if not any(part.startswith(".") for part in p.relative_to(folder).parts))


WEIGHT_SUFFIXES = (".bin", ".safetensors", ".pth", ".pt", ".ckpt")
"""The files of a pipeline folder that diffusers or transformers read as weights."""
MAX_PIPELINE_FILE_BYTES = 64 << 30
"""A pipeline's weight file may be large (an fp32 SDXL UNet is 10 GB); it still may not inflate past its size."""


def check_pipeline_weights(folder: Path, files: list[Path] | None = None) -> None:
    """Every weight file of a pipeline folder bounded before diffusers reads it (`check_weights_file`):
    a ValueError naming the file that would inflate past its size."""
    from sr_augment.weights_bounds import check_weights_file

    for path in pipeline_files(folder) if files is None else files:
        if path.suffix.lower() in WEIGHT_SUFFIXES:
            check_weights_file(path, limit=MAX_PIPELINE_FILE_BYTES)


def hash_folder(folder: Path) -> str:
    """blake2b over the relative paths and contents of a pipeline folder's model files (memoised on
    size + mtime), so copying a model elsewhere, or deleting a run's checkpoint, keeps its identity."""
    files = pipeline_files(folder)
    stamp = tuple((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    memo_key = (str(folder.resolve()), stamp)
    if memo_key not in _HASH_MEMO:
        check_pipeline_weights(folder, files)
        digest = hashlib.blake2b(digest_size=16)
        for path in files:
            digest.update(str(path.relative_to(folder)).encode() + b"\0")
            with open(path, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 23), b""):
                    digest.update(chunk)
        _HASH_MEMO[memo_key] = digest.hexdigest()
    return _HASH_MEMO[memo_key]


def resolve_weights(spec: str, revision: str | None = None) -> tuple[Path, str]:
    """(local folder, weights identity) for an alias, a hub id or a local folder."""
    if spec == BUILTIN:
        folder = builtin_weights()
        if not (folder / "model_index.json").is_file():
            raise EngineUnavailable(f"the built-in sr4 weights are missing from {folder}; reinstall sr-augment")
        return folder, f"{BUILTIN}:{hash_folder(folder)}"
    local = Path(spec).expanduser()
    if not local.exists() and (spec.startswith((".", "/", "~")) or (local.parent != Path(".") and local.parent.is_dir())):
        raise EngineUnavailable(f"{local}: no such folder (a local engine must be a diffusers pipeline folder)")
    if local.is_dir():
        if not (local / "model_index.json").is_file():
            raise EngineUnavailable(
                f"{local}: not a diffusers pipeline folder (no model_index.json). Save one with "
                f"`pipeline.save_pretrained('{local}')` or pass a hub id."
            )
        return local, f"local:{hash_folder(local)}"
    repo = HUB_ALIASES.get(spec, spec)
    if not is_hub_id(repo):  # the engine registry's one bad-spec error, as get_engine would raise it
        raise REGISTRY.unknown(spec)
    from diffusers import DiffusionPipeline

    try:
        folder = DiffusionPipeline.download(repo, revision=revision)
    except Exception as exc:  # huggingface_hub raises many types; the user needs one plain answer
        raise EngineUnavailable(_offline_message(spec, repo, type(exc).__name__)) from None
    folder = Path(folder)
    check_pipeline_weights(folder)
    return folder, f"{repo}@{folder.name}"
