"""SR quality metrics on the luma channel, the protocol of the SR literature (and of the seed thesis).

Images are uint8 RGB arrays; PSNR and SSIM are computed on BT.601 Y (the values MATLAB's `rgb2ycbcr`
gives) with `shave` border pixels dropped, as SR papers do (usually shave = scale). scikit-image does
the arithmetic.
"""

from __future__ import annotations

import math

import numpy as np


def rgb_to_y(image: np.ndarray) -> np.ndarray:
    """BT.601 luma in [16, 235] as float64 (grayscale (H, W) input is returned as float)."""
    image = np.asarray(image, dtype=np.float64)
    if image.ndim == 2:
        return image
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
    return 16.0 + image @ np.array([65.481, 128.553, 24.966]) / 255.0


def _pair(sr: np.ndarray, hr: np.ndarray, shave: int) -> tuple[np.ndarray, np.ndarray]:
    if sr.shape != hr.shape:
        raise ValueError(f"SR {sr.shape} and HR {hr.shape} differ in shape")
    ys, yh = rgb_to_y(sr), rgb_to_y(hr)
    if shave:
        if min(ys.shape[:2]) <= 2 * shave:
            raise ValueError(f"image {ys.shape[:2]} is too small to shave {shave} border pixels")
        ys, yh = ys[shave:-shave, shave:-shave], yh[shave:-shave, shave:-shave]
    return ys, yh


def psnr_y(sr: np.ndarray, hr: np.ndarray, shave: int = 0) -> float:
    """Y-channel PSNR in dB (data range 255); `inf` for identical images."""
    from skimage.metrics import peak_signal_noise_ratio

    ys, yh = _pair(sr, hr, shave)
    if np.array_equal(ys, yh):
        return math.inf
    return float(peak_signal_noise_ratio(yh, ys, data_range=255.0))


def ssim_y(sr: np.ndarray, hr: np.ndarray, shave: int = 0) -> float:
    """Y-channel SSIM with the Gaussian window of Wang et al. (sigma 1.5, population covariance)."""
    from skimage.metrics import structural_similarity

    ys, yh = _pair(sr, hr, shave)
    return float(structural_similarity(yh, ys, data_range=255.0, gaussian_weights=True, sigma=1.5,
                                       use_sample_covariance=False))


def gradient_magnitude(image: np.ndarray, shave: int = 0) -> float:
    """Mean Sobel gradient magnitude of Y: a sharpness measure (SR / HR near 1.0 = as sharp as HR)."""
    from skimage.filters import sobel

    y = rgb_to_y(image) / 255.0
    if shave:
        y = y[shave:-shave, shave:-shave]
    return float(sobel(y).mean())


def variant_spread(variants, shave: int = 0) -> dict[str, float]:
    """How much the variants (SR samples of one input: uint8 RGB arrays of one shape) differ, in 0-255 units.

    `pair_mad`: the mean absolute pixel difference of two variants, averaged over every pair; `pixel_std`:
    the standard deviation of each pixel value across the variants (population, ddof 0), averaged over
    pixels and channels. Both 0 for identical variants; `shave` border pixels are dropped first.
    """
    import itertools

    stack = np.stack([np.asarray(v) for v in variants]).astype(np.float64)
    if stack.shape[0] < 2:
        raise ValueError(f"the spread between variants needs at least 2 of them, got {stack.shape[0]}")
    if stack.ndim != 4 or stack.shape[-1] != 3:
        raise ValueError(f"expected (H, W, 3) RGB variants of one shape, got {stack.shape[1:]}")
    if shave:
        if min(stack.shape[1:3]) <= 2 * shave:
            raise ValueError(f"image {stack.shape[1:3]} is too small to shave {shave} border pixels")
        stack = stack[:, shave:-shave, shave:-shave]
    pairs = [np.abs(a - b).mean() for a, b in itertools.combinations(stack, 2)]
    return {"pair_mad": float(np.mean(pairs)), "pixel_std": float(stack.std(axis=0).mean())}
