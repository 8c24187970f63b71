"""GPU speed: the naive diffusers call against sr-augment's defaults, side by side in one run.

    python bench/bench_gpu.py [--compile] [--images 3] [--batches 2]     # on a CUDA machine
    python bench/bench_gpu.py --tiny                                        # CPU smoke test

Why: the thesis this library answers spent 230.5 T4 GPU-hours on 3,327 images; this script measures how
much of that the engine's settings save. It builds the full-size SD x4 upscaler and the OSEDiff architecture
(Stable Diffusion 2.1-base, one step) from their published configs (written below as dicts) with random
weights, so nothing is downloaded: speed and memory depend on the architecture, not on the weights.
For each model and 128 -> 512 it prints images/s, peak GPU memory, the speed-up over the naive row and the
projected time for the thesis job (3,327 images):
- SD x4 naive: `StableDiffusionUpscalePipeline.from_pretrained(dir)` in fp32, `pipe(prompt="", image=img)`,
  batch 1, the pipeline's defaults (75 steps, guidance_scale 9: classifier-free guidance doubles each call);
- OSEDiff naive: the authors' settings, fp32, batch 1 (the LoRA is merged in both rows);
- sr-augment: `get_engine(dir)` as shipped (bf16 where supported, else fp16; batch 4; SD x4: 20 DPM-Solver++
  steps, no guidance; attention through PyTorch SDPA, diffusers' default), then the same with the UNet and VAE
  in channels_last, then (`--compile`) also with the UNet under `torch.compile`.
`--tiny` runs tiny configs at 8 -> 32 (batch 2) with 2 naive steps and 1 engine step on the CPU: a smoke test of the
code paths, NOT GPU numbers. Without CUDA and without --tiny the script exits with a message.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # tiny_pipelines: the offline CLIP tokenizer of the tests

import numpy as np  # noqa: E402
import torch  # noqa: E402  (before anything that might import tensorflow)

THESIS_IMAGES = 3327
THESIS_T4_HOURS = 230.5

# Published configs (Hugging Face model repos stabilityai/stable-diffusion-x4-upscaler and
# stabilityai/stable-diffusion-2-1-base, */config.json), written from knowledge of those files and checked by
# parameter count: SD 2.1 UNet 865,910,724, OpenCLIP-ViT-H text encoder 340,387,840, x4 UNet 473,398,020.
_COMMON_UNET = dict(act_fn="silu", center_input_sample=False, cross_attention_dim=1024, downsample_padding=1,
                    flip_sin_to_cos=True, freq_shift=0, layers_per_block=2, mid_block_scale_factor=1, norm_eps=1e-5,
                    norm_num_groups=32, out_channels=4, use_linear_projection=True)
_TEXT = dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=23, projection_dim=512,
             hidden_act="gelu", vocab_size=49408)
FULL = {
    "sd-x4": {
        "unet": dict(_COMMON_UNET, attention_head_dim=8, block_out_channels=[256, 512, 512, 1024], in_channels=7,
                     down_block_types=["DownBlock2D"] + ["CrossAttnDownBlock2D"] * 3, num_class_embeds=1000,
                     up_block_types=["CrossAttnUpBlock2D"] * 3 + ["UpBlock2D"], only_cross_attention=[True, True, True, False],
                     sample_size=128),
        "vae": dict(block_out_channels=[128, 256, 512], down_block_types=["DownEncoderBlock2D"] * 3, latent_channels=4,
                    up_block_types=["UpDecoderBlock2D"] * 3, layers_per_block=2, sample_size=256, scaling_factor=0.08333),
        "text": _TEXT,
    },
    "osediff": {  # SD 2.1-base
        "unet": dict(_COMMON_UNET, attention_head_dim=[5, 10, 20, 20], block_out_channels=[320, 640, 1280, 1280], in_channels=4,
                     down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
                     up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3, sample_size=64),
        "vae": dict(block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4, latent_channels=4,
                    up_block_types=["UpDecoderBlock2D"] * 4, layers_per_block=2, sample_size=512, scaling_factor=0.18215),
        "text": _TEXT,
    },
}
_TINY_TEXT = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, vocab_size=1000)
TINY = {  # the shapes of tests/tiny_pipelines.py and tests/test_onestep_engine.py
    "sd-x4": {
        "unet": dict(block_out_channels=[32, 32, 64], layers_per_block=2, sample_size=32, in_channels=7, out_channels=4,
                     down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                     up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], cross_attention_dim=32,
                     attention_head_dim=8, use_linear_projection=True, only_cross_attention=[True, True, False],
                     num_class_embeds=100),
        "vae": dict(block_out_channels=[32, 32, 64], down_block_types=["DownEncoderBlock2D"] * 3,
                    up_block_types=["UpDecoderBlock2D"] * 3, latent_channels=4, scaling_factor=0.08333),
        "text": _TINY_TEXT,
    },
    "osediff": {
        "unet": dict(block_out_channels=[16, 32], layers_per_block=1, norm_num_groups=8, sample_size=8, in_channels=4,
                     out_channels=4, down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
                     up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"], cross_attention_dim=32, attention_head_dim=4,
                     use_linear_projection=True),
        "vae": dict(block_out_channels=[16, 16, 32, 32], norm_num_groups=8, layers_per_block=1, latent_channels=4,
                    down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4, scaling_factor=0.18215),
        "text": _TINY_TEXT,
    },
}


def build_models(configs: dict, device: str):
    """(unet, vae, text encoder, tokenizer) with seeded random weights, initialised on `device` (fast on a GPU)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from tiny_pipelines import _tiny_clip_tokenizer

    tokenizer = _tiny_clip_tokenizer()  # character-level, 514 tokens: the prompt is "" anyway
    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel(**configs["unet"])
        vae = AutoencoderKL(**configs["vae"])
        text = CLIPTextModel(CLIPTextConfig(**configs["text"], bos_token_id=tokenizer.bos_token_id, max_position_embeddings=77,
                                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    return unet, vae, text, tokenizer


def save_sd_x4(folder: Path, configs: dict, device: str) -> Path:
    from diffusers import DDIMScheduler, DDPMScheduler, StableDiffusionUpscalePipeline

    unet, vae, text, tokenizer = build_models(configs, device)
    betas = dict(beta_start=0.0001, beta_end=0.02, beta_schedule="scaled_linear")  # the x4 upscaler's schedulers
    StableDiffusionUpscalePipeline(
        vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, low_res_scheduler=DDPMScheduler(**betas),
        scheduler=DDIMScheduler(**betas, prediction_type="v_prediction", clip_sample=False, set_alpha_to_one=False,
                                steps_offset=1),
        safety_checker=None, watermarker=None, feature_extractor=None, max_noise_level=350,
    ).save_pretrained(folder, safe_serialization=True)
    return folder


def save_osediff(folder: Path, configs: dict, device: str) -> tuple[Path, Path]:
    """An SD 2.1-base folder and an osediff.pkl in the authors' layout (rank-4 LoRA on the attention projections
    and on the VAE encoder's convolutions; merged at load time, so its targets do not change the speed)."""
    from diffusers import DDPMScheduler, StableDiffusionPipeline
    from peft import LoraConfig

    unet, vae, text, tokenizer = build_models(configs, device)
    StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, safety_checker=None,
                            feature_extractor=None, requires_safety_checker=False,
                            scheduler=DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                                    clip_sample=False, steps_offset=1),
                            ).save_pretrained(folder / "base", safe_serialization=True)
    groups = {"encoder": [], "decoder": [], "others": []}
    for name, _ in unet.named_modules():
        if name.endswith(("to_q", "to_k", "to_v", "to_out.0")):
            groups["encoder" if "down_blocks" in name else "decoder" if "up_blocks" in name else "others"].append(name)
    for part, modules in groups.items():
        unet.add_adapter(LoraConfig(r=4, init_lora_weights="gaussian", target_modules=modules), adapter_name=f"default_{part}")
    vae_modules = [n for n, _ in vae.named_modules() if n.startswith("encoder.") and n.endswith(("conv1", "conv2"))]
    vae.add_adapter(LoraConfig(r=4, init_lora_weights="gaussian", target_modules=vae_modules), adapter_name="default_encoder")
    saved = {"unet_lora_encoder_modules": groups["encoder"], "unet_lora_decoder_modules": groups["decoder"],
             "unet_lora_others_modules": groups["others"], "vae_lora_encoder_modules": vae_modules,
             "rank_unet": 4, "rank_vae": 4,
             "state_dict_unet": {k: v.cpu() for k, v in unet.state_dict().items() if "lora" in k or "conv_in" in k},
             "state_dict_vae": {k: v.cpu() for k, v in vae.state_dict().items() if "lora" in k}}
    torch.save(saved, folder / "osediff.pkl")
    return folder / "base", folder / "osediff.pkl"


def _modules(engine) -> dict:
    """The engine's loaded torch modules (loading them): the diffusers pipeline's, or the one-step engine's."""
    if hasattr(engine, "pipe"):
        return {"unet": engine.pipe.unet, "vae": engine.pipe.vae}
    return {"unet": engine.models["unet"], "vae": engine.models["vae"]}


def tune(engine, channels_last: bool, compile_unet: bool):
    """Bench-only settings on top of the engine (it sets neither itself)."""
    mods = _modules(engine)
    if channels_last:
        for module in mods.values():
            module.to(memory_format=torch.channels_last)
    if compile_unet:
        compiled = torch.compile(mods["unet"])
        if hasattr(engine, "pipe"):
            engine.pipe.unet = compiled
        else:
            engine.models["unet"] = compiled
    return engine


def attention_backend(engine) -> str:
    processors = {type(p).__name__ for p in _modules(engine)["unet"].attn_processors.values()}
    return ", ".join(sorted(processors))


def measure(label: str, setup, images: list[np.ndarray], per_call: int, repeats: int, device: str) -> dict:
    """Load (setup() -> a function of a list of images), one warm-up call, then `repeats` timed calls of
    `per_call` images each; peak GPU memory over all of it (weights included)."""
    cuda = device.startswith("cuda")
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    run, detail = setup()
    run(images[:per_call])
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        run(images[:per_call])
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2 ** 30 if cuda else None
    return {"label": label, "detail": detail, "ips": per_call * repeats / seconds, "peak_gib": peak}


def rows_for(model: str, folder: Path, args, device: str, images: list[np.ndarray], bar) -> list[dict]:
    from PIL import Image

    from sr_augment import get_engine

    naive_steps, engine_steps = (2, 1) if args.tiny else (75, None)
    dtype = "bf16" if args.tiny else "auto"  # the CPU's "auto" is fp32: --tiny exercises the GPU's dtype path
    batch = 2 if args.tiny else 4
    if model == "sd-x4":
        def naive():
            from diffusers import StableDiffusionUpscalePipeline

            pipe = StableDiffusionUpscalePipeline.from_pretrained(folder).to(device)
            pipe.set_progress_bar_config(disable=True)
            return (lambda imgs: [pipe(prompt="", image=Image.fromarray(i), num_inference_steps=naive_steps).images
                                  for i in imgs]), f"fp32, batch 1, {naive_steps} steps, guidance 9"

        def engine(**tweaks):
            eng = tune(get_engine(str(folder), device=device, dtype=dtype, steps=engine_steps, batch_size=batch), **tweaks)
            return eng, f"{eng.dtype}, batch {batch}, {eng.steps} step{'s' * (eng.steps > 1)}, no guidance"
    else:
        base, lora = folder
        extra = {"process_size": 0} if args.tiny else {}  # tiny models: run at the output size itself

        def naive():
            eng = get_engine("osediff", base=str(base), lora=str(lora), device=device, dtype="fp32", batch_size=1, **extra)
            _modules(eng)
            return (lambda imgs: eng.upscale(imgs, seeds=[0] * len(imgs))), "fp32, batch 1, 1 step"

        def engine(**tweaks):
            eng = tune(get_engine("osediff", base=str(base), lora=str(lora), device=device, dtype=dtype, batch_size=batch,
                                  **extra), **tweaks)
            return eng, f"{eng.dtype}, batch {batch}, 1 step"

    def wrapped(**tweaks):
        def setup():
            eng, detail = engine(**tweaks)
            return (lambda imgs: eng.upscale(imgs, seeds=list(range(len(imgs))))), f"{detail}, {attention_backend(eng)}"
        return setup

    plans = [("naive", naive, 1, args.images),
             ("sr-augment defaults", wrapped(channels_last=False, compile_unet=False), 2 * batch, args.batches),
             ("+ channels_last", wrapped(channels_last=True, compile_unet=False), 2 * batch, args.batches)]
    if args.compile:
        plans.append(("+ torch.compile", wrapped(channels_last=True, compile_unet=True), 2 * batch, args.batches))
    rows = []
    for label, setup, per_call, repeats in plans:
        bar.set_description(f"{model}: {label}")
        rows.append(measure(label, setup, images, per_call, repeats, device))
        bar.update()
    return rows


def table(results: dict[str, list[dict]], lr: int) -> str:
    lines = [f"| model | setting | details | images/s | peak GPU GiB | x naive | thesis job ({THESIS_IMAGES} images) |",
             "|---|---|---|---|---|---|---|"]
    for model, rows in results.items():
        naive = rows[0]["ips"]
        for r in rows:
            peak = "n/a (CPU)" if r["peak_gib"] is None else f"{r['peak_gib']:.2f}"
            hours = THESIS_IMAGES / r["ips"] / 3600
            lines.append(f"| {model} {lr}->{lr * 4} | {r['label']} | {r['detail']} | {r['ips']:.3f} | {peak} | "
                         f"{r['ips'] / naive:.2f} | {hours:.2f} h |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny configs on the CPU (or GPU): a smoke test, not GPU numbers")
    parser.add_argument("--compile", action="store_true", help="add a row with the UNet under torch.compile")
    parser.add_argument("--images", type=int, default=None, help="timed naive images (batch 1) per model (3; --tiny: 1)")
    parser.add_argument("--batches", type=int, default=None, help="timed engine calls of 2 batches per row (2; --tiny: 1)")
    parser.add_argument("--workdir", default=None, help="where to write the random-weight models (default: a temp folder)")
    args = parser.parse_args(argv)
    args.images = args.images or (1 if args.tiny else 3)
    args.batches = args.batches or (1 if args.tiny else 2)
    if not args.tiny and not torch.cuda.is_available():
        print("bench_gpu.py measures GPU speed, and CUDA is not available here (torch "
              f"{torch.__version__}, cuda build: {torch.version.cuda}). Run it on a CUDA machine, or pass --tiny for the "
              "CPU smoke test of its code paths (whose numbers are not GPU numbers).", file=sys.stderr)
        return 2
    import warnings

    from diffusers.utils import logging as diffusers_logging
    from tqdm.auto import tqdm
    from transformers.utils import logging as transformers_logging

    for logging in (diffusers_logging, transformers_logging):
        logging.set_verbosity_error()
        logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*peft_config.*")  # several adapters on one model are the point
    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    if args.tiny:  # a smoke test: one thread (measured: 2.5x faster on the busy 2-core CI box, where threads spin)
        torch.set_num_threads(1)
    lr = 8 if args.tiny else 128
    configs = TINY if args.tiny else FULL
    images = list(np.random.default_rng(0).integers(0, 256, (8, lr, lr, 3), dtype=np.uint8))
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        tmp = Path(tmp)
        folders = {"sd-x4": save_sd_x4(tmp / "sd-x4", configs["sd-x4"], device),
                   "osediff": save_osediff(tmp / "osediff", configs["osediff"], device)}
        rows_per_model = 3 + args.compile
        with tqdm(total=2 * rows_per_model, desc="bench", file=sys.stderr) as bar:
            results = {model: rows_for(model, folders[model], args, device, images, bar) for model in folders}
    where = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print(f"\nbench_gpu.py on {where}, torch {torch.__version__}, {lr}->{lr * 4}, random weights, "
          f"{'tiny' if args.tiny else 'full-size published'} configs")
    if args.tiny:
        print("NOTE: --tiny numbers are a CPU smoke test of tiny models (2 naive steps, 1 engine step): they are NOT "
              "GPU numbers and say nothing about the speed-up on a GPU.")
    print(table(results, lr))
    print(f"Thesis reference: {THESIS_T4_HOURS} T4 GPU-hours for {THESIS_IMAGES} images (SeeSR, not these models).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
