"""The clean-label attack (CLA, Turner et al. 2019) as the papers' code trains it.

Poisoned samples come from the target class only and keep their (true) labels. Each is first
pushed away from its class by PGD against a *clean* model (L∞ ball, untargeted on the true
label), so that its natural features become hard to learn, then the trigger patch is pasted into
all four corners (``core.data.triggers.FourCornerTrigger``): the model learns the trigger as the
easiest evidence for the target class. At test time the trigger alone, without PGD.

PGD is plain torch (a few lines; no dependency): no random start, signed-gradient ascent steps
of ``step`` on the cross-entropy of the true label, each followed by projection onto the ε-ball
around the original image and onto [0, 1].
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.attack.options import PGD_EPS, PGD_STEP, PGD_STEPS
from core.data.images import ImageSet, InputSpec, to_float
from core.data.triggers import Trigger
from core.defense.evaluation import predict
from core.errors import DataError

__all__ = ["PGD_EPS", "PGD_STEP", "PGD_STEPS", "PgdSettings", "pgd_linf", "poison_clean_label"]


@dataclass(frozen=True)
class PgdSettings:
    """L∞ PGD: radius ``eps``, step size ``step``, ``steps`` iterations (the papers' defaults)."""

    eps: float = PGD_EPS
    step: float = PGD_STEP
    steps: int = PGD_STEPS

    def __post_init__(self) -> None:
        if not (0.0 <= self.eps <= 1.0) or self.step < 0 or self.steps < 0:
            raise DataError(
                f"PGD needs 0 ≤ eps ≤ 1, step ≥ 0 and steps ≥ 0, got eps {self.eps}, "
                f"step {self.step}, steps {self.steps}"
            )

    def to_dict(self) -> dict:
        """Plain types for checkpoint metadata."""
        return {
            "norm": "linf",
            "eps": float(self.eps),
            "step": float(self.step),
            "steps": int(self.steps),
            "random_start": False,
            "loss": "untargeted cross-entropy on the true label",
        }


def pgd_linf(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    spec: InputSpec,
    settings: PgdSettings = PgdSettings(),
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 128,
) -> Tensor:
    """Untargeted L∞ PGD on float images in [0, 1]: returns x' with |x' − x|∞ ≤ eps, x' ∈ [0, 1].

    ``spec.prepare`` (channels, size, normalisation) sits between the images and the model and is
    differentiated through, so the perturbation lives in the images' own pixel space. The model
    is used in eval mode (running BatchNorm statistics) and its weights are not changed.
    """
    if images.dim() != 4 or not images.is_floating_point():
        raise DataError("PGD works on float image batches N×C×H×W in [0, 1]")
    was_training = model.training
    model.eval()
    out = torch.empty_like(images)
    try:
        with torch.enable_grad():  # callers may be inside no_grad
            for start in range(0, len(images), batch_size):
                x0 = images[start : start + batch_size].to(device)
                y = labels[start : start + batch_size].to(device)
                x = x0.clone()
                for _ in range(settings.steps):
                    x.requires_grad_(True)
                    loss = F.cross_entropy(model(spec.prepare(x)), y)
                    (grad,) = torch.autograd.grad(loss, x)
                    with torch.no_grad():
                        x = x + settings.step * grad.sign()
                        x = torch.min(torch.max(x, x0 - settings.eps), x0 + settings.eps)
                        x = x.clamp(0.0, 1.0)
                out[start : start + batch_size] = x.detach().to(out.device)
    finally:
        model.train(was_training)
    return out


def poison_clean_label(
    images: ImageSet,
    trigger: Trigger,
    target: int,
    rate: float,
    seed: int,
    *,
    clean_model: nn.Module,
    spec: InputSpec,
    settings: PgdSettings = PgdSettings(),
    device: str | torch.device = "cpu",
    log: Callable[[str], None] | None = None,
) -> tuple[ImageSet, Tensor]:
    """PGD then the trigger on round(rate·N) random samples of class ``target`` (at most all of
    them); labels unchanged. Returns the set (float32 images) and the sorted poisoned indices."""
    if not 0.0 <= rate <= 1.0:
        raise DataError(f"poisoning rate must lie in [0, 1], got {rate}")
    target = int(target)
    if target < 0 or (images.class_names and target >= len(images.class_names)):
        raise DataError(f"target label {target} is not a class (0..{images.num_classes - 1})")
    in_class = (images.labels == target).nonzero().reshape(-1)
    if len(in_class) == 0:
        raise DataError(
            f"the clean-label attack poisons samples of the target class, and class {target} has "
            f"no samples in the training set ({len(images)} samples)"
        )
    wanted = int(round(rate * len(images)))
    k = min(wanted, len(in_class))
    if log is not None and k < wanted:
        log(
            f"clean-label attack: rate {rate:g} asks for {wanted} samples, class {target} has "
            f"{len(in_class)}: poisoning all of them"
        )
    g = torch.Generator().manual_seed(int(seed))
    index = in_class[torch.randperm(len(in_class), generator=g)[:k]].sort().values
    x = to_float(images.images)
    if x is images.images:
        x = x.clone()
    if k:
        adversarial = pgd_linf(
            clean_model, x[index], images.labels[index], spec, settings, device=device
        )
        if log is not None:
            before = (predict(clean_model, x[index], spec, device=device) == target).double()
            after = (predict(clean_model, adversarial, spec, device=device) == target).double()
            log(
                f"clean-label attack: the clean model classifies {100 * after.mean():.1f}% of "
                f"the {k} perturbed samples correctly ({100 * before.mean():.1f}% before PGD)"
            )
        x[index] = trigger.apply(adversarial)
    source = (
        f"{images.source} (poisoned: clean-label {trigger.kind}, rate {rate:g}, target {target})"
    )
    return ImageSet(x, images.labels.clone(), images.class_names, source.strip()), index
