"""The experiment's CNN in PyTorch; the HR+SRAugment arm uses the torchvision `SRAugment` transform."""

from __future__ import annotations

import numpy as np


def build_cnn(num_classes: int):
    """Four conv blocks (the first with stride 2) and global average pooling: small enough for a CPU,
    the same for every arm."""
    from torch import nn

    def block(cin, cout, stride=1):
        return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    return nn.Sequential(*block(3, 32, stride=2), nn.MaxPool2d(2), *block(32, 64), nn.MaxPool2d(2), *block(64, 128),
                         nn.MaxPool2d(2), *block(128, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2),
                         nn.Linear(128, num_classes))


class _Images:
    def __init__(self, images: np.ndarray, labels: np.ndarray, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index):
        import torch

        return self.transform(torch.from_numpy(self.images[index]).permute(2, 0, 1)), int(self.labels[index])


def train_and_predict(train_x, train_y, test_x, num_classes: int, *, epochs: int, seed: int, class_weight,
                      batch_size: int = 32, augment: dict | None = None) -> np.ndarray:
    """Train from scratch with `seed` (init, shuffling, augmentation) and return test predictions."""
    import torch
    from torchvision.transforms import v2

    from sr_augment.torch_transforms import SRAugment

    torch.manual_seed(seed)
    steps = []
    if augment:
        steps.append(SRAugment(engine=augment["engine"], mode="resynthesize", variants=augment["variants"],
                               p=augment["p"], cache_dir=augment["cache_dir"], on_miss="error"))
    steps += [v2.RandomHorizontalFlip(), v2.ToDtype(torch.float32, scale=True)]
    data = _Images(train_x, train_y, v2.Compose(steps))
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=True,
                                         generator=torch.Generator().manual_seed(seed))
    model = build_cnn(num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss(weight=torch.as_tensor(class_weight))
    model.train()
    for _ in range(epochs):
        for images, labels in loader:
            optimizer.zero_grad()
            loss_fn(model(images), labels).backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        test = torch.from_numpy(np.ascontiguousarray(test_x)).permute(0, 3, 1, 2).float() / 255.0
        logits = torch.cat([model(test[i:i + 64]) for i in range(0, len(test), 64)])
    return logits.argmax(1).numpy()
