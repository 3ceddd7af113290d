"""Ground truth for the campaign, by routes that share nothing with convsv.

The layer's dense matrix is PyTorch's own convolution (``conv{1,2,3}d``, and
``conv_transpose{1,2,3}d`` for transposed layers with symmetric padding) in
float64 applied to every basis vector; circular padding is the input
extended periodically by indexing (``x[(j) mod n]`` for the
``(k - 1) * dilation`` positions past the end), which is the layer convsv
documents: ``y[o, r] = sum_p K[p] x[(r * stride + p * dilation) mod n]``.
A complex kernel's matrix is ``M(Re K) + i M(Im K)`` (the layer is linear in
the kernel). Where PyTorch is not installed, and as a check of the route
above, ``tests/_reference.general_dense`` writes the same matrix out tap by
tap in NumPy. Singular values are ``numpy.linalg.svd``'s.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import replace
from typing import Any

import numpy as np

from .configs import Config
from _reference import dense_clip, general_dense

HAVE_TORCH = importlib.util.find_spec("torch") is not None


def _torch_forward(weight: Any, conv_input, *, stride, dilation, groups, pads) -> Any:
    """The forward convolution's matrix from ``torch.nn.functional.conv{d}d``.

    ``weight`` is a float64 torch tensor, spatial-first ``(*k, in / groups, out)``.
    """
    import torch
    import torch.nn.functional as F

    d = len(conv_input)
    w = weight.permute(d + 1, d, *range(d))  # PyTorch's (out, in / groups, *k)
    c_in = w.shape[1] * groups
    size = c_in * math.prod(conv_input)
    x = torch.eye(size, dtype=torch.float64).reshape(size, c_in, *conv_input)
    if pads is None:
        for axis, (n, k, dl) in enumerate(zip(conv_input, w.shape[2:], dilation, strict=True)):
            wrap = torch.arange(n + (k - 1) * dl) % n  # as many wraps as the kernel needs
            x = x.index_select(2 + axis, wrap)
    else:
        x = F.pad(x, [p for pair in reversed(pads) for p in pair])
    conv = (F.conv1d, F.conv2d, F.conv3d)[d - 1]
    y = conv(x, w, stride=stride, dilation=dilation, groups=groups)
    return y.reshape(size, -1).T


def _torch_transposed(weight: Any, config: Config) -> Any:
    """A transposed layer's matrix from ``torch.nn.functional.conv_transpose{d}d`` (symmetric pads)."""
    import torch
    import torch.nn.functional as F

    d = config.ndim
    w = weight.permute(d + 1, d, *range(d))  # ConvTranspose's (in, out / groups, *k)
    c_in = w.shape[0]
    size = c_in * math.prod(config.input_shape)
    x = torch.eye(size, dtype=torch.float64).reshape(size, c_in, *config.input_shape)
    conv = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[d - 1]
    y = conv(
        x,
        w,
        stride=config.stride,
        padding=tuple(a for a, _ in config.pads),
        output_padding=config.output_padding,
        dilation=config.dilation,
        groups=config.groups,
    )
    return y.reshape(size, -1).T


def torch_matrix(weight: Any, config: Config) -> Any:
    """The layer's matrix as a torch tensor (differentiable in ``weight``, real float64)."""
    # conv_transpose pads symmetrically; a transposed "same" layer's output (input * stride) needs
    # an output padding of its own, so it is the forward matrix transposed, as asymmetric pads are.
    symmetric = config.pads is not None and all(a == b for a, b in config.pads)
    if config.transposed and symmetric and config.padding != "same":
        return _torch_transposed(weight, config)
    forward = _torch_forward(
        weight,
        config.conv_input,
        stride=config.stride,
        dilation=config.dilation,
        groups=config.groups,
        pads=config.pads,
    )
    return forward.T if config.transposed else forward


def _torch_dense(kernel: np.ndarray, config: Config) -> np.ndarray:
    import torch

    def real(part: np.ndarray) -> np.ndarray:
        return torch_matrix(torch.from_numpy(np.ascontiguousarray(part)), config).numpy()

    if np.iscomplexobj(kernel):
        return real(kernel.real) + 1j * real(kernel.imag)
    return real(kernel)


def numpy_dense(kernel: np.ndarray, config: Config) -> np.ndarray:
    """The same matrix from the written-out NumPy reference (``tests/_reference.py``)."""
    forward = general_dense(
        kernel,
        config.conv_input,
        stride=config.stride,
        dilation=config.dilation,
        groups=config.groups,
        pads=config.pads,
    )
    return forward.T if config.transposed else forward


def dense(kernel: np.ndarray, config: Config) -> np.ndarray:
    """The layer's matrix for a spatial-first float64/complex128 ``kernel`` (PyTorch if installed)."""
    return _torch_dense(kernel, config) if HAVE_TORCH else numpy_dense(kernel, config)


def full_size_dense(kernel: np.ndarray, config: Config) -> np.ndarray:
    """The circular layer of a full-size kernel (dilation 1) on the config's map: what
    ``clip_singular_values`` returns."""
    assert kernel.shape[: config.ndim] == config.conv_input, (kernel.shape, config.conv_input)
    full = replace(config, kernel_shape=kernel.shape, dilation=(1,) * config.ndim, pads=None)
    return dense(kernel, full)


def padded_grid_dense(kernel: np.ndarray, config: Config) -> np.ndarray:
    """The circular layer on the zero-padded map rounded up to a multiple of the stride.

    convsv documents this layer's norm as the upper bound of the zero-padded layer's
    (``operator_norm_bounds``); the compression argument is checked here as well.
    """
    sizes = zip(config.conv_input, config.pads, config.stride, strict=True)
    grid = tuple(-(-(n + a + b) // s) * s for n, (a, b), s in sizes)
    circular = replace(config, conv_input=grid, pads=None, transposed=False)
    return dense(kernel, circular)


def singular_values(matrix: np.ndarray) -> np.ndarray:
    """All singular values, descending (an empty matrix has none)."""
    return np.linalg.svd(matrix, compute_uv=False)


__all__ = ["dense", "dense_clip", "numpy_dense", "singular_values", "torch_matrix"]
