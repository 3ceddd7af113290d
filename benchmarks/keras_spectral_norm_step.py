"""The Keras training step's time with convsv's spectral normalisation on every convolution, against Keras'.

The model of ``benchmarks/spectral_norm_step.py`` in Keras (three 3x3 convolutions, 3 -> 32 -> 64
-> 64 channels, zero padding, ReLU, a dense head), batch 32 of 32x32 inputs, one SGD step of
``train_on_batch`` (compiled as the backend compiles ``fit``): with no normalisation, with
``keras.layers.SpectralNormalization`` on every convolution, and with
``convsv.keras.SpectralNormalization`` (one power step per call, each layer's own map). The
three models' steps alternate, round after round, so every ratio is taken on the same machine
state; the table gives the median time per step and the median of the per-round ratios.

Run (the backend is Keras', from ``KERAS_BACKEND``)::

    KERAS_BACKEND=jax python benchmarks/keras_spectral_norm_step.py              # 30 rounds
    KERAS_BACKEND=torch python benchmarks/keras_spectral_norm_step.py --rounds 5  # a quick look
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
from report import step_ratios

from convsv.keras import SpectralNormalization


def cnn(normalise: Callable[[Any], Any]) -> Any:
    keras.utils.set_random_seed(0)
    layers = keras.layers
    model = keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            normalise(layers.Conv2D(32, 3, padding="same", activation="relu")),
            normalise(layers.Conv2D(64, 3, padding="same", activation="relu")),
            normalise(layers.Conv2D(64, 3, padding="same", activation="relu")),
            layers.Flatten(),
            layers.Dense(10),
        ]
    )
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=keras.optimizers.SGD(1e-3), loss=loss)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    models = {
        "none": cnn(lambda layer: layer),
        "Keras SpectralNormalization": cnn(keras.layers.SpectralNormalization),
        "convsv SpectralNormalization": cnn(SpectralNormalization),
    }
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, 32)
    times: dict[str, list[float]] = {name: [] for name in models}
    for model in models.values():
        for _ in range(3):  # warm-up: compilation
            model.train_on_batch(x, y)
    for _ in range(args.rounds):
        for name, model in models.items():
            start = time.perf_counter()
            model.train_on_batch(x, y)  # returns the loss as a float: the step has finished
            times[name].append(time.perf_counter() - start)
    print(f"keras {keras.__version__}, backend {keras.backend.backend()}, {args.rounds} rounds\n")
    print("\n".join(step_ratios(times, "Keras SpectralNormalization", "Keras' SpectralNormalization")))


if __name__ == "__main__":
    main()
