"""Five implementations of one Deep Defense training step (plus variant 1 on a ``revnet.Graph``), and the check
that they compute the same thing.

Every variant computes the loss of ``revnet.losses.deep_defense_loss`` (eq. 6 of Yan, Guo & Zhang 2018)::

    L = CE(f(x), y) + λ/N · Σ exp(s_n · ‖Δx_n‖₂ / ‖x_n‖₂),   s_n = −c (correct) or +d (misclassified)

where ``Δx`` is the DeepFool perturbation (untargeted for correctly classified samples, targeted to the label
for the others) kept in the autograd graph, then back-propagates it to every weight and takes an optimizer
step. DeepFool's semantics are revnet's (``revnet.attacks.deepfool``): ``l`` is the clean prediction
(untargeted) or the current prediction (targeted), ``k`` minimises ``|f_k − f_l| / ‖w_k − w_l‖`` over the
other classes in decreasing order of the clean logits (first minimum), ``r = |f_k − f_l| / ‖w‖² · w``, the
perturbation is ``(1 + overshoot)·Σr`` and a sample stops once its label flipped (targeted: reached ``y``).
The five differ only in how the input gradients ``w = ∂f/∂x`` inside DeepFool are obtained and how much of
them is differentiated:

1. ``revnet``: the library's training path, ``revnet.losses.deep_defense_loss`` on a ``revnet.Sequential``:
   explicit reverse network; the K-class reverse that chooses ``k`` runs without a graph, one differentiable
   reverse row ``e_k − e_l`` per sample, early-stopped samples leave the batch.
2. ``autograd-loop``: plain ``torch.nn`` network, the gradient of every class ``c`` from its own
   ``torch.autograd.grad(f, x, e_c, create_graph=True)`` (C calls per iteration), all in the graph.
3. ``autograd-batched``: as 2, but all C classes in one ``torch.autograd.grad(..., is_grads_batched=True,
   create_graph=True)`` (one vmapped backward).
4. ``torch-func``: as 2, with ``f, vjp_fn = torch.func.vjp(net, x)`` and ``torch.func.vmap(vjp_fn)`` over
   the C one-hot cotangents; the outer ``loss.backward()`` differentiates through the transforms.
5. ``autograd-shortcut`` (ablation): plain ``torch.nn`` network and autograd, with revnet's algorithm: the
   (C−1) rows ``e_c − e_l`` that choose ``k`` are computed *without* a graph (one ``is_grads_batched``
   backward, or one ``grad()`` per row: ``choose_engine``, whichever is faster on the device), then one
   ``torch.autograd.grad(f, x, e_k − e_l, create_graph=True)`` row per sample, and early-stopped samples
   leave the batch (the survivors are forwarded again, as revnet re-traces them).

Variants 2-4 are the textbook double-backprop DeepFool: the whole batch runs every iteration until every
sample has stopped (finished samples are masked out of the update, not removed), ``k`` is chosen from the
(detached) all-class gradients, and the loss differentiates through all C gradient computations. All five
reuse the clean forward pass for the cross-entropy and DeepFool's first iteration, check the label after the
last step with a forward pass without a graph, and call ``loss.backward(inputs=weights)`` (so the autograd
variants never accumulate a gradient into their input leaf).

``no early stop`` (``StepConfig.early_stop=False``) runs all ``max_iter`` iterations for every sample (the
worst case). ``revnet.attacks.deepfool`` has no switch for it, so variant 1 then runs
:func:`shortcut_deepfool` with the :class:`RevnetEngine` below: a copy of ``deepfool_from_trace``'s loop on
revnet's public ``trace``/``reverse`` with the stop removed; with ``early_stop=True`` that copy equals the
library (checked by :func:`check_equivalence` and the tests).

``1g. revnet-graph``: variant 1's loss (``revnet.losses.deep_defense_loss``, the same algorithm) on a
``revnet.Graph`` built from the plain ``torch.nn`` copy of the network (``revnet.Graph(to_torch(net))``: the
``torch.fx`` interpreter with one tape entry per node instead of ``Sequential``'s layer loop). It is checked
against variant 1 like the others; ``benchmarks/step.py --graph-vs-sequential`` times the two interleaved.

Networks: variant 1 runs on the revnet network (a ``revnet.Sequential``, or :func:`revnet.convert` of a plain
``torch.nn`` model such as torchvision's ResNet-18, which gives a ``revnet.Graph``); variants 2-5 on
:func:`to_torch`'s plain ``torch.nn`` copy (the same ``state_dict``), so autograd never pays for revnet's tapes.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import asdict, dataclass
from typing import Any, Callable, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import revnet

RTOL = 1e-10  # float64: explicit reverse vs double backprop agree to ~1e-14 of scale; a float32 cast fails
ATOL = 1e-12


@dataclass(frozen=True)
class StepConfig:
    """The Deep Defense settings of one step (the paper's MNIST values by default)."""

    lmbd: float = 15.0
    c: float = 25.0
    d: float = 5.0
    max_iter: int = 5
    overshoot: float = 0.02
    early_stop: bool = True
    class_chunk: Optional[int] = None  # revnet only: classes per choosing reverse (None: the library's default)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class LossOutput(NamedTuple):
    loss: Tensor  # () with a graph to every weight
    iterations: Tensor  # (N,) int64 DeepFool steps per sample
    success: Tensor  # (N,) bool: DeepFool reached its goal
    correct: Tensor  # (N,) bool: clean prediction == y


class EquivalenceError(AssertionError):
    """A variant's loss, gradients or DeepFool iterations differ from revnet's: the benchmark would compare
    different computations."""


def norm_floor(dtype: torch.dtype) -> float:
    """revnet's guard: norms are clamped at ``finfo(dtype).eps²``."""
    return torch.finfo(dtype).eps ** 2


def _one_hot(index: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    return F.one_hot(index, num_classes).to(dtype)


def to_torch(net: nn.Module) -> nn.Module:
    """An independent copy of a network made of plain ``torch.nn`` modules (same settings and ``state_dict``),
    for the autograd variants: revnet layers become the ``torch.nn`` classes they subclass, a
    ``revnet.Sequential`` an ``nn.Sequential``, a ``revnet.Graph`` a ``torch.fx.GraphModule`` running the
    model's traced code (in-place calls as the model wrote them); a plain ``torch.nn`` model is just copied."""
    return _plain(copy.deepcopy(net))


def _plain(module: nn.Module) -> nn.Module:
    """Re-class ``module`` (an independent copy) and its children to plain ``torch.nn`` in place; a ``Graph``
    is replaced, so the (possibly new) module is returned."""
    if isinstance(module, revnet.Graph):
        graph_module = torch.fx.GraphModule(module, module.graph, class_name=f"Plain{module.source_name}")
        graph_module.train(module.training)
        module = graph_module
    elif isinstance(module, revnet.Sequential):
        module.__class__ = nn.Sequential
    elif type(module) in revnet.TORCH_COUNTERPARTS:
        module.__class__ = revnet.TORCH_COUNTERPARTS[type(module)]
    elif type(module).__module__.startswith("revnet"):
        raise TypeError(f"no plain torch.nn counterpart for {type(module).__name__}")
    for name, child in list(module._modules.items()):
        if child is not None:
            module._modules[name] = _plain(child)
    return module


def to_revnet(net: nn.Module) -> nn.Module:
    """An independent reversible copy of ``net``: a copy of a revnet network, else :func:`revnet.convert` of a
    copy of the plain ``torch.nn`` model (a ``revnet.Graph`` unless it is an ``nn.Sequential``)."""
    twin = copy.deepcopy(net)
    return twin if revnet.is_reversible(twin) else revnet.convert(twin)


# ---------------------------------------------------------------------------------------------------------
# Gradient engines: how w = vᵀ·∂f/∂x is obtained for R cotangent rows per sample, v (A, R, C) -> (A, R, *in).


class RevnetEngine:
    """revnet's explicit reverse: ``net.trace`` records a tape, ``net.reverse`` takes all R rows at once."""

    name = "revnet"

    def trace(self, net: nn.Module, point: Tensor) -> tuple[Tensor, Any]:
        return net.trace(point)

    def rows(self, net: nn.Module, state: Any, v: Tensor, create_graph: bool) -> Tensor:
        with contextlib.nullcontext() if create_graph else torch.no_grad():
            return net.reverse(v, state)


class _AutogradEngine:
    """Plain autograd: the forward pass keeps a graph back to the point (a fresh leaf if the point has none)."""

    def trace(self, net: nn.Module, point: Tensor) -> tuple[Tensor, Any]:
        if not point.requires_grad:
            point = point.detach().requires_grad_(True)
        with torch.enable_grad():
            out = net(point)
        return out, (out, point)

    @staticmethod
    def _one(state: Any, v: Tensor, create_graph: bool) -> Tensor:
        out, point = state
        return torch.autograd.grad(out, point, v, retain_graph=True, create_graph=create_graph)[0]


class AutogradLoop(_AutogradEngine):
    """One ``torch.autograd.grad`` call per cotangent row (per class)."""

    name = "loop"

    def rows(self, net: nn.Module, state: Any, v: Tensor, create_graph: bool) -> Tensor:
        return torch.stack([self._one(state, v[:, j], create_graph) for j in range(v.shape[1])], 1)


class AutogradBatched(_AutogradEngine):
    """All rows in one ``torch.autograd.grad(..., is_grads_batched=True)`` (a vmapped backward)."""

    name = "batched"

    def rows(self, net: nn.Module, state: Any, v: Tensor, create_graph: bool) -> Tensor:
        if v.shape[1] == 1:
            return self._one(state, v[:, 0], create_graph).unsqueeze(1)
        out, point = state
        g = torch.autograd.grad(
            out, point, v.movedim(1, 0), retain_graph=True, create_graph=create_graph, is_grads_batched=True
        )[0]
        return g.movedim(0, 1)


class TorchFunc:
    """``torch.func.vjp`` at the point, ``torch.func.vmap`` of its ``vjp_fn`` over the R rows."""

    name = "func"

    def trace(self, net: nn.Module, point: Tensor) -> tuple[Tensor, Any]:
        out, vjp_fn = torch.func.vjp(net, point)
        return out, vjp_fn

    def rows(self, net: nn.Module, state: Any, v: Tensor, create_graph: bool) -> Tensor:
        with contextlib.nullcontext() if create_graph else torch.no_grad():
            g = torch.func.vmap(state)(v.movedim(1, 0))[0].movedim(0, 1)
        return g if create_graph else g.detach()


ENGINES: dict[str, Callable[[], Any]] = {
    "revnet": RevnetEngine, "loop": AutogradLoop, "batched": AutogradBatched, "func": TorchFunc,
}


# ---------------------------------------------------------------------------------------------------------
# DeepFool, two algorithms on any engine.


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
        if it == max_iter:
            with torch.no_grad():
                now = net(point).argmax(1)
        else:
            logits, state = engine.trace(net, point)
            now = logits.detach().argmax(1)
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
        if it == max_iter:
            with torch.no_grad():
                now = net(point).argmax(1)
        else:
            logits, state = engine.trace(net, point)
            now = logits.detach().argmax(1)
        reached = torch.where(targeted, now == target, now != original)
        label = torch.where(running, now, label)
        success = torch.where(running, reached, success)
        if early_stop:
            running = running & ~reached
    return DeepFoolResult(scale * total, iterations, success, label, original)


# ---------------------------------------------------------------------------------------------------------
# The Deep Defense loss on top of either algorithm.


def _classes(logits: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    correct = logits.detach().argmax(1) == y
    return correct, torch.where(correct, torch.full_like(y, -1), y)


def regularized_loss(logits: Tensor, x: Tensor, y: Tensor, delta: Tensor, correct: Tensor, cfg: StepConfig) -> Tensor:
    """``CE + λ/N Σ exp(s·‖Δx‖/‖x‖)``, written as ``revnet.losses`` writes it."""
    ce = F.cross_entropy(logits, y)
    ratio = torch.linalg.vector_norm(delta.flatten(1), dim=1) / torch.linalg.vector_norm(
        x.flatten(1), dim=1
    ).clamp_min(norm_floor(x.dtype))
    sign = torch.where(correct, torch.full_like(ratio, -cfg.c), torch.full_like(ratio, cfg.d))
    return ce + cfg.lmbd * torch.exp(sign * ratio).sum() / len(x)


class Variant:
    """One way to compute the Deep Defense step: ``prepare`` the network, ``loss``, ``step``."""

    key: str = ""
    number: int | str = 0
    title: str = ""
    summary: str = ""

    def prepare(self, net: nn.Module) -> nn.Module:
        """The network this variant runs on, an independent copy of ``net`` (a revnet network or a plain
        ``torch.nn`` model): plain ``torch.nn`` for 2-5."""
        return to_torch(net)

    def loss(self, net: nn.Module, x: Tensor, y: Tensor, cfg: StepConfig) -> LossOutput:
        raise NotImplementedError

    def step(
        self,
        net: nn.Module,
        optimizer: torch.optim.Optimizer,
        x: Tensor,
        y: Tensor,
        cfg: StepConfig = StepConfig(),
        *,
        autocast: Optional[Callable[[], Any]] = None,
        scaler: Optional[Any] = None,
    ) -> Tensor:
        """One training step: forward, DeepFool, loss, backward to every weight, ``optimizer.step()``.
        ``autocast``: a context-manager factory (mixed precision); ``scaler``: a ``torch.amp.GradScaler``.
        Returns the (detached) loss."""
        return self.train_step(net, optimizer, x, y, cfg, autocast=autocast, scaler=scaler).loss

    def train_step(
        self,
        net: nn.Module,
        optimizer: torch.optim.Optimizer,
        x: Tensor,
        y: Tensor,
        cfg: StepConfig = StepConfig(),
        *,
        autocast: Optional[Callable[[], Any]] = None,
        scaler: Optional[Any] = None,
    ) -> LossOutput:
        """:meth:`step`, returning the whole (detached) :class:`LossOutput` of the step's loss (at the weights
        before the update)."""
        optimizer.zero_grad(set_to_none=True)
        with autocast() if autocast is not None else contextlib.nullcontext():
            out = self.loss(net, x, y, cfg)
        weights = [p for p in net.parameters() if p.requires_grad]
        if scaler is not None:
            scaler.scale(out.loss).backward(inputs=weights)
            scaler.step(optimizer)
            scaler.update()
        else:
            out.loss.backward(inputs=weights)
            optimizer.step()
        return LossOutput(out.loss.detach(), out.iterations, out.success, out.correct)


class RevnetVariant(Variant):
    key, number, title = "revnet", 1, "revnet (explicit reverse)"
    summary = ("revnet.losses.deep_defense_loss: explicit reverse; k chosen by graph-free reverses of the K-1 "
               "candidate rows (at most 512 rows per reverse on the CPU, all at once on CUDA), one differentiable reverse "
               "row per sample, early-stopped samples leave the batch")

    def prepare(self, net: nn.Module) -> nn.Module:
        return to_revnet(net)

    def loss(self, net: nn.Module, x: Tensor, y: Tensor, cfg: StepConfig) -> LossOutput:
        loss, info = revnet.losses.deep_defense_loss(  # the library's own training path
            net, x, y, lmbda=cfg.lmbd, c=cfg.c, d=cfg.d, max_iter=cfg.max_iter, overshoot=cfg.overshoot,
            early_stop=cfg.early_stop, class_chunk=cfg.class_chunk,
        )
        return LossOutput(loss, info.iterations, info.success, info.correct)


class RevnetGraphVariant(RevnetVariant):
    """Variant 1 on a ``revnet.Graph`` of the plain ``torch.nn`` copy (``Graph(nn.Sequential)`` for a chain)."""

    key, number, title = "revnet-graph", "1g", "revnet on revnet.Graph"
    summary = ("variant 1's loss (revnet.losses.deep_defense_loss, the same algorithm) on revnet.Graph(plain "
               "torch.nn copy): the torch.fx node interpreter, one tape entry per node, instead of Sequential")

    def prepare(self, net: nn.Module) -> nn.Module:
        return revnet.Graph(to_torch(net))


def _shortcut_loss(engine, net: nn.Module, x: Tensor, y: Tensor, cfg: StepConfig) -> LossOutput:
    logits, state = engine.trace(net, x)
    correct, target = _classes(logits, y)
    res = shortcut_deepfool(
        engine, net, x, logits, state, target=target, max_iter=cfg.max_iter, overshoot=cfg.overshoot,
        differentiable=True, early_stop=cfg.early_stop,
    )
    return LossOutput(regularized_loss(logits, x, y, res.delta, correct, cfg), res.iterations, res.success, correct)


class MaskedVariant(Variant):
    """Variants 2-4: textbook double backprop through all C class gradients (:func:`masked_deepfool`)."""

    engine_key = ""

    def loss(self, net: nn.Module, x: Tensor, y: Tensor, cfg: StepConfig) -> LossOutput:
        engine = ENGINES[self.engine_key]()
        logits, state = engine.trace(net, x)
        correct, target = _classes(logits, y)
        res = masked_deepfool(
            engine, net, x, logits, state, target=target, max_iter=cfg.max_iter, overshoot=cfg.overshoot,
            early_stop=cfg.early_stop,
        )
        return LossOutput(regularized_loss(logits, x, y, res.delta, correct, cfg), res.iterations, res.success, correct)


class AutogradLoopVariant(MaskedVariant):
    key, number, title, engine_key = "autograd-loop", 2, "autograd, grad() per class", "loop"
    summary = ("one torch.autograd.grad(create_graph=True) per class (C calls/iteration), whole batch until all "
               "samples stop, loss differentiates through all C gradients")


class AutogradBatchedVariant(MaskedVariant):
    key, number, title, engine_key = "autograd-batched", 3, "autograd, is_grads_batched", "batched"
    summary = ("all C class gradients in one torch.autograd.grad(is_grads_batched=True, create_graph=True), "
               "whole batch until all samples stop")


class TorchFuncVariant(MaskedVariant):
    key, number, title, engine_key = "torch-func", 4, "torch.func vmap(vjp)", "func"
    summary = ("torch.func.vjp + torch.func.vmap over the C one-hot cotangents, outer loss.backward(), whole "
               "batch until all samples stop")


class AutogradShortcutVariant(Variant):
    key, number, title = "autograd-shortcut", 5, "autograd + revnet's shortcuts"
    choose_engine = "batched"  # or "loop": how the graph-free C-1 rows are computed (step.py --shortcut-choice)

    @property
    def summary(self) -> str:  # type: ignore[override]
        how = ("one graph-free is_grads_batched backward" if self.choose_engine == "batched"
               else "C-1 graph-free grad() calls")
        return (f"ablation: autograd with revnet's algorithm: k chosen from the C-1 rows e_c - e_l ({how}), one "
                "grad(create_graph=True) row e_k - e_l per sample, early-stopped samples leave the batch")

    def loss(self, net: nn.Module, x: Tensor, y: Tensor, cfg: StepConfig) -> LossOutput:
        return _shortcut_loss(ENGINES[self.choose_engine](), net, x, y, cfg)


class RevnetCompiledVariant(RevnetVariant):
    """Variant 1 with the network's ``trace`` and ``reverse_differences`` (or ``reverse``) wrapped in
    ``torch.compile(dynamic=True)`` on its own copy; the DeepFool loop around them stays eager (its early
    stopping changes the batch size, which the dynamic shapes absorb: no recompile per size after the first
    two compiles, the 1-sample priming step's and the first full batch's). Not in the default set: compiling
    takes about a minute per network and dtype on the 2-core CPU (reported apart from the step time)."""

    key, number, title = "revnet-compiled", "1c", "revnet, torch.compile'd trace and reverse"
    summary = ("variant 1 with net.trace and net.reverse_differences wrapped in torch.compile(dynamic=True) "
               "(inductor); the DeepFool loop stays eager")

    def prepare(self, net: nn.Module) -> nn.Module:
        twin = to_revnet(net)
        twin.trace = torch.compile(twin.trace, dynamic=True)  # instance attributes of this benchmark copy only
        name = "reverse_differences" if callable(getattr(twin, "reverse_differences", None)) else "reverse"
        setattr(twin, name, torch.compile(getattr(twin, name), dynamic=True))
        return twin


VARIANTS: dict[str, Variant] = {
    v.key: v
    for v in (RevnetVariant(), RevnetGraphVariant(), AutogradLoopVariant(), AutogradBatchedVariant(),
              TorchFuncVariant(), AutogradShortcutVariant())
}
COMPILED = RevnetCompiledVariant()
ALL_VARIANTS: dict[str, Variant] = {**VARIANTS, COMPILED.key: COMPILED}  # --compile adds variant 1c


def compile_frames() -> int:
    """Frames torch.compile has compiled in this process so far (one per compile or recompile)."""
    from torch._dynamo.utils import counters

    return int(counters["frames"].get("ok", 0))


# ---------------------------------------------------------------------------------------------------------
# Equivalence.


def _scaled_error(actual: Tensor, expected: Tensor) -> float:
    """max |a − e| / (atol + rtol·|e|) after dividing both by max(1, |e|max): <= 1 means equal."""
    scale = max(1.0, expected.detach().abs().max().item()) if expected.numel() else 1.0
    a, e = actual.detach().double() / scale, expected.detach().double() / scale
    if a.shape != e.shape:
        return float("inf")
    if not a.numel():
        return 0.0
    return ((a - e).abs() / (ATOL + RTOL * e.abs())).max().item()


def loss_and_gradients(variant: Variant, net: nn.Module, x: Tensor, y: Tensor, cfg: StepConfig):
    """``(LossOutput, {name: d loss / d weight})`` of one variant (no optimizer step). A weight the loss
    does not reach counts as a zero gradient."""
    out = variant.loss(net, x, y, cfg)
    weights = dict(net.named_parameters())
    grads = torch.autograd.grad(out.loss, list(weights.values()), allow_unused=True)
    return out, {
        name: g if g is not None else torch.zeros_like(p) for (name, p), g in zip(weights.items(), grads)
    }


def check_equivalence(
    net: nn.Module,
    x: Tensor,
    y: Tensor,
    cfg: StepConfig = StepConfig(),
    keys: Optional[list[str]] = None,
) -> dict[str, dict[str, Any]]:
    """Run each variant on its own float64 copy of the revnet network ``net`` and compare its loss, weight
    gradients and DeepFool iterations/success with variant 1 (``revnet``). Tolerance: ``|a − e| <= ATOL +
    RTOL·|e|`` after dividing both by ``max(1, |e|max)``. Raises :class:`EquivalenceError`; returns per
    variant the worst scaled error (<= 1 passes) of the loss and of the gradients."""
    keys = list(VARIANTS) if keys is None else list(keys)
    x64, y = x.detach().to(torch.float64), y.detach().long()
    base = copy.deepcopy(net).to(torch.float64).eval()
    report: dict[str, dict[str, Any]] = {}

    ref, ref_grads = loss_and_gradients(VARIANTS["revnet"], VARIANTS["revnet"].prepare(base), x64, y, cfg)
    for key in keys:
        if key == "revnet":
            continue
        variant = VARIANTS[key]
        out, grads = loss_and_gradients(variant, variant.prepare(base), x64, y, cfg)
        report[key] = _compare(key, out, grads, ref, ref_grads)
    report["revnet"] = {
        "loss_error": 0.0, "grad_error": 0.0, "mean_iterations": ref.iterations.double().mean().item(),
        "correct": int(ref.correct.sum()), "n": len(y),
    }
    return report


def _compare(name: str, out: LossOutput, grads: dict, ref: LossOutput, ref_grads: dict) -> dict[str, Any]:
    problems = []
    if not torch.equal(out.iterations, ref.iterations) or not torch.equal(out.success, ref.success):
        problems.append(
            f"DeepFool differs: iterations {out.iterations.tolist()} vs revnet {ref.iterations.tolist()}, "
            f"success {out.success.tolist()} vs {ref.success.tolist()}"
        )
    loss_err = _scaled_error(out.loss, ref.loss)
    if not loss_err <= 1:
        problems.append(f"loss {out.loss.item():.17g} vs revnet {ref.loss.item():.17g}")
    grad_err = 0.0
    if grads.keys() != ref_grads.keys():
        problems.append(f"parameter names {sorted(grads)} vs {sorted(ref_grads)}")
    else:
        for pname, g in grads.items():
            err = _scaled_error(g, ref_grads[pname])
            grad_err = max(grad_err, err)
            if not err <= 1:
                diff = (g - ref_grads[pname]).abs().max().item()
                problems.append(f"d loss / d {pname}: max |diff| {diff:.3g} (max |revnet| "
                                f"{ref_grads[pname].abs().max().item():.3g})")
    if problems:
        raise EquivalenceError(
            f"{name} does not compute revnet's step (float64, rtol={RTOL}, atol={ATOL} after scaling):\n  "
            + "\n  ".join(problems)
        )
    return {"loss_error": loss_err, "grad_error": grad_err, "mean_iterations": out.iterations.double().mean().item()}


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
