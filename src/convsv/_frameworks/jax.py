"""JAX models in convsv's terms: which parameters are kernels and the shapes layers see.

Shared by the Flax and Equinox translators and the optax adapter. JAX is
imported by the calls that need it, never by importing this module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")
Path = tuple[Any, ...]
Spatial = Callable[[Any, Any], tuple[int, ...]]


def _jax() -> Any:
    """The jax module, imported by the first call that needs it (as ``Any``: its annotations are partial)."""
    import jax

    return jax


# --- which parameters are kernels ------------------------------------------------------------------


def is_array_like(x: Any) -> bool:
    """A parameter leaf: an array, a tracer, a ShapeDtypeStruct or an array wrapper (a Flax Variable)."""
    return hasattr(x, "shape") and hasattr(x, "dtype") and not isinstance(x, (dict, list, tuple))


def abstract(leaf: Any) -> Any:
    """A parameter's shape and dtype, as a ``jax.ShapeDtypeStruct``."""
    return _jax().ShapeDtypeStruct(leaf.shape, leaf.dtype)


def is_function(input_shapes: Any) -> bool:
    """The callable form of ``input_shapes``: a callable that is not a pytree (an Equinox module is both)."""
    if not callable(input_shapes):
        return False
    tree_util = _jax().tree_util
    return bool(tree_util.treedef_is_leaf(tree_util.tree_structure(input_shapes)))


def kernel_entries(params: Any, input_shapes: Any, is_entry: Callable[[Any], bool]) -> Any:
    """``params``' tree with each array's ``input_shapes`` entry, ``None`` where it has none.

    ``input_shapes`` is a callable ``(path, abstract leaf) -> entry | None``,
    or a tree with the structure of ``params`` down to its entries (leaves by
    ``is_entry``), where ``None`` may stand for a whole subtree and any
    other entry must stand for exactly one array.

    Raises
    ------
    ValueError
        If the tree does not match ``params``, or an entry stands for more or
        fewer arrays than one.
    """
    jax = _jax()
    if is_function(input_shapes):
        return jax.tree_util.tree_map_with_path(
            lambda path, leaf: input_shapes(path, abstract(leaf)), params, is_leaf=is_array_like
        )
    try:
        jax.tree.structure(input_shapes, is_leaf=is_entry).flatten_up_to(params)
    except (ValueError, TypeError) as error:
        msg = (
            "input_shapes must be a pytree with the structure of params (a spatial shape or "
            "convsv.optax.Conv at each convolution kernel, None elsewhere; None may also stand for a "
            "whole subtree), or a callable (path, leaf) -> shape | Conv | None. Matching it to params "
            f"failed: {error}"
        )
        raise ValueError(msg) from None
    return jax.tree_util.tree_map_with_path(_spread, input_shapes, params, is_leaf=is_entry)


def _spread(path: Path, entry: Any, subtree: Any) -> Any:
    """One entry over its ``params`` subtree: at its one array, or ``None`` at every array."""
    jax = _jax()
    if entry is not None:
        arrays = len(jax.tree.leaves(subtree, is_leaf=is_array_like))
        if arrays != 1:
            where = jax.tree_util.keystr(path) or "the params root"
            msg = (
                f"input_shapes gives {entry!r} at {where}, where params hold {arrays} arrays, not one "
                "convolution kernel"
            )
            raise ValueError(msg)
    return jax.tree.map(lambda _: entry, subtree, is_leaf=is_array_like)


# --- the input shapes a model's layers see -----------------------------------------------------------


def plain(path: Sequence[Any]) -> Path:
    """A JAX key path as plain values: ``DictKey.key``, ``SequenceKey.idx``, ``GetAttrKey.name``."""
    return tuple(_plain_key(entry) for entry in path)


def _plain_key(entry: Any) -> Any:
    for attribute in ("key", "idx", "name"):
        if hasattr(entry, attribute):
            return getattr(entry, attribute)
    return entry


@contextmanager
def recording(cls: type, spatial: Spatial) -> Iterator[dict[int, tuple[Any, tuple[int, ...]]]]:
    """Record ``(layer, spatial(layer, inputs))`` by ``id(layer)`` at each call of a ``cls`` instance.

    Patches ``cls.__call__`` for the duration (not thread-safe), so that the
    layers of any model are seen without the model's help; subclasses that
    call ``super().__call__`` are recorded too.
    """
    seen: dict[int, tuple[Any, tuple[int, ...]]] = {}
    missing = object()
    saved = vars(cls).get("__call__", missing)
    original = cls.__call__

    def call(self: Any, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        seen[id(self)] = (self, spatial(self, inputs))
        return original(self, inputs, *args, **kwargs)

    method = "__call__"  # (setattr with a variable: mypy refuses assigning to a method)
    setattr(cls, method, call)
    try:
        yield seen
    finally:
        if saved is missing:
            delattr(cls, method)
        else:
            setattr(cls, method, saved)


def read_called(
    cls: type,
    spatial: Spatial,
    run: Callable[[], Any],
    layers: dict[int, Path],
    separator: str,
    read: Callable[[Any, tuple[int, ...], str], T],
) -> dict[Path, T]:
    """``read(layer, input spatial shape, name)`` for each of ``layers``, from the inputs ``run()`` gives it.

    ``layers`` maps ``id(layer)`` to the layer's path in the model (its name
    joins the path with ``separator``); the result is keyed by that path.
    Called inside a trace (``eval_shape``), ``read`` sees the layers as the
    trace does.

    Raises
    ------
    ValueError
        If ``run()`` does not call one of ``layers``: its input shape is unknown.
    """
    with recording(cls, spatial) as seen:
        run()
    found = {
        path: read(*seen[key], separator.join(map(str, path))) for key, path in layers.items() if key in seen
    }
    unseen = sorted(separator.join(map(str, path)) for key, path in layers.items() if key not in seen)
    if unseen:
        msg = f"Conv layer(s) {unseen} were not called by model(example_input): no input shape for them"
        raise ValueError(msg)
    return found


def at_kernels(params: Any, found: dict[Path, Any]) -> Any:
    """``params``' tree with ``found[path]`` at each array whose plain path is there, ``None`` elsewhere."""
    return _jax().tree_util.tree_map_with_path(lambda path, _: found.get(plain(path)), params)


def padtype_pads(
    shape: Sequence[int], spans: Sequence[int], strides: Sequence[int], mode: str
) -> list[tuple[int, int]]:
    """The zeros ``jax.lax`` adds for a ``"SAME"``, ``"SAME_LOWER"`` or ``"VALID"`` convolution."""
    pads = _jax().lax.padtype_to_pads(tuple(shape), tuple(spans), tuple(strides), mode)
    return [(int(a), int(b)) for a, b in pads]
