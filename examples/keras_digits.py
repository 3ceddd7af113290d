"""Train a small CNN on scikit-learn's 8x8 digits with every convolution's operator norm bounded.

Runs on any Keras 3 backend; pick it with the environment variable::

    KERAS_BACKEND=jax python examples/keras_digits.py --route callback --every 10
    KERAS_BACKEND=torch python examples/keras_digits.py --route constraint
    KERAS_BACKEND=tensorflow python examples/keras_digits.py --route constraint

``--route callback`` projects every convolution each ``--every`` steps with
:class:`convsv.keras.OperatorNormClipping`, reading each layer's options from
the model; ``--route constraint`` gives each convolution an
:class:`convsv.keras.OperatorNormConstraint`, applied after every update.
``--route none`` trains without a bound, for comparison. The script prints
the test accuracy and each convolution's operator norm.
"""

from __future__ import annotations

import argparse

import keras
import numpy as np
from sklearn.datasets import load_digits

from convsv.keras import OperatorNormClipping, OperatorNormConstraint, conv_kernels

# Enough projection steps to meet the bound to 1e-5 every time (float32 weights).
CLIP = {"method": "extrapolated", "iterations": 50, "tol": 1e-5}


def digits(seed: int) -> tuple[np.ndarray, ...]:
    """75/25 split of the 1797 8x8 digits, as (n, 8, 8, 1) images in [0, 1] and labels."""
    data = load_digits()
    images = (data.images / 16.0).astype("float32")[..., None]
    order = np.random.default_rng(seed).permutation(len(images))
    images, labels = images[order], data.target[order]
    cut = int(0.75 * len(images))
    return images[:cut], labels[:cut], images[cut:], labels[cut:]


def build_model(constraint: dict[str, OperatorNormConstraint] | None = None) -> keras.Model:
    """Conv 3x3 -> conv 3x3 stride 2 -> depthwise 3x3 -> dense."""
    constraint = constraint or {}
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(8, 3, padding="same", name="conv", kernel_constraint=constraint.get("conv")),
            keras.layers.ReLU(),
            keras.layers.Conv2D(
                16, 3, strides=2, padding="same", name="down", kernel_constraint=constraint.get("down")
            ),
            keras.layers.ReLU(),
            keras.layers.DepthwiseConv2D(
                3, padding="same", name="depthwise", depthwise_constraint=constraint.get("depthwise")
            ),
            keras.layers.ReLU(),
            keras.layers.Flatten(),
            keras.layers.Dense(10),
        ]
    )


def constraints(max_norm: float) -> dict[str, OperatorNormConstraint]:
    """One constraint per convolution, with that layer's options and input size."""
    return {
        "conv": OperatorNormConstraint(max_norm, (8, 8), padding="same", **CLIP),
        "down": OperatorNormConstraint(max_norm, (8, 8), strides=2, padding="same", **CLIP),
        "depthwise": OperatorNormConstraint(max_norm, (4, 4), padding="same", kind="depthwise", **CLIP),
    }


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments, train, and report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--route", choices=["callback", "constraint", "none"], default="callback")
    parser.add_argument("--max-norm", type=float, default=1.0, help="bound on each layer's operator norm")
    parser.add_argument("--every", type=int, default=10, help="callback route: project every N steps")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--steps", type=int, default=None, help="steps per epoch (default: the whole set)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    keras.utils.set_random_seed(args.seed)
    x_train, y_train, x_test, y_test = digits(args.seed)
    model = build_model(constraints(args.max_norm) if args.route == "constraint" else None)
    # The constraint runs in NumPy on the TensorFlow backend, which XLA cannot compile.
    jit = False if args.route == "constraint" and keras.backend.backend() == "tensorflow" else "auto"
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=jit,
    )
    callbacks = []
    if args.route == "callback":
        callbacks.append(OperatorNormClipping(args.max_norm, every=args.every, **CLIP))
    model.fit(
        x_train,
        y_train,
        batch_size=args.batch_size,
        epochs=args.epochs,
        steps_per_epoch=args.steps,
        callbacks=callbacks,
        verbose=0,
    )
    if args.route == "callback":  # end on a projection, whatever the step count
        callbacks[0].clip()

    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    print(f"backend: {keras.backend.backend()}, route: {args.route}, max_norm: {args.max_norm}")
    print(f"test accuracy: {accuracy:.3f}")
    for name, attr, variable, constraint in conv_kernels(model, args.max_norm):
        norm = constraint.operator_norm(variable)
        print(f"operator norm of {name}.{attr}: {norm:.4f}")


if __name__ == "__main__":
    main()
