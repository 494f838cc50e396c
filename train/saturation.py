"""A saturation check per model: is a gradient attack on the cross-entropy blind on it? (issue 31)

A network whose logit margins are large saturates float32 softmax: ``softmax(z) − onehot(y)`` is exactly 0 once
the true logit beats every other by more than about 104 (``exp(−104)`` underflows), and so is the input gradient
of the cross-entropy. Every attack that follows that gradient (our PGD, FMN's and DDN's steps, AutoAttack's
APGD-CE) then stands still, and the model looks robust. The margin loss ``max_{j≠y} z_j − z_y`` of Carlini &
Wagner has a non-zero gradient however large the margin, so PGD on it is not fooled.

:func:`check` measures, on the images ``x_net (N, *in)`` (network inputs) with labels ``y (N,)``:

* ``zero_grad_fraction``: the fraction of images whose CE input gradient is exactly 0 (:func:`zero_gradient_fraction`);
* ``margin_q10/q50/q90``: quantiles of the logit margin ``z_y − max_{j≠y} z_j`` (:func:`margin_quantiles`);
* ``pgd_ce_acc`` and ``pgd_cw_acc``: L2 PGD accuracy at ``eps`` with the CE and with the margin loss
  (:func:`pgd_accuracy`);
* ``saturated``: :data:`RULE`.

The network runs in whatever mode it is in (pass an ``eval()`` model); no parameter gradient is accumulated.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from revnet.attacks import pgd_l2
from revnet.layers import is_reversible

ZERO_GRAD_LIMIT = 0.05  # saturated if more than 5% of the images have an exactly zero CE input gradient
PGD_GAP_LIMIT = 0.05  # ... or if margin-PGD's accuracy is more than 5 points below CE-PGD's
RULE = (f"saturated when more than {ZERO_GRAD_LIMIT:.0%} of the CE input gradients are exactly 0, or margin-PGD's "
        f"accuracy is more than {100 * PGD_GAP_LIMIT:g} points below CE-PGD's")
UNRELIABLE = ("PGD-L2 acc.", "FMN-L2 median", "DDN-L2 median")
LOSSES = ("ce", "cw")


def pixel_box(preprocess: dict, raw_max: float) -> tuple[Tensor, Tensor]:
    """The valid network inputs ``(lo, hi)``, each of the shape of ``preprocess["mean"]`` (e.g. ``(1, 28, 28)`` or
    ``(C, 1, 1)``): the preprocessing of an all-0 and an all-``raw_max`` image, per pixel."""
    std = preprocess.get("std")
    std = torch.ones(()) if std is None else std.float()
    mean = preprocess["mean"].float()
    return -mean / std, (float(raw_max) * float(preprocess["scale"]) - mean) / std


def zero_gradient_fraction(net: nn.Module, x_net: Tensor, y: Tensor, batch_size: int = 500) -> float:
    """The fraction of the images ``x_net (N, *in)`` whose CE input gradient is exactly zero, computed as attacks
    compute it: ``F.cross_entropy(net(x), y, reduction="sum")`` in the dtype of ``x_net`` (float32 for our
    checkpoints), autograd w.r.t. ``x``; an image counts when every entry of its gradient ``(*in)`` is 0."""
    _check(x_net, y, batch_size)
    zero = 0
    for s in range(0, len(x_net), batch_size):
        zero += int((_input_gradient(net, x_net[s:s + batch_size], y[s:s + batch_size], "ce").flatten(1) == 0)
                    .all(1).sum())
    return zero / len(x_net)


def margin_quantiles(net: nn.Module, x_net: Tensor, y: Tensor, batch_size: int = 500) -> tuple[float, float, float]:
    """The 10%, 50% and 90% quantiles over the images ``x_net (N, *in)`` of the logit margin ``z_y − max_{j≠y} z_j``
    (negative where misclassified)."""
    _check(x_net, y, batch_size)
    with torch.no_grad():
        margins = torch.cat([-_margin_loss(net(x_net[s:s + batch_size]), y[s:s + batch_size])
                             for s in range(0, len(x_net), batch_size)])
    q = torch.quantile(margins.double(), torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64))
    return tuple(float(v) for v in q)


def pgd_examples(net: nn.Module, x_net: Tensor, y: Tensor, eps: float, *, steps: int = 20, loss: str = "ce",
                 box: Optional[tuple[Tensor, Tensor]] = None) -> Tensor:
    """L2 PGD examples ``(N, *in)`` of ``(x_net (N, *in), y (N,))`` at radius ``eps`` in the network-input space.

    The rule of :func:`revnet.attacks.pgd_l2` (no random start; ``steps`` normalised gradient steps of
    ``2.5·eps/steps``, each projected onto the L2 ball, then clamped into ``box = (lo, hi)``, numbers or tensors
    that broadcast against one image ``(*in)`` such as :func:`pixel_box`'s, if given), maximising ``loss``: ``"ce"`` the cross-entropy, ``"cw"`` the
    margin ``max_{j≠y} z_j − z_y``. CE on a revnet network without a per-pixel box runs ``pgd_l2`` itself (its
    ``clip`` takes two numbers only); everything else runs the same rule here with autograd."""
    _check(x_net, y)
    _check_pgd(eps, steps, loss)
    if loss == "ce" and box is None and is_reversible(net):
        return pgd_l2(net, x_net, y, float(eps), steps=steps)
    lo, hi = (None, None) if box is None else (torch.as_tensor(b).to(x_net) for b in box)
    x = x_net.detach()
    x_adv, step = x, 2.5 * float(eps) / steps
    for _ in range(steps):
        g = _input_gradient(net, x_adv, y, loss)
        x_adv = x_adv + step * g / _norm(g)
        delta = x_adv - x
        x_adv = x + delta * (float(eps) / _norm(delta)).clamp(max=1.0)
        if lo is not None:
            x_adv = torch.maximum(torch.minimum(x_adv, hi), lo)
    return x_adv


def pgd_accuracy(net: nn.Module, x_net: Tensor, y: Tensor, eps: float, *, steps: int = 20, loss: str = "ce",
                 box: Optional[tuple[Tensor, Tensor]] = None, batch_size: int = 500) -> float:
    """Accuracy of ``net`` on the :func:`pgd_examples` of ``(x_net (N, *in), y (N,))`` (robust accuracy at ``eps``
    under L2 PGD on ``loss``, "ce" or "cw"), in chunks of ``batch_size`` (each image's attack is its own)."""
    _check(x_net, y, batch_size)
    _check_pgd(eps, steps, loss)
    correct = 0
    for s in range(0, len(x_net), batch_size):
        xs, ys = x_net[s:s + batch_size], y[s:s + batch_size]
        x_adv = pgd_examples(net, xs, ys, eps, steps=steps, loss=loss, box=box)
        with torch.no_grad():
            correct += int((net(x_adv).argmax(1) == ys).sum())
    return correct / len(x_net)


def check(net: nn.Module, x_net: Tensor, y: Tensor, *, eps: float, steps: int = 20,
          box: Optional[tuple[Tensor, Tensor]] = None, batch_size: int = 500) -> dict:
    """The saturation check of ``net`` on ``(x_net (N, *in), y (N,))``: ``{"zero_grad_fraction", "margin_q10",
    "margin_q50", "margin_q90", "pgd_ce_acc", "pgd_cw_acc", "saturated", "n", "eps"}`` (PGD at ``eps`` with
    ``steps`` steps, in ``box`` if given, see :func:`pgd_examples`); ``saturated`` follows :data:`RULE`.

    Pass at least 100 images: below 20 a single image moves an accuracy by more than the 5-point limit. Choose
    ``eps`` where the model is neither always nor never fooled (e.g. near the median ‖Δx‖ DeepFool needs)."""
    _check(x_net, y, batch_size)
    _check_pgd(eps, steps, "ce")
    q10, q50, q90 = margin_quantiles(net, x_net, y, batch_size)
    out = {"zero_grad_fraction": zero_gradient_fraction(net, x_net, y, batch_size),
           "margin_q10": q10, "margin_q50": q50, "margin_q90": q90,
           "pgd_ce_acc": pgd_accuracy(net, x_net, y, eps, steps=steps, loss="ce", box=box, batch_size=batch_size),
           "pgd_cw_acc": pgd_accuracy(net, x_net, y, eps, steps=steps, loss="cw", box=box, batch_size=batch_size),
           "n": len(x_net), "eps": float(eps)}
    out["saturated"] = bool(out["zero_grad_fraction"] > ZERO_GRAD_LIMIT
                            or out["pgd_ce_acc"] - out["pgd_cw_acc"] > PGD_GAP_LIMIT)
    return out


def warning_line(model_name: str, result: dict, unreliable: Sequence[str] = UNRELIABLE) -> Optional[str]:
    """One line warning that ``model_name`` is saturated (``result`` from :func:`check`) and that the columns
    ``unreliable`` cannot be trusted on it, ``None`` if it is not saturated. The default columns follow the CE
    gradient (PGD, DDN) or start where it stopped (FMN starts from DDN); AutoAttack's APGD-CE is another."""
    if not result["saturated"]:
        return None
    cols = list(unreliable)
    named = cols[0] if len(cols) == 1 else ", ".join(cols[:-1]) + " and " + cols[-1]
    return (f"warning: {model_name} looks saturated ({100 * result['zero_grad_fraction']:.1f}% of CE input gradients "
            f"are exactly 0, median logit margin {_number(result['margin_q50'])}; CE-PGD {100 * result['pgd_ce_acc']:.0f}% "
            f"vs margin-PGD {100 * result['pgd_cw_acc']:.0f}%): the columns {named} are unreliable on it; trust C&W "
            "and margin-PGD")


def _number(v: float) -> str:
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.3g}"


def _margin_loss(logits: Tensor, y: Tensor) -> Tensor:
    """``max_{j≠y} z_j − z_y`` per row of ``logits (N, C)``, shape ``(N,)``."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), -math.inf).amax(1)
    return other - true


def _input_gradient(net: nn.Module, x: Tensor, y: Tensor, loss: str) -> Tensor:
    """``∂/∂x`` of the summed ``loss`` ("ce" or "cw") of ``net(x)``, i.e. each image's own gradient, shape of ``x``."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = net(x)
        value = F.cross_entropy(logits, y, reduction="sum") if loss == "ce" else _margin_loss(logits, y).sum()
        (grad,) = torch.autograd.grad(value, x)
    return grad


def _norm(t: Tensor) -> Tensor:
    """``‖t_i‖₂`` per image, clamped at ``finfo.eps²`` (as ``pgd_l2``), shaped ``(N, 1, ..., 1)``."""
    norm = torch.linalg.vector_norm(t.flatten(1), dim=1).clamp_min(torch.finfo(t.dtype).eps ** 2)
    return norm.view(-1, *[1] * (t.dim() - 1))


def _check_pgd(eps: float, steps: int, loss: str) -> None:
    if loss not in LOSSES:
        raise ValueError(f"pgd: loss must be one of {LOSSES}, got {loss!r}.")
    try:
        ok = not isinstance(eps, (bool, str)) and 0 < float(eps) < math.inf
    except (TypeError, ValueError, RuntimeError):  # None, a tensor of several elements
        ok = False
    if not ok:
        raise ValueError(f"pgd: eps must be a finite number > 0, got {eps!r}.")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"pgd: steps must be an integer >= 1, got {steps!r}.")


def _check(x_net: Tensor, y: Tensor, batch_size: int = 1) -> None:
    if not isinstance(x_net, Tensor) or x_net.dim() < 2 or len(x_net) == 0 or not x_net.is_floating_point():
        shape = tuple(x_net.shape) if isinstance(x_net, Tensor) else type(x_net).__name__
        raise ValueError(f"saturation check: need a non-empty float batch x (N, *in), got {shape}.")
    if not isinstance(y, Tensor) or y.shape != (len(x_net),) or y.is_floating_point():
        shape = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise ValueError(f"saturation check: need integer labels y of shape ({len(x_net)},), got {shape}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"saturation check: batch_size must be an integer >= 1, got {batch_size!r}.")
