"""`sr-augment train`: train an sr4 model on a folder of HR photos.

Random HR crops are degraded on the fly (antialiased bicubic downscale + 8-bit quantisation, the same
`degrade` the benchmarks use), and the UNet learns to denoise the normalised residual HR - bicubic(LR).
Everything a long CPU/GPU run needs: a progress bar, a checkpoint with optimizer, EMA and RNG state
written atomically every `checkpoint_every` steps, `resume`, a sample grid and a validation PSNR on
held-out photos at every checkpoint, and a loadable pipeline folder (EMA weights) after each one, so a
run that dies still leaves a usable model.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sr_augment.grid import comparison_grid
from sr_augment.images import ImageDecodeError, center_crop, iter_image_files, load_image
from sr_augment.metrics import psnr_y
from sr_augment.sr4.ops import condition, degrade, residual_to_unet, upsample
from sr_augment.sr4.pipeline import SR4Pipeline, build_scheduler, build_unet
from sr_augment.torch_device import resolve_device

CHECKPOINT = "checkpoint/state.pt"


@dataclass
class TrainConfig:
    """Settings of one training run; stored in the checkpoint so `resume` can check them."""

    scale: int = 4
    steps: int = 10_000
    batch_size: int = 16
    crop: int = 128
    lr: float = 2e-4
    warmup: int = 200
    ema_decay: float = 0.999
    channels: tuple = (64, 128, 128)
    layers_per_block: int = 1
    checkpoint_every: int = 500
    val_images: int = 4
    sample_steps: int = 10
    seed: int = 0
    save_dtype: str = "float16"
    data: list = field(default_factory=list)

    # Settings that must match when resuming (the rest may change between runs).
    ARCHITECTURE = ("scale", "crop", "channels", "layers_per_block", "seed")


def lr_at(step: int, config: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to zero at `config.steps`."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = min(1.0, (step - config.warmup) / max(1, config.steps - config.warmup))
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def load_photos(paths, crop: int, log=print, exclude: Path | None = None) -> tuple[list[np.ndarray], list[Path]]:
    """Decode every image under `paths` (except under `exclude`, the run folder, whose sample grids are
    images too); skip and report unreadable ones and ones smaller than `crop`."""
    photos, names = [], []
    exclude = exclude.resolve() if exclude is not None else None
    for path in iter_image_files(paths):
        if exclude is not None and exclude in path.resolve().parents:
            continue
        try:
            image = load_image(path)
        except ImageDecodeError as exc:
            log(f"skipped: {exc}")
            continue
        if min(image.shape[:2]) < crop:
            log(f"skipped: {path}: {image.shape[1]}x{image.shape[0]} is smaller than the {crop}px crop")
            continue
        photos.append(image)
        names.append(path)
    return photos, names


def split_holdout(photos: list, names: list, count: int, seed: int, held_names: list[str] | None = None):
    """Hold out `count` photos (fixed by `seed`, or the named ones when resuming) for validation."""
    if held_names is not None:
        wanted = set(held_names)
        held = {i for i, n in enumerate(names) if str(n) in wanted}
        if len(held) != len(held_names):
            raise ValueError(f"--resume: validation photos of the run are missing from the data: "
                             f"{sorted(set(held_names) - {str(names[i]) for i in held})[:3]}")
    else:
        if len(photos) <= count:
            raise ValueError(f"need more than {count} training photos of at least the crop size, found {len(photos)}")
        held = set(np.random.default_rng(seed).permutation(len(photos))[:count].tolist())
    train = [p for i, p in enumerate(photos) if i not in held]
    val = [photos[i] for i in sorted(held)]
    return train, val, [str(names[i]) for i in sorted(held)]


def random_crops(photos: list[np.ndarray], batch: int, crop: int, rng: np.random.Generator) -> torch.Tensor:
    """A batch of random crops with random flips and 90-degree rotations, float (B, 3, crop, crop) in [0, 1]."""
    crops = []
    for index in rng.integers(0, len(photos), size=batch):
        photo = photos[index]
        top = rng.integers(0, photo.shape[0] - crop + 1)
        left = rng.integers(0, photo.shape[1] - crop + 1)
        patch = photo[top:top + crop, left:left + crop]
        if rng.random() < 0.5:
            patch = patch[:, ::-1]
        patch = np.rot90(patch, k=int(rng.integers(0, 4)))
        crops.append(np.ascontiguousarray(patch))
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255.0


def center_crops(photos: list[np.ndarray], crop: int) -> torch.Tensor:
    """The centre `crop` square of each photo, float (B, 3, crop, crop) in [0, 1]."""
    batch = np.stack([center_crop(photo, crop) for photo in photos])
    return torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255.0


def measure_residual_scale(photos, config: TrainConfig) -> float:
    """Standard deviation of HR - bicubic(LR) over fixed random crops: the residual's normaliser."""
    rng = np.random.default_rng(config.seed + 1)
    values = []
    for _ in range(16):
        hr = random_crops(photos, config.batch_size, config.crop, rng)
        values.append((hr - upsample(degrade(hr, config.scale), config.scale)).std().item())
    return float(np.mean(values))


def _to_uint8(batch: torch.Tensor) -> list[np.ndarray]:
    return list((batch.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8))


class Trainer:
    """One training run in `out`; `run()` trains to `config.steps`, checkpointing as it goes.

    `state` is a loaded checkpoint to continue from. Noise and timesteps come from a generator on the
    training device whose state is checkpointed, so a resumed run continues exactly where it stopped.
    """

    def __init__(self, out, config: TrainConfig, *, state: dict | None = None, device: str = "auto",
                 progress: bool = True, log=print):
        from diffusers.training_utils import EMAModel

        self.out, self.config = Path(out), config
        self.log, self.progress = log, progress
        self.device = torch.device(resolve_device(device))

        photos, names = load_photos(config.data, config.crop, log, exclude=self.out)
        self.train_photos, val_photos, self.val_names = split_holdout(
            photos, names, config.val_images, config.seed, state["validation_images"] if state else None)
        self.val_hr = center_crops(val_photos, config.crop)
        log(f"{len(self.train_photos)} training photos, {len(val_photos)} held out for validation, device {self.device}")

        torch.manual_seed(config.seed)
        self.unet = build_unet(config.scale, config.channels, config.layers_per_block, config.crop // config.scale)
        self.unet.to(self.device)  # before the optimizer, so loaded optimizer state lands on the device
        self.scheduler = build_scheduler()
        self.optimizer = torch.optim.AdamW(self.unet.parameters(), lr=config.lr, weight_decay=0.0)
        self.ema = EMAModel(self.unet.parameters(), decay=config.ema_decay, use_ema_warmup=True, power=2 / 3)
        self.rng = np.random.default_rng(config.seed)
        self.generator = torch.Generator(self.device).manual_seed(config.seed)
        self.step = 0
        if state is None:
            self.residual_scale = measure_residual_scale(self.train_photos, config)
        else:
            self.unet.load_state_dict(state["unet"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.ema.load_state_dict(state["ema"])
            self.rng.bit_generator.state = state["numpy_rng"]
            self.generator.set_state(state["generator"])
            self.step, self.residual_scale = state["step"], state["residual_scale"]
            log(f"resumed at step {self.step} of {config.steps}")
        self.ema.to(self.device)

    # -- training ------------------------------------------------------------------------------------------
    def loss(self, hr: torch.Tensor) -> torch.Tensor:
        scale = self.config.scale
        up = upsample(degrade(hr, scale), scale)
        target = residual_to_unet(hr - up, scale, self.residual_scale)
        noise = torch.randn(target.shape, generator=self.generator, device=hr.device, dtype=target.dtype)
        timesteps = torch.randint(0, self.scheduler.config.num_train_timesteps, (hr.shape[0],),
                                  generator=self.generator, device=hr.device)
        noisy = self.scheduler.add_noise(target, noise, timesteps)
        prediction = self.unet(torch.cat([noisy, condition(up, scale)], dim=1), timesteps).sample
        return F.mse_loss(prediction, target)

    def run(self) -> Path:
        from tqdm.auto import tqdm

        config = self.config
        self.unet.train()
        bar = tqdm(total=config.steps, initial=self.step, desc="train sr4", unit="step", disable=not self.progress)
        running, started = None, time.perf_counter()
        try:
            while self.step < config.steps:
                hr = random_crops(self.train_photos, config.batch_size, config.crop, self.rng).to(self.device)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr_at(self.step, config)
                loss = self.loss(hr)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"loss became {loss.item()} at step {self.step}; lower --lr")
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.unet.parameters(), 1.0)
                self.optimizer.step()
                self.ema.step(self.unet.parameters())
                self.step += 1
                running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
                bar.update(1)
                bar.set_postfix(loss=f"{running:.4f}", lr=f"{lr_at(self.step, config):.1e}")
                if self.step % config.checkpoint_every == 0 or self.step == config.steps:
                    self.checkpoint(running, time.perf_counter() - started)
        finally:
            bar.close()
        return self.out

    # -- checkpoints -----------------------------------------------------------------------------------------
    def checkpoint(self, loss: float | None, seconds: float) -> dict:
        """Atomic state file, EMA pipeline folder, sample grid, validation PSNR line in train_log.jsonl."""
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / CHECKPOINT
        path.parent.mkdir(exist_ok=True)
        state = {
            "config": asdict(self.config), "step": self.step, "residual_scale": self.residual_scale,
            "unet": self.unet.state_dict(), "optimizer": self.optimizer.state_dict(), "ema": self.ema.state_dict(),
            "numpy_rng": self.rng.bit_generator.state, "generator": self.generator.get_state(),
            "validation_images": self.val_names,
        }
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)
        pipeline = self.export()
        record = {"step": self.step, "loss": loss, "seconds": round(seconds, 1), **self.validate(pipeline)}
        with open(self.out / "train_log.jsonl", "a") as fh:
            fh.write(json.dumps(record) + "\n")
        self.log(f"step {self.step}: val Y-PSNR {record['val_psnr']:.2f} dB (bicubic {record['bicubic_psnr']:.2f}), "
                 f"samples in {record['grid']}")
        return record

    def pipeline(self, dtype=torch.float32) -> SR4Pipeline:
        """A pipeline holding a copy of the EMA weights (built without touching the training RNG)."""
        with torch.random.fork_rng(devices=[]):
            unet = build_unet(self.config.scale, self.config.channels, self.config.layers_per_block,
                              self.config.crop // self.config.scale)
        self.ema.copy_to(unet.parameters())
        for param in unet.parameters():  # cast in place: ModelMixin.to(dtype) warns on every call
            param.data = param.data.to(dtype)
        pipe = SR4Pipeline(unet=unet, scheduler=build_scheduler(), scale=self.config.scale,
                           residual_scale=self.residual_scale)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def export(self) -> SR4Pipeline:
        """Save the EMA model as a pipeline folder in `out` (weights stored as `save_dtype`)."""
        stored = self.pipeline(getattr(torch, self.config.save_dtype))
        stored.save_pretrained(self.out, safe_serialization=True)
        (self.out / "training.json").write_text(json.dumps(
            {"config": asdict(self.config), "step": self.step, "residual_scale": self.residual_scale,
             "validation_images": self.val_names}, indent=2, default=str))
        return self.pipeline().to(self.device)

    def validate(self, pipeline: SR4Pipeline) -> dict:
        scale = self.config.scale
        hr = self.val_hr.to(self.device)
        lr = degrade(hr, scale)
        generators = [torch.Generator("cpu").manual_seed(i) for i in range(len(hr))]
        sr = pipeline(lr, num_inference_steps=self.config.sample_steps, generator=generators, output_type="pt").images
        columns = {"LR": F.interpolate(lr, scale_factor=scale, mode="nearest"), "bicubic": upsample(lr, scale),
                   f"sr4 step {self.step}": sr, "HR": hr}
        columns = {name: _to_uint8(batch) for name, batch in columns.items()}
        grid = self.out / "samples" / f"step_{self.step:07d}.png"
        grid.parent.mkdir(exist_ok=True)
        comparison_grid([[(name, tiles[i]) for name, tiles in columns.items()] for i in range(len(hr))]).save(grid)
        sr_tiles, bicubic_tiles, hr_tiles = columns[f"sr4 step {self.step}"], columns["bicubic"], columns["HR"]
        return {"val_psnr": float(np.mean([psnr_y(s, h, scale) for s, h in zip(sr_tiles, hr_tiles)])),
                "bicubic_psnr": float(np.mean([psnr_y(b, h, scale) for b, h in zip(bicubic_tiles, hr_tiles)])),
                "grid": str(grid)}


def _same(a, b) -> bool:
    return tuple(np.atleast_1d(a)) == tuple(np.atleast_1d(b))


def check_config(config: TrainConfig) -> None:
    levels = 2 ** (len(config.channels) - 1)
    if config.scale < 2:
        raise ValueError(f"--scale must be >= 2, got {config.scale}")
    for name in ("steps", "batch_size", "checkpoint_every", "val_images", "sample_steps"):
        if getattr(config, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(config, name)}")
    if config.crop < 1 or config.crop % (config.scale * levels):
        raise ValueError(f"--crop must be a positive multiple of scale * {levels} = {config.scale * levels}, got {config.crop}")
    if config.lr <= 0:
        raise ValueError(f"--lr must be > 0, got {config.lr}")


def _read_checkpoint(path: Path) -> dict:
    """The resume state as data (tensors, numbers, text): a run folder may be shared, so never unpickle code."""
    from sr_augment.weights_bounds import check_weights_file

    try:
        check_weights_file(path)  # bounded before it is read: a zip record may claim to inflate to gigabytes
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as error:
        raise ValueError(f"--resume: {path} is not a checkpoint this command wrote (only tensors, numbers and "
                         f"text are read, never code): {str(error).splitlines()[0]}") from None
    missing = [k for k in _STATE_KEYS if not isinstance(state, dict) or k not in state]
    if missing or not isinstance(state["config"], dict) or "data" not in state["config"]:
        raise ValueError(f"--resume: {path} is not a checkpoint this command wrote "
                         f"(missing: {', '.join(missing) or 'config data'})")
    return state


_STATE_KEYS = ("config", "step", "residual_scale", "unet", "optimizer", "ema", "numpy_rng", "generator",
               "validation_images")


def train(data, out, *, resume: bool = False, device: str = "auto", progress: bool = True, log=print, **settings) -> Path:
    """Train (or resume) an sr4 model; returns the folder that `get_engine(folder)` loads.

    Settings left None take the checkpoint's values when resuming and `TrainConfig`'s defaults
    otherwise; `data` may be empty when resuming (the run's own data list is used).
    """
    out = Path(out)
    settings = {k: v for k, v in settings.items() if v is not None}
    data = [str(p) for p in data or []]
    checkpoint_path = out / CHECKPOINT
    state = None
    if resume:
        if not checkpoint_path.exists():
            raise FileNotFoundError(f"--resume: no checkpoint at {checkpoint_path}")
        state = _read_checkpoint(checkpoint_path)
        saved = state["config"]
        changed = [k for k in TrainConfig.ARCHITECTURE if k in settings and not _same(settings[k], saved[k])]
        if changed:
            raise ValueError(f"--resume: {', '.join(f'{k}={settings[k]}' for k in changed)} differ from the "
                             f"checkpoint's ({', '.join(f'{k}={saved[k]}' for k in changed)})")
        config = TrainConfig(**{**saved, **settings, "data": data or saved["data"]})
        config.channels = tuple(config.channels)
    else:
        if checkpoint_path.exists():
            raise FileExistsError(f"{out} already holds a training run ({checkpoint_path}); pass --resume to "
                                  f"continue it or choose another --out")
        if not data:
            raise ValueError("give at least one folder or file of training photos")
        config = TrainConfig(data=data, **settings)
    check_config(config)
    return Trainer(out, config, state=state, device=device, progress=progress, log=log).run()
