"""``revnet.check(model, x)``: does the converted network reproduce ``model`` and its derivatives on ``x``?

For users who register their own rules (``revnet.register``, ``revnet.register_function``) or convert a model
of their own. On float64 copies of the model and of ``x`` (the model itself is not touched) it

* converts the model and compares the traced forward with ``model(x)``;
* compares the reverse of ``k`` random cotangents with autograd's VJPs (first order);
* compares the gradients of a loss on the reverse w.r.t. every parameter and ``x`` with double backprop
  (second order: what Deep Defense's training step needs);

and if any differs, finds the first node of the graph (or layer of a chain) whose own reverse disagrees with
autograd on that node alone, first or second order, and names it. Differences are scaled,
``max|ours − autograd| / max(1, max|autograd|)``; ``tol`` bounds them (float64 round-off is ~1e-15).

Run it in eval mode: a stochastic layer in training mode (Dropout) draws another mask in the autograd
reference. The autograd reference runs torch's attention in its math backend (the fused CPU kernel has no
double backward). A batch of one sample is checked as two copies of it: torch's CPU ``batch_norm`` backward
in eval mode is wrong at batch 1 when the incoming gradient has channels-last strides (as after a
``flatten(2).transpose(1, 2)``; torch 2.14.1, float32 and float64, ``benchmarks/torch_batchnorm_backward.py``),
which made autograd, not revnet, disagree on timm's ``iformer_t`` and ``efficientformer_l1``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import Tensor, nn
from torch.fx.node import map_arg

from .convert import convert
from .graph import Graph
from .graph_build import _target_name, _where
from .layers.protocol import is_reversible, reverse_rows
from .sequential import Sequential

F64 = torch.float64


@dataclass
class CheckReport:
    """What :func:`check` found: the three scaled differences, whether all are within ``tol``, and the first
    node or layer whose own reverse disagrees (``None`` if none does)."""

    forward: float
    first_order: float
    second_order: float
    tol: float
    first_bad: Optional[str] = None
    nodes_checked: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return max(self.forward, self.first_order, self.second_order) <= self.tol

    def __str__(self) -> str:
        verdict = "OK" if self.ok else "MISMATCH"
        text = (f"revnet.check: {verdict} (forward {self.forward:.1e}, first order {self.first_order:.1e}, "
                f"second order {self.second_order:.1e}; tolerance {self.tol:g})")
        if self.first_bad:
            text += f"; first disagreeing {self.first_bad}"
        return text


def scaled_difference(actual: Tensor, expected: Tensor) -> float:
    actual, expected = actual.detach(), expected.detach()
    if actual.numel() == 0:
        return 0.0
    return float((actual - expected).abs().max() / max(1.0, float(expected.abs().max())))


def check(model: nn.Module, x: Tensor, *, k: int = 2, seed: int = 0, tol: float = 1e-9) -> CheckReport:
    """Compare ``revnet.convert(model)`` with autograd on ``x`` in float64 (see the module docstring)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model = copy.deepcopy(model).to(F64)
    x = x.detach().to(F64)
    if x.shape[0] == 1:  # torch's batch_norm backward is wrong at batch 1 (see the module docstring)
        x = torch.cat([x, x])
    gen = torch.Generator().manual_seed(seed)
    with sdpa_kernel(SDPBackend.MATH):
        net = convert(model)
        xq = x.clone().requires_grad_(True)
        y, tape = net.trace(xq.clone())
        xr = x.clone().requires_grad_(True)
        plain = model(xr)
        v = torch.randn(x.shape[0], k, *y.shape[1:], generator=gen, dtype=F64)
        g = net.reverse(v, tape)
        ref = torch.stack([torch.autograd.grad(plain, xr, v[:, j], retain_graph=True, create_graph=True)[0]
                           for j in range(k)], 1)
        w = torch.randn(g.shape, generator=gen, dtype=F64)
        params = [p for p in model.parameters() if p.requires_grad]
        ours = _grads((w * g).square().sum(), [*params, xq])
        theirs = _grads((w * ref).square().sum(), [*params, xr])
        second = max((scaled_difference(_or_zeros(a, p), _or_zeros(b, p))
                      for a, b, p in zip(ours, theirs, [*params, x])), default=0.0)
        report = CheckReport(scaled_difference(y, plain), scaled_difference(g, ref), second, tol)
        if not report.ok:
            report.first_bad, report.nodes_checked = _first_bad_part(net, x, gen, tol)
    return report


def _grads(loss: Tensor, inputs: list) -> tuple:
    """``torch.autograd.grad(loss, inputs)``, with ``None`` for inputs it does not reach (all of them when the
    loss does not depend on any: a reverse that detached everything)."""
    if not loss.requires_grad:
        return (None,) * len(inputs)
    return torch.autograd.grad(loss, inputs, allow_unused=True)


def _or_zeros(grad: Optional[Tensor], like: Tensor) -> Tensor:
    return torch.zeros_like(like) if grad is None else grad


def _first_bad_part(net: nn.Module, x: Tensor, gen: torch.Generator, tol: float) -> tuple[Optional[str], int]:
    """The first graph node, or chain layer, whose reverse alone disagrees with autograd, and how many were
    checked."""
    if isinstance(net, Graph):
        return _first_bad_node(net, x, gen, tol)
    if isinstance(net, Sequential):
        checked = 0
        for name, layer in net.named_children():
            found, n = _first_bad_part(layer, x, gen, tol) if isinstance(layer, (Graph, Sequential)) else (
                _module_verdict(layer, x, gen, tol, f"layer '{name}' ({type(layer).__name__})"), 1)
            checked += n
            if found:
                return found, checked
            with torch.no_grad():
                x = layer(x)
        return None, checked
    return _module_verdict(net, x, gen, tol, type(net).__name__), 1


def _first_bad_node(net: Graph, x: Tensor, gen: torch.Generator, tol: float) -> tuple[Optional[str], int]:
    _, traced = net._mode()
    values: list[Any] = []
    _, entries, _ = net._run_nodes(traced.steps, x, record=True, values=values)
    checked = 0
    for i, step in enumerate(traced.steps):
        if step.kind not in ("module", "rule") or not step.live:
            continue
        node = step.node
        label = f"node '{node.name}' ({_target_name(node)}){_where(node)}"
        checked += 1
        if step.kind == "module":
            verdict = _module_verdict(net.get_submodule(node.target), values[step.sources[0]], gen, tol, label,
                                      entries[i])
        else:
            verdict = _rule_verdict(step, values, entries[i], gen, tol, label)
        if verdict:
            return verdict, checked
    return None, checked


def _module_verdict(module: nn.Module, inp: Tensor, gen: torch.Generator, tol: float, label: str,
                    entry: Any = None) -> Optional[str]:
    """Whether ``module``'s trace/reverse at ``inp`` agrees with autograd through its forward (one cotangent;
    second order w.r.t. its parameters and input)."""
    if not is_reversible(module):
        return None
    xq = inp.detach().clone().requires_grad_(True)
    y, tape = module.trace(xq.clone())  # a copy: an in-place forward must not write into the leaf
    if entry is not None and not isinstance(y, Tensor):
        return None
    xr = inp.detach().clone().requires_grad_(True)
    plain = module(xr.clone())
    v = torch.randn(y.shape[0], _K, *y.shape[1:], generator=gen, dtype=y.dtype)
    ours = reverse_rows(module, v.reshape(-1, *y.shape[1:]), tape)
    ref = _folded([torch.autograd.grad(plain, xr, v[:, j], create_graph=True, retain_graph=True)[0]
                   for j in range(_K)])
    return _verdict(label, ours, ref, [*module.parameters()], xq, xr, gen, tol)


_K = 2  # cotangents per row in the node-by-node check: rules that fold K into the rows are checked with K > 1


def _folded(per_k: list) -> Tensor:
    """``K`` cotangents of one value, each ``(T, *s)``, as folded rows ``(T·K, *s)`` (row ``t·K + k``)."""
    stacked = torch.stack(per_k, 1)
    return stacked.reshape(-1, *stacked.shape[2:])


def _rule_verdict(step: Any, values: list, entry: Any, gen: torch.Generator, tol: float, label: str) -> Optional[str]:
    """Whether a function rule's reverse at this node agrees with autograd through the function itself."""
    node = step.node
    load = lambda arg: map_arg(arg, lambda n: values[n.meta["revnet_index"]])  # noqa: E731
    args, kwargs = load(node.args), load(node.kwargs)
    slots = step.rule.inputs(args, kwargs)
    live = [s is not None for s in step.sources]
    leaves = {id(t): t.detach().clone().requires_grad_(True) for t, is_live in zip(slots, live)
              if is_live and isinstance(t, Tensor)}
    if len(leaves) != sum(live):
        return None  # tuple-valued inputs: checked through the nodes around them
    swap = lambda a: leaves.get(id(a), a) if isinstance(a, Tensor) else a  # noqa: E731
    plain = step.call(*[swap(a) for a in args], **{key: swap(a) for key, a in kwargs.items()})
    if not isinstance(plain, Tensor):
        return None
    v = torch.randn(plain.shape[0], _K, *plain.shape[1:], generator=gen, dtype=plain.dtype)
    grads = step.rule.reverse(v.reshape(-1, *plain.shape[1:]), entry)
    per_k = [torch.autograd.grad(plain, list(leaves.values()), v[:, j], create_graph=True, retain_graph=True,
                                 allow_unused=True) for j in range(_K)]
    ours = [gr for gr, is_live in zip(grads, live) if is_live]
    for i, (a, leaf) in enumerate(zip(ours, leaves.values())):
        b = _folded([_or_zeros(refs[i], leaf) for refs in per_k])
        bad = _verdict(label, a, b, [], None, None, gen, tol)
        if bad:
            return bad
    return None


def _verdict(label: str, ours: Tensor, ref: Tensor, params: list, xq: Optional[Tensor], xr: Optional[Tensor],
             gen: torch.Generator, tol: float) -> Optional[str]:
    first = scaled_difference(ours, ref)
    if first > tol:
        return f"{label}: its reverse differs from autograd by {first:.2e} (first order)"
    targets = [p for p in params if p.requires_grad]
    if not targets and xq is None:
        return None
    w = torch.randn(ours.shape, generator=gen, dtype=ours.dtype)
    like = [*targets, *([xq] if xq is not None else [])]
    a = _grads((w * ours).square().sum(), like)
    b = _grads((w * ref).square().sum(), [*targets, *([xr] if xr is not None else [])])
    second = max((scaled_difference(_or_zeros(p, t), _or_zeros(q, t)) for p, q, t in zip(a, b, like)), default=0.0)
    if second > tol:
        return f"{label}: the gradient of a loss on its reverse differs from double backprop by {second:.2e} " \
               "(second order)"
    return None
