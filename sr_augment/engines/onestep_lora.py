"""The LoRA weight files of the one-step diffusion engines (OSEDiff, PiSA-SR), read and applied.

Both papers save one `torch.save`d dict (osediff.pkl, pisa_sr.pkl), written by their `save_model`:
lists of the target module names of each LoRA adapter, the ranks, and the state dict entries of the
LoRA'd models whose names contain "lora" (OSEDiff also keeps its UNet's retrained `conv_in`). Their
loaders build peft `LoraConfig(r=rank, target_modules=names)` (peft's default lora_alpha, 8), add the
adapters through diffusers' `add_adapter` under fixed names and copy the saved tensors into the
parameters of the same names. This module does the same from the layout alone (no code of theirs),
and reads the file with `torch.load(weights_only=True)`: a file holding anything but tensors,
containers and numbers is refused, never unpickled.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

LORA_ALPHA = 8
"""The files store ranks, not alphas: both papers' LoraConfig left lora_alpha at peft's default, 8."""


@dataclass(frozen=True)
class LoraFormat:
    """Where one paper's file keeps each adapter: (adapter name, module-list key, rank key) per model."""

    unet: tuple[tuple[str, str, str], ...]
    vae: tuple[tuple[str, str, str], ...]
    unet_also: tuple[str, ...] = ()
    """Base weights (not LoRA) the file also holds for the UNet, by a substring of their names."""


def _groups(adapter: str, modules: str, rank: str, suffixes) -> tuple[tuple[str, str, str], ...]:
    return tuple((adapter.format(part=p, kind=k), modules.format(part=p, kind=k), rank.format(kind=k))
                 for k in suffixes for p in ("encoder", "decoder", "others"))


FORMATS = {
    # OSEDiff (Wu et al. 2024), github.com/cswry/OSEDiff, osediff.py: OSEDiff_gen.save_model / OSEDiff_test.load_ckpt
    "osediff": LoraFormat(
        unet=_groups("default_{part}", "unet_lora_{part}_modules", "rank_unet", [""]),
        vae=(("default_encoder", "vae_lora_encoder_modules", "rank_vae"),),
        unet_also=("conv_in",)),
    # PiSA-SR (Sun et al. 2025), github.com/csslc/PiSA-SR, pisasr.py: PiSASR.save_model / PiSASR_eval
    "pisa-sr": LoraFormat(
        unet=_groups("default_{part}_{kind}", "unet_lora_{part}_modules_{kind}", "lora_rank_unet_{kind}", ["pix", "sem"]),
        vae=()),
}


def read_lora_file(path: Path, kind: str) -> tuple[dict, bytes]:
    """(the checked dict, the file's bytes) of a LoRA file in `kind`'s layout; ValueError naming the file
    and what is wrong. The bytes are what the fingerprint hashes: the weights used are the ones hashed."""
    import torch

    from sr_augment.weights_bounds import check_weights_file

    check_weights_file(path)  # before reading: neither the file nor its records may inflate past its size
    data = path.read_bytes()
    try:
        saved = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise ValueError(
            f"{path}: cannot be read as a {kind} LoRA file with torch.load(weights_only=True) ({type(exc).__name__}: "
            f"{reason}). Only files holding tensors, lists, dicts and numbers are accepted: a pickle that needs more "
            f"(Python objects, code) is refused and never unpickled") from None
    fmt = FORMATS[kind]
    problems = []
    if not isinstance(saved, dict):
        problems.append(f"holds a {type(saved).__name__}, not a dict")
    else:
        for _, modules, rank in fmt.unet + fmt.vae:
            names = saved.get(modules)
            if not (isinstance(names, (list, tuple)) and names and all(isinstance(n, str) for n in names)):
                problems.append(f"{modules!r} is not a list of module names")
            if not (type(saved.get(rank)) is int and saved[rank] > 0):
                problems.append(f"{rank!r} is not a positive integer")
        for key, wanted in (("state_dict_unet", fmt.unet), ("state_dict_vae", fmt.vae)):
            state = saved.get(key)
            if wanted and not (isinstance(state, dict) and state and all(isinstance(v, torch.Tensor) for v in state.values())):
                problems.append(f"{key!r} is not a dict of tensors")
    if problems:
        raise ValueError(f"{path}: not a {kind} LoRA file in the authors' layout: {'; '.join(dict.fromkeys(problems))}")
    return saved, data


def apply_lora(model, saved: dict, groups, state_key: str, also=(), *, path: Path) -> list[str]:
    """Add `groups`' adapters to the diffusers `model` (peft), activate them all and copy the saved tensors
    in; return the adapter names. Every LoRA tensor the adapters create must be in the file, with its shape."""
    import torch
    from peft import LoraConfig

    names = [adapter for adapter, _, _ in groups]
    for adapter, modules, rank in groups:
        config = LoraConfig(r=saved[rank], lora_alpha=LORA_ALPHA, target_modules=list(dict.fromkeys(saved[modules])),
                            init_lora_weights=False)
        try:
            with warnings.catch_warnings():  # peft warns on every adapter after the first: several are the point
                warnings.filterwarnings("ignore", message=".*multiple adapters.*")
                model.add_adapter(config, adapter_name=adapter)
        except ValueError as exc:  # peft: target modules not found in the base model
            raise ValueError(f"{path}: its {modules!r} do not fit this base model's {type(model).__name__} "
                             f"(is the base Stable Diffusion 2.1-base?): {str(exc)[:300]}") from None
    model.set_adapter(names)
    provided = saved[state_key]
    own = model.state_dict()
    wanted = [k for k in own if "lora" in k or any(part in k for part in also)]
    missing, mismatched = [], []
    with torch.no_grad():
        for key in wanted:
            # a file written by peft < 0.7 names a wrapped layer's own weight without ".base_layer"
            tensor = provided.get(key, provided.get(key.replace(".base_layer", "")))
            if tensor is None:
                missing.append(key)
            elif tensor.shape != own[key].shape:
                mismatched.append(f"{key} {tuple(tensor.shape)} vs {tuple(own[key].shape)}")
            else:
                own[key].copy_(tensor)
    if missing or mismatched:
        detail = "; ".join(filter(None, [missing and f"{len(missing)} tensors missing, e.g. {', '.join(missing[:3])}",
                                         mismatched and f"shapes differ: {', '.join(mismatched[:3])}"]))
        raise ValueError(f"{path}: its {state_key!r} does not fit the adapters it describes on this base model ({detail})")
    return names


def merge_adapters(model) -> None:
    """Fold the active adapters into the base weights (the output is the same up to rounding; no LoRA
    matmuls are left at inference)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.merge()
