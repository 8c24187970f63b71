"""One-step diffusion SR on Stable Diffusion 2.1-base with the authors' LoRA weights: `osediff` (OSEDiff,
Wu et al. 2024) and `pisa-sr` (PiSA-SR, Sun et al. 2025).

The low-resolution image is enlarged (bicubic) to the output size, encoded by the VAE (OSEDiff: with its
LoRA'd encoder), and ONE UNet call with the prompt's embedding turns that latent into the clean one,
which the VAE decodes. OSEDiff predicts the noise at timestep 999 and the clean latent follows in closed
form: DDPM's x0, what `DDPMScheduler.step(...).prev_sample` gives after `set_timesteps(1)` on diffusers
0.25, which the authors pin (newer diffusers raise there), less its 1e-10-scaled noise draw. PiSA-SR
predicts a residual at timestep 1 (x0 = z - pred) with two LoRA sets, pixel-level and semantic-level,
weighted by `lambda_pix` and `lambda_sem` (1, 1 = the paper's default, one UNet call; other values take
two: pred = lambda_pix * pred_pix + lambda_sem * (pred_sem - pred_pix)).

Deterministic: no noise is drawn (the VAE posterior's mean is used where the authors sample it; its std
is tiny), so the output depends on the image and the settings only; seeds are accepted and ignored.
The authors' prompt extractor (RAM/DAPE) is not included: the prompt is "" unless `prompt` is given.
Large inputs are tiled in image space (`engines.tiling.upscale_tiled`, feathered blending), like the
other engines, rather than with the authors' tiled-VAE and tiled-latent hooks. Inputs whose output side
is below `process_size` (512) are run enlarged to it and the result resized down, as the authors do.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sr_augment.engines.backoff import BatchBackoff, tile_description
from sr_augment.engines.base import EngineUnavailable, check_batch, make_fingerprint
from sr_augment.engines.specs import is_hub_id
from sr_augment.engines.tiling import DEFAULT_OVERLAP, upscale_tiled
from sr_augment.images import resize

SD21_BASE = "stabilityai/stable-diffusion-2-1-base"
BASE_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


@dataclass(frozen=True)
class OneStep:
    title: str
    env: str
    file: str
    where: str
    source: str
    timestep: int


KINDS = {
    "osediff": OneStep("OSEDiff", "OSEDIFF", "osediff.pkl", "in the repository https://github.com/cswry/OSEDiff, file "
                       "preset/models/osediff.pkl (`git clone https://github.com/cswry/OSEDiff`, or download that file "
                       "from the repository page)", "github.com/cswry/OSEDiff, preset/models/osediff.pkl", 999),
    "pisa-sr": OneStep("PiSA-SR", "PISA_SR", "pisa_sr.pkl", "from the Google Drive folder linked in the README of "
                       "https://github.com/csslc/PiSA-SR ('Download the PiSA-SR model')",
                       "the Google Drive link in github.com/csslc/PiSA-SR's README", 1),
}


def env_names(kind: str) -> tuple[str, str]:
    """The environment variables giving `kind`'s base folder / hub id and LoRA file when not passed."""
    return f"SR_AUGMENT_{KINDS[kind].env}_BASE", f"SR_AUGMENT_{KINDS[kind].env}_LORA"


def settings_from_env(kind: str, base=None, lora=None) -> tuple[str, Path | None]:
    """(base, lora path) from the arguments, else the environment; base defaults to the SD 2.1-base hub id."""
    env_base, env_lora = env_names(kind)
    base = str(base or os.environ.get(env_base) or SD21_BASE)
    lora = lora or os.environ.get(env_lora)
    return base, (Path(str(lora)).expanduser() if lora else None)


def missing_modules() -> list[str]:
    return [m for m in ("torch", "diffusers", "transformers", "peft") if importlib.util.find_spec(m) is None]


def lora_unavailable(kind: str, lora: Path | None) -> str:
    """The paragraph saying how to get `kind`'s LoRA file onto this machine."""
    info, env_lora = KINDS[kind], env_names(kind)[1]
    problem = f"{lora}: no such file" if lora is not None else "none was given"
    return (f"Engine {kind!r} needs the {info.title} authors' LoRA weights file {info.file} ({problem}). On a machine "
            f"with network access get it {info.where}, copy it here and pass its path as lora=PATH "
            f"(--set lora=PATH on the command line, get_engine({kind!r}, lora=PATH) in Python) or set {env_lora}=PATH.")


def _offline_message(kind: str, repo: str, reason: str) -> str:
    env_base = env_names(kind)[0]
    return (f"Engine {kind!r} runs on Stable Diffusion 2.1-base ({repo!r}), whose diffusers weights are not in the "
            f"local Hugging Face cache and could not be downloaded ({reason}). Provide them in one of two ways: on a "
            f"machine with network access run `huggingface-cli download {repo}` (copy the resulting HF cache, e.g. "
            f"~/.cache/huggingface, to this machine, or point HF_HOME at it), or save a diffusers copy of SD 2.1-base "
            f"(folders {', '.join(BASE_PARTS)}) to a folder DIR and pass base=DIR (--set base=DIR, or {env_base}=DIR). "
            f"Set HF_HUB_OFFLINE=1 to stop sr-augment from trying the network at all.")


def resolve_base(kind: str, base: str, revision: str | None = None) -> tuple[Path, str]:
    """(local folder, weights identity) of the SD 2.1-base the engine runs on, without loading it."""
    from sr_augment.engines.pipeline_weights import check_pipeline_weights, hash_folder

    local = Path(base).expanduser()
    if local.is_dir():
        missing = [part for part in BASE_PARTS if not (local / part).is_dir()]
        if missing:
            raise EngineUnavailable(f"{local}: not a Stable Diffusion 2.1-base folder in diffusers layout (no "
                                    f"{', '.join(missing)} folder): pass base=DIR holding {', '.join(BASE_PARTS)}")
        return local, f"local:{hash_folder(local)}"
    if not is_hub_id(base):
        raise EngineUnavailable(f"{base}: no such folder (base must be a local SD 2.1-base diffusers folder or a hub id "
                                f"like {SD21_BASE!r})")
    from diffusers import DiffusionPipeline

    try:
        folder = Path(DiffusionPipeline.download(base, revision=revision))
    except Exception as exc:  # huggingface_hub raises many types; the user needs one plain answer
        raise EngineUnavailable(_offline_message(kind, base, type(exc).__name__)) from None
    check_pipeline_weights(folder)
    return folder, f"{base}@{folder.name}"


def adain(image, reference):
    """Per-image, per-channel mean and std of `image` made those of `reference` (the authors' 'adain' fix)."""
    flat, ref = image.flatten(2), reference.flatten(2)
    std = (flat.var(dim=2, keepdim=True) + 1e-5).sqrt()
    ref_std = (ref.var(dim=2, keepdim=True) + 1e-5).sqrt()
    out = (flat - flat.mean(dim=2, keepdim=True)) / std * ref_std + ref.mean(dim=2, keepdim=True)
    return out.view_as(image)


class OneStepEngine:
    """OSEDiff or PiSA-SR as an `Engine`: one UNet call per tile, batched, tiled, deterministic.

    Args:
        kind: "osediff" or "pisa-sr".
        base: a local Stable Diffusion 2.1-base diffusers folder or a hub id (default: $SR_AUGMENT_<KIND>_BASE,
            else "stabilityai/stable-diffusion-2-1-base"; <KIND> is OSEDIFF or PISA_SR).
        lora: the authors' LoRA file, osediff.pkl / pisa_sr.pkl (default: $SR_AUGMENT_<KIND>_LORA).
        scale: output/input size (any integer >= 1: the input is enlarged bicubically first).
        device, dtype: "auto" picks cuda > mps > cpu and bf16/fp16 on GPU, fp32 on CPU.
        batch_size: tiles per model call (halved on out-of-memory, down to 1).
        tile, overlap: tile side and overlap in input pixels (default tile: process_size // scale, at least 32).
        prompt: the text condition (default "", as without the authors' tagger).
        color_fix: "adain" (the authors' default: match each channel's mean and std to the enlarged input) or "none".
        process_size: outputs with a side below it are computed at that size and resized down (0: never).
        lambda_pix, lambda_sem: PiSA-SR only: strength of the pixel-level and semantic-level LoRAs (default 1, 1).
        revision: hub revision of the base to pin.
    """

    deterministic = True
    """No noise is drawn: every variant (seed) of an image is the same pixels."""

    def __init__(self, kind: str, *, base: str | None = None, lora=None, scale: int = 4, device: str = "auto",
                 dtype: str = "auto", batch_size: int = 4, tile: int | None = None, overlap: int = DEFAULT_OVERLAP,
                 prompt: str = "", color_fix: str = "adain", process_size: int = 512, lambda_pix: float | None = None,
                 lambda_sem: float | None = None, revision: str | None = None):
        if kind not in KINDS:
            raise ValueError(f"one-step engine must be one of {', '.join(KINDS)}, got {kind!r}")
        missing = missing_modules()
        if missing:
            verb = "is" if len(missing) == 1 else "are"
            raise EngineUnavailable(f"engine {kind!r} needs {' and '.join(missing)}, which {verb} not installed: "
                                    f"pip install 'sr-augment[diffusion]' peft")
        if kind != "pisa-sr" and (lambda_pix, lambda_sem) != (None, None):
            raise ValueError(f"lambda_pix and lambda_sem apply to pisa-sr only, not to {kind}")
        if color_fix not in ("adain", "none"):
            raise ValueError(f"color_fix must be 'adain' or 'none', got {color_fix!r}")
        scale = int(scale)
        tile = max(32, (int(process_size) or 512) // max(1, scale)) if tile is None else int(tile)
        if scale < 1 or batch_size < 1 or tile < 8 or not 0 <= overlap < tile or process_size < 0:
            raise ValueError(f"need scale >= 1, batch_size >= 1, tile >= 8, 0 <= overlap < tile and process_size >= 0; "
                             f"got {scale}, {batch_size}, {tile}, {overlap}, {process_size}")
        from sr_augment.engines.onestep_lora import read_lora_file
        from sr_augment.torch_device import resolve_device, resolve_dtype

        base, lora_path = settings_from_env(kind, base, lora)
        if lora_path is None or not lora_path.is_file():
            raise EngineUnavailable(lora_unavailable(kind, lora_path))
        self._lora, data = read_lora_file(lora_path, kind)  # checked now: a bad file fails here, not at the first image
        self._folder, base_identity = resolve_base(kind, base, revision)
        self.kind, self.lora_path = kind, lora_path
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.scale, self.native_scale = scale, scale  # the input is enlarged to any scale before the one step
        self.batch_size, self.tile, self.overlap, self.process_size = int(batch_size), tile, int(overlap), int(process_size)
        self.multiple = 8 // math.gcd(8, scale)  # the output side must be a multiple of 8 (the VAE's factor)
        self._backoff = BatchBackoff(self.batch_size)
        self.prompt, self.color_fix = str(prompt), color_fix
        self.lambdas = (1.0 if lambda_pix is None else float(lambda_pix), 1.0 if lambda_sem is None else float(lambda_sem))
        self.name = kind
        self._models = None
        self._load_lock, self._call_lock = threading.Lock(), threading.Lock()

        sampler = {"timestep": KINDS[kind].timestep, "prompt": self.prompt, "color_fix": color_fix,
                   "process_size": self.process_size, "latent": "mean", "lora_merge": self._single_call is not None}
        if kind == "pisa-sr":
            sampler.update(lambda_pix=self.lambdas[0], lambda_sem=self.lambdas[1])
        self.fingerprint = make_fingerprint(
            engine=kind, base=base_identity, lora=hashlib.blake2b(data, digest_size=16).hexdigest(), dtype=self.dtype,
            scale=self.scale, tile=self.tile, overlap=self.overlap, **sampler)

    @property
    def _single_call(self) -> list[str] | None:
        """The adapter groups of the one UNet call the settings need (merged into the weights), or None
        when PiSA-SR's lambdas need two calls (adapters kept apart and switched between the calls)."""
        if self.kind == "osediff":
            return ["all"]
        lambda_pix, lambda_sem = self.lambdas
        if lambda_pix == lambda_sem:
            return ["pix", "sem"]
        return ["pix"] if lambda_sem == 0 else None

    def __repr__(self) -> str:
        return (f"OneStepEngine({self.kind!r}, lora={str(self.lora_path)!r}, scale={self.scale}, device={self.device!r}, "
                f"dtype={self.dtype!r})")

    # -- the models, loaded on first use ----------------------------------------------------------------
    @property
    def models(self) -> dict:
        """unet, vae, the prompt's embedding, the timestep's alpha: loaded on first use, so a warm cache
        (every request a hit) never loads the model."""
        with self._load_lock:
            if self._models is None:
                self._models = self._load()
            return self._models

    def _load(self) -> dict:
        import torch
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        from sr_augment.engines.diffusers_engine import dtype_keyword
        from sr_augment.engines.onestep_lora import FORMATS, apply_lora, merge_adapters

        folder, fp32 = self._folder, {dtype_keyword(): torch.float32}
        unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", **fp32).eval()
        vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", **fp32).eval()
        scheduler = DDPMScheduler.from_pretrained(folder, subfolder="scheduler")
        tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
        text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder").float().eval()
        with torch.inference_mode():  # the prompt is fixed: encode it once, on the CPU, and drop the encoder
            ids = tokenizer(self.prompt, max_length=tokenizer.model_max_length, padding="max_length",
                            truncation=True, return_tensors="pt").input_ids
            embeds = text_encoder(ids)[0]
        del text_encoder
        fmt, saved, self._lora = FORMATS[self.kind], self._lora, None
        names = apply_lora(unet, saved, fmt.unet, "state_dict_unet", fmt.unet_also, path=self.lora_path)
        if fmt.vae:
            apply_lora(vae, saved, fmt.vae, "state_dict_vae", path=self.lora_path)
            merge_adapters(vae)
        groups = {"all": names, **{kind: [n for n in names if n.endswith(f"_{kind}")] for kind in ("pix", "sem")}}
        single = self._single_call
        if single is not None:  # fold the adapters of the one call into the weights (in fp32, before any cast)
            unet.set_adapter([n for group in single for n in groups[group]])
            merge_adapters(unet)
        dtype = getattr(torch, self.dtype)
        config = scheduler.config
        if config.prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"{folder}: scheduler prediction_type {config.prediction_type!r} is not supported")
        cast = {} if dtype == torch.float32 else {"dtype": dtype}  # diffusers warns on any dtype cast
        return {"unet": unet.to(self.device, **cast), "vae": vae.to(self.device, **cast),
                "embeds": embeds.to(self.device, dtype), "groups": groups, "prediction": config.prediction_type,
                "clip": float(config.clip_sample_range) if config.clip_sample else None,
                "alpha": float(scheduler.alphas_cumprod[KINDS[self.kind].timestep])}

    # -- the Engine contract ---------------------------------------------------------------------------
    def upscale(self, images: Sequence[np.ndarray], seeds: Sequence[int]) -> list[np.ndarray]:
        check_batch(images, seeds)
        return upscale_tiled(images, seeds, self._run_fitting, scale=self.scale, tile=self.tile, overlap=self.overlap,
                             multiple=self.multiple, batch_size=self.batch_size)

    def _run_fitting(self, batch: list[np.ndarray], seeds: list[int]) -> list[np.ndarray]:
        """`_run` in batches that fit in memory (see `engines.backoff`)."""
        return self._backoff.run(self._run, batch, seeds, tile_description(self))

    def work_size(self, height: int, width: int) -> tuple[int, int]:
        """The size the model runs at for an output of (height, width): at least `process_size` on the short
        side (as the authors enlarge small inputs), rounded up to a multiple of 8."""
        grow = max(1.0, self.process_size / min(height, width))
        return math.ceil(height * grow / 8) * 8, math.ceil(width * grow / 8) * 8

    def _run(self, batch: list[np.ndarray], seeds: list[int]) -> list[np.ndarray]:
        import torch

        out_size = (batch[0].shape[0] * self.scale, batch[0].shape[1] * self.scale)
        work = self.work_size(*out_size)
        m = self.models
        vae, dtype = m["vae"], getattr(torch, self.dtype)
        enlarged = np.stack([resize(image, work) for image in batch])  # bicubic, as the authors' PIL resize
        pixels = torch.from_numpy(enlarged).to(self.device).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        with torch.inference_mode():
            factor = vae.config.scaling_factor
            latents = vae.encode(pixels.to(dtype)).latent_dist.mode() * factor
            embeds = m["embeds"].expand(len(batch), -1, -1)
            clean = self._denoise(latents, embeds, m).to(dtype)
            decoded = vae.decode(clean / factor).sample.float().clamp(-1.0, 1.0)
        result = (decoded + 1.0) / 2.0
        if self.color_fix == "adain":
            result = adain(result, (pixels + 1.0) / 2.0).clamp(0.0, 1.0)
        out = (result * 255.0).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return [resize(o, out_size) for o in out]

    def _denoise(self, latents, embeds, m):
        """The clean latent from the one UNet call (two for PiSA-SR with unequal non-zero lambdas), in fp32."""
        unet, t = m["unet"], KINDS[self.kind].timestep
        if self.kind == "osediff":
            pred = unet(latents, t, encoder_hidden_states=embeds).sample.float()
            alpha, z = m["alpha"], latents.float()
            if m["prediction"] == "epsilon":
                clean = (z - (1 - alpha) ** 0.5 * pred) / alpha ** 0.5
            elif m["prediction"] == "v_prediction":
                clean = alpha ** 0.5 * z - (1 - alpha) ** 0.5 * pred
            else:
                clean = pred
            return clean if m["clip"] is None else clean.clamp(-m["clip"], m["clip"])
        lambda_pix, lambda_sem = self.lambdas
        if self._single_call is not None:  # the adapters are merged: pred = lambda * pred(pix [+ sem])
            pred = lambda_pix * unet(latents, t, encoder_hidden_states=embeds).sample.float()
        else:
            groups = m["groups"]
            with self._call_lock:  # the active adapters are the model's state: one caller at a time
                unet.set_adapter(groups["pix"])
                pred_pix = unet(latents, t, encoder_hidden_states=embeds).sample.float()
                unet.set_adapter(groups["pix"] + groups["sem"])
                pred_sem = unet(latents, t, encoder_hidden_states=embeds).sample.float()
            pred = lambda_pix * pred_pix + lambda_sem * (pred_sem - pred_pix)
        return latents.float() - pred


def onestep_engine(spec: str, *, scale: int = 4, steps: int | None = None, device: str = "auto", dtype: str = "auto",
                   **params) -> OneStepEngine:
    """The engine for "osediff" / "pisa-sr" as `get_engine` builds it."""
    if steps not in (None, 1):
        raise ValueError(f"engine {spec!r} is a one-step diffusion model: steps does not apply (leave it unset)")
    return OneStepEngine(spec, scale=scale, device=device, dtype=dtype, **params)
