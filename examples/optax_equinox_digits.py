"""Train a small Equinox CNN on the 8x8 digits with every convolution's operator norm bounded.

The last link of the optax chain, ``convsv.optax.clip_operator_norm``, projects
each convolution weight onto the ball ``||layer|| <= max_norm`` every
``--every`` steps, using each layer's own stride, groups and padding (read by
``convsv.optax.equinox_input_shapes`` from one example input). Equinox stores
weights as ``(out, in / groups, kH, kW)``: layout ``"OIHW"``.

    python examples/optax_equinox_digits.py --steps 300 --max-norm 1.0 --every 1
"""

from __future__ import annotations

import argparse

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits

import convsv
import convsv.optax


class CNN(eqx.Module):
    """Three convolutions on 8x8 images: plain, stride 2 and depthwise; a linear head."""

    conv1: eqx.nn.Conv2d
    conv2: eqx.nn.Conv2d
    conv3: eqx.nn.Conv2d
    head: eqx.nn.Linear

    def __init__(self, key: jax.Array) -> None:
        k1, k2, k3, k4 = jax.random.split(key, 4)
        self.conv1 = eqx.nn.Conv2d(1, 8, 3, padding=1, padding_mode="CIRCULAR", key=k1)
        self.conv2 = eqx.nn.Conv2d(8, 16, 3, stride=2, padding=1, key=k2)  # 8x8 -> 4x4, zero padding
        self.conv3 = eqx.nn.Conv2d(16, 16, 3, padding=1, groups=16, padding_mode="CIRCULAR", key=k3)
        self.head = eqx.nn.Linear(16 * 4 * 4, 10, key=k4)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits of one image ``(1, 8, 8)``."""
        x = jax.nn.relu(self.conv1(x))
        x = jax.nn.relu(self.conv2(x))
        x = jax.nn.relu(self.conv3(x))
        return self.head(x.reshape(-1))


def digits(seed: int = 0) -> tuple[np.ndarray, ...]:
    """Train and test images ``(n, 1, 8, 8)`` in [0, 1] with their labels."""
    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)[:, None]
    order = np.random.default_rng(seed).permutation(len(images))
    images, labels = images[order], data.target[order]
    cut = int(0.75 * len(images))
    return images[:cut], labels[:cut], images[cut:], labels[cut:]


def main() -> None:
    """Train with or without the projection; print the test accuracy and each convolution's norm."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--max-norm", type=float, default=1.0)
    parser.add_argument("--every", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--no-clip", action="store_true", help="train without the projection, to compare")
    args = parser.parse_args()

    x_train, y_train, x_test, y_test = digits()
    model = CNN(jax.random.key(0))
    shapes = convsv.optax.equinox_input_shapes(model, x_train[0])  # one unbatched image
    links = [optax.adam(3e-3)]
    if not args.no_clip:
        links.append(
            convsv.optax.clip_operator_norm(
                args.max_norm,
                shapes,
                every=args.every,
                layout="OIHW",
                method="extrapolated",
                iterations=50,
                tol=1e-5,
            )
        )
    tx = optax.chain(*links)
    opt_state = tx.init(eqx.filter(model, eqx.is_inexact_array))

    @eqx.filter_jit
    def train_step(model: CNN, opt_state: optax.OptState, x: jax.Array, y: jax.Array) -> tuple:
        def loss_fn(model: CNN) -> jax.Array:
            logits = jax.vmap(model)(x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = eqx.filter_value_and_grad(loss_fn)(model)
        params = eqx.filter(model, eqx.is_inexact_array)
        updates, opt_state = tx.update(grads, opt_state, params)  # the projection needs params
        return eqx.apply_updates(model, updates), opt_state, loss

    rng = np.random.default_rng(0)
    for step in range(1, args.steps + 1):
        batch = rng.choice(len(x_train), args.batch_size, replace=False)
        model, opt_state, loss = train_step(model, opt_state, x_train[batch], y_train[batch])
        if step % 50 == 0 or step == args.steps:
            print(f"step {step}: loss {float(loss):.3f}")

    accuracy = float(jnp.mean(jnp.argmax(jax.vmap(model)(x_test), axis=-1) == y_test))
    print(f"test accuracy: {accuracy:.3f}")
    for name in ("conv1", "conv2", "conv3"):
        conv = getattr(shapes, name).weight  # the layer's convsv options
        weight = np.asarray(getattr(model, name).weight, dtype=np.float64)
        norm = float(convsv.operator_norm(weight, conv.input_shape, **conv.options("OIHW")))
        print(f"{name} operator norm: {norm:.4f} (bound {args.max_norm})")


if __name__ == "__main__":
    main()
