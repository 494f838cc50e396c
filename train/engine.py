"""Training and evaluation loops shared by the scripts in train/ (plain functions, no framework)."""

from __future__ import annotations

import math
import sys
import time
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

import revnet
from revnet import baselines, metrics
from revnet.losses import deep_defense_loss

FRACTIONS = (0.2, 0.5, 1.0)


def show_progress(progress: bool) -> bool:
    """Whether to draw tqdm bars: ``progress`` and stderr is a terminal (a log file would get a line per refresh)."""
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(progress and isatty is not None and isatty())


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


MIN_ACC_RATIO = 0.8  # an epoch below 80% of the reference's accuracy has collapsed (committed runs: >= 0.906)


def max_train_ce(num_classes: int) -> float:
    """The largest mean training cross-entropy of a healthy run: 10× that of a uniform guess, 10·ln(C)."""
    return 10.0 * math.log(num_classes)


def collapse_reason(stats: dict[str, Any], acc: float, ref_acc: float, num_classes: int,
                    min_acc_ratio: float = MIN_ACC_RATIO) -> Optional[str]:
    """Why an epoch counts as diverged (``None`` if it does not): its mean clean cross-entropy exceeds
    :func:`max_train_ce`, or its test accuracy is below ``min_acc_ratio`` × the reference's on the same images.
    The Deep Defense regularizer itself is not judged (its exponent is bounded, so a huge but finite value is
    legitimate for a misclassified input near the training mean)."""
    if stats.get("train_ce", 0.0) > max_train_ce(num_classes):
        return (f"the mean training cross-entropy {stats['train_ce']:.3g} exceeds 10·ln({num_classes}) = "
                f"{max_train_ce(num_classes):.3g}")
    if acc < min_acc_ratio * ref_acc:
        return (f"test accuracy {acc:.4f} fell below {min_acc_ratio:g} × the reference's {ref_acc:.4f} "
                f"(= {min_acc_ratio * ref_acc:.4f})")
    return None


def set_train_mode(net: nn.Module, *, freeze_bn: bool) -> None:
    """``net.train()``, then BatchNorm layers back to eval mode (frozen statistics) if ``freeze_bn``."""
    net.train()
    if freeze_bn:
        for module in net.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


def batches(n: int, batch_size: int, generator: Optional[torch.Generator]) -> list[Tensor]:
    """Index batches over ``n`` items; shuffled when a generator is given."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    return list(order.split(batch_size))


def batch_loss(
    net: nn.Module, xb: Tensor, yb: Tensor, method: str, hp: dict[str, Any]
) -> tuple[Tensor, float, float, float]:
    """The training loss of one batch for ``method``, the number of correct clean predictions, for the
    Deep Defense methods the summed ‖Δx‖/‖x‖ (else NaN), and the clean cross-entropy (the batch mean).

    ``hp`` holds the method's hyper-parameters: ``lmbd, c, d, max_iter, overshoot, reg_layers`` (Deep Defense),
    ``fgs_eps, alpha, clip`` (FGS). ``clean``, ``advtrain-deepfool`` (whose DeepFool set the caller passes as the
    data) and ``parseval`` (whose retraction follows the optimizer step) use the plain cross-entropy.
    """
    if method in ("deepdefense", "deepdefense+fgs"):
        with_fgs = method == "deepdefense+fgs"
        loss, info = deep_defense_loss(
            net, xb, yb, lmbd=hp["lmbd"], c=hp["c"], d=hp["d"], max_iter=hp["max_iter"], overshoot=hp["overshoot"],
            reg_layers=hp.get("reg_layers"), ce_weight=hp["alpha"] if with_fgs else 1.0,
        )
        if with_fgs:
            x_fgs = revnet.fgs_perturb(net, xb, yb, hp["fgs_eps"], clip=hp.get("clip"))
            loss = loss + (1.0 - hp["alpha"]) * F.cross_entropy(net(x_fgs), yb)
        return loss, info.correct.float().sum().item(), info.ratio.sum().item(), info.ce.item()
    if method == "advtrain-fgs":
        loss, logits = baselines.fgs_adversarial_loss(net, xb, yb, eps=hp["fgs_eps"], alpha=hp["alpha"],
                                                      clip=hp.get("clip"))
        ce = F.cross_entropy(logits.detach(), yb).item()
    elif method in ("clean", "advtrain-deepfool", "parseval"):
        logits = net(xb)
        loss = F.cross_entropy(logits, yb)
        ce = loss.item()
    else:
        raise ValueError(f"unknown method {method!r}")
    return loss, (logits.detach().argmax(1) == yb).float().sum().item(), math.nan, ce


def train_one_epoch(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: Tensor,
    y: Tensor,
    *,
    method: str,
    batch_size: int,
    generator: torch.Generator,
    lmbd: float = 15.0,
    c: float = 25.0,
    d: float = 5.0,
    max_iter: int = 5,
    overshoot: float = 0.02,
    reg_layers: Optional[list[str]] = None,
    fgs_eps: float = 0.1,
    alpha: float = 0.5,
    clip: Optional[tuple[float, float]] = None,
    parseval_beta: float = 1e-4,
    parseval_fraction: float = 0.3,
    desc: str = "train",
    progress: bool = True,
    freeze_bn: bool = True,
) -> dict[str, float]:
    """One epoch over ``(x, y)`` (preprocessed, on the training device) with ``method`` (see :func:`batch_loss`).

    Parseval training retracts the weights after every optimizer step, drawing its rows from ``generator``.
    Returns the epoch's mean loss, training accuracy (on the clean inputs), mean clean cross-entropy
    (``train_ce``) and, for the Deep Defense methods, the mean ‖Δx‖/‖x‖. Raises :class:`NonFiniteLossError` at the first NaN/inf loss (before the optimizer step).

    ``freeze_bn`` (fine-tuning, every method): BatchNorm layers stay in eval mode, with frozen running statistics,
    while the rest trains (Dropout included); BatchNorm reverses only with frozen statistics. Reference training
    from scratch passes ``False`` (train-mode BatchNorm, as usual).
    """
    set_train_mode(net, freeze_bn=freeze_bn)
    hp = dict(lmbd=lmbd, c=c, d=d, max_iter=max_iter, overshoot=overshoot, reg_layers=reg_layers,
              fgs_eps=fgs_eps, alpha=alpha, clip=clip)
    dd = method in ("deepdefense", "deepdefense+fgs")
    parseval = baselines.parseval_weights(net) if method == "parseval" else None
    if len(x) != len(y):
        raise ValueError(f"{len(x)} training images but {len(y)} labels; pass one label per image.")
    totals = {"loss": 0.0, "correct": 0.0, "ratio": 0.0, "ce": 0.0, "seen": 0}
    bar = tqdm(batches(len(y), batch_size, generator), desc=desc, leave=False, disable=not show_progress(progress))
    for idx in bar:
        xb, yb = x[idx], y[idx]
        loss, logits_correct, ratio, ce = batch_loss(net, xb, yb, method, hp)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"the training loss is {loss.item()} at a batch of {desc}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if parseval is not None:
            baselines.parseval_retraction_(parseval, beta=parseval_beta, fraction=parseval_fraction,
                                           generator=generator)
        n = len(yb)
        totals["loss"] += loss.item() * n
        totals["correct"] += logits_correct
        totals["ratio"] += ratio
        totals["ce"] += ce * n
        totals["seen"] += n
        seen = totals["seen"]
        bar.set_postfix(
            loss=f"{totals['loss'] / seen:.4f}", acc=f"{totals['correct'] / seen:.4f}",
            **({"dx/x": f"{totals['ratio'] / seen:.4f}"} if dd else {}),
        )
    seen = max(totals["seen"], 1)
    return {
        "train_loss": totals["loss"] / seen,
        "train_acc": totals["correct"] / seen,
        "train_ce": totals["ce"] / seen,
        **({"train_ratio": totals["ratio"] / seen} if dd else {}),
    }


def evaluate(
    net: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps_ref: Optional[float] = None,
    find_eps_ref: bool = False,
    max_iter: int = 50,
    overshoot: float = 0.02,
    clip: Optional[tuple[float, float]] = None,
    batch_size: int = 500,
) -> dict[str, Any]:
    """Accuracy, DeepFool ρ₂ (with fooling rate and mean iterations), optionally the model's own ε_ref, and FGS
    accuracy at 0.2/0.5/1.0·``eps_ref`` (the given one, else the model's own when ``find_eps_ref``)."""
    net.eval()
    start = time.perf_counter()
    out: dict[str, Any] = {"n": len(y), "acc": metrics.network_accuracy(net, x, y, batch_size=batch_size)}
    rob = metrics.deepfool_robustness(net, x, max_iter=max_iter, overshoot=overshoot, batch_size=batch_size)
    out.update({"rho2": rob["rho2"], "fooling_rate": rob["fooling_rate"], "mean_iterations": rob["mean_iterations"]})
    if find_eps_ref:
        out["own_eps_ref"] = metrics.eps_ref(net, x, y, batch_size=batch_size, clip=clip)
    eps = eps_ref if eps_ref is not None else out.get("own_eps_ref")
    if eps is not None:
        out["eps_ref_used"] = eps
        for frac in FRACTIONS:
            out[f"fgs_acc@{frac}"] = metrics.fgs_accuracy(net, x, y, frac * eps, batch_size=batch_size, clip=clip)
    out["eval_seconds"] = time.perf_counter() - start
    return out


def train_reference(
    net: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    progress: bool = True,
) -> list[dict[str, float]]:
    """Plain cross-entropy training: SGD with momentum, lr halved for the last 20% of the epochs."""
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    drop = max(1, int(round(0.8 * epochs)))
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[drop], gamma=0.5)
    log = []
    for epoch in range(epochs):
        gen = torch.Generator().manual_seed(seed * 1000 + epoch)
        stats = train_one_epoch(
            net, optimizer, x, y, method="clean", batch_size=batch_size, generator=gen,
            desc=f"reference {epoch + 1}/{epochs}", progress=progress, freeze_bn=False,
        )
        scheduler.step()
        log.append({"epoch": epoch + 1, **stats})
    net.eval()
    return log
