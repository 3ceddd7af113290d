"""PyTorch ``DTensor`` kernels (FSDP2, tensor parallelism) at the door of the maths, in one place.

A ``torch.distributed.tensor.DTensor`` kernel -- what ``fully_shard``
leaves in a model's parameters, or a user's own ``distribute_tensor`` -- is
gathered whole on every rank (``full_tensor()``, a collective every rank of
its mesh must enter), the plain tensor goes through the maths, and a
projection comes back as a ``DTensor`` on the kernel's mesh with the
kernel's placements. Norms and spectra come back as plain tensors, the same
on every rank: a scalar replicated by construction, which mixes with plain
tensors (comparisons, ``float()``, logging) where a replicated ``DTensor``
would refuse to.

The spec-level functions (:func:`convsv._clipping.clip`,
:func:`convsv._values.norm`, ...) carry :func:`whole_dtensor_kernel`; the
public functions and the adapters both call them. The PyTorch adapters use
:func:`whole` (``SpectralNorm.norm_bounds`` of a sharded layer) and
:func:`refuse_sharded_parametrization`; nothing else in the library knows
about ``DTensor``. Nothing here imports torch: a ``DTensor`` can only exist
once ``torch.distributed.tensor`` has been imported.

Outside autograd the ranks of the kernel's mesh split the work: each
builds and decomposes its share of the frequency rows (:func:`rows_share`,
which :func:`convsv._spectrum.row_chunks` asks), so its blocks take a
share of the memory, and the pieces are combined across the ranks
(:func:`across_ranks`: the largest value for norms, the sum of each share's
part of the kernel for projections; :func:`joined_rows`: the spectrum).
Under autograd every rank computes the whole (the collectives are not
differentiable). A projection is scattered from the mesh's first rank
(``distribute_tensor``), so the shards fit together even where two ranks'
round-off could differ; under autograd each rank keeps its own share of its
own result (``DTensor.from_local(..., Replicate)``, then ``redistribute``),
which is differentiable and takes no communication.
"""

from __future__ import annotations

import contextvars
import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


#: The process group whose ranks share the frequency rows of the kernel being computed (None: no split).
_ROW_GROUP: contextvars.ContextVar[Any] = contextvars.ContextVar("convsv_row_group", default=None)


def _dtensor_module() -> Any:
    return sys.modules.get("torch.distributed.tensor")


def is_dtensor(x: object) -> bool:
    """Whether ``x`` is a ``torch.distributed.tensor.DTensor`` (without importing torch)."""
    module = _dtensor_module()
    return module is not None and isinstance(x, module.DTensor)


def refuse_sharded_parametrization(weight: object, function: str) -> None:
    """A ``TypeError`` for a parametrization registered on a weight already sharded by FSDP2.

    ``fully_shard`` gathers, for each forward pass, the parameters it sharded itself; a
    parametrization registered afterwards moves the weight out of its reach, and the layer's
    convolution would meet a ``DTensor``.
    """
    if is_dtensor(weight):
        msg = (
            f"{function}: the layer's weight is already sharded (a DTensor). Parametrize the layers "
            "first, then shard the model with fully_shard, which gathers the weight for each forward pass"
        )
        raise TypeError(msg)


def whole(x: Any) -> Any:
    """``x`` whole on this rank: ``x.full_tensor()`` for a ``DTensor`` (a collective), else ``x``."""
    return x.full_tensor() if is_dtensor(x) else x


def _resharded(result: Any, like: Any) -> Any:
    """``result`` (a plain tensor, the same on every rank) as a ``DTensor`` laid out as ``like``.

    ``Partial`` placements (a kernel kept as a sum of per-rank terms) come
    back ``Replicate``: the projection is of the sum, not of each term.
    """
    module = _dtensor_module()
    from torch.distributed.tensor import Partial, Replicate

    mesh = like.device_mesh
    placements = [Replicate() if isinstance(p, Partial) else p for p in like.placements]
    if result.requires_grad:
        replicated = module.DTensor.from_local(result, mesh, [Replicate()] * mesh.ndim, run_check=False)
        return replicated.redistribute(mesh, placements)
    return module.distribute_tensor(result, mesh, placements)


def _row_group(kernel: Any, whole_kernel: Any, spec: Any) -> Any:
    """The process group to split ``spec``'s frequency rows over for ``kernel``, or None.

    The ranks of the kernel's mesh, where it has more than one and each gets
    a row of the first frequency axis (``m // 2 + 1``, the fewest a layer
    has, is at least the rank count): a one-dimensional mesh's group, or
    the world's for a larger mesh that spans it (torch names no group for
    the ranks of an arbitrary mesh). Never under autograd.
    """
    torch = sys.modules["torch"]
    mesh = kernel.device_mesh
    size = mesh.size()
    if size < 2 or spec.freq_grid[0] // 2 + 1 < size:
        return None
    if whole_kernel.requires_grad and torch.is_grad_enabled():
        return None
    if mesh.ndim == 1:
        return mesh.get_group()
    world = torch.distributed.group.WORLD
    return world if size == torch.distributed.get_world_size(world) else None


def _share(count: int, group: Any, rank: int) -> range:
    distributed = sys.modules["torch"].distributed
    size = distributed.get_world_size(group)
    return range(count * rank // size, count * (rank + 1) // size)


def rows_share(count: int) -> range:
    """The rows of ``range(count)`` (frequency rows) this rank computes: all of them unless split."""
    group = _ROW_GROUP.get()
    if group is None:
        return range(count)
    return _share(count, group, sys.modules["torch"].distributed.get_rank(group))


def across_ranks(x: Any, op: str) -> Any:
    """``x`` combined over the ranks that split the rows: ``op`` is ``"max"``, ``"sum"`` or ``"all"``.

    ``x`` itself outside a split. ``"all"`` is the logical and of booleans.
    """
    group = _ROW_GROUP.get()
    if group is None:
        return x
    distributed = sys.modules["torch"].distributed
    if op == "all":
        return across_ranks(x.to(dtype=sys.modules["torch"].int32), "min") > 0
    combined = x.clone()
    distributed.all_reduce(combined, op=getattr(distributed.ReduceOp, op.upper()), group=group)
    return combined


def joined_rows(x: Any, count: int) -> Any:
    """Every rank's rows of ``range(count)`` (``x`` holds this rank's, on axis 0), in order, on every rank."""
    group = _ROW_GROUP.get()
    if group is None:
        return x
    torch = sys.modules["torch"]
    size = torch.distributed.get_world_size(group)
    shares = [_share(count, group, rank) for rank in range(size)]
    longest = max(len(share) for share in shares)
    padded = torch.zeros((longest, *x.shape[1:]), dtype=x.dtype, device=x.device)
    padded[: x.shape[0]] = x
    pieces = [torch.empty_like(padded) for _ in shares]
    torch.distributed.all_gather(pieces, padded, group=group)
    return torch.cat([piece[: len(share)] for piece, share in zip(pieces, shares, strict=True)])


def whole_dtensor_kernel(*, reshard: bool) -> Callable[[F], F]:
    """Let ``func(kernel, spec, ...)`` take a ``DTensor`` kernel: gathered in, resharded out.

    While ``func`` runs, the ranks of the kernel's mesh split ``spec``'s
    frequency rows (see :func:`rows_share`).

    Parameters
    ----------
    reshard : bool
        ``True`` for projections: the result (or the first item of a tuple
        result) is a kernel, returned as a ``DTensor`` with the input's mesh
        and placements. ``False`` for norms, spectra and matrices: returned
        as the plain tensors the gathered kernel gives, the same on every rank.
    """

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(kernel: Any, spec: Any, *args: Any, **kwargs: Any) -> Any:
            if not is_dtensor(kernel):
                return func(kernel, spec, *args, **kwargs)
            whole_kernel = whole(kernel)
            token = _ROW_GROUP.set(_row_group(kernel, whole_kernel, spec))
            try:
                result = func(whole_kernel, spec, *args, **kwargs)
            finally:
                _ROW_GROUP.reset(token)
            if not reshard:
                return result
            if isinstance(result, tuple):
                return (_resharded(result[0], kernel), *result[1:])
            return _resharded(result, kernel)

        return wrapper  # type: ignore[return-value]

    return decorate
