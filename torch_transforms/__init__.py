"""`sr_augment.torch_transforms`: the torchvision v2 `SRAugment` transform."""

from sr_augment.torch_transforms.sr_augment_transform import SRAugment

__all__ = ["SRAugment"]
