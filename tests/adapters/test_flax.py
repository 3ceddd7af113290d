"""``convsv.flax.SpectralNorm``, checked against the Flax layer's own dense matrix.

The true norm of the normalised layer is read from the layer's outputs on one-hot inputs (its
dense matrix), never from convsv. ``flax.nnx.SpectralNorm``, trained the same way, is measured the
same way beside it. ``python tests/adapters/test_flax.py`` prints both norms for every layer.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

jax = pytest.importorskip("jax")
nnx = pytest.importorskip("flax.nnx")
optax = pytest.importorskip("optax")
import jax.numpy as jnp  # noqa: E402

from convsv.flax import SpectralNorm  # noqa: E402

# (make the Conv from Rngs, input spatial shape): every option the wrapper models, 1-D to 3-D.
LAYERS = {
    "conv2d-zero": (lambda rngs: nnx.Conv(3, 4, (3, 3), padding=1, rngs=rngs), (6, 6)),
    "conv2d-circular": (lambda rngs: nnx.Conv(3, 4, (3, 3), padding="CIRCULAR", rngs=rngs), (6, 6)),
    "conv2d-stride2-same": (
        lambda rngs: nnx.Conv(3, 4, (3, 3), strides=2, padding="SAME", rngs=rngs),
        (7, 6),
    ),
    "conv2d-groups-dilation": (
        lambda rngs: nnx.Conv(
            4, 6, (3, 3), kernel_dilation=2, feature_group_count=2, padding=((2, 1), (2, 2)), rngs=rngs
        ),
        (6, 5),
    ),
    "conv1d-causal-dilated-stride2": (
        lambda rngs: nnx.Conv(3, 4, (3,), strides=2, kernel_dilation=2, padding="CAUSAL", rngs=rngs),
        (11,),
    ),
    "conv3d-same": (lambda rngs: nnx.Conv(2, 3, (3, 3, 3), padding="SAME", rngs=rngs), (4, 4, 4)),
    # Transposed: the layer's own call is the map (Flax's ConvTranspose has no groups).
    "convtranspose2d-stride2-same": (
        lambda rngs: nnx.ConvTranspose(3, 4, (3, 3), strides=2, padding="SAME", rngs=rngs),
        (5, 4),
    ),
    "convtranspose1d-explicit-dilated-stride2": (
        lambda rngs: nnx.ConvTranspose(
            3, 4, (3,), strides=2, kernel_dilation=2, padding=((3, 2),), rngs=rngs
        ),
        (9,),
    ),
}
TRAINING_STEPS = 100


def _true_norm(apply, channels: int, shape: tuple[int, ...]) -> float:
    """The largest singular value of ``apply`` (batched NHWC maps in, bias removed), from one-hot inputs.

    One call on the one-hot maps and a zero map together: the layer as a single call applies it.
    """
    size = channels * math.prod(shape)
    basis = jnp.eye(size).reshape(size, *shape, channels)
    out = apply(jnp.concatenate([basis, jnp.zeros((1, *shape, channels))]))
    matrix = np.asarray(out[:-1] - out[-1:], np.float64).reshape(size, -1)
    return float(np.linalg.svd(matrix, compute_uv=False)[0])


def _conv(name: str) -> tuple[nnx.Conv, tuple[int, ...]]:
    make, shape = LAYERS[name]
    return make(nnx.Rngs(0)), shape


def _train(model, channels: int, shape: tuple[int, ...]) -> None:
    """Adam on a loss that pushes the layer's norm up, in jitted nnx.Optimizer steps (in place)."""
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, x):
        grads = nnx.grad(lambda model: -jnp.mean(model(x) ** 2))(model)
        optimizer.update(model, grads)

    for i in range(TRAINING_STEPS):
        step(model, optimizer, jax.random.normal(jax.random.key(i), (4, *shape, channels)))


def _trained_norms(name: str) -> tuple[float, float]:
    """The true norms, in evaluation after the same training, of convsv's and flax's normalised layer."""
    norms = []
    call = nnx.jit(lambda model, x: model(x))
    for wrap in (
        lambda conv, shape: SpectralNorm(conv, shape, rngs=nnx.Rngs(1)),
        lambda conv, _: nnx.SpectralNorm(conv, rngs=nnx.Rngs(1)),
    ):
        conv, shape = _conv(name)
        model = wrap(conv, shape)
        _train(model, conv.in_features, shape)
        model.eval()
        norms.append(_true_norm(lambda x, model=model: call(model, x), conv.in_features, shape))
    return norms[0], norms[1]


@pytest.mark.parametrize("name", LAYERS)
def test_after_training_that_pushes_the_norm_up_the_evaluated_layer_has_norm_one(name):
    """The issue's check: a loss that grows the layer, Adam, jitted steps, then eval: 1 within 2%.

    flax's own nnx.SpectralNorm, trained the same way, holds the kernel's matrix norm at 1, not the
    layer's: its layers end 20% to 140% off (1.21 to 2.41 when this was written).
    """
    ours, theirs = _trained_norms(name)
    assert ours == pytest.approx(1.0, abs=0.02)
    if not name.startswith("convtranspose"):
        # A stride-2 transposed layer's norm can lie near its kernel's matrix norm (nnx's ends at
        # 1.01 to 1.25 on the two here, depending on the PRNG): reported by __main__, not asserted.
        assert abs(theirs - 1) > 0.1


def _converged_norm(conv, shape: tuple[int, ...]) -> float:
    """The true norm of ``conv`` with the kernel that converged steps (fixed kernel) divide it to."""
    layer = SpectralNorm(conv, shape, n_steps=20, rngs=nnx.Rngs(1))
    call = nnx.jit(lambda layer, x: layer(x))
    x = jnp.zeros((1, *shape, conv.in_features))
    for _ in range(10):
        call(layer, x)
    # The layer as it applies the divided kernel (a copy: the wrapped layer's parameter is its own).
    normalised = nnx.clone(conv)
    normalised.kernel[...] = layer.normalised_kernel()
    return _true_norm(normalised, conv.in_features, shape)


@pytest.mark.parametrize(
    "name",
    [
        "conv2d-stride2-same",
        "conv3d-same",
        "convtranspose2d-stride2-same",
        "convtranspose1d-explicit-dilated-stride2",
    ],
)
def test_steps_with_a_fixed_kernel_converge_to_the_layers_norm(name):
    assert _converged_norm(*_conv(name)) == pytest.approx(1.0, rel=2e-3)


@pytest.mark.parametrize(
    "make",
    [
        lambda r: nnx.Conv(3, 4, (3, 3), padding="REFLECT", rngs=r),
        lambda r: nnx.Conv(3, 4, (3, 3), strides=3, padding="CIRCULAR", rngs=r),
        lambda r: nnx.Conv(3, 4, (3, 3), input_dilation=2, padding=1, rngs=r),
        lambda r: nnx.Conv(3, 4, (3, 3), mask=jnp.ones((3, 3, 3, 4)).at[1, 1].set(0), rngs=r),
        lambda r: nnx.ConvTranspose(
            3, 4, (3, 3), strides=2, padding="CIRCULAR", transpose_kernel=True, rngs=r
        ),
    ],
    ids=[
        "reflect",
        "circular-not-circulant",
        "input-dilation",
        "mask",
        "transposed-circular-transpose-kernel",
    ],
)
def test_options_convsv_does_not_model_are_the_layer_s_own(make):
    """The map is the layer's own call, so options without a model in convsv's core are normalised too."""
    assert _converged_norm(make(nnx.Rngs(0)), (6, 6)) == pytest.approx(1.0, rel=2e-3)


def test_the_kernel_parameter_is_never_written():
    conv, shape = _conv("conv2d-zero")
    kernel = np.asarray(conv.kernel[...])
    layer = SpectralNorm(conv, shape, rngs=nnx.Rngs(1))
    x = jax.random.normal(jax.random.key(0), (2, *shape, 3))
    layer(x)
    nnx.jit(lambda layer, x: layer(x))(layer, x)
    layer(x, update_stats=False)
    np.testing.assert_array_equal(np.asarray(layer.layer_instance.kernel[...]), kernel)
    # ... while the output is that of the divided kernel (the norm of the initial kernel is not 1).
    assert not np.allclose(np.asarray(layer.normalised_kernel()), kernel, rtol=0.1)


def test_jit_and_eager_calls_agree():
    conv, shape = _conv("conv2d-groups-dilation")
    eager = SpectralNorm(conv, shape, rngs=nnx.Rngs(1))
    jitted = nnx.clone(eager)
    x = jax.random.normal(jax.random.key(0), (2, *shape, 4))
    call = nnx.jit(lambda layer, x: layer(x))
    for _ in range(3):
        np.testing.assert_allclose(call(jitted, x), eager(x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(jitted.v[...], eager.v[...], rtol=1e-5, atol=1e-6)


def test_eval_mode_uses_the_stored_vectors_and_refreshes_them_when_the_kernel_moved():
    conv, shape = _conv("conv2d-zero")
    layer = SpectralNorm(conv, shape, rngs=nnx.Rngs(1))
    x = jax.random.normal(jax.random.key(0), (2, *shape, 3))
    layer.eval()
    assert layer.use_running_average
    v = np.asarray(layer.v[...])
    layer(x)
    np.testing.assert_array_equal(np.asarray(layer.v[...]), v)  # the kernel did not move: no step
    conv.kernel[...] = conv.kernel[...] * jnp.linspace(0.5, 2.0, conv.kernel.size).reshape(conv.kernel.shape)
    layer(x)
    assert not np.array_equal(np.asarray(layer.v[...]), v)  # it did: brought up to date
    np.testing.assert_array_equal(np.asarray(layer.seen_kernel[...]), np.asarray(conv.kernel[...]))
    layer.train()
    assert not layer.use_running_average
    assert nnx.view(layer, use_running_average=True).use_running_average


@pytest.mark.parametrize(
    "make",
    [
        lambda rngs: nnx.Conv(2, 3, (3, 3), strides=2, padding=1, param_dtype=jnp.float64, rngs=rngs),
        lambda rngs: nnx.ConvTranspose(
            2, 3, (3, 3), strides=2, padding=1, param_dtype=jnp.float64, rngs=rngs
        ),
    ],
    ids=["conv", "transposed"],
)
def test_gradient_matches_finite_differences(make):
    jax.config.update("jax_enable_x64", True)
    try:
        conv = make(nnx.Rngs(0))
        layer = SpectralNorm(conv, (6, 6), n_steps=20, rngs=nnx.Rngs(1))
        x = jax.random.normal(jax.random.key(2), (1, 6, 6, 2), jnp.float64)
        # Converged vectors: the divisor's gradient holds u and v fixed, which is the norm's gradient
        # at the top singular pair (a transposed layer's top values lie close, so 30 steps are short).
        call = nnx.jit(lambda layer, x: layer(x))
        for _ in range(5):
            call(layer, x)
        graphdef, state = nnx.split(layer)

        def loss(kernel):
            fresh = nnx.merge(graphdef, state, copy=True)  # each evaluation its own copy of the state
            fresh.layer_instance.kernel = nnx.Param(kernel)
            return jnp.sum(fresh(x, update_stats=False) ** 2)

        from jax.test_util import check_grads

        check_grads(jax.jit(loss), (conv.kernel[...],), order=1, modes=["rev"])
    finally:
        jax.config.update("jax_enable_x64", False)


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (
            lambda r: nnx.Linear(3, 4, rngs=r),
            TypeError,
            "Conv and flax.nnx.ConvTranspose layers .* got Linear",
        ),
        # What the layer's own call refuses, at construction (the map is applied there).
        (lambda r: nnx.Conv(3, 4, (3, 3), padding="CAUSAL", rngs=r), ValueError, "Causal padding"),
    ],
    ids=["linear", "causal-2d"],
)
def test_layers_it_cannot_normalise_are_refused(make, error, message):
    with pytest.raises(error, match=message):
        SpectralNorm(make(nnx.Rngs(0)), 8, rngs=nnx.Rngs(1))


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"input_shape": (8, 8, 8)}, ValueError, "`input_shape` has 3 entries"),
        ({"n_steps": 0}, ValueError, "`n_steps` must be a positive int"),
        ({"epsilon": 0.0}, ValueError, "`epsilon` must be a positive float"),
    ],
)
def test_bad_arguments_are_refused(options, error, message):
    with pytest.raises(error, match=message):
        SpectralNorm(
            nnx.Conv(3, 4, (3, 3), rngs=nnx.Rngs(0)), **{"input_shape": 8, **options}, rngs=nnx.Rngs(1)
        )


def test_an_input_of_another_size_is_refused():
    layer = SpectralNorm(nnx.Conv(3, 4, (3, 3), rngs=nnx.Rngs(0)), 8, rngs=nnx.Rngs(1))
    with pytest.raises(ValueError, match=r"spatial shape \(9, 8\), but .* input_shape=\(8, 8\)"):
        layer(jnp.zeros((1, 9, 8, 3)))


if __name__ == "__main__":
    print(f"{'layer':30} {'convsv.flax':>12} {'nnx.SpectralNorm':>17}")
    for layer_name in LAYERS:
        ours, theirs = _trained_norms(layer_name)
        print(f"{layer_name:30} {ours:12.4f} {theirs:17.4f}")
