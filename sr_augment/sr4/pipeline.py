"""`SR4Pipeline`: the built-in pixel-space diffusion SR model as a diffusers pipeline.

The "SR4" recipe: SR3-style conditional diffusion that predicts the residual HR - bicubic(LR) instead of
the HR image, with a cosine noise schedule. The UNet runs at LR resolution on pixel-unshuffled tensors
(scale^2 * 3 channels of noisy residual + as many of the bicubic upsample), the way the SD x4 upscaler
runs its UNet at LR size, which makes it scale^2 times cheaper than a UNet at HR size.

It saves and loads like any diffusers pipeline (`save_pretrained` / `SR4Pipeline.from_pretrained`);
`model_index.json` also records the scale and the residual normalisation.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import numpy as np
import torch
from diffusers import DDIMScheduler, DiffusionPipeline, ImagePipelineOutput, UNet2DModel
from diffusers.utils.torch_utils import randn_tensor

from sr_augment.ddim_noise import eta_step_kwargs
from sr_augment.sr4.ops import condition, unet_to_residual, upsample
from sr_augment.sr4.presets import DEFAULT_PRESET, PRESETS

DEFAULT_STEPS = PRESETS[DEFAULT_PRESET]["steps"]
"""Sampling steps used when none are given: few, because the trailing DDIM schedule ends on x0."""
DEFAULT_STRENGTH = PRESETS[DEFAULT_PRESET]["strength"]
"""Fraction of the reverse process run by default (see `SR4Pipeline.__call__`): chosen on the photos
held out of training as the largest strength within 0.05 dB of the best PSNR there. Other settings:
`sr_augment.sr4.presets`."""


def check_strength(strength: float) -> float:
    """`strength` as a float, or a ValueError when it is outside (0, 1]."""
    if not 0.0 < float(strength) <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    return float(strength)


def build_unet(scale: int = 4, channels: Sequence[int] = (64, 128, 128), layers_per_block: int = 1,
               sample_size: int = 32) -> UNet2DModel:
    """The sr4 denoiser: attention only at the lowest resolution, where it is cheap."""
    planes = 3 * scale * scale
    levels = len(channels)
    return UNet2DModel(
        sample_size=sample_size, in_channels=2 * planes, out_channels=planes,
        block_out_channels=tuple(channels), layers_per_block=layers_per_block,
        down_block_types=("DownBlock2D",) * (levels - 1) + ("AttnDownBlock2D",),
        up_block_types=("AttnUpBlock2D",) + ("UpBlock2D",) * (levels - 1),
    )


def build_scheduler() -> DDIMScheduler:
    """Cosine schedule, x0 ("sample") prediction; trailing spacing so sampling starts at pure noise."""
    return DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="sample",
                         clip_sample=False, set_alpha_to_one=True, timestep_spacing="trailing")


class SR4Pipeline(DiffusionPipeline):
    """Residual diffusion SR over bicubic.

    Args:
        unet: the denoiser built by `build_unet`.
        scheduler: a DDIM-family scheduler with `prediction_type="sample"`.
        scale: the upscaling factor the model was trained for.
        residual_scale: the residual is divided by this during training (unit scale for diffusion).
    """

    model_cpu_offload_seq = "unet"

    def __init__(self, unet: UNet2DModel, scheduler: DDIMScheduler, scale: int = 4, residual_scale: float = 0.1):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)
        self.register_to_config(scale=int(scale), residual_scale=float(residual_scale))
        expected = 3 * scale * scale
        if unet.config.out_channels != expected or unet.config.in_channels != 2 * expected:
            raise ValueError(
                f"UNet channels ({unet.config.in_channels} in, {unet.config.out_channels} out) do not match "
                f"scale {scale} (expected {2 * expected} in, {expected} out)"
            )

    @property
    def multiple(self) -> int:
        """LR sides must be multiples of this (the UNet downsamples len(blocks) - 1 times)."""
        return 2 ** (len(self.unet.config.block_out_channels) - 1)

    @torch.no_grad()
    def __call__(self, image, num_inference_steps: int = DEFAULT_STEPS, eta: float = 0.0,
                 strength: float = DEFAULT_STRENGTH, generator=None, output_type: str = "np", return_dict: bool = True):
        """Super-resolve a batch.

        Args:
            image: LR images: a uint8 array (H, W, 3), a list of them (same size), or a float tensor
                (B, 3, H, W) in [0, 1]. H and W must be multiples of `self.multiple`.
            num_inference_steps: DDIM steps (1 = the model's one-shot estimate of the mean).
            eta: 0 = deterministic given the initial noise; > 0 adds fresh noise at every step (for
                the built-in model, measured: less spread between seeds than 0 at the same strength).
            strength: how much of the reverse process to run, in (0, 1]. 1 samples from pure noise
                (a posterior sample: the most invented detail, the lowest PSNR); below 1, the model's
                one-shot estimate from pure noise (close to the conditional mean, the highest PSNR) is
                noised to the timestep `strength` of the way along the schedule and refined from there
                (the last `round(steps * strength)` steps): lower = closer to the mean.
            generator: a `torch.Generator` or one per image (per-image generators make an image's
                output independent of its batch-mates).
            output_type: "np" (float (B, H*s, W*s, 3) in [0, 1]) or "pt" (float (B, 3, H*s, W*s)).
        """
        scale, residual_scale = self.config.scale, self.config.residual_scale
        lr = self._as_tensor(image)
        if lr.shape[-2] % self.multiple or lr.shape[-1] % self.multiple:
            raise ValueError(f"LR size {tuple(lr.shape[-2:])} must be a multiple of {self.multiple}; pad it first")
        dtype = self.unet.dtype
        up = upsample(lr.float(), scale)
        cond = condition(up, scale).to(dtype)
        shape = (lr.shape[0], 3 * scale * scale, *lr.shape[-2:])
        sample = randn_tensor(shape, generator=generator, device=self.device, dtype=dtype) * self.scheduler.init_noise_sigma
        strength = check_strength(strength)
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        timesteps = self.scheduler.timesteps
        if strength < 1.0:
            first = timesteps[:1].expand(lr.shape[0])
            model_input = self.scheduler.scale_model_input(sample, timesteps[0])
            mean = self.unet(torch.cat([model_input, cond], dim=1), first).sample
            keep = max(1, round(num_inference_steps * strength))
            timesteps = timesteps[-keep:]
            if hasattr(self.scheduler, "set_begin_index"):
                self.scheduler.set_begin_index(len(self.scheduler.timesteps) - keep)
            noise = randn_tensor(shape, generator=generator, device=self.device, dtype=dtype)
            sample = self.scheduler.add_noise(mean, noise, timesteps[:1].expand(lr.shape[0]))
        step_params = set(inspect.signature(self.scheduler.step).parameters)
        for t in self.progress_bar(timesteps):
            model_input = self.scheduler.scale_model_input(sample, t)
            prediction = self.unet(torch.cat([model_input, cond], dim=1), t).sample
            if "eta" in step_params:  # DDIM: eta noise drawn from each image's own generator
                kwargs = eta_step_kwargs(step_params, eta, generator, shape, self.device, dtype)
            else:
                kwargs = {"generator": generator} if "generator" in step_params else {}
            sample = self.scheduler.step(prediction, t, sample, **kwargs).prev_sample
        result = (up + unet_to_residual(sample.float(), scale, residual_scale)).clamp(0.0, 1.0)
        if output_type == "np":
            result = result.permute(0, 2, 3, 1).cpu().numpy()
        elif output_type != "pt":
            raise ValueError(f"output_type must be 'np' or 'pt', got {output_type!r}")
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=result) if return_dict else (result,)

    def _as_tensor(self, image) -> torch.Tensor:
        if isinstance(image, torch.Tensor):
            tensor = image if image.ndim == 4 else image[None]
            if not tensor.is_floating_point():
                raise ValueError(f"tensor images must be float in [0, 1], got {tensor.dtype}")
            if tensor.numel() and (tensor.min() < 0 or tensor.max() > 1):
                raise ValueError("tensor images must be float in [0, 1]; got values outside it")
        else:
            arrays = [image] if isinstance(image, np.ndarray) and image.ndim == 3 else list(image)
            if not arrays:
                raise ValueError("image is empty")
            batch = np.stack([np.asarray(a) for a in arrays])
            if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[-1] != 3:
                raise ValueError(f"expected uint8 (H, W, 3) images, got {batch.dtype} {batch.shape[1:]}")
            tensor = torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255.0
        if tensor.ndim != 4 or tensor.shape[1] != 3:
            raise ValueError(f"expected (B, 3, H, W) images, got shape {tuple(tensor.shape)}")
        return tensor.to(self.device, torch.float32)
