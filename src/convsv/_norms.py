"""The public spectrum functions: singular values, operator norm, certified bounds, the dense matrix.

Each parses its arguments into a :class:`~convsv._layout.ConvSpec` and
options and calls the spec level (:mod:`convsv._values`,
:func:`convsv._operator.dense_matrix`), which the adapters and the CLI call
directly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ._checks import optional_integer
from ._docs import fill_layer_doc
from ._layout import parse
from ._lib import (
    Array,
    Namespace,
)
from ._operator import dense_matrix
from ._options import DEFAULT_MAX_MEMORY, NormOptions
from ._values import check_count, norm, norm_bounds, spectrum

#: Default cap on the number of entries of :func:`conv_matrix` (2 GiB in float64).
MAX_DENSE_ENTRIES = 2**28


@fill_layer_doc
def singular_values(
    kernel: Array,
    input_shape: int | Sequence[int],
    *,
    layout: str = "HWIO",
    stride: int | Sequence[int] = 1,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    transposed: bool = False,
    padding: str | int | Sequence[Any] = "circular",
    output_padding: int | Sequence[int] = 0,
    k: int | None = None,
    tol: float | None = None,
    iterations: int = 640,
    chunk_size: int | None = None,
    max_memory: int | None = DEFAULT_MAX_MEMORY,
    xp: Namespace | None = None,
) -> Array:
    """Exact singular values of a convolutional layer.

    The layer is the deep-learning convolution (cross-correlation), by
    default with wrap-around padding anchored at the top-left corner: for
    every spatial axis of size ``n``,
    ``y[o, r] = sum_i sum_p K[p, i, o] * x[i, (r + p) mod n]``. Its singular
    values are those of one small matrix per spatial frequency (Sedghi, Gupta
    & Long, ICLR 2019, Theorem 6); with a stride ``s`` that matrix gathers the
    ``s^d`` frequencies that alias onto one output frequency, and with groups
    it is block diagonal (the theory page derives both).

    Parameters
    ----------
    kernel : array
        The convolution kernel, in any array-API namespace (NumPy, PyTorch,
        JAX, CuPy, ``array_api_strict``...). 1-D, 2-D and 3-D kernels are
        accepted; a kernel larger than the feature map wraps around (taps that
        land on the same position add up). Real or complex; integers are
        promoted to the namespace's default float, float16 and bfloat16 are
        computed in float32.
    input_shape : int or sequence of int
        Spatial shape of the layer's input feature map, one entry per spatial
        axis of the kernel; a bare int means the same size on every axis.
    layout : {"HWIO", "OIHW", "WIO", "OIW", "DHWIO", "OIDHW"}, optional
        Order of the kernel's axes: ``"HWIO"`` is (spatial..., in, out), as in
        TensorFlow, Keras and JAX/Flax; ``"OIHW"`` is (out, in, spatial...), as
        in PyTorch. With groups, "in" is ``in_channels / groups``. Default
        ``"HWIO"``.
    {layer_parameters}
    k : int, optional
        Return only the ``k`` largest singular values, as a 1-D array,
        descending. Circular padding: the largest of the exact spectrum.
        Zero padding: from the dense SVD for small layers, else by block
        Lanczos (thick-restarted, fully reorthogonalised), each within
        ``tol`` (relative) of a singular value of its own and at most the
        singular value of its rank. Default: all of them.
    tol : float, optional
        Zero padding with ``k``: the block Lanczos tolerance. Default
        ``1e-6`` in float64, ``1e-5`` in float32.
    iterations : int, optional
        Zero padding with ``k``: the most block steps (default 640).
    {memory_parameters}
    xp : array namespace, optional
        Namespace to use; inferred from ``kernel`` when omitted. When given,
        ``kernel`` is first converted with ``xp.asarray``.

    Returns
    -------
    array
        Circular padding: shape ``(*m, groups * min(prod(stride) * c_in / groups, c_out / groups))``,
        where ``m`` is the output map of the (forward) convolution,
        ``input_shape / stride`` (for a transposed layer: its ``input_shape``).
        Row ``s[f]`` holds, in descending order, the singular values of the
        layer restricted to output frequency ``f`` (with stride 1, the matrix
        ``sum_p K[p] exp(2 pi i <f, p / n>)``). Flattened, it is exactly the
        multiset of singular values of :func:`conv_matrix` (zeros included).
        Zero padding: the 1-D array of all singular values of the dense
        matrix, descending (there is no frequency structure), computed only
        for matrices of at most ``2**24`` entries. With ``k``: the ``k``
        largest, 1-D, descending, for any layer.
        Same namespace and device as ``kernel``; float32 for float32,
        complex64, float16 and bfloat16 kernels, float64 for float64 and
        complex128 ones.

    Raises
    ------
    TypeError
        If ``kernel`` is not an array or has a boolean dtype, ``xp`` is not
        an array namespace, or an option has the wrong type: a size that is
        not an integer, a bool or a string where a number is expected, a set
        for a shape. (NumPy scalars and 0-d arrays are accepted wherever
        Python numbers are.)
    ValueError
        If ``layout`` is unknown, the kernel's rank does not match it, a size
        is not positive, an option has the wrong length, ``groups`` does not
        divide the channels, a circular stride does not divide the map, the
        layer's output would be empty, or a zero-padded layer is too large
        for a dense SVD (use :func:`operator_norm` or
        :func:`operator_norm_bounds`). Also, before anything is allocated,
        if the grid the layer is computed on (the map, or the zero-padded
        map rounded up to a multiple of the stride) has more than ``2**31``
        positions, or the result or a working set no chunking shrinks would
        exceed ``max(max_memory, 2**34)`` bytes (see ``max_memory``); the
        message names the option responsible.

    See Also
    --------
    operator_norm : The largest singular value alone.
    conv_matrix : The dense matrix of the same layer.

    Notes
    -----
    Cost (circular): one transform of the kernel onto the feature map and one
    SVD per output frequency of a ``(prod(stride) c_in / groups) x (c_out / groups)``
    matrix per group, against ``O((c N)^3)`` for the dense matrix. For a real
    kernel only half the frequencies are decomposed: the matrix at ``-f`` is
    the conjugate of the one at ``f`` (rows permuted under a stride), with the
    same singular values, which fill in the other half. The frequencies are
    processed a few rows at a time (see ``max_memory``); on the CPU (NumPy,
    PyTorch) the SVDs of a chunk are split across one thread per core, each
    with one BLAS thread. A depthwise layer's matrices have one row or
    column: their norms, no SVD.

    Non-finite kernels: a NaN or infinite tap reaches every frequency, so every
    singular value is NaN. The NaN is propagated, not raised, so the function
    works under ``jax.jit`` and never forces a device synchronisation; check
    the result with ``isnan`` where that matters.

    The function is differentiable on PyTorch and JAX, and traceable under
    ``jax.jit`` (every argument but ``kernel`` is static).

    References
    ----------
    H. Sedghi, V. Gupta and P. M. Long, "The Singular Values of Convolutional
    Layers", ICLR 2019.

    Examples
    --------
    A 3x3 box filter on a 4x4 map, one channel in and out: the zero
    frequency's singular value is the sum of the taps.

    >>> import array_api_strict as xp
    >>> import convsv
    >>> kernel = xp.ones((3, 3, 1, 1))
    >>> s = convsv.singular_values(kernel, (4, 4))
    >>> s.shape
    (4, 4, 1)
    >>> s[0, 0, 0]
    Array(9., dtype=array_api_strict.float64)

    PyTorch's layout, stride 2: each output frequency gathers four input
    frequencies, so each row has ``min(4 * 3, 8) = 8`` values.

    >>> kernel = xp.ones((8, 3, 5, 5))  # (out, in, height, width)
    >>> convsv.singular_values(kernel, (6, 10), layout="OIHW", stride=2).shape
    (3, 5, 8)

    The three largest, with circular and with zero padding (the box filter's
    symmetry repeats a value):

    >>> box = xp.ones((3, 3, 1, 1))
    >>> convsv.singular_values(box, (8, 8), k=3)
    Array([9.        , 7.24264069, 7.24264069], dtype=array_api_strict.float64)
    >>> convsv.singular_values(box, (8, 8), padding=1, k=3)
    Array([8.29085937, 7.29085937, 7.29085937], dtype=array_api_strict.float64)
    """
    array, spec, xp = parse(
        kernel, input_shape, layout, xp, stride, dilation, groups, transposed, padding, output_padding
    )
    options = NormOptions(tol=tol, iterations=iterations, chunk_size=chunk_size, max_memory=max_memory)
    return spectrum(array, spec, xp, check_count(k, spec), options)


@fill_layer_doc
def operator_norm(
    kernel: Array,
    input_shape: int | Sequence[int],
    *,
    layout: str = "HWIO",
    stride: int | Sequence[int] = 1,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    transposed: bool = False,
    padding: str | int | Sequence[Any] = "circular",
    output_padding: int | Sequence[int] = 0,
    method: str = "auto",
    tol: float | None = None,
    iterations: int = 640,
    chunk_size: int | None = None,
    max_memory: int | None = DEFAULT_MAX_MEMORY,
    xp: Namespace | None = None,
) -> Array:
    """Operator norm (largest singular value) of a convolutional layer.

    This is the layer's true Lipschitz constant in the Euclidean norm, not the
    norm of the kernel reshaped into a matrix that ``spectral_norm`` wrappers
    estimate. Exact for circular padding; for zero padding, exact to ``tol``
    by a matrix-free iteration.

    Parameters
    ----------
    kernel : array
        The convolution kernel; see :func:`singular_values`.
    input_shape : int or sequence of int
        Spatial shape of the layer's input; see :func:`singular_values`.
    layout : {"HWIO", "OIHW", "WIO", "OIW", "DHWIO", "OIDHW"}, optional
        Order of the kernel's axes. Default ``"HWIO"``.
    {layer_parameters}
    method : {"auto", "svd", "eigh", "gram", "power"}, optional
        Circular padding: how each frequency's largest singular value is
        found. ``"svd"``: singular values of every matrix. ``"eigh"``: the
        largest eigenvalue of each matrix's smaller Gram matrix, the same
        value to round-off and cheaper. ``"gram"``: Gram iteration (repeated
        squaring), a certified upper bound, stopped once it is within
        ``tol`` of a norm the layer attains, so ``norm <= value <= norm (1 +
        tol)`` (up to round-off). ``"power"``: power iteration on every
        frequency's matrix at once, without forming any Gram matrix, from a
        different pseudo-random start for each; an estimate from below (up
        to round-off), not certified. Each matrix runs until its estimate of
        ``sigma^2`` looks within ``tol`` of its limit (its last rise, and
        the rest of its climb extrapolated geometrically from its last
        rises, at most ``tol``), so the norm is typically within ``tol / 2``;
        or until a certified bound (Frobenius, ``sqrt(||A||_1
        ||A||_inf)``) shows it cannot beat the best estimate by more than
        ``tol``; or until ``iterations`` steps. The extrapolation can miss:
        a start with almost no component along a matrix's top singular
        vector may settle on a lower one.
        ``"auto"`` (default) is ``"gram"`` on a GPU and ``"eigh"`` elsewhere.
    tol : float, optional
        Zero padding: the Lanczos iteration's relative accuracy (see Notes).
        Circular padding with ``"gram"`` or ``"power"``: their stopping
        tolerance (relative; for ``"power"`` on each frequency's ``sigma^2``,
        see ``method``). Default ``1e-6`` in float64, ``1e-5`` in float32.
    iterations : int, optional
        The most Lanczos steps (zero padding), power steps, or Gram
        squarings (at most 30 are used). Default 640.
    {memory_parameters}
    xp : array namespace, optional
        Namespace to use; inferred from ``kernel`` when omitted.

    Returns
    -------
    array, shape ``()``
        The largest singular value, in the namespace, on the device and with
        the real dtype that :func:`singular_values` uses. NaN if the kernel
        has a non-finite entry. For zero padding it is approached from below:
        the value is the norm of the layer applied to a unit vector.

    Raises
    ------
    TypeError, ValueError
        As :func:`singular_values` (except the dense-size limit); also for an
        unknown ``method`` (with any padding), a ``tol`` outside ``[0, 1)``
        or ``iterations < 1``.

    See Also
    --------
    singular_values : The whole spectrum.
    operator_norm_bounds : Certified lower and upper bounds.

    Notes
    -----
    Zero padding: Golub-Kahan-Lanczos bidiagonalisation, one batched
    convolution and its adjoint per step (the framework's own convolution
    for PyTorch and JAX arrays, a sum of per-tap matrix products or FFT
    products elsewhere), each group of a grouped layer iterated side by
    side. Up to 160 vectors are kept (fewer if ``max_memory`` says so), the
    Ritz pair is formed when the bidiagonal says it has settled, and its
    residual ``r`` is then computed on the layer itself: the value is
    certified once ``r / sqrt(2) <= tol * value``, which puts a singular
    value within ``tol`` of it; otherwise the iteration restarts from that
    vector. The estimate never exceeds the norm. He-initialised 3x3 layers
    took 60 to 110 steps for the float32 default ``1e-5``.

    Circular padding: only half the frequencies are visited for a real
    kernel (see :func:`singular_values`). On the CPU ``"eigh"`` is the
    fastest exact route; ``"gram"`` costs a matrix product per squaring
    (8 to 20 squarings for ``1e-6``) and suits GPUs, where batched products
    are cheap and batched decompositions are not.

    Differentiable on PyTorch and JAX, so ``loss + lam * relu(norm - c)`` is a
    usable penalty. For a real kernel the top singular value is shared by the
    frequencies ``f`` and ``-f``; the gradient is the same from either. For
    zero padding the gradient is that of ``||A(kernel) v||`` for the final
    (fixed) vector ``v``, which is the norm's gradient once converged.

    Examples
    --------
    The norm of a 3x3 box filter is 9, three times the norm of the kernel
    reshaped into a ``9 x 1`` matrix:

    >>> import array_api_strict as xp
    >>> import convsv
    >>> convsv.operator_norm(xp.ones((3, 3, 1, 1)), 8)
    Array(9., dtype=array_api_strict.float64)

    A certified upper bound by Gram iteration, within ``tol`` of the norm:

    >>> convsv.operator_norm(xp.ones((3, 3, 1, 1)), 8, method="gram", tol=1e-9)
    Array(9., dtype=array_api_strict.float64)

    With zero padding the border taps see zeros, so the norm is smaller:

    >>> convsv.operator_norm(xp.ones((3, 3, 1, 1)), 8, padding="same")
    Array(8.29085937, dtype=array_api_strict.float64)
    """
    array, spec, xp = parse(
        kernel, input_shape, layout, xp, stride, dilation, groups, transposed, padding, output_padding
    )
    return norm(array, spec, xp, NormOptions(method, tol, iterations, chunk_size, max_memory))


@fill_layer_doc
def operator_norm_bounds(
    kernel: Array,
    input_shape: int | Sequence[int],
    *,
    layout: str = "HWIO",
    stride: int | Sequence[int] = 1,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    transposed: bool = False,
    padding: str | int | Sequence[Any] = "circular",
    output_padding: int | Sequence[int] = 0,
    method: str = "auto",
    tol: float | None = None,
    iterations: int = 640,
    chunk_size: int | None = None,
    max_memory: int | None = DEFAULT_MAX_MEMORY,
    xp: Namespace | None = None,
) -> tuple[Array, Array]:
    """Certified lower and upper bounds on a convolutional layer's operator norm.

    For circular padding both are the exact norm. For zero padding the lower
    bound is ``||A v||`` for the unit vector ``v`` the Lanczos iteration of
    :func:`operator_norm` ends with, and the upper bound is the exact norm of
    the circular convolution on the zero-padded map: the zero-padded layer
    is that layer with its input restricted to the map and its output to the
    valid positions (a compression), so its norm is no larger.

    Parameters
    ----------
    kernel : array
        The convolution kernel; see :func:`singular_values`.
    input_shape : int or sequence of int
        Spatial shape of the layer's input; see :func:`singular_values`.
    layout : {"HWIO", "OIHW", "WIO", "OIW", "DHWIO", "OIDHW"}, optional
        Order of the kernel's axes. Default ``"HWIO"``.
    {layer_parameters}
    method : {"auto", "svd", "eigh", "gram", "power"}, optional
        As in :func:`operator_norm`, for the upper bound (the circular
        layer's norm); with ``"power"`` it is an estimate, not a bound.
    tol : float, optional
        As in :func:`operator_norm`: how far the lower bound is iterated.
    iterations : int, optional
        As in :func:`operator_norm`.
    {memory_parameters}
    xp : array namespace, optional
        Namespace to use; inferred from ``kernel`` when omitted.

    Returns
    -------
    lower : array, shape ``()``
        A norm the layer attains on a unit vector, so ``lower <= ||layer||``.
        Never above ``upper`` in the returned dtype: where the two meet to
        within round-off (a layer equal to its circular twin), it is ``upper``.
    upper : array, shape ``()``
        ``||layer|| <= upper``, up to floating-point round-off.

    Raises
    ------
    TypeError, ValueError
        As :func:`operator_norm`.

    See Also
    --------
    operator_norm : The norm itself.

    Examples
    --------
    >>> import array_api_strict as xp
    >>> import convsv
    >>> lower, upper = convsv.operator_norm_bounds(xp.ones((3, 3, 1, 1)), 8, padding=1)
    >>> bool(lower <= upper), float(upper)
    (True, 9.0)
    """
    array, spec, xp = parse(
        kernel, input_shape, layout, xp, stride, dilation, groups, transposed, padding, output_padding
    )
    return norm_bounds(array, spec, xp, NormOptions(method, tol, iterations, chunk_size, max_memory))


@fill_layer_doc
def conv_matrix(
    kernel: Array,
    input_shape: int | Sequence[int],
    *,
    layout: str = "HWIO",
    stride: int | Sequence[int] = 1,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    transposed: bool = False,
    padding: str | int | Sequence[Any] = "circular",
    output_padding: int | Sequence[int] = 0,
    max_entries: int | None = MAX_DENSE_ENTRIES,
    xp: Namespace | None = None,
) -> Array:
    """The dense matrix of a convolutional layer.

    Row ``o * N_out + r`` and column ``i * N_in + q`` (positions flattened in
    C order) hold the weight with which input channel ``i`` at position ``q``
    enters output channel ``o`` at position ``r``. With the defaults the layer
    is ``y[o, r] = sum_i sum_p K[p, i, o] * x[i, (r + p) mod n]``; with
    options it is the layer PyTorch's ``conv{1,2,3}d`` (or
    ``conv_transpose{1,2,3}d`` with ``transposed=True``) computes with the same
    stride, dilation, groups and zero padding. So
    ``conv_matrix(K, n, ...) @ reshape(x, (-1,))`` equals that convolution of
    ``x`` (shape ``(c_in, *input_shape)``), flattened.

    It is the reference against which the fast routes are checked; its SVD
    costs ``O((c N)^3)``, so use it only on small layers.

    Parameters
    ----------
    kernel : array
        The convolution kernel; see :func:`singular_values`.
    input_shape : int or sequence of int
        Spatial shape of the layer's input; see :func:`singular_values`.
    layout : {"HWIO", "OIHW", "WIO", "OIW", "DHWIO", "OIDHW"}, optional
        Order of the kernel's axes. Default ``"HWIO"``.
    {layer_parameters}
    max_entries : int or None, optional
        Refuse to build a matrix with more entries than this (default
        ``2**28``, 2 GiB in float64) rather than exhaust memory; ``None``
        lifts the limit.
    xp : array namespace, optional
        Namespace to use; inferred from ``kernel`` when omitted.

    Returns
    -------
    array, shape ``(c_out * N_out, c_in * N_in)``
        ``N_in`` and ``N_out`` are the numbers of input and output positions.
        In the namespace and on the device of ``kernel``, in its working dtype
        (the kernel's dtype, except integers, which become the default float,
        and float16/bfloat16, which become float32). A transposed layer's
        matrix is the transpose (not the conjugate transpose) of the forward
        convolution's, as in the frameworks.

    Raises
    ------
    TypeError, ValueError
        As :func:`singular_values`; ``ValueError`` also when the matrix would
        have more than ``max_entries`` entries, or ``max_entries`` is negative.

    See Also
    --------
    singular_values : The same layer's spectrum without the dense matrix.

    Examples
    --------
    A 1-D two-tap difference filter on a map of 4: each row reads its own
    position and the next one, wrapping around at the end.

    >>> import array_api_strict as xp
    >>> import convsv
    >>> kernel = xp.reshape(xp.asarray([-1.0, 1.0]), (2, 1, 1))  # (width, in, out)
    >>> convsv.conv_matrix(kernel, 4, layout="WIO")
    Array([[-1.,  1.,  0.,  0.],
           [ 0., -1.,  1.,  0.],
           [ 0.,  0., -1.,  1.],
           [ 1.,  0.,  0., -1.]], dtype=array_api_strict.float64)

    With zero padding ("valid": none) and stride 2 the output is shorter:

    >>> convsv.conv_matrix(kernel, 5, layout="WIO", padding="valid", stride=2)
    Array([[-1.,  1.,  0.,  0.,  0.],
           [ 0.,  0., -1.,  1.,  0.]], dtype=array_api_strict.float64)
    """
    array, spec, xp = parse(
        kernel, input_shape, layout, xp, stride, dilation, groups, transposed, padding, output_padding
    )
    max_entries = optional_integer(max_entries, "max_entries", 0)
    entries = math.prod(spec.matrix_shape)
    if max_entries is not None and entries > max_entries:
        msg = (
            f"the dense matrix would have {entries} entries, more than `max_entries`={max_entries}; "
            "use singular_values/operator_norm for large layers, or raise max_entries"
        )
        raise ValueError(msg)
    return dense_matrix(array, spec, xp)
