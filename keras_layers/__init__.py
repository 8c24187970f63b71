"""`sr_augment.keras_layers`: the Keras 3 `SRAugment` preprocessing layer (roadmap step 2)."""
