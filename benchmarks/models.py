"""The benchmarks' networks: CIFAR ResNet-32s and ResNet-18 in plain PyTorch, and ResNet-50's conv shapes.

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


def cifar_resnet_b(depth: int, num_classes: int = 10):
    """The CIFAR ResNet of :func:`cifar_resnet` with option-B shortcuts (He et al. 2016, section 3.3).

    Where a block changes the width and halves the map, its shortcut is a strided 1x1
    convolution and a batch norm (torchvision's ``downsample``) instead of option A's
    subsample-and-pad-with-zeros; every other layer is as in :func:`cifar_resnet`. The blocks are
    ``experiments/imagenet_resnet.py``'s ``BasicBlock``.
    """
    from torch import nn

    resnets = _experiment("imagenet_resnet")
    blocks, c_in = [], 16
    for c_out, stride in [(16, 1), (32, 2), (64, 2)]:
        for block in range((depth - 2) // 6):
            s = stride if block == 0 else 1
            shortcut = None
            if s != 1 or c_in != c_out:
                shortcut = nn.Sequential(
                    nn.Conv2d(c_in, c_out, 1, stride=s, bias=False), nn.BatchNorm2d(c_out)
                )
            blocks.append(resnets.BasicBlock(c_in, c_out, s, shortcut))
            c_in = c_out
    stem = [nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()]
    head = [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes)]
    return nn.Sequential(*stem, *blocks, *head)


def resnet18():
    """torchvision's ResNet-18, randomly initialised as torchvision does, written out without torchvision.

    A 7x7/2 stem convolution with batch norm and ReLU, a 3x3/2 max pool, four stages of two
    basic blocks (64, 128, 256, 512 channels; the first block of stages 2-4 strides by 2 and
    has a 1x1 convolution + batch norm shortcut), global average pooling and ``fc`` to 1000
    classes: 11,689,512 parameters. The one definition lives in
    ``experiments/imagenet_resnet.py``, whose tests check its parameters against torchvision's.
    """
    return _experiment("imagenet_resnet").resnet("resnet18")


def randomise_batch_norms(model, input_shape: tuple[int, ...], seed: int = 0):
    """Seeded random batch-norm weights and running statistics (``imagenet_resnet.randomise_batch_norms``)."""
    return _experiment("imagenet_resnet").randomise_batch_norms(model, input_shape, seed)


def _clipping():
    """``experiments/clipping.py``, which holds what the benchmarks share with the experiments."""
    return _experiment("clipping")


def _experiment(name: str):
    """The module ``experiments/<name>.py``."""
    experiments = str(Path(__file__).resolve().parents[1] / "experiments")
    if experiments not in sys.path:
        sys.path.insert(0, experiments)
    return importlib.import_module(name)
