"""Weight files that inflate on reading are refused, naming the file, before they are read.

A bomb is a real `torch.save` of a small state dict (a spandrel ESRGAN, an OSEDiff LoRA file in the
authors' layout) with one tensor record rewritten as 1 GiB of deflated zeros: the file stays a few MB,
`torch.load(weights_only=True)` would inflate the record to its declared 1 GiB. Each is loaded through
the code users run (`get_engine` for a checkpoint or a pipeline folder, `read_lora_file` as the one-step
engines call it); the peak memory of a reader is measured in a subprocess (ru_maxrss).
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from sr_augment.weights_bounds import WeightsTooLarge, check_weights_file  # noqa: E402

INFLATED = 1 << 30
GROWTH_LIMIT_MB = 300
"""How much a refused read may raise the reader's peak memory (reading the bomb would take 1024 MB)."""


def bomb(source: Path, target: Path) -> Path:
    """`source` (a torch.save zip) with its first tensor record rewritten as INFLATED deflated zeros."""
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w") as zout:
        tensors = [i.filename for i in zin.infolist() if "/data/" in i.filename and not i.filename.endswith(".pkl")]
        for info in zin.infolist():
            if info.filename == tensors[0]:
                record = zipfile.ZipInfo(info.filename, date_time=info.date_time)
                record.compress_type, record._compresslevel = zipfile.ZIP_DEFLATED, 1
                with zout.open(record, "w", force_zip64=True) as fh:
                    zeros = bytes(16 << 20)
                    for _ in range(INFLATED // len(zeros)):
                        fh.write(zeros)
            else:
                zout.writestr(info, zin.read(info.filename))
    assert target.stat().st_size < 16 << 20
    return target


def esrgan_state() -> dict:
    spandrel = pytest.importorskip("spandrel")
    torch.manual_seed(0)
    return spandrel.architectures.ESRGAN.ESRGAN(num_filters=8, num_blocks=1, scale=4).state_dict()


def osediff_layout() -> dict:
    """A dict in OSEDiff's `save_model` layout (module lists, ranks, LoRA state dicts)."""
    saved = {f"unet_lora_{part}_modules": [f"{part}.conv"] for part in ("encoder", "decoder", "others")}
    saved.update(vae_lora_encoder_modules=["encoder.conv_in"], rank_unet=4, rank_vae=4,
                 state_dict_unet={"conv_in.weight": torch.zeros(8, 4, 3, 3), "x.lora_A.default.weight": torch.ones(4, 8)},
                 state_dict_vae={"encoder.conv_in.lora_A.default_encoder.weight": torch.ones(4, 3)})
    return saved


@pytest.fixture(scope="module")
def bombs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bombs")
    torch.save(esrgan_state(), folder / "esrgan.pth")
    torch.save(osediff_layout(), folder / "osediff-src.pkl")
    return {"checkpoint": bomb(folder / "esrgan.pth", folder / "esrgan-bomb.pth"),
            "lora": bomb(folder / "osediff-src.pkl", folder / "osediff.pkl"),
            "good": folder / "esrgan.pth"}


def _peak_memory(code: str, path: Path) -> dict:
    """Run `code` (which reads `path`) in a fresh interpreter after importing torch and spandrel; its
    error and how much its peak memory grew while reading (MB)."""
    script = f"""
import json, resource, sys
import torch, spandrel
from sr_augment.engines import get_engine
from sr_augment.engines.onestep_lora import read_lora_file
path = sys.argv[1]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
error = None
try:
    {code}
except Exception as exc:
    error = f"{{type(exc).__name__}}: {{exc}}"
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"error": error, "growth_mb": (after - before) / 1024}}))
"""
    done = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # a fresh interpreter importing torch: about 5 s
def test_a_checkpoint_that_inflates_is_refused_naming_it_before_it_is_read(bombs):
    pytest.importorskip("spandrel")
    result = _peak_memory('get_engine(path, device="cpu")', bombs["checkpoint"])
    assert result["error"] and str(bombs["checkpoint"]) in result["error"], result
    assert "inflated" in result["error"] and "refused before reading" in result["error"], result
    assert result["growth_mb"] < GROWTH_LIMIT_MB, result


@pytest.mark.slow  # a fresh interpreter importing torch: about 5 s
def test_a_lora_file_that_inflates_is_refused_naming_it_before_it_is_read(bombs):
    result = _peak_memory('read_lora_file(__import__("pathlib").Path(path), "osediff")', bombs["lora"])
    assert result["error"] and str(bombs["lora"]) in result["error"], result
    assert "refused before reading" in result["error"], result
    assert result["growth_mb"] < GROWTH_LIMIT_MB, result


def test_a_pipeline_folder_with_an_inflating_weight_file_is_refused_naming_it(bombs, tiny_ldm_dir, tmp_path):
    folder = tmp_path / "pipeline"
    shutil.copytree(tiny_ldm_dir, folder)
    unet = folder / "unet"
    for weights in unet.glob("diffusion_pytorch_model*"):
        weights.unlink()
    planted = shutil.copy(bombs["checkpoint"], unet / "diffusion_pytorch_model.bin")
    from sr_augment.engines import get_engine

    with pytest.raises(ValueError, match="refused before reading") as caught:
        get_engine(str(folder), device="cpu", steps=1)
    assert str(planted) in str(caught.value)


def test_a_real_checkpoint_still_loads_and_its_bound_is_its_size(bombs):
    pytest.importorskip("spandrel")
    from sr_augment.engines import get_engine

    good = bombs["good"]
    assert check_weights_file(good) <= good.stat().st_size
    assert get_engine(str(good), device="cpu").scale == 4


def test_safetensors_headers_that_claim_more_than_the_file_are_refused(tmp_path):
    pytest.importorskip("safetensors")
    from safetensors.torch import save_file

    good = tmp_path / "good.safetensors"
    save_file({"w": torch.zeros(4)}, str(good))
    assert check_weights_file(good) == good.stat().st_size
    data = good.read_bytes()
    for name, claimed in (("huge", 1 << 40), ("past-end", len(data))):
        bad = tmp_path / f"{name}.safetensors"
        bad.write_bytes(struct.pack("<Q", claimed) + data[8:])
        with pytest.raises(WeightsTooLarge, match="header claims") as caught:
            check_weights_file(bad)
        assert str(bad) in str(caught.value)
