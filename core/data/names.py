"""Names without torch: the known data sets' class names and the trigger positions (the window
and `bnp train -h` read them before torch loads)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass


__all__ = [
    "FASHION_MNIST_CLASSES",
    "CIFAR10_CLASSES",
]

FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
CIFAR10_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]
TRIGGER_POSITIONS = ("bottom-right", "bottom-left", "top-left", "top-right", "center")
