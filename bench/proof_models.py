"""Train the proof models of issue 17 ("Repair that holds"), one per call, with the defender's data.

    python bench/proof_models.py NAME [NAME ...] [--workdir /work/proof-models] [--threads 1]
    python bench/proof_models.py --list

Every model is `core.attack.train.train` on the real Fashion-MNIST (seed 0, poisoning rate 0.1, the
seed recipe: SGD, cosine schedule, random crop and flip) on a small budget a shared CPU allows.
Writes ``NAME.pth`` and ``NAME.data.pt`` (the defender's data as `bench/proof_suggest.py` keeps
it: 500 clean held-out images, 500 images of the poisoned training set and which of them are
poisoned) and appends the training time to ``times.json``. A model whose two files exist is
skipped. The CLA model runs PGD against the ``clean`` model, which must be trained first.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from proof_suggest import defender_data  # noqa: E402  (bench/, the script's own folder)

from core.attack.train import CleanLabelSetup, make_trigger, train  # noqa: E402
from core.data.images import InputSpec  # noqa: E402
from core.data.load import load_images  # noqa: E402
from core.data.triggers import BlendTrigger, RandomPatchTrigger, random_patch  # noqa: E402
from core.io.checkpoint import load_checkpoint  # noqa: E402

FMNIST = Path("/usr/share/datasets/fashion-mnist")


def checkerboard(size: int = 4) -> torch.Tensor:
    """A 1×s×s black/white checkerboard (white top-left)."""
    i = torch.arange(size)
    return ((i[:, None] + i[None, :]) % 2 == 0).float()[None]


def recipes() -> dict[str, dict]:
    """name → how it is trained (``trigger`` None: clean)."""
    bad = make_trigger("badnets", channels=1, image_size=(28, 28), size=3, seed=0)
    blend = make_trigger("blend", channels=1, image_size=(28, 28), alpha=0.15, seed=0)
    cla = make_trigger("cla", channels=1, image_size=(28, 28), size=3, seed=0)
    base = dict(arch="cifar_resnet20", train_limit=20000, epochs=2, lr=0.1, target=0)
    return {
        "clean": dict(base, trigger=None, what="clean (no attack)"),
        "blend": dict(base, trigger=blend, what="blend α 0.15, random pattern, target 0"),
        "noise-blend-t7": dict(
            base,
            trigger=BlendTrigger(random_patch((28, 28), 1, seed=7), 0.1),
            target=7,
            what="blend α 0.1, uniform-noise pattern (seed 7), target 7",
        ),
        "random-checker-t3": dict(
            base,
            train_limit=40000,
            trigger=RandomPatchTrigger(checkerboard(4), seed=0),
            target=3,
            what="BadNets 4×4 checkerboard at a random position per image, target 3",
        ),
        "badnets-40k": dict(
            base, train_limit=40000, trigger=bad, what="BadNets 3×3 random patch, bottom-right"
        ),
        "cla": dict(
            base,
            epochs=4,
            crop_padding=0,
            trigger=cla,
            clean_label="clean",
            what="clean-label attack (PGD against `clean`), 3×3 patch in 4 corners, target 0",
        ),
        "vgg-blend": dict(  # 6 000 × 2: a VGG step costs 8× a ResNet-20 step on this CPU
            base,
            arch="vgg16_bn_cifar",
            train_limit=6000,
            epochs=2,
            lr=0.02,
            trigger=blend,
            what="blend α 0.15, random pattern, target 0 (VGG-16-BN)",
        ),
        "vgg-blend-12k": dict(
            base,
            arch="vgg16_bn_cifar",
            train_limit=12000,
            epochs=3,
            lr=0.02,
            trigger=blend,
            what="blend α 0.15, random pattern, target 0 (VGG-16-BN, 12 000 × 3)",
        ),
    }


def train_one(name: str, recipe: dict, workdir: Path) -> None:
    ckpt, data_file = workdir / f"{name}.pth", workdir / f"{name}.data.pt"
    if ckpt.exists() and data_file.exists():
        print(f"{name}: already trained", file=sys.stderr, flush=True)
        return
    full = load_images(FMNIST, split="train").subset(slice(0, recipe["train_limit"]))
    test = load_images(FMNIST, split="test")
    clean_label = None
    if recipe.get("clean_label"):
        clean_ckpt = workdir / f"{recipe['clean_label']}.pth"
        clean_model = load_checkpoint(clean_ckpt).model
        clean_label = CleanLabelSetup(clean_model, InputSpec(1, (28, 28)), str(clean_ckpt))
    started = time.monotonic()
    result = train(
        full, test, arch=recipe["arch"], trigger=recipe["trigger"], target=recipe["target"],
        rate=0.1 if recipe["trigger"] is not None else 0.0, epochs=recipe["epochs"],
        lr=recipe["lr"], flip=True, seed=0, out=ckpt, dataset="fashion-mnist", eval_limit=1000,
        progress=False, crop_padding=recipe.get("crop_padding"), clean_label=clean_label,
        command=f"python bench/proof_models.py {name}",
    )  # fmt: skip
    minutes = (time.monotonic() - started) / 60
    asr = "-" if result.asr is None else f"{result.asr:.2f}"
    print(
        f"{name}: trained in {minutes:.1f} min; ACC {result.acc:.2f} %, ASR {asr} % on the full "
        "test set",
        file=sys.stderr,
        flush=True,
    )
    torch.save(defender_data(result), data_file)
    times = workdir / "times.json"
    log = json.loads(times.read_text()) if times.exists() else {}
    log[name] = {
        "minutes": round(minutes, 1),
        "what": recipe["what"],
        "arch": recipe["arch"],
        "train_limit": recipe["train_limit"],
        "epochs": recipe["epochs"],
        "lr": recipe["lr"],
        "target": recipe["target"],
        "acc": round(result.acc, 2),
        "asr": None if result.asr is None else round(result.asr, 2),
        "poisoned": int(len(result.poisoned_index)),
        "epoch_seconds": [round(s) for s in result.epoch_seconds],
    }
    times.write_text(json.dumps(log, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*")
    parser.add_argument("--workdir", type=Path, default=Path("/work/proof-models"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--list", action="store_true")
    args = parser.parse_args()
    table = recipes()
    if args.list or not args.names:
        for name, r in table.items():
            print(f"{name}: {r['arch']} {r['train_limit']} × {r['epochs']}, {r['what']}")
        return
    unknown = [n for n in args.names if n not in table]
    if unknown:
        sys.exit(f"unknown model(s) {', '.join(unknown)}: one of {', '.join(table)}")
    torch.set_num_threads(args.threads)
    args.workdir.mkdir(parents=True, exist_ok=True)
    for name in args.names:
        train_one(name, table[name], args.workdir)


if __name__ == "__main__":
    main()
