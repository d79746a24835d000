"""`bnp train`'s options and the attacks' names and defaults, without torch: `bnp train -h`
answers at once, and the training itself (core.attack.train) is imported only when it runs.
"""

from __future__ import annotations

import argparse

from core.data.names import TRIGGER_POSITIONS

DEFAULT_DATA = "/usr/share/datasets/fashion-mnist"
ATTACKS = ("badnets", "blend", "corner-blend", "cla")
# the clean-label attack's L∞ PGD (the papers' settings), in [0, 1] pixel units
PGD_EPS = 12 / 255
PGD_STEP = 2 / 255
PGD_STEPS = 7


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``bnp train`` options on ``parser``."""
    d = parser.add_argument_group("data")
    d.add_argument(
        "--data",
        default=DEFAULT_DATA,
        help="training data: Fashion-MNIST/MNIST idx folder, CIFAR-10 folder, STL-10 binary "
        f"folder, ImageFolder or data.npy+labels.npy folder (default: {DEFAULT_DATA})",
    )
    d.add_argument(
        "--test-data",
        help="test data when --data has no test split (default: the test split of --data, "
        "else 20%% of --data)",
    )
    d.add_argument(
        "--limit-train",
        type=int,
        help="train on N samples only (the first N + --holdout of the training split are read)",
    )
    d.add_argument("--limit-test", type=int, help="use only the first N test samples")
    d.add_argument(
        "--holdout",
        type=int,
        default=500,
        help="training samples kept out of training as the defender's clean data (default 500)",
    )

    a = parser.add_argument_group("attack")
    a.add_argument("--attack", choices=ATTACKS, default="badnets", help="default: badnets")
    a.add_argument("--clean", action="store_true", help="train without any attack")
    a.add_argument("--target", type=int, default=0, help="target label (default 0)")
    a.add_argument(
        "--poison-rate", type=float, default=0.1, help="share of poisoned training samples"
    )
    a.add_argument("--trigger-size", type=int, default=3, help="patch side in pixels (default 3)")
    a.add_argument("--trigger-position", choices=TRIGGER_POSITIONS, default="bottom-right")
    a.add_argument(
        "--trigger-image",
        help="image file for the patch (resized to --trigger-size) or the blend pattern; "
        "default: a random pattern from --trigger-seed",
    )
    a.add_argument("--trigger-seed", type=int, help="seed of the random trigger (default: --seed)")
    a.add_argument(
        "--alpha", type=float, help="blend weight (default 0.1 for blend, 0.2 for corner-blend)"
    )
    c = parser.add_argument_group(
        "clean-label attack (--attack cla)",
        "Target-class samples only, perturbed by L∞ PGD against a clean model, then the patch "
        "in all four corners; labels unchanged. At test time the trigger alone.",
    )
    c.add_argument(
        "--clean-model",
        help="clean checkpoint to run PGD against (default: train one first, rate 0, and save "
        "it as <out stem>_clean_model.pth)",
    )
    c.add_argument(
        "--clean-epochs",
        type=int,
        help="epochs of that clean model (default: --epochs; 0 forbids training one)",
    )
    c.add_argument(
        "--pgd-eps", type=float, default=PGD_EPS * 255, help="L∞ radius in pixel levels /255 (12)"
    )
    c.add_argument(
        "--pgd-step", type=float, default=PGD_STEP * 255, help="step size in levels /255 (2)"
    )
    c.add_argument("--pgd-steps", type=int, default=PGD_STEPS, help="PGD iterations (7)")

    t = parser.add_argument_group("training")
    t.add_argument(
        "--arch",
        default="cifar_resnet20",
        help="architecture name, checked when training starts (default cifar_resnet20; "
        "e.g. cifar_resnet18, preact_resnet18, vgg16_bn_cifar, resnet18, mobilenet_v2)",
    )
    t.add_argument("--epochs", type=int, default=10)
    t.add_argument("--batch-size", type=int, default=128)
    t.add_argument("--lr", type=float, default=0.1)
    t.add_argument("--momentum", type=float, default=0.9)
    t.add_argument("--weight-decay", type=float, default=5e-4)
    t.add_argument(
        "--crop-padding",
        type=int,
        help="random-crop padding in px (default 4 for 32-px images, size // 8 below)",
    )
    t.add_argument("--no-flip", action="store_true", help="no horizontal flips (e.g. for digits)")
    t.add_argument("--seed", type=int, default=0, help="seed of init, split, poisoning, shuffles")
    t.add_argument("--device", default=None, help="cpu, cuda, cuda:1 … (default: cuda if any)")
    t.add_argument("--threads", type=int, help="CPU threads for torch (torch.set_num_threads)")

    o = parser.add_argument_group("output")
    o.add_argument(
        "--out",
        help="checkpoint file (default: {arch}_{attack}_{size}_{rate}_{seed}.pth, as the seed)",
    )
    o.add_argument(
        "--split-dir",
        help="where to write clean/, train_poisoned/ and test/ (default: <out stem>_data "
        "next to the checkpoint)",
    )
    o.add_argument("--no-split", action="store_true", help="do not write the data split")
    o.add_argument("--split-clean", type=int, default=500, help="clean/ samples (default 500)")
    o.add_argument(
        "--split-train", type=int, default=500, help="train_poisoned/ samples (default 500)"
    )
    o.add_argument("--split-test", type=int, default=2000, help="test/ samples (default 2000)")
    o.add_argument("--quiet", action="store_true", help="no progress bar")
