"""A tiny stand-in for the bundled demo, with a real backdoor, built in seconds.

The bundled demo (ResNet-20 on 2 000 Fashion-MNIST test images) takes minutes per window test on
a busy 2-core machine; the same behaviour shows on this one: a CIFAR ResNet-20 trained for a few
epochs on 16×16 grey "bar" images (class k: a bright bar on row k + 2 over faint noise), 20 % of
its training set stamped with a white 3×3 patch in the bottom-right corner and relabelled 0. It
learns both the task and the backdoor (ACC and ASR near 100 %), so the suspect samples, the
inferred target and the estimated ASR are there as on the demo. The folder has the demo's layout
(`core.demo.demo_paths(root)` accepts it): the checkpoint in the seed format with its trigger,
`clean/`, `train_poisoned/` (with `poisoned.npy`, the ground truth) and `test/`.

Built once per test session and shared between pytest-xdist workers (a file lock), so a run
trains it once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

TARGET = 0
SIZE = 16
RATE = 0.2


def _save(folder: Path, images, labels, poisoned=None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    # N×H×W×C uint8, as the bundled demo stores its images
    np.save(folder / "data.npy", images.permute(0, 2, 3, 1).numpy())
    np.save(folder / "labels.npy", labels.numpy().astype(np.int64))
    (folder / "class_names.txt").write_text("\n".join(f"c{k}" for k in range(10)) + "\n")
    if poisoned is not None:
        np.save(folder / "poisoned.npy", poisoned.numpy().astype(bool))  # a mask, as the demo


def build(root: Path) -> Path:
    """Train the tiny backdoored ResNet-20 and write it with its data under ``root``."""
    import torch
    from suspect_models import bars, fit  # the engine tests' bar images and training loop

    from core.attack.train import save_checkpoint
    from core.data.triggers import PatchTrigger, poison
    from core.demo import DEMO_CHECKPOINT
    from core.io.metadata import ModelMetadata
    from core.model.architectures import build_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: a shared 2-core machine (see tests/conftest.py)
    try:
        trigger = PatchTrigger(torch.ones(1, 3, 3))
        data = bars(400, 0)
        poisoned_set, index = poison(data, trigger, TARGET, RATE, 0)
        x, y = poisoned_set.float_images(), poisoned_set.labels
        torch.manual_seed(0)
        model = fit(build_model("cifar_resnet20", 10, 1), x, y, epochs=6, seed=0)
        meta = ModelMetadata(
            arch="cifar_resnet20",
            num_classes=10,
            in_channels=1,
            input_size=(SIZE, SIZE),
            target_label=TARGET,
            attack={"kind": "badnets", "trigger": trigger.to_dict()},
        )
        root.mkdir(parents=True, exist_ok=True)
        save_checkpoint(root / DEMO_CHECKPOINT, model, trigger, meta)
        # the defender's slice of the suspect training set: 160 samples, 20 % poisoned
        suspects = torch.arange(160)
        flags = torch.zeros(len(x), dtype=torch.bool)
        flags[index] = True
        train = (x[suspects] * 255).round().to(torch.uint8)
        _save(root / "train_poisoned", train, y[suspects], flags[suspects])
        clean = bars(96, 100)
        _save(root / "clean", clean.images, clean.labels)
        test = bars(320, 200)  # over the window's 256-sample first preview, as the demo
        _save(root / "test", test.images, test.labels)
    finally:
        torch.set_num_threads(threads)
    return root


def shared(tmp_path_factory) -> Path:
    """The planted demo's folder, built by the first pytest-xdist worker that asks (a lock)."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    if base.name.startswith("popen-gw"):  # an xdist worker: share the parent folder
        base = base.parent
    root = base / "planted-demo"
    with FileLock(str(base / "planted-demo.lock")):
        if not (root / "done").exists():
            build(root)
            (root / "done").write_text("ok\n")
    return root
