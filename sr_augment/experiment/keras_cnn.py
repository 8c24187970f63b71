"""The study's CNN and training protocol in Keras 3; the HR+SRAugment arms use the Keras `SRAugment` layer.

The same protocol as `torch_cnn` (see its `PROTOCOL`), in Keras's own pieces: the ResNet built with the
functional API, AdamW with a warm-up-then-cosine schedule (the one-cycle shape), label smoothing through
one-hot labels, `class_weight` in `fit`, and the light augmentation as layers (a random translation of up
to 1/8 of the side with reflected borders is the pad-and-crop; a horizontal flip). The test fold's
accuracy per epoch is `fit`'s validation accuracy, recorded only.
"""

from __future__ import annotations

import numpy as np

from sr_augment.experiment.torch_cnn import PROTOCOL as _TORCH_PROTOCOL

PROTOCOL = {**_TORCH_PROTOCOL, "schedule": "linear warm-up (20%) then cosine decay (Keras CosineDecay)",
            "augmentation": "random translation up to 1/8 (reflect) + horizontal flip"}


def build_cnn(num_classes: int, size: int, width: int = PROTOCOL["width"], augment: dict | None = None,
              seed: int | None = None):
    """`torch_cnn.build_cnn`'s architecture with the augmentation layers in front."""
    import keras
    from keras import layers

    inputs = keras.Input((size, size, 3))
    x = inputs
    if augment:
        from sr_augment.keras_layers import SRAugment

        x = SRAugment(engine=augment["engine"], mode="resynthesize", scale=augment["scale"],
                      variants=augment["variants"], p=augment["p"], cache_dir=augment["cache_dir"], on_miss="error",
                      seed=seed)(x)
    x = layers.RandomTranslation(0.125, 0.125, fill_mode="reflect", seed=seed)(x)
    x = layers.RandomFlip("horizontal", seed=seed)(x)
    x = layers.Rescaling(1 / 255)(x)

    def conv_bn(x, filters, stride=1, kernel=3):
        x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False)(x)
        return layers.BatchNormalization()(x)

    def block(x, filters, stride):
        shortcut = x if stride == 1 and x.shape[-1] == filters else conv_bn(x, filters, stride, kernel=1)
        out = layers.ReLU()(conv_bn(x, filters, stride))
        return layers.ReLU()(layers.Add()([conv_bn(out, filters), shortcut]))

    x = layers.ReLU()(conv_bn(x, width, 2))
    x = block(x, width, 1)
    x = block(x, 2 * width, 2)
    x = block(x, 4 * width, 2)
    outputs = layers.Dense(num_classes)(layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, outputs)


def _compile(model, steps: int):
    import keras

    warmup = max(1, int(0.2 * steps))
    schedule = keras.optimizers.schedules.CosineDecay(PROTOCOL["lr"] / 25, decay_steps=max(1, steps - warmup),
                                                      warmup_target=PROTOCOL["lr"], warmup_steps=warmup)
    model.compile(optimizer=keras.optimizers.AdamW(schedule, weight_decay=PROTOCOL["weight_decay"]),
                  loss=keras.losses.CategoricalCrossentropy(from_logits=True,
                                                            label_smoothing=PROTOCOL["label_smoothing"]),
                  metrics=["accuracy"])
    return schedule


def time_step(size: int, num_classes: int, batch_size: int = PROTOCOL["batch_size"], width: int = PROTOCOL["width"],
              device: str = "auto", steps: int = 3) -> float:
    """Seconds per training image of one optimiser step on random data, after one warm-up step."""
    import time

    import keras

    model = build_cnn(num_classes, size, width)
    _compile(model, 100)
    x = np.random.default_rng(0).integers(0, 256, (batch_size, size, size, 3)).astype("float32")
    y = keras.utils.to_categorical(np.arange(batch_size) % num_classes, num_classes)
    model.train_on_batch(x, y)
    started = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    return (time.perf_counter() - started) / (steps * batch_size)


def train_and_predict(train_x, train_y, test_x, test_y, num_classes: int, *, epochs: int, seed: int, class_weight,
                      batch_size: int = PROTOCOL["batch_size"], width: int = PROTOCOL["width"], device: str = "auto",
                      augment: dict | None = None) -> dict:
    """`torch_cnn.train_and_predict` in Keras: test predictions and per-epoch curves."""
    import keras

    keras.utils.set_random_seed(seed)
    model = build_cnn(num_classes, train_x.shape[1], width, augment, seed)
    steps_per_epoch = -(-len(train_x) // batch_size)
    schedule = _compile(model, epochs * steps_per_epoch)
    history = model.fit(train_x.astype("float32"), keras.utils.to_categorical(train_y, num_classes), epochs=epochs,
                        batch_size=batch_size, verbose=0, class_weight={i: float(w) for i, w in enumerate(class_weight)},
                        validation_data=(test_x.astype("float32"), keras.utils.to_categorical(test_y, num_classes)))
    predictions = np.argmax(model.predict(test_x.astype("float32"), batch_size=256, verbose=0), axis=1)
    fit = np.argmax(model.predict(train_x.astype("float32"), batch_size=256, verbose=0), axis=1)
    return {"predictions": predictions,
            "diagnostics": {"steps": epochs * steps_per_epoch, "eval_train_accuracy": float(np.mean(fit == train_y))},
            "curves": {"train_loss": [float(v) for v in history.history["loss"]],
                       "train_accuracy": [float(v) for v in history.history["accuracy"]],
                       "test_accuracy": [float(v) for v in history.history["val_accuracy"]],
                       "lr": [float(schedule(e * steps_per_epoch)) for e in range(epochs)]}}
