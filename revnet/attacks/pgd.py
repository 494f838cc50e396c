"""L2 projected gradient descent (PGD, Madry et al., 2018) with the explicit reverse pass.

An untargeted attack that maximises the cross-entropy within the L2 ball of radius ``ε`` around ``x``. It
checks that robustness gains are not gradient masking: a model that resists one gradient step but not PGD
is probably masking. ``x, x_adv`` are ``(N, *in)``; norms are per sample, over all non-batch dims::

    g      = ∇ₓ CE(net(x_adv), y)                          per sample, from the explicit reverse
    x_adv ← x_adv + α · g / ‖g‖₂                          a zero gradient gives no move
    δ      = x_adv − x;   x_adv ← x + δ · min(1, ε / ‖δ‖₂)   projection onto the ball
    x_adv ← clamp(x_adv, lo, hi)                           only if ``clip=(lo, hi)`` is given

repeated ``steps`` times from ``x_adv = x`` (no random start: the attack is deterministic). The default step
is ``α = 2.5·ε/steps`` (Madry et al.'s rule), so the steps can reach the ball's surface and move along it.
Norms are clamped at ``finfo(dtype).eps²`` before dividing. If ``x`` lies in ``[lo, hi]``, every example
is both within ``ε`` of ``x`` and within ``[lo, hi]`` (clamping to a box containing ``x`` cannot move a
point farther from ``x``). The network runs in whatever mode it is in; no graph is built.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from .._checks import check_batch, check_labels, check_network, norm_floor
from .fgs import _check_clip, _check_eps, ce_input_gradient


def _per_sample_norm(t: Tensor) -> Tensor:
    """``‖t_i‖₂`` over all non-batch dims, clamped at ``norm_floor``, shaped ``(N, 1, ..., 1)`` to broadcast."""
    norm = torch.linalg.vector_norm(t.flatten(1), dim=1).clamp_min(norm_floor(t.dtype))
    return norm.reshape((len(t),) + (1,) * (t.dim() - 1))


def pgd_l2(
    net: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    *,
    steps: int = 10,
    step_size: Optional[float] = None,
    clip: Optional[tuple[float, float]] = None,
) -> Tensor:
    """L2 PGD examples of ``(x (N, *in), y (N,))`` at radius ``eps``; same shape and dtype as ``x``, no graph.

    ``steps`` normalised gradient steps of ``step_size`` (default ``2.5·eps/steps``), each followed by the
    projection onto ``{‖x_adv − x‖₂ <= eps}`` and the clamp to ``clip = (lo, hi)`` if given. ``eps = 0``
    returns ``x`` (clamped to ``clip`` if given).
    """
    eps, clip = _check_eps(eps), _check_clip(clip)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}.")
    if step_size is None:
        step_size = 2.5 * eps / steps
    elif not (0 <= float(step_size) < float("inf")):
        raise ValueError(f"step_size must be a finite number >= 0 (or None for 2.5·eps/steps), got {step_size!r}.")
    check_batch(x)
    check_network(net, x)
    check_labels(y, x)
    x = x.detach()
    x_adv = x
    with torch.no_grad():
        for _ in range(steps):
            g = len(x) * ce_input_gradient(net, x_adv, y)  # the batch-mean gradient times N: per-sample ∇ CE_i
            x_adv = x_adv + float(step_size) * g / _per_sample_norm(g)
            delta = x_adv - x
            x_adv = x + delta * (eps / _per_sample_norm(delta)).clamp(max=1.0)
            if clip is not None:
                x_adv = x_adv.clamp(*clip)
    return x_adv
