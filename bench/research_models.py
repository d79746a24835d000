"""Model definitions of research code no registry holds, for `--model-code` in the zoo table
(bench/zoo_table.py) and its tests. Written for this table after each project's public model
code (layer names and shapes as there; forward written here): BackdoorBench's SENet-18 and
ResNeXt-29, backdoor-toolbox's vgg16_bn, MobileNetV2 and WideResNet, BackdoorBox's CIFAR
ResNet-50, trojanzoo's ResNet-18 (torchvision's blocks under `features`/`classifier`).

Each function takes no argument and returns a 10-class CIFAR model, as `--model-code
bench/research_models.py:NAME` calls it.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
import torchvision
from torch import nn


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, **kw) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, **kw), nn.BatchNorm2d(cout)]


# ---- BackdoorBench: models/senet.py (pre-activation blocks with SE by 1×1 convs) -------------


class _SEPreAct(nn.Module):
    def __init__(self, cin: int, planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        if stride != 1 or cin != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=False))
        self.fc1 = nn.Conv2d(planes, planes // 16, 1)
        self.fc2 = nn.Conv2d(planes // 16, planes, 1)

    def forward(self, x):
        out = F.relu(self.bn1(x))
        short = self.shortcut(out) if hasattr(self, "shortcut") else x
        out = self.conv2(F.relu(self.bn2(self.conv1(out))))
        w = torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(out, 1)))))
        return out * w + short


class _Staged(nn.Module):
    """conv1/bn1 stem, `layer<i>` stages, average pool, `linear` head (kuangliu's layout)."""

    def __init__(self, stem: int, stages: list[nn.Sequential], width: int, stem_kernel=3):
        super().__init__()
        self.conv1 = nn.Conv2d(3, stem, stem_kernel, 1, stem_kernel // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        for i, stage in enumerate(stages, 1):
            setattr(self, f"layer{i}", stage)
        self.n = len(stages)
        self.linear = nn.Linear(width, 10)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        for i in range(1, self.n + 1):
            out = getattr(self, f"layer{i}")(out)
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


def backdoorbench_senet18() -> nn.Module:
    stages, cin = [], 64
    for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        stages.append(nn.Sequential(_SEPreAct(cin, planes, stride), _SEPreAct(planes, planes, 1)))
        cin = planes
    return _Staged(64, stages, 512)


# ---- BackdoorBench: models/resnext.py (ResNeXt-29, 2×64d) -----------------------------------


class _NeXt(nn.Module):
    def __init__(self, cin: int, cardinality: int, width: int, stride: int) -> None:
        super().__init__()
        g = cardinality * width
        self.conv1 = nn.Conv2d(cin, g, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(g)
        self.conv2 = nn.Conv2d(g, g, 3, stride, 1, groups=cardinality, bias=False)
        self.bn2 = nn.BatchNorm2d(g)
        self.conv3 = nn.Conv2d(g, 2 * g, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(2 * g)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != 2 * g:
            self.shortcut = nn.Sequential(*_conv_bn(cin, 2 * g, 1, stride, bias=False))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.bn3(self.conv3(out)) + self.shortcut(x))


def backdoorbench_resnext29() -> nn.Module:
    stages, cin, width = [], 64, 64
    for stride in (1, 2, 2):
        blocks = []
        for i in range(3):
            blocks.append(_NeXt(cin, 2, width, stride if i == 0 else 1))
            cin = 2 * 2 * width
        stages.append(nn.Sequential(*blocks))
        width *= 2
    return _Staged(64, stages, cin, stem_kernel=1)


# ---- backdoor-toolbox: utils/vgg.py, utils/mobilenetv2.py, utils/wresnet.py -----------------


class _ToolboxVGG(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512,
               "M"]  # fmt: skip
        layers, cin = [], 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [*_conv_bn(cin, v, 3), nn.ReLU(inplace=True)]
                cin = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Dropout(), nn.Linear(512, 512), nn.ReLU(True), nn.Dropout(), nn.Linear(512, 512),
            nn.ReLU(True), nn.Linear(512, 10),
        )  # fmt: skip

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


def toolbox_vgg16_bn() -> nn.Module:
    return _ToolboxVGG()


class _Bottleneck(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, t: int) -> None:
        super().__init__()
        mid = cin * t
        self.residual = nn.Sequential(
            *_conv_bn(cin, mid, 1), nn.ReLU6(inplace=True),
            nn.Conv2d(mid, mid, 3, stride, 1, groups=mid), nn.BatchNorm2d(mid),
            nn.ReLU6(inplace=True), *_conv_bn(mid, cout, 1),
        )  # fmt: skip
        self.add = stride == 1 and cin == cout

    def forward(self, x):
        out = self.residual(x)
        return out + x if self.add else out


class _ToolboxMobileNetV2(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pre = nn.Sequential(nn.Conv2d(3, 32, 1, padding=1), nn.BatchNorm2d(32), nn.ReLU6(True))
        self.stage1 = _Bottleneck(32, 16, 1, 1)
        spec = [(2, 16, 24, 2), (3, 24, 32, 2), (4, 32, 64, 2), (3, 64, 96, 1), (3, 96, 160, 1)]
        for i, (n, cin, cout, stride) in enumerate(spec, 2):
            blocks = [_Bottleneck(cin, cout, stride, 6)]
            blocks += [_Bottleneck(cout, cout, 1, 6) for _ in range(n - 1)]
            setattr(self, f"stage{i}", nn.Sequential(*blocks))
        self.stage7 = _Bottleneck(160, 320, 1, 6)
        self.conv1 = nn.Sequential(*_conv_bn(320, 1280, 1), nn.ReLU6(True))
        self.conv2 = nn.Conv2d(1280, 10, 1)

    def forward(self, x):
        x = self.pre(x)
        for i in range(1, 8):
            x = getattr(self, f"stage{i}")(x)
        x = F.adaptive_avg_pool2d(self.conv1(x), 1)
        return torch.flatten(self.conv2(x), 1)


def toolbox_mobilenetv2() -> nn.Module:
    return _ToolboxMobileNetV2()


class _WideBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.same = cin == cout
        self.convShortcut = None if self.same else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x):
        pre = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(pre))))
        return out + (x if self.same else self.convShortcut(pre))


class _NetworkBlock(nn.Module):
    def __init__(self, n: int, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *[_WideBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1) for i in range(n)]
        )

    def forward(self, x):
        return self.layer(x)


class _WideResNet(nn.Module):
    def __init__(self, depth: int = 16, widen: int = 1) -> None:
        super().__init__()
        n, ch = (depth - 4) // 6, [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(3, ch[0], 3, 1, 1, bias=False)
        self.block1 = _NetworkBlock(n, ch[0], ch[1], 1)
        self.block2 = _NetworkBlock(n, ch[1], ch[2], 2)
        self.block3 = _NetworkBlock(n, ch[2], ch[3], 2)
        self.bn1 = nn.BatchNorm2d(ch[3])
        self.fc = nn.Linear(ch[3], 10)

    def forward(self, x):
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.adaptive_avg_pool2d(F.relu(self.bn1(out)), 1)
        return self.fc(torch.flatten(out, 1))


def toolbox_wideresnet() -> nn.Module:
    return _WideResNet(16, 1)


# ---- BackdoorBox: core/models/resnet.py (CIFAR ResNet-50, kuangliu's layout) ----------------


class _Bottleneck4(nn.Module):
    def __init__(self, cin: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, 4 * planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(4 * planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != 4 * planes:
            self.shortcut = nn.Sequential(*_conv_bn(cin, 4 * planes, 1, stride, bias=False))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.bn3(self.conv3(out)) + self.shortcut(x))


def backdoorbox_resnet50() -> nn.Module:
    stages, cin = [], 64
    for planes, n, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        blocks = []
        for i in range(n):
            blocks.append(_Bottleneck4(cin, planes, stride if i == 0 else 1))
            cin = 4 * planes
        stages.append(nn.Sequential(*blocks))
    return _Staged(64, stages, 2048)


# ---- trojanzoo: torchvision's ResNet-18 blocks under `features` and `classifier` -------------


class _TrojanZooResNet18(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        tv = torchvision.models.resnet18(num_classes=10)
        tv.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)  # the CIFAR ("comp") stem
        self.features = nn.Sequential(OrderedDict(
            conv1=tv.conv1, bn1=tv.bn1, relu=tv.relu, layer1=tv.layer1, layer2=tv.layer2,
            layer3=tv.layer3, layer4=tv.layer4,
        ))  # fmt: skip
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(OrderedDict(fc=tv.fc))

    def forward(self, x):
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def trojanzoo_resnet18_comp() -> nn.Module:
    return _TrojanZooResNet18()


CASES = {  # table row → (project, callable)
    "senet18": ("BackdoorBench", "backdoorbench_senet18"),
    "resnext29": ("BackdoorBench", "backdoorbench_resnext29"),
    "vgg16_bn": ("backdoor-toolbox", "toolbox_vgg16_bn"),
    "mobilenetv2": ("backdoor-toolbox", "toolbox_mobilenetv2"),
    "WideResNet-16-1": ("backdoor-toolbox", "toolbox_wideresnet"),
    "ResNet-50": ("BackdoorBox", "backdoorbox_resnet50"),
    "resnet18_comp": ("trojanzoo", "trojanzoo_resnet18_comp"),
}
