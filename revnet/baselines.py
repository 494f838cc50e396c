"""The baselines that the Deep Defense paper compares with, on any revnet network.

* **Adv. Train I** (Moosavi-Dezfooli et al., 2016, the DeepFool paper): fine-tune on DeepFool adversarial
  examples generated *once* from the reference model: :func:`deepfool_adversarial_set`.
* **Adv. Train II** (Goodfellow et al., 2015): the objective ``α·CE(x) + (1−α)·CE(x + ε·sign∇ₓCE)`` with the
  FGS examples generated online from the current weights and treated as constants: :func:`fgs_adversarial_loss`.
* **Parseval training** (Cisse et al., 2017): after every SGD step, a retraction towards orthonormal rows,
  ``W_S ← (1+β)·W_S − β·W_S·W_Sᵀ·W_S`` on a random subset ``S`` of the rows of every ``(out, in)`` weight
  (convolutions reshaped to ``(out, in·kh·kw)``): :func:`parseval_retraction_`. Cisse et al. write ``Wᵀx`` and
  speak of columns; in PyTorch's ``(out, in)`` layout those are rows.

The input gradients that FGS needs come from the explicit reverse pass (:func:`revnet.attacks.fgs`), so no
baseline calls ``torch.autograd.grad``.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import check_batch, check_network
from .attacks.deepfool import deepfool
from .attacks.fgs import _check_clip, fgs_perturb


def _check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha!r}.")
    return alpha


def fgs_adversarial_loss(
    net: nn.Module, x: Tensor, y: Tensor, *, eps: float, alpha: float = 0.5,
    clip: Optional[tuple[float, float]] = None,
) -> tuple[Tensor, Tensor]:
    """Goodfellow et al.'s adversarial objective ``α·CE(f(x), y) + (1−α)·CE(f(x_fgs), y)``.

    Args:
        net: a revnet network, ``x (N, *in)`` → logits ``(N, C)``.
        x, y: inputs and integer labels ``(N,)``.
        eps: the FGS step ``x_fgs = x + eps·sign(∇ₓ CE(f(x), y))`` (clamped to ``clip`` if given).
        alpha: weight of the clean cross-entropy (0.5 in Goodfellow et al.).

    Returns:
        ``(loss, logits)``: the scalar loss with a graph to the weights (``x_fgs`` is a constant) and the clean
        logits ``(N, C)`` (with a graph), e.g. for the training accuracy.
    """
    alpha = _check_alpha(alpha)
    x_fgs = fgs_perturb(net, x, y, eps, clip=clip)
    logits = net(x)
    loss = alpha * F.cross_entropy(logits, y) + (1.0 - alpha) * F.cross_entropy(net(x_fgs), y)
    return loss, logits


def deepfool_adversarial_set(
    net: nn.Module, x: Tensor, *, max_iter: int = 50, overshoot: float = 0.02, batch_size: int = 500,
    clip: Optional[tuple[float, float]] = None,
) -> tuple[Tensor, Tensor]:
    """DeepFool's untargeted examples ``x + Δx`` of every input (Adv. Train I's training set).

    Returns ``(x_adv, fooled)``: ``x_adv`` has the shape and dtype of ``x`` and no graph; ``fooled (N,)`` says
    whether DeepFool changed the prediction within ``max_iter`` (the others keep their last iterate). The
    labels of the set are the true labels of ``x`` (the caller's ``y``).
    """
    check_batch(x)
    check_network(net, x)
    clip = _check_clip(clip)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}.")
    advs, fooled = [], []
    for start in range(0, len(x), batch_size):
        xb = x[start:start + batch_size].detach()
        delta, info = deepfool(net, xb, max_iter=max_iter, overshoot=overshoot)
        adv = xb + delta
        advs.append(adv if clip is None else adv.clamp(*clip))
        fooled.append(info.success)
    return torch.cat(advs), torch.cat(fooled)


def parseval_weights(net: nn.Module) -> list[Tensor]:
    """The weights Parseval training constrains: those of every ``nn.Linear`` and ``nn.Conv2d`` in ``net``."""
    return [m.weight for m in net.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


@torch.no_grad()
def parseval_retraction_(
    weights: list[Tensor], *, beta: float, fraction: float = 0.3, generator: Optional[torch.Generator] = None,
) -> None:
    """In place, for each weight ``W`` of shape ``(out, *in)`` viewed as ``(out, in_total)``: pick a random
    ``S`` of ``max(1, round(fraction·out))`` rows and set ``W_S ← (1+β)·W_S − β·W_S·W_Sᵀ·W_S``.

    For small ``β`` this is one gradient step on ``‖W_S·W_Sᵀ − I‖²/4``: rows move towards an orthonormal set.
    """
    beta = float(beta)
    if not beta >= 0.0:
        raise ValueError(f"beta must be >= 0, got {beta!r}.")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction!r}.")
    for w in weights:
        if w.dim() < 2:
            raise ValueError(f"Parseval weights must have at least 2 dimensions (out, in, ...), got {tuple(w.shape)}.")
        rows = w.view(w.shape[0], -1)
        k = max(1, round(fraction * rows.shape[0]))
        idx = torch.randperm(rows.shape[0], generator=generator)[:k].to(w.device)
        ws = rows[idx]
        rows[idx] = (1.0 + beta) * ws - beta * (ws @ ws.T @ ws)


__all__ = ["deepfool_adversarial_set", "fgs_adversarial_loss", "parseval_retraction_", "parseval_weights"]
