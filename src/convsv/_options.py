"""The options of the public functions, validated once into frozen objects.

A public function turns its keyword arguments into one of these objects (and
its layer arguments into a :class:`~convsv._layout.ConvSpec`); the
implementations below take them as they are, and so do the training adapters
and the command line, which validate their users' options here too. Each
object checks its fields when it is made, so one that exists is valid; it is
frozen and hashable, so ``jax.jit`` compiles it in as a static argument.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ._checks import choice, integer, optional_integer, optional_real, real
from ._layout import ConvSpec
from ._lib import Namespace

#: Default bound on the memory the per-frequency blocks take at once (bytes).
DEFAULT_MAX_MEMORY = 2**30

#: Ways to compute the circular layer's norm (see :func:`convsv.operator_norm`).
NORM_METHODS = ("auto", "svd", "eigh", "gram", "power")

#: Projection methods (see :func:`convsv.clip_operator_norm`).
CLIP_METHODS = ("alternating", "extrapolated", "dykstra")

#: The projection options the training adapters take (the layer's own come from the layer).
CLIP_OPTIONS = ("method", "iterations", "tol", "min_norm", "bound")

#: What a zero-padded layer's projection holds at ``max_norm`` (see :func:`convsv.clip_operator_norm`).
BOUNDS = ("tight", "circular")


def settle(options: Any, **values: Any) -> None:
    """Store checked values on a frozen dataclass (what its ``__post_init__`` may do)."""
    for name, value in values.items():
        object.__setattr__(options, name, value)


def _memory(options: Any) -> None:
    settle(
        options,
        chunk_size=optional_integer(options.chunk_size, "chunk_size"),
        max_memory=optional_integer(options.max_memory, "max_memory"),
    )


@dataclass(frozen=True)
class NormOptions:
    """How norms and top singular values are computed: the options of :func:`convsv.operator_norm`.

    ``method`` is checked whatever the padding (unused with zero padding, a
    typo is still an error); ``tol`` ``None`` means the dtype's default
    (:meth:`tolerance`).
    """

    method: str = "auto"
    tol: float | None = None
    iterations: int = 640
    chunk_size: int | None = None
    max_memory: int | None = DEFAULT_MAX_MEMORY

    def __post_init__(self) -> None:
        settle(
            self,
            method=choice(self.method, "method", NORM_METHODS),
            tol=optional_real(self.tol, "tol", "a number in [0, 1)", at_least=0.0, below=1.0),
            iterations=integer(self.iterations, "iterations"),
        )
        _memory(self)

    def tolerance(self, dtype: Any, xp: Namespace) -> float:
        """``tol``, or by default ``1e-6`` for double precision and ``1e-5`` otherwise."""
        if self.tol is not None:
            return self.tol
        return 1e-6 if dtype in (xp.float64, xp.complex128) else 1e-5


@dataclass(frozen=True)
class ClipOptions:
    """The options of :func:`convsv.clip_operator_norm`, bounds included."""

    max_norm: float
    min_norm: float | None = None
    method: str = "alternating"
    iterations: int = 1
    tol: float | None = None
    bound: str = "tight"
    chunk_size: int | None = None
    max_memory: int | None = DEFAULT_MAX_MEMORY

    def __post_init__(self) -> None:
        upper = bound_value(self.max_norm, "max_norm")
        lower = None if self.min_norm is None else bound_value(self.min_norm, "min_norm")
        if lower is not None and lower > upper:
            msg = f"`min_norm` ({lower}) must not exceed `max_norm` ({upper})"
            raise ValueError(msg)
        settle(
            self,
            max_norm=upper,
            min_norm=lower,
            method=choice(self.method, "method", CLIP_METHODS),
            iterations=integer(self.iterations, "iterations"),
            tol=optional_real(self.tol, "tol", "None or a finite non-negative number", at_least=0.0),
            bound=choice(self.bound, "bound", BOUNDS),
        )
        if self.method == "extrapolated" and self.min_norm is not None:
            msg = (
                "method='extrapolated' relies on the convexity of the operator-norm ball, "
                "which `min_norm` breaks; use method='alternating' with `min_norm`"
            )
            raise ValueError(msg)
        _memory(self)

    @classmethod
    def for_adapter(cls, max_norm: object, options: Mapping[str, Any]) -> ClipOptions:
        """A training adapter's options: ``max_norm`` positive, ``options`` the projection's own.

        The adapters take ``method``, ``iterations``, ``tol``, ``min_norm``
        and ``bound`` (``TypeError`` for others) and refuse a zero
        ``max_norm``, which would erase every layer.
        """
        unknown = sorted(set(options) - set(CLIP_OPTIONS))
        if unknown:
            msg = f"unknown projection option(s) {unknown}: expected some of {list(CLIP_OPTIONS)}"
            raise TypeError(msg)
        return cls(positive_bound(max_norm), **options)

    def check_layer(self, spec: ConvSpec) -> None:
        """Raise what this projection cannot do on the layer ``spec``."""
        if any(w > n for w, n in zip(spec.dilated_size, spec.grid, strict=True)):
            msg = (
                f"the kernel's dilated size {spec.dilated_size} exceeds the feature map {spec.grid}: "
                "it has no taps of its own to crop back to; use clip_singular_values for the full-size kernel"
            )
            raise ValueError(msg)
        self.check_padding(spec.circular)

    def check_padding(self, circular: bool) -> None:
        """``min_norm`` needs the circular projection where the layer pads with zeros."""
        if self.min_norm is not None and self.bound == "tight" and not circular:
            msg = (
                "`min_norm` with zero padding needs bound='circular' (it clips the circular layer on "
                "the padded map); the tight projection holds the zero-padded layer's largest value only"
            )
            raise ValueError(msg)


def bound_value(value: object, name: str) -> float:
    """A finite non-negative bound (``max_norm``, ``min_norm``) as a Python float."""
    return real(value, name, "a finite non-negative number", at_least=0.0)


def positive_bound(value: object, name: str = "max_norm") -> float:
    """A finite, strictly positive bound: what the training adapters accept (zero would erase a layer)."""
    return real(value, name, "a finite positive number", above=0.0)
