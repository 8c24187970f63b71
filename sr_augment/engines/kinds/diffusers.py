"""Diffusers SR pipelines: a local `save_pretrained` folder, a hub alias ("sd-x4-upscaler", "ldm-4x") or a
hub id "owner/name"; `build_pipeline_engine` and `folder_stamp` also serve the built-in sr4."""

from __future__ import annotations

from pathlib import Path

from sr_augment.engines.base import EngineSpecError, EngineUnavailable
from sr_augment.engines.registry import INT, NONE, NUMBER, TEXT, EngineKind, Parameter
from sr_augment.engines.specs import HUB_ALIASES, is_hub_id

DIFFUSION_EXTRA = "pip install 'sr-augment[diffusion]'"

SCHEDULER_NAMES = ("ddim", "dpm++", "euler", "ddpm", "pndm")
"""The keys of `diffusers_engine.SCHEDULERS` (named here so that checking imports no engine module)."""

PIPELINE_PARAMETERS = (
    Parameter("steps", INT, low=1), Parameter("batch_size", INT, low=1), Parameter("tile", INT + NONE, low=8),
    Parameter("overlap", INT, low=0), Parameter("scheduler", choices=(*SCHEDULER_NAMES, None, "default")),
    Parameter("eta", NUMBER, low=0, high=1), Parameter("prompt", TEXT), Parameter("negative_prompt", TEXT + NONE),
    Parameter("guidance_scale", NUMBER, low=0), Parameter("noise_level", INT, low=0, high=350),
    Parameter("strength", NUMBER + NONE, low=0, low_open=True, high=1), Parameter("revision", TEXT + NONE),
)
"""What `DiffusersEngine.__init__` takes besides spec, scale, device and dtype, with the ranges it accepts
(`overlap` must also be below `tile`, which the engine checks)."""


def build_pipeline_engine(spec, *, scale=4, steps=None, device="auto", dtype="auto", **params):
    """`DiffusersEngine(spec, ...)`, or `EngineUnavailable` saying what to install when torch or diffusers is missing."""
    from sr_augment.engines.catalog import missing

    absent = missing("torch", "diffusers")
    if absent:
        raise EngineUnavailable(f"engine {spec!r} needs {' and '.join(absent)}, which are not installed: "
                                f"{DIFFUSION_EXTRA} (or use engine='bicubic', which needs nothing)")
    from sr_augment.engines.diffusers_engine import DiffusersEngine

    return DiffusersEngine(spec, scale=scale, steps=steps, device=device, dtype=dtype, **params)


def folder_stamp(folder: Path) -> list:
    """[relative name, size] of each model file of a pipeline folder (empty when it is not a folder)."""
    from sr_augment.engines.pipeline_weights import pipeline_files

    if not folder.is_dir():
        return []
    return [[str(p.relative_to(folder)), p.stat().st_size] for p in pipeline_files(folder)]


def diffusion_reason() -> str:
    """Why no diffusers engine can run here ("" when torch and diffusers are installed)."""
    from sr_augment.engines.catalog import missing

    absent = missing("torch", "diffusers")
    return f"needs {' and '.join(absent)}: {DIFFUSION_EXTRA}" if absent else ""


class PipelineKind(EngineKind):
    needs = "[diffusion], its weights, a GPU in practice"
    parameters = PIPELINE_PARAMETERS

    def build(self, spec, *, scale=4, steps=None, device="auto", dtype="auto", **params):
        return build_pipeline_engine(spec, scale=scale, steps=steps, device=device, dtype=dtype, **params)


def _local(spec: str) -> Path:
    return Path(spec).expanduser()


class LocalFolderKind(PipelineKind):
    """A path: anything that exists, starts with ".", "/" or "~", or whose parent folder exists."""

    id = "local-folder"
    accepts = "an existing local diffusers pipeline folder"
    form = ("DIR", "a local diffusers SR pipeline folder (save_pretrained output, or `sr-augment train` output)")
    listed = 70

    def matches(self, spec):
        local = _local(spec)
        return local.exists() or spec.startswith((".", "/", "~")) or (local.parent != Path(".") and local.parent.is_dir())

    def check(self, spec, params=None):
        local = _local(spec)
        if local.is_dir():
            return super().check(spec, params)
        if local.exists():
            raise EngineSpecError(f"{spec!r} is a file, not a diffusers pipeline folder")
        raise EngineSpecError(f"{spec}: no such folder")

    def weights_stamp(self, spec, params=None):
        return folder_stamp(_local(spec))


class HubAliasKind(PipelineKind):
    id = "hub-alias"
    names = tuple(HUB_ALIASES)
    listed = 30

    def describe(self):
        from sr_augment.engines.catalog import EngineEntry, hub_cached

        entries, reason = [], diffusion_reason()
        for name, repo in HUB_ALIASES.items():
            if reason:
                available, why = False, reason
            elif hub_cached(repo):
                available, why = True, ""
            else:
                available, why = False, f"weights of {repo} not in the local Hugging Face cache: huggingface-cli download {repo}"
            entries.append(EngineEntry(name, f"diffusers pipeline {repo}", self.needs, False, available, why))
        return entries


class HubIdKind(PipelineKind):
    id = "hub-id"
    accepts = "a hub id 'owner/name'"
    form = ("owner/name", "a Hugging Face hub id of a diffusers SR pipeline (needs network or the HF cache)")
    listed = 80

    def matches(self, spec):
        return is_hub_id(spec)


LOCAL_FOLDER = LocalFolderKind()
HUB_ALIAS = HubAliasKind()
HUB_ID = HubIdKind()
