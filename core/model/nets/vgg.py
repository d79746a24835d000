"""VGG-16 with BatchNorm for 32×32 inputs (the common CIFAR variant: one Linear head).

Max-pools use ceil_mode so a 28×28 input still reaches 1×1 after five of them
(for 32×32 the result is identical to floor mode); pools have no parameters, so keys are unchanged.
"""

from __future__ import annotations

from torch import Tensor, nn

VGG16_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)  # fmt: skip


class CifarVGG(nn.Module):
    """`features` (conv-BN-ReLU blocks and max-pools), global average pool, `classifier`."""

    def __init__(
        self, cfg: tuple[int | str, ...], num_classes: int = 10, in_channels: int = 3
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for item in cfg:
            if item == "M":
                layers.append(nn.MaxPool2d(2, stride=2, ceil_mode=True))
            else:
                layers += [
                    nn.Conv2d(channels, int(item), 3, padding=1),
                    nn.BatchNorm2d(int(item)),
                    nn.ReLU(inplace=True),
                ]
                channels = int(item)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits of a batch N×C×H×W."""
        out = self.pool(self.features(x)).flatten(1)
        return self.classifier(out)


def vgg16_bn_cifar(num_classes: int = 10, in_channels: int = 3) -> CifarVGG:
    """VGG-16-BN for 32×32 inputs with a single Linear(512, classes) head."""
    return CifarVGG(VGG16_CFG, num_classes, in_channels)
