"""`sr_augment.torch_transforms`: the torchvision `SRAugment` transform (roadmap step 2)."""
