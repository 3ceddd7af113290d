"""Optax adapter: keep a JAX model's convolutions inside an operator-norm ball while training.

:func:`clip_operator_norm` is an ``optax`` gradient transformation, meant to be
the last link of an ``optax.chain``: it returns updates such that
``params + updates`` has every convolution kernel projected with
:func:`convsv.clip_operator_norm`, every ``every`` steps (the paper's schedule).
It is jit-safe, and works on parameters sharded over several devices.

JAX models keep a convolution's stride, padding and groups outside the
parameters, so the transform is told about each kernel by ``input_shapes``: a
pytree matching the parameters (a spatial shape or a :class:`Conv` at each
kernel, ``None`` elsewhere) or a function of each parameter's path.
:func:`layer_options` reads a Flax (NNX or Linen) ``Conv`` or an Equinox
``Conv``; :func:`nnx_input_shapes` and :func:`equinox_input_shapes` build the
whole tree for a model from one example input. Importing this module imports
jax and optax; flax and equinox are imported only by the functions that read
their layers.
"""

from __future__ import annotations

import functools
import numbers
from typing import Any, NamedTuple, cast

import jax
import jax.numpy as jnp
import optax

from ._clipping import clip
from ._frameworks.jax import (
    abstract,
    is_array_like,
    is_function,
    kernel_entries,
)
from ._jax_layers import Conv, equinox_input_shapes, layer_options, naming, nnx_input_shapes
from ._layout import ConvSpec, conv_spec
from ._lib import namespace_of, sharded_like
from ._options import CLIP_OPTIONS, ClipOptions

__all__ = [
    "Conv",
    "OperatorNormState",
    "clip_operator_norm",
    "equinox_input_shapes",
    "layer_options",
    "nnx_input_shapes",
]

KeyPath = tuple[Any, ...]


class OperatorNormState(NamedTuple):
    """The state of :func:`clip_operator_norm`.

    Parameters
    ----------
    count : jax.Array
        Updates since the last projection (int32, in ``[0, every)``).
    """

    count: jax.Array  # type: ignore[assignment,unused-ignore]  # (shadows tuple.count, as in optax)


def _is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_shape_leaf(x: Any) -> bool:
    """A leaf of an ``input_shapes`` tree: ``None``, a :class:`Conv`, an int or a tuple/list of ints."""
    if x is None or isinstance(x, Conv) or _is_int(x):
        return True
    return isinstance(x, (tuple, list)) and len(x) > 0 and all(_is_int(v) for v in x)


# --- which parameters are kernels, and their layers -------------------------------------------------


def _as_conv(entry: Any, where: str) -> Conv:
    if isinstance(entry, Conv):
        return entry
    sizes = entry if isinstance(entry, (tuple, list)) else (entry,)
    if not all(_is_int(v) for v in sizes):
        msg = (
            f"input_shapes at {where}: expected None, a spatial shape (an int or a tuple of ints) or "
            f"convsv.optax.Conv, got {entry!r}"
        )
        raise TypeError(msg)
    return Conv(int(entry) if _is_int(entry) else tuple(int(v) for v in entry))


def _specs(params: Any, input_shapes: Any, layout: str, options: ClipOptions, *, trace: bool = False) -> Any:
    """``params``' tree with each kernel's :class:`~convsv._layout.ConvSpec`, ``None`` elsewhere.

    Built from each kernel's static shape, so once per trace of ``update``.
    A bad layer raises here, naming the parameter; with ``trace``, so does
    what only the projection's own trace finds (a layer too large for
    ``max_memory``, say).
    """

    def spec(path: KeyPath, leaf: Any, entry: Any) -> ConvSpec | None:
        if entry is None:
            return None
        where = f"params{jax.tree_util.keystr(path)}"
        conv = _as_conv(entry, where)
        layer = conv.options(layout)
        with naming(where):
            found = conv_spec(tuple(leaf.shape), conv.input_shape, layer.pop("layout"), **layer)
            options.check_layer(found)
            if trace:
                jax.eval_shape(functools.partial(_project, spec=found, options=options), abstract(leaf))
        return found

    entries = kernel_entries(params, input_shapes, _is_shape_leaf)
    return jax.tree_util.tree_map_with_path(spec, params, entries, is_leaf=is_array_like)


# --- the transform: the projection, and its schedule ------------------------------------------------


def _require(params: Any) -> None:
    """Refuse an ``update`` without ``params``: the projection is of ``params + updates``."""
    if params is None:
        msg = (
            "convsv.optax.clip_operator_norm needs the parameters: call update(updates, state, params) "
            "(nnx.Optimizer and optax.chain pass them on)"
        )
        raise ValueError(msg)


@functools.partial(jax.jit, static_argnames=("spec", "options"))
def _project(kernel: jax.Array, spec: ConvSpec, options: ClipOptions) -> jax.Array:
    """The core's projection of one kernel (``spec``'s layout), jitted with the layer and options static.

    Jitted here, not only inlined: an eager ``update`` runs it compiled, and
    each retrace of ``update`` (a new ``jax.jit``, the branches of the
    schedule's ``cond``, ``init``'s check) reuses its trace.
    """
    projected: jax.Array = clip(kernel, spec, namespace_of(kernel, None)[1], options)[0]
    return projected


def _projected_update(update: Any, param: Any, spec: ConvSpec | None, options: ClipOptions) -> Any:
    """The update that takes ``param`` to the projection of ``param + update``, sharded as both are.

    The core keeps the kernel's sharding (under explicit sharding it projects
    the kernel whole on every device and splits the result again); the step
    is split as the update is.
    """
    if spec is None:
        return update
    param = jnp.asarray(param)
    step = _project((param + update).astype(param.dtype), spec, options) - param
    return sharded_like(step, update).astype(update.dtype)


def _project_kernels(
    input_shapes: Any, layout: str, options: ClipOptions
) -> optax.GradientTransformationExtraArgs:
    """A stateless transform whose updates put every kernel of ``params + updates`` on the projection."""

    def init_fn(params: Any) -> optax.EmptyState:
        _specs(params, input_shapes, layout, options, trace=True)
        return optax.EmptyState()

    def update_fn(
        updates: Any, state: optax.EmptyState, params: Any = None, **extra_args: Any
    ) -> tuple[Any, optax.EmptyState]:
        del extra_args
        _require(params)
        specs = _specs(params, input_shapes, layout, options)
        try:
            cast(Any, jax.tree.structure(updates, is_leaf=is_array_like)).flatten_up_to(params)
        except (ValueError, TypeError) as error:
            msg = f"updates and params must have the same structure: {error}"
            raise ValueError(msg) from None
        step = functools.partial(_projected_update, options=options)
        return jax.tree.map(step, updates, params, specs, is_leaf=is_array_like), state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _every(inner: optax.GradientTransformationExtraArgs, every: int) -> optax.GradientTransformationExtraArgs:
    """The stateless ``inner`` on updates ``every``, ``2 * every``, ...; the others pass through.

    What ``optax.transforms.conditionally_transform`` does, with the public
    state kept: an :class:`OperatorNormState` whose ``count`` is the updates
    since the last projection (``conditionally_transform``'s is the inner
    state and a count of all updates).
    """

    def init_fn(params: Any) -> OperatorNormState:
        inner.init(params)  # (its checks; it keeps no state)
        return OperatorNormState(count=jnp.zeros((), jnp.int32))

    def update_fn(
        updates: Any, state: OperatorNormState, params: Any = None, **extra_args: Any
    ) -> tuple[Any, OperatorNormState]:
        def transform(tree: Any) -> Any:
            return inner.update(tree, optax.EmptyState(), params, **extra_args)[0]

        if every == 1:
            return transform(updates), OperatorNormState(jnp.zeros((), jnp.int32))
        _require(params)  # on every update, also where jax.disable_jit() runs one branch only
        due = state.count + 1 >= every
        # Only the branch taken runs: the updates in between do not pay for the projection.
        new = jax.lax.cond(due, transform, lambda tree: tree, updates)
        return new, OperatorNormState(jnp.where(due, 0, state.count + 1).astype(jnp.int32))

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _clip_options(max_norm: Any, options: dict[str, Any]) -> ClipOptions:
    """The projection's options, checked: the names this transform takes, then every value."""
    unknown = sorted(set(options) - set(CLIP_OPTIONS))
    if unknown:
        msg = (
            f"unknown option(s) {unknown}: pass {list(CLIP_OPTIONS)} here, and layer options "
            "(stride, padding, groups, ...) per kernel with convsv.optax.Conv"
        )
        raise TypeError(msg)
    return ClipOptions.for_adapter(max_norm, options)


def clip_operator_norm(
    max_norm: float,
    input_shapes: Any,
    *,
    every: int = 1,
    layout: str = "HWIO",
    **options: Any,
) -> optax.GradientTransformationExtraArgs:
    """An optax transformation that projects convolutions onto an operator-norm ball.

    The updates it returns make ``params + updates`` have every convolution
    kernel named by ``input_shapes`` projected with
    :func:`convsv.clip_operator_norm`, on every ``every``-th update; other
    parameters' updates, and every update in between, pass through unchanged.
    Put it last in ``optax.chain``: it projects the parameters the chain's
    updates lead to, and anything after it would move them off the ball.

    Parameters
    ----------
    max_norm : float
        The bound on every kernel's operator norm (positive).
    input_shapes : pytree or callable
        Which parameters are convolution kernels, and their layers. Either a
        pytree with the structure of ``params`` holding, at each kernel, the
        layer's input spatial shape (an int or a tuple: circular padding,
        stride 1) or a :class:`Conv` (stride, padding, groups, ...), and
        ``None`` elsewhere (``None`` may also stand for a whole subtree); or
        a callable ``(path, leaf) -> shape | Conv | None`` called with each
        parameter's key path and a ``jax.ShapeDtypeStruct``.
        :func:`nnx_input_shapes` and :func:`equinox_input_shapes` build the
        tree for a Flax NNX or Equinox model.
    every : int, optional
        Project on updates ``every``, ``2 * every``, ... (default 1: every
        update). The count lives in the state; the choice is a
        ``jax.lax.cond``, so the updates in between do not compute the
        projection.
    layout : str, optional
        The kernels' layout where a :class:`Conv` does not give one: ``"HWIO"``
        (default; Flax, ``jax.lax`` with ``("NHWC", "HWIO", "NHWC")``) or
        ``"OIHW"`` (Equinox), and their 1-D and 3-D twins.
    **options
        ``method``, ``iterations``, ``tol``, ``min_norm``, ``bound``: as in
        :func:`convsv.clip_operator_norm` (default: one step of the paper's
        projection; ``method="extrapolated", iterations=50, tol=1e-5`` reaches
        the bound).

    Returns
    -------
    optax.GradientTransformationExtraArgs
        ``init(params)`` checks every kernel and returns an
        :class:`OperatorNormState`; ``update(updates, state, params)`` needs
        ``params``.

    Raises
    ------
    ValueError
        At construction, for a non-positive ``max_norm``, a bad ``every`` or a
        bad option; in ``init`` (and at each trace of ``update``), for an
        ``input_shapes`` that does not match ``params`` or a kernel whose
        layer is invalid (a circular stride that does not divide the map, a
        shape with the wrong number of axes...), naming the parameter's
        path; in ``update``, when ``params`` is not passed.
    TypeError
        For an unknown option, or an ``input_shapes`` entry that is not a
        shape, a :class:`Conv` or ``None``.

    See Also
    --------
    convsv.clip_operator_norm : The projection of one kernel.
    layer_options : The :class:`Conv` of a Flax or Equinox layer.

    Notes
    -----
    Sharded parameters: the core projects kernels split over a mesh as they
    are (see :func:`convsv.clip_operator_norm`). In JAX's automatic sharding
    mode XLA partitions the projection like any other computation; under
    explicit sharding (``jax.sharding.AxisType.Explicit``) each kernel is
    gathered, its frequency blocks are clipped spread over the mesh, and the
    result is split again as the parameter is. Either way the values
    are those of the unsharded computation and the updates keep the
    parameters' sharding (tested with a kernel split over its output
    channels on two devices). ``update`` also works outside ``jax.jit``: the
    projection itself is compiled.

    With zero padding the zero-padded layer's own norm is put on the bound
    (pass ``bound="circular"`` to bound the circular layer on the padded map
    instead, which is cheaper and conservative): see
    :func:`convsv.clip_operator_norm`.

    Examples
    --------
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import convsv
    >>> import convsv.optax
    >>> params = {"conv": jnp.ones((3, 3, 2, 4)), "bias": jnp.zeros(4)}
    >>> tx = optax.chain(
    ...     optax.sgd(0.1),
    ...     convsv.optax.clip_operator_norm(
    ...         1.0, {"conv": (8, 8), "bias": None}, method="extrapolated", iterations=50, tol=1e-5
    ...     ),
    ... )
    >>> state = tx.init(params)
    >>> grads = jax.tree.map(jnp.ones_like, params)
    >>> updates, state = jax.jit(tx.update)(grads, state, params)
    >>> params = optax.apply_updates(params, updates)
    >>> bool(convsv.operator_norm(params["conv"], (8, 8)) <= 1 + 1e-5)
    True
    >>> params["bias"]
    Array([-0.1, -0.1, -0.1, -0.1], dtype=float32)

    Every third update, for a stride-2 zero-padded layer given as a :class:`Conv`;
    the state counts the updates since the last projection:

    >>> conv = convsv.optax.Conv((8, 8), stride=2, padding="same")
    >>> tx = convsv.optax.clip_operator_norm(1.0, {"conv": conv, "bias": None}, every=3)
    >>> state = tx.init(params)
    >>> update = jax.jit(tx.update)
    >>> for step in range(1, 7):
    ...     updates, state = update(grads, state, params)
    ...     print(step, int(state.count), bool(jnp.any(updates["conv"] != grads["conv"])))
    1 1 False
    2 2 False
    3 0 True
    4 1 False
    5 2 False
    6 0 True
    """
    clip_options = _clip_options(max_norm, options)
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        msg = f"`every` must be a positive int, got {every!r}"
        raise ValueError(msg)
    if not is_function(input_shapes):
        jax.tree.structure(input_shapes, is_leaf=_is_shape_leaf)  # fails now for a non-pytree
    return _every(_project_kernels(input_shapes, layout, clip_options), every)
