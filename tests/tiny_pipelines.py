"""Tiny, randomly initialised diffusers super-resolution pipelines for tests.

The test suite never downloads anything: there is no Hugging Face hub access in
CI (or anywhere tests run).  Instead these helpers build miniature versions of
the real pipelines purely from configs, with seeded (hence deterministic)
random weights, and write them to disk with ``save_pretrained``.  Tests then
load them back through ``DiffusionPipeline.from_pretrained(path)`` -- the very
same loading code that users hit with real checkpoints -- so model-index
parsing, component loading and the pipelines' ``__call__`` are all exercised,
only on models small enough to run on a CPU in well under a second.

The outputs are noise, of course; only shapes, dtypes, determinism and
plumbing are meaningful.  Both pipelines upscale by 4x.
"""

from __future__ import annotations

import json
import pathlib
import tempfile

import torch

__all__ = ["build_tiny_sd_upscaler", "build_tiny_ldm_sr"]

_SEED = 0


def _byte_level_chars() -> list[str]:
    """The 256 printable stand-ins GPT-2/CLIP byte-level BPE uses for bytes."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def _tiny_clip_tokenizer():
    """A CLIPTokenizer with a 514-token character-level vocab and no merges.

    Built from files written to a temporary directory, loaded with
    ``from_pretrained(local_dir)``, which works with transformers 4 and 5 alike
    (in 5, ``CLIPTokenizer(vocab_file=..., merges_file=...)`` silently ignores
    the files and yields a 2-token vocab).
    Ids: 256 byte chars (0-255), their ``</w>`` forms (256-511), then
    ``<|startoftext|>`` = 512 and ``<|endoftext|>`` = 513 (also pad/unk).
    """
    from transformers import CLIPTokenizer

    chars = _byte_level_chars()
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        (tmp / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
        (tmp / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
        tokenizer = CLIPTokenizer.from_pretrained(tmp, model_max_length=77)
    return tokenizer


def _seeded(factory):
    """Build a model with torch's global RNG seeded, without disturbing it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        return factory()


def build_tiny_sd_upscaler(path) -> pathlib.Path:
    """Save a tiny ``StableDiffusionUpscalePipeline`` (x4) to ``path``; return it.

    Modelled on diffusers' fast test for the SD x4 upscaler.  Input height and
    width should be multiples of 4 (the image processor rounds them down).
    """
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        DDPMScheduler,
        StableDiffusionUpscalePipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    path = pathlib.Path(path)
    tokenizer = _tiny_clip_tokenizer()
    unet = _seeded(
        lambda: UNet2DConditionModel(
            block_out_channels=(32, 32, 64),
            layers_per_block=2,
            sample_size=32,
            in_channels=7,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=8,
            use_linear_projection=True,
            only_cross_attention=(True, True, False),
            num_class_embeds=100,
        )
    )
    vae = _seeded(
        lambda: AutoencoderKL(
            block_out_channels=[32, 32, 64],
            in_channels=3,
            out_channels=3,
            down_block_types=["DownEncoderBlock2D"] * 3,
            up_block_types=["UpDecoderBlock2D"] * 3,
            latent_channels=4,
            scaling_factor=0.08333,  # what the upscale pipeline insists on
        )
    )
    text_config = CLIPTextConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_size=32,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=5,
        vocab_size=1000,
        hidden_act="gelu",
        projection_dim=512,
        max_position_embeddings=tokenizer.model_max_length,
    )
    assert len(tokenizer) <= text_config.vocab_size
    text_encoder = _seeded(lambda: CLIPTextModel(text_config))

    pipe = StableDiffusionUpscalePipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        low_res_scheduler=DDPMScheduler(),
        scheduler=DDIMScheduler(prediction_type="v_prediction"),
        safety_checker=None,
        watermarker=None,
        feature_extractor=None,
        max_noise_level=350,
    )
    pipe.save_pretrained(path, safe_serialization=True)
    return path


def build_tiny_ldm_sr(path) -> pathlib.Path:
    """Save a tiny ``LDMSuperResolutionPipeline`` (x4) to ``path``; return it.

    Modelled on diffusers' fast LDM super-resolution test, but with a
    three-block VQModel so that decoding upsamples by 4 like the real
    ``CompVis/ldm-super-resolution-4x-openimages``.
    """
    from diffusers import DDIMScheduler, LDMSuperResolutionPipeline, UNet2DModel, VQModel

    path = pathlib.Path(path)
    unet = _seeded(
        lambda: UNet2DModel(
            block_out_channels=(32, 64),
            layers_per_block=2,
            sample_size=32,
            in_channels=6,
            out_channels=3,
            down_block_types=("DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        )
    )
    vqvae = _seeded(
        lambda: VQModel(
            block_out_channels=[32, 32, 64],
            in_channels=3,
            out_channels=3,
            down_block_types=["DownEncoderBlock2D"] * 3,
            up_block_types=["UpDecoderBlock2D"] * 3,
            latent_channels=3,
        )
    )
    pipe = LDMSuperResolutionPipeline(vqvae=vqvae, unet=unet, scheduler=DDIMScheduler())
    pipe.save_pretrained(path, safe_serialization=True)
    return path
