"""bench/bench_gpu.py without a GPU: its --tiny smoke test runs on the CPU and prints the side-by-side table,
it refuses to pretend without CUDA, and its full-size configs are the published architectures.

The script runs in a subprocess, as a user runs it, with CUDA hidden; no test reads a timing as a pass/fail.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="bench_gpu.py needs torch: pip install 'sr-augment[diffusion]'")
pytest.importorskip("diffusers", reason="bench_gpu.py builds diffusers models: pip install 'sr-augment[diffusion]'")
pytest.importorskip("peft", reason="bench_gpu.py writes an OSEDiff LoRA file with peft: pip install peft")

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "bench_gpu.py"
ROW = re.compile(r"^\| (sd-x4|osediff) (\d+)->(\d+) \| ([^|]+) \| ([^|]+) \| ([\d.]+) \| ([^|]+) \| ([\d.]+) \| ([\d.]+) h \|$")


def _run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=280)


@pytest.mark.slow  # the benchmark script in a subprocess
def test_the_tiny_run_prints_both_models_side_by_side_and_says_its_numbers_are_not_gpu_numbers():
    done = _run("--tiny")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "NOT GPU numbers" in done.stdout
    rows = [ROW.match(line).groups() for line in done.stdout.splitlines() if ROW.match(line)]
    assert [(r[0], r[3].strip()) for r in rows] == [
        (model, label) for model in ("sd-x4", "osediff") for label in ("naive", "sr-augment defaults", "+ channels_last")]
    for _model, lr, hr, label, detail, ips, peak, ratio, hours in rows:
        assert (int(lr), int(hr)) == (8, 32) and peak.strip() == "n/a (CPU)"
        assert float(ips) > 0
        assert float(hours) == pytest.approx(3327 / float(ips) / 3600, rel=0.02, abs=0.006)  # the thesis projection
        if label.strip() == "naive":
            assert float(ratio) == 1.0 and detail.startswith("fp32, batch 1")
        else:
            assert detail.startswith("bfloat16, batch 2") and "AttnProcessor2_0" in detail  # bf16 and SDPA
    naive_sd = rows[0]
    assert "2 steps, guidance 9" in naive_sd[4]


@pytest.mark.slow  # the benchmark script in a subprocess
def test_without_cuda_and_without_tiny_it_exits_with_a_clear_message():
    done = _run()
    assert done.returncode == 2
    assert "CUDA is not available" in done.stderr and "--tiny" in done.stderr
    assert "|" not in done.stdout  # no table of made-up numbers


def test_the_full_size_configs_build_the_published_architectures():
    """Built on the meta device (no memory): the parameter counts of the published models."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    def count(model) -> int:
        return sum(p.numel() for p in model.parameters())

    with torch.device("meta"):
        sd21_unet = UNet2DConditionModel(**bench.FULL["osediff"]["unet"])
        sd21_vae = AutoencoderKL(**bench.FULL["osediff"]["vae"])
        x4_unet = UNet2DConditionModel(**bench.FULL["sd-x4"]["unet"])
        text = CLIPTextModel(CLIPTextConfig(**bench.FULL["sd-x4"]["text"]))
    assert count(sd21_unet) == 865_910_724  # SD 2.x UNet
    assert count(sd21_vae) == 83_653_863  # SD's KL-f8 VAE
    assert count(text) == 340_387_840  # OpenCLIP ViT-H/14 text tower (23 of 24 layers, as SD 2.x uses it)
    assert round(count(x4_unet) / 1e6) == 473  # the x4 upscaler's UNet: 473M
    assert x4_unet.config.in_channels == 7 and x4_unet.config.num_class_embeds == 1000
