"""``convsv.equinox.SpectralNorm``, checked against the Equinox layer's own dense matrix.

The true norm of the normalised layer is read from the layer's outputs on one-hot inputs (its
dense matrix), never from convsv.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

jax = pytest.importorskip("jax")
eqx = pytest.importorskip("equinox")
optax = pytest.importorskip("optax")
import jax.numpy as jnp  # noqa: E402

from convsv.equinox import SpectralNorm  # noqa: E402

LAYERS = {
    "conv2d-zero": (lambda key: eqx.nn.Conv2d(3, 4, 3, padding=1, key=key), (6, 6)),
    "conv2d-circular": (
        lambda key: eqx.nn.Conv2d(3, 4, 3, padding=1, padding_mode="CIRCULAR", key=key),
        (6, 6),
    ),
    "conv2d-stride2-same": (lambda key: eqx.nn.Conv2d(3, 4, 3, stride=2, padding="SAME", key=key), (7, 6)),
    "conv2d-groups-dilation": (
        lambda key: eqx.nn.Conv2d(4, 6, 3, dilation=2, groups=2, padding=2, key=key),
        (6, 5),
    ),
    "conv1d-valid": (lambda key: eqx.nn.Conv1d(3, 4, 5, stride=2, key=key), (12,)),
    # Transposed: the layer's own call is the map, output padding and groups included.
    "convtranspose2d-stride2-output-padding-groups": (
        lambda key: eqx.nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2, key=key),
        (5, 4),
    ),
    "convtranspose1d-dilation-stride2": (
        lambda key: eqx.nn.ConvTranspose1d(3, 4, 3, stride=2, dilation=2, padding=2, key=key),
        (9,),
    ),
}


def _true_norm(apply, channels: int, shape: tuple[int, ...]) -> float:
    """The largest singular value of ``apply`` (one unbatched map in, bias removed), from one-hot inputs."""
    size = channels * math.prod(shape)
    basis = jnp.eye(size).reshape(size, channels, *shape)
    out = jax.vmap(apply)(basis) - apply(jnp.zeros((channels, *shape)))
    return float(np.linalg.svd(np.asarray(out, np.float64).reshape(size, -1), compute_uv=False)[0])


def _make(name: str, **options):
    make, shape = LAYERS[name]
    conv = make(jax.random.key(0))
    layer, state = eqx.nn.make_with_state(SpectralNorm)(conv, shape, key=jax.random.key(1), **options)
    return layer, state, shape


@pytest.mark.parametrize("name", LAYERS)
def test_after_training_that_pushes_the_norm_up_the_inferred_layer_has_norm_one(name):
    """The issue's check: a loss that grows the layer, Adam, jitted steps, then inference: 1 within 2%."""
    layer, state, shape = _make(name)
    channels = layer.layer.in_channels
    optimizer = optax.adam(1e-2)
    params, static = eqx.partition(layer, eqx.is_inexact_array)
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state, state, x):
        def loss(params):
            model = eqx.combine(params, static)
            y, new_state = jax.vmap(model, in_axes=(0, None), out_axes=(0, None))(x, state)
            return -jnp.mean(y**2), new_state

        (_, state), grads = jax.value_and_grad(loss, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state)
        return eqx.apply_updates(params, updates), opt_state, state

    for i in range(100):
        x = jax.random.normal(jax.random.key(i), (4, channels, *shape))
        params, opt_state, state = step(params, opt_state, state, x)
    model = eqx.nn.inference_mode(eqx.combine(params, static))
    _, state = model(jnp.zeros((channels, *shape)), state)  # brings the vectors up to date once
    # The layer as inference applies it: the Conv with the weight the call divided.
    normalised = eqx.tree_at(lambda conv: conv.weight, model.layer, model.normalised_weight(state))
    assert _true_norm(normalised, channels, shape) == pytest.approx(1.0, abs=0.02)


@pytest.mark.parametrize("name", LAYERS)
def test_steps_with_fixed_weights_converge_to_the_layers_norm(name):
    layer, state, shape = _make(name, n_power_iterations=20)
    x = jnp.zeros((layer.layer.in_channels, *shape))
    call = jax.jit(layer.__call__)
    for _ in range(30):
        _, state = call(x, state)
    normalised = eqx.tree_at(lambda conv: conv.weight, layer.layer, layer.normalised_weight(state))
    assert _true_norm(normalised, layer.layer.in_channels, shape) == pytest.approx(1.0, rel=2e-3)


def test_inference_finds_a_depthwise_layer_s_new_top_channel():
    """Training calls on channel 0 damp the vectors' other channels to nothing; after a step that
    puts channel 1 on top, inference's refresh (the stored vector mixed with a fixed random one)
    finds it, where steps from the stored vector alone stay on channel 0 (norm 2 here)."""
    conv = eqx.nn.Conv2d(3, 3, 3, padding=1, groups=3, use_bias=False, key=jax.random.key(4))
    filters = jnp.repeat(conv.weight[:1], 3, axis=0)  # one filter for every channel

    def scaled(scales):
        return eqx.tree_at(lambda c: c.weight, conv, filters * jnp.array(scales)[:, None, None, None])

    layer, state = eqx.nn.make_with_state(SpectralNorm)(scaled([1.0, 0.5, 0.5]), 7, key=jax.random.key(5))
    x = jnp.zeros((3, 7, 7))
    call = jax.jit(layer.__call__)
    for _ in range(40):
        _, state = call(x, state)
    layer = eqx.tree_at(lambda m: m.layer, layer, scaled([0.5, 1.0, 0.5]))
    _, state = layer(x, state, inference=True)
    normalised = eqx.tree_at(lambda c: c.weight, layer.layer, layer.normalised_weight(state))
    assert _true_norm(normalised, 3, (7, 7)) == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize(
    "make",
    [
        lambda key: eqx.nn.Conv2d(2, 3, 3, stride=2, padding=1, key=key),
        lambda key: eqx.nn.ConvTranspose2d(2, 3, 3, stride=2, padding=1, output_padding=1, key=key),
    ],
    ids=["conv", "transposed"],
)
def test_gradient_matches_finite_differences(make):
    jax.config.update("jax_enable_x64", True)
    try:
        conv = make(jax.random.key(0))
        conv = jax.tree.map(lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, conv)
        layer, state = eqx.nn.make_with_state(SpectralNorm)(
            conv, (6, 6), n_power_iterations=20, key=jax.random.key(1)
        )
        x = jax.random.normal(jax.random.key(2), (2, 6, 6), jnp.float64)
        # Converged vectors: the divisor's gradient holds u and v fixed, which is the norm's gradient
        # at the top singular pair (a transposed layer's top values lie close, so 30 steps are short).
        call = jax.jit(layer.__call__)
        for _ in range(5):
            _, state = call(x, state)

        leaves, treedef = jax.tree_util.tree_flatten(state)

        def loss(weight):
            model = eqx.tree_at(lambda m: m.layer.weight, layer, weight)
            fresh = jax.tree_util.tree_unflatten(treedef, leaves)  # each evaluation its own state
            return jnp.sum(model(x, fresh, inference=True)[0] ** 2)

        from jax.test_util import check_grads

        check_grads(jax.jit(loss), (conv.weight,), order=1, modes=["rev"])
    finally:
        jax.config.update("jax_enable_x64", False)


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (
            lambda k: eqx.nn.Linear(3, 4, key=k),
            TypeError,
            "Conv and equinox.nn.ConvTranspose layers, got Linear",
        ),
        (lambda k: eqx.nn.MaxPool2d(3), TypeError, "got MaxPool2d"),
    ],
    ids=["linear", "pool"],
)
def test_errors(make, error, message):
    with pytest.raises(error, match=message):
        SpectralNorm(make(jax.random.key(0)), 8, key=jax.random.key(1))


def test_padding_modes_beyond_zeros_and_circular_are_the_layer_s_own():
    """The map is the layer's own call, so a reflect-padded layer (no circulant or zero-padded model in
    convsv) is normalised by its true norm too."""
    conv = eqx.nn.Conv2d(3, 4, 3, padding=1, padding_mode="REFLECT", key=jax.random.key(0))
    layer, state = eqx.nn.make_with_state(SpectralNorm)(conv, 6, n_power_iterations=20, key=jax.random.key(1))
    call = jax.jit(layer.__call__)
    for _ in range(30):
        _, state = call(jnp.zeros((3, 6, 6)), state)
    normalised = eqx.tree_at(lambda c: c.weight, conv, layer.normalised_weight(state))
    assert _true_norm(normalised, 3, (6, 6)) == pytest.approx(1.0, rel=2e-3)


def test_input_shape_of_the_wrong_rank_is_refused():
    with pytest.raises(ValueError, match="`input_shape` has 3 entries"):
        SpectralNorm(eqx.nn.Conv2d(3, 4, 3, key=jax.random.key(0)), (8, 8, 8), key=jax.random.key(1))
