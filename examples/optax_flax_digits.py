"""Train a small Flax NNX CNN on the 8x8 digits with every convolution's operator norm bounded.

The last link of the optax chain, ``convsv.optax.clip_operator_norm``, projects
each convolution kernel onto the ball ``||layer|| <= max_norm`` every
``--every`` steps, using each layer's own stride, groups and padding (read by
``convsv.optax.nnx_input_shapes`` from one example input).

    python examples/optax_flax_digits.py --steps 300 --max-norm 1.0 --every 1
"""

from __future__ import annotations

import argparse

import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from sklearn.datasets import load_digits

import convsv
import convsv.optax


class CNN(nnx.Module):
    """Three convolutions on 8x8 images: plain, stride 2 and depthwise; a linear head."""

    def __init__(self, rngs: nnx.Rngs) -> None:
        self.conv1 = nnx.Conv(1, 8, (3, 3), padding="CIRCULAR", rngs=rngs)
        self.conv2 = nnx.Conv(8, 16, (3, 3), strides=2, padding="SAME", rngs=rngs)  # 8x8 -> 4x4
        self.conv3 = nnx.Conv(16, 16, (3, 3), feature_group_count=16, padding="CIRCULAR", rngs=rngs)
        self.head = nnx.Linear(4 * 4 * 16, 10, rngs=rngs)

    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        """Logits of a batch ``(n, 8, 8, 1)``."""
        x = nnx.relu(self.conv1(x))
        x = nnx.relu(self.conv2(x))
        x = nnx.relu(self.conv3(x))
        return self.head(x.reshape(x.shape[0], -1))


def digits(seed: int = 0) -> tuple[np.ndarray, ...]:
    """Train and test images ``(n, 8, 8, 1)`` in [0, 1] with their labels."""
    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)[..., None]
    order = np.random.default_rng(seed).permutation(len(images))
    images, labels = images[order], data.target[order]
    cut = int(0.75 * len(images))
    return images[:cut], labels[:cut], images[cut:], labels[cut:]


@nnx.jit
def train_step(model: CNN, optimizer: nnx.Optimizer, x: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
    """One Adam step, then the projection (the chain's last link); returns the loss."""

    def loss_fn(model: CNN) -> jnp.ndarray:
        return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)  # passes the parameters on to the chain, as the projection needs
    return loss


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
    model = CNN(nnx.Rngs(0))
    shapes = convsv.optax.nnx_input_shapes(model, x_train[:1])  # a Conv(...) at each kernel, None elsewhere
    links = [optax.adam(3e-3)]
    if not args.no_clip:
        links.append(
            convsv.optax.clip_operator_norm(
                args.max_norm, shapes, every=args.every, method="extrapolated", iterations=50, tol=1e-5
            )
        )
    optimizer = nnx.Optimizer(model, optax.chain(*links), wrt=nnx.Param)

    rng = np.random.default_rng(0)
    for step in range(1, args.steps + 1):
        batch = rng.choice(len(x_train), args.batch_size, replace=False)
        loss = train_step(model, optimizer, x_train[batch], y_train[batch])
        if step % 50 == 0 or step == args.steps:
            print(f"step {step}: loss {float(loss):.3f}")

    accuracy = float(jnp.mean(jnp.argmax(model(x_test), axis=-1) == y_test))
    print(f"test accuracy: {accuracy:.3f}")
    for name in ("conv1", "conv2", "conv3"):
        conv = shapes[name]["kernel"]  # the layer's convsv options
        kernel = np.asarray(getattr(model, name).kernel[...], dtype=np.float64)
        norm = float(convsv.operator_norm(kernel, conv.input_shape, **conv.options("HWIO")))
        print(f"{name} operator norm: {norm:.4f} (bound {args.max_norm})")


if __name__ == "__main__":
    main()
