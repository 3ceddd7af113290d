"""Train a small CNN on the 8x8 digits with its parameters and batches sharded over a device mesh.

The script makes ``--devices`` CPU devices and a 2-D mesh ``("data", "model")``
(2 on "model" when the count is even): each batch is split over "data", every
convolution kernel over its output channels on "model". The jitted step runs
Adam, then ``convsv.optax.clip_operator_norm``, which projects each kernel, split
as it is, onto the ball ``||layer|| <= max_norm`` every ``--every`` steps. At the
end the script checks that every parameter kept its sharding, and prints the
test accuracy and each convolution's norm, recomputed by ``convsv.operator_norm``.

    python examples/optax_mesh_digits.py --devices 4 --steps 300 --max-norm 1.0

On GPUs or TPUs, drop the XLA_FLAGS line: the mesh takes the devices there are. The projection
clips the circular layer on the padded map (``bound="circular"``), which bounds the zero-padded
layer's norm too; the tight bound's Lanczos loop hangs on host-device meshes (docs/sharded.md).
"""

from __future__ import annotations

import argparse
import os

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--devices", type=int, default=4, help="CPU devices to make (before jax is imported)")
parser.add_argument("--steps", type=int, default=300)
parser.add_argument("--max-norm", type=float, default=1.0)
parser.add_argument("--every", type=int, default=1, help="project every N steps (default 1)")
parser.add_argument("--batch-size", type=int, default=128)
args = parser.parse_args()
flags = os.environ.get("XLA_FLAGS", "")
os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={args.devices}".strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

import convsv  # noqa: E402
import convsv.optax  # noqa: E402
from convsv.optax import Conv  # noqa: E402

# The layers' options, used both by the forward pass and by convsv: zero padding 1 on the 8x8 map.
LAYERS = {
    "conv1": Conv((8, 8), stride=1, padding=((1, 1), (1, 1))),  # 1 -> 8 channels, 8x8
    "conv2": Conv((8, 8), stride=2, padding=((1, 1), (1, 1))),  # 8 -> 16 channels, 8x8 -> 4x4
}


def digits(seed: int = 0) -> tuple[np.ndarray, ...]:
    """Train and test images ``(n, 8, 8, 1)`` in [0, 1] with their labels."""
    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)[..., None]
    order = np.random.default_rng(seed).permutation(len(images))
    images, labels = images[order], data.target[order]
    cut = int(0.75 * len(images))
    return images[:cut], labels[:cut], images[cut:], labels[cut:]


def init(mesh: jax.sharding.Mesh, seed: int = 0) -> dict:
    """Parameters placed on the mesh: HWIO kernels, biases and the head split on "model"."""
    rng = np.random.default_rng(seed)

    def put(shape: tuple[int, ...], spec: P, fan_in: int) -> jax.Array:
        value = (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)
        return jax.device_put(value, NamedSharding(mesh, spec))

    zeros = lambda n, spec: jax.device_put(np.zeros(n, np.float32), NamedSharding(mesh, spec))  # noqa: E731
    outputs = P(None, None, None, "model")  # HWIO: the output channels split
    return {
        "conv1": {"kernel": put((3, 3, 1, 8), outputs, 9), "bias": zeros(8, P("model"))},
        "conv2": {"kernel": put((3, 3, 8, 16), outputs, 72), "bias": zeros(16, P("model"))},
        "head": {"kernel": put((4, 4, 16, 10), P(None, None, "model", None), 256), "bias": zeros(10, P())},
    }


def forward(params: dict, x: jax.Array) -> jax.Array:
    """Logits of a batch ``(n, 8, 8, 1)``, split on "data"."""
    for name, conv in LAYERS.items():
        layer = params[name]
        x = jax.lax.conv_general_dilated(
            x,
            layer["kernel"],
            (conv.stride,) * 2,
            conv.padding,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            out_sharding=P("data", None, None, "model"),  # the batch on "data", the channels on "model"
        )
        x = jax.nn.relu(x + layer["bias"])
    # The head contracts the split channels: the logits are summed over "model", split on "data".
    logits = jnp.einsum("nhwc,hwck->nk", x, params["head"]["kernel"], out_sharding=P("data", None))
    return logits + params["head"]["bias"]


def main() -> None:
    """Train on the mesh; check the parameters' sharding, print the accuracy and each kernel's norm."""
    model = 2 if args.devices % 2 == 0 else 1
    mesh = jax.make_mesh((args.devices // model, model), ("data", "model"))  # explicit axes by default
    x_train, y_train, x_test, y_test = digits()
    params = init(mesh)
    shardings = jax.tree.map(lambda a: a.sharding, params)
    shapes = {name: {"kernel": LAYERS.get(name), "bias": None} for name in params}  # the head: None
    tx = optax.chain(
        optax.adam(3e-3),
        convsv.optax.clip_operator_norm(
            args.max_norm,
            shapes,
            every=args.every,
            method="extrapolated",
            iterations=50,
            tol=1e-5,
            bound="circular",  # the circular layer on the padded map: a bound for the zero-padded one
        ),
    )
    opt_state = tx.init(params)
    # The states' step counts replicated on the mesh, where the jitted step returns them: no recompile.
    replicated = NamedSharding(mesh, P())
    opt_state = jax.tree.map(lambda a: jax.device_put(a, replicated) if a.ndim == 0 else a, opt_state)

    @jax.jit
    def train_step(params: dict, opt_state: optax.OptState, x: jax.Array, y: jax.Array) -> tuple:
        def loss_fn(params: dict) -> jax.Array:
            return optax.softmax_cross_entropy_with_integer_labels(forward(params, x), y).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)  # the projection needs params
        return optax.apply_updates(params, updates), opt_state, loss

    batches = NamedSharding(mesh, P("data"))
    size = args.batch_size - args.batch_size % mesh.shape["data"]  # a batch the "data" axis divides
    rng = np.random.default_rng(0)
    with jax.set_mesh(mesh):
        for step in range(1, args.steps + 1):
            batch = rng.choice(len(x_train), size, replace=False)
            x, y = jax.device_put((x_train[batch], y_train[batch]), batches)
            params, opt_state, loss = train_step(params, opt_state, x, y)
            if step % 50 == 0 or step == args.steps:
                print(f"step {step}: loss {float(loss):.3f}")
        test = len(x_test) - len(x_test) % mesh.shape["data"]
        logits = jax.jit(forward)(params, jax.device_put(x_test[:test], batches))

    # Equivalent shardings: a replicated bias may come back as P(None) where it started as P().
    kept = jax.tree.map(lambda a, s: a.sharding.is_equivalent_to(s, a.ndim), params, shardings)
    kept = all(jax.tree.leaves(kept))  # the convolutions', the head's and the biases'
    print(f"every kernel keeps its sharding: {kept}")
    accuracy = float(jnp.mean(jnp.argmax(logits, axis=-1) == y_test[:test]))
    print(f"test accuracy: {accuracy:.3f}")
    for name, conv in LAYERS.items():
        kernel = np.asarray(params[name]["kernel"], dtype=np.float64)  # gathered to the host
        norm = float(convsv.operator_norm(kernel, conv.input_shape, **conv.options("HWIO")))
        print(f"{name} operator norm: {norm:.6f} (bound {args.max_norm})")


if __name__ == "__main__":
    main()
