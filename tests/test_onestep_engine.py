"""The one-step diffusion engines (osediff, pisa-sr) on a tiny SD 2.1-shaped base with random weights.

The base (UNet2DConditionModel with cross-attention, 4-level AutoencoderKL, CLIP text encoder and tokenizer,
DDPMScheduler with SD's betas) is saved as a diffusers folder; the LoRA files are made the way the authors'
`save_model` makes them (adapters added with peft on the same models, then `torch.save` of a dict of module
lists, ranks and "lora" state dict entries). Everything is loaded through `get_engine`, the code users run,
and compared with a re-implementation of the authors' inference procedure (their `load_ckpt` + forward).
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the one-step engines need torch: pip install 'sr-augment[diffusion]'")
pytest.importorskip("diffusers", reason="the one-step engines need diffusers: pip install 'sr-augment[diffusion]'")
pytest.importorskip("peft", reason="the one-step engines load the authors' LoRA weights through peft: pip install peft")

from sr_augment.cli import main  # noqa: E402
from sr_augment.engines import EngineUnavailable, check_spec, get_engine, weights_stamp  # noqa: E402
from sr_augment.engines.determinism import is_deterministic  # noqa: E402
from sr_augment.engines.listing import builtin_engines  # noqa: E402
from sr_augment.images import resize  # noqa: E402
from tiny_pipelines import _seeded, _tiny_clip_tokenizer  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Already found a `peft_config`")  # the reference adds several adapters

FAST = {"device": "cpu", "process_size": 0}  # tiny models: run at the output size itself
UNET_GREP = ["to_k", "to_q", "to_v", "to_out.0", "conv", "conv1", "conv2", "conv_in", "conv_shortcut", "conv_out",
             "proj_out", "proj_in", "ff.net.2", "ff.net.0.proj"]
VAE_GREP = ["conv1", "conv2", "conv_in", "conv_shortcut", "conv", "conv_out", "to_k", "to_q", "to_v", "to_out.0"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = _tiny_clip_tokenizer()
    unet = _seeded(lambda: UNet2DConditionModel(
        block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=4, use_linear_projection=True))
    vae = _seeded(lambda: AutoencoderKL(
        block_out_channels=[16, 16, 32, 32], norm_num_groups=8, layers_per_block=1, latent_channels=4,
        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4, scaling_factor=0.18215))
    text_encoder = _seeded(lambda: CLIPTextModel(CLIPTextConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, vocab_size=1000,
        max_position_embeddings=tokenizer.model_max_length)))
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              steps_offset=1, prediction_type="epsilon")  # SD 2.1-base's
    path = tmp_path_factory.mktemp("sd21-tiny")
    StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                            safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(path, safe_serialization=True)
    return path


def _unet_groups(unet) -> dict:
    """The authors' choice of UNet LoRA targets (osediff.py / pisasr.py `initialize_unet`)."""
    groups = {"encoder": [], "decoder": [], "others": []}
    for name, _ in unet.named_parameters():
        if "bias" in name or "norm" in name or not any(p in name for p in UNET_GREP):
            continue
        part = ("encoder" if "down_blocks" in name or "conv_in" in name else
                "decoder" if "up_blocks" in name or "conv_out" in name else "others")
        groups[part].append(name.replace(".weight", ""))
    return groups


def _vae_modules(vae) -> list:
    """The authors' VAE encoder targets (osediff.py `initialize_vae`), duplicates and all."""
    found = []
    for name, _ in vae.named_parameters():
        if "bias" in name or "norm" in name:
            continue
        for pattern in VAE_GREP:
            if pattern in name and "encoder" in name:
                found.append(name.replace(".weight", ""))
            elif "quant_conv" in name and "post_quant_conv" not in name:
                found.append(name.replace(".weight", ""))
    return found


def _randomize(models, std: float, seed: int) -> None:
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for model in models:
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0.0, std) if std else param.zero_()
                elif "conv_in.base_layer" in name and std:  # OSEDiff retrains the UNet's conv_in too
                    param.add_(torch.randn_like(param) * std)


def make_osediff_file(base, path, std=0.3, seed=1):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from peft import LoraConfig

    torch.manual_seed(seed)  # peft draws lora_A from the global RNG: the file must not depend on test order
    unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
    vae = AutoencoderKL.from_pretrained(base, subfolder="vae")
    groups = _unet_groups(unet)
    for part, modules in groups.items():
        unet.add_adapter(LoraConfig(r=4, init_lora_weights="gaussian", target_modules=modules), adapter_name=f"default_{part}")
    vae_modules = _vae_modules(vae)
    vae.add_adapter(LoraConfig(r=2, init_lora_weights="gaussian", target_modules=vae_modules), adapter_name="default_encoder")
    _randomize([unet, vae], std, seed)
    saved = {"vae_lora_encoder_modules": vae_modules, "unet_lora_encoder_modules": groups["encoder"],
             "unet_lora_decoder_modules": groups["decoder"], "unet_lora_others_modules": groups["others"],
             "rank_unet": 4, "rank_vae": 2,
             "state_dict_unet": {k: v for k, v in unet.state_dict().items() if "lora" in k or "conv_in" in k},
             "state_dict_vae": {k: v for k, v in vae.state_dict().items() if "lora" in k}}
    torch.save(saved, path)
    return path


def make_pisa_file(base, path, seed=2):
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig

    torch.manual_seed(seed)  # peft draws lora_A from the global RNG: the file must not depend on test order
    unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
    groups = _unet_groups(unet)
    saved = {"lora_rank_unet_pix": 4, "lora_rank_unet_sem": 2}
    for kind in ("pix", "sem"):
        for part, modules in groups.items():
            unet.add_adapter(LoraConfig(r=saved[f"lora_rank_unet_{kind}"], init_lora_weights="gaussian", target_modules=modules),
                             adapter_name=f"default_{part}_{kind}")
            saved[f"unet_lora_{part}_modules_{kind}"] = modules
    _randomize([unet], 0.3, seed)
    saved["state_dict_unet"] = {k: v for k, v in unet.state_dict().items() if "lora" in k}
    torch.save(saved, path)
    return path


@pytest.fixture(scope="module")
def loras(base, tmp_path_factory):
    folder = tmp_path_factory.mktemp("loras")
    return {"osediff": make_osediff_file(base, folder / "osediff.pkl"),
            "zero": make_osediff_file(base, folder / "zero.pkl", std=0.0),
            "other": make_osediff_file(base, folder / "other.pkl", seed=7),
            "pisa": make_pisa_file(base, folder / "pisa_sr.pkl")}


def _image(rng, height, width):
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def _to_uint8(decoded):
    return ((decoded[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()


def _authors_models(base, saved, vae_lora: bool):
    """The base models with the adapters added and filled the way the authors' `load_ckpt` does (unmerged)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from peft import LoraConfig
    from transformers import CLIPTextModel, CLIPTokenizer

    unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
    vae = AutoencoderKL.from_pretrained(base, subfolder="vae")
    tokenizer = CLIPTokenizer.from_pretrained(base, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(base, subfolder="text_encoder").float()
    ids = tokenizer("", max_length=tokenizer.model_max_length, padding="max_length", truncation=True,
                    return_tensors="pt").input_ids
    embeds = text_encoder(ids)[0]
    pisa = "lora_rank_unet_pix" in saved
    for key in [k for k in saved if k.startswith("unet_lora_")]:
        suffix = key.split("_modules")[1]  # "" or "_pix" / "_sem"
        part = key[len("unet_lora_"):].split("_modules")[0]
        rank = saved["rank_unet"] if not pisa else saved[f"lora_rank_unet{suffix}"]
        unet.add_adapter(LoraConfig(r=rank, init_lora_weights="gaussian", target_modules=saved[key]),
                         adapter_name=f"default_{part}{suffix}")
    for name, param in unet.named_parameters():
        if "lora" in name or (not pisa and "conv_in" in name):
            param.data.copy_(saved["state_dict_unet"][name])
    if vae_lora:
        vae.add_adapter(LoraConfig(r=saved["rank_vae"], init_lora_weights="gaussian",
                                   target_modules=saved["vae_lora_encoder_modules"]),
                        adapter_name="default_encoder")
        for name, param in vae.named_parameters():
            if "lora" in name:
                param.data.copy_(saved["state_dict_vae"][name])
    return unet, vae, embeds


@torch.no_grad()
def reference_osediff(base, lora, image, scale):
    """OSEDiff_test.forward on one image: latent mean instead of a sample, no colour fix."""
    from diffusers import DDPMScheduler

    unet, vae, embeds = _authors_models(base, torch.load(lora, weights_only=True), vae_lora=True)
    unet.set_adapter(["default_encoder", "default_decoder", "default_others"])
    scheduler = DDPMScheduler.from_pretrained(base, subfolder="scheduler")
    scheduler.set_timesteps(timesteps=[999])  # diffusers 0.25's set_timesteps(1) then step(t=999): prev_t = -1
    lq = torch.from_numpy(np.array(resize(image, (image.shape[0] * scale, image.shape[1] * scale))))
    lq = lq.permute(2, 0, 1)[None].float() / 127.5 - 1
    latent = vae.encode(lq).latent_dist.mode() * vae.config.scaling_factor
    timesteps = torch.tensor([999]).long()
    pred = unet(latent, timesteps, encoder_hidden_states=embeds).sample
    x0 = scheduler.step(pred, timesteps, latent, return_dict=True).prev_sample
    return _to_uint8(vae.decode(x0 / vae.config.scaling_factor).sample)


@torch.no_grad()
def reference_pisa(base, lora, image, scale, lambda_pix, lambda_sem):
    """PiSASR_eval.forward (adjustable setting) on one image, no colour fix."""
    unet, vae, embeds = _authors_models(base, torch.load(lora, weights_only=True), vae_lora=False)
    pix = [f"default_{p}_pix" for p in ("encoder", "decoder", "others")]
    sem = [f"default_{p}_sem" for p in ("encoder", "decoder", "others")]
    lq = torch.from_numpy(np.array(resize(image, (image.shape[0] * scale, image.shape[1] * scale))))
    lq = lq.permute(2, 0, 1)[None].float() / 127.5 - 1
    latent = vae.encode(lq).latent_dist.mode() * vae.config.scaling_factor
    unet.set_adapter(pix)
    pred_pix = unet(latent, 1, encoder_hidden_states=embeds).sample
    unet.set_adapter(pix + sem)
    pred_sem = unet(latent, 1, encoder_hidden_states=embeds).sample
    pred = lambda_pix * pred_pix + lambda_sem * (pred_sem - pred_pix)
    return _to_uint8(vae.decode((latent - pred) / vae.config.scaling_factor).sample)


def _close(a, b, tolerance=1):
    assert a.shape == b.shape
    assert np.abs(a.astype(int) - b.astype(int)).max() <= tolerance


# -- OSEDiff ---------------------------------------------------------------------------------------------

@pytest.mark.slow  # one-step diffusion models
def test_osediff_follows_the_authors_procedure(base, loras, rng):
    image = _image(rng, 12, 16)
    engine = get_engine("osediff", base=str(base), lora=str(loras["osediff"]), color_fix="none", **FAST)
    assert engine._models is None  # building it (fingerprint included) loaded nothing
    out = engine.upscale([image], [0])[0]
    assert out.shape == (48, 64, 3) and out.dtype == np.uint8
    _close(out, reference_osediff(base, loras["osediff"], image, 4))


def test_output_shape_scales_tiles_and_small_inputs(base, loras, rng):
    image = _image(rng, 20, 28)
    tiled = get_engine("osediff", scale=2, base=str(base), lora=str(loras["osediff"]), tile=12, overlap=4, **FAST)
    assert tiled.upscale([image], [0])[0].shape == (40, 56, 3)
    small = get_engine("osediff", base=str(base), lora=str(loras["osediff"]), device="cpu", process_size=96)
    assert small.work_size(24, 32) == (96, 128)  # computed at process_size on the short side, then resized down
    assert small.upscale([image[:6, :8]], [0])[0].shape == (24, 32, 3)


def test_deterministic_whatever_the_seed_and_the_batch(base, loras, rng):
    images = [_image(rng, 12, 12), _image(rng, 12, 12)]
    engine = get_engine("osediff", base=str(base), lora=str(loras["osediff"]), batch_size=4, **FAST)
    assert engine.deterministic is True and is_deterministic("osediff") and is_deterministic(engine)
    together = engine.upscale(images, [0, 1])
    again = engine.upscale(images, [5, 6])
    alone = [engine.upscale([image], [9])[0] for image in images]
    for a, b, c in zip(together, again, alone):
        np.testing.assert_array_equal(a, b)
        _close(a, c)  # a batch of 2 vs 1 may round differently in the convolutions, never more


def test_the_lora_changes_the_output_and_the_fingerprint(base, loras, rng):
    image = _image(rng, 12, 12)
    engines = {k: get_engine("osediff", base=str(base), lora=str(loras[k]), **FAST) for k in ("osediff", "zero", "other")}
    outputs = {k: e.upscale([image], [0])[0] for k, e in engines.items()}
    assert np.abs(outputs["osediff"].astype(int) - outputs["zero"].astype(int)).mean() > 2
    assert not np.array_equal(outputs["osediff"], outputs["other"])
    assert len({e.fingerprint for e in engines.values()}) == 3
    copy = loras["osediff"].with_name("copy.pkl")
    copy.write_bytes(loras["osediff"].read_bytes())
    same = get_engine("osediff", base=str(base), lora=str(copy), **FAST)
    assert same.fingerprint == engines["osediff"].fingerprint  # the weights' content, not their path
    assert get_engine("osediff", base=str(base), lora=str(copy), prompt="a photo", **FAST).fingerprint != same.fingerprint


def test_adain_colour_fix_matches_the_enlarged_inputs_colours(base, loras, rng):
    image = _image(rng, 12, 12)
    out = get_engine("osediff", base=str(base), lora=str(loras["osediff"]), **FAST).upscale([image], [0])[0]
    enlarged = resize(image, (48, 48)).reshape(-1, 3).astype(float)
    np.testing.assert_allclose(out.reshape(-1, 3).mean(0), enlarged.mean(0), atol=3)


# -- PiSA-SR ---------------------------------------------------------------------------------------------

@pytest.mark.slow  # one-step diffusion models
def test_pisa_follows_the_authors_procedure_and_its_scales_vary_the_output(base, loras, rng):
    image = _image(rng, 8, 12)
    outputs, fingerprints = [], set()
    for lambdas in [(1.0, 1.0), (1.0, 0.0), (0.5, 1.5)]:  # one merged call, pixel LoRA only, two calls
        engine = get_engine("pisa-sr", base=str(base), lora=str(loras["pisa"]), color_fix="none",
                            lambda_pix=lambdas[0], lambda_sem=lambdas[1], **FAST)
        assert engine.deterministic is True
        outputs.append(engine.upscale([image], [0])[0])
        _close(outputs[-1], reference_pisa(base, loras["pisa"], image, 4, *lambdas))
        np.testing.assert_array_equal(engine.upscale([image], [3])[0], outputs[-1])
        fingerprints.add(engine.fingerprint)
    assert not np.array_equal(outputs[0], outputs[1]) and not np.array_equal(outputs[0], outputs[2])
    assert len(fingerprints) == 3


@pytest.mark.slow  # one-step diffusion models
def test_pisa_two_calls_in_bfloat16(base, loras, rng):
    image = _image(rng, 8, 8)
    engine = get_engine("pisa-sr", base=str(base), lora=str(loras["pisa"]), lambda_pix=0.5, lambda_sem=1.5,
                        dtype="bf16", color_fix="none", **FAST)
    assert engine.dtype == "bfloat16"
    out = engine.upscale([image], [0])[0]
    assert np.abs(out.astype(int) - reference_pisa(base, loras["pisa"], image, 4, 0.5, 1.5).astype(int)).mean() < 12


# -- files, errors, registry --------------------------------------------------------------------------------

class _Payload:
    def __reduce__(self):
        return (open, (str(_Payload.marker), "w"))


def test_a_pickle_needing_more_than_weights_only_is_refused(base, tmp_path):
    _Payload.marker = tmp_path / "ran"
    path = tmp_path / "osediff.pkl"
    torch.save({"rank_unet": 4, "payload": _Payload()}, path)
    with pytest.raises(ValueError, match=r"weights_only=True") as info:
        get_engine("osediff", base=str(base), lora=str(path), **FAST)
    assert str(path) in str(info.value) and not _Payload.marker.exists()


def test_a_file_in_another_layout_is_refused_naming_what_is_missing(base, loras, tmp_path):
    path = tmp_path / "wrong.pkl"
    torch.save({"rank_unet": 4, "state_dict_unet": {}}, path)
    with pytest.raises(ValueError, match="unet_lora_encoder_modules"):
        get_engine("osediff", base=str(base), lora=str(path), **FAST)
    with pytest.raises(ValueError, match="lora_rank_unet_pix"):  # an OSEDiff file given to pisa-sr
        get_engine("pisa-sr", base=str(base), lora=str(loras["osediff"]), **FAST)


def test_missing_weights_say_how_to_get_them(base, loras, tmp_path, monkeypatch):
    for name in ("SR_AUGMENT_OSEDIFF_LORA", "SR_AUGMENT_OSEDIFF_BASE"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(EngineUnavailable, match=r"osediff\.pkl.*github\.com/cswry/OSEDiff.*SR_AUGMENT_OSEDIFF_LORA"):
        get_engine("osediff", base=str(base), device="cpu")
    with pytest.raises(EngineUnavailable, match="no such file"):
        get_engine("osediff", base=str(base), lora=str(tmp_path / "absent.pkl"), device="cpu")
    with pytest.raises(EngineUnavailable, match=r"huggingface-cli download nobody/no-such-sd21.*base=DIR"):
        get_engine("osediff", base="nobody/no-such-sd21", lora=str(loras["osediff"]), device="cpu")
    (tmp_path / "half" / "unet").mkdir(parents=True)
    with pytest.raises(EngineUnavailable, match="no vae, text_encoder, tokenizer, scheduler folder"):
        get_engine("osediff", base=str(tmp_path / "half"), lora=str(loras["osediff"]), device="cpu")
    with pytest.raises(EngineUnavailable, match=r"pisa_sr\.pkl.*csslc/PiSA-SR"):
        get_engine("pisa-sr", base=str(base), device="cpu")
    with pytest.raises(ValueError, match="steps does not apply"):
        get_engine("osediff", steps=4, base=str(base), lora=str(loras["osediff"]), device="cpu")
    with pytest.raises(ValueError, match="pisa-sr only"):
        get_engine("osediff", base=str(base), lora=str(loras["osediff"]), lambda_sem=2.0, device="cpu")


def test_environment_variables_are_the_fallback(base, loras, monkeypatch, rng):
    monkeypatch.setenv("SR_AUGMENT_OSEDIFF_BASE", str(base))
    monkeypatch.setenv("SR_AUGMENT_OSEDIFF_LORA", str(loras["osediff"]))
    engine = get_engine("osediff", **FAST)
    assert engine.fingerprint == get_engine("osediff", base=str(base), lora=str(loras["osediff"]), **FAST).fingerprint
    entry = next(e for e in builtin_engines() if e.spec == "osediff")
    assert entry.available and entry.deterministic
    assert weights_stamp("osediff")[0][0] == str(loras["osediff"].resolve())


def test_registry_catalog_and_stamps_import_no_torch(base, loras):
    assert check_spec("osediff") == "osediff" and check_spec("pisa-sr") == "pisa-sr"
    code = ("import sys, os; os.environ.pop('SR_AUGMENT_OSEDIFF_LORA', None); import sr_augment.engines as e; "
            "from sr_augment.engines.listing import builtin_engines; "
            "entry = [x for x in builtin_engines() if x.spec == 'osediff'][0]; assert not entry.available, entry; "
            "assert 'SR_AUGMENT_OSEDIFF_LORA' in entry.reason; "
            f"stamp = e.weights_stamp('osediff', {{'base': {str(base)!r}, 'lora': {str(loras['osediff'])!r}}}); "
            "assert len(stamp) > 5, stamp; assert 'torch' not in sys.modules and 'peft' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_cli_warm(base, loras, tmp_path, capsys, rng):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(_image(rng, 8 + 4 * i, 8)).save(folder / f"{i}.png")
    args = ["warm", str(folder), "--engine", "osediff", "--set", f"base={base}", "--set", f"lora={loras['osediff']}",
            "--set", "process_size=0", "--device", "cpu", "--cache-dir", str(tmp_path / "cache"), "--json", "--no-progress"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["generated"] == 3 and report["failed"] == 0
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["generated"] == 0 and report["cached"] == 3
