"""bf16 on the CPU: the SD x4 upscaler's UNet runs in bf16 while its VAE stays fp32 (it overflows in half
precision), and the image still decodes correctly: finite, and close to the fp32 engine's on the same seed.

What a GPU run would use ("auto" picks bf16 on CUDA) is checked here on the CPU with the tiny pipeline of
tests/tiny_pipelines.py; GPU speed lives in bench/bench_gpu.py.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="bf16 engines need torch: pip install 'sr-augment[diffusion]'")
pytest.importorskip("diffusers", reason="the SD x4 engine needs diffusers: pip install 'sr-augment[diffusion]'")

from sr_augment import get_engine  # noqa: E402

pytestmark = pytest.mark.slow  # tiny diffusion pipelines in two dtypes

# Measured on the tiny pipeline, 16x16 -> 64x64, 1 step, seed 0, 5 random images (torch 2.14, CPU): bf16 vs fp32
# differ by 0.55-0.58 grey levels on average and 4-6 at most, while seed 1 instead of 0 moves the fp32 output by
# about 42 on average.
MEAN_TOLERANCE = 2.0
MAX_TOLERANCE = 16


def _bf16_works_on_this_cpu() -> str | None:
    """None, or why this torch cannot run the UNet's ops in bf16 on the CPU."""
    try:
        x = torch.randn(1, 8, 8, 8, dtype=torch.bfloat16)
        y = torch.nn.functional.conv2d(x, torch.randn(8, 8, 3, 3, dtype=torch.bfloat16), padding=1)
        y = torch.nn.functional.group_norm(y, 4)
        q = y.flatten(2).transpose(1, 2)[:, None]
        torch.nn.functional.scaled_dot_product_attention(q, q, q)
    except RuntimeError as exc:
        return f"torch {torch.__version__} cannot run conv2d / group_norm / SDPA in bf16 on this CPU: {exc}"
    return None


@pytest.fixture(scope="module")
def engines(tiny_sd_dir):
    reason = _bf16_works_on_this_cpu()
    if reason:
        pytest.skip(reason)
    return (get_engine(tiny_sd_dir, dtype="bf16", device="cpu", steps=1),
            get_engine(tiny_sd_dir, dtype="fp32", device="cpu", steps=1))


def test_the_unet_is_bf16_and_the_vae_fp32_and_the_decoder_gets_fp32_latents(engines, rng):
    bf16, _ = engines
    assert bf16.pipe.unet.dtype == torch.bfloat16
    assert bf16.pipe.vae.dtype == torch.float32
    seen = {}
    hooks = [bf16.pipe.vae.post_quant_conv.register_forward_hook(lambda m, args, out: seen.update(latents=args[0])),
             bf16.pipe.vae.decoder.register_forward_hook(lambda m, args, out: seen.update(decoded=out))]
    try:
        out = bf16.upscale([rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)], seeds=[0])[0]
    finally:
        for hook in hooks:
            hook.remove()
    assert seen["latents"].dtype == torch.float32 and seen["decoded"].dtype == torch.float32
    assert torch.isfinite(seen["decoded"]).all()
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8 and out.std() > 5  # an image, not a flat fill


def test_bf16_output_is_close_to_the_fp32_output_on_the_same_seed(engines, rng):
    bf16, fp32 = engines
    image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    low = bf16.upscale([image], seeds=[0])[0].astype(int)
    full = fp32.upscale([image], seeds=[0])[0].astype(int)
    other_seed = fp32.upscale([image], seeds=[1])[0].astype(int)
    diff = np.abs(low - full)
    assert diff.mean() <= MEAN_TOLERANCE and diff.max() <= MAX_TOLERANCE, (diff.mean(), diff.max())
    assert np.abs(other_seed - full).mean() > 10 * diff.mean()  # the tolerance is far below what a seed changes
