"""Evaluation metrics of the Deep Defense paper: accuracy, DeepFool robustness ρ₂, FGS accuracy and ε_ref.

Pure functions of tensors and networks; they never change the network's mode (call ``net.eval()`` first)
and build no graph. Large sets are processed in chunks of ``batch_size`` samples on the device the tensors
live on, so e.g. 10,000 test images fit in memory.

Conventions:

* ``‖x‖`` is the L2 norm of the *network input*, i.e. after whatever preprocessing the caller applied
  (the ratio ``‖Δx‖₂/‖x‖₂`` depends on it: ``x/255`` and mean-subtracted inputs give different ρ₂).
* ρ₂ is the mean of ``‖Δx‖₂/‖x‖₂`` over *all* given images under untargeted DeepFool: misclassified images
  are attacked away from their (wrong) predicted label, and images never fooled within ``max_iter`` count
  with their final ``Δx``.
* FGS examples ``x + ε·sign(∇ₓ CE)`` are not clipped to a valid input range unless ``clip=(lo, hi)`` is
  given (the paper does not clip).
* A network with fewer than 2 classes is refused by every metric, with DeepFool's message (one sample goes
  through the network first, without touching the random state).
* ``ε_ref`` is the smallest ε at which FGS accuracy drops to 50% or below, found by bisection to a relative
  tolerance; accuracies are fractions in [0, 1].
"""

from __future__ import annotations

import math
from typing import Callable, Iterator, Optional, Sequence

import torch
from torch import Tensor, nn

from ._checks import (check_batch, check_classes, check_finite_parameters, check_label_range, check_labels,
                      check_network, norm_floor)
from .attacks.deepfool import deepfool
from .attacks.fgs import _check_clip, _check_eps, ce_input_gradient, fgs_perturb
from .attacks.pgd import pgd_l2

fgs = fgs_perturb  # x + eps·sign(∇ₓ CE) with the explicit reverse; see revnet.attacks.fgs


def _chunks(n: int, batch_size: int) -> Iterator[slice]:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}.")
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def accuracy(logits: Tensor, y: Tensor) -> float:
    """The fraction of rows of ``logits (N, C)`` whose argmax equals ``y (N,)``."""
    if logits.dim() != 2 or logits.shape[0] == 0:
        raise ValueError(f"logits must have shape (N, C) with N >= 1, got {tuple(logits.shape)}.")
    check_classes(logits)
    check_labels(y, logits)
    check_label_range(y, logits.shape[1])
    return (logits.argmax(1) == y.to(logits.device)).double().mean().item()


def _checked(net: nn.Module, x: Tensor, y: Optional[Tensor] = None, *, classes: bool = True) -> None:
    """The checks of every metric's entry point; ``classes``: also run one sample through ``net`` and refuse a
    network without ``(N, C)`` logits of ``C >= 2`` classes, or labels ``y`` outside ``[0, C)``, before the
    attack starts (metrics that do a plain forward first check its logits instead)."""
    check_batch(x)
    check_network(net, x)
    check_finite_parameters(net)
    if y is not None:
        check_labels(y, x)
    if classes:
        num_classes = _num_classes(net, x)
        if y is not None:
            check_label_range(y, num_classes)


def _num_classes(net: nn.Module, x: Tensor) -> int:
    """The number of classes of ``net``, from the logits of ``x[:1]`` (refused by :func:`check_classes`, as
    DeepFool refuses it, unless they are ``(1, C)`` with ``C >= 2``). The random state is left as it was: a
    Dropout in training mode draws its mask from it, and the metric's own passes must draw the same masks."""
    with torch.no_grad(), torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        logits = net(x[:1])
    check_classes(logits)
    return logits.shape[1]


def network_accuracy(net: nn.Module, x: Tensor, y: Tensor, *, batch_size: int = 500) -> float:
    """Clean accuracy of ``net`` on ``(x, y)``."""
    _checked(net, x, y, classes=False)
    correct = 0
    with torch.no_grad():
        for s in _chunks(len(x), batch_size):
            logits = net(x[s])
            if s.start == 0:
                check_classes(logits)
                check_label_range(y, logits.shape[1])
            correct += int((logits.argmax(1) == y[s].to(x.device)).sum())
    return correct / len(x)


def deepfool_batch_sums(
    net: nn.Module, x: Tensor, *, max_iter: int = 50, overshoot: float = 0.02, candidates: Optional[int] = None,
) -> tuple[float, int, int]:
    """Untargeted DeepFool on one batch ``x (B, *in)``: ``(Σ_i ‖Δx_i‖₂/‖x_i‖₂ as a float64 sum, number fooled,
    total iterations)``. :func:`deepfool_robustness` adds these up over chunks; a caller streaming batches from
    a ``DataLoader`` does the same and gets the same numbers for the same chunks."""
    delta, info = deepfool(net, x, max_iter=max_iter, overshoot=overshoot, candidates=candidates)
    norm_x = torch.linalg.vector_norm(x.flatten(1), dim=1).clamp_min(norm_floor(x.dtype))
    ratio_sum = (torch.linalg.vector_norm(delta.flatten(1), dim=1) / norm_x).double().sum().item()
    return ratio_sum, int(info.success.sum()), int(info.iterations.sum())


def deepfool_robustness(
    net: nn.Module,
    x: Tensor,
    *,
    max_iter: int = 50,
    overshoot: float = 0.02,
    candidates: Optional[int] = None,
    batch_size: int = 500,
) -> dict[str, float]:
    """Untargeted DeepFool over all of ``x``: ``{"rho2", "fooling_rate", "mean_iterations", "n"}``.

    ``rho2 = mean_i ‖Δx_i‖₂ / ‖x_i‖₂`` over every image (see the module docstring); ``fooling_rate`` is the
    fraction of images whose label DeepFool flipped within ``max_iter``.
    """
    _checked(net, x)
    ratio_sum, fooled, steps = 0.0, 0, 0
    for s in _chunks(len(x), batch_size):
        r, f, k = deepfool_batch_sums(net, x[s], max_iter=max_iter, overshoot=overshoot, candidates=candidates)
        ratio_sum, fooled, steps = ratio_sum + r, fooled + f, steps + k
    n = len(x)
    return {"rho2": ratio_sum / n, "fooling_rate": fooled / n, "mean_iterations": steps / n, "n": n}


def fgs_signs(net: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """``sign(∇ₓ CE)`` of one batch ``x (B, *in)`` (explicit reverse, no graph), shape of ``x``."""
    _checked(net, x, y)
    return _signs(net, x, y)


def _signs(net: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    with torch.no_grad():
        return ce_input_gradient(net, x, y.to(x.device)).sign()


def _fgs_signs(net: nn.Module, x: Tensor, y: Tensor, batch_size: int) -> Tensor:
    """:func:`fgs_signs` for every image, in chunks (the caller has checked the arguments)."""
    return torch.cat([_signs(net, x[s], y[s]) for s in _chunks(len(x), batch_size)])


def correct_at_step(net: nn.Module, x: Tensor, y: Tensor, step: Tensor, clip: Optional[tuple[float, float]]) -> int:
    """How many of one batch ``x + step`` (clamped to ``clip`` if given) ``net`` classifies as ``y``."""
    with torch.no_grad():
        x_adv = x + step
        x_adv = x_adv if clip is None else x_adv.clamp(*clip)
        logits = net(x_adv)
        check_classes(logits)
        return int((logits.argmax(1) == y.to(x.device)).sum())


def _accuracy_at_step(
    net: nn.Module, x: Tensor, y: Tensor, step: Tensor, clip: Optional[tuple[float, float]], batch_size: int
) -> float:
    """Accuracy on ``x + step`` (clamped to ``clip`` if given)."""
    correct = sum(correct_at_step(net, x[s], y[s], step[s], clip) for s in _chunks(len(x), batch_size))
    return correct / len(x)


def fgs_accuracy(
    net: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    *,
    clip: Optional[tuple[float, float]] = None,
    batch_size: int = 500,
) -> float:
    """Accuracy of ``net`` on the FGS examples of ``(x, y)`` at ``eps`` (those of :func:`fgs_perturb`)."""
    _checked(net, x, y)
    eps, clip = _check_eps(eps), _check_clip(clip)
    return _accuracy_at_step(net, x, y, eps * _fgs_signs(net, x, y, batch_size), clip, batch_size)


def eps_ref(
    net: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    tol: float = 1e-3,
    eps_start: Optional[float] = None,
    max_doublings: int = 40,
    clip: Optional[tuple[float, float]] = None,
    batch_size: int = 500,
) -> float:
    """The smallest ε at which FGS accuracy on ``(x, y)`` is <= 50%, to relative tolerance ``tol``.

    Bisection on ``[lo, hi]`` with ``accuracy(lo) > 0.5 >= accuracy(hi)``: ``hi`` starts at ``eps_start``
    (default ``1e-3 · max|x|``) and doubles until the accuracy is <= 50% (``ValueError`` after
    ``max_doublings`` doublings), then the interval is halved until ``hi − lo <= tol · hi``. Returns ``hi``
    (0.0 if the clean accuracy is already <= 50%). FGS accuracy need not be monotone in ε; the bisection
    returns a crossing point.
    """
    _checked(net, x, y)
    if not (0 < tol < 1):
        raise ValueError(f"tol must be a relative tolerance in (0, 1), got {tol!r}.")

    # the gradient sign does not depend on ε: compute it once; each bisection step is then forward passes only
    signs, clip = _fgs_signs(net, x, y, batch_size), _check_clip(clip)

    def acc(eps: float) -> float:
        return _accuracy_at_step(net, x, y, eps * signs, clip, batch_size)

    return bisect_eps_ref(acc, network_accuracy(net, x, y, batch_size=batch_size), x.abs().max().item(), x.dtype,
                          tol=tol, eps_start=eps_start, max_doublings=max_doublings)


def bisect_eps_ref(
    accuracy_at: Callable[[float], float],
    clean_accuracy: float,
    input_absmax: float,
    dtype: torch.dtype = torch.float32,
    *,
    tol: float = 1e-3,
    eps_start: Optional[float] = None,
    max_doublings: int = 40,
    progress: Optional[Callable[[float, float], None]] = None,
) -> float:
    """The bisection of :func:`eps_ref` on any FGS accuracy function ``accuracy_at(eps)`` (e.g. one that streams
    batches from a ``DataLoader``): 0.0 if ``clean_accuracy <= 0.5``; else ``hi`` starts at ``eps_start``
    (default ``1e-3 · input_absmax``, the largest ``|x|``) and doubles until ``accuracy_at(hi) <= 0.5``, then
    ``[lo, hi]`` is halved until ``hi − lo <= tol · hi``. ``progress(lo, hi)``, if given, is called after
    every evaluation of ``accuracy_at``."""
    if not (0 < tol < 1):
        raise ValueError(f"tol must be a relative tolerance in (0, 1), got {tol!r}.")
    if clean_accuracy <= 0.5:
        return 0.0
    hi = float(eps_start) if eps_start is not None else 1e-3 * max(input_absmax, norm_floor(dtype))
    if not (0 < hi < math.inf):
        raise ValueError(f"eps_start must be a finite number > 0, got {eps_start!r}.")
    lo = 0.0
    for _ in range(max_doublings + 1):
        done = accuracy_at(hi) <= 0.5
        if progress is not None:
            progress(lo, hi)
        if done:
            break
        lo, hi = hi, 2 * hi
    else:
        raise ValueError(
            f"FGS accuracy stays above 50% up to eps = {lo:.6g} ({max_doublings} doublings of eps_start); "
            "the network's cross-entropy gradient may vanish (sign 0) or saturate. Raise max_doublings or "
            "check the network and labels."
        )
    while hi - lo > tol * hi:
        mid = 0.5 * (lo + hi)
        if accuracy_at(mid) <= 0.5:
            hi = mid
        else:
            lo = mid
        if progress is not None:
            progress(lo, hi)
    return hi


def accuracy_at_eps_fractions(
    net: nn.Module,
    x: Tensor,
    y: Tensor,
    eps_ref: float,
    fractions: Sequence[float] = (0.2, 0.5, 1.0),
    *,
    clip: Optional[tuple[float, float]] = None,
    batch_size: int = 500,
) -> dict[float, float]:
    """FGS accuracy at ``fraction · eps_ref`` for each fraction: ``{fraction: accuracy}`` (the paper's
    Table 1 uses a reference model's ε_ref for every model)."""
    return {
        float(f): fgs_accuracy(net, x, y, float(f) * float(eps_ref), clip=clip, batch_size=batch_size)
        for f in fractions
    }


def pgd_accuracy(
    net: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    *,
    steps: int = 10,
    step_size: Optional[float] = None,
    batch_size: int = 500,
    clip: Optional[tuple[float, float]] = None,
) -> float:
    """Accuracy of ``net`` on the L2 PGD examples of ``(x (N, *in), y (N,))`` at radius ``eps`` (those of
    :func:`revnet.attacks.pgd_l2`, ``steps`` steps of ``step_size``, default ``2.5·eps/steps``); a check
    against gradient masking. Each sample's attack depends only on that sample, so chunks give the same result
    as one batch."""
    _checked(net, x, y)
    correct = 0
    with torch.no_grad():
        for s in _chunks(len(x), batch_size):
            y_s = y[s].to(x.device)
            x_adv = pgd_l2(net, x[s], y_s, eps, steps=steps, step_size=step_size, clip=clip)
            correct += int((net(x_adv).argmax(1) == y_s).sum())
    return correct / len(x)
