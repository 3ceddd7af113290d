"""The networks the benchmarks use: a CIFAR ResNet-32 in plain PyTorch, and ResNet-50's conv shapes.

Nothing here imports torch at module level, so the ResNet-50 table can be read by a
process that loads only NumPy.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import NamedTuple


class ConvShape(NamedTuple):
    """One convolution: kernel size, channels, stride, and the spatial size of its input."""

    name: str
    kernel: int
    c_in: int
    c_out: int
    stride: int
    input_size: int


def resnet50_convs() -> list[ConvShape]:
    """The 53 convolutions of a torchvision-style ResNet-50 (v1.5) on a 224x224 input.

    A stem 7x7/2 convolution (then a 3x3/2 max-pool: 112 -> 56), and four stages of
    bottleneck blocks (1x1 reduce, 3x3, 1x1 expand; expansion 4). As in torchvision,
    a stage's stride 2 sits in the 3x3 convolution of its first block and in that
    block's 1x1 downsample shortcut.
    """
    convs = [ConvShape("conv1", 7, 3, 64, 2, 224)]
    c_in, size = 64, 56
    for stage, (width, blocks, stride) in enumerate([(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)], 1):
        c_out = 4 * width
        for block in range(blocks):
            s = stride if block == 0 else 1
            prefix = f"layer{stage}.{block}"
            convs.append(ConvShape(f"{prefix}.conv1", 1, c_in, width, 1, size))
            convs.append(ConvShape(f"{prefix}.conv2", 3, width, width, s, size))
            convs.append(ConvShape(f"{prefix}.conv3", 1, width, c_out, 1, size // s))
            if block == 0:
                convs.append(ConvShape(f"{prefix}.downsample", 1, c_in, c_out, s, size))
            c_in, size = c_out, size // s
    return convs


def cifar_resnet(depth: int, num_classes: int = 10):
    """CIFAR ResNet of ``depth`` layers (``depth - 1`` convolutions), as :func:`resnet32` describes."""
    return _clipping().cifar_resnet(depth, num_classes=num_classes)


def resnet32(num_classes: int = 10):
    """CIFAR ResNet-32 (He et al. 2016, section 4.2): 31 convolutions, batch norm, 0.46 M parameters.

    The one definition lives in ``experiments/clipping.py`` (``cifar_resnet``), which the
    paper's clipping experiments train: a 3x3 stem convolution to 16 channels, then three
    stages of five basic blocks with 16, 32 and 64 channels on 32x32, 16x16 and 8x8 maps,
    and option-A shortcuts (no convolution), so every convolution is one of the 31 3x3 layers.
    """
    return cifar_resnet(32, num_classes=num_classes)


def _clipping():
    """``experiments/clipping.py``, which holds what the benchmarks share with the experiments."""
    experiments = str(Path(__file__).resolve().parents[1] / "experiments")
    if experiments not in sys.path:
        sys.path.insert(0, experiments)
    return importlib.import_module("clipping")
