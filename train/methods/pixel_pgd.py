"""L2 PGD in the pixel box for the adversarial training methods (PGD-AT, TRADES), on revnet's explicit reverse.

The radius is given in pixel space ([0, 1] images), as the field states it; the network sees
``x_net = x_pixels · factor + const`` (``factor = raw_max · scale / std``, ``library_attacks.pixel_factor``), so
the attack steps and projects in pixel space and clamps to the valid box ``[lo, hi]`` of the network input::

    g      = factor · net.reverse(v(logits), tape)              ∂loss_i/∂x_pixels, per sample (no autograd)
    δ      ← δ + α · g / ‖g‖₂                                   a zero gradient gives no move
    δ      ← δ · min(1, ε / ‖δ‖₂)                               the L2 ball, pixel space
    x_adv  = clamp(x + δ · factor, lo, hi);  δ = (x_adv − x) / factor

``v(logits) (N, C)`` is the gradient of each sample's loss with respect to its logits (``softmax − onehot`` for
the cross-entropy, ``softmax(z') − p`` for TRADES' KL). No graph is built: the examples are constants of the
training loss, as in Madry et al. and Zhang et al.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _norm(t: Tensor) -> Tensor:
    """``‖t_i‖₂`` per sample, clamped at ``finfo.eps²``, shaped ``(N, 1, ..., 1)``."""
    n = torch.linalg.vector_norm(t.flatten(1), dim=1).clamp_min(torch.finfo(t.dtype).eps ** 2)
    return n.view(-1, *[1] * (t.dim() - 1))


def ce_cotangent(y: Tensor) -> Callable[[Tensor], Tensor]:
    """``v(z) = softmax(z) − onehot(y)``: the gradient of each sample's cross-entropy w.r.t. its logits."""
    return lambda z: z.softmax(1) - F.one_hot(y, z.shape[1]).to(z.dtype)


def ball_start(x: Tensor, eps: float, factor: Tensor, generator: Optional[torch.Generator]) -> Tensor:
    """A point drawn uniformly from the pixel-space L2 ball of radius ``eps`` around ``x (N, *in)`` (network
    space), from ``generator`` (CPU draws, so a seed gives the same start on any device)."""
    d = x[0].numel()
    direction = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    radius = eps * torch.rand(len(x), generator=generator, dtype=x.dtype).to(x.device) ** (1.0 / d)
    return x + direction / _norm(direction) * radius.view(-1, *[1] * (x.dim() - 1)) * factor


def pgd(net: nn.Module, x: Tensor, cotangent: Callable[[Tensor], Tensor], *, eps: float, steps: int,
        step_size: float, factor: Tensor, box: tuple[Tensor, Tensor], start: Optional[Tensor] = None) -> Tensor:
    """``steps`` L2 PGD steps (see the module docstring) from ``start`` (default ``x``), maximising the loss whose
    logit gradient is ``cotangent``; returns ``x_adv (N, *in)`` without a graph, within ``eps`` of ``x`` in pixel
    space and inside ``box``. ``factor`` is a scalar or ``(C, 1, 1)`` tensor, ``box`` two tensors that broadcast
    against one input."""
    x = x.detach()
    lo, hi = (b.to(x.device, x.dtype) for b in box)
    factor = torch.as_tensor(factor).to(x.device, x.dtype)
    x_adv = torch.maximum(torch.minimum(x if start is None else start.detach(), hi), lo)
    with torch.no_grad():
        for _ in range(steps):
            logits, tape = net.trace(x_adv)
            g = net.reverse(cotangent(logits), tape) * factor  # ∂loss_i/∂pixels
            delta = (x_adv - x) / factor + step_size * g / _norm(g)
            delta = delta * (eps / _norm(delta)).clamp(max=1.0)
            x_adv = torch.maximum(torch.minimum(x + delta * factor, hi), lo)
    return x_adv


DATASET_EPS = {"mnist": 2.0, "fashion-mnist": 1.5, "cifar10": 0.5, "imagenet": 3.0}
"""Default pixel-space L2 radius per dataset (MNIST 2.0 as in the robustness literature's L2 MNIST models; CIFAR-10
0.5 and ImageNet 3.0 as in Madry et al.'s L2 models; Fashion-MNIST 1.5, untuned)."""


def add_pgd_args(p) -> None:
    """``--pgd-eps``, ``--pgd-steps``, ``--pgd-step-size``, ``--no-random-start`` (PGD-AT and TRADES)."""
    from ..cli import finite_float

    p.add_argument("--pgd-eps", type=finite_float, default=None,
                   help="pgd-at, trades: L2 radius of the training attack in pixel space ([0, 1] images; default: "
                        + ", ".join(f"{k} {v:g}" for k, v in DATASET_EPS.items()) + ")")
    p.add_argument("--pgd-steps", type=int, default=40, help="pgd-at, trades: steps of the training attack")
    p.add_argument("--pgd-step-size", type=finite_float, default=None,
                   help="pgd-at, trades: pixel-space step of the training attack (default: 2.5·eps/steps)")
    p.add_argument("--no-random-start", action="store_true",
                   help="pgd-at: start the attack at x instead of a uniform point of the eps-ball")


def pgd_settings(settings: dict) -> tuple[float, int, float]:
    """``(eps, steps, step_size)`` from a run's settings, with the dataset's default radius; bad values are one
    ``ValueError`` line."""
    eps = settings.get("pgd_eps")
    eps = DATASET_EPS.get(settings.get("dataset") or "mnist", 2.0) if eps is None else float(eps)
    steps = int(settings.get("pgd_steps") or 40)
    step = settings.get("pgd_step_size")
    step = 2.5 * eps / steps if step is None else float(step)
    if not (eps > 0 and steps >= 1 and step > 0):
        raise ValueError(f"--pgd-eps and --pgd-step-size must be positive and --pgd-steps at least 1, got "
                         f"{eps}, {step}, {steps}.")
    return eps, steps, step
