"""DeepFool (Moosavi-Dezfooli, Fawzi & Frossard, CVPR 2016), L2, multi-class, on any revnet network.

Every iteration linearises the network at the current point ``x + (1 + overshoot)·Σr`` with the explicit
reverse pass and steps to the nearest linearised boundary::

    r = |f_k − f_l| / ‖w_k − w_l‖² · (w_k − w_l)

``f`` are the logits and ``w`` their input gradients at the current point; ``l`` is the label being moved
away from and ``k`` the class moved towards:

* untargeted (``target = −1``): ``l`` is the prediction at the clean input, ``k`` the candidate class
  minimising ``|f_k − f_l| / ‖w_k − w_l‖``; the attack succeeds when the prediction differs from ``l``;
* targeted (``target = t ≥ 0``): ``k = t`` and ``l`` is the current prediction; it succeeds when the
  prediction is ``t`` (a sample already predicted as ``t`` succeeds after 0 iterations with ``Δx = 0``).

As in the reference code, the returned perturbation is ``(1 + overshoot)·Σr`` and success is tested at that
point after every step. A sample stops as soon as it succeeds and is never perturbed further.

Cost per iteration, for the ``A`` samples still running (the others leave the batch):

* one ``trace`` of the ``A`` current points (with a graph if ``differentiable``);
* untargeted samples: one batched reverse of ``A × (Q − 1)`` rows ``e_c − e_l`` (``Q`` = number of
  candidate classes) to choose ``k``; it runs without a graph, since ``k`` is piecewise constant and no
  gradient flows through the choice;
* one reverse of ``A`` rows ``e_k − e_l`` (with a graph if ``differentiable``, so a loss on the perturbation
  back-propagates through the whole recursion to the weights). Skipped without a graph when every running
  sample is untargeted: the chosen row of the batched reverse is reused.

A sample whose step flips its label leaves the batch; when that happens the survivors are traced again
(one extra forward of the survivors, cheaper than reversing the finished samples' rows). ``early_stop=False``
keeps every sample for all ``max_iter`` steps (the worst case, for benchmarks): each step then moves from the
current point towards the nearest linearised boundary of the label ``l``, and success and the label describe
the final point.

``class_chunk`` bounds the rows of the choosing reverse: the ``Q − 1`` candidate rows go through the reverse
in groups of ``class_chunk`` classes (``A × class_chunk`` rows at a time), keeping only their norms, which cuts
the peak memory of that reverse by about ``(Q − 1) / class_chunk``; the choice is the same. The default
(``None``) on the CPU puts at most 512 rows through each choosing reverse (``max(1, 512 // A)`` classes at a
time): on a 2-core CPU the LeNet Deep Defense step at batch 100 then peaks at 92 MiB
(``benchmarks/results/step.md``; 223 MiB with all 900 rows at once when this was first measured), and
LeNet's evaluation DeepFool ran at 1,125 images/s against 1,119 at 2 classes per reverse, 961 at 1 and 993
at all 9, timed in the same rounds (``python benchmarks/deepfool.py --parts mnist --models lenet --peers
--engines revnet loop batched --class-chunks 1 2 9``, ``benchmarks/results/class-chunk/deepfool.md``); small
batches and cheap networks keep the single batched reverse; on other devices all classes go in one batched
reverse (GPUs prefer the large batch).

``box = (lo, hi)`` keeps ``x + Δx`` in the valid input range, per element (tensors that broadcast against one
input, e.g. the pixel range in the network's input space). A clamp alone often fails to cross the boundary in
a few iterations, so each step is an *active-set* step: the components of ``w`` that would push an element
already at its bound further out are zeroed (``w̃``), the nearest class and the step use ``w̃``
(``r = |f_k − f_l| / ‖w̃‖² · w̃``), and the accumulated point is then clamped into the box. Subgradients: the
mask is piecewise constant and carries no gradient (like the choice of ``k``); the clamp passes the gradient
where ``lo ≤ x + Δx ≤ hi`` (bounds included) and none where it clips.

The network runs in whatever mode it is in (call ``net.eval()`` first: BatchNorm reverses only with frozen
statistics, and Dropout would draw a new mask at each iteration). Norms are guarded against division by
zero by clamping them at ``finfo(dtype).eps²`` (1.4e-14 in float32, 4.9e-32 in float64): a zero gradient
difference gives a zero step, and the step's derivative ``|f_k − f_l| / ‖w‖²`` stays finite.
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple, Optional

import torch
from torch import Tensor, nn

from .._checks import check_batch, check_classes, check_labels, check_network, norm_floor  # noqa: F401 (re-exported)
from ..layers.protocol import noise_of, select_noise, trace_with


class DeepFoolInfo(NamedTuple):
    success: Tensor  # (N,) bool: the attack reached its goal (label flipped / target reached)
    iterations: Tensor  # (N,) int64: steps taken (0 only for a targeted sample already at its target)
    label: Tensor  # (N,) int64: prediction at the returned point x + Δx
    original_label: Tensor  # (N,) int64: prediction at the clean input


def _check_max_iter(max_iter: int) -> None:
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}.")


def _check_overshoot(overshoot: float) -> None:
    if not (overshoot >= 0 and overshoot < float("inf")):
        raise ValueError(f"overshoot must be a finite number >= 0, got {overshoot!r}.")


def deepfool(
    net: nn.Module,
    x: Tensor,
    *,
    target: Optional[Tensor] = None,
    max_iter: int = 50,
    overshoot: float = 0.02,
    candidates: Optional[int] = None,
    differentiable: bool = False,
    early_stop: bool = True,
    class_chunk: Optional[int] = None,
    noise: object = None,
    box: Optional[tuple[Tensor, Tensor]] = None,
) -> tuple[Tensor, DeepFoolInfo]:
    """DeepFool perturbations ``Δx`` (same shape as ``x``) and a :class:`DeepFoolInfo`.

    Args:
        net: a revnet network (``trace``/``reverse``) mapping ``x (N, *in)`` to logits ``(N, C)``.
        x: the clean inputs ``(N, *in)``, float32 or float64, on the network's device.
        target: ``(N,)`` integer classes to move each sample to; ``−1`` for an untargeted attack
            (the default for every sample).
        max_iter: the most steps per sample (>= 1).
        overshoot: the accumulated steps are scaled by ``1 + overshoot``.
        candidates: untargeted only: consider only the top-``candidates`` classes of the clean logits
            (fixed for the whole attack; the clean prediction is one of them), e.g. 10 on ImageNet.
        differentiable: keep the whole recursion in the autograd graph so a loss on ``Δx`` trains the
            weights (Deep Defense). The default builds no graph (it runs under ``torch.no_grad()``).
        early_stop: a sample leaves the batch when it reaches its goal (default). ``False``: every sample runs
            all ``max_iter`` steps (the worst case; for benchmarks).
        class_chunk: reverse the candidate classes for the choice of ``k`` in groups of this many (less peak
            memory, same result); ``None``: at most 512 rows per reverse on the CPU, all classes at once
            elsewhere (see above); a value ≥ ``Q − 1``: all in one batched reverse.
        noise: the random draws (Dropout masks in training mode) to use for ``x``, from
            ``revnet.noise_of(net, tape)`` of an earlier trace of ``x``; ``None``: drawn by the first trace.
            Either way every re-trace reuses each sample's draws (see :func:`deepfool_from_trace`).
        box: ``(lo, hi)``, tensors that broadcast against one input: keep ``x + Δx`` inside, with the
            active-set step above; ``None``: unconstrained (the paper's DeepFool).
    """
    check_batch(x)
    check_network(net, x)
    _check_max_iter(max_iter)
    _check_overshoot(overshoot)
    with contextlib.nullcontext() if differentiable else torch.no_grad():
        logits, tape = trace_with(net, x, noise)
        return deepfool_from_trace(
            net, x, logits, tape, target=target, max_iter=max_iter, overshoot=overshoot,
            candidates=candidates, differentiable=differentiable, early_stop=early_stop, class_chunk=class_chunk,
            box=box,
        )


def _check_target(target: Optional[Tensor], logits: Tensor, x: Tensor) -> Tensor:
    n, num_classes = logits.shape
    if target is None:
        return torch.full((n,), -1, dtype=torch.long, device=x.device)
    check_labels(target, x, "target")
    target = target.to(device=x.device, dtype=torch.long)
    if ((target < -1) | (target >= num_classes)).any():
        raise ValueError(
            f"target entries must be class indices in [0, {num_classes}) or -1 (untargeted); "
            f"got values in [{int(target.min())}, {int(target.max())}]."
        )
    return target


def _check_box(box: Optional[tuple[Tensor, Tensor]], x: Tensor) -> Optional[tuple[Tensor, Tensor]]:
    """``(lo, hi)`` (tensors or numbers) broadcast to one input and flattened, ``(D,)`` each, in ``x``'s dtype
    and device (pass numbers or tensors of ``x``'s dtype: a float32 bound is not exact in float64); ``None``
    stays ``None``. A box with ``lo > hi`` somewhere, or that does not broadcast, is one ``ValueError`` line."""
    if box is None:
        return None
    try:
        lo, hi = (torch.as_tensor(b, dtype=x.dtype, device=x.device).expand(x.shape[1:]).reshape(-1) for b in box)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"box must be two tensors (lo, hi) that broadcast against one input of shape "
                         f"{tuple(x.shape[1:])} ({exc}).") from None
    if (lo > hi).any():
        raise ValueError("box: lo must not exceed hi anywhere.")
    return lo, hi


def _check_class_chunk(class_chunk: Optional[int]) -> None:
    if class_chunk is not None and (isinstance(class_chunk, bool) or not isinstance(class_chunk, int)
                                    or class_chunk < 1):
        raise ValueError(f"class_chunk must be None or an integer >= 1, got {class_chunk!r}.")


def _check_candidates(candidates: Optional[int], num_classes: int) -> int:
    if candidates is None:
        return num_classes
    if isinstance(candidates, bool) or not isinstance(candidates, int) or not 2 <= candidates <= num_classes:
        raise ValueError(
            f"candidates must be an integer in [2, {num_classes}] (the network has {num_classes} classes), "
            f"got {candidates!r}."
        )
    return candidates


def deepfool_from_trace(
    net: nn.Module,
    x: Tensor,
    logits: Tensor,
    tape: object,
    *,
    target: Optional[Tensor] = None,
    max_iter: int = 50,
    overshoot: float = 0.02,
    candidates: Optional[int] = None,
    differentiable: bool = False,
    early_stop: bool = True,
    class_chunk: Optional[int] = None,
    box: Optional[tuple[Tensor, Tensor]] = None,
) -> tuple[Tensor, DeepFoolInfo]:
    """:func:`deepfool` continuing from a trace of the clean input that the caller already has
    (``logits, tape = net.trace(x)``), e.g. the one whose logits feed a cross-entropy. Runs in the caller's
    grad mode: wrap it in ``torch.no_grad()`` unless ``differentiable``.

    Random layers: a network in training mode with Dropout draws its masks in that first trace; every re-trace
    here passes the rows of those masks that belong to the samples still running (``noise_of`` and
    ``select_noise``), so each sample keeps one mask for the whole recursion, in every forward and reverse,
    however many samples leave the batch."""
    check_batch(x)
    _check_max_iter(max_iter)
    _check_overshoot(overshoot)
    _check_class_chunk(class_chunk)
    if logits.dim() != 2 or logits.shape[0] != x.shape[0]:
        raise ValueError(f"DeepFool needs logits of shape (N, C) = ({x.shape[0]}, C), got {tuple(logits.shape)}.")
    check_classes(logits)
    n, num_classes = logits.shape
    target = _check_target(target, logits, x)
    q = _check_candidates(candidates, num_classes)

    bounds = _check_box(box, x)
    targeted = target >= 0
    original = logits.detach().argmax(1)
    # Candidate classes other than the clean prediction, by decreasing clean logit (the stable sort puts the
    # argmax first, even on ties): fixed for the whole attack.
    others = torch.sort(logits.detach(), dim=1, descending=True, stable=True).indices[:, 1:q]
    label = original.clone()
    success = targeted & (original == target)
    iterations = torch.zeros(n, dtype=torch.long, device=x.device)
    total = torch.zeros_like(x)  # Σr, one row per sample
    scale = 1.0 + overshoot

    noise = noise_of(net, tape)  # per-sample random draws (Dropout masks) of the clean trace, or None
    active = (~success).nonzero().squeeze(1)
    if 0 < len(active) < n:  # targeted samples already at their target never enter the batch
        logits, tape = trace_with(net, x[active], select_noise(noise, active))
    for it in range(1, max_iter + 1):
        if len(active) == 0:
            break
        away = torch.where(targeted[active], label[active], original[active])  # l
        at = None if bounds is None else (x[active] + scale * total[active]).detach().flatten(1)
        r = _step(net, logits, tape, away, target[active], others[active], differentiable, class_chunk,
                  None if bounds is None else (at, *bounds))
        r = r.reshape(-1, *x.shape[1:])
        total = total.index_put((active,), total[active] + r)
        if bounds is not None:  # back into the box: Σr such that x + (1 + overshoot)·Σr = clamp(...)
            inside = torch.clamp(x[active] + scale * total[active], *(b.view(x.shape[1:]) for b in bounds))
            total = total.index_put((active,), (inside - x[active]) / scale)
        iterations[active] = it
        point = x[active] + scale * total[active]
        if it == max_iter:
            with torch.no_grad():
                now = (trace_with(net, point, select_noise(noise, active))[0] if noise is not None
                       else net(point)).argmax(1)
        else:
            logits, tape = trace_with(net, point, select_noise(noise, active))
            now = logits.detach().argmax(1)
        done = torch.where(targeted[active], now == target[active], now != original[active])
        label[active] = now
        success[active] = done
        if early_stop and done.any():
            active = active[~done]
            if 0 < len(active) and it < max_iter:
                logits, tape = trace_with(net, point[~done], select_noise(noise, active))
    return scale * total, DeepFoolInfo(success, iterations, label, original)


def _step(
    net: nn.Module, logits: Tensor, tape: object, away: Tensor, target: Tensor, others: Tensor, differentiable: bool,
    class_chunk: Optional[int] = None, box: Optional[tuple[Tensor, Tensor, Tensor]] = None,
) -> Tensor:
    """One DeepFool step for the ``A`` traced samples, flattened: ``r (A, D)``.

    ``away`` (A,): the label l moved away from; ``target`` (A,): the class for targeted rows, −1 otherwise;
    ``others`` (A, Q−1): the candidate classes of untargeted rows; ``class_chunk``: candidate classes per
    choosing reverse (``None``: :func:`_default_class_chunk`); ``box``: ``(point (A, D), lo (D,), hi (D,))``,
    the current points and the bounds, flattened, for the active-set step (see the module docstring)."""
    def free(w: Tensor) -> Tensor:  # w (A, D) or (A, J, D) with the blocked components zeroed
        if box is None:
            return w
        point, lo, hi = (t if w.dim() == 2 or t.dim() == 1 else t[:, None] for t in box)
        return w.masked_fill(((point >= hi) & (w > 0)) | ((point <= lo) & (w < 0)), 0.0)

    a, num_classes = logits.shape
    rows = torch.arange(a, device=logits.device)
    untargeted = target < 0
    v_dtype = logits.dtype  # the reverse's rows have the traced logits' dtype (bf16 under autocast)
    logits = _wide(logits)  # under bf16 autocast: the step's norms and divisions in float32 (see _wide)
    floor = norm_floor(logits.dtype)
    toward, w = target, None
    if untargeted.any():
        with torch.no_grad():  # choosing k: piecewise constant, no gradient flows through the choice
            f = logits.detach()
            # the rows e_{others[a, j]} − e_{away[a]}: their reverse gives every w_c − w_l
            gap = (f.gather(1, others) - f.gather(1, away[:, None])).abs()  # (A, Q−1)
            keep_w = not differentiable and bool(untargeted.all())  # then the chosen row is the step's w
            chunk = class_chunk or _default_class_chunk(a, others.shape[1], logits.device)
            best_dist = best = None
            for j in range(0, others.shape[1], chunk):
                part = _reverse_differences(net, others[:, j : j + chunk], away, tape, num_classes, v_dtype)
                w_part = free(_wide(part).flatten(2))  # (A, J, D)
                dist, idx = (gap[:, j : j + chunk] / torch.linalg.vector_norm(w_part, dim=2).clamp_min(floor)).min(1)
                if best is None:  # min(1): the first minimum, i.e. the higher clean logit on ties
                    best_dist, best = dist, idx
                    w = w_part[rows, idx] if keep_w else None
                else:  # strictly better only, so ties keep the earlier (higher-logit) candidate
                    better = dist < best_dist
                    best_dist, best = torch.where(better, dist, best_dist), torch.where(better, idx + j, best)
                    if keep_w:
                        w = torch.where(better[:, None], w_part[rows, idx], w)
            toward = torch.where(untargeted, others[rows, best], target)
    if w is None:
        # one row per sample, e_k − e_l, with a graph when differentiable
        w = free(_wide(_reverse_differences(net, toward, away, tape, num_classes, v_dtype)).flatten(1))
    gap = (logits.gather(1, toward[:, None]) - logits.gather(1, away[:, None])).abs().squeeze(1)  # |f_k − f_l|
    norm = torch.linalg.vector_norm(w, dim=1).clamp_min(floor)  # ‖w_k − w_l‖
    r = (gap / norm).unsqueeze(1) * (w / norm.unsqueeze(1))  # |f_k − f_l| / ‖w‖² · w, without squaring ‖w‖
    return r  # (A, D)


def _wide(t: Tensor) -> Tensor:
    """``t`` in float32 if it is bf16/fp16 (a network run under ``torch.autocast``), else unchanged: the DeepFool
    step ``|f_k − f_l| / ‖w‖² · w`` divides by a squared norm, which bf16's 8-bit mantissa (and its norm floor,
    ``eps² = 6e-5``) would distort, so the step and the accumulated perturbation stay in float32 while the
    network's convolutions and matrix products run in reduced precision."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


CPU_CHOICE_ROWS = 512  # rows per choosing reverse on the CPU by default (see the module docstring)


def _default_class_chunk(samples: int, classes: int, device: torch.device) -> int:
    """All candidate classes at once, except on the CPU with more than ``CPU_CHOICE_ROWS`` rows: then as many
    classes per reverse as fit in ``CPU_CHOICE_ROWS`` rows (at least one)."""
    if device.type != "cpu":
        return classes
    return max(1, min(classes, CPU_CHOICE_ROWS // max(samples, 1)))


def _reverse_differences(net: nn.Module, toward: Tensor, away: Tensor, tape: object, num_classes: int,
                         dtype: torch.dtype) -> Tensor:
    """The reverse of the rows ``e_toward − e_away``: toward ``(A, J)`` -> ``(A, J, *in)``, toward ``(A,)`` ->
    ``(A, *in)``. A network with ``reverse_differences`` (``revnet.Sequential`` ending in a ``Linear``) starts
    from the row difference ``W[k] − W[l]``; any other gets the one-hot rows (in ``dtype``) through ``reverse``."""
    rows = getattr(net, "reverse_differences", None)
    if rows is not None:
        return rows(toward, away, tape)
    away_rows = _one_hot(away, num_classes, dtype)
    v = _one_hot(toward, num_classes, dtype) - (away_rows.unsqueeze(1) if toward.dim() == 2 else away_rows)
    return net.reverse(v, tape)


def _one_hot(index: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    return torch.nn.functional.one_hot(index, num_classes).to(dtype)
