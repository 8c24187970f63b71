"""`sr_augment.keras_layers`: the Keras 3 `SRAugment` preprocessing layer.

Importing it imports keras (and, with the TensorFlow backend, tensorflow) but never torch: diffusion
engines run in the shared engine service process (`sr_augment.service`).
"""

from sr_augment.keras_layers.sr_augment_layer import SRAugment

__all__ = ["SRAugment"]
