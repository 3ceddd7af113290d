"""The torchvision ImageNet ResNets (18, 34, 50, 101, 152), written out so that torchvision is not needed.

Parameter names and shapes are torchvision's (``conv1``, ``bn1``, ``layer1`` ... ``layer4``
of ``BasicBlock`` or ``Bottleneck`` blocks with ``conv1``/``conv2``/``conv3``, ``bn*`` and a
``downsample`` of a 1x1 convolution (``.0``) and a batch norm (``.1``), then ``fc``), so a
torchvision checkpoint loads with ``load_state_dict(strict=True)``. As in torchvision (ResNet
"v1.5"), a bottleneck block that downsamples does so in its 3x3 convolution, not its first 1x1.
Random initialisation follows torchvision too: He-normal convolutions (fan-out), batch norms
at scale 1 and shift 0.
"""

from __future__ import annotations

import torch
from torch import nn

# Blocks per stage, and whether the blocks are bottlenecks.
ARCHITECTURES = {
    "resnet18": ([2, 2, 2, 2], False),
    "resnet34": ([3, 4, 6, 3], False),
    "resnet50": ([3, 4, 6, 3], True),
    "resnet101": ([3, 4, 23, 3], True),
    "resnet152": ([3, 8, 36, 3], True),
}


def _conv(c_in: int, c_out: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions (the first may stride) and a shortcut."""

    expansion = 1

    def __init__(self, c_in: int, width: int, stride: int, downsample: nn.Module | None) -> None:
        super().__init__()
        self.conv1 = _conv(c_in, width, 3, stride)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv(width, width, 3)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided where the block downsamples), 1x1 expand by 4, and a shortcut."""

    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int, downsample: nn.Module | None) -> None:
        super().__init__()
        self.conv1 = _conv(c_in, width, 1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv(width, width, 3, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = _conv(width, width * self.expansion, 1)
        self.bn3 = nn.BatchNorm2d(width * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class ResNet(nn.Module):
    """A 7x7/2 stem, a 3x3/2 max-pool, four stages (64 to 512 wide; stride 2 from the second), ``fc``."""

    def __init__(self, blocks_per_stage: list[int], bottleneck: bool, num_classes: int = 1000) -> None:
        super().__init__()
        block = Bottleneck if bottleneck else BasicBlock
        self.conv1 = _conv(3, 64, 7, stride=2)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        c_in = 64
        for stage, blocks in enumerate(blocks_per_stage):
            width = 64 * 2**stage
            c_out = width * block.expansion
            stride = 1 if stage == 0 else 2
            layers = []
            for index in range(blocks):
                s = stride if index == 0 else 1
                downsample = None
                if s != 1 or c_in != c_out:
                    downsample = nn.Sequential(_conv(c_in, c_out, 1, s), nn.BatchNorm2d(c_out))
                layers.append(block(c_in, width, s, downsample))
                c_in = c_out
            self.add_module(f"layer{stage + 1}", nn.Sequential(*layers))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(c_in, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet(arch: str) -> ResNet:
    """The named architecture (a key of :data:`ARCHITECTURES`), randomly initialised."""
    blocks_per_stage, bottleneck = ARCHITECTURES[arch]
    return ResNet(blocks_per_stage, bottleneck)


def randomise_batch_norms(model: nn.Module, input_shape: tuple[int, ...], seed: int = 0) -> nn.Module:
    """Give every batch norm seeded random affine weights and the running statistics of random inputs.

    A randomly initialised network has batch norms at scale 1, shift 0, mean 0 and variance 1,
    which makes each a no-op in eval mode. Here each gets a scale drawn uniformly from
    [0.5, 1.5] and a shift from N(0, 0.1^2), then the network runs in training mode on two
    batches of four N(0, 1) inputs of ``input_shape`` (batch axis excluded), with
    ``momentum=None`` so that the running statistics are the average of the two batches'.
    Each layer's statistics are then those of its own input, as after training. The model is
    returned in eval mode, with the batch norms' momentum restored.
    """
    generator = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in norms]
    with torch.no_grad():
        for bn in norms:
            bn.weight.copy_(0.5 + torch.rand(bn.num_features, generator=generator))
            bn.bias.copy_(0.1 * torch.randn(bn.num_features, generator=generator))
            bn.reset_running_stats()
            bn.momentum = None
        model.train()
        for _ in range(2):
            model(torch.randn(4, *input_shape, generator=generator))
    for bn, momentum in zip(norms, momenta, strict=True):
        bn.momentum = momentum
    return model.eval()
