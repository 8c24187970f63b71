"""The study's CNN and training protocol in PyTorch; the HR+SRAugment arms use the torchvision `SRAugment`.

The protocol, fixed in advance (never tuned on test folds): a small ResNet (BasicBlocks, BatchNorm),
AdamW with a one-cycle learning-rate schedule, label smoothing, balanced class weights, and the usual
light augmentation in every arm (random crop after reflect padding of 1/8 of the side, horizontal flip).
Seeds: `seed` sets the initial weights and the augmentation draws (torch's generator), and the shuffling
has its own generator seeded with `seed` too, so every arm of a (repeat, fold) starts from the same
weights and sees its images in the same order.
"""

from __future__ import annotations

import numpy as np

PROTOCOL = {"model": "ResNet (stem 3x3/2, BasicBlocks of width w, 2w, 4w; global average pooling)", "width": 32,
            "optimizer": "AdamW", "lr": 3e-3, "weight_decay": 5e-4, "schedule": "one-cycle (cosine, 20% warm-up)",
            "label_smoothing": 0.1, "batch_size": 64, "augmentation": "reflect-pad 1/8 + random crop, horizontal flip",
            "class_weights": "balanced", "chosen": "fixed in advance; no hyperparameter is chosen on any test fold"}
"""The training protocol's hyperparameters, recorded in results.json and report.md."""


def build_cnn(num_classes: int, width: int = 32):
    """A ResNet-style CNN for small inputs: a stride-2 3x3 stem, three BasicBlocks (the last two halve
    the resolution and double the width), global average pooling; about 0.3 M parameters at width 32."""
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.shortcut = (nn.Identity() if stride == 1 and cin == cout else
                             nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)))

        def forward(self, x):
            out = torch.relu(self.bn1(self.conv1(x)))
            return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))

    w = width
    return nn.Sequential(nn.Conv2d(3, w, 3, 2, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
                         Block(w, w, 1), Block(w, 2 * w, 2), Block(2 * w, 4 * w, 2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * w, num_classes))


class _Images:
    def __init__(self, images: np.ndarray, labels: np.ndarray, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index):
        import torch

        return self.transform(torch.from_numpy(self.images[index]).permute(2, 0, 1)), int(self.labels[index])


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _predict(model, images: np.ndarray, device) -> np.ndarray:
    import torch

    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(images), 256):
            batch = torch.from_numpy(np.ascontiguousarray(images[start:start + 256])).to(device)
            out.append(model(batch.permute(0, 3, 1, 2).float().div_(255)).argmax(1).cpu())
    return torch.cat(out).numpy()


def augmentation(size: int, augment: dict | None = None, seed: int | None = None):
    """The per-sample training transform of every arm: [SRAugment,] pad + random crop, flip, to float."""
    import torch
    from torchvision.transforms import v2

    steps = []
    if augment:
        from sr_augment.torch_transforms import SRAugment

        steps.append(SRAugment(engine=augment["engine"], mode="resynthesize", scale=augment["scale"],
                               variants=augment["variants"], p=augment["p"], cache_dir=augment["cache_dir"],
                               on_miss="error", seed=seed))
    steps += [v2.RandomCrop(size, padding=max(1, size // 8), padding_mode="reflect"), v2.RandomHorizontalFlip(),
              v2.ToDtype(torch.float32, scale=True)]
    return v2.Compose(steps)


def time_step(size: int, num_classes: int, batch_size: int = PROTOCOL["batch_size"], width: int = PROTOCOL["width"],
              device: str = "auto", steps: int = 3) -> float:
    """Seconds per training image of one optimiser step (forward, backward, update) on random data,
    after one warm-up step: the basis of the study's time estimate."""
    import time

    import torch

    dev = _device(device)
    model = build_cnn(num_classes, width).to(dev)
    optimizer = torch.optim.AdamW(model.parameters())
    x = torch.rand(batch_size, 3, size, size, device=dev)
    y = torch.randint(0, num_classes, (batch_size,), device=dev)
    for i in range(steps + 1):
        if i == 1:
            started = time.perf_counter()
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / (steps * batch_size)


def train_and_predict(train_x, train_y, test_x, test_y, num_classes: int, *, epochs: int, seed: int, class_weight,
                      batch_size: int = PROTOCOL["batch_size"], width: int = PROTOCOL["width"], device: str = "auto",
                      augment: dict | None = None) -> dict:
    """Train from scratch and return {"predictions": test predictions, "curves": per-epoch train loss,
    train accuracy (on the augmented batches), test accuracy, learning rate}, and "diagnostics": the
    optimiser steps taken and the final model's accuracy, as it predicts (eval mode), on its own
    unaugmented training images; far below the train accuracy, its BatchNorm statistics never settled.
    The test accuracy per epoch is recorded to show convergence only: nothing is selected on it (the last
    epoch's model predicts)."""
    import torch

    dev = _device(device)
    torch.manual_seed(seed)
    data = _Images(train_x, train_y, augmentation(train_x.shape[1], augment, seed))
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=True, drop_last=len(data) > batch_size,
                                         generator=torch.Generator().manual_seed(seed))
    model = build_cnn(num_classes, width).to(dev)
    optimizer = torch.optim.AdamW(model.parameters(), lr=PROTOCOL["lr"], weight_decay=PROTOCOL["weight_decay"])
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=PROTOCOL["lr"], epochs=epochs,
                                                   steps_per_epoch=len(loader), pct_start=0.2)
    loss_fn = torch.nn.CrossEntropyLoss(weight=torch.as_tensor(class_weight, device=dev),
                                        label_smoothing=PROTOCOL["label_smoothing"])
    curves = {"train_loss": [], "train_accuracy": [], "test_accuracy": [], "lr": []}
    for _ in range(epochs):
        model.train()
        loss_sum, right, seen = 0.0, 0, 0
        curves["lr"].append(schedule.get_last_lr()[0])
        for images, labels in loader:
            images, labels = images.to(dev), labels.to(dev)
            optimizer.zero_grad()
            logits = model(images)
            loss = loss_fn(logits, labels)
            loss.backward()
            optimizer.step()
            schedule.step()
            loss_sum += loss.item() * len(labels)
            right += int((logits.argmax(1) == labels).sum())
            seen += len(labels)
        curves["train_loss"].append(loss_sum / seen)
        curves["train_accuracy"].append(right / seen)
        predictions = _predict(model, test_x, dev)
        curves["test_accuracy"].append(float(np.mean(predictions == test_y)))
    fit = float(np.mean(_predict(model, train_x, dev) == train_y))
    return {"predictions": predictions, "curves": curves,
            "diagnostics": {"steps": epochs * len(loader), "eval_train_accuracy": fit}}
