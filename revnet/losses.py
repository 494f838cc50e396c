"""The Deep Defense loss (Yan, Guo & Zhang, NeurIPS 2018, eq. 6) on any revnet network.

::

    L = CE(f(x), y) + λ/N · [ Σ_{correct} exp(−c·‖Δx‖₂/‖x‖₂) + Σ_{wrong} exp(d·‖Δx‖₂/‖x‖₂) ]

(the one departure: an exponent above 20 is bounded smoothly by 30, see :func:`bounded_exponent`, so the loss
and its gradients stay finite for every finite input; ‖x‖ is floored at ``finfo(dtype).eps²``)

* ``CE`` is the cross-entropy averaged over the batch of ``N`` samples.
* "correct": the prediction at the clean ``x`` equals ``y``; ``Δx`` is the untargeted DeepFool perturbation.
  "wrong": ``Δx`` is the targeted DeepFool perturbation that moves ``x`` to its ground-truth class ``y``.
  Both run with ``differentiable=True``, so the gradient reaches the weights through the whole recursion.
* ``‖·‖₂`` are per-sample L2 norms over all non-batch dimensions; ``‖x‖₂`` is the norm of the network input
  (after whatever preprocessing the caller applied).

``reg_layers`` restricts the regularizer's gradient to some layers (the paper's Figure 4): the regularizer is
computed with every other parameter detached, through :func:`torch.func.functional_call`, which swaps the
parameters only for the duration of the call; the cross-entropy's gradient reaches every layer.
"""

from __future__ import annotations

import warnings

from typing import NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import (check_batch, check_classes, check_label_range, check_labels, check_network, check_nonnegative,
                      check_positive_int, norm_floor)
from .attacks.deepfool import deepfool, deepfool_from_trace
from .layers.protocol import noise_of


class DeepDefenseInfo(NamedTuple):
    ce: Tensor  # () the batch-mean cross-entropy, detached
    reg: Tensor  # () the regularizer before λ (summed terms / N), detached
    ratio: Tensor  # (N,) ‖Δx‖₂ / ‖x‖₂, detached
    correct: Tensor  # (N,) bool: clean prediction == y
    success: Tensor  # (N,) bool: DeepFool reached its goal within max_iter
    iterations: Tensor  # (N,) int64: DeepFool steps


class _DeepFoolCall(nn.Module):
    """A temporary wrapper so ``functional_call`` can run DeepFool on ``net`` with swapped parameters."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor, target: Tensor, max_iter: int, overshoot: float, early_stop: bool,
                class_chunk: Optional[int], noise: object, candidates: Optional[int], box=None):
        return deepfool(self.net, x, target=target, max_iter=max_iter, overshoot=overshoot, differentiable=True,
                        early_stop=early_stop, class_chunk=class_chunk, noise=noise, candidates=candidates, box=box)


def _check_reg_layers(net: nn.Module, reg_layers: Sequence[str]) -> set[str]:
    if isinstance(reg_layers, str):
        raise ValueError(
            f"reg_layers must be a list of module names such as ['0', '3'] or ['layer3.1.conv2'], got the string "
            f"{reg_layers!r}.")
    with_params = [name for name, m in net.named_modules() if name and any(True for _ in m.parameters(recurse=False))]
    names = {name for name, _ in net.named_modules() if name}
    chosen = {str(name) for name in reg_layers}
    unknown = sorted(chosen - names)
    if unknown:
        raise ValueError(
            f"reg_layers {unknown} are not modules of the network; its modules with parameters are {with_params}.")
    return chosen


def _in_chosen(param_name: str, chosen: set[str]) -> bool:
    """True if the parameter ``a.b.weight`` belongs to a chosen module (``a.b`` or ``a``)."""
    parts = param_name.split(".")[:-1]
    return any(".".join(parts[:i]) in chosen for i in range(1, len(parts) + 1))


def deep_defense_loss(
    net: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    lmbda: float = 15.0,
    c: float = 25.0,
    d: float = 5.0,
    max_iter: int = 5,
    overshoot: float = 0.02,
    reg_layers: Optional[Sequence[str]] = None,
    ce_weight: float = 1.0,
    early_stop: bool = True,
    class_chunk: Optional[int] = None,
    candidates: Optional[int] = None,
    lmbd: Optional[float] = None,
    box: Optional[tuple[Tensor, Tensor]] = None,
) -> tuple[Tensor, DeepDefenseInfo]:
    """The Deep Defense loss (a scalar with a graph) and a :class:`DeepDefenseInfo`.

    Args:
        net: a revnet network mapping ``x (N, *in)`` to logits ``(N, C)``.
        x, y: inputs ``(N, *in)`` (float32/float64) and integer labels ``(N,)``.
        lmbda, c, d: λ, c and d of eq. 6 (the paper's MNIST values by default): finite numbers >= 0 (the paper
            has c, d > 0; 0 is the limit where the regularizer's terms are constant, λ = 0 turns it off).
        max_iter, overshoot: DeepFool's settings during training.
        reg_layers: dotted names of modules of ``net`` (children such as ``["0", "3"]`` or nested ones such
            as ``["layer3.1.conv2"]``) whose parameters receive the regularizer's gradient; ``None``: all.
        ce_weight: weight of the clean cross-entropy (1 in eq. 6; ``α`` when another term, e.g. the FGS
            examples' cross-entropy in :mod:`revnet.baselines`, is added by the caller).
        candidates: correctly classified samples: DeepFool considers only the top-``candidates`` classes of the
            clean logits (e.g. 10 on ImageNet, so training does not reverse 999 rows per sample); ``None``: all.
            Misclassified samples are attacked towards their label, whatever this is.
        lmbd: deprecated alias of ``lmbda`` (a ``DeprecationWarning``; removed after 0.2).
        box: ``(lo, hi)``: the regularizer's DeepFool keeps ``x + Δx`` in this range (the valid pixels in the
            network's input space), with the active-set step of :mod:`revnet.attacks.deepfool`; ``None``: the
            paper's unconstrained DeepFool.
    """
    check_batch(x)
    check_network(net, x)
    check_labels(y, x)
    if lmbd is not None:  # the keyword's name until 0.1: the command line always said --lmbda
        warnings.warn("deep_defense_loss(lmbd=...) is deprecated; use lmbda= (the name of the --lmbda flag).",
                      DeprecationWarning, stacklevel=2)
        lmbda = lmbd
    for value, name in ((lmbda, "lmbda"), (c, "c"), (d, "d"), (ce_weight, "ce_weight"), (overshoot, "overshoot")):
        check_nonnegative(value, name)
    check_positive_int(max_iter, "max_iter")
    y = y.to(device=x.device, dtype=torch.long)
    chosen = None if reg_layers is None else _check_reg_layers(net, reg_layers)

    if chosen is None:  # one clean trace feeds both the cross-entropy and DeepFool
        logits, tape = net.trace(x)
        correct, target = _check_classes(logits, y)
        delta, info = deepfool_from_trace(
            net, x, logits, tape, target=target, max_iter=max_iter, overshoot=overshoot, differentiable=True,
            early_stop=early_stop, class_chunk=class_chunk, candidates=candidates, box=box,
        )
    else:
        logits, tape = net.trace(x)  # the clean trace: its Dropout masks are DeepFool's too
        correct, target = _check_classes(logits, y)
        params = {"net." + name: p if _in_chosen(name, chosen) else p.detach() for name, p in net.named_parameters()}
        delta, info = torch.func.functional_call(
            _DeepFoolCall(net), params,
            (x, target, max_iter, overshoot, early_stop, class_chunk, noise_of(net, tape), candidates, box))
    ce = F.cross_entropy(logits, y)
    ratio = torch.linalg.vector_norm(delta.flatten(1), dim=1) / torch.linalg.vector_norm(
        x.flatten(1), dim=1
    ).clamp_min(norm_floor(x.dtype))
    # one exp of a signed exponent (torch.where over two exps would give NaN gradients where one overflows)
    sign = torch.where(correct, torch.full_like(ratio, -c), torch.full_like(ratio, d))
    reg = torch.exp(bounded_exponent(sign * ratio)).sum() / len(x)
    loss = ce_weight * ce + lmbda * reg
    return loss, DeepDefenseInfo(ce.detach(), reg.detach(), ratio.detach(), correct, info.success, info.iterations)


EXPONENT_KNEE = 20.0  # exp(20) ≈ 4.9e8: eq. 6 holds exactly below this exponent
EXPONENT_MAX = 30.0  # exp(30) ≈ 1.1e13: the bound, finite with its gradients in float32 and float64


def bounded_exponent(e: Tensor) -> Tensor:
    """``e`` up to ``EXPONENT_KNEE``; above it ``knee + (max − knee)·tanh((e − knee)/(max − knee))``, which
    joins smoothly (same value and slope at the knee) and never exceeds ``EXPONENT_MAX``.

    The exponent of a misclassified sample, ``d·‖Δx‖/‖x‖``, is unbounded: an input near the training mean has a
    tiny ‖x‖ (0 for a one-image training set), and ``exp`` then overflows to inf with NaN gradients. With the
    bound the loss and its gradients stay finite for every finite input; its gradient fades where the bound
    takes over. It departs from eq. 6 only where ``d·‖Δx‖/‖x‖ > 20`` (with d = 5: a perturbation over 4× the
    input's norm), far beyond anything the committed runs reach.
    """
    span = EXPONENT_MAX - EXPONENT_KNEE
    above = EXPONENT_KNEE + span * torch.tanh((e - EXPONENT_KNEE).clamp_min(0) / span)
    return torch.where(e > EXPONENT_KNEE, above, e)


def _check_classes(logits: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """The correct mask and DeepFool's targets (−1: untargeted; y for misclassified samples)."""
    check_classes(logits)
    check_label_range(y, logits.shape[1])
    correct = logits.detach().argmax(1) == y
    return correct, torch.where(correct, torch.full_like(y, -1), y)
