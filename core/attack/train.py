"""``bnp train``: train an image classifier, clean or with a backdoor, the way the seed did.

Recipe (the seed's): SGD lr 0.1, momentum 0.9, weight decay 5e-4, cosine schedule (stepped per
iteration), random crop with zero padding (4 px for 32-px images, size // 8 below) and random
horizontal flip. The attack poisons a fraction of the training set once, before training
(``core.data.triggers.poison``); augmentation then moves the stamped pixels like any other pixels.
The clean-label attack (``--attack cla``, ``core.attack.cla``) poisons target-class samples only,
PGD against a clean model then the patch in all four corners, labels unchanged; the clean model
comes from ``--clean-model`` or is trained first (rate 0, same data and recipe).

Output: the seed checkpoint format ``{'state_dict', 'trigger', 'meta'}`` (only plain types and
tensors: loads with ``torch.load(weights_only=True)``), rewritten atomically at every epoch end so
an interrupted run leaves the last complete epoch on disk, plus the defender's data split:
``clean/`` (a held-out part of the training split never trained on), ``train_poisoned/`` (a slice
of the poisoned training set, poisoned samples in proportion, ``poisoned.npy`` marks them) and
``test/`` (clean test samples; the ASR is measured by stamping the trigger), as uint8 npy.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.attack.cla import PgdSettings, poison_clean_label
from core.attack.options import ATTACKS, DEFAULT_DATA, add_arguments
from core.data.images import ImageSet, InputSpec, save_images, to_float
from core.data.load import load_images
from core.data.stl10 import stl10_dir
from core.data.triggers import (
    BlendTrigger,
    CornerBlendTrigger,
    FourCornerTrigger,
    PatchTrigger,
    Trigger,
    poison,
    random_patch,
    trigger_from_image,
)
from core.defense.evaluation import evaluate, sample_subset
from core.errors import BnpError, Cancelled
from core.io.checkpoint import load_checkpoint
from core.io.export import export_model
from core.io.metadata import ModelMetadata
from core.model.architectures import ARCHITECTURES, build_model
from core.progress import ProgressBar

__all__ = [
    "DEFAULT_DATA",
    "ATTACKS",
    "TrainResult",
    "CleanLabelSetup",
    "train",
    "subseed",
    "make_trigger",
    "attack_description",
    "write_splits",
    "save_checkpoint",
    "add_arguments",
    "run",
]

Log = Callable[[str], None]


@dataclass
class TrainResult:
    """What a training run produced."""

    model: nn.Module  # eval mode, on the CPU
    metadata: ModelMetadata
    trigger: Trigger | None
    acc: float  # clean top-1 accuracy (%) on the test set
    asr: float | None  # attack success rate (%) on the test set's non-target samples
    train_set: ImageSet  # the (poisoned) set the model was trained on
    poisoned_index: Tensor  # indices into train_set of the poisoned samples
    holdout: ImageSet  # clean training samples never trained on
    epoch_seconds: list[float] = field(default_factory=list)


@dataclass
class CleanLabelSetup:
    """What the clean-label attack needs: the clean model PGD runs against, and PGD's settings."""

    model: nn.Module
    spec: InputSpec  # how images are fed to the clean model
    source: str = ""  # where the clean model came from (path), for the metadata
    pgd: PgdSettings = field(default_factory=PgdSettings)


# ---- augmentation ---------------------------------------------------------------------------


def default_crop_padding(size: tuple[int, int]) -> int:
    """4 px for 32-px images (the seed), size // 8 for smaller ones (3 for 28 px)."""
    return min(4, min(size) // 8)


def augment(x: Tensor, padding: int, flip: bool, generator: torch.Generator) -> Tensor:
    """Random crop after zero padding, and random horizontal flip, per sample (vectorised)."""
    b, c, h, w = x.shape
    if padding > 0:
        padded = F.pad(x, (padding, padding, padding, padding))
        oy = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
        ox = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
        rows = (oy[:, None] + torch.arange(h))[:, None, :, None]
        cols = (ox[:, None] + torch.arange(w))[:, None, None, :]
        x = padded[torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None],
                   rows, cols]  # fmt: skip
    if flip:
        mirror = torch.rand(b, generator=generator) < 0.5
        x = torch.where(mirror[:, None, None, None], x.flip(-1), x)
    return x


# ---- checkpoint -----------------------------------------------------------------------------


def save_checkpoint(
    path: str | Path, model: nn.Module, trigger: Trigger | None, meta: ModelMetadata
) -> Path:
    """Write the seed format {'state_dict', 'trigger', 'meta'} atomically (temp + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    patch = (
        trigger.patch.clone() if isinstance(trigger, PatchTrigger) else None
    )  # corner blends too
    return export_model(model, path, fmt="seed", metadata=meta, trigger=patch)


# ---- triggers -------------------------------------------------------------------------------


def make_trigger(
    attack: str,
    *,
    channels: int,
    image_size: tuple[int, int],
    size: int = 3,
    position: str = "bottom-right",
    alpha: float | None = None,
    image: str | Path | None = None,
    seed: int = 0,
) -> Trigger:
    """The trigger of an attack: a random seed-style patch/pattern from ``seed``, or an image."""
    if attack not in ATTACKS:
        raise BnpError(f"unknown attack {attack!r}: one of {', '.join(ATTACKS)}")
    if attack == "blend":
        a = 0.1 if alpha is None else alpha
        if image is not None:
            return trigger_from_image(image, kind="blend", alpha=a)
        return BlendTrigger(random_patch(image_size, channels, seed), a)
    patch = (
        trigger_from_image(image, size=size).tensor
        if image is not None
        else random_patch(size, channels, seed)
    )
    if attack == "badnets":
        return PatchTrigger(patch, position)
    if attack == "cla":
        return FourCornerTrigger(patch)
    return CornerBlendTrigger(patch, 0.2 if alpha is None else alpha, position)


def attack_description(
    trigger: Trigger, rate: float, poisoned: int, clean_label: CleanLabelSetup | None = None
) -> dict:
    """Metadata ``attack``: kind, rate, count, the trigger's parameters, and the trigger itself.

    ``attack["trigger"]`` is ``trigger.to_dict()`` (what ``Trigger.from_dict`` rebuilds); the
    top-level kind/size/position/alpha repeat its parameters for display. The clean-label attack
    is kind "cla" with its PGD settings, its clean model and ``clean_label: True``.
    """
    t = trigger.to_dict()
    kind = "cla" if clean_label is not None else trigger.kind
    d: dict = {"kind": kind, "rate": float(rate), "poisoned": int(poisoned)}
    if clean_label is not None:
        d.update(clean_label=True, pgd=clean_label.pgd.to_dict(), clean_model=clean_label.source)
    if trigger.kind != "blend":
        d["size"] = int(trigger.tensor.shape[-1])
    d.update({k: v for k, v in t.items() if k in ("position", "alpha")})
    d["trigger"] = t
    return d


# ---- data split for the defender -------------------------------------------------------------


def write_splits(
    folder: str | Path,
    *,
    holdout: ImageSet,
    train_set: ImageSet,
    poisoned_index: Tensor,
    test: ImageSet,
    n_clean: int = 500,
    n_train: int = 500,
    n_test: int = 2000,
    seed: int = 0,
) -> dict[str, Path]:
    """Write clean/, train_poisoned/ (+ poisoned.npy) and test/ as uint8 npy under folder."""
    g = torch.Generator().manual_seed(subseed(seed, "split"))
    folder = Path(folder)
    out: dict[str, Path] = {}

    def pick(n_total: int, n: int) -> Tensor:
        return torch.randperm(n_total, generator=g)[: min(n, n_total)].sort().values

    out["clean"] = save_images(holdout.subset(pick(len(holdout), n_clean)), folder / "clean")

    mask = torch.zeros(len(train_set), dtype=torch.bool)
    mask[poisoned_index] = True
    poisoned, clean = mask.nonzero().reshape(-1), (~mask).nonzero().reshape(-1)
    n_train = min(n_train, len(train_set))
    n_p = min(len(poisoned), round(n_train * len(poisoned) / max(1, len(train_set))))
    chosen = (
        torch.cat([poisoned[pick(len(poisoned), n_p)], clean[pick(len(clean), n_train - n_p)]])
        .sort()
        .values
    )
    out["train_poisoned"] = save_images(train_set.subset(chosen), folder / "train_poisoned")
    np.save(out["train_poisoned"] / "poisoned.npy", mask[chosen].numpy())

    out["test"] = save_images(test.subset(pick(len(test), n_test)), folder / "test")
    return out


# ---- training -------------------------------------------------------------------------------


def subseed(seed: int, purpose: str) -> int:
    """An independent seed for one use of the run's seed (holdout, poison, shuffle, split).

    Reusing one seed everywhere correlates the draws: ``randperm(n)`` for the poison choice and
    for the first epoch's shuffle would be the same permutation, putting every poisoned sample
    at the start of the first epoch.
    """
    digest = hashlib.sha256(f"{int(seed)}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _split_holdout(data: ImageSet, n: int, seed: int) -> tuple[ImageSet, ImageSet]:
    """(training part, clean holdout of n samples), a fixed random split from ``seed``."""
    if n >= len(data):
        raise BnpError(f"a holdout of {n} leaves nothing to train on ({len(data)} samples)")
    perm = torch.randperm(
        len(data), generator=torch.Generator().manual_seed(subseed(seed, "holdout"))
    )
    return data.subset(perm[n:].sort().values), data.subset(perm[:n].sort().values)


def train(
    train_data: ImageSet,
    test_data: ImageSet,
    *,
    arch: str = "cifar_resnet20",
    trigger: Trigger | None = None,
    target: int = 0,
    rate: float = 0.1,
    epochs: int = 10,
    batch_size: int = 128,
    lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    crop_padding: int | None = None,
    flip: bool = True,
    holdout: int = 500,
    seed: int = 0,
    device: str | torch.device = "cpu",
    out: str | Path | None = None,
    dataset: str | None = None,
    command: str | None = None,
    eval_limit: int | None = 1000,
    log: Log | None = None,
    progress: bool = True,
    cancel: Callable[[], bool] | None = None,
    clean_label: CleanLabelSetup | None = None,
) -> TrainResult:
    """Train ``arch`` on ``train_data`` (poisoned with ``trigger`` when given); see the module.

    ``clean_label``: poison the clean-label way (``core.attack.cla.poison_clean_label``) instead of
    BadNets' relabelling; needs ``trigger``.

    The first ``holdout`` samples of a fixed shuffle of ``train_data`` are kept out of training
    (the defender's clean data). Each epoch ends with a quick evaluation on ``eval_limit`` test
    samples and, when ``out`` is given, an atomic checkpoint; the final ACC/ASR use all of
    ``test_data`` and go into the metadata's ``extra``.
    """
    say = log or (lambda s: print(s, file=sys.stderr, flush=True))
    if arch not in ARCHITECTURES:
        raise BnpError(f"unknown architecture {arch!r}: one of {', '.join(sorted(ARCHITECTURES))}")
    if epochs < 1 or batch_size < 1:
        raise BnpError("epochs and batch size must be at least 1")
    if test_data.channels != train_data.channels or test_data.size != train_data.size:
        raise BnpError(
            f"test images are {test_data.channels}×{test_data.size}, training images "
            f"{train_data.channels}×{train_data.size}"
        )
    device = torch.device(device)
    torch.manual_seed(seed)
    num_classes = train_data.num_classes
    channels, size = train_data.channels, train_data.size
    spec = InputSpec(channels, size)

    if clean_label is not None and trigger is None:
        raise BnpError("the clean-label attack needs a trigger")
    fit_part, holdout_set = _split_holdout(train_data, holdout, seed)
    if clean_label is not None:
        say(
            f"clean-label attack: PGD (L∞ eps {clean_label.pgd.eps * 255:g}/255, step "
            f"{clean_label.pgd.step * 255:g}/255, {clean_label.pgd.steps} steps) against "
            f"{clean_label.source or 'the clean model'}, then {trigger.kind} trigger"
        )
        clean_label.model.to(device)
        train_set, poisoned_index = poison_clean_label(
            fit_part, trigger, target, rate, subseed(seed, "poison"),
            clean_model=clean_label.model, spec=clean_label.spec, settings=clean_label.pgd,
            device=device, log=say,
        )  # fmt: skip
    elif trigger is not None:
        train_set, poisoned_index = poison(fit_part, trigger, target, rate, subseed(seed, "poison"))
    else:
        train_set = ImageSet(to_float(fit_part.images), fit_part.labels, fit_part.class_names)
        train_set.source = fit_part.source
        poisoned_index = torch.zeros(0, dtype=torch.int64)
    say(
        f"training {arch} on {len(train_set)} samples ({channels}×{size[0]}×{size[1]}, "
        f"{num_classes} classes)"
        + (
            f", {len(poisoned_index)} poisoned with {trigger.kind} → class {target}"
            + (" (clean-label: labels kept)" if clean_label is not None else "")
            if trigger is not None
            else ", clean"
        )
        + f"; {len(holdout_set)} held out; {epochs} epochs on {device}"
    )

    model = build_model(arch, num_classes, channels).to(device)
    channels_last = device.type == "cpu"  # about 2-5× faster convolutions on CPU
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimiser = torch.optim.SGD(
        model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay
    )
    steps_per_epoch = math.ceil(len(train_set) / batch_size)
    total_steps = epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=total_steps)
    padding = default_crop_padding(size) if crop_padding is None else crop_padding
    generator = torch.Generator().manual_seed(subseed(seed, "shuffle"))

    attack = (
        None
        if trigger is None
        else attack_description(trigger, rate, len(poisoned_index), clean_label)
    )
    meta = ModelMetadata(
        arch=arch,
        num_classes=num_classes,
        in_channels=channels,
        input_size=size,
        target_label=int(target) if trigger is not None else None,
        attack=attack,
        dataset=dataset,
        class_names=list(train_data.class_names) if train_data.class_names else None,
        extra={
            "split_seed": int(seed),
            "holdout": int(len(holdout_set)),
            "epochs": int(epochs),
            "epochs_completed": 0,
            "command": command or "",
            "recipe": {
                "optimizer": "sgd",
                "lr": float(lr),
                "momentum": float(momentum),
                "weight_decay": float(weight_decay),
                "schedule": "cosine-per-step",
                "batch_size": int(batch_size),
                "crop_padding": int(padding),
                "flip": bool(flip),
            },
            "train_samples": int(len(train_set)),
        },
    )
    eval_test = test_data
    if eval_limit is not None and eval_limit < len(test_data):
        pick = torch.randperm(
            len(test_data), generator=torch.Generator().manual_seed(subseed(seed, "eval"))
        )
        eval_test = test_data.subset(pick[:eval_limit].sort().values)

    bar = ProgressBar(total_steps) if progress else None
    epoch_seconds: list[float] = []
    step = 0
    try:
        for epoch in range(1, epochs + 1):
            model.train()
            start = time.monotonic()
            order = torch.randperm(len(train_set), generator=generator)
            seen = correct = 0
            loss_sum = 0.0
            for b in range(steps_per_epoch):
                if cancel is not None and cancel():
                    raise Cancelled("Training cancelled.")
                idx = order[b * batch_size : (b + 1) * batch_size]
                x = augment(train_set.images[idx], padding, flip, generator)
                y = train_set.labels[idx].to(device)
                x = x.to(device)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                logits = model(x)
                loss = F.cross_entropy(logits, y)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                scheduler.step()
                step += 1
                seen += len(y)
                loss_sum += loss.item() * len(y)
                correct += int((logits.argmax(1) == y).sum())
                if bar is not None:
                    bar.update(
                        step,
                        f"epoch {epoch}/{epochs} loss {loss_sum / seen:.3f} "
                        f"train acc {100 * correct / seen:.1f}%",
                    )
            epoch_seconds.append(time.monotonic() - start)
            model.eval()
            m = evaluate(model, eval_test, spec, trigger=trigger, target=target, device=device)
            meta.extra["epochs_completed"] = epoch
            if bar is not None:
                bar.close()
            asr_text = f", ASR {m.asr:.1f}%" if m.asr is not None else ""
            say(
                f"epoch {epoch}/{epochs}: {epoch_seconds[-1]:.0f} s, loss {loss_sum / seen:.3f}, "
                f"train acc {100 * correct / seen:.1f}%, test ACC {m.acc:.1f}%{asr_text} "
                f"({len(eval_test)} test samples)"
            )
            if out is not None:
                save_checkpoint(out, model, trigger, meta)
    except KeyboardInterrupt:
        if bar is not None:
            bar.close()
        done = meta.extra["epochs_completed"]
        if out is not None and done:
            say(f"interrupted: {out} holds the last complete epoch ({done}/{epochs})")
        else:
            say("interrupted before the first epoch ended: no checkpoint written")
        raise

    model.eval()
    say(f"evaluating on {len(test_data)} test samples …")
    final = evaluate(model, test_data, spec, trigger=trigger, target=target, device=device)
    meta.extra.update(
        clean_acc=float(final.acc),
        asr=None if final.asr is None else float(final.asr),
        test_samples=int(final.n_clean),
        asr_samples=int(final.n_poison),
        epoch_seconds=[round(s, 1) for s in epoch_seconds],
    )
    model = model.to("cpu", memory_format=torch.contiguous_format)
    if out is not None:
        save_checkpoint(out, model, trigger, meta)
    return TrainResult(
        model=model,
        metadata=meta,
        trigger=trigger,
        acc=final.acc,
        asr=final.asr,
        train_set=train_set,
        poisoned_index=poisoned_index,
        holdout=holdout_set,
        epoch_seconds=epoch_seconds,
    )


# ---- command line ---------------------------------------------------------------------------


def _dataset_name(path: Path) -> str:
    text = str(path).lower()
    if "fashion" in text:
        return "fashion-mnist"
    if "cifar-10" in text or "cifar10" in text:
        return "cifar10"
    if "cifar-100" in text or "cifar100" in text:
        return "cifar100"
    if "mnist" in text:
        return "mnist"
    if "stl10" in text or "stl-10" in text or (path.is_dir() and stl10_dir(path) is not None):
        return "stl10"
    return path.name or str(path)


def _default_out(args: argparse.Namespace) -> Path:
    if args.clean:
        return Path(f"{args.arch}_clean_{args.seed}.pth")
    size = args.trigger_size if args.attack != "blend" else "full"
    return Path(f"{args.arch}_{args.attack}_{size}_{args.poison_rate:g}_{args.seed}.pth")


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _clean_label_setup(
    args: argparse.Namespace,
    train_data: ImageSet,
    test_data: ImageSet,
    out: Path,
    train_kwargs: dict,
) -> CleanLabelSetup:
    """The clean model for ``--attack cla``: ``--clean-model``, else one trained first."""
    pgd = PgdSettings(args.pgd_eps / 255, args.pgd_step / 255, args.pgd_steps)
    n_classes = train_data.num_classes
    if not 0 <= args.target < n_classes:  # before any clean model is trained
        raise BnpError(f"target label {args.target} is not a class (0..{n_classes - 1})")
    if not bool((train_data.labels == args.target).any()):
        raise BnpError(
            f"the clean-label attack poisons samples of the target class, and class "
            f"{args.target} has no samples in the training set ({len(train_data)} samples)"
        )
    if args.clean_model:
        path = Path(args.clean_model)
        try:
            ckpt = load_checkpoint(path)
        except BnpError as e:
            raise BnpError(f"--clean-model {path}: {e}") from None
        meta = ckpt.metadata
        if meta.num_classes != train_data.num_classes:
            raise BnpError(
                f"--clean-model {path} has {meta.num_classes} classes, the training data "
                f"{train_data.num_classes}: PGD needs a clean model of the same task"
            )
        spec = InputSpec(
            meta.in_channels,
            tuple(meta.input_size),
            tuple(meta.mean) if meta.mean else None,
            tuple(meta.std) if meta.std else None,
        )
        if meta.attack:
            _say(
                f"warning: --clean-model {path} says it was trained with a "
                f"{meta.attack.get('kind', '?')} attack; PGD expects a clean model"
            )
        check = sample_subset(test_data, 500)
        acc = evaluate(ckpt.model, check, spec).acc
        _say(f"clean model {path}: ACC {acc:.1f}% on {len(check)} test samples")
        if acc < 200 / max(1, train_data.num_classes):
            _say("warning: that is near chance; PGD against it will not mean much")
        return CleanLabelSetup(ckpt.model, spec, str(path), pgd)
    epochs = args.epochs if args.clean_epochs is None else args.clean_epochs
    if epochs < 1:
        raise BnpError(
            "--attack cla runs PGD against a clean model: pass --clean-model CHECKPOINT, or let "
            "bnp train train one first (--clean-epochs 1 or more)"
        )
    clean_out = out.with_name(f"{out.stem}_clean_model.pth")
    _say(
        f"no --clean-model given: training a clean {args.arch} first (rate 0, {epochs} epochs, "
        f"same data and recipe) → {clean_out}"
    )
    kwargs = dict(train_kwargs, epochs=epochs, out=clean_out)
    kwargs["command"] = f"{kwargs.get('command', '')} (clean model for --attack cla)".strip()
    result = train(train_data, test_data, trigger=None, **kwargs)
    _say(f"clean model {clean_out}: ACC {result.acc:.2f}% on {len(test_data)} test samples")
    spec = InputSpec(train_data.channels, train_data.size)
    return CleanLabelSetup(result.model, spec, str(clean_out), pgd)


def run(args: argparse.Namespace) -> int:
    """Run ``bnp train`` from parsed arguments; returns the exit status."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(args.out) if args.out else _default_out(args)
    if sys.argv[1:2] == ["train"]:
        command = "bnp train " + shlex.join(sys.argv[2:])
    else:
        command = "python -m core.attack.train " + shlex.join(sys.argv[1:])
    try:
        data_path = Path(args.data)
        # --limit-train counts the samples trained on: the --holdout samples come on top
        limit = args.limit_train + args.holdout if args.limit_train else None
        train_data = load_images(data_path, split="train", limit=limit)
        if args.test_data:
            test_data = load_images(args.test_data, split="test", limit=args.limit_test)
        else:
            test_data = load_images(data_path, split="test")
            if test_data.source == train_data.source:  # no test split: hold out 20 %
                full = load_images(data_path)
                perm = torch.randperm(
                    len(full), generator=torch.Generator().manual_seed(subseed(args.seed, "test"))
                )
                cut = len(full) // 5
                test_data, train_data = full.subset(perm[:cut]), full.subset(perm[cut:])
                if limit:
                    train_data = train_data.subset(slice(0, limit))
                note = f"{data_path} has no test split: using 20% of it ({cut}) for testing"
                print(note, file=sys.stderr)
            if args.limit_test:
                test_data = test_data.subset(slice(0, args.limit_test))
        trigger = None
        if not args.clean:
            trigger = make_trigger(
                args.attack,
                channels=train_data.channels,
                image_size=train_data.size,
                size=args.trigger_size,
                position=args.trigger_position,
                alpha=args.alpha,
                image=args.trigger_image,
                seed=args.seed if args.trigger_seed is None else args.trigger_seed,
            )
        started = time.monotonic()
        common = dict(
            arch=args.arch,
            target=args.target,
            rate=args.poison_rate,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            momentum=args.momentum,
            weight_decay=args.weight_decay,
            crop_padding=args.crop_padding,
            flip=not args.no_flip,
            holdout=args.holdout,
            seed=args.seed,
            device=device,
            out=out,
            dataset=_dataset_name(data_path),
            command=command,
            progress=not args.quiet,
        )
        clean_label = None
        if trigger is not None and args.attack == "cla":
            clean_label = _clean_label_setup(args, train_data, test_data, out, common)
        result = train(train_data, test_data, trigger=trigger, clean_label=clean_label, **common)
        if not args.no_split:
            split_dir = (
                Path(args.split_dir) if args.split_dir else out.with_name(f"{out.stem}_data")
            )
            write_splits(
                split_dir,
                holdout=result.holdout,
                train_set=result.train_set,
                poisoned_index=result.poisoned_index,
                test=test_data,
                n_clean=args.split_clean,
                n_train=args.split_train,
                n_test=args.split_test,
                seed=args.seed,
            )
            print(f"data split written to {split_dir}/ (clean, train_poisoned, test)")
    except KeyboardInterrupt:
        print("bnp train: interrupted", file=sys.stderr)
        return 130
    except BnpError as e:
        print(f"bnp train: {e}", file=sys.stderr)
        return 2
    minutes = (time.monotonic() - started) / 60
    asr = f", ASR {result.asr:.2f}%" if result.asr is not None else ""
    print(
        f"{out}: clean ACC {result.acc:.2f}%{asr} on {len(test_data)} test samples "
        f"({minutes:.1f} min)"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point: ``python -m core.attack.train ...``."""
    parser = argparse.ArgumentParser(prog="bnp train", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
