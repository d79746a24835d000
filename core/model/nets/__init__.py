"""Model definitions for the architectures the engine knows beyond torchvision's."""

from core.model.nets.cifar_resnet import (
    BasicBlock,
    CifarResNet,
    cifar_resnet18,
    cifar_resnet20,
    cifar_resnet32,
    cifar_resnet56,
)
from core.model.nets.preact_resnet import PreActBlock, PreActResNet, preact_resnet18
from core.model.nets.vgg import CifarVGG, vgg16_bn_cifar

__all__ = [
    "BasicBlock",
    "CifarResNet",
    "CifarVGG",
    "PreActBlock",
    "PreActResNet",
    "cifar_resnet18",
    "cifar_resnet20",
    "cifar_resnet32",
    "cifar_resnet56",
    "preact_resnet18",
    "vgg16_bn_cifar",
]
