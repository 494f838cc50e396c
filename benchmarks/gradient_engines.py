"""Gradient engines of the step variants: how ``w = vᵀ·∂f/∂x`` is obtained for R cotangent rows per sample,
``v (A, R, C) -> (A, R, *in)``: revnet's explicit reverse, autograd (a loop or one batched call), ``torch.func``."""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch
from torch import Tensor, nn


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
