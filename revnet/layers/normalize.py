"""``F.normalize(x, p=2, dim)``: ``y = x / max(‖x‖₂, eps)`` along one non-batch dimension (swin_v2's cosine
attention, timm's normalised heads).

Reverse (per row along ``dim``, ``n = max(‖x‖, eps)``): ``g = v / n − y · ⟨y, v⟩ / n`` where ``‖x‖ > eps``,
``g = v / eps`` where the norm is clamped. ``y`` and ``n`` stay in the autograd graph, so second order is exact.
Refused: ``p ≠ 2``, ``dim`` 0 (it would mix rows), ``out=``.

Shapes: x, y ``(T, *s)``; v, g ``(T·K, *s)``.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import torch.nn.functional as F
from torch import Tensor

from ..errors import UnsupportedLayerError
from ._rows import per_sample
from .functional import bind


class NormalizeTape(NamedTuple):
    y: Tensor  # (T, *s): x / n
    n: Tensor  # (T, *s) with dim of size 1: max(‖x‖, eps)
    above: Tensor  # like n: 1 where ‖x‖ > eps (the norm is not clamped), else 0
    dim: int  # the normalised dimension, >= 1


class NormalizeRule:
    names = ("input", "p", "dim", "eps", "out")
    defaults = {"p": 2.0, "dim": 1, "eps": 1e-12, "out": None}

    def _bound(self, args, kwargs) -> dict[str, Any]:
        return bind(args, kwargs, self.names, self.defaults)

    def inputs(self, args, kwargs) -> list:
        return [self._bound(args, kwargs)["input"]]

    def forward(self, call, args, kwargs) -> Tensor:
        return call(*args, **kwargs)

    def trace(self, call, args, kwargs, live) -> tuple[Tensor, NormalizeTape]:
        b = self._bound(args, kwargs)
        x = b["input"]
        dim = b["dim"] % x.dim()
        if b["p"] != 2 or b["out"] is not None or dim == 0:
            raise UnsupportedLayerError(
                f"F.normalize(p={b['p']}, dim={b['dim']}{', out=...' if b['out'] is not None else ''}) has no rule; "
                "revnet reverses the L2 norm (p=2) along a dimension other than the first, without out=.")
        norm = x.norm(2, dim, keepdim=True)
        n = norm.clamp_min(b["eps"])
        y = x / n
        return y, NormalizeTape(y, n, (norm > b["eps"]).to(x.dtype), dim)

    def reverse(self, v: Tensor, tape: NormalizeTape) -> list[Optional[Tensor]]:
        rows = tape.y.shape[0]
        vk, y, n, above = per_sample(v, rows), tape.y.unsqueeze(1), tape.n.unsqueeze(1), tape.above.unsqueeze(1)
        g = vk / n - y * above * (y * vk).sum(tape.dim + 1, keepdim=True) / n
        return [g.reshape(v.shape)]


NORMALIZE_RULES: dict = {F.normalize: NormalizeRule()}
