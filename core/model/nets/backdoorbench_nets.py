"""Model layouts BackdoorBench uses that no library builds with the same state_dict keys.

Written from the layer names of BackdoorBench's result files (SCLBD/BackdoorBench), not from
its code: its `preactresnet18` (pre-activation ResNet-18 without a final BatchNorm, adaptive
average pool, `linear` head) and its `vit_b_16`, a torchvision ViT-B/16 behind a resize to
224×224 in an `nn.Sequential`, so every key starts with `1.`.
"""

from __future__ import annotations

from torch import Tensor, nn

from core.model.nets.preact_resnet import add_stem_and_stages


class BackdoorBenchPreActResNet(nn.Module):
    """3×3 stem, four stages of PreActBlocks, global average pool, `linear` (no final BN)."""

    def __init__(
        self, num_blocks: tuple[int, ...], num_classes: int = 10, in_channels: int = 3
    ) -> None:
        super().__init__()
        in_planes = add_stem_and_stages(self, num_blocks, in_channels)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits of a batch N×C×H×W."""
        out = self.conv1(x)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(self.avgpool(out).flatten(1))


def backdoorbench_preactresnet18(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """BackdoorBench's `preactresnet18`: stages 64/128/256/512 of two blocks."""
    return BackdoorBenchPreActResNet((2, 2, 2, 2), num_classes, in_channels)


def backdoorbench_vit_b_16(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """BackdoorBench's `vit_b_16`: Sequential(Resize(224×224), torchvision vit_b_16)."""
    import torchvision
    from torchvision.transforms import Resize

    vit = torchvision.models.vit_b_16(weights=None, num_classes=num_classes)
    if in_channels != 3:
        old = vit.conv_proj
        vit.conv_proj = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, stride=old.stride)
    return nn.Sequential(Resize((224, 224), antialias=True), vit)
