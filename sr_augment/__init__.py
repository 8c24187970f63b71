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

from sr_augment import errors  # noqa: E402
from sr_augment.engines import DEFAULT_ENGINE, Engine, get_engine  # noqa: E402
from sr_augment.errors import *  # noqa: E402,F401,F403  (every error and warning, one base class)
from sr_augment.images import load_image, to_rgb  # noqa: E402

__version__ = "0.1.0"

__all__ = ["DEFAULT_ENGINE", "Engine", "__version__", "get_engine", "load_image", "to_rgb", *errors.__all__]
