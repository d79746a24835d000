"""Repair beyond pruning, from the analyst's own data: fine-tune while unlearning the backdoor.

Once the poisoned samples are isolated, the field's answer is to unlearn them. Here, on a copy of
the (pruned or unpruned) model, a few epochs of SGD on

- the clean labelled samples under their labels (Fine-Pruning's step), and the clean samples
  stamped with a reconstructed trigger under their *true* labels, where one was found (Neural
  Cleanse / i-BAU: the trigger stops meaning the target) — or, where the unrepaired model's
  outputs are given, distilling those instead (for a stamped sample: the output on its clean
  original). Distilled, the repaired model changes few clean predictions, which is what lets a
  held-out bound on the accuracy cost be tight;
- the suspected poisoned samples pushed away from the target class: the loss −ln(1 − p_target),
  0 once they leave it — Anti-Backdoor Learning's gradient ascent without its divergence.

BatchNorm layers stay in evaluation mode (a few hundred samples would only blur the running
statistics the model was trained with), pruned neurons stay pruned (the mask is written again
after every step), and the run is deterministic for a seed and a thread count. After each epoch
a check on samples it did not train on (`RecoveryCheck`) gives the estimated ASR and accuracy;
the run stops once the estimate reaches the goal with no accuracy lost, and otherwise keeps the
best epoch (within the budget and at the goal, the most accurate; else the lowest estimate); at
least one epoch runs. A small learning rate with clipped gradients: the stamped samples drive
the backdoor neurons far outside their clean range, and large steps there cost clean accuracy
that the few clean samples then win back only slowly.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from core.defense.statistics import CancelCheck, Progress
from core.errors import BnpError, Cancelled
from core.model.masks import PruneMask

EPOCHS = 8
LR = 0.002
BATCH = 64
UNLEARN_BATCH = 16
UNLEARN_WEIGHT = 1.0
CLIP = 1.0  # gradient norm per step
T = 2.0  # distillation temperature

# (model) → (estimated ASR %, clean accuracy %) on samples the recovery does not train on
RecoveryCheck = Callable[[nn.Module], tuple[float, float]]


@dataclass
class RecoveryData:
    """What the recovery trains on: prepared model inputs (on the model's device)."""

    clean_x: torch.Tensor
    clean_y: torch.Tensor
    target: int
    stamped_x: torch.Tensor | None = None  # clean samples carrying a reconstructed trigger
    stamped_y: torch.Tensor | None = None  # ... and their true labels
    unlearn_x: torch.Tensor | None = None  # suspected poisoned samples
    # the unrepaired model's logits of clean_x and of the stamped samples' clean originals:
    # where given, the recovery distils them instead of fitting the labels
    clean_soft: torch.Tensor | None = None
    stamped_soft: torch.Tensor | None = None
    # how many of clean_x's rows are training samples nobody suspected (the last ones), not
    # clean samples: more samples to keep the clean behaviour on
    n_unsuspected: int = 0

    @property
    def n_stamped(self) -> int:
        """Clean samples stamped with the reconstructed trigger (0 without one)."""
        return 0 if self.stamped_x is None else len(self.stamped_x)

    @property
    def n_unlearn(self) -> int:
        """Suspected samples the recovery pushes away from the target."""
        return 0 if self.unlearn_x is None else len(self.unlearn_x)


@dataclass
class Recovery:
    """The recovered model and how it got there."""

    model: nn.Module
    epochs: int  # epochs of the state kept (0: the model as given)
    epochs_run: int
    n_clean: int
    n_stamped: int
    n_unlearn: int
    history: list[dict] = field(default_factory=list)  # per epoch: asr, acc (check part)
    n_unsuspected: int = 0  # of n_clean: training samples nobody suspected

    def describe(self) -> str:
        """E.g. 'recovery: 3 epochs, unlearning 25 suspected samples, 213 stamped clean
        samples'."""
        parts = [f"recovery: {self.epochs} epoch{'s' if self.epochs != 1 else ''}"]
        if self.n_unlearn:
            parts.append(f"unlearning {self.n_unlearn} suspected samples")
        if self.n_stamped:
            parts.append(f"{self.n_stamped} stamped clean samples")
        if self.n_unsuspected:
            parts.append(
                f"{self.n_clean - self.n_unsuspected} clean samples and "
                f"{self.n_unsuspected} unsuspected training samples"
            )
        else:
            parts.append(f"{self.n_clean} clean samples")
        return ", ".join(parts)


def _away_from(logits: torch.Tensor, target: int) -> torch.Tensor:
    """Mean −ln(1 − p_target), computed stably as logsumexp(all) − logsumexp(others): large
    while the samples are classified as the target, 0 once they are not."""
    others = torch.cat([logits[:, :target], logits[:, target + 1 :]], 1)
    return (logits.logsumexp(1) - others.logsumexp(1)).mean()


def _sgd_step(params: list[nn.Parameter], buffers: list, lr: float, beta: float = 0.9) -> None:
    """One step of SGD with momentum `beta`, the update of `torch.optim.SGD(lr=lr,
    momentum=beta)` (no dampening, no weight decay) written out: the optimiser's first use
    imports torch._dynamo, seconds of start-up (about three statistics passes on the shared
    2-core CPU) that a recovery of a few seconds should not pay."""
    with torch.no_grad():
        for i, p in enumerate(params):
            if p.grad is None:
                continue
            if buffers[i] is None:
                buffers[i] = p.grad.detach().clone()
            else:
                buffers[i].mul_(beta).add_(p.grad)
            p.add_(buffers[i], alpha=-lr)


def _epoch_key(asr: float, acc: float, acc_ref: float, goal: float, budget: float):
    """Lower is better: within the budget first, then at the goal; among epochs at the goal
    the higher accuracy, among the others the lower estimate."""
    within = acc >= acc_ref - budget - 1e-9
    above = asr > goal + 1e-9
    return (not within, above, asr if above else -acc, -acc if above else asr)


def recover(
    model: nn.Module,
    mask: PruneMask | None,
    data: RecoveryData,
    *,
    check: RecoveryCheck | None = None,
    acc_reference: float | None = None,
    goal: float = 5.0,
    budget: float = 2.0,
    epochs: int = EPOCHS,
    lr: float = LR,
    batch_size: int = BATCH,
    unlearn_weight: float = UNLEARN_WEIGHT,
    seed: int = 0,
    progress: Progress | None = None,
    cancel: CancelCheck | None = None,
) -> Recovery:
    """A fine-tuned copy of `model` (the `mask` written in and kept) — see the module
    docstring. `check` and `acc_reference` (the unrepaired model's accuracy on the check's
    clean samples) drive early stopping; without them every epoch runs and the last is kept."""
    if epochs < 0 or not math.isfinite(lr) or lr <= 0:
        raise BnpError(f"Recovery needs epochs ≥ 0 and a learning rate > 0 (got {epochs}, {lr}).")
    if len(data.clean_x) == 0:
        raise BnpError("Recovery needs clean labelled samples to train on.")
    mask = mask if mask is not None else PruneMask()
    net = copy.deepcopy(model).eval()
    mask.apply_(net)
    for p in net.parameters():
        p.requires_grad_(True)
    # fresh tensors: inputs made under inference mode cannot be saved for backward
    sup_x = [data.clean_x.detach().clone()]
    sup_y = [data.clean_y.detach().clone()]
    soft = [data.clean_soft] if data.clean_soft is not None else None
    if data.n_stamped:
        sup_x.append(data.stamped_x.detach().clone())
        sup_y.append(data.stamped_y.detach().clone())
        if soft is not None and data.stamped_soft is not None:
            soft.append(data.stamped_soft)
        else:
            soft = None
    x, y = torch.cat(sup_x), torch.cat(sup_y).to(sup_x[0].device)
    # distillation targets: the unrepaired model's class probabilities (temperature T)
    teacher = (torch.cat(soft).detach().to(x.device) / T).softmax(1) if soft else None
    unlearn = data.unlearn_x.detach().clone() if data.n_unlearn else None
    g = torch.Generator().manual_seed(int(seed))
    steps = max(1, math.ceil(len(x) / batch_size))
    total = max(1, epochs * steps)
    result = Recovery(
        net, 0, 0, len(data.clean_x), data.n_stamped, data.n_unlearn,
        n_unsuspected=data.n_unsuspected,
    )  # fmt: skip
    best_key, best_state = None, None
    if check is not None:  # recorded, not kept: a recovery trains at least one epoch
        asr, acc = check(net)
        ref = acc if acc_reference is None else acc_reference
        result.history.append({"epoch": 0, "asr": asr, "acc": acc})
    params = [p for p in net.parameters()]
    momentum: list[torch.Tensor | None] = [None] * len(params)
    done = 0
    with torch.enable_grad():
        for epoch in range(1, epochs + 1):
            order = torch.randperm(len(x), generator=g)
            u_order = torch.randperm(len(unlearn), generator=g) if unlearn is not None else None
            for step in range(steps):
                if cancel is not None and cancel():
                    raise Cancelled("Recovery cancelled.")
                rows = order[step * batch_size : (step + 1) * batch_size].to(x.device)
                logits = net(x[rows])
                if teacher is not None:  # keep the clean behaviour: fewer changed predictions
                    loss = (
                        T
                        * T
                        * nn.functional.kl_div(
                            (logits / T).log_softmax(1), teacher[rows], reduction="batchmean"
                        )
                    )
                else:
                    loss = nn.functional.cross_entropy(logits, y[rows])
                if u_order is not None:
                    start = (step * UNLEARN_BATCH) % len(unlearn)
                    u_rows = u_order[start : start + UNLEARN_BATCH].to(unlearn.device)
                    loss = loss + unlearn_weight * _away_from(net(unlearn[u_rows]), data.target)
                for p in params:
                    p.grad = None
                loss.backward()
                # a trigger drives backdoor neurons far outside their clean range: bounded steps
                nn.utils.clip_grad_norm_(params, CLIP)
                _sgd_step(params, momentum, lr)
                mask.apply_(net)  # pruned neurons stay pruned
                done += 1
                if progress is not None:
                    progress(min(done, total - 1), total)
            result.epochs_run = epoch
            if check is None:
                result.epochs = epoch
                continue
            asr, acc = check(net)
            result.history.append({"epoch": epoch, "asr": asr, "acc": acc})
            key = _epoch_key(asr, acc, ref, goal, budget)
            if best_key is None or key < best_key:
                best_key, best_state, result.epochs = key, copy.deepcopy(net.state_dict()), epoch
            if not key[1] and acc >= ref - 1e-9:
                break  # at the goal with no accuracy lost: the least training that does it
    if best_state is not None:
        net.load_state_dict(best_state)
    for p in net.parameters():
        p.requires_grad_(False)
    if progress is not None:
        progress(total, total)
    return result
