"""The networks the benchmarks use: a CIFAR ResNet-32 in plain PyTorch, and ResNet-50's conv shapes.

Nothing here imports torch at module level, so the ResNet-50 table can be read by a
process that loads only NumPy.
"""

from __future__ import annotations

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


def resnet32(num_classes: int = 10):
    """CIFAR ResNet-32 (He et al. 2016, section 4.2): 31 convolutions, batch norm, 0.46 M parameters.

    A 3x3 stem convolution to 16 channels, then three stages of five basic blocks
    (two 3x3 convolutions each) with 16, 32 and 64 channels on 32x32, 16x16 and 8x8
    maps; the first block of stages 2 and 3 has stride 2. Shortcuts are the paper's
    option A (identity, subsampled and zero-padded in channels), so every
    convolution of the model is one of the 31 3x3 layers.
    """
    import torch
    from torch import nn

    class Shortcut(nn.Module):
        """Option A: keep every other position, pad the new channels with zeros."""

        def __init__(self, c_in: int, c_out: int, stride: int) -> None:
            super().__init__()
            self.stride, self.pad = stride, c_out - c_in

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.stride == 1 and self.pad == 0:
                return x
            x = x[:, :, :: self.stride, :: self.stride]
            return nn.functional.pad(x, (0, 0, 0, 0, 0, self.pad))

    class BasicBlock(nn.Module):
        def __init__(self, c_in: int, c_out: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(c_out)
            self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(c_out)
            self.shortcut = Shortcut(c_in, c_out, stride)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.relu(self.bn1(self.conv1(x)))
            y = self.bn2(self.conv2(y))
            return torch.relu(y + self.shortcut(x))

    layers: list[nn.Module] = [nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()]
    c_in = 16
    for c_out, stride in [(16, 1), (32, 2), (64, 2)]:
        for block in range(5):
            layers.append(BasicBlock(c_in, c_out, stride if block == 0 else 1))
            c_in = c_out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes)]
    return nn.Sequential(*layers)
