"""Pre-warming the cache, so that training costs no diffusion.

One job per module:
- `local`: warm a cache in this process (files or loaded items), resumable, with a summary (`WarmReport`);
- `pipeline`: warm through the user's own dataset and pipeline (the adapters' `SRAugment.warm`);
- `accelerate`: one process per device under `accelerate launch`, pixel-balanced shares (`balance`);
- `ray`: a Ray Data actor pool writing portable shards;
- `options`: the CLI's warm options (`--resize`, `--center-crop`, `--set`, `--dry-run`), with
  `tv_geometry`, torchvision v2's resize and centre crop on PIL images, pixel for pixel.
"""

from sr_augment.warm.local import WarmReport, warm, warm_items

__all__ = ["WarmReport", "warm", "warm_items"]
