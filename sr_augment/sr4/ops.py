"""Tensor operations shared by sr4 training and sampling, so both see exactly the same degradation.

All images here are float tensors in [0, 1], shaped (batch, 3, height, width).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def degrade(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """HR -> LR the way the benchmarks do it: antialiased bicubic downscale, then 8-bit quantisation.

    torch's antialiased bicubic follows Pillow's `resize(BICUBIC)`; quantising to 1/255 steps makes the
    training inputs look like the uint8 images the model sees at inference.
    """
    height, width = hr.shape[-2:]
    if height % scale or width % scale:
        raise ValueError(f"HR size {height}x{width} is not a multiple of the scale {scale}")
    lr = F.interpolate(hr, size=(height // scale, width // scale), mode="bicubic", antialias=True, align_corners=False)
    return torch.round(lr.clamp(0.0, 1.0) * 255.0) / 255.0


def upsample(lr: torch.Tensor, scale: int) -> torch.Tensor:
    """The bicubic upsample the model refines (its prediction is a residual over this)."""
    return F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False).clamp(0.0, 1.0)


def condition(up: torch.Tensor, scale: int) -> torch.Tensor:
    """The UNet's conditioning: the bicubic upsample, pixel-unshuffled to LR size, in [-1, 1]."""
    return F.pixel_unshuffle(up * 2.0 - 1.0, scale)


def residual_to_unet(residual: torch.Tensor, scale: int, residual_scale: float) -> torch.Tensor:
    """HR - bicubic at HR size -> the diffusion variable: unit-scale, pixel-unshuffled to LR size."""
    return F.pixel_unshuffle(residual / residual_scale, scale)


def unet_to_residual(sample: torch.Tensor, scale: int, residual_scale: float) -> torch.Tensor:
    """Inverse of `residual_to_unet`."""
    return F.pixel_shuffle(sample, scale) * residual_scale
