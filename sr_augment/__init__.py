"""sr-augment: diffusion super-resolution as a data augmentation.

    >>> from sr_augment import get_engine
    >>> from sr_augment.cache import SRCache

Framework adapters live in `sr_augment.keras_layers` and `sr_augment.torch_transforms`; importing this
package imports neither torch nor TensorFlow.
"""

import os as _os
import sys as _sys

if _sys.argv[:1] == ["-m"] and _sys.path[:1] == [_os.getcwd()]:
    # `python -m sr_augment ...` (what `accelerate launch -m sr_augment` runs) put the working folder
    # first on sys.path: a module planted there would run as this user. Drop it before importing more.
    del _sys.path[0]

from sr_augment.engines import DEFAULT_ENGINE, Engine, EngineSpecError, EngineUnavailable, get_engine  # noqa: E402
from sr_augment.images import ImageDecodeError, ImageShapeError, load_image, to_rgb  # noqa: E402

__version__ = "0.1.0"

__all__ = ["CacheMissRateWarning", "DEFAULT_ENGINE", "Engine", "EngineSpecError", "EngineUnavailable", "ImageDecodeError", "ImageShapeError", "__version__",
           "get_engine", "load_image", "to_rgb"]


def __getattr__(name: str):
    if name == "CacheMissRateWarning":  # imported on first use: it brings the cache (diskcache, SQLite)
        from sr_augment.augment import CacheMissRateWarning

        return CacheMissRateWarning
    raise AttributeError(f"module 'sr_augment' has no attribute {name!r}")
