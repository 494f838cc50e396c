"""Training and evaluation loops shared by the scripts in train/ (plain functions, no framework)."""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

import torch
from torch import Tensor, nn
from tqdm import tqdm

from revnet_app.train import distributed, loaders, methods
from revnet import metrics
from revnet.attacks.fgs import _check_clip

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
                    min_acc_ratio: float = MIN_ACC_RATIO, max_ce: Optional[float] = None) -> Optional[str]:
    """Why an epoch counts as diverged (``None`` if it does not): its mean clean cross-entropy exceeds
    :func:`max_train_ce`, or its test accuracy is below ``min_acc_ratio`` × the reference's on the same images.
    The Deep Defense regularizer itself is not judged (its exponent is bounded, so a huge but finite value is
    legitimate for a misclassified input near the training mean)."""
    if max_ce is not None:
        if stats.get("train_ce", 0.0) > max_ce:
            return f"the mean training cross-entropy {stats['train_ce']:.3g} exceeds --max-train-ce {max_ce:.3g}"
    elif stats.get("train_ce", 0.0) > max_train_ce(num_classes):
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


class Objective(nn.Module):
    """The whole training loss of one batch (``method.loss``: cross-entropy, and for the Deep Defense methods the
    regularizer through the explicit DeepFool recursion) as one module's ``forward``.

    This is the module ``DistributedDataParallel`` wraps (``World.wrap``): DDP prepares its gradient all-reduce
    in the wrapped module's ``forward``, so wrapping the network alone and then calling ``net.trace`` /
    ``net.reverse`` (which are not ``forward``) would leave the regularizer's path outside it. Here every use of
    the weights, forward and reverse, happens inside the one ``forward`` DDP sees. ``forward(x, y)`` returns
    ``(loss, correct, Σ‖Δx‖/‖x‖, clean CE)`` (a :class:`~revnet_app.train.methods.StepOutput`'s fields); a rank
    whose share of a global batch is empty (fewer images than ranks) returns a zero loss that still touches every
    parameter, so it joins the all-reduce."""

    def __init__(self, net: nn.Module, method: methods.Method,
                 generator: Optional[torch.Generator] = None) -> None:
        super().__init__()
        self.net, self.method, self.generator = net, method, generator

    def forward(self, xb: Tensor, yb: Tensor) -> tuple[Tensor, float, float, float]:
        if len(yb) == 0:
            return sum(p.sum() for p in self.net.parameters() if p.requires_grad) * 0.0, 0.0, 0.0, 0.0
        out = self.method.loss(self.net, xb, yb, self.generator)
        return out.loss, out.correct, out.ratio, out.ce


def tensor_batches(x: Tensor, y: Tensor, batch_size: int,
                   generator: Optional[torch.Generator]) -> list[tuple[Tensor, Tensor]]:
    """``(x, y)`` in ``batch_size`` chunks, shuffled with ``generator`` (drawn now, before any draw of the epoch
    itself such as Parseval's rows), as :func:`train_one_epoch`'s ``batches``."""
    if len(x) != len(y):
        raise ValueError(f"{len(x)} training images but {len(y)} labels; pass one label per image.")
    return [(x[idx], y[idx]) for idx in batches(len(y), batch_size, generator)]


def train_one_epoch(
    net: nn.Module,
    method: methods.Method,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[tuple[Tensor, Tensor]],
    *,
    generator: Optional[torch.Generator] = None,
    world: Optional[distributed.World] = None,
    amp: bool = False,
    progress: Optional[EpochProgress] = None,
) -> dict[str, float]:
    """One epoch of ``method`` (a :class:`~revnet_app.train.methods.Method`) over ``batches``: an iterable of
    preprocessed ``(x_b, y_b)`` on the training device (a ``DataLoader`` mapped to the device, or
    :func:`tensor_batches`). ``generator`` is the epoch's: the method draws its noise from it (Parseval's rows
    after every optimizer step). ``progress`` (:class:`EpochProgress`): the bar, BatchNorm mode and mid-epoch
    resume. Returns the epoch's mean loss, training accuracy (on the clean inputs), mean clean cross-entropy
    (``train_ce``) and, for the Deep Defense methods, the mean ‖Δx‖/‖x‖. Raises :class:`NonFiniteLossError` at
    the first NaN/inf loss (before the optimizer step).

    BatchNorm (``progress.freeze_bn``, fine-tuning, every method): BatchNorm layers stay in eval mode, with frozen
    running statistics, while the rest trains (Dropout included); BatchNorm reverses only with frozen
    statistics. Reference training from scratch passes ``freeze_bn=False`` (train-mode BatchNorm, as usual).

    ``world`` (several processes under ``torchrun``): ``batches`` are this rank's shares of the global batches
    (``loaders.EpochBatches``) and the objective runs inside ``DistributedDataParallel`` (see :class:`Objective`).
    Loss scale: DDP averages the ranks' gradients, so each rank's loss (a mean over its share) is weighted by
    ``world_size · n_rank / n_global``; the gradient is then that of the mean over the whole global batch, the
    single-process gradient, for any number of ranks and uneven shares (the regularizer is a per-sample sum
    divided by the batch size, like the cross-entropy, so it scales the same way). A NaN/inf loss on any rank
    stops every rank at the same step. The returned means are over every rank's images. ``amp``: the objective
    runs under bf16 autocast (convolutions and matrix products; the DeepFool step's norms and divisions, and the
    regularizer's exp, stay in float32).
    """
    world = world or distributed.World()
    progress = progress or EpochProgress()
    set_train_mode(net, freeze_bn=progress.freeze_bn)
    num_batches = progress.num_batches if progress.num_batches is not None else (
        len(batches) if hasattr(batches, "__len__") else None)
    totals = dict(progress.totals) if progress.totals else {"loss": 0.0, "correct": 0.0, "ratio": 0.0, "ce": 0.0,
                                                            "seen": 0}
    objective = world.wrap(Objective(net, method, generator))
    device_type = next(net.parameters()).device.type
    desc = progress.desc
    bar = tqdm(batches, desc=desc, leave=False, disable=not show_progress(progress.bar), total=num_batches)
    for step, (xb, yb) in enumerate(bar, progress.start_step + 1):
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=amp):
            loss, logits_correct, ratio, ce = objective(xb, yb)
        n = len(yb)
        finite = bool(torch.isfinite(loss))
        n_global, *bad = world.sum([n] + [0.0 if finite or r != world.rank else 1.0 for r in range(world.size)])
        if any(bad):
            if not world.distributed:
                raise NonFiniteLossError(f"the training loss is {loss.item()} at a batch of {desc}")
            ranks = ", ".join(str(r) for r, b in enumerate(bad) if b)
            raise NonFiniteLossError(f"the training loss is NaN or infinite on rank {ranks} at a batch of {desc}")
        optimizer.zero_grad(set_to_none=True)
        (loss * (world.size * n / n_global) if world.distributed else loss).backward()
        optimizer.step()
        method.after_step(net, generator)
        totals["loss"] += loss.item() * n
        totals["correct"] += logits_correct
        totals["ratio"] += ratio
        totals["ce"] += ce * n
        totals["seen"] += n
        seen = totals["seen"]
        bar.set_postfix(
            loss=f"{totals['loss'] / seen:.4f}", acc=f"{totals['correct'] / seen:.4f}",
            **({"dx/x": f"{totals['ratio'] / seen:.4f}"} if method.reports_ratio else {}),
        )
        if progress.on_step is not None:
            progress.on_step(step, totals)
    keys = ("loss", "correct", "ratio", "ce", "seen")
    total = dict(zip(keys, world.sum([totals[k] for k in keys])))
    seen = max(total["seen"], 1)
    return {
        "train_loss": total["loss"] / seen,
        "train_acc": total["correct"] / seen,
        "train_ce": total["ce"] / seen,
        **({"train_ratio": total["ratio"] / seen} if method.reports_ratio else {}),
    }


@dataclass
class EpochProgress:
    """How :func:`train_one_epoch` shows and resumes an epoch: the bar's label (``desc``, ``bar``: shown when
    True and a terminal is attached), the number of batches for the bar, ``freeze_bn`` (see there), and a
    mid-epoch resume: ``start_step`` is the index of the first batch of ``batches`` within the epoch and
    ``totals`` the running sums saved with it; ``on_step(step, totals)`` is called after every optimizer step
    (``step`` counts from 1 over the whole epoch)."""

    desc: str = "train"
    bar: bool = True
    num_batches: Optional[int] = None
    freeze_bn: bool = True
    start_step: int = 0
    totals: Optional[dict[str, float]] = None
    on_step: Optional[Callable[[int, dict[str, float]], None]] = None


def fgs_accuracy_stream(net: nn.Module, data, eps: float, *, clip: Optional[tuple[float, float]] = None,
                        signs: Optional[list[Tensor]] = None, world: Optional[distributed.World] = None) -> float:
    """FGS accuracy at ``eps`` over a re-iterable set of batches ``(x, y)`` (a ``loaders.EvalSet``), one batch in
    memory at a time; ``signs``: the batches' ``sign(∇ₓ CE)`` if already known (int8), else computed per batch.
    The same chunks give the same number as ``revnet.metrics.fgs_accuracy`` on the whole tensor. ``world``: each
    rank holds its shard of the images and the counts are summed over the ranks (the global accuracy)."""
    clip = _check_clip(clip)
    total = n = 0
    for j, (xb, yb) in enumerate(data):
        sb = signs[j].to(xb.dtype) if signs is not None else metrics.fgs_signs(net, xb, yb)
        total += metrics.correct_at_step(net, xb, yb, eps * sb, clip)
        n += len(yb)
    total, n = (world or distributed.World()).sum([total, n])
    return total / n


def evaluate(
    net: nn.Module,
    x,
    y: Optional[Tensor] = None,
    *,
    eps_ref: Optional[float] = None,
    find_eps_ref: bool = False,
    max_iter: int = 50,
    overshoot: float = 0.02,
    clip: Optional[tuple[float, float]] = None,
    batch_size: int = 500,
    candidates: Optional[int] = None,
    progress: bool = False,
    desc: str = "evaluation",
    world: Optional[distributed.World] = None,
) -> dict[str, Any]:
    """Accuracy, DeepFool ρ₂ (with fooling rate and mean iterations), optionally the model's own ε_ref, and FGS
    accuracy at 0.2/0.5/1.0·``eps_ref`` (the given one, else the model's own when ``find_eps_ref``).

    ``x`` is a tensor of preprocessed images (with labels ``y``, chunks of ``batch_size``) or a
    ``loaders.EvalSet`` (batches streamed from a ``DataLoader``; ``y`` unused). The FGS gradient signs are kept
    for the bisection only if the set is held in memory (``EvalSet.cached``); else each bisection step reads the
    data again and recomputes them, so memory stays bounded by the batch size. The same chunks give the same
    numbers either way. ``candidates``: DeepFool over the top-k classes only (ImageNet: 10). Progress bars with
    an ETA (``progress`` and stderr a terminal): one over the batches of the first pass, one over the bisection.

    ``world`` (several processes): ``x`` is this rank's shard (``distributed.shard``, every image on one rank) and
    every count is summed over the ranks before it becomes a number, each step of the ε_ref bisection included,
    so every rank returns the global metrics.
    """
    world = world or distributed.World()
    net.eval()
    start = time.perf_counter()
    data = loaders.TensorEvalSet(x, y, batch_size) if isinstance(x, Tensor) else x
    n = int(world.sum([len(data)])[0])
    if n == 0:
        raise ValueError("evaluate: no images to evaluate (the test set or --eval-samples is empty).")
    need_fgs = find_eps_ref or eps_ref is not None
    clip = _check_clip(clip)
    keep_signs = need_fgs and data.cached(extra_bytes_per_image=0)
    correct, ratio_sum, fooled, steps, absmax, signs, dtype = 0, 0.0, 0, 0, 0.0, [], torch.float32
    bar = tqdm(data, desc=f"{desc}: accuracy, DeepFool", leave=False, total=data.num_batches,
               disable=not show_progress(progress))
    for i, (xb, yb) in enumerate(bar):
        if i == 0:  # with the one-line checks (network, input shape, labels, NaN weights)
            correct += round(metrics.network_accuracy(net, xb, yb, batch_size=len(xb)) * len(xb))
        else:
            with torch.no_grad():
                correct += int((net(xb).argmax(1) == yb).sum())
        r, f, k = metrics.deepfool_batch_sums(net, xb, max_iter=max_iter, overshoot=overshoot, candidates=candidates)
        ratio_sum, fooled, steps = ratio_sum + r, fooled + f, steps + k
        dtype = xb.dtype
        if need_fgs:
            absmax = max(absmax, xb.abs().max().item())
            if keep_signs:
                signs.append(metrics.fgs_signs(net, xb, yb).to(torch.int8))
    correct, ratio_sum, fooled, steps = world.sum([correct, ratio_sum, fooled, steps])
    absmax = world.max(absmax)
    out: dict[str, Any] = {"n": n, "acc": correct / n, "rho2": ratio_sum / n, "fooling_rate": fooled / n,
                           "mean_iterations": steps / n}

    def fgs_acc(eps: float) -> float:
        return fgs_accuracy_stream(net, data, eps, clip=clip, signs=signs if keep_signs else None, world=world)

    if find_eps_ref:
        with tqdm(desc=f"{desc}: eps_ref bisection", leave=False, unit="step",
                  disable=not show_progress(progress)) as ebar:
            def tick(lo: float, hi: float) -> None:
                ebar.update(1)
                ebar.set_postfix(lo=f"{lo:.4g}", hi=f"{hi:.4g}")
            out["own_eps_ref"] = metrics.bisect_eps_ref(fgs_acc, out["acc"], absmax, dtype, progress=tick)
    eps = eps_ref if eps_ref is not None else out.get("own_eps_ref")
    if eps is not None:
        out["eps_ref_used"] = eps
        for frac in FRACTIONS:
            out[f"fgs_acc@{frac}"] = fgs_acc(frac * eps)
    out["eval_seconds"] = time.perf_counter() - start
    return out


def train_reference(
    net: nn.Module,
    x: Optional[Tensor],
    y: Optional[Tensor],
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    progress: bool = True,
    epoch_batches: Optional[Callable[[int], tuple[Iterable[tuple[Tensor, Tensor]], int, torch.Generator]]] = None,
    world: Optional[distributed.World] = None,
) -> list[dict[str, float]]:
    """Plain cross-entropy training: SGD with momentum, lr halved for the last 20% of the epochs; on the tensors
    ``(x, y)``, or on ``epoch_batches(epoch)`` = ``(batches, number of batches, generator)`` for epoch 0, 1, …
    (a ``DataLoader`` whose order is drawn from ``seed * 1000 + epoch``, as for the tensors). ``world``: every
    rank trains on its shares of the global batches through DDP; train-mode BatchNorm statistics are rank 0's
    at the end (broadcast), so every rank holds the same reference."""
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    drop = max(1, int(round(0.8 * epochs)))
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[drop], gamma=0.5)
    log = []
    for epoch in range(epochs):
        if epoch_batches is None:
            gen = torch.Generator().manual_seed(seed * 1000 + epoch)
            batches_, num = tensor_batches(x, y, batch_size, gen), None
        else:
            batches_, num, gen = epoch_batches(epoch)
        stats = train_one_epoch(
            net, methods.Clean({}), optimizer, batches_, generator=gen, world=world,
            progress=EpochProgress(desc=f"reference {epoch + 1}/{epochs}", bar=progress, num_batches=num,
                                   freeze_bn=False),
        )
        scheduler.step()
        log.append({"epoch": epoch + 1, **stats})
    (world or distributed.World()).broadcast_state(net)
    net.eval()
    return log
