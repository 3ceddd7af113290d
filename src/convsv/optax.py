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

import dataclasses
import functools
import numbers
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple, cast

import jax
import jax.numpy as jnp
import optax

from ._frameworks import equinox as _equinox
from ._frameworks import flax as _flax
from ._frameworks.jax import spatial_shape
from ._layout import conv_spec
from ._options import ClipOptions, positive_bound
from ._projection import clip_operator_norm as _clip

__all__ = [
    "Conv",
    "OperatorNormState",
    "clip_operator_norm",
    "equinox_input_shapes",
    "layer_options",
    "nnx_input_shapes",
]

_CLIP_OPTIONS = ("method", "iterations", "tol", "min_norm", "bound")
KeyPath = tuple[Any, ...]
_ShapeDtypeStruct: Any = jax.ShapeDtypeStruct
_sharding: Any = jax.sharding


def _tupled(value: Any) -> Any:
    """Lists (and nested lists) as tuples, so that a :class:`Conv` is hashable and compares by value."""
    if isinstance(value, (list, tuple)):
        return tuple(_tupled(v) for v in value)
    return value


@dataclasses.dataclass(frozen=True)
class Conv:
    """One convolution kernel's layer options, for ``input_shapes``.

    Flax and Equinox keep a layer's stride, padding and groups outside its
    parameters; a ``Conv`` carries them to :func:`clip_operator_norm`. The
    fields are those of :func:`convsv.clip_operator_norm`, with its defaults
    (a bare spatial shape in ``input_shapes`` means ``Conv(shape)``: circular
    padding, stride 1). :func:`layer_options` builds one from a Flax or
    Equinox layer.

    Parameters
    ----------
    input_shape : int or sequence of int
        The layer's input spatial shape (for a transposed layer, its input).
    layout : str, optional
        The kernel's layout; ``None`` (default) takes the transform's
        ``layout``. Flax: ``"HWIO"`` (``"WIO"``, ``"DHWIO"``); Equinox:
        ``"OIHW"`` (``"OIW"``, ``"OIDHW"``).
    stride : int or tuple of int, optional
        Step between output positions (default 1).
    dilation : int or tuple of int, optional
        Spacing between kernel taps (default 1).
    groups : int, optional
        Channel groups (default 1; the input channels for a depthwise layer).
    padding : str, int or tuple, optional
        ``"circular"`` (default) is exact; ``"same"``, ``"valid"``, ints or
        ``(before, after)`` pairs per axis are zero padding, whose own norm
        the projection holds at the bound (``bound="circular"``: the
        circular layer's on the padded map, an upper bound).
    transposed : bool, optional
        The kernel is a transposed layer's (default False).
    output_padding : int or tuple of int, optional
        A zero-padded transposed layer's extra output size (default 0).

    See Also
    --------
    convsv.clip_operator_norm : The meaning of every field.

    Examples
    --------
    >>> from convsv.optax import Conv
    >>> Conv((8, 8), stride=2, padding=[(1, 1), (1, 1)])
    Conv(input_shape=(8, 8), layout=None, stride=2, dilation=1, groups=1, padding=((1, 1), (1, 1)), transposed=False, output_padding=0)
    """  # noqa: E501

    input_shape: int | tuple[int, ...]
    layout: str | None = None
    stride: int | tuple[int, ...] = 1
    dilation: int | tuple[int, ...] = 1
    groups: int = 1
    padding: str | int | tuple[Any, ...] = "circular"
    transposed: bool = False
    output_padding: int | tuple[int, ...] = 0

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            object.__setattr__(self, field.name, _tupled(getattr(self, field.name)))

    def options(self, layout: str) -> dict[str, Any]:
        """The keyword arguments of :func:`convsv.clip_operator_norm` and :func:`convsv.operator_norm`.

        Parameters
        ----------
        layout : str
            The layout to use if this ``Conv`` has none.

        Returns
        -------
        dict
            ``layout``, ``stride``, ``dilation``, ``groups``, ``padding``,
            ``transposed`` and ``output_padding``.
        """
        return {
            "layout": self.layout or layout,
            "stride": self.stride,
            "dilation": self.dilation,
            "groups": self.groups,
            "padding": self.padding,
            "transposed": self.transposed,
            "output_padding": self.output_padding,
        }


class OperatorNormState(NamedTuple):
    """The state of :func:`clip_operator_norm`.

    Parameters
    ----------
    count : jax.Array
        Updates since the last projection (int32, in ``[0, every)``).
    """

    count: jax.Array  # type: ignore[assignment,unused-ignore]  # (shadows tuple.count, as in optax)


def _is_array_like(x: Any) -> bool:
    """A parameter leaf: an array, a tracer, a ShapeDtypeStruct or an array wrapper (a Flax Variable)."""
    return hasattr(x, "shape") and hasattr(x, "dtype") and not isinstance(x, (dict, list, tuple))


def _is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_shape_leaf(x: Any) -> bool:
    """A leaf of an ``input_shapes`` tree: ``None``, a :class:`Conv`, an int or a tuple/list of ints."""
    if x is None or isinstance(x, Conv) or _is_int(x):
        return True
    return isinstance(x, (tuple, list)) and len(x) > 0 and all(_is_int(v) for v in x)


def _is_function(input_shapes: Any) -> bool:
    """The callable form of ``input_shapes``: a callable that is not a pytree (an Equinox module is both)."""
    if not callable(input_shapes):
        return False
    return bool(jax.tree_util.treedef_is_leaf(jax.tree_util.tree_structure(input_shapes)))


def _describe(path: KeyPath) -> str:
    return jax.tree_util.keystr(path) or "the params root"


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


def _entries(params: Any, input_shapes: Any) -> list[tuple[int, KeyPath, Any, Any]]:
    """``(leaf index, path, leaf, input_shapes entry)`` for every parameter leaf with a non-None entry."""
    leaves = jax.tree_util.tree_flatten_with_path(params, is_leaf=_is_array_like)[0]
    if _is_function(input_shapes):
        found = []
        for index, (path, leaf) in enumerate(leaves):
            entry = input_shapes(path, _ShapeDtypeStruct(leaf.shape, leaf.dtype))
            if entry is not None:
                found.append((index, path, leaf, entry))
        return found
    shape_leaves, shape_def = jax.tree_util.tree_flatten_with_path(input_shapes, is_leaf=_is_shape_leaf)
    shape_def = cast(Any, shape_def)
    try:
        subtrees = shape_def.flatten_up_to(params)
    except (ValueError, TypeError) as error:
        msg = (
            "input_shapes must be a pytree with the structure of params (a spatial shape or "
            "convsv.optax.Conv at each convolution kernel, None elsewhere; None may also stand for a "
            "whole subtree), or a callable (path, leaf) -> shape | Conv | None. Matching it to params "
            f"failed: {error}"
        )
        raise ValueError(msg) from None
    found = []
    index = 0
    for (path, entry), subtree in zip(shape_leaves, subtrees, strict=True):
        below = jax.tree_util.tree_leaves(subtree, is_leaf=_is_array_like)
        if entry is not None:
            if len(below) != 1:
                msg = (
                    f"input_shapes gives {entry!r} at {_describe(path)}, where params hold "
                    f"{len(below)} arrays, not one convolution kernel"
                )
                raise ValueError(msg)
            found.append((index, path, below[0], entry))
        index += len(below)
    return found


@contextmanager
def _naming(where: str) -> Iterator[None]:
    """Re-raise the core's ``ValueError`` or ``TypeError`` with the parameter it was about."""
    try:
        yield
    except (ValueError, TypeError) as error:
        if type(error) not in (ValueError, TypeError):  # (a subclass may take other arguments)
            raise
        msg = f"{where}: {error}"
        raise type(error)(msg) from None


def _checked(error: Exception, where: str) -> Exception:
    """The core's error, naming the parameter it was about."""
    return type(error)(f"{where}: {error}")


def _targets(
    params: Any, input_shapes: Any, layout: str, max_norm: float, options: dict[str, Any]
) -> list[tuple[int, Conv, dict[str, Any]]]:
    """Resolve and validate every kernel to project: ``(leaf index, Conv, core keyword arguments)``.

    Each kernel's projection is traced abstractly (``jax.eval_shape``): a bad
    shape, stride or layout raises here, before any update, naming the path.
    """
    targets = []
    for index, path, leaf, entry in _entries(params, input_shapes):
        where = f"params{jax.tree_util.keystr(path)}"
        conv = _as_conv(entry, where)
        kwargs = {**conv.options(layout), **options}
        kernel = _ShapeDtypeStruct(leaf.shape, leaf.dtype)
        try:
            jax.eval_shape(lambda k, c=conv, kw=kwargs: _clip(k, c.input_shape, max_norm, **kw), kernel)
        except (ValueError, TypeError) as error:
            raise _checked(error, where) from None
        targets.append((index, conv, kwargs))
    return targets


def _explicit_sharding(x: Any) -> Any:
    """The sharding in ``x``'s type under JAX's explicit sharding mode, else None.

    (In the default, automatic mode the type carries none, and XLA partitions
    the projection by itself.)
    """
    typeof = getattr(jax, "typeof", None)
    sharding = getattr(typeof(x), "sharding", None) if typeof is not None else None
    spec = getattr(sharding, "spec", None)
    if spec is None or all(axis is None for axis in spec):
        return None
    return sharding


def _replicated(x: jax.Array) -> jax.Array:
    """``x`` gathered on every device, where its type says it is sharded (explicit mode).

    The projection reshapes the kernel's spectrum in ways explicit sharding
    cannot type; kernels are small, so each device projects the whole kernel.
    """
    sharding = _explicit_sharding(x)
    if sharding is None:
        return x
    replicated = _sharding.NamedSharding(sharding.mesh, _sharding.PartitionSpec())
    return cast(jax.Array, _sharding.reshard(x, replicated))


def _sharded_like(x: jax.Array, like: jax.Array) -> jax.Array:
    """``x`` with the sharding in ``like``'s type (explicit mode); ``x`` itself otherwise."""
    sharding = _explicit_sharding(like)
    if sharding is None:
        return x
    return cast(jax.Array, _sharding.reshard(x, sharding))


@functools.partial(jax.jit, static_argnames=("input_shape", "max_norm", "options"))
def _project_kernel(kernel: jax.Array, input_shape: Any, max_norm: float, options: Any) -> jax.Array:
    """The core's projection, compiled (also when ``update`` runs eagerly; inlined under ``jit``)."""
    return cast(jax.Array, _clip(kernel, input_shape, max_norm, **dict(options)))


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
    Sharded parameters: in JAX's default (automatic) sharding mode XLA
    partitions the projection like any other computation; under explicit
    sharding (``jax.sharding.AxisType.Explicit``) each kernel is gathered,
    projected whole and resharded as the parameter is. Either way the values
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
    max_norm = positive_bound(max_norm)
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        msg = f"`every` must be a positive int, got {every!r}"
        raise ValueError(msg)
    unknown = sorted(set(options) - set(_CLIP_OPTIONS))
    if unknown:
        msg = (
            f"unknown option(s) {unknown}: pass {list(_CLIP_OPTIONS)} here, and layer options "
            "(stride, padding, groups, ...) per kernel with convsv.optax.Conv"
        )
        raise TypeError(msg)
    ClipOptions(max_norm, **options)  # every option's own check, now
    if not _is_function(input_shapes):
        jax.tree_util.tree_flatten(input_shapes, is_leaf=_is_shape_leaf)  # fails now for a non-pytree

    def init_fn(params: Any) -> OperatorNormState:
        _targets(params, input_shapes, layout, max_norm, options)
        return OperatorNormState(count=jnp.zeros((), jnp.int32))

    def update_fn(
        updates: Any, state: OperatorNormState, params: Any = None, **extra_args: Any
    ) -> tuple[Any, OperatorNormState]:
        del extra_args
        if params is None:
            msg = (
                "convsv.optax.clip_operator_norm needs the parameters: call update(updates, state, params) "
                "(nnx.Optimizer and optax.chain pass them on)"
            )
            raise ValueError(msg)
        targets = _targets(params, input_shapes, layout, max_norm, options)
        param_leaves = jax.tree_util.tree_leaves(params, is_leaf=_is_array_like)
        update_leaves, update_def = jax.tree_util.tree_flatten(updates, is_leaf=_is_array_like)
        if len(update_leaves) != len(param_leaves):
            msg = (
                f"updates have {len(update_leaves)} arrays but params have {len(param_leaves)}: "
                "they must have the same structure"
            )
            raise ValueError(msg)

        def project(selected: list[jax.Array]) -> list[jax.Array]:
            out = []
            for (index, conv, kwargs), update in zip(targets, selected, strict=True):
                param = jnp.asarray(param_leaves[index])
                target = _replicated((param + update).astype(param.dtype))
                projected = _project_kernel(target, conv.input_shape, max_norm, tuple(kwargs.items()))
                step = _sharded_like(projected, param) - param
                out.append(_sharded_like(step, update).astype(update.dtype))
            return out

        selected = [update_leaves[index] for index, _, _ in targets]
        if every == 1:
            new, count = project(selected), jnp.zeros((), jnp.int32)
        else:
            due = state.count + 1 >= every
            # Only the branch taken runs: the updates in between do not pay for the projection.
            new = jax.lax.cond(due, project, list, selected)
            count = jnp.where(due, 0, state.count + 1).astype(jnp.int32)
        for (index, _, _), leaf in zip(targets, new, strict=True):
            update_leaves[index] = leaf
        return jax.tree_util.tree_unflatten(update_def, update_leaves), OperatorNormState(count)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# --- reading Flax and Equinox layers (the rules: convsv._frameworks.flax and .equinox) --------------


def layer_options(layer: Any, input_shape: int | Sequence[int], *, name: str | None = None) -> Conv:
    """The :class:`Conv` that describes a Flax or Equinox convolution.

    Reads the layer's strides, dilation, groups and padding. Flax padding:
    ``"SAME"``, ``"SAME_LOWER"``, ``"VALID"``, ints, pairs and ``"CAUSAL"``
    (zero padding, as explicit pairs) and ``"CIRCULAR"`` (exact). Equinox:
    ``padding`` with ``padding_mode="ZEROS"`` or ``"CIRCULAR"``.

    Parameters
    ----------
    layer : flax.nnx.Conv, flax.linen.Conv or equinox.nn.Conv
        The layer (``Conv1d/2d/3d`` in Equinox; any spatial rank in Flax).
    input_shape : int or sequence of int
        The layer's input spatial shape.
    name : str, optional
        The layer's name, for error messages.

    Returns
    -------
    Conv
        With the layout the framework stores the kernel in (``"HWIO"`` for
        Flax, ``"OIHW"`` for Equinox, or their 1-D and 3-D twins) and
        zero padding as explicit ``(before, after)`` pairs.

    Raises
    ------
    TypeError
        If ``layer`` is not one of these convolutions (transposed layers: build
        a :class:`Conv` with ``transposed=True`` by hand).
    ValueError
        For padding that is neither zeros nor circular (``"REFLECT"``...), a
        circular layer whose output is not ``input / stride``, ``input_dilation``
        or a ``mask`` (Flax), or a shape the layer's kernel does not fit.

    Examples
    --------
    >>> from flax import nnx
    >>> from convsv.optax import layer_options
    >>> conv = nnx.Conv(3, 8, (3, 3), strides=2, padding="SAME", rngs=nnx.Rngs(0))
    >>> layer_options(conv, (8, 8))
    Conv(input_shape=(8, 8), layout='HWIO', stride=(2, 2), dilation=(1, 1), groups=1, padding=((0, 1), (0, 1)), transposed=False, output_padding=0)

    >>> import jax
    >>> import equinox as eqx
    >>> conv = eqx.nn.Conv2d(4, 4, 3, padding=1, groups=4, padding_mode="CIRCULAR", key=jax.random.key(0))
    >>> layer_options(conv, 8).padding, layer_options(conv, 8).groups
    ('circular', 4)
    """  # noqa: E501
    where = name or type(layer).__name__
    for translator in (_flax, _equinox):
        if isinstance(layer, translator.conv_types()):
            break
    else:
        msg = (
            f"expected a flax.nnx.Conv, flax.linen.Conv or equinox.nn.Conv layer, got "
            f"{type(layer).__name__}; describe other layers with convsv.optax.Conv"
        )
        raise TypeError(msg)
    shape = spatial_shape(input_shape, translator.spatial_rank(layer), where)
    with _naming(where):
        conv = Conv(shape, **translator.conv_options(layer, shape))
        kernel_shape = translator.kernel_shape(layer)
        if kernel_shape is not None:  # (an unbound Linen layer holds no kernel)
            layer_kwargs = conv.options("HWIO")
            conv_spec(kernel_shape, shape, layer_kwargs.pop("layout"), **layer_kwargs)
    return conv


def _read(layer: Any, input_shape: tuple[int, ...], name: str) -> Conv:
    return layer_options(layer, input_shape, name=name)


def nnx_input_shapes(model: Any, example_input: Any, *, wrt: Any = None) -> Any:
    """The ``input_shapes`` tree of a Flax NNX model, from one example input.

    Runs ``model(example_input)`` abstractly (``nnx.eval_shape``: no FLOPs, the
    model's state untouched), records the input shape of every ``nnx.Conv`` on
    the way, and reads each layer with :func:`layer_options`.

    Parameters
    ----------
    model : flax.nnx.Module
        The model; it is called as ``model(example_input)``.
    example_input : array or pytree of arrays
        An input (a batch of one is enough; only shapes matter).
    wrt : nnx filter, optional
        The parameters the optimizer updates (default ``nnx.Param``, as in
        ``nnx.Optimizer(model, tx, wrt=nnx.Param)``).

    Returns
    -------
    flax.nnx.State
        The structure of ``nnx.state(model, wrt)``: a :class:`Conv` at each
        convolution's ``kernel``, ``None`` elsewhere.

    Raises
    ------
    ValueError
        If a Conv of the model is not called by ``model(example_input)``, or
        as :func:`layer_options`.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from convsv.optax import nnx_input_shapes
    >>> model = nnx.Sequential(
    ...     nnx.Conv(1, 4, (3, 3), padding="CIRCULAR", rngs=nnx.Rngs(0)),
    ...     nnx.Conv(4, 4, (3, 3), strides=2, feature_group_count=4, rngs=nnx.Rngs(1)),
    ... )
    >>> shapes = nnx_input_shapes(model, jnp.zeros((1, 8, 8, 1)))
    >>> shapes["layers"][1]["kernel"].stride, shapes["layers"][1]["bias"]
    ((2, 2), None)
    """
    return _flax.input_shapes(model, example_input, wrt, _read)


def equinox_input_shapes(model: Any, example_input: Any, *, params: Any = None) -> Any:
    """The ``input_shapes`` tree of an Equinox model, from one example input.

    Runs ``model(example_input)`` abstractly (``eqx.filter_eval_shape``: no
    FLOPs), records the input shape of every ``eqx.nn.Conv`` on the way, and
    reads each layer with :func:`layer_options`.

    Parameters
    ----------
    model : equinox.Module
        The model; it is called as ``model(example_input)``, so give an input
        of the shape the model takes (unbatched for most Equinox models).
    example_input : array or pytree of arrays
        The input (only shapes matter).
    params : pytree, optional
        The parameters as the optimizer sees them (default
        ``eqx.filter(model, eqx.is_array)``; ``eqx.is_inexact_array`` gives
        the same tree of shapes).

    Returns
    -------
    pytree
        The structure of ``params``: a :class:`Conv` at each convolution's
        ``weight``, ``None`` elsewhere.

    Raises
    ------
    ValueError
        If a Conv of the model is not called by ``model(example_input)`` (or
        is called on copies, under ``eqx.filter_vmap`` say: record from an
        unbatched call), or as :func:`layer_options`.

    Examples
    --------
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import equinox as eqx
    >>> from convsv.optax import equinox_input_shapes
    >>> keys = jax.random.split(jax.random.key(0))
    >>> model = eqx.nn.Sequential([
    ...     eqx.nn.Conv2d(1, 4, 3, padding=1, key=keys[0]),
    ...     eqx.nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=4, key=keys[1]),
    ... ])
    >>> shapes = equinox_input_shapes(model, jnp.zeros((1, 8, 8)))
    >>> shapes.layers[1].weight.layout, shapes.layers[1].weight.input_shape, shapes.layers[1].bias
    ('OIHW', (8, 8), None)
    """
    return _equinox.input_shapes(model, example_input, params, _read)
