"""The layer as an operator: its dense matrix, and its norm by matrix-free iteration.

Zero padding breaks the circulant structure, so its norm is found from the
layer's action alone: the map is embedded in the padded grid, convolved
circularly there by FFT (with no wrap-around, the grid is large enough), then
strided and cropped; its adjoint does the reverse. Golub-Kahan-Lanczos
bidiagonalisation on that pair converges to the largest singular value from
below.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ._docs import fill_layer_doc
from ._layout import ConvSpec, parse
from ._lib import (
    Array,
    Namespace,
    complex_dtype,
    device_of,
    full_precision,
    interleave_zeros,
    pad_axis,
    repeat,
    start_vector,
    stop_gradient,
    while_loop,
)
from ._spectrum import dilate, fold, grouped, transfer_matrices

#: Default cap on the number of entries of :func:`conv_matrix` (2 GiB in float64).
MAX_DENSE_ENTRIES = 2**28


def _positions(shape: Sequence[int], xp: Namespace, device: Any) -> list[Array]:
    """Per-axis coordinates of every position of ``shape``, flattened in C order."""
    flat = xp.arange(math.prod(shape), device=device)
    coords, stride = [], math.prod(shape)
    for n in shape:
        stride //= n
        coords.append((flat // stride) % n)
    return coords


def ungrouped_kernel(kernel: Array, spec: ConvSpec, xp: Namespace) -> Array:
    """``(*k, in/G, out)`` -> ``(*k, in, out)`` with zeros between groups (block diagonal)."""
    if spec.groups == 1:
        return kernel
    d = spec.ndim
    blocks = grouped(kernel, spec, xp)  # (*k, G, i, o)
    eye = xp.eye(spec.groups, dtype=kernel.dtype, device=device_of(kernel))
    full = blocks[..., None, :] * eye[:, None, :, None]  # (*k, G_in, i, G_out, o)
    return xp.reshape(full, (*kernel.shape[:d], spec.in_channels, spec.out_channels))


def forward_matrix(kernel: Array, spec: ConvSpec, xp: Namespace) -> Array:
    """The forward convolution's dense matrix, ``(out * N_out, in * N_in)``."""
    device = device_of(kernel)
    full = fold(dilate(ungrouped_kernel(kernel, spec, xp), spec.dilation, xp), spec.grid, xp)
    full = xp.reshape(full, (math.prod(spec.grid), spec.in_channels, spec.out_channels))
    before = (0,) * spec.ndim if spec.pads is None else tuple(a for a, _ in spec.pads)
    # Output r reads grid position r * stride + p; input q sits at q + before.
    # With zero padding the grid is large enough that no read wraps onto the map.
    rows, cols = _positions(spec.conv_output, xp, device), _positions(spec.conv_input, xp, device)
    offset = xp.zeros((rows[0].shape[0], cols[0].shape[0]), dtype=rows[0].dtype, device=device)
    grid_stride = math.prod(spec.grid)
    for r, q, s, b, n in zip(rows, cols, spec.stride, before, spec.grid, strict=True):
        grid_stride //= n
        offset = offset + ((q[None, :] + b - r[:, None] * s) % n) * grid_stride
    taps = xp.take(full, xp.reshape(offset, (-1,)), axis=0)
    taps = xp.reshape(taps, (*offset.shape, spec.in_channels, spec.out_channels))
    # (r, q, i, o) -> (o, r, i, q)
    taps = xp.permute_dims(taps, (3, 0, 2, 1))
    return xp.reshape(taps, (spec.out_channels * offset.shape[0], spec.in_channels * offset.shape[1]))


@full_precision
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
        have more than ``max_entries`` entries.

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
    k, spec, xp, _ = parse(
        kernel,
        input_shape,
        layout,
        xp,
        stride=stride,
        dilation=dilation,
        groups=groups,
        transposed=transposed,
        padding=padding,
        output_padding=output_padding,
    )
    entries = spec.out_channels * math.prod(spec.conv_output) * spec.in_channels * math.prod(spec.conv_input)
    if max_entries is not None and entries > max_entries:
        msg = (
            f"the dense matrix would have {entries} entries, more than `max_entries`={max_entries}; "
            "use singular_values/operator_norm for large layers, or raise max_entries"
        )
        raise ValueError(msg)
    matrix = forward_matrix(k, spec, xp)
    return xp.matrix_transpose(matrix) if spec.transposed else matrix


# --- matrix-free application, for zero padding -------------------------------


class PaddedLayer:
    """The zero-padded forward convolution and its adjoint, applied by FFT on ``spec.grid``.

    Maps are channels-last, ``(*conv_input, in)`` to ``(*conv_output, out)``.
    """

    def __init__(self, kernel: Array, spec: ConvSpec, xp: Namespace) -> None:
        self.spec, self.xp = spec, xp
        self.real = not xp.isdtype(kernel.dtype, "complex floating")
        self.dtype = kernel.dtype
        self.matrices = transfer_matrices(kernel, spec, xp)  # (*grid, G, i, o)
        self.adjoint_matrices = xp.conj(xp.matrix_transpose(self.matrices))
        self.axes = tuple(range(spec.ndim))

    def _convolve(self, x: Array, matrices: Array, channels_in: int, channels_out: int) -> Array:
        xp, spec = self.xp, self.spec
        spectrum = xp.fft.fftn(xp.astype(x, complex_dtype(xp, x.dtype)), axes=self.axes)
        spectrum = xp.reshape(spectrum, (*spec.grid, spec.groups, 1, channels_in // spec.groups))
        out = xp.reshape(spectrum @ matrices, (*spec.grid, channels_out))
        out = xp.fft.ifftn(out, axes=self.axes)
        return xp.real(out) if self.real else out

    def apply(self, x: Array) -> Array:
        """``(*conv_input, in)`` -> ``(*conv_output, out)``."""
        xp, spec = self.xp, self.spec
        assert spec.pads is not None
        for axis, ((before, _), n, g) in enumerate(zip(spec.pads, spec.conv_input, spec.grid, strict=True)):
            x = pad_axis(x, axis, before, g - n - before, xp)
        z = self._convolve(x, self.matrices, spec.in_channels, spec.out_channels)
        keep = (*(slice(0, m * s, s) for m, s in zip(spec.conv_output, spec.stride, strict=True)), ...)
        return z[keep]

    def adjoint(self, y: Array) -> Array:
        """``(*conv_output, out)`` -> ``(*conv_input, in)``."""
        xp, spec = self.xp, self.spec
        assert spec.pads is not None
        for axis, (m, s, g) in enumerate(zip(spec.conv_output, spec.stride, spec.grid, strict=True)):
            # each output back at its grid position, zeros between
            y = interleave_zeros(pad_axis(y, axis, 0, g // s - m, xp), axis, s, xp)
        x = self._convolve(y, self.adjoint_matrices, spec.out_channels, spec.in_channels)
        keep = (*(slice(b, b + n) for (b, _), n in zip(spec.pads, spec.conv_input, strict=True)), ...)
        return x[keep]


def _orthogonalize(w: Array, basis: Array, xp: Namespace) -> Array:
    """``w`` minus its projection on the rows of ``basis`` (twice: enough in floating point)."""
    for _ in range(2):
        w = w - (xp.conj(basis) @ w) @ basis
    return w


def lanczos_norm(layer: PaddedLayer, *, tol: float, cycle: int, cycles: int) -> tuple[Array, Array, Array]:
    """Largest singular value of ``layer`` by Golub-Kahan-Lanczos with explicit restarts.

    Each cycle runs ``cycle`` steps of bidiagonalisation with full
    reorthogonalisation from the previous cycle's top right Ritz vector, and
    stops once the Ritz triplet's residual is at most ``tol`` times the Ritz
    value: then a singular value lies within that distance. (A Ritz value that
    merely stopped moving can sit between two close singular values, 5e-5
    away from both.) Returns ``(ritz value, ritz vector, cycles run)``; the
    Ritz value never exceeds the true norm.
    """
    xp, spec = layer.xp, layer.spec
    n_in = math.prod(spec.conv_input) * spec.in_channels
    n_out = math.prod(spec.conv_output) * spec.out_channels
    # One more step than the rank can need: after a breakdown the extra steps add zeros.
    k = max(2, min(cycle, n_in + 1, n_out + 1))
    dtype = layer.dtype
    device = device_of(layer.matrices)

    def forward(v: Array) -> Array:
        return xp.reshape(layer.apply(xp.reshape(v, (*spec.conv_input, spec.in_channels))), (-1,))

    def backward(u: Array) -> Array:
        return xp.reshape(layer.adjoint(xp.reshape(u, (*spec.conv_output, spec.out_channels))), (-1,))

    rows = xp.arange(k, device=device)
    breakdown = 64 * xp.finfo(dtype).eps

    def bidiagonalize(v0: Array) -> tuple[Array, Array, Array, Array]:
        """``k`` steps from unit ``v0``: right basis ``(k, n_in)``, bidiagonal entries, next beta.

        The next beta, the norm of the right vector that would come next, scales the residual.
        """
        u = forward(v0)
        alpha0 = xp.linalg.vector_norm(u)
        # alpha0 = 0 for a layer that reads only zeros: keep u = 0 rather than NaN.
        u = u / xp.where(alpha0 > 0, alpha0, xp.ones_like(alpha0))
        basis_v = xp.where(rows[:, None] == 0, v0[None, :], xp.zeros((k, n_in), dtype=dtype, device=device))
        basis_u = xp.where(rows[:, None] == 0, u[None, :], xp.zeros((k, n_out), dtype=dtype, device=device))
        alphas = xp.where(rows == 0, alpha0, xp.zeros(k, dtype=alpha0.dtype, device=device))
        betas = xp.zeros(k, dtype=alpha0.dtype, device=device)

        def step(state: tuple[Array, ...]) -> tuple[Array, ...]:
            j, v, u, basis_v, basis_u, alphas, betas = state
            alpha = xp.sum(xp.where(rows == j, alphas, 0 * alphas))
            # Below round-off of the largest entry so far the direction is noise (a breakdown on a
            # rank-deficient layer): make it exactly zero, or normalising it overflows in float32.
            floor = breakdown * xp.max(alphas)
            w = _orthogonalize(backward(u) - xp.astype(alpha, dtype) * v, basis_v, xp)
            beta = xp.linalg.vector_norm(w)
            beta = xp.where(beta > floor, beta, 0 * beta)
            v = w / xp.where(beta > 0, beta, xp.ones_like(beta)) * xp.astype(beta > 0, dtype)
            u = _orthogonalize(forward(v) - xp.astype(beta, dtype) * u, basis_u, xp)
            alpha = xp.linalg.vector_norm(u)
            alpha = xp.where(alpha > floor, alpha, 0 * alpha)
            u = u / xp.where(alpha > 0, alpha, xp.ones_like(alpha)) * xp.astype(alpha > 0, dtype)
            nxt = rows == j + 1
            basis_v = xp.where(nxt[:, None], v[None, :], basis_v)
            basis_u = xp.where(nxt[:, None], u[None, :], basis_u)
            alphas = xp.where(nxt, alpha, alphas)
            betas = xp.where(rows == j, beta, betas)
            return j + 1, v, u, basis_v, basis_u, alphas, betas

        start = (xp.asarray(0, device=device), v0, u, basis_v, basis_u, alphas, betas)
        _, v, u, basis_v, _, alphas, betas = repeat(step, start, k - 1)
        # A^T U_k = V_k B^T + beta_k v_{k+1} e_k^T: beta_k is the norm of the next direction.
        alpha = alphas[k - 1]
        beta = xp.linalg.vector_norm(_orthogonalize(backward(u) - xp.astype(alpha, dtype) * v, basis_v, xp))
        return basis_v, alphas, betas, beta

    def ritz(basis_v: Array, alphas: Array, betas: Array) -> tuple[Array, Array, Array]:
        """Top singular value, right singular vector and last left-vector entry of the bidiagonal."""
        upper = xp.where(rows < k - 1, betas, 0 * betas)
        zeros = xp.zeros((k, k), dtype=alphas.dtype, device=device)
        on_upper = xp.where(rows[None, :] == rows[:, None] + 1, upper[:, None], zeros)
        bidiagonal = xp.where(rows[:, None] == rows[None, :], alphas[:, None], on_upper)
        u, s, vh = xp.linalg.svd(bidiagonal)
        q = xp.astype(xp.conj(vh[0, :]), dtype)
        return s[0], q @ basis_v, u[k - 1, 0]

    def cycle_step(state: tuple[Array, Array, Array, Array]) -> tuple[Array, Array, Array, Array]:
        v, _, count, _ = state
        basis_v, alphas, betas, beta = bidiagonalize(v)
        value, vector, last = ritz(basis_v, alphas, betas)
        # ||A^T u - value v|| = beta_k |p_k|, and A v = value u exactly: a singular value lies this close.
        settled = beta * xp.abs(last) <= tol * value
        vector = vector / xp.linalg.vector_norm(vector)
        return vector, value, count + 1, settled

    def more(state: tuple[Array, Array, Array, Array]) -> Array:
        _, _, count, settled = state
        return (count < cycles) & ~settled

    v0 = start_vector(n_in, dtype, xp, device)
    start = (
        v0,
        0 * xp.linalg.vector_norm(v0),
        xp.asarray(0, device=device),
        xp.asarray(False, device=device),
    )
    vector, value, count, _ = while_loop(more, cycle_step, start)
    return value, vector, count


def padded_norm(
    kernel: Array, spec: ConvSpec, xp: Namespace, *, tol: float, cycle: int, cycles: int
) -> Array:
    """Operator norm of a zero-padded layer, differentiable in ``kernel``.

    The Ritz vector ``v`` comes from the iteration on a detached kernel; the
    returned value ``||A(kernel) v||`` equals the Ritz value, is a lower bound
    of the norm, and its gradient is the norm's (the envelope theorem).
    """
    # A non-finite tap would reach the iteration's small SVD, which raises on NaN: iterate on a zero
    # kernel instead and return NaN, as the circular route does (no host round trip, jit-safe).
    finite = xp.all(xp.isfinite(kernel))
    kernel = xp.where(finite, kernel, xp.zeros_like(kernel))
    _, vector, _ = lanczos_norm(
        PaddedLayer(stop_gradient(kernel), spec, xp), tol=tol, cycle=cycle, cycles=cycles
    )
    vector = stop_gradient(vector)
    layer = PaddedLayer(kernel, spec, xp)
    image = layer.apply(xp.reshape(vector, (*spec.conv_input, spec.in_channels)))
    norm = xp.linalg.vector_norm(xp.reshape(image, (-1,)))
    return xp.where(finite, norm, xp.full_like(norm, float("nan")))
