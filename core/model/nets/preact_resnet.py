"""Pre-activation ResNet-18 for 32×32 inputs (He et al. 2016b, kuangliu/BackdoorBench layout).

Every BatchNorm sits BEFORE its convolution, so a BatchNorm's input is not the output of the
most recently registered Conv2d: the case where CLP's registration-order pairing goes wrong.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class PreActBlock(nn.Module):
    """BN-ReLU-conv3×3-BN-ReLU-conv3×3; the shortcut is a bare 1×1 conv when the shape changes."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)
            )

    def forward(self, x: Tensor) -> Tensor:
        """The block's output: residual branch (pre-activated) + shortcut."""
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


def add_stem_and_stages(net: nn.Module, num_blocks: tuple[int, ...], in_channels: int) -> int:
    """`conv1` (3×3, 64) and `layer1`..`layer4` of PreActBlocks (64/128/256/512, stride 2 from
    the second stage) registered on ``net``; returns the last stage's width."""
    net.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
    in_planes = 64
    for i, (width, blocks) in enumerate(zip((64, 128, 256, 512), num_blocks, strict=True)):
        stride = 1 if i == 0 else 2
        layer = []
        for j in range(blocks):
            layer.append(PreActBlock(in_planes, width, stride if j == 0 else 1))
            in_planes = width
        net.add_module(f"layer{i + 1}", nn.Sequential(*layer))
    return in_planes


class PreActResNet(nn.Module):
    """3×3 stem, four stages of PreActBlocks, final BN-ReLU, global average pool, `linear`."""

    def __init__(
        self, num_blocks: tuple[int, ...], num_classes: int = 10, in_channels: int = 3
    ) -> None:
        super().__init__()
        in_planes = add_stem_and_stages(self, num_blocks, in_channels)
        self.bn = nn.BatchNorm2d(in_planes)
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits of a batch N×C×H×W."""
        out = self.conv1(x)
        out = self.layer1(out)
        out = self.layer2(out)
        out = self.layer3(out)
        out = self.layer4(out)
        out = F.relu(self.bn(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def preact_resnet18(num_classes: int = 10, in_channels: int = 3) -> PreActResNet:
    """Pre-activation ResNet-18: stages 64/128/256/512 of two blocks."""
    return PreActResNet((2, 2, 2, 2), num_classes, in_channels)
