"""JAX models' convolutions for the optax transform: :class:`Conv`, and the Flax and Equinox readers.

Public as ``convsv.optax.Conv``, ``convsv.optax.layer_options``,
``convsv.optax.nnx_input_shapes`` and ``convsv.optax.equinox_input_shapes``;
the rules that read each framework's layers are in
:mod:`convsv._frameworks.flax` and :mod:`convsv._frameworks.equinox`.
flax and equinox are imported only by the functions that read their layers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from ._checks import shape as shape_of
from ._frameworks import equinox as _equinox
from ._frameworks import flax as _flax
from ._layout import conv_spec


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


@contextmanager
def naming(where: str) -> Iterator[None]:
    """Re-raise the core's ``ValueError`` or ``TypeError`` with the parameter it was about."""
    try:
        yield
    except (ValueError, TypeError) as error:
        if type(error) not in (ValueError, TypeError):  # (a subclass may take other arguments)
            raise
        msg = f"{where}: {error}"
        raise type(error)(msg) from None


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
    shape = shape_of(input_shape, f"input_shape of {where}", translator.spatial_rank(layer))
    with naming(where):
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
