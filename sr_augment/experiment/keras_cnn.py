"""The experiment's CNN in Keras 3; the HR+SRAugment arm uses the Keras `SRAugment` layer."""

from __future__ import annotations

import numpy as np


def build_cnn(num_classes: int, input_size: int, augment: dict | None):
    """The same architecture as `torch_cnn.build_cnn`, with the augmentation stack in front."""
    import keras

    from sr_augment.keras_layers import SRAugment

    layers = [keras.Input((input_size, input_size, 3))]
    if augment:
        layers.append(SRAugment(engine=augment["engine"], mode="resynthesize", variants=augment["variants"],
                                p=augment["p"], cache_dir=augment["cache_dir"], on_miss="error", seed=augment["seed"]))
    layers += [keras.layers.RandomFlip("horizontal", seed=augment["seed"] if augment else None),
               keras.layers.Rescaling(1 / 255)]
    for i, width in enumerate((32, 64, 128, 128)):
        layers += [keras.layers.Conv2D(width, 3, strides=2 if i == 0 else 1, padding="same", use_bias=False),
                   keras.layers.BatchNormalization(),
                   keras.layers.ReLU()]
        if i < 3:
            layers.append(keras.layers.MaxPooling2D())
    layers += [keras.layers.GlobalAveragePooling2D(), keras.layers.Dropout(0.2), keras.layers.Dense(num_classes)]
    return keras.Sequential(layers)


def train_and_predict(train_x, train_y, test_x, num_classes: int, *, epochs: int, seed: int, class_weight,
                      batch_size: int = 32, augment: dict | None = None) -> np.ndarray:
    """Train from scratch with `seed` and return test predictions (class weights via `fit`)."""
    import keras

    keras.utils.set_random_seed(seed)
    model = build_cnn(num_classes, train_x.shape[1], {**augment, "seed": seed} if augment else None)
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(train_x.astype("float32"), train_y, epochs=epochs, batch_size=batch_size, verbose=0,
              class_weight={i: float(w) for i, w in enumerate(class_weight)})
    return np.argmax(model.predict(test_x.astype("float32"), batch_size=64, verbose=0), axis=1)
