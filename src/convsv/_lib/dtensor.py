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

Every rank computes the projection of the same gathered kernel. Outside
autograd the result is scattered from the mesh's first rank
(``distribute_tensor``), so the shards fit together even where two ranks'
round-off could differ; under autograd each rank keeps its own share of
its own result (``DTensor.from_local(..., Replicate)``, then
``redistribute``), which is differentiable and takes no communication.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


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


def whole_dtensor_kernel(*, reshard: bool) -> Callable[[F], F]:
    """Let ``func(kernel, ...)`` take a ``DTensor`` kernel: gathered in, resharded out.

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
        def wrapper(kernel: Any, *args: Any, **kwargs: Any) -> Any:
            if not is_dtensor(kernel):
                return func(kernel, *args, **kwargs)
            result = func(whole(kernel), *args, **kwargs)
            if not reshard:
                return result
            if isinstance(result, tuple):
                return (_resharded(result[0], kernel), *result[1:])
            return _resharded(result, kernel)

        return wrapper  # type: ignore[return-value]

    return decorate
