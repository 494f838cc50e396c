"""DeepFool for the step variants on any gradient engine (``gradient_engines.py``): revnet's algorithm
(:func:`shortcut_deepfool`), the textbook differentiable one (:func:`masked_deepfool`), and evaluation-mode
DeepFool for ``deepfool.py`` (:func:`eval_deepfool`)."""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import revnet
from revnet_app.benchmarks.gradient_engines import ENGINES


def norm_floor(dtype: torch.dtype) -> float:
    """revnet's guard: norms are clamped at ``finfo(dtype).eps²``."""
    return torch.finfo(dtype).eps ** 2


def _one_hot(index: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    return F.one_hot(index, num_classes).to(dtype)


class DeepFoolResult(NamedTuple):
    delta: Tensor  # (N, *in) (1 + overshoot)·Σr
    iterations: Tensor  # (N,) int64
    success: Tensor  # (N,) bool
    label: Tensor  # (N,) prediction at x + delta
    original: Tensor  # (N,) clean prediction


def _setup(logits: Tensor, target: Tensor, candidates: Optional[int]):
    num_classes = logits.shape[1]
    q = num_classes if candidates is None else candidates
    original = logits.detach().argmax(1)
    # the candidate classes other than the clean prediction, by decreasing clean logit (revnet's order)
    others = torch.sort(logits.detach(), dim=1, descending=True, stable=True).indices[:, 1:q]
    targeted = target >= 0
    success = targeted & (original == target)
    return original, others, targeted, success


def _step_from_rows(logits: Tensor, w: Tensor, toward: Tensor, away: Tensor) -> Tensor:
    """``r = |f_k − f_l| / ‖w‖² · w`` for ``w (A, D)``, written as revnet writes it (no squared norm)."""
    gap = (logits.gather(1, toward[:, None]) - logits.gather(1, away[:, None])).abs().squeeze(1)
    norm = torch.linalg.vector_norm(w, dim=1).clamp_min(norm_floor(logits.dtype))
    return (gap / norm).unsqueeze(1) * (w / norm.unsqueeze(1))


def _choose(f: Tensor, w_all: Tensor, others: Tensor, away: Tensor) -> Tensor:
    """Index into ``others`` of the nearest linearised boundary; ``w_all (A, Q−1, D)`` holds ``w_c − w_l``."""
    gap = (f.gather(1, others) - f.gather(1, away[:, None])).abs()
    return (gap / torch.linalg.vector_norm(w_all, dim=2).clamp_min(norm_floor(f.dtype))).argmin(1)


def _shortcut_step(engine, net, logits, state, away, target, others, differentiable: bool) -> Tensor:
    a, num_classes = logits.shape
    rows = torch.arange(a, device=logits.device)
    untargeted = target < 0
    toward, w = target, None
    if bool(untargeted.any()):
        f = logits.detach()
        v = _one_hot(others, num_classes, f.dtype) - _one_hot(away, num_classes, f.dtype).unsqueeze(1)
        w_all = engine.rows(net, state, v, create_graph=False).flatten(2)  # (A, Q−1, D), no graph
        with torch.no_grad():
            best = _choose(f, w_all, others, away)
            toward = torch.where(untargeted, others[rows, best], target)
        if not differentiable and bool(untargeted.all()):
            w = w_all[rows, best]
    if w is None:  # one row e_k − e_l per sample, with a graph when differentiable
        v = _one_hot(toward, num_classes, logits.dtype) - _one_hot(away, num_classes, logits.dtype)
        w = engine.rows(net, state, v.unsqueeze(1), create_graph=differentiable)[:, 0].flatten(1)
    if not differentiable:
        return _step_from_rows(logits.detach(), w.detach(), toward, away)
    return _step_from_rows(logits, w, toward, away)


def _predict(engine, net: nn.Module, point: Tensor, logits: Tensor, state: Any, last: bool):
    """``(logits, state, label)`` at the perturbed ``point (A, *in)``: traced again for the next step, or after
    the last step a forward pass without a graph (``logits``/``state`` then returned unchanged)."""
    if last:
        with torch.no_grad():
            return logits, state, net(point).argmax(1)
    logits, state = engine.trace(net, point)
    return logits, state, logits.detach().argmax(1)


def shortcut_deepfool(
    engine,
    net: nn.Module,
    x: Tensor,
    logits: Tensor,
    state: Any,
    *,
    target: Optional[Tensor] = None,
    max_iter: int = 50,
    overshoot: float = 0.02,
    candidates: Optional[int] = None,
    differentiable: bool = False,
    early_stop: bool = True,
) -> DeepFoolResult:
    """revnet's DeepFool algorithm (``revnet.attacks.deepfool.deepfool_from_trace``) on any engine:
    ``k`` is chosen from the (Q−1) rows without a graph, one row per sample is (re)computed with a graph
    when ``differentiable`` (else the chosen row is reused), finished samples leave the batch and the
    survivors are traced again. ``early_stop=False``: every sample runs all ``max_iter`` steps.
    ``logits, state = engine.trace(net, x)`` must come from the clean ``x``."""
    n = x.shape[0]
    if target is None:
        target = torch.full((n,), -1, dtype=torch.long, device=x.device)
    original, others, targeted, success = _setup(logits, target, candidates)
    label = original.clone()
    iterations = torch.zeros(n, dtype=torch.long, device=x.device)
    total = torch.zeros_like(x)
    scale = 1.0 + overshoot
    active = (~success).nonzero().squeeze(1)
    if 0 < len(active) < n:
        logits, state = engine.trace(net, x[active])
    for it in range(1, max_iter + 1):
        if len(active) == 0:
            break
        away = torch.where(targeted[active], label[active], original[active])
        r = _shortcut_step(engine, net, logits, state, away, target[active], others[active], differentiable)
        total = total.index_put((active,), total[active] + r.reshape(-1, *x.shape[1:]))
        iterations[active] = it
        point = x[active] + scale * total[active]
        logits, state, now = _predict(engine, net, point, logits, state, last=it == max_iter)
        done = torch.where(targeted[active], now == target[active], now != original[active])
        label[active] = now
        success[active] = done
        if early_stop and bool(done.any()):
            active = active[~done]
            if 0 < len(active) and it < max_iter:
                logits, state = engine.trace(net, point[~done])
    return DeepFoolResult(scale * total, iterations, success, label, original)


def masked_deepfool(
    engine,
    net: nn.Module,
    x: Tensor,
    logits: Tensor,
    state: Any,
    *,
    target: Tensor,
    max_iter: int,
    overshoot: float,
    early_stop: bool = True,
) -> DeepFoolResult:
    """Textbook differentiable DeepFool (variants 2-4): the gradients of all C classes for the whole batch
    with a graph every iteration; finished samples are masked out of the update; the loop ends when every
    sample has stopped (or after ``max_iter``)."""
    n, num_classes = logits.shape
    original, others, targeted, success = _setup(logits, target, None)
    running = ~success
    label = original.clone()
    iterations = torch.zeros(n, dtype=torch.long, device=x.device)
    total = torch.zeros_like(x)
    scale = 1.0 + overshoot
    rows = torch.arange(n, device=x.device)
    eye = torch.eye(num_classes, dtype=logits.dtype, device=x.device).expand(n, num_classes, num_classes)
    mask_shape = (n,) + (1,) * (x.dim() - 1)
    for it in range(1, max_iter + 1):
        if not bool(running.any()):
            break
        grads = engine.rows(net, state, eye, create_graph=True).flatten(2)  # (N, C, D), in the graph
        away = torch.where(targeted, label, original)
        with torch.no_grad():
            g = grads.detach()
            best = _choose(logits.detach(), g[rows[:, None], others] - g[rows, away].unsqueeze(1), others, away)
            toward = torch.where(targeted, target, others[rows, best])
        r = _step_from_rows(logits, grads[rows, toward] - grads[rows, away], toward, away)
        total = total + torch.where(running.reshape(mask_shape), r.reshape(x.shape), torch.zeros_like(x))
        iterations = iterations + running.long()
        point = x + scale * total
        logits, state, now = _predict(engine, net, point, logits, state, last=it == max_iter)
        reached = torch.where(targeted, now == target, now != original)
        label = torch.where(running, now, label)
        success = torch.where(running, reached, success)
        if early_stop:
            running = running & ~reached
    return DeepFoolResult(scale * total, iterations, success, label, original)


# ---------------------------------------------------------------------------------------------------------
# Evaluation-mode DeepFool (benchmarks/deepfool.py): revnet's attack and autograd baselines.


def eval_deepfool(
    engine_key: str, net: nn.Module, x: Tensor, *, max_iter: int = 50, overshoot: float = 0.02,
    candidates: Optional[int] = None, class_chunk: Optional[int] = None,
) -> DeepFoolResult:
    """Untargeted DeepFool without a graph. ``"revnet"``: the library's ``revnet.attacks.deepfool`` on a
    ``revnet.Sequential``; ``"loop"``/``"batched"``/``"func"``: :func:`shortcut_deepfool` (revnet's
    algorithm: only the Q−1 candidate rows ``e_c − e_l``, the chosen row reused, finished samples leave the
    batch) on a plain ``torch.nn`` network whose weights do not require grad. ``class_chunk``: revnet only
    (candidate classes per choosing reverse; ``None``: the library's default)."""
    if engine_key == "revnet":
        delta, info = revnet.deepfool(net, x, max_iter=max_iter, overshoot=overshoot, candidates=candidates,
                                      class_chunk=class_chunk)
        return DeepFoolResult(delta, info.iterations, info.success, info.label, info.original_label)
    engine = ENGINES[engine_key]()
    logits, state = engine.trace(net, x)
    return shortcut_deepfool(
        engine, net, x, logits, state, max_iter=max_iter, overshoot=overshoot, candidates=candidates,
        differentiable=False,
    )
