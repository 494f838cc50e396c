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
:func:`shortcut_deepfool` (``deepfool_algorithms.py``) with the :class:`RevnetEngine` (``gradient_engines.py``): a
copy of ``deepfool_from_trace``'s loop on revnet's public ``trace``/``reverse`` with the stop removed; with
``early_stop=True`` that copy equals the library (checked by :func:`check_equivalence`, ``variant_equivalence.py``,
and the tests).

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
from revnet_app.benchmarks.deepfool_algorithms import masked_deepfool, norm_floor, shortcut_deepfool
from revnet_app.benchmarks.gradient_engines import ENGINES


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
        details: bool = False,
    ) -> Tensor | LossOutput:
        """One training step: forward, DeepFool, loss, backward to every weight, ``optimizer.step()``.
        ``autocast``: a context-manager factory (mixed precision); ``scaler``: a ``torch.amp.GradScaler``.
        Returns the (detached) loss, or with ``details`` the whole (detached) :class:`LossOutput` of the step's
        loss (at the weights before the update)."""
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
        loss = out.loss.detach()
        return LossOutput(loss, out.iterations, out.success, out.correct) if details else loss


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


def _engine_loss(deepfool: Callable[..., Any], engine, net: nn.Module, x: Tensor, y: Tensor, cfg: StepConfig,
                 **options: Any) -> LossOutput:
    """Variants 2-5: the clean forward on ``engine``, ``deepfool`` (:func:`masked_deepfool` or
    :func:`shortcut_deepfool`, with ``options``) from it, and the regularized loss."""
    logits, state = engine.trace(net, x)
    correct, target = _classes(logits, y)
    res = deepfool(
        engine, net, x, logits, state, target=target, max_iter=cfg.max_iter, overshoot=cfg.overshoot,
        early_stop=cfg.early_stop, **options,
    )
    return LossOutput(regularized_loss(logits, x, y, res.delta, correct, cfg), res.iterations, res.success, correct)


class MaskedVariant(Variant):
    """Variants 2-4: textbook double backprop through all C class gradients (:func:`masked_deepfool`)."""

    engine_key = ""

    def loss(self, net: nn.Module, x: Tensor, y: Tensor, cfg: StepConfig) -> LossOutput:
        return _engine_loss(masked_deepfool, ENGINES[self.engine_key](), net, x, y, cfg)


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
        return _engine_loss(shortcut_deepfool, ENGINES[self.choose_engine](), net, x, y, cfg, differentiable=True)


class RevnetCompiledVariant(RevnetVariant):
    """Variant 1 with the network's ``trace`` and ``reverse_differences`` (or ``reverse``) wrapped in
    ``torch.compile`` on its own copy, with automatic dynamic shapes (``dynamic=None``): each function compiles
    for the first shapes it sees and once more, with the dimensions that changed made symbolic, when the DeepFool
    loop's early stopping shrinks the batch; the loop around them stays eager. Not ``dynamic=True``: that makes
    every size symbolic, the tape's spatial sizes included, and inductor (torch 2.14) then fails on LeNet's
    reverse (``cannot determine truth value of Relational`` while ordering a view's strides, e.g. ``50*s70 <
    50``, where ``s70`` is a pooling's input width taken from the tape). Not in the default set: compiling takes
    about a minute per network and dtype on the 2-core CPU (reported apart from the step time)."""

    key, number, title = "revnet-compiled", "1c", "revnet, torch.compile'd trace and reverse"
    summary = ("variant 1 with net.trace and net.reverse_differences wrapped in torch.compile (inductor, automatic "
               "dynamic shapes); the DeepFool loop stays eager")

    def prepare(self, net: nn.Module) -> nn.Module:
        twin = to_revnet(net)
        # one code object (Sequential.trace, .reverse_differences) serves every network, batch size and grad mode
        # in this process: above dynamo's default of 8 graphs per code object, the later ones would run eagerly
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        twin.trace = torch.compile(twin.trace, dynamic=None)  # instance attributes of this benchmark copy only
        name = "reverse_differences" if callable(getattr(twin, "reverse_differences", None)) else "reverse"
        setattr(twin, name, torch.compile(getattr(twin, name), dynamic=None))
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
