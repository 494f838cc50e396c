"""Shared test helpers: the autograd oracle and a mismatch report in the style of curvlinops' allclose_report."""

from __future__ import annotations

import copy

from typing import Any, Callable

import torch
from torch import Tensor, nn

RTOL = 1e-10  # float64 hand-written VJPs vs autograd agree to ~1e-15 of scale; a float32 cast (~1e-7) fails
ATOL = 1e-12


def _report(actual: Tensor, expected: Tensor, context: str, top: int = 5) -> str:
    diff = (actual - expected).abs()
    bad = diff > ATOL + RTOL * expected.abs()
    lines = [
        context,
        f"shapes: actual {tuple(actual.shape)}, expected {tuple(expected.shape)}; dtypes {actual.dtype}/{expected.dtype}",
        f"mismatches: {int(bad.sum())} of {bad.numel()} (rtol={RTOL}, atol={ATOL} after scaling by max(1, |expected|max))",
        f"max |actual| = {actual.abs().max().item():.6g}, max |expected| = {expected.abs().max().item():.6g}",
    ]
    flat = diff.flatten()
    for i in flat.topk(min(top, flat.numel())).indices.tolist():
        idx = tuple(int(j) for j in torch.unravel_index(torch.tensor(i), diff.shape))
        a, e = actual[idx].item(), expected[idx].item()
        ratio = a / e if e != 0 else float("inf")
        lines.append(f"  at {idx}: actual {a:.17g}, expected {e:.17g}, ratio {ratio:.6g}")
    return "\n".join(lines)


def assert_vjp_close(actual: Tensor, expected: Tensor, context: Any = "") -> None:
    """Compare after dividing both sides by ``max(1, |expected|max)``; on failure list the worst entries."""
    assert actual.shape == expected.shape, f"{context}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    scale = max(1.0, expected.detach().abs().max().item()) if expected.numel() else 1.0
    a, e = actual.detach() / scale, expected.detach() / scale
    torch.testing.assert_close(
        a, e, rtol=RTOL, atol=ATOL, msg=lambda _: _report(a, e, str(context))
    )


def autograd_vjp(fn: Callable[[Tensor], Tensor], x: Tensor, v: Tensor) -> Tensor:
    """``vᵀ·∂fn(x)/∂x`` by autograd (the oracle). ``v`` may carry a class axis ``(N, K, *out)``."""
    x = x.detach().requires_grad_(True)
    y = fn(x)
    if v.dim() == y.dim():
        return torch.autograd.grad(y, x, v)[0]
    grads = [torch.autograd.grad(y, x, v[:, k], retain_graph=True)[0] for k in range(v.shape[1])]
    return torch.stack(grads, 1)


def plain_copy(module: nn.Module) -> nn.Module:
    """An independent copy of a revnet layer or network made only of plain ``torch.nn`` classes: same
    settings, same ``state_dict`` values (the oracle's module)."""
    import revnet

    ref = copy.deepcopy(module)
    for sub in ref.modules():
        if isinstance(sub, revnet.Sequential):
            sub.__class__ = nn.Sequential
        elif type(sub) in revnet.TORCH_COUNTERPARTS:
            sub.__class__ = revnet.TORCH_COUNTERPARTS[type(sub)]
    return ref


torch_counterpart = plain_copy  # the name the per-layer tests use


def strip_timings(obj: Any) -> Any:
    """A run's metrics without the wall times (keys ending in ``_seconds``), which differ from run to run."""
    if isinstance(obj, dict):
        return {k: strip_timings(v) for k, v in obj.items() if not k.endswith("_seconds")}
    if isinstance(obj, list):
        return [strip_timings(v) for v in obj]
    return obj


def randomize_unit_scale(model: nn.Module, seed: int = 0) -> nn.Module:
    """Every parameter and normalisation buffer of ``model`` re-drawn at unit scale (float64), so that no rule can
    pass on a zero or tiny weight (torchvision's ViT zero-initialises its head, ConvNeXt's layer scale starts at
    1e-6): matrices and kernels ``N(0, 1/fan_in)``, vectors (biases, norm weights, layer scales) ``1 + 0.5·N(0, 1)``
    (class tokens, position embeddings and the like included), running means ``0.1·N(0, 1)``, running variances
    ``U(0.5, 1.5)``. Returns ``model``."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            fan_in = p[0].numel() if p.dim() >= 2 else 1
            draw = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            p.copy_(draw / fan_in ** 0.5 if p.dim() >= 2 else 1 + 0.5 * draw)
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=gen, dtype=torch.float64))
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=gen, dtype=torch.float64) + 0.5)
    return model


def check_graph_against_autograd(model: nn.Module, x: Tensor, k: int = 3, seed: int = 0, *,
                                 forward_rtol: float = 1e-10, forward_atol: float = 1e-12,
                                 second_order: bool = True) -> None:
    """``revnet.convert(model)`` in float64 against autograd on ``model``: the traced output equals ``model(x)``;
    the reverse of ``k`` random cotangents equals the VJPs (first order); the gradients of a loss on the reverse
    w.r.t. every parameter and w.r.t. ``x`` equal double backprop (second order; ``second_order=False`` only
    where torch itself has no double backward, e.g. ``hardsigmoid``)."""
    import revnet

    gen = torch.Generator().manual_seed(seed)
    net = revnet.convert(model)
    x = x.detach().requires_grad_(True)
    y, tape = net.trace(x)
    with torch.no_grad():
        torch.testing.assert_close(y, model(x), rtol=forward_rtol, atol=forward_atol)
    v = torch.randn(x.shape[0], k, *y.shape[1:], generator=gen, dtype=y.dtype)
    g = net.reverse(v, tape)
    xr = x.detach().requires_grad_(True)
    yr = model(xr)
    ref = torch.stack([torch.autograd.grad(yr, xr, v[:, j], retain_graph=True, create_graph=True)[0]
                       for j in range(k)], 1)
    assert_vjp_close(g, ref, f"{type(model).__name__} first order")
    if not second_order:
        return
    w = torch.randn(g.shape, generator=gen, dtype=g.dtype)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    names, params = [n for n, _ in named], [p for _, p in named]
    ours = torch.autograd.grad((w * g).square().sum(), [*params, x], allow_unused=True)
    theirs = torch.autograd.grad((w * ref).square().sum(), [*params, xr], allow_unused=True)
    for name, a, b, p in zip([*names, "x"], ours, theirs, [*params, x]):
        a = torch.zeros_like(p) if a is None else a
        b = torch.zeros_like(p) if b is None else b
        assert_vjp_close(a, b, f"{type(model).__name__} second order, {name}")
