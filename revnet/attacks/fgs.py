"""Fast gradient sign (FGS, Goodfellow et al., 2015) examples with the explicit reverse pass.

``x_adv = x + ε·sign(∇ₓ CE(net(x), y))``. The input gradient of the cross-entropy comes from one reverse
row per sample, ``v = softmax(f) − onehot(y)`` (divided by ``N``: the gradient of the batch-mean CE), so no
``torch.autograd`` call is involved. Adversarial examples are not clipped to a valid input range unless
``clip=(lo, hi)`` is given (the paper does not clip). No graph is built: the examples are constants.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_batch, check_labels, check_network


def ce_input_gradient(net: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """``∂/∂x`` of ``F.cross_entropy(net(x), y)`` (mean over the batch), shape of ``x``; builds no graph."""
    check_batch(x)
    check_network(net, x)
    check_labels(y, x)
    with torch.no_grad():
        logits, tape = net.trace(x)
        if logits.dim() != 2:
            raise ValueError(f"the network must output logits of shape (N, C), got {tuple(logits.shape)}.")
        if ((y < 0) | (y >= logits.shape[1])).any():
            raise ValueError(f"y must hold class indices in [0, {logits.shape[1]}).")
        v = (logits.softmax(1) - F.one_hot(y.to(logits.device), logits.shape[1]).to(logits.dtype)) / len(x)
        return net.reverse(v, tape)


def _check_eps(eps: float) -> float:
    eps = float(eps)
    if not (0 <= eps < float("inf")):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}.")
    return eps


def _check_clip(clip: Optional[tuple[float, float]]) -> Optional[tuple[float, float]]:
    if clip is None:
        return None
    lo, hi = (float(c) for c in clip)
    if not lo <= hi:
        raise ValueError(f"clip must be a pair (lo, hi) with lo <= hi, got {clip!r}.")
    return lo, hi


def fgs_perturb(
    net: nn.Module, x: Tensor, y: Tensor, eps: float, *, clip: Optional[tuple[float, float]] = None
) -> Tensor:
    """FGS examples ``x + eps·sign(∇ₓ CE)``, clamped to ``clip = (lo, hi)`` if given; same shape as ``x``.

    Every entry moves by exactly ``eps`` (or 0 where the gradient is exactly 0), so ``‖x_adv − x‖_∞ <= eps``.
    """
    eps = _check_eps(eps)
    clip = _check_clip(clip)
    x_adv = x.detach() + eps * ce_input_gradient(net, x.detach(), y).sign()
    return x_adv if clip is None else x_adv.clamp(*clip)
