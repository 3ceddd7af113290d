"""The pieces of ``convsv analyze``, for scripts that report on models of their own.

``convsv analyze`` reads a model file, computes each convolution's exact
singular values and reports their statistics and the paper's figures. A
script that builds or loads its model itself (say, a torchvision ResNet from
a state dict) can do the same with these:

- :func:`summarize`: the statistics the command reports for one layer's
  singular values;
- :func:`plot_spectra`: the paper's Figures 5-7 for several layers;
- :func:`array_converter`: the array library (one of ``BACKENDS``) and
  device the command's ``--backend`` and ``--device`` choose, as a function
  that moves a NumPy array there;
- :func:`checkpoint_contents`: the module or state dict inside a PyTorch
  checkpoint's usual wrappers (``{"state_dict": ...}`` and the like).

``experiments/resnet_spectra.py`` in convsv's repository uses all four.
NumPy is needed, and matplotlib for the figures; nothing else is imported.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import _devices
from ._analysis import summarize
from ._devices import converter
from ._models import ModelError, checkpoint_contents
from ._output import plot_spectra

__all__ = ["BACKENDS", "array_converter", "checkpoint_contents", "plot_spectra", "summarize"]

#: The array libraries :func:`array_converter` can compute with.
BACKENDS = _devices.BACKENDS


def array_converter(backend: str | None = None, device: str = "cpu") -> tuple[str, Callable[[Any], Any]]:
    """The array library to compute with, and a function that moves a NumPy array onto the device there.

    Parameters
    ----------
    backend : {"numpy", "torch", "jax", "cupy"}, optional
        The array library. Default: NumPy on the CPU; on a GPU the first
        installed of PyTorch, CuPy and JAX.
    device : str, optional
        ``"cpu"`` (default), ``"cuda"``, ``"cuda:N"``, ``"gpu"`` or ``"gpu:N"``.

    Returns
    -------
    backend : str
        The library chosen.
    convert : callable
        NumPy array in, an array of that library on ``device`` out (the
        same array for NumPy).

    Raises
    ------
    ValueError
        If the library is not installed, the device is malformed or absent,
        or the library cannot compute there (NumPy on a GPU, CuPy on the CPU).

    Examples
    --------
    >>> import numpy as np
    >>> from convsv.analysis import array_converter
    >>> backend, convert = array_converter()
    >>> backend, type(convert(np.ones(3))).__name__
    ('numpy', 'ndarray')
    """
    try:
        return converter(backend, device)
    except ModelError as err:
        raise ValueError(str(err)) from None
