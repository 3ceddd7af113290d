"""Projection of a layer onto an operator-norm ball: the public functions.

Each parses its arguments into a :class:`~convsv._layout.ConvSpec` and a
:class:`~convsv._options.ClipOptions` and calls the spec level in
:mod:`convsv._clipping` (the maths: the two sets, their projections and the
iterations between them), which the adapters call directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ._clipping import ClipInfo, clip, clip_full
from ._docs import fill_layer_doc
from ._layout import parse
from ._lib import Array, Namespace
from ._options import DEFAULT_MAX_MEMORY, ClipOptions


@fill_layer_doc
def clip_operator_norm(
    kernel: Array,
    input_shape: int | Sequence[int],
    max_norm: float,
    *,
    layout: str = "HWIO",
    stride: int | Sequence[int] = 1,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    transposed: bool = False,
    padding: str | int | Sequence[Any] = "circular",
    output_padding: int | Sequence[int] = 0,
    min_norm: float | None = None,
    method: str = "alternating",
    iterations: int = 1,
    tol: float | None = None,
    bound: str = "tight",
    return_info: bool = False,
    chunk_size: int | None = None,
    max_memory: int | None = DEFAULT_MAX_MEMORY,
    xp: Namespace | None = None,
) -> Array | tuple[Array, ClipInfo]:
    r"""Project a convolution kernel towards the layer-norm ball, keeping its size.

    Clips the singular values of the layer (see :func:`singular_values`) to
    ``max_norm`` in the frequency domain, returns to the kernel's own
    ``k_1 x ... x k_d`` taps by zeroing the others, and optionally repeats.
    One step is the algorithm of Sedghi, Gupta & Long (ICLR 2019, Section 3).
    The crop can push the norm above ``max_norm`` again; repeating the pair
    with ``tol`` drives it down to the bound.

    Parameters
    ----------
    kernel : array
        The convolution kernel; see :func:`singular_values`. With circular
        padding its dilated size must be at most the feature map's.
    input_shape : int or sequence of int
        Spatial shape of the layer's input.
    max_norm : float
        The bound on the operator norm (non-negative).
    layout : {"HWIO", "OIHW", "WIO", "OIW", "DHWIO", "OIDHW"}, optional
        Order of the kernel's axes. Default ``"HWIO"``.
    {layer_parameters}
    min_norm : float, optional
        Also raise singular values below ``min_norm`` up to it, aiming at
        singular values in ``[min_norm, max_norm]``; ``min_norm = max_norm = 1``
        asks for a layer as close to orthogonal as the kernel's size allows.
        This set is not convex: no method is guaranteed to reach it or to
        return the nearest point of it (see Notes).
    method : {"alternating", "extrapolated", "dykstra"}, optional
        ``"alternating"`` (default) repeats the paper's pair of projections;
        ``"extrapolated"`` lengthens each step of that pair to the hyperplane
        separating the iterate from the ball, which reaches the bound in far
        fewer iterations (not with ``min_norm``); ``"dykstra"`` converges to
        the nearest kernel (in the Frobenius norm) whose layer meets the bound.
    iterations : int, optional
        The most steps to take (default 1). Static under ``jax.jit``.
    tol : float, optional
        Stop as soon as every singular value lies within
        ``[min_norm * (1 - tol), max_norm * (1 + tol)]``; for ``"dykstra"``,
        also when the kernel moved by at most ``tol`` relative to its norm in
        the last step. ``None`` (default) runs exactly ``iterations`` steps.
        Use at least ``1e-5`` in float32.
    bound : {"tight", "circular"}, optional
        Zero padding only: ``"tight"`` (default) puts the zero-padded layer's
        own norm on ``max_norm`` (see Notes); ``"circular"`` projects the
        circular layer on the padded map, an upper bound: cheaper, certified,
        and conservative on small maps. ``min_norm`` needs ``"circular"``.
    return_info : bool, optional
        Also return a :class:`ClipInfo` with the exact norm reached, the steps
        taken and whether ``tol`` was met.
    {memory_parameters}
    xp : array namespace, optional
        Namespace to use; inferred from ``kernel`` when omitted.

    Returns
    -------
    kernel : array
        Same shape, layout, namespace and device as the input; same dtype for
        floating and complex kernels (integer kernels come back in the
        namespace's default float).
    info : ClipInfo
        Only with ``return_info=True``: the norm reached, the steps taken,
        whether ``tol`` was met, and the input's norm (for zero padding, see
        :class:`ClipInfo`).

    Raises
    ------
    TypeError
        As :func:`singular_values`, or if ``max_norm``, ``min_norm`` or
        ``tol`` is not a real number or ``iterations`` not an int.
    ValueError
        As :func:`singular_values`; also for a negative or non-finite bound,
        ``min_norm > max_norm``, an unknown ``method``, ``iterations < 1``, a
        negative or non-finite ``tol``, ``min_norm`` with ``"extrapolated"`` or with a tight
        zero-padded projection, an unknown ``bound``, or (circular padding) a
        dilated kernel larger than the feature map.

    See Also
    --------
    clip_singular_values : The exact projection, as a full-size kernel.
    operator_norm : The norm of the result.

    Notes
    -----
    Let ``B`` be the kernels on the feature-map grid whose layer has operator
    norm at most ``max_norm`` and ``S`` those supported on the original
    (dilated) taps. Both are convex and contain 0, and the Frobenius norm of
    a kernel is that of its layer's matrix divided by the square root of the
    number of output positions, so:

    - ``"alternating"`` converges to a point of ``B ∩ S`` (Cheney & Goldstein
      1959), often slowly: hundreds of steps for a relative ``tol`` of
      ``1e-4`` on a 16-channel 3x3 layer at 32x32;
    - ``"extrapolated"`` also converges to a point of ``B ∩ S`` (Bauschke,
      Combettes & Kruk 2006), typically within 10 steps to ``tol = 1e-6``;
      one step is longer than the paper's, never shorter;
    - ``"dykstra"`` converges to the projection of ``kernel`` onto
      ``B ∩ S``, the nearest kernel of that size whose layer meets the bound
      (Boyle & Dykstra 1986); it needs the most steps.

    Zero padding: the clip acts on the circular layer on the zero-padded map
    (rounded up to a multiple of the stride), whose norm bounds the
    zero-padded layer's from above (see :func:`operator_norm_bounds`). With
    ``bound="circular"`` that is all: the zero-padded layer's norm is at most
    ``max_norm`` once that circular layer's is, which is what ``tol`` tests,
    conservative by the gap between the two norms (on a 4x4 map a layer
    clipped to 1 keeps norm 0.93). With ``bound="tight"`` (default) the clip
    level is searched instead: each level is clipped with ``method``,
    ``iterations`` and ``tol``, and the zero-padded norm of the result
    (:func:`operator_norm`, started from the previous level's vector) sets
    the next level (a secant step through the origin, kept in a bracket),
    until that norm lies in ``[max_norm (1 - 8e-4), max_norm]``, in two to
    four levels; a norm still above after 12 levels is scaled onto the
    bound. So the zero-padded layer's norm is at most ``max_norm (1 + t)``,
    ``t`` the norm's tolerance (1e-6 in float64, 1e-5 in float32), and at
    most ``8e-4`` below it. Clipping the circular layer keeps the cheap,
    exact frequency-domain projection while the search fixes where it lands;
    projecting with the zero-padded operator itself would need an SVD of the
    whole layer. A kernel whose layer is already within the bound is
    returned unchanged.

    With ``min_norm`` the lower clip is still the nearest point in the
    frequency domain, but the set is not convex, so these guarantees lapse;
    check ``info`` for what was reached. After a finite number of steps the
    bound holds only to ``tol``; :func:`clip_singular_values` gives a layer
    meeting it exactly, with a full-size kernel.

    Under ``jax.jit`` (with ``max_norm``, ``min_norm``, ``method``,
    ``iterations`` and ``tol`` static) the loop is a ``jax.lax.while_loop``
    that stops where the eager loop would; JAX cannot differentiate through
    it, so differentiate with ``tol=None`` (a fixed-count loop) or through
    :func:`clip_singular_values`. On PyTorch it works under
    ``torch.no_grad()`` and on CUDA tensors, with one host synchronisation per
    step when ``tol`` is given, and is differentiable.

    References
    ----------
    H. Sedghi, V. Gupta and P. M. Long, "The Singular Values of Convolutional
    Layers", ICLR 2019.
    H. H. Bauschke, P. L. Combettes and S. G. Kruk, "Extrapolation algorithm
    for affine-convex feasibility problems", Numer. Algorithms 41, 2006.
    J. P. Boyle and R. L. Dykstra, "A method for finding projections onto the
    intersection of convex sets in Hilbert spaces", 1986.

    Examples
    --------
    The 3x3 box filter has norm 9; one step of the paper's clipping:

    >>> import array_api_strict as xp
    >>> import convsv
    >>> box = xp.ones((3, 3, 1, 1))
    >>> clipped = convsv.clip_operator_norm(box, (8, 8), 1.0)
    >>> clipped.shape
    (3, 3, 1, 1)
    >>> convsv.operator_norm(clipped, (8, 8))
    Array(2.06878157, dtype=array_api_strict.float64)

    The crop pushed the norm back above 1. Iterate until it is within 1e-6:

    >>> clipped, info = convsv.clip_operator_norm(
    ...     box, (8, 8), 1.0, method="extrapolated", iterations=50, tol=1e-6, return_info=True
    ... )
    >>> int(info.iterations), bool(info.converged), bool(info.norm <= 1.0 + 1e-6)
    (3, True, True)

    Dykstra's method finds the nearest such kernel, here the box scaled by 1/9:

    >>> nearest = convsv.clip_operator_norm(box, (8, 8), 1.0, method="dykstra", iterations=2000, tol=1e-9)
    >>> bool(xp.max(xp.abs(nearest - box / 9)) < 1e-6)
    True

    With zero padding the layer's own norm lands on the bound; the circular
    bound on the padded map is tighter than needed on a small map:

    >>> tight = convsv.clip_operator_norm(box, (4, 4), 1.0, padding=1)
    >>> float(convsv.operator_norm(tight, (4, 4), padding=1))  # within 8e-4 below 1
    0.9996...
    >>> loose = convsv.clip_operator_norm(
    ...     box, (4, 4), 1.0, padding=1, bound="circular", iterations=50, tol=1e-9
    ... )
    >>> round(float(convsv.operator_norm(loose, (4, 4), padding=1)), 3)
    0.711
    """
    array, spec, xp = parse(
        kernel, input_shape, layout, xp, stride, dilation, groups, transposed, padding, output_padding
    )
    options = ClipOptions(max_norm, min_norm, method, iterations, tol, bound, chunk_size, max_memory)
    out, info = clip(array, spec, xp, options, return_info)
    return (out, info) if return_info else out


@fill_layer_doc
def clip_singular_values(
    kernel: Array,
    input_shape: int | Sequence[int],
    max_norm: float,
    *,
    layout: str = "HWIO",
    stride: int | Sequence[int] = 1,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    transposed: bool = False,
    padding: str | int | Sequence[Any] = "circular",
    output_padding: int | Sequence[int] = 0,
    min_norm: float | None = None,
    chunk_size: int | None = None,
    max_memory: int | None = DEFAULT_MAX_MEMORY,
    xp: Namespace | None = None,
) -> Array:
    """The exact projection of a layer onto the operator-norm ball, as a full-size kernel.

    Clips every singular value of the layer (circular padding) to at most
    ``max_norm`` (and at least ``min_norm``) and returns the kernel of the
    resulting layer. That layer is still a circular convolution with the same
    stride and groups, but its kernel has a tap at every position of the
    (forward convolution's input) feature map, and dilation 1. Of all layers
    whose norm is at most ``max_norm`` it is the nearest to the original in
    the Frobenius norm (Lefkimmiatis et al. 2013,
    Proposition 1), and its norm bound holds exactly, up to round-off.

    Parameters
    ----------
    kernel : array
        The convolution kernel; see :func:`singular_values`. Any spatial size
        (a kernel larger than the map wraps around first).
    input_shape : int or sequence of int
        Spatial shape of the layer's input.
    max_norm : float
        The bound on the operator norm (non-negative).
    layout : {"HWIO", "OIHW", "WIO", "OIW", "DHWIO", "OIDHW"}, optional
        Order of the kernel's axes (of the input and of the result).
    {layer_parameters}
    min_norm : float, optional
        Also raise singular values below ``min_norm`` up to it.
    {memory_parameters}
    xp : array namespace, optional
        Namespace to use; inferred from ``kernel`` when omitted.

    Returns
    -------
    array
        The full-size kernel: the input's layout with the spatial sizes of
        the forward convolution's input (``input_shape``, or for a transposed
        layer ``input_shape * stride``); same namespace, device and dtype
        (integer kernels come back in the default float). Real for real
        kernels.

    Raises
    ------
    TypeError, ValueError
        As :func:`clip_operator_norm`; ``ValueError`` also for zero padding,
        whose projection is not a convolution.

    See Also
    --------
    clip_operator_norm : The same, cropped back to the kernel's own size.

    Examples
    --------
    >>> import array_api_strict as xp
    >>> import convsv
    >>> box = xp.ones((3, 3, 1, 1))
    >>> full = convsv.clip_singular_values(box, (8, 8), 1.0)
    >>> full.shape
    (8, 8, 1, 1)
    >>> convsv.operator_norm(full, (8, 8))
    Array(1., dtype=array_api_strict.float64)
    """
    array, spec, xp = parse(
        kernel, input_shape, layout, xp, stride, dilation, groups, transposed, padding, output_padding
    )
    options = ClipOptions(max_norm, min_norm, chunk_size=chunk_size, max_memory=max_memory)
    return clip_full(array, spec, xp, options)
