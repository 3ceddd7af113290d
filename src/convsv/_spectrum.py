"""Kernel -> per-frequency channel matrices -> singular values.

The circular convolution ``y[o, r] = sum_{i, p} K[p, i, o] x[i, (r + p) mod n]``
acts on the DFT of its input frequency by frequency:
``y_hat[o, f] = sum_i T[f, i, o] x_hat[i, f]`` with
``T[f] = sum_p K[p] exp(+2 pi i <f, p / n>)``. The DFT is unitary, so the
layer's singular values are the union over ``f`` of those of the small
``c_in x c_out`` matrices ``T[f]`` (Sedghi, Gupta & Long, 2019, Theorem 6).
"""

from __future__ import annotations

from collections.abc import Sequence

from ._layout import ConvSpec, parse
from ._lib import Array, Namespace, complex_dtype, device_of, zero_d


def fold(kernel: Array, input_shape: Sequence[int], xp: Namespace) -> Array:
    """Wrap a spatial-first kernel onto the ``input_shape`` torus.

    Taps whose offsets agree modulo ``n`` act on the same input position and
    are summed; a kernel smaller than the map is zero-padded. (``fftn(s=n)``
    would crop a larger kernel instead, which is wrong.)
    """
    for axis, n in enumerate(input_shape):
        k = kernel.shape[axis]
        periods = -(-k // n)
        if periods * n != k:
            pad_shape = (*kernel.shape[:axis], periods * n - k, *kernel.shape[axis + 1 :])
            zeros = xp.zeros(pad_shape, dtype=kernel.dtype, device=device_of(kernel))
            kernel = xp.concat((kernel, zeros), axis=axis)
        if periods > 1:
            split = (*kernel.shape[:axis], periods, n, *kernel.shape[axis + 1 :])
            kernel = xp.sum(xp.reshape(kernel, split), axis=axis)
    return kernel


def transfer_matrices(kernel: Array, spec: ConvSpec, xp: Namespace) -> Array:
    """The ``(*input_shape, c_in, c_out)`` complex matrices ``T[f]`` of a spatial-first kernel."""
    folded = xp.astype(fold(kernel, spec.input_shape, xp), complex_dtype(xp, kernel.dtype))
    axes = tuple(range(spec.ndim))
    # norm="forward" leaves the inverse transform unscaled: exactly sum_p K[p] e^{+2 pi i f p / n}.
    return xp.fft.ifftn(folded, axes=axes, norm="forward")


def finite_or_zero(matrices: Array, xp: Namespace) -> tuple[Array, Array]:
    """``(finite, safe)``: which matrices are all-finite, and the batch with the others zeroed.

    LAPACK and cuSOLVER may raise or hang on non-finite input, so those
    matrices are zeroed before a decomposition and their results marked NaN
    afterwards: propagated rather than raised, which also works under ``jax.jit``.
    """
    finite = xp.all(xp.isfinite(matrices), axis=(-2, -1))
    return finite, xp.where(finite[..., None, None], matrices, xp.zeros_like(matrices))


def nan_where_not(finite: Array, values: Array, xp: Namespace) -> Array:
    """``values`` with NaN wherever ``finite`` (broadcast from the left) is false."""
    mask = xp.reshape(finite, (*finite.shape, *(1,) * (values.ndim - finite.ndim)))
    return xp.where(mask, values, xp.full_like(values, float("nan")))


def matrix_singular_values(matrices: Array, xp: Namespace) -> Array:
    """Batched singular values (descending), NaN for any matrix with a non-finite entry."""
    finite, safe = finite_or_zero(matrices, xp)
    return nan_where_not(finite, xp.linalg.svdvals(safe), xp)


def singular_values(
    kernel: Array,
    input_shape: int | Sequence[int],
    *,
    layout: str = "HWIO",
    xp: Namespace | None = None,
) -> Array:
    """Exact singular values of a convolutional layer with circular padding.

    The layer is the deep-learning convolution (cross-correlation) with
    wrap-around padding anchored at the top-left corner: for every spatial
    axis of size ``n``,
    ``y[o, r] = sum_i sum_p K[p, i, o] * x[i, (r + p) mod n]``. Its singular
    values are those of one small ``c_in x c_out`` matrix per spatial
    frequency (Sedghi, Gupta & Long, ICLR 2019, Theorem 6).

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
        Spatial shape of the input feature map, one entry per spatial axis of
        the kernel; a bare int means the same size on every axis.
    layout : {"HWIO", "OIHW", "WIO", "OIW", "DHWIO", "OIDHW"}, optional
        Order of the kernel's axes: ``"HWIO"`` is (spatial..., in, out), as in
        TensorFlow, Keras and JAX/Flax; ``"OIHW"`` is (out, in, spatial...), as
        in PyTorch. Default ``"HWIO"``.
    xp : array namespace, optional
        Namespace to use; inferred from ``kernel`` when omitted. When given,
        ``kernel`` is first converted with ``xp.asarray``.

    Returns
    -------
    array, shape ``(*input_shape, min(c_in, c_out))``
        ``s[f]`` holds the singular values, in descending order, of the layer
        restricted to spatial frequency ``f`` (the matrix
        ``sum_p K[p] exp(2 pi i <f, p / n>)``). Flattened, it is exactly the
        multiset of singular values of :func:`conv_matrix` (zeros included).
        Same namespace and device as ``kernel``; float32 for float32,
        complex64, float16 and bfloat16 kernels, float64 for float64 and
        complex128 ones.

    Raises
    ------
    TypeError
        If ``kernel`` is not an array, has a boolean dtype, or ``input_shape``
        does not hold integers.
    ValueError
        If ``layout`` is unknown, the kernel's rank does not match it, a size
        is not positive, or ``input_shape`` has the wrong length.

    See Also
    --------
    operator_norm : The largest singular value alone.
    conv_matrix : The dense matrix of the same layer.

    Notes
    -----
    Cost: one FFT of the kernel onto the feature-map grid and ``prod(input_shape)``
    SVDs of ``c_in x c_out`` matrices, against ``O((c N)^3)`` for the SVD of
    the dense ``c N x c N`` matrix (``N = prod(input_shape)``).

    Non-finite kernels: a NaN or infinite tap reaches every frequency, so every
    singular value is NaN. The NaN is propagated, not raised, so the function
    works under ``jax.jit`` and never forces a device synchronisation; check
    the result with ``isnan`` where that matters.

    The function is differentiable on PyTorch and JAX, and traceable under
    ``jax.jit`` (``input_shape`` and ``layout`` are static).

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

    Channels may differ and the map need not be square; PyTorch's layout:

    >>> kernel = xp.ones((8, 3, 5, 5))  # (out, in, height, width)
    >>> convsv.singular_values(kernel, (6, 10), layout="OIHW").shape
    (6, 10, 3)
    """
    k, spec, xp, _ = parse(kernel, input_shape, layout, xp)
    return matrix_singular_values(transfer_matrices(k, spec, xp), xp)


def operator_norm(
    kernel: Array,
    input_shape: int | Sequence[int],
    *,
    layout: str = "HWIO",
    xp: Namespace | None = None,
) -> Array:
    """Exact operator norm (largest singular value) of a circular convolution.

    This is the layer's true Lipschitz constant in the Euclidean norm, not the
    norm of the kernel reshaped into a matrix that ``spectral_norm`` wrappers
    estimate.

    Parameters
    ----------
    kernel : array
        The convolution kernel; see :func:`singular_values`.
    input_shape : int or sequence of int
        Spatial shape of the input feature map; see :func:`singular_values`.
    layout : {"HWIO", "OIHW", "WIO", "OIW", "DHWIO", "OIDHW"}, optional
        Order of the kernel's axes. Default ``"HWIO"``.
    xp : array namespace, optional
        Namespace to use; inferred from ``kernel`` when omitted.

    Returns
    -------
    array, shape ``()``
        The largest singular value, in the namespace, on the device and with
        the real dtype that :func:`singular_values` uses. NaN if the kernel
        has a non-finite entry.

    Raises
    ------
    TypeError, ValueError
        As :func:`singular_values`.

    See Also
    --------
    singular_values : The whole spectrum.

    Notes
    -----
    Differentiable on PyTorch and JAX, so ``loss + lam * relu(norm - c)`` is a
    usable penalty. For a real kernel the top singular value is shared by the
    frequencies ``f`` and ``-f``; the gradient is the same from either.

    Examples
    --------
    The norm of a 3x3 box filter is 9, three times the norm of the kernel
    reshaped into a ``9 x 1`` matrix:

    >>> import array_api_strict as xp
    >>> import convsv
    >>> convsv.operator_norm(xp.ones((3, 3, 1, 1)), 8)
    Array(9., dtype=array_api_strict.float64)
    """
    k, spec, xp, _ = parse(kernel, input_shape, layout, xp)
    return zero_d(xp.max(matrix_singular_values(transfer_matrices(k, spec, xp), xp)), xp)
