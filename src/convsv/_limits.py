"""Size limits, checked before anything is allocated: one place, one wording.

Two kinds of limit:

- the grid a layer is computed on (the circular map, or the zero-padded map
  rounded up to a multiple of the stride) has at most :data:`MAX_GRID`
  positions, whatever the options: checked by :func:`check_grid` when the
  spec is built, so every public function refuses an absurd stride, padding
  or map up front;
- what no chunking can shrink -- a result, the smallest chunk of frequency
  matrices, the fewest Lanczos vectors with the padded maps they are applied
  on -- is refused above ``max(max_memory, UNCHUNKED_BYTES)`` bytes
  (:func:`check_memory`). ``max_memory`` below that only makes the chunks
  smaller (``max_memory=1`` still runs a small layer); a larger one raises the
  limit, and ``None`` lifts it.

A dilation alone never needs memory: the taps are folded onto the grid where
they land (``_spectrum.fold``), without forming the dilated kernel.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._layout import ConvSpec

#: Most positions of the grid a layer is computed on (2**31): a fixed limit, no option raises it.
MAX_GRID = 2**31

#: What no chunking can shrink is refused above ``max(max_memory, UNCHUNKED_BYTES)`` bytes (16 GiB).
UNCHUNKED_BYTES = 2**34


def _largest_option(spec: ConvSpec) -> tuple[str, object]:
    """The option whose size along some axis is the largest: the one that made the grid large."""
    sizes: list[tuple[int, str, object]] = [
        (max(spec.layer_input), "input_shape", spec.layer_input),
        (max(spec.stride), "stride", spec.stride),
    ]
    if spec.pads is not None:  # the dilated kernel sets the zero-padded map ("same", transposed)
        sizes.append((max(a + b for a, b in spec.pads), "padding", spec.pads))
        if max(spec.dilation) > 1:
            sizes.append((max(spec.dilated_size), "dilation", spec.dilation))
        else:
            sizes.append((max(spec.kernel_size), "kernel", spec.kernel_size))
    _, name, value = max(sizes, key=lambda entry: entry[0])
    return name, value


def _grid_name(spec: ConvSpec) -> str:
    return "feature map" if spec.circular else "zero-padded map (rounded up to a multiple of the stride)"


def check_grid(spec: ConvSpec) -> None:
    """Refuse a layer whose grid has more than :data:`MAX_GRID` positions."""
    positions = math.prod(spec.grid)
    if positions > MAX_GRID:
        name, value = _largest_option(spec)
        msg = (
            f"`{name}`={value} makes the {_grid_name(spec)} {spec.grid}, {positions} positions: more "
            f"than the {MAX_GRID} (2**31) that convsv computes on. This limit cannot be raised."
        )
        raise ValueError(msg)


def memory_limit(max_memory: int | None) -> int | None:
    """The bytes that something no chunking can shrink may take: ``max(max_memory, UNCHUNKED_BYTES)``."""
    return None if max_memory is None else max(max_memory, UNCHUNKED_BYTES)


def check_memory(needed: int, max_memory: int | None, what: str, spec: ConvSpec) -> None:
    """Refuse ``what`` if its ``needed`` bytes exceed :func:`memory_limit`, naming the largest option."""
    limit = memory_limit(max_memory)
    if limit is None or needed <= limit:
        return
    name, value = _largest_option(spec)
    msg = (
        f"{what} would take about {needed / 2**30:.3g} GiB ({spec.in_channels} -> {spec.out_channels} "
        f"channels on the {_grid_name(spec)} {spec.grid}; largest option `{name}`={value}), more than "
        f"the limit of {limit} bytes, max(`max_memory`, 2**34). Pass a larger `max_memory` "
        "(None: no limit) or a smaller layer."
    )
    raise ValueError(msg)
