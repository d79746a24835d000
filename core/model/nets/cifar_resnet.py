"""CIFAR-style ResNets: the seed's ResNet-18 (kuangliu) and He et al.'s ResNet-20/32/56.

Both share one BasicBlock whose state_dict keys match the seed checkpoints
(`layer1.0.bn1.weight`, `layer2.0.shortcut.1.running_var`, `linear.weight`).
Pooling is adaptive so 28×28 inputs work too; it changes no key names.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class BasicBlock(nn.Module):
    """conv3×3-BN-ReLU-conv3×3-BN plus a shortcut (1×1 conv + BN when the shape changes)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: Tensor) -> Tensor:
        """The block's output: relu(residual branch + shortcut)."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + self.shortcut(x)
        return F.relu(out)


class CifarResNet(nn.Module):
    """3×3 stem without max-pool, stages of BasicBlocks, global average pool, `linear` head."""

    def __init__(
        self,
        widths: tuple[int, ...],
        num_blocks: tuple[int, ...],
        num_classes: int = 10,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        in_planes = widths[0]
        for i, (width, blocks) in enumerate(zip(widths, num_blocks, strict=True)):
            stride = 1 if i == 0 else 2
            layer = []
            for j in range(blocks):
                layer.append(BasicBlock(in_planes, width, stride if j == 0 else 1))
                in_planes = width
            self.add_module(f"layer{i + 1}", nn.Sequential(*layer))
        self.num_stages = len(widths)
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits of a batch N×C×H×W."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer1(out)
        out = self.layer2(out)
        out = self.layer3(out)
        if self.num_stages == 4:
            out = self.layer4(out)
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def cifar_resnet18(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """The seed's ResNet-18 for 32×32 inputs: stages 64/128/256/512 of two blocks."""
    return CifarResNet((64, 128, 256, 512), (2, 2, 2, 2), num_classes, in_channels)


def cifar_resnet20(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """He et al. 2016 ResNet-20: stages 16/32/64 of three blocks."""
    return CifarResNet((16, 32, 64), (3, 3, 3), num_classes, in_channels)


def cifar_resnet32(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """He et al. 2016 ResNet-32: stages 16/32/64 of five blocks."""
    return CifarResNet((16, 32, 64), (5, 5, 5), num_classes, in_channels)


def cifar_resnet56(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """He et al. 2016 ResNet-56: stages 16/32/64 of nine blocks."""
    return CifarResNet((16, 32, 64), (9, 9, 9), num_classes, in_channels)
