"""Diffusion SR engines on Hugging Face `diffusers`: the built-in sr4, SD x4 upscaler, LDM 4x, or any
diffusers SR pipeline.

Loading goes through the real `DiffusionPipeline.download` / `from_pretrained`, so a hub id, a hub
cache and a local `save_pretrained` folder all work the same way. Per-image `torch.Generator`s make an
image's output depend only on (image, seed, settings), never on what else shared its batch.
"""

from __future__ import annotations

import inspect
import json
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from sr_augment.ddim_noise import eta_step_kwargs
from sr_augment.engines.backoff import BatchBackoff, tile_description
from sr_augment.engines.base import EngineUnavailable, check_batch, make_fingerprint
from sr_augment.engines.pipeline_weights import BUILTIN, resolve_weights
from sr_augment.engines.specs import HUB_ALIASES
from sr_augment.engines.tiling import DEFAULT_OVERLAP, upscale_to_scale
from sr_augment.torch_device import resolve_device, resolve_dtype

SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
    "euler": "EulerDiscreteScheduler",
    "ddpm": "DDPMScheduler",
    "pndm": "PNDMScheduler",
}

_SD_CLASS = "StableDiffusionUpscalePipeline"
_LDM_CLASS = "LDMSuperResolutionPipeline"
_SR4_CLASS = "SR4Pipeline"
# Sampler defaults per pipeline class: few steps with a multistep solver where the model allows it.
# Tiles are in LR pixels; sr4 runs in pixel space at LR size, so it affords larger ones.
_DEFAULTS = {
    _SD_CLASS: {"steps": 20, "scheduler": "dpm++", "tile": 128},
    _LDM_CLASS: {"steps": 50, "scheduler": None, "tile": 128},
    _SR4_CLASS: {"steps": 10, "scheduler": None, "tile": 256},
}
_GENERIC_DEFAULTS = {"steps": 25, "scheduler": None, "tile": 128}


class _ComponentConfigs:
    """The JSON configs of a saved pipeline (model_index.json and each component's config.json): what
    the engine's settings and fingerprint need, read without loading any weights."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.pipeline = self._read(folder / "model_index.json")

    def component(self, name: str, filename: str = "config.json") -> dict:
        return self._read(self.folder / name / filename)

    @staticmethod
    def _read(path: Path) -> dict:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise EngineUnavailable(f"{path}: cannot read the pipeline's config ({type(exc).__name__}: {exc})") from None


class DiffusersEngine:
    """A diffusers SR pipeline as an `Engine`: batched, tiled, seeded per image.

    Args:
        spec: "sr4" (built in), "sd-x4-upscaler", "ldm-4x", a hub id, or a local `save_pretrained`
            folder (including an `sr-augment train` output folder).
        scale: output/input size; defaults to the model's own factor. Another value runs the model
            and resizes its output (bicubic) to `scale` x the input.
        steps: denoising steps (default per model: 10 DDIM for sr4, 20 for SD x4 with DPM-Solver++,
            50 for LDM).
        device, dtype: "auto" picks cuda > mps > cpu and fp16/bf16 on GPU, fp32 on CPU. The SD x4
            upscaler's VAE always stays fp32 (it overflows in fp16).
        batch_size: tiles per pipeline call (halved on out-of-memory, down to 1; see `engines.backoff`).
        tile, overlap: tile side and overlap in input pixels; larger inputs are tiled and blended
            (default tile: 256 for sr4, 128 otherwise).
        scheduler: "ddim", "dpm++", "euler", "ddpm", "pndm" or None (the pipeline's own).
        eta: DDIM stochasticity (0 = deterministic given the initial noise; > 0 = more diverse variants;
            default 0, for sr4 the preset's).
        prompt, negative_prompt, guidance_scale, noise_level: SD x4 upscaler conditioning
            (guidance_scale <= 1 disables classifier-free guidance and halves the cost).
        strength: sr4 only: the fraction of the reverse process run from the model's one-shot mean
            estimate, in (0, 1] (1 = sample from pure noise: most invented detail, lowest PSNR).
        preset: sr4 only: "fast" (the default: one UNet call), "fidelity" or "diverse" (see
            `sr_augment.sr4.presets`): the defaults of `steps`, `strength` and `eta`; given ones win.
        revision: hub revision to pin.
    """

    def __init__(self, spec: str, *, scale: int | None = None, steps: int | None = None, device: str = "auto",
                 dtype: str = "auto", batch_size: int = 4, tile: int | None = None, overlap: int = DEFAULT_OVERLAP,
                 scheduler: str | None = "default", eta: float | None = None, prompt: str = "",
                 negative_prompt: str | None = None, guidance_scale: float = 1.0, noise_level: int = 20,
                 strength: float | None = None, preset: str | None = None, revision: str | None = None):
        folder, weights = resolve_weights(str(spec), revision)
        class_name = json.loads((folder / "model_index.json").read_text())["_class_name"]
        defaults = _DEFAULTS.get(class_name, _GENERIC_DEFAULTS)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        sampling = {"steps": defaults["steps"], "eta": 0.0}
        if class_name == _SR4_CLASS:
            from sr_augment.sr4.presets import preset_settings

            sampling = preset_settings(preset, str(spec))
        elif preset is not None:
            raise ValueError(f"preset applies to sr4 models only, not to {class_name}")
        self.steps = int(steps if steps is not None else sampling["steps"])
        tile = defaults["tile"] if tile is None else tile
        scheduler = defaults["scheduler"] if scheduler == "default" else scheduler
        if scheduler is not None and scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {', '.join(SCHEDULERS)} or None, got {scheduler!r}")
        if class_name == _SR4_CLASS and scheduler in ("pndm", "euler"):
            raise ValueError(f"sr4 models predict the clean sample, which {scheduler} does not support; use ddim, dpm++ or ddpm")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if batch_size < 1 or tile < 8 or not 0 <= overlap < tile:
            raise ValueError(f"need batch_size >= 1, tile >= 8 and 0 <= overlap < tile; got {batch_size}, {tile}, {overlap}")

        self._folder, self._scheduler_choice = folder, scheduler
        self._pipe = None
        self._load_lock = threading.Lock()
        config = _ComponentConfigs(folder)
        self.class_name = class_name
        self.native_scale = self._native_scale(scale, config)
        self.scale = int(scale) if scale is not None else self.native_scale
        unet_blocks = len(config.component("unet")["block_out_channels"])
        self.multiple = max(8, 2 ** (unet_blocks - 1))
        # sr4 sees its training crop size at least: on much smaller inputs its deepest, attention level
        # would work on 1-2 px maps it never saw, and the output degrades badly (measured: a flat 8x8
        # image came back with values from 3 to 170).
        self.min_side = int(config.component("unet")["sample_size"]) if class_name == _SR4_CLASS else 0
        self.batch_size, self.tile, self.overlap = int(batch_size), int(tile), int(overlap)
        self._backoff = BatchBackoff(self.batch_size)  # shrinks on out-of-memory and stays shrunk
        self.eta = float(sampling["eta"] if eta is None else eta)
        self.prompt, self.negative_prompt = prompt, negative_prompt
        self.guidance_scale, self.noise_level = float(guidance_scale), int(noise_level)
        if class_name == _SD_CLASS and not 0 <= self.noise_level <= config.pipeline.get("max_noise_level", 350):
            raise ValueError(f"noise_level must be in [0, {config.pipeline.get('max_noise_level', 350)}], got {noise_level}")
        self.name = str(spec) if str(spec) in HUB_ALIASES or str(spec) == BUILTIN else Path(str(spec)).name or str(spec)
        scheduler_class = SCHEDULERS[scheduler] if scheduler is not None else config.pipeline["scheduler"][1]
        sampler = {"steps": self.steps, "scheduler": scheduler_class, "eta": self.eta}
        if class_name == _SD_CLASS:
            sampler.update(prompt=prompt, negative_prompt=negative_prompt, guidance_scale=self.guidance_scale,
                           noise_level=self.noise_level)
        if class_name == _SR4_CLASS:
            from sr_augment.sr4.pipeline import check_strength

            self.strength = check_strength(sampling["strength"] if strength is None else strength)
            sampler["strength"] = self.strength
        elif strength is not None:
            raise ValueError(f"strength applies to sr4 models only, not to {class_name}")
        self.fingerprint = make_fingerprint(
            engine="diffusers", pipeline=class_name, weights=weights, dtype=self.dtype, scale=self.scale,
            native_scale=self.native_scale, tile=self.tile, overlap=self.overlap, **sampler,
        )

    def _native_scale(self, requested: int | None, config: _ComponentConfigs) -> int:
        if self.class_name == _SD_CLASS:
            return 2 ** (len(config.component("vae")["block_out_channels"]) - 1)
        if self.class_name == _LDM_CLASS:
            return 2 ** (len(config.component("vqvae")["block_out_channels"]) - 1)
        if self.class_name == _SR4_CLASS:
            return int(config.pipeline["scale"])
        return int(requested or 4)

    # -- the pipeline, loaded on first use -----------------------------------------------------------------
    @property
    def pipe(self):
        """The diffusers pipeline, loaded on first use: everything the fingerprint names comes from the
        pipeline's JSON configs, so a warm cache (every request a hit) never loads the model."""
        with self._load_lock:
            if self._pipe is None:
                self._pipe = self._load_pipeline()
            return self._pipe

    def _load_pipeline(self):
        import torch
        from diffusers import DiffusionPipeline

        folder, scheduler, class_name = self._folder, self._scheduler_choice, self.class_name
        dtype_kw = {dtype_keyword(): getattr(torch, self.dtype)}
        extra = {}
        if class_name == _SD_CLASS:
            extra = {"safety_checker": None, "watermarker": None, "feature_extractor": None}
            if self.dtype != "float32":  # the x4 upscaler's VAE overflows in fp16: load it in fp32
                from diffusers import AutoencoderKL

                extra["vae"] = AutoencoderKL.from_pretrained(folder, subfolder="vae", **{dtype_keyword(): torch.float32})
        pipeline_cls = DiffusionPipeline
        if class_name == _SR4_CLASS:
            from sr_augment.sr4.pipeline import SR4Pipeline as pipeline_cls
        pipe = pipeline_cls.from_pretrained(folder, **dtype_kw, **extra)
        if scheduler is not None:
            import diffusers

            scheduler_cls = getattr(diffusers, SCHEDULERS[scheduler])
            pipe.scheduler = scheduler_cls.from_config(pipe.scheduler.config)
        pipe.to(self.device)
        pipe.set_progress_bar_config(disable=True)

        return pipe

    def __repr__(self) -> str:
        return (f"DiffusersEngine({self.name!r}, {self.class_name}, scale={self.scale}, steps={self.steps}, "
                f"device={self.device!r}, dtype={self.dtype!r})")

    # -- the Engine contract ---------------------------------------------------------------------------
    def upscale(self, images: Sequence[np.ndarray], seeds: Sequence[int]) -> list[np.ndarray]:
        check_batch(images, seeds)
        return upscale_to_scale(images, seeds, self._run_fitting, native_scale=self.native_scale, scale=self.scale,
                                tile=self.tile, overlap=self.overlap, multiple=self.multiple,
                                batch_size=self.batch_size, min_side=self.min_side)

    # -- pipeline calls ----------------------------------------------------------------------------------
    def _run_fitting(self, batch: list[np.ndarray], seeds: list[int]) -> list[np.ndarray]:
        """`_run` in batches that fit in memory (see `engines.backoff`)."""
        return self._backoff.run(self._run, batch, seeds, tile_description(self))

    def _run(self, batch: list[np.ndarray], seeds: list[int]) -> list[np.ndarray]:
        import torch

        generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
        with torch.inference_mode():
            if self.class_name == _SD_CLASS:
                out = self.pipe(
                    prompt=[self.prompt] * len(batch),
                    negative_prompt=None if self.negative_prompt is None else [self.negative_prompt] * len(batch),
                    image=[Image.fromarray(b) for b in batch], num_inference_steps=self.steps,
                    guidance_scale=self.guidance_scale, noise_level=self.noise_level, eta=self.eta,
                    generator=generators, output_type="np",
                ).images
            elif self.class_name == _LDM_CLASS:
                out = self._run_ldm(batch, generators)
            elif self.class_name == _SR4_CLASS:
                out = self.pipe(image=np.stack(batch), num_inference_steps=self.steps, eta=self.eta,
                                strength=self.strength, generator=generators, output_type="np").images
            else:
                out = self.pipe(image=[Image.fromarray(b) for b in batch], num_inference_steps=self.steps,
                                generator=generators, output_type="np").images
        out = np.asarray(out, dtype=np.float32)
        expected = (batch[0].shape[0] * self.native_scale, batch[0].shape[1] * self.native_scale)
        if out.shape[1:3] != expected:
            raise RuntimeError(
                f"{self.name}: pipeline returned {out.shape[1:3]} for a {batch[0].shape[:2]} input, expected "
                f"{expected}; pass the model's scale with scale=N"
            )
        return [np.clip(np.rint(o * 255.0), 0, 255).astype(np.uint8) for o in out]

    def _run_ldm(self, batch: list[np.ndarray], generators) -> np.ndarray:
        """The LDM SR sampling loop with per-image noise.

        diffusers' `LDMSuperResolutionPipeline.__call__` draws DDIM's eta noise from the global RNG,
        so with eta > 0 an image's output would depend on its batch-mates; this loop is the same
        algorithm with the eta noise drawn from each image's own generator.
        """
        import torch
        from diffusers.utils.torch_utils import randn_tensor

        pipe, scheduler = self.pipe, self.pipe.scheduler
        dtype = next(pipe.unet.parameters()).dtype
        image = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).to(pipe.device, dtype) / 127.5 - 1.0
        shape = (len(batch), pipe.unet.config.in_channels // 2, *image.shape[-2:])
        latents = randn_tensor(shape, generator=generators, device=pipe.device, dtype=dtype)
        scheduler.set_timesteps(self.steps, device=pipe.device)
        latents = latents * scheduler.init_noise_sigma
        step_params = set(inspect.signature(scheduler.step).parameters)
        for t in scheduler.timesteps:
            model_input = scheduler.scale_model_input(torch.cat([latents, image], dim=1), t)
            noise_pred = pipe.unet(model_input, t).sample
            kwargs = (eta_step_kwargs(step_params, self.eta, generators, latents.shape, pipe.device, dtype)
                      if "eta" in step_params else {})
            latents = scheduler.step(noise_pred, t, latents, **kwargs).prev_sample
        decoded = pipe.vqvae.decode(latents).sample
        return ((torch.clamp(decoded, -1.0, 1.0) + 1.0) / 2.0).float().permute(0, 2, 3, 1).cpu().numpy()


def dtype_keyword() -> str:
    """The keyword `from_pretrained` takes a torch dtype by: `dtype` on diffusers that deprecate `torch_dtype` (0.36+),
    else `torch_dtype`."""
    from diffusers.utils import deprecation_utils

    return "dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype"

