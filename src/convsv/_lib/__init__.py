"""Array-API plumbing: namespaces, devices and dtype rules, in one place.

The rest of the core is written once against the namespace returned by
:func:`namespace_of`; where a backend needs a patch, it goes here.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import itertools
import math
import os
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from typing import Any, NamedTuple, TypeVar

import array_api_compat

from .._checks import namespace

Array = Any
Namespace = Any
State = TypeVar("State", bound=tuple[Any, ...])
F = TypeVar("F", bound=Callable[..., Any])

__all__ = [
    "Array",
    "Namespace",
    "batch_map",
    "compiled_for_jax",
    "complex_dtype",
    "contiguous",
    "device_of",
    "explicit_sharding",
    "fori",
    "framework_convolution",
    "full_precision",
    "interleave_zeros",
    "namespace_of",
    "on_accelerator",
    "pad_axis",
    "put_rows",
    "repeat",
    "replicated",
    "sharded_like",
    "spread_rows",
    "start_vector",
    "stop_gradient",
    "while_loop",
    "wider_dtype",
    "working_dtype",
    "zero_d",
]


def namespace_of(kernel: object, xp: Namespace | None, *, name: str = "kernel") -> tuple[Array, Namespace]:
    """Return ``(array, namespace)`` for a user-supplied array.

    With ``xp`` given, ``kernel`` is first converted with ``xp.asarray`` (so
    nested lists work); the namespace returned is always the
    ``array_api_compat`` wrapper, whatever module the caller passed.
    """
    checked = namespace(xp)
    if checked is not None:
        kernel = checked.asarray(kernel)
    if not array_api_compat.is_array_api_obj(kernel) or isinstance(kernel, (bool, int, float, complex)):
        msg = (
            f"`{name}` must be an array (NumPy, PyTorch, JAX, CuPy or another array-API "
            f"array), got {type(kernel).__name__}; pass `xp=` to convert other input"
        )
        raise TypeError(msg)
    return kernel, array_api_compat.array_namespace(kernel)


def zero_d(x: Array, xp: Namespace) -> Array:
    """A full reduction as a 0-d array: NumPy's reductions return scalars instead."""
    return xp.asarray(x) if array_api_compat.is_numpy_namespace(xp) else x


def while_loop(more: Callable[[State], Array], step: Callable[[State], State], state: State) -> State:
    """``while more(state): state = step(state)``, also under ``jax.jit``.

    Traced JAX arrays cannot be tested with ``bool``; for them the loop is a
    ``jax.lax.while_loop`` (a compact graph that still stops early), from
    the first state or test that is traced. Every other backend runs the
    Python loop, one host synchronisation per test.
    """
    while not _any_traced(state):
        go = more(state)
        if _is_traced(go):
            break
        if not bool(go):
            return state
        state = step(state)
    # Traced from the start (jit), or since a step (an eager vmap whose tracers enter through the
    # step): the rest of the loop is JAX's.
    import jax

    result: State = jax.lax.while_loop(more, step, state)
    return result


def repeat(step: Callable[[State], State], state: State, count: int) -> State:
    """``count`` times ``state = step(state)``; a ``jax.lax.fori_loop`` for traced JAX arrays.

    With static bounds the JAX loop is a scan, so it stays reverse-differentiable
    (a ``while_loop`` is not).
    """
    if _any_traced(state):
        import jax

        looped: State = jax.lax.fori_loop(0, count, lambda _, s: step(s), state)
        return looped
    for _ in range(count):
        state = step(state)
    return state


def fori(start: int, stop: int, body: Callable[[int, State], State], state: State) -> State:
    """``for i in range(start, stop): state = body(i, state)``; a ``jax.lax.fori_loop`` when traced.

    Eagerly ``i`` is a Python int (so :func:`put_rows` writes in place); traced, it is a JAX integer.
    """
    if _any_traced((start, stop, state)):
        import jax

        looped: State = jax.lax.fori_loop(start, stop, body, state)
        return looped
    for i in range(start, stop):
        state = body(i, state)
    return state


def compiled_for_jax(func: F) -> F:
    """Run ``func(array, ...)`` under ``jax.jit`` when ``array`` is a concrete JAX array.

    Every other argument is static (compiled into the program: shapes,
    options, bounds). Eager JAX compiles each operation apart for every new
    shape and copies on every functional update, which costs seconds per
    call; compiled, a call is one program, compiled once per shape and
    options. Traced arrays (already inside ``jit``, ``grad``, ``vmap``),
    other libraries, and arguments that cannot be static (unhashable ones)
    call ``func`` as it is. Lists become tuples first, so ``padding=[[1, 1]]``
    can be static.

    Every core function a public one calls with the kernel has this wrapper,
    so it is also where JAX arrays split over a mesh are taken in and
    handed back (see the rules below).
    """
    placed = _whole_on_each_device(func)

    @functools.wraps(func)
    def wrapper(array: Any, *args: Any, **kwargs: Any) -> Any:
        if not array_api_compat.is_jax_array(array):
            return func(array, *args, **kwargs)
        split = kernel_split(array)
        # Explicitly split tracers of grad or vmap outside jit are compiled too: op by op, arrays
        # made beside them have no mesh to go on.
        if _is_traced(array) and split is None:
            out = placed(array, *args, **kwargs)
        else:
            args = tuple(_frozen(a) for a in args)
            kwargs = {name: _frozen(value) for name, value in kwargs.items()}
            try:
                hash((args, tuple(kwargs.items())))
            except TypeError:
                out = placed(array, *args, **kwargs)
            else:
                # The mesh is static: a program traced for one mesh is never reused on another.
                kwargs["_mesh"] = mesh_of(array)
                out = _jitted(placed, len(args), tuple(sorted(kwargs)))(array, *args, **kwargs)
        return out if split is None else split_like_kernel(out, array.shape, split)

    return wrapper  # type: ignore[return-value]


# --- where arrays go: one device, or a JAX mesh ----------------------------------------------------
# A JAX array may be split over a mesh of devices. Three rules, applied here and nowhere else, keep
# the core's array-API code unaware of it. (1) New arrays (zeros, ranges, start vectors) are placed
# by `device_of`: a split array's own sharding fits only arrays of its rank, so they go replicated
# on its mesh instead. (2) Under explicit sharding (`AxisType.Explicit`, the default of
# `jax.make_mesh` in recent JAX) the sharding is part of an array's type, and the reshapes that
# gather a kernel's spectrum into per-frequency matrices have no type that follows a split channel
# axis: the kernel is gathered whole on every device on the way in (kernels are small). In the
# automatic mode XLA partitions the computation itself. (3) What comes out with the kernel's rank
# and split axes (projections) is split again as the kernel was; norms, bounds and spectra come
# out replicated. Inside a trace in the automatic mode the sharding is not known (the type does
# not carry it): there XLA places the results.


def _jax() -> Any:
    """The jax module, imported by the first call that needs it (as ``Any``: its annotations are partial)."""
    import jax

    return jax


#: The mesh of the kernel being computed with, for :func:`batch_map` to spread its batch over.
_MESH: contextvars.ContextVar[Any] = contextvars.ContextVar("convsv_mesh", default=None)


def _whole_on_each_device(func: F) -> F:
    """``func(array, ...)`` with an explicitly split JAX ``array`` gathered whole on every device first.

    While ``func`` runs (or is traced), the mesh ``array`` lies on (the
    keyword ``_mesh``, passed where ``array`` is a tracer that does not say)
    is the one :func:`batch_map` spreads the frequency blocks over; a
    nested call on an array that names no mesh keeps the outer one.
    (Not ``functools.wraps``: ``jax.jit`` must see ``_mesh`` as a keyword.)
    """

    def placed(array: Any, *args: Any, _mesh: Any = None, **kwargs: Any) -> Any:
        mesh = _mesh if _mesh is not None else mesh_of(array)
        token = _MESH.set(mesh if mesh is not None else _MESH.get())
        try:
            return func(replicated(array), *args, **kwargs)
        finally:
            _MESH.reset(token)

    return placed  # type: ignore[return-value]


def mesh_of(x: Any) -> Any:
    """The mesh of several devices a JAX array lies on, where known (concrete, or explicit); else ``None``."""
    if not array_api_compat.is_jax_array(x):
        return None
    if _is_traced(x):
        typeof = getattr(_jax(), "typeof", None)
        sharding = getattr(typeof(x), "sharding", None) if typeof is not None else None
    else:
        sharding = x.sharding
    mesh = getattr(sharding, "mesh", None)
    if mesh is None or getattr(mesh, "empty", True) or mesh.size < 2:
        return None
    if any(t == _jax().sharding.AxisType.Manual for t in mesh.axis_types):
        return None  # inside shard_map: each device computes on its own
    return mesh


def kernel_split(x: Any) -> Any:
    """The sharding that splits the JAX array ``x`` over several devices, where it is known; else ``None``.

    Explicit sharding: the one in ``x``'s type (also for tracers). Automatic
    sharding: a concrete array's ``NamedSharding`` where it splits an axis;
    ``None`` for tracers, whose sharding is XLA's to choose.
    """
    sharding = explicit_sharding(x)
    if sharding is not None or not array_api_compat.is_jax_array(x) or _is_traced(x):
        return sharding
    sharding = x.sharding
    spec = getattr(sharding, "spec", None)
    if spec is None or len(sharding.device_set) < 2 or all(axis is None for axis in spec):
        return None
    return sharding


def split_like_kernel(out: Any, shape: tuple[int, ...], sharding: Any) -> Any:
    """Every array in ``out`` with the kernel's rank and the sizes of its split axes, split as the kernel is.

    ``shape`` is the kernel's and ``sharding`` its :func:`kernel_split`;
    other arrays (norms, spectra) are left as they are.
    """
    jax = _jax()
    spec = tuple(sharding.spec)

    def split(leaf: Any) -> Any:
        if not hasattr(leaf, "ndim") or leaf.ndim != len(shape) or len(spec) > len(shape):
            return leaf
        if any(axis is not None and leaf.shape[i] != shape[i] for i, axis in enumerate(spec)):
            return leaf
        if _is_traced(leaf):
            return jax.sharding.reshard(leaf, sharding)
        return jax.device_put(leaf, sharding)

    return jax.tree.map(split, out)


def explicit_sharding(x: Any) -> Any:
    """The sharding in a JAX array's type under explicit sharding, where it splits an axis; else ``None``.

    For a concrete array, its own (concrete) sharding, with the same split.
    """
    if not array_api_compat.is_jax_array(x):
        return None
    jax = _jax()
    typeof = getattr(jax, "typeof", None)  # (JAX releases before explicit sharding have none)
    sharding = getattr(typeof(x), "sharding", None) if typeof is not None else None
    spec = getattr(sharding, "spec", None)
    if spec is None or all(axis is None for axis in spec):
        return None
    # A concrete array's own sharding names its devices; its type's names an abstract mesh only.
    return sharding if _is_traced(x) else x.sharding


def replicated(x: Any) -> Any:
    """``x`` gathered whole on every device where its type says it is split; ``x`` itself otherwise."""
    sharding = explicit_sharding(x)
    if sharding is None:
        return x
    jax = _jax()
    return jax.sharding.reshard(x, jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec()))


def sharded_like(x: Any, like: Any) -> Any:
    """``x`` split as ``like``'s type says (explicit sharding); ``x`` itself otherwise."""
    sharding = explicit_sharding(like)
    if sharding is None:
        return x
    jax = _jax()
    return jax.sharding.reshard(x, sharding)


def _frozen(value: Any) -> Any:
    """Lists (and NumPy arrays of sizes) as tuples, 0-d NumPy arrays as scalars: static arguments."""
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    if array_api_compat.is_numpy_array(value):
        return tuple(_frozen(v) for v in value.tolist()) if value.ndim else value.item()
    return value


@cache
def _jitted(func: Callable[..., Any], count: int, names: tuple[str, ...]) -> Any:
    import jax

    return jax.jit(func, static_argnums=tuple(range(1, count + 1)), static_argnames=names)


def put_rows(x: Array, start: Any, rows: Array) -> Array:
    """``x`` with ``x[start : start + len(rows), ...] = rows``: in place where arrays are mutable.

    JAX arrays get a functional update (``dynamic_update_slice``, which also
    takes a traced ``start``); the others are written in place and returned.
    """
    if array_api_compat.is_jax_array(x):
        from jax import lax

        return lax.dynamic_update_slice_in_dim(x, rows, start, axis=0)
    x[start : start + rows.shape[0], ...] = rows
    return x


def contiguous(x: Array, xp: Namespace) -> Array:
    """``x`` laid out in C order (a view of a permutation is copied): batched products on it run fast."""
    return xp.reshape(xp.reshape(x, (-1,)), x.shape)


def _any_traced(tree: Any) -> bool:
    """Whether any array in a (nested) tuple is a JAX tracer (``jit``, ``vmap``, ``grad``)."""
    if isinstance(tree, (tuple, list)):
        return any(_any_traced(leaf) for leaf in tree)
    return _is_traced(tree)


def _is_traced(x: Array) -> bool:
    if not array_api_compat.is_jax_array(x):
        return False
    import jax

    return isinstance(x, jax.core.Tracer)


def start_vector(size: int, dtype: Any, xp: Namespace, device: Any) -> Array:
    """A fixed, noise-like unit vector (no RNG in the array API): spread over all frequencies.

    Built in the real dtype of ``dtype`` (``floor`` has no complex version), then cast.
    """
    real = xp.real(xp.zeros((), dtype=dtype, device=device)).dtype
    index = xp.astype(xp.arange(size, device=device), real)
    noise = xp.sin(index * 12.9898 + 78.233) * 43758.5453
    noise = noise - xp.floor(noise) - 0.5
    return xp.astype(noise / xp.linalg.vector_norm(noise), dtype)


def stop_gradient(x: Array) -> Array:
    """``x`` cut out of automatic differentiation (PyTorch, JAX); unchanged elsewhere."""
    if array_api_compat.is_torch_array(x):
        return x.detach()
    if array_api_compat.is_jax_array(x):
        import jax

        return jax.lax.stop_gradient(x)
    return x


def unit_scale(x: Array, xp: Namespace) -> tuple[Array, Array]:
    """``(x / s, s)`` with ``s`` the power of two at or just below ``max |x|``, outside autodiff.

    Everything that squares a kernel's entries (Gram matrices, vector norms,
    Rayleigh quotients) overflows or underflows far inside the dtype's range;
    on ``x / s``, whose largest entry is in ``[1, 2)``, it cannot. Every norm
    and projection is homogeneous, so results scale back by ``s``: exactly,
    as ``s`` is a power of two. ``s`` is 1 for a zero or non-finite ``x``
    (NaN then propagates as before). Taken outside autodiff, it leaves the
    gradients unchanged (a homogeneous function's derivative is invariant).
    """
    largest = stop_gradient(xp.max(xp.abs(x)))
    usable = xp.isfinite(largest) & (largest > 0)
    safe = xp.where(usable, largest, xp.ones_like(largest))
    scale = xp.where(usable, 2.0 ** xp.floor(xp.log2(safe)), xp.ones_like(safe))
    return x / xp.astype(scale, x.dtype), scale


def pad_axis(x: Array, axis: int, before: int, after: int, xp: Namespace) -> Array:
    """``x`` with ``before`` and ``after`` zeros along ``axis`` (the standard has no ``pad``)."""
    parts = []
    for size in (before, None, after):
        if size is None:
            parts.append(x)
        elif size:
            shape = (*x.shape[:axis], size, *x.shape[axis + 1 :])
            parts.append(xp.zeros(shape, dtype=x.dtype, device=device_of(x)))
    return xp.concat(parts, axis=axis) if len(parts) > 1 else x


def interleave_zeros(x: Array, axis: int, factor: int, xp: Namespace) -> Array:
    """``x`` with ``factor - 1`` zeros after every entry along ``axis`` (length times ``factor``)."""
    if factor == 1:
        return x
    spaced = pad_axis(xp.expand_dims(x, axis=axis + 1), axis + 1, 0, factor - 1, xp)
    return xp.reshape(spaced, (*x.shape[:axis], x.shape[axis] * factor, *x.shape[axis + 1 :]))


def device_of(x: Array) -> Any:
    """Where arrays made to work beside ``x`` go: the ``device=`` of every array the core creates.

    ``x``'s device; ``None`` for JAX tracers (a valid ``device=``: inside a
    trace XLA places them). A concrete JAX array split over several devices
    reports its sharding as its device, which fits only arrays of its rank:
    new arrays go replicated on its mesh instead (uncommitted, ``None``,
    where its sharding names no mesh), so a scalar never takes a kernel's
    sharding.
    """
    if array_api_compat.is_jax_array(x) and not _is_traced(x):
        sharding = x.sharding
        if len(sharding.device_set) > 1:
            mesh = getattr(sharding, "mesh", None)
            if mesh is None:
                return None
            jax = _jax()
            return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    return array_api_compat.device(x)


def to_host(x: Any) -> Any:
    """A NumPy array on the host from any backend's array or tensor (a copy where it must move).

    torch: detached, on the CPU, bfloat16 as float32 (NumPy has no bfloat16);
    CuPy: copied from the device; TensorFlow: through ``.numpy()`` (NumPy 2 warns
    on ``np.asarray`` of a tensor, whose ``__array__`` takes no ``copy``);
    array_api_strict: through DLPack.
    """
    import numpy as np

    if array_api_compat.is_torch_array(x):
        x = x.detach().cpu()
        return (x.float() if str(x.dtype) == "torch.bfloat16" else x).numpy()
    if array_api_compat.is_cupy_array(x):
        return x.get()
    module = type(x).__module__
    if module.startswith("tensorflow") and hasattr(x, "numpy"):
        return np.asarray(x.numpy())
    if module.startswith("array_api_strict"):  # refuses __array__ off its default device
        return np.from_dlpack(x)
    return np.asarray(x)


def working_dtype(xp: Namespace, dtype: Any, device: Any) -> Any:
    """The dtype the maths runs in for a kernel of ``dtype``.

    float32/float64 and complex kernels keep their dtype; integers become the
    namespace's default real float; float16 and bfloat16 are computed in
    float32 (their FFT and SVD are unsupported or too inaccurate on most
    backends). Booleans are rejected.
    """
    if xp.isdtype(dtype, "bool"):
        msg = "`kernel` has a boolean dtype; convolution weights must be numeric"
        raise TypeError(msg)
    if xp.isdtype(dtype, "integral"):
        return xp.__array_namespace_info__().default_dtypes(device=device)["real floating"]
    if xp.isdtype(dtype, "real floating") and xp.finfo(dtype).bits < 32:
        return xp.float32
    if xp.isdtype(dtype, ("real floating", "complex floating")):
        return dtype
    msg = f"`kernel` has unsupported dtype {dtype}; expected a real or complex floating or integer dtype"
    raise TypeError(msg)


def wider_dtype(dtype: Any, xp: Namespace, device: Any) -> Any:
    """float64 for float32 (complex128 for complex64) where the namespace has it on ``device``, else None.

    None for dtypes already that wide, and where float64 is missing (JAX
    without ``jax_enable_x64``, Apple's MPS).
    """
    if dtype not in (xp.float32, xp.complex64):
        return None
    try:
        offered = xp.__array_namespace_info__().dtypes(device=device)
    except (AttributeError, TypeError, ValueError):
        return None
    wide = "float64" if dtype == xp.float32 else "complex128"
    return offered.get(wide)


def complex_dtype(xp: Namespace, dtype: Any) -> Any:
    """The complex dtype with the precision of the floating ``dtype``."""
    if xp.isdtype(dtype, "complex floating"):
        return dtype
    return xp.complex64 if dtype == xp.float32 else xp.complex128


#: Below this many flops' worth of matrices, a batch is not worth splitting across threads.
MIN_PARALLEL_WORK = 2**22


@cache
def _workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(_workers(), thread_name_prefix="convsv")


@cache
def _blas_controller() -> Any:
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def _threadable(x: Array) -> bool:
    """NumPy and CPU PyTorch arrays: their LAPACK calls release the GIL and run eagerly."""
    if array_api_compat.is_numpy_array(x):
        return True
    return array_api_compat.is_torch_array(x) and x.device.type == "cpu"


def batch_map(fn: Callable[[Array], Any], matrices: Array, xp: Namespace) -> Any:
    """``fn(matrices)`` for a function batched over the leading axes of ``(..., r, c)`` matrices.

    On the CPU (NumPy, PyTorch) the batch is split across one thread per
    core, each calling LAPACK with one BLAS thread: small decompositions do
    not parallelise inside, and two BLAS threads per SVD measured up to 3x
    slower than one thread per matrix. Elsewhere (GPU, JAX) ``fn`` sees the
    whole batch. ``fn`` returns an array or a tuple of arrays with the same
    leading axes.
    """
    batch, (r, c) = matrices.shape[:-2], matrices.shape[-2:]
    count = math.prod(batch)
    mesh = _MESH.get()
    if mesh is not None and array_api_compat.is_jax_array(matrices) and count >= mesh.size:
        return _spread_over(mesh, fn, matrices, xp)
    workers = min(_workers(), count)
    if workers < 2 or count * r * c * min(r, c) < MIN_PARALLEL_WORK or not _threadable(matrices):
        return fn(matrices)
    flat = xp.reshape(matrices, (count, r, c))
    bounds = [count * w // workers for w in range(workers + 1)]
    parts = [flat[a:b, ...] for a, b in itertools.pairwise(bounds)]
    with _blas_controller().limit(limits=1):
        results = list(_pool().map(fn, parts))

    def join(pieces: list[Array]) -> Array:
        whole = xp.concat(pieces, axis=0)
        return xp.reshape(whole, (*batch, *whole.shape[1:]))

    if isinstance(results[0], tuple):
        return tuple(join([res[i] for res in results]) for i in range(len(results[0])))
    return join(results)


def _spread_over(mesh: Any, fn: Callable[[Array], Any], matrices: Array, xp: Namespace) -> Any:
    """:func:`batch_map` on a mesh: the batch split over all its devices, each decomposing its share.

    The leading axis of the flattened batch, padded with zero matrices to a
    multiple of the device count, is split over every axis of the mesh
    (explicit axes: by type, then gathered back, since reshaping a split axis
    has no explicit type; automatic axes: a constraint XLA propagates). On
    several CPU devices of one process, each device's share goes one matrix
    at a time (see :func:`_shares_a_host_pool`).
    """
    jax = _jax()
    batch, (r, c) = matrices.shape[:-2], matrices.shape[-2:]
    count = math.prod(batch)
    axes = tuple(mesh.axis_names)
    explicit = all(t == jax.sharding.AxisType.Explicit for t in mesh.axis_types)
    flat = pad_axis(xp.reshape(matrices, (count, r, c)), 0, 0, -count % mesh.size, xp)
    one_at_a_time = _shares_a_host_pool(mesh)
    if one_at_a_time:  # (share, devices, r, c): step i of the loop gives every device its i-th matrix
        flat = xp.permute_dims(xp.reshape(flat, (mesh.size, -1, r, c)), (1, 0, 2, 3))
    spec = jax.sharding.PartitionSpec(None, axes) if one_at_a_time else jax.sharding.PartitionSpec(axes)
    spread = jax.sharding.NamedSharding(mesh, spec)
    flat = jax.sharding.reshard(flat, spread) if explicit else jax.lax.with_sharding_constraint(flat, spread)
    results = jax.lax.map(fn, flat) if one_at_a_time else fn(flat)

    def join(part: Array) -> Array:
        if explicit:
            whole = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
            part = jax.sharding.reshard(part, whole)
        if one_at_a_time:
            part = xp.permute_dims(part, (1, 0, *range(2, part.ndim)))
            part = xp.reshape(part, (-1, *part.shape[2:]))
        return xp.reshape(part[:count, ...], (*batch, *part.shape[1:]))

    return tuple(join(res) for res in results) if isinstance(results, tuple) else join(results)


def _shares_a_host_pool(mesh: Any) -> bool:
    """Whether several of ``mesh``'s devices are CPU devices of this process (host-platform devices).

    Their programs run on one thread pool, and jaxlib's batched LAPACK
    kernels (eigh, SVD) hand parts of their batch to that pool and wait: when
    every thread of it waits so, nothing runs the parts, and the process
    hangs (seen on two cores with four devices). One matrix per call hands
    out nothing.
    """
    jax = _jax()
    if not isinstance(mesh, jax.sharding.Mesh):  # an abstract mesh (a tracer's): the default backend's
        return bool(jax.default_backend() == "cpu" and jax.local_device_count() > 1)
    devices = mesh.devices.flat
    local = [d for d in devices if d.platform == "cpu" and d.process_index == jax.process_index()]
    return len(local) > 1


def spread_rows(blocks: Array) -> Array:
    """Frequency ``blocks`` ``(..., r, c)`` split over the kernel's mesh where that is XLA's to follow.

    In JAX's automatic mode a constraint on the blocks as they are made lets
    XLA compute each device's share there (the product that makes them is
    partitioned too), along the first axis: the rows of the first spatial
    frequency, which no FFT transforms afterwards (XLA 0.10's partitioner
    aborts the process on an FFT along a split axis it cannot shuffle: the
    other frequency axes are never split). Explicit axes, other libraries,
    no mesh, or a row count the device count does not divide: ``blocks`` as
    they are (:func:`batch_map` still spreads the decompositions).
    """
    mesh = _MESH.get()
    if mesh is None or not array_api_compat.is_jax_array(blocks) or blocks.shape[0] % mesh.size:
        return blocks
    jax = _jax()
    if any(t == jax.sharding.AxisType.Explicit for t in mesh.axis_types):
        return blocks
    spec = jax.sharding.PartitionSpec(tuple(mesh.axis_names))
    return jax.lax.with_sharding_constraint(blocks, jax.sharding.NamedSharding(mesh, spec))


def on_accelerator(x: Array) -> bool:
    """Whether ``x`` lives on a GPU: CuPy, CUDA PyTorch, JAX on a GPU (a tracer: JAX's default backend)."""
    if array_api_compat.is_cupy_array(x):
        return True
    if array_api_compat.is_torch_array(x):
        return bool(x.device.type != "cpu")
    if array_api_compat.is_jax_array(x):
        import jax

        if _is_traced(x):
            return bool(jax.default_backend() != "cpu")
        return any(d.platform != "cpu" for d in x.devices())
    return False


def full_precision(func: F) -> F:
    """Run ``func`` with JAX's matrix products in full float32 precision.

    JAX multiplies float32 (and complex64) matrices in TF32 on recent NVIDIA
    GPUs unless told otherwise, which costs three digits; the context also
    holds while ``jax.jit`` traces. Other libraries multiply in full
    precision by default. JAX is only consulted once something imported it.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        jax = sys.modules.get("jax")
        context = jax.default_matmul_precision("highest") if jax is not None else contextlib.nullcontext()
        with context:
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


Convolution = tuple[Callable[[Array], Array], Callable[[Array], Array]]


class _Geometry(NamedTuple):
    """A zero-padded convolution's sizes, as :func:`framework_convolution` hands them on."""

    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int
    pads: tuple[tuple[int, int], ...]
    input_shape: tuple[int, ...]
    outputs: list[int]
    spans: list[int]


def framework_convolution(
    weight: Array,
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    groups: int,
    pads: tuple[tuple[int, int], ...],
    input_shape: tuple[int, ...],
    output_shape: tuple[int, ...] | None = None,
) -> Convolution | None:
    """The zero-padded convolution and its adjoint by the array's own framework, or None.

    ``weight`` is ``(out, in / groups, *k)``; both functions act on
    ``(batch, channels, *spatial)`` arrays: ``forward`` maps the
    ``input_shape`` map to the output, ``adjoint`` back (the conjugate
    transpose). PyTorch and JAX have convolutions that beat any array-API
    composition (cuDNN, oneDNN, XLA); other libraries get None and the
    caller composes the convolution itself. With ``output_shape`` smaller
    than the convolution's own output (a transposed layer whose
    ``output_padding`` is at least its stride), only those first outputs are kept.
    """
    spans = [(k - 1) * d + 1 for k, d in zip(weight.shape[2:], dilation, strict=True)]
    outputs = [
        (n + a + b - w) // s + 1 for n, (a, b), w, s in zip(input_shape, pads, spans, stride, strict=True)
    ]
    pair = None
    geometry = _Geometry(stride, dilation, groups, pads, input_shape, outputs, spans)
    if array_api_compat.is_torch_array(weight):
        pair = _torch_convolution(weight, geometry)
    elif array_api_compat.is_jax_array(weight):
        pair = _jax_convolution(weight, geometry)
    return None if pair is None else _first_outputs(pair, outputs, output_shape)


def _torch_convolution(weight: Array, geometry: _Geometry) -> Convolution:
    """PyTorch's ``conv{1,2,3}d`` and ``conv_transpose{1,2,3}d`` (see :func:`framework_convolution`)."""
    stride, dilation, groups, pads, input_shape, outputs, spans = geometry
    crop = (slice(None), slice(None), *(slice(a, a + n) for (a, _), n in zip(pads, input_shape, strict=True)))
    import torch.nn.functional as tf

    d = len(stride)
    conv = (tf.conv1d, tf.conv2d, tf.conv3d)[d - 1]
    conv_t = (tf.conv_transpose1d, tf.conv_transpose2d, tf.conv_transpose3d)[d - 1]
    flat_pads = tuple(p for pair in reversed(pads) for p in pair)  # torch pads the last axis first
    # What the transposed convolution must add to reach the padded map (less than the stride).
    extra = tuple(
        n + a + b - (m - 1) * s - w
        for n, (a, b), m, s, w in zip(input_shape, pads, outputs, stride, spans, strict=True)
    )
    adjoint_weight = weight.conj().resolve_conj() if weight.is_complex() else weight
    # Equal zeros on both sides are the convolutions' own `padding` (no copy of the map to pad or crop).
    symmetric = tuple(a for a, b in pads) if all(a == b for a, b in pads) else None

    def torch_forward(x: Array) -> Array:
        if symmetric is not None:
            return conv(x, weight, stride=stride, padding=symmetric, dilation=dilation, groups=groups)
        return conv(tf.pad(x, flat_pads), weight, stride=stride, dilation=dilation, groups=groups)

    def torch_adjoint(y: Array) -> Array:
        options: dict[str, Any] = {
            "stride": stride,
            "output_padding": extra,
            "groups": groups,
            "dilation": dilation,
        }
        if symmetric is not None:
            return conv_t(y, adjoint_weight, padding=symmetric, **options)
        return conv_t(y, adjoint_weight, **options)[crop]

    return torch_forward, torch_adjoint


def _jax_convolution(weight: Array, geometry: _Geometry) -> Convolution:
    """JAX's ``lax.conv_general_dilated``, the adjoint spelled out (see :func:`framework_convolution`)."""
    stride, dilation, groups, pads, input_shape, outputs, spans = geometry
    import jax
    from jax import lax

    complex_weight = jax.numpy.iscomplexobj(weight)

    def jax_forward(x: Array) -> Array:
        return lax.conv_general_dilated(
            x,
            weight,
            stride,
            list(pads),
            rhs_dilation=dilation,
            feature_group_count=groups,
            precision=lax.Precision.HIGHEST,  # no TF32 on GPUs
        )

    # The adjoint: a stride-1 correlation of the output spread out by the stride (zeros between)
    # with the flipped, conjugated kernel whose in and out swap within each group, padded
    # (negative: cropped) to line up with the input map. Spelled out, because JAX's own
    # transpose (lhs_dilation) of a strided 3-D convolution aborts in XLA's CPU simplifier.
    out, group_in = weight.shape[:2]
    ndim = len(stride)
    split = lax.reshape(weight, (groups, out // groups, group_in, *weight.shape[2:]))
    swapped = lax.transpose(split, (0, 2, 1, *range(3, ndim + 3)))
    flipped = lax.rev(swapped, tuple(range(3, ndim + 3)))
    flipped_weight = lax.reshape(flipped, (groups * group_in, out // groups, *weight.shape[2:]))
    if complex_weight:
        flipped_weight = flipped_weight.conj()
    adjoint_pads = [
        (w - 1 - a, n + a - m * s)
        for n, (a, _), m, s, w in zip(input_shape, pads, outputs, stride, spans, strict=True)
    ]
    xp = array_api_compat.array_namespace(weight)

    def jax_adjoint(y: Array) -> Array:
        for axis, s in enumerate(stride, start=2):
            y = interleave_zeros(y, axis, s, xp)
        return lax.conv_general_dilated(
            y,
            flipped_weight,
            (1,) * ndim,
            adjoint_pads,
            rhs_dilation=dilation,
            feature_group_count=groups,
            precision=lax.Precision.HIGHEST,
        )

    return jax_forward, jax_adjoint


def _first_outputs(pair: Convolution, outputs: list[int], kept: tuple[int, ...] | None) -> Convolution:
    """The convolution restricted to its first ``kept`` outputs, and its adjoint (zeros for the others)."""
    forward, adjoint = pair
    if kept is None or tuple(kept) == tuple(outputs):
        return pair
    window = (slice(None), slice(None), *(slice(0, m) for m in kept))

    def kept_forward(x: Array) -> Array:
        return forward(x)[window]

    def kept_adjoint(y: Array) -> Array:
        xp = array_api_compat.array_namespace(y)
        for axis, (m, n) in enumerate(zip(kept, outputs, strict=True), start=2):
            y = pad_axis(y, axis, 0, n - m, xp)
        return adjoint(y)

    return kept_forward, kept_adjoint
