"""The layer as an explicit operator: the dense reference matrix."""

from __future__ import annotations

from collections.abc import Sequence

from ._layout import parse
from ._lib import Array, Namespace, device_of
from ._spectrum import fold

#: Default cap on the number of entries of :func:`conv_matrix` (2 GiB in float64).
MAX_DENSE_ENTRIES = 2**28


def conv_matrix(
    kernel: Array,
    input_shape: int | Sequence[int],
    *,
    layout: str = "HWIO",
    max_entries: int | None = MAX_DENSE_ENTRIES,
    xp: Namespace | None = None,
) -> Array:
    """The dense matrix of a convolutional layer with circular padding.

    Row ``o * N + r`` and column ``i * N + s`` (``N = prod(input_shape)``;
    ``r`` and ``s`` are positions flattened in C order) hold the weight with
    which input channel ``i`` at position ``s`` enters output channel ``o`` at
    position ``r``, for the layer
    ``y[o, r] = sum_i sum_p K[p, i, o] * x[i, (r + p) mod n]``. So
    ``conv_matrix(K, n) @ reshape(x, (-1,))`` equals the framework
    convolution of ``x`` (shape ``(c_in, *input_shape)``) circularly padded by
    ``k - 1`` at the end of each axis, flattened in C order.

    It is the reference against which the fast routes are checked; its SVD
    costs ``O((c N)^3)``, so use it only on small layers.

    Parameters
    ----------
    kernel : array
        The convolution kernel; see :func:`singular_values`.
    input_shape : int or sequence of int
        Spatial shape of the input feature map; see :func:`singular_values`.
    layout : {"HWIO", "OIHW", "WIO", "OIW", "DHWIO", "OIDHW"}, optional
        Order of the kernel's axes. Default ``"HWIO"``.
    max_entries : int or None, optional
        Refuse to build a matrix with more entries than this (default
        ``2**28``, 2 GiB in float64) rather than exhaust memory; ``None``
        lifts the limit.
    xp : array namespace, optional
        Namespace to use; inferred from ``kernel`` when omitted.

    Returns
    -------
    array, shape ``(c_out * N, c_in * N)``
        In the namespace and on the device of ``kernel``, in its working dtype
        (the kernel's dtype, except integers, which become the default float,
        and float16/bfloat16, which become float32).

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
    """
    k, spec, xp, _ = parse(kernel, input_shape, layout, xp)
    n_pos = spec.n_positions
    entries = spec.out_channels * spec.in_channels * n_pos * n_pos
    if max_entries is not None and entries > max_entries:
        msg = (
            f"the dense matrix would have {entries} entries, more than `max_entries`={max_entries}; "
            "use singular_values/operator_norm for large layers, or raise max_entries"
        )
        raise ValueError(msg)
    folded = xp.reshape(fold(k, spec.input_shape, xp), (n_pos, spec.in_channels, spec.out_channels))

    # Entry (r, s) reads the folded kernel at offset (s - r) mod n on every axis.
    position = xp.arange(n_pos, device=device_of(k))
    offset = xp.zeros((n_pos, n_pos), dtype=position.dtype, device=device_of(k))
    stride = n_pos
    for n in spec.input_shape:
        stride //= n
        coord = (position // stride) % n
        offset = offset + ((coord[None, :] - coord[:, None]) % n) * stride

    blocks = xp.take(folded, xp.reshape(offset, (-1,)), axis=0)
    blocks = xp.reshape(blocks, (n_pos, n_pos, spec.in_channels, spec.out_channels))
    # (r, s, i, o) -> (o, r, i, s)
    blocks = xp.permute_dims(blocks, (3, 0, 2, 1))
    return xp.reshape(blocks, (spec.out_channels * n_pos, spec.in_channels * n_pos))
