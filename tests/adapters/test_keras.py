"""The Keras 3 adapter, on whichever backend KERAS_BACKEND selects (jax, torch or tensorflow).

Ground truth is independent of the adapter: the dense matrix of the Keras layer itself, built by
applying the layer to every basis input, and its SVD.
"""

from __future__ import annotations

import math
import os
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest

if os.environ.get("CONVSV_REQUIRE_ADAPTERS") == "1":
    import keras  # a Keras session: a missing Keras or backend is a failure, not a skip
else:
    keras = pytest.importorskip("keras")

import convsv
from convsv.keras import (
    OperatorNormClipping,
    OperatorNormConstraint,
    clip_operator_norm_,
)

from .digits import digits

BACKEND = keras.backend.backend()
CLIP = {"method": "extrapolated", "iterations": 50, "tol": 1e-5}
TOL = CLIP["tol"]
ROOT = Path(__file__).resolve().parents[2]


def to_numpy(x):
    if isinstance(x, keras.Variable):
        x = x.value
    if hasattr(x, "detach"):  # torch
        return x.detach().cpu().numpy()
    if hasattr(x, "numpy"):  # TensorFlow
        return np.asarray(x.numpy())
    return np.asarray(x)


def dense_matrix(layer, spatial, channels, data_format="channels_last"):
    """The layer's linear map (bias removed) as a float64 matrix, column j = layer(e_j)."""
    n = math.prod(spatial) * channels
    shape = (*spatial, channels) if data_format == "channels_last" else (channels, *spatial)
    basis = np.eye(n + 1, n, dtype="float32").reshape(n + 1, *shape)  # the last input is 0
    out = to_numpy(layer(basis)).reshape(n + 1, -1).astype(np.float64)
    return (out[:-1] - out[-1]).T


def dense_norm(layer, spatial, channels, data_format="channels_last"):
    """The dense matrix's largest singular value (from the smaller Gram matrix: cheaper than an SVD)."""
    matrix = dense_matrix(layer, spatial, channels, data_format)
    gram = matrix @ matrix.T if matrix.shape[0] <= matrix.shape[1] else matrix.T @ matrix
    return float(np.sqrt(np.linalg.eigvalsh(gram)[-1]))


class Glorot(keras.initializers.Initializer):
    """Glorot-uniform from NumPy: on JAX, Keras' own random initializers compile once per shape (seconds)."""

    def __init__(self, seed=0):
        self.rng = np.random.default_rng(seed)

    def __call__(self, shape, dtype=None):
        receptive = math.prod(shape[:-2])
        limit = math.sqrt(6 / ((shape[-2] + shape[-1]) * receptive))
        return keras.ops.convert_to_tensor(self.rng.uniform(-limit, limit, shape).astype("float32"))


def glorot(seed):
    return {"kernel_initializer": Glorot(seed), "bias_initializer": "zeros"}


ONES = {"kernel_initializer": "ones", "bias_initializer": "zeros"}


def set_random_kernel(layer, seed):
    variable = layer.kernel if hasattr(layer, "kernel") else layer.depthwise_kernel
    rng = np.random.default_rng(seed)
    variable.assign(rng.standard_normal(variable.shape).astype("float32") / 3)


# -- layer options: the adapter's norm is the Keras layer's ------------------------------------------

L = keras.layers
Z = {"use_bias": False, "kernel_initializer": "zeros"}  # the kernels are set below
DZ = {"use_bias": False, "depthwise_initializer": "zeros"}
LAYERS = {
    "conv1d-valid": (lambda: L.Conv1D(3, 3, **Z), (9,), 2),
    "conv1d-same-s2": (lambda: L.Conv1D(3, 3, strides=2, padding="same", **Z), (9,), 2),
    "conv1d-causal-d2": (lambda: L.Conv1D(3, 3, dilation_rate=2, padding="causal", **Z), (9,), 2),
    "conv1d-groups": (lambda: L.Conv1D(4, 3, padding="same", groups=2, **Z), (8,), 4),
    "conv2d-same-s2-odd": (lambda: L.Conv2D(3, 3, strides=2, padding="same", **Z), (7, 7), 2),
    "conv2d-same-s2-even-k": (lambda: L.Conv2D(3, 4, strides=2, padding="same", **Z), (6, 6), 2),
    "conv2d-valid-dilated": (lambda: L.Conv2D(3, (3, 2), dilation_rate=(2, 1), **Z), (7, 6), 2),
    "conv2d-same-s12": (lambda: L.Conv2D(3, 3, strides=(1, 2), padding="same", **Z), (5, 6), 2),
    "conv2d-groups": (lambda: L.Conv2D(4, 3, padding="same", groups=2, **Z), (5, 5), 4),
    "conv3d-same-s2": (lambda: L.Conv3D(2, 2, strides=2, padding="same", **Z), (4, 4, 3), 2),
    "depthwise1d-s2": (
        lambda: L.DepthwiseConv1D(3, strides=2, padding="same", depth_multiplier=2, **DZ),
        (9,),
        3,
    ),
    "depthwise2d-s2": (
        lambda: L.DepthwiseConv2D(3, strides=2, padding="same", depth_multiplier=2, **DZ),
        (6, 6),
        3,
    ),
    "depthwise2d-dilated": (lambda: L.DepthwiseConv2D(3, dilation_rate=2, **DZ), (7, 7), 2),
    "transpose1d-same-s2": (lambda: L.Conv1DTranspose(3, 3, strides=2, padding="same", **Z), (5,), 2),
    "transpose1d-valid-s3-k2": (lambda: L.Conv1DTranspose(2, 2, strides=3, **Z), (4,), 3),
    "transpose2d-same-s2": (lambda: L.Conv2DTranspose(3, 3, strides=2, padding="same", **Z), (4, 4), 2),
    "transpose2d-valid-s2": (lambda: L.Conv2DTranspose(3, 3, strides=2, **Z), (4, 3), 2),
    "transpose2d-same-outpad": (
        lambda: L.Conv2DTranspose(2, 3, strides=2, padding="same", output_padding=1, **Z),
        (4, 4),
        2,
    ),
    "transpose2d-dilated": (lambda: L.Conv2DTranspose(2, 3, dilation_rate=2, **Z), (4, 4), 2),
    "transpose3d-valid-s2": (lambda: L.Conv3DTranspose(2, 2, strides=2, **Z), (3, 3, 2), 2),
}


@pytest.mark.parametrize("case", list(LAYERS))
def test_layer_options_give_the_layers_norm(case):
    if case == "transpose2d-dilated" and BACKEND == "tensorflow":
        pytest.skip("TensorFlow's CPU transposed convolution has no dilation")
    make, spatial, channels = LAYERS[case]
    layer = make()
    layer.build((None, *spatial, channels))
    set_random_kernel(layer, 0)
    constraint = OperatorNormConstraint.for_layer(layer, 1.0)
    assert constraint.input_shape == spatial
    expected = dense_norm(layer, spatial, channels)
    assert constraint.operator_norm(layer.kernel) == pytest.approx(expected, rel=1e-4)

    # The projection bounds the Keras layer itself (zero padding: through the padded circular layer).
    # (The default, one step of the paper's projection, need not meet the bound yet.)
    new, info = constraint.project(layer.kernel)
    layer.kernel.assign(new)
    assert dense_norm(layer, spatial, channels) <= float(to_numpy(info.norm)) * (1 + 1e-5)


@pytest.mark.parametrize("case", ["conv2d-same-s2-odd", "depthwise2d-s2", "transpose2d-same-outpad"])
def test_projection_bounds_the_keras_layer(case):
    make, spatial, channels = LAYERS[case]
    layer = make()
    layer.build((None, *spatial, channels))
    set_random_kernel(layer, 1)
    assert dense_norm(layer, spatial, channels) > 1.5
    constraint = OperatorNormConstraint.for_layer(layer, 1.0, **CLIP)
    layer.kernel.assign(constraint(layer.kernel))
    assert dense_norm(layer, spatial, channels) <= 1 + TOL


def test_channels_first_reads_the_spatial_axes():
    layer = L.Conv2D(3, 3, strides=2, padding="same", data_format="channels_first", **Z)
    layer.build((None, 2, 7, 5))
    set_random_kernel(layer, 2)
    constraint = OperatorNormConstraint.for_layer(layer, 1.0)
    assert constraint.input_shape == (7, 5)
    if BACKEND == "tensorflow":
        pytest.skip("TensorFlow's CPU convolution supports channels_last only")
    expected = dense_norm(layer, (7, 5), 2, data_format="channels_first")
    assert constraint.operator_norm(layer.kernel) == pytest.approx(expected, rel=1e-4)


def test_hand_written_options_match_the_layers():
    layer = L.Conv1D(3, 3, dilation_rate=2, padding="causal", **Z)
    layer.build((None, 16, 2))
    by_hand = OperatorNormConstraint(1.0, 16, padding="causal", dilation_rate=2)
    assert by_hand.convsv_options((3, 2, 3)) == OperatorNormConstraint.for_layer(layer, 1.0).convsv_options(
        (3, 2, 3)
    )
    _, options = by_hand.convsv_options((3, 2, 3))
    assert options["padding"] == ((4, 0),)


def test_separable_conv_is_bounded_through_both_kernels():
    layer = L.SeparableConv2D(
        4, 3, strides=2, padding="same", depth_multiplier=2, pointwise_initializer="zeros", **DZ
    )
    inputs = keras.Input((6, 6, 3))
    model = keras.Model(inputs, layer(inputs))
    rng = np.random.default_rng(3)
    for variable in (layer.depthwise_kernel, layer.pointwise_kernel):
        variable.assign(rng.standard_normal(variable.shape).astype("float32"))
    assert dense_norm(layer, (6, 6), 3) > 2
    report = clip_operator_norm_(model, 2.0, **CLIP)
    assert [(r.name, r.kernel) for r in report] == [
        (layer.name, "depthwise_kernel"),
        (layer.name, "pointwise_kernel"),
    ]
    assert all(r.norm_after <= math.sqrt(2.0) * (1 + TOL) for r in report)
    assert dense_norm(layer, (6, 6), 3) <= 2.0 * (1 + TOL) ** 2


# -- the constraint ----------------------------------------------------------------------------------


def test_constraint_meets_the_bound():
    rng = np.random.default_rng(4)
    kernel = keras.ops.convert_to_tensor(rng.standard_normal((3, 3, 4, 6)).astype("float32"))
    for padding, shape in [("circular", (8, 8)), ("same", (7, 7)), ("valid", (7, 7))]:
        constraint = OperatorNormConstraint(
            0.5, shape, strides=2 if padding != "valid" else 1, padding=padding, **CLIP
        )
        assert constraint.operator_norm(kernel) > 1
        new = constraint(kernel)
        assert tuple(new.shape) == (3, 3, 4, 6)
        assert to_numpy(new).dtype == np.float32
        assert constraint.operator_norm(new) <= 0.5 * (1 + TOL)
        if padding == "circular":  # exact: the norm the core computes for the circular layer
            norm = convsv.operator_norm(to_numpy(new).astype(np.float64), shape, stride=2)
            assert float(norm) <= 0.5 * (1 + TOL)


def test_constraint_config_round_trip():
    constraint = OperatorNormConstraint(
        2.0,
        (5, 6),
        strides=(1, 2),
        padding="SAME",
        dilation_rate=1,
        kind="transpose",
        output_padding=(0, 1),
        **CLIP,
    )
    config = constraint.get_config()
    assert config["padding"] == "same"
    assert config["kind"] == "transpose"
    again = OperatorNormConstraint.from_config(config)
    assert again.get_config() == config
    serialized = keras.saving.serialize_keras_object(constraint)
    assert serialized["registered_name"] == "convsv>OperatorNormConstraint"
    restored = keras.saving.deserialize_keras_object(serialized)
    assert isinstance(restored, OperatorNormConstraint)
    assert restored.get_config() == config


# Keras' weight saving converts torch and TensorFlow tensors with np.array(tensor), which NumPy 2 flags.
@pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)
def test_model_save_and_load_keep_the_constraint(tmp_path):
    constraint = OperatorNormConstraint(1.5, (8, 8), strides=2, padding="same", **CLIP)
    depthwise = OperatorNormConstraint(1.5, (4, 4), padding="same", kind="depthwise", iterations=3)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            L.Conv2D(4, 3, strides=2, padding="same", kernel_constraint=constraint, name="down", **ONES),
            L.DepthwiseConv2D(
                3, padding="same", depthwise_constraint=depthwise, name="dw", depthwise_initializer="ones"
            ),
        ]
    )
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    for name, original in [("down", constraint), ("dw", depthwise)]:
        layer = loaded.get_layer(name)
        restored = layer.kernel.constraint
        assert isinstance(restored, OperatorNormConstraint)
        assert restored.get_config() == original.get_config()
    np.testing.assert_array_equal(
        to_numpy(loaded.get_layer("down").kernel), to_numpy(model.get_layer("down").kernel)
    )


def test_constraint_runs_inside_the_compiled_train_step():
    """The optimizer applies the constraint inside train_step: jitted on JAX, a tf.function on TF."""
    keras.utils.set_random_seed(5)
    constraint = OperatorNormConstraint(0.5, (6, 6), strides=2, padding="same", **CLIP)
    model = keras.Sequential(
        [
            keras.Input((6, 6, 2)),
            L.Conv2D(4, 3, strides=2, padding="same", kernel_constraint=constraint, **glorot(5)),
            L.Flatten(),
        ]
    )
    jit = False if BACKEND == "tensorflow" else "auto"
    model.compile(optimizer=keras.optimizers.SGD(10.0), loss="mse", jit_compile=jit)
    if BACKEND == "jax":
        assert model.jit_compile  # the constraint is traced into the jitted step
    x = np.random.default_rng(0).standard_normal((16, 6, 6, 2)).astype("float32")
    model.fit(x, np.ones((16, 36), "float32"), batch_size=8, epochs=1, verbose=0)
    layer = model.layers[0]
    assert constraint.operator_norm(layer.kernel) <= 0.5 * (1 + TOL)
    assert dense_norm(layer, (6, 6), 2) <= 0.5 * (1 + TOL)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="XLA route of the TensorFlow backend")
def test_constraint_under_xla_says_what_to_do():
    constraint = OperatorNormConstraint(0.5, (6, 6), padding="same")
    model = keras.Sequential(
        [keras.Input((6, 6, 1)), L.Conv2D(2, 3, padding="same", kernel_constraint=constraint, **ONES)]
    )
    # jit_compile="auto" picks XLA on TensorFlow when there is a GPU (not on CPU-only machines).
    model.compile(optimizer="sgd", loss="mse", jit_compile=True)
    before = to_numpy(model.layers[0].kernel)
    with pytest.raises(RuntimeError, match="jit_compile=False"):
        model.fit(np.ones((4, 6, 6, 1), "float32"), np.ones((4, 6, 6, 2), "float32"), verbose=0)
    np.testing.assert_array_equal(to_numpy(model.layers[0].kernel), before)


# -- training on the digits ----------------------------------------------------------------------------

MAX_NORM = 1.0
EVERY = 5
STEPS = 40
BATCH = 32


@pytest.fixture(scope="module")
def data():
    x_train, y_train, x_test, y_test = digits(0)
    return x_train[..., None], y_train, x_test[..., None], y_test


def digits_cnn(constraints=None):
    constraints = constraints or {}
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            L.Conv2D(
                8, 3, padding="same", name="conv", kernel_constraint=constraints.get("conv"), **glorot(1)
            ),
            L.ReLU(),
            L.Conv2D(
                16,
                3,
                strides=2,
                padding="same",
                name="down",
                kernel_constraint=constraints.get("down"),
                **glorot(2),
            ),
            L.ReLU(),
            L.DepthwiseConv2D(
                3,
                padding="same",
                name="depthwise",
                depthwise_constraint=constraints.get("depthwise"),
                depthwise_initializer=Glorot(3),
            ),
            L.ReLU(),
            L.Flatten(),
            L.Dense(10, **glorot(4)),
        ]
    )


# Each convolution of digits_cnn with its input map: (layer name, spatial shape, input channels).
CONVS = [("conv", (8, 8), 1), ("down", (8, 8), 8), ("depthwise", (4, 4), 16)]


def conv_norms(model):
    """Each convolution's exact norm from its weights, by dense SVD of the layer and by the core."""
    norms = {}
    for name, spatial, channels in CONVS:
        layer = model.get_layer(name)
        kernel = to_numpy(layer.kernel).astype(np.float64)
        options = {"stride": layer.strides, "padding": "same"}
        if name == "depthwise":
            kernel = kernel.reshape(3, 3, 1, -1)
            options["groups"] = channels
        # Lanczos (zero padding), run to convergence: clipped layers have clustered top singular values.
        core = float(convsv.operator_norm(kernel, spatial, iterations=1000, tol=1e-10, **options))
        dense = dense_norm(layer, spatial, channels)
        assert core == pytest.approx(dense, rel=1e-6), (name, core, dense)
        norms[name] = dense
    return norms


class NormChecker(keras.callbacks.Callback):
    """After the steps ``when`` picks, read the kernels back and record every convolution's norm."""

    def __init__(self, when):
        super().__init__()
        self.when, self.step, self.seen = when, 0, []

    def on_epoch_begin(self, epoch, logs=None):
        self.last = -1

    def on_train_batch_end(self, batch, logs=None):
        self.step += batch - self.last
        self.last = batch
        if self.when(self.step):
            sync = getattr(self.model, "jax_state_sync", None)
            if sync is not None:  # JAX keeps the state outside the variables during fit
                sync()
            self.seen.append((self.step, conv_norms(self.model)))


def train(data, route, steps=STEPS):
    keras.utils.set_random_seed(0)
    x_train, y_train, x_test, y_test = data
    constraints = None
    if route == "constraint":
        constraints = {
            "conv": OperatorNormConstraint(MAX_NORM, 8, padding="same", **CLIP),
            "down": OperatorNormConstraint(MAX_NORM, 8, strides=2, padding="same", **CLIP),
            "depthwise": OperatorNormConstraint(MAX_NORM, 4, padding="same", kind="depthwise", **CLIP),
        }
    model = digits_cnn(constraints)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=False if (route == "constraint" and BACKEND == "tensorflow") else "auto",
    )
    callbacks = []
    if route == "callback":
        clipping = OperatorNormClipping(MAX_NORM, every=EVERY, **CLIP)
        callbacks = [clipping, NormChecker(lambda step: step % EVERY == 0)]
    elif route == "constraint":
        callbacks = [NormChecker(lambda step: step % EVERY == 0 or step == steps)]
    n = steps * BATCH  # one pass over 1280 of the 1347 training images
    model.fit(x_train[:n], y_train[:n], batch_size=BATCH, epochs=1, callbacks=callbacks, verbose=0)
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    return model, accuracy, callbacks


# The constraint projects after every step (the tight zero-padded projection, about a second a
# step here), so it trains for half the steps; it still passes the same accuracy.
@pytest.mark.slow
@pytest.mark.parametrize(("route", "steps"), [("constraint", STEPS // 2), ("callback", STEPS)])
def test_digits_training_with_the_bound(data, route, steps):
    _, accuracy, callbacks = train(data, route, steps)
    checker = callbacks[-1]
    assert [step for step, _ in checker.seen] == list(range(EVERY, steps + 1, EVERY))
    for step, norms in checker.seen:
        for name, norm in norms.items():
            assert norm <= MAX_NORM * (1 + TOL), (step, name, norm)
    if route == "callback":
        assert callbacks[0].steps == steps
        assert [r.name for r in callbacks[0].last_report] == ["conv", "down", "depthwise"]
    assert accuracy > 0.6


@pytest.mark.slow
def test_digits_training_without_the_bound_exceeds_it(data):
    model, accuracy, _ = train(data, "none")
    norms = conv_norms(model)
    assert max(norms.values()) > 1.5 * MAX_NORM
    assert accuracy > 0.6


@pytest.mark.skipif(BACKEND == "torch", reason="the PyTorch backend has no steps_per_execution")
def test_callback_counts_steps_per_execution(data):
    x_train, y_train, _, _ = data
    keras.utils.set_random_seed(0)
    model = digits_cnn()
    model.compile(
        optimizer="sgd",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        steps_per_execution=3,
    )
    clipping = OperatorNormClipping(MAX_NORM, every=4, **CLIP)
    projections = []
    original = clipping.clip
    clipping.clip = lambda: projections.append(clipping.steps) or original()
    model.fit(x_train[:320], y_train[:320], batch_size=32, epochs=1, callbacks=[clipping], verbose=0)
    assert clipping.steps == 10
    assert projections == [6, 9]  # the executions that cross steps 4 and 8


# -- bad configuration -------------------------------------------------------------------------------


def test_unknown_input_shape_is_an_error_before_any_change():
    model = keras.Sequential(
        [
            keras.Input((None, None, 1)),
            L.Conv2D(4, 3, padding="same", name="a", **ONES),
            L.Conv2D(4, 3, name="b", **ONES),
        ]
    )
    before = [to_numpy(layer.kernel).copy() for layer in model.layers]
    with pytest.raises(ValueError, match=r"layer 'a' has an input of unknown spatial size.*input_shapes"):
        clip_operator_norm_(model, 1.0)
    clipping = OperatorNormClipping(1.0, every=1)
    model.compile(optimizer=keras.optimizers.SGD(1.0), loss="mse")
    with pytest.raises(ValueError, match="unknown spatial size"):
        model.fit(
            np.ones((2, 8, 8, 1), "float32"),
            np.ones((2, 6, 6, 4), "float32"),
            callbacks=[clipping],
            verbose=0,
        )
    for layer, kernel in zip(model.layers, before, strict=True):
        np.testing.assert_array_equal(to_numpy(layer.kernel), kernel)
    # Given the shapes, it works.
    report = clip_operator_norm_(model, 1.0, input_shapes={"a": (8, 8), "b": 8}, **CLIP)
    assert all(r.norm_after <= 1 + TOL for r in report)


def test_unbuilt_layer_is_an_error():
    layer = L.Conv2D(4, 3)
    with pytest.raises(ValueError, match="no input shape for layer"):
        OperatorNormConstraint.for_layer(layer, 1.0)
    with pytest.raises(TypeError, match="not a Keras Conv"):
        OperatorNormConstraint.for_layer(L.Dense(3), 1.0)


def test_unsupported_layer_is_an_error():
    model = keras.Sequential(
        [keras.Input((8, 8, 1)), L.Conv2D(4, 3, name="conv", **ONES), L.Flatten(name="flat")]
    )
    with pytest.raises(TypeError, match=r"'flat'.*not a supported convolution"):
        clip_operator_norm_(model, 1.0, layers=["conv", "flat"])
    with pytest.raises(ValueError, match="no layer named 'nope'"):
        clip_operator_norm_(model, 1.0, layers=["nope"])
    with pytest.raises(ValueError, match=r"input_shapes names layer\(s\) \['flat'\]"):
        clip_operator_norm_(model, 1.0, input_shapes={"flat": 8})


@pytest.mark.parametrize("bad", [0, -1.0, float("inf"), float("nan"), True, "1"])
def test_max_norm_must_be_positive(bad):
    model = keras.Sequential([keras.Input((8, 8, 1)), L.Conv2D(4, 3, padding="same", **glorot(0))])
    before = to_numpy(model.layers[0].kernel).copy()
    error = TypeError if isinstance(bad, (bool, str)) else ValueError  # not a number, or out of range
    with pytest.raises(error, match="`max_norm` must be a finite positive number"):
        OperatorNormConstraint(bad, 8)
    with pytest.raises(error, match="`max_norm`"):
        OperatorNormClipping(bad)
    with pytest.raises(error, match="`max_norm`"):
        clip_operator_norm_(model, bad)
    np.testing.assert_array_equal(to_numpy(model.layers[0].kernel), before)


def test_circular_stride_must_divide_the_map():
    with pytest.raises(ValueError, match=r"`strides` 2 must divide the feature map \(7, 7\)"):
        OperatorNormConstraint(1.0, (7, 7), strides=2, padding="circular")
    with pytest.raises(ValueError, match="`strides` 2 must divide the feature map 7"):
        OperatorNormConstraint(1.0, 7, strides=2, padding="circular")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"input_shape": None}, "`input_shape` is required"),
        ({"input_shape": 0}, "`input_shape` must be a positive int"),
        ({"strides": (2, 0)}, "`strides`"),
        ({"padding": "reflect"}, "`padding` must be one of"),
        ({"kind": "separable"}, "`kind` must be one of"),
        ({"kind": "depthwise", "groups": 2}, "`groups` is for kind='conv'"),
        ({"output_padding": 1}, "`output_padding` is for kind='transpose'"),
        ({"padding": "causal", "input_shape": (8, 8)}, "padding='causal' is for 1-D"),
        ({"method": "newton"}, "`method` must be one of"),
        ({"iterations": 0}, "`iterations` must be a positive int"),
        ({"tol": -1.0}, "`tol`"),
        ({"min_norm": 2.0}, "`min_norm` .* must not exceed `max_norm`"),
        ({"min_norm": 0.5}, "`min_norm` with zero padding needs bound='circular'"),
    ],
)
def test_constraint_arguments_are_checked_at_construction(kwargs, match):
    arguments = {"max_norm": 1.0, "input_shape": 8, **kwargs}
    with pytest.raises(ValueError, match=match):
        OperatorNormConstraint(**arguments)


def test_callback_arguments_are_checked_at_construction():
    with pytest.raises(ValueError, match="`every` must be a positive int"):
        OperatorNormClipping(1.0, every=0)
    with pytest.raises(ValueError, match="`method` must be one of"):
        OperatorNormClipping(1.0, method="newton")
    with pytest.raises(TypeError, match="unknown projection option"):
        OperatorNormClipping(1.0, stride=2)


def test_kernel_that_does_not_fit_is_an_error_on_first_use():
    constraint = OperatorNormConstraint(1.0, (8, 8), padding="same")
    with pytest.raises(ValueError, match="`input_shape` has 2 entries but the kernel has 1 spatial axes"):
        constraint(keras.ops.ones((3, 1, 1)))


def test_no_kernel_changes_when_a_projection_fails(monkeypatch):
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            L.Conv2D(4, 3, padding="same", name="a", **glorot(0)),
            L.Conv2D(4, 3, padding="same", name="b", **glorot(1)),
        ]
    )
    before = [to_numpy(layer.kernel).copy() for layer in model.layers]
    calls = []
    original = OperatorNormConstraint.project

    def failing(self, kernel):
        calls.append(kernel)
        if len(calls) == 2:
            msg = "boom"
            raise FloatingPointError(msg)
        return original(self, kernel)

    monkeypatch.setattr(OperatorNormConstraint, "project", failing)
    with pytest.raises(FloatingPointError):
        clip_operator_norm_(model, 0.1)
    for layer, kernel in zip(model.layers, before, strict=True):
        np.testing.assert_array_equal(to_numpy(layer.kernel), kernel)


# -- the example script ----------------------------------------------------------------------------


def test_example_script_runs(monkeypatch, capsys):
    """The tutorial's script, run as ``__main__`` in this process (a fresh interpreter costs ~10 s on JAX)."""
    script = ROOT / "examples" / "keras_digits.py"
    args = ["--route", "callback", "--epochs", "1", "--steps", "4", "--every", "3", "--max-norm", "0.8"]
    monkeypatch.setattr(sys, "argv", [str(script), *args])
    runpy.run_path(str(script), run_name="__main__")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"backend: {BACKEND}, route: callback, max_norm: 0.8"
    accuracy = float(lines[1].removeprefix("test accuracy: "))
    assert 0 <= accuracy <= 1
    norms = {line.split()[3].rstrip(":"): float(line.split()[-1]) for line in lines[2:]}
    assert set(norms) == {"conv.kernel", "down.kernel", "depthwise.kernel"}
    assert all(norm <= 0.8 * (1 + 1e-4) for norm in norms.values())


def test_nested_and_subclassed_models_are_searched():
    inner = keras.Sequential(
        [keras.Input((8, 8, 2)), L.Conv2D(3, 3, strides=2, padding="same", name="inner", **glorot(0))]
    )
    inputs = keras.Input((8, 8, 1))
    outer = keras.Model(inputs, inner(L.Conv2D(2, 3, padding="same", name="outer", **glorot(1))(inputs)))

    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.conv = L.Conv1D(2, 3, padding="causal", name="sub", **glorot(2))

        def call(self, x):
            return self.conv(x)

    net = Net()
    net(np.zeros((1, 9, 1), "float32"))  # built by a call: the build shape gives the input size
    for model, names in [(outer, ["outer", "inner"]), (net, ["sub"])]:
        report = clip_operator_norm_(model, 0.5, **CLIP)
        assert [r.name for r in report] == names
        assert all(r.norm_after <= 0.5 * (1 + TOL) for r in report)
