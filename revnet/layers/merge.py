"""Rules for operations with several inputs: ``add``/``sub`` (residual connections), ``mul``/``div`` and ``cat``.

Their reverse returns one cotangent per input (the rule protocol is in :mod:`revnet.layers.functional`):

* ``a + α·b``: ``g_a = v``, ``g_b = α·v`` (the cotangent fans out);
* ``a · b``: ``g_a = v · b``, ``g_b = v · a`` (an operand that does not depend on the input is a constant);
  ``a / b``: ``g_a = v / b``, ``g_b = −v · (a / b) / b``;
* ``cat([a, b, …], dim)``: ``v`` split along ``dim`` into the inputs' sizes.

Broadcasting is reversed by summing over the dimensions an input was broadcast along. Inputs that depend on
the network input must keep the batch dimension first (shape ``(N, …)``); ``cat`` along dim 0 would mix
samples and is refused.
"""

from __future__ import annotations

import operator
from typing import Any, NamedTuple, Optional

import torch
from torch import Tensor

from ..errors import UnsupportedLayerError
from ._rows import per_sample
from .functional import bind


def _sum_to(g: Tensor, in_shape: Optional[tuple[int, ...]]) -> Tensor:
    """Reverse a broadcast: sum the rows ``g (M, *out)`` down to ``(M, *in_shape)`` (same rank)."""
    if in_shape is None or tuple(g.shape[1:]) == in_shape:
        return g
    dims = [d + 1 for d, (i, o) in enumerate(zip(in_shape, g.shape[1:])) if i == 1 and o != 1]
    return g.sum(dims, keepdim=True)


def _per_sample_shape(value: Any, live: bool, out: Tensor) -> Optional[tuple[int, ...]]:
    if not live:
        return None
    if value.dim() != out.dim() or value.shape[0] != out.shape[0]:
        raise UnsupportedLayerError(
            f"an input of shape {tuple(value.shape)} broadcasts to {tuple(out.shape)} across the first dimension; "
            "revnet needs inputs that depend on x to keep their rows (the batch dimension first)."
        )
    return tuple(value.shape[1:])


class AddTape(NamedTuple):
    shapes: tuple[Optional[tuple[int, ...]], Optional[tuple[int, ...]]]  # per-sample input shapes (None: constant)
    alpha: float  # the factor of the second input (−1 for sub)


class AddRule:
    """``a + α·b`` and ``a − α·b`` (``operator.add``/``iadd``/``sub``, ``torch.add``/``sub``, ``Tensor.add``)."""

    def __init__(self, sign: float = 1.0):
        self.sign = sign

    def _bound(self, args, kwargs):
        return bind(args, kwargs, ("input", "other", "alpha"), {"alpha": 1})

    def inputs(self, args, kwargs) -> list:
        b = self._bound(args, kwargs)
        return [b["input"], b["other"]]

    def forward(self, call, args, kwargs) -> Tensor:
        return call(*args, **kwargs)

    def trace(self, call, args, kwargs, live) -> tuple[Tensor, AddTape]:
        a, b = self.inputs(args, kwargs)
        y = call(*args, **kwargs)
        shapes = (_per_sample_shape(a, live[0], y), _per_sample_shape(b, live[1], y))
        return y, AddTape(shapes, self.sign * float(self._bound(args, kwargs)["alpha"]))

    def reverse(self, v: Tensor, tape: AddTape) -> list[Optional[Tensor]]:
        ga = _sum_to(v, tape.shapes[0]) if tape.shapes[0] is not None else None
        gb = _sum_to(v if tape.alpha == 1 else tape.alpha * v, tape.shapes[1]) if tape.shapes[1] is not None else None
        return [ga, gb]


class MulTape(NamedTuple):
    operands: tuple[Any, Any]  # a, b as traced (per-sample tensors, constant tensors or numbers)
    live: tuple[bool, bool]
    shapes: tuple[Optional[tuple[int, ...]], Optional[tuple[int, ...]]]
    divide: bool
    quotient: Optional[Tensor]  # y = a / b when the divisor b depends on the input (its cotangent is −v·y/b)


class MulRule:
    """``a · b`` and ``a / b``, either or both operands depending on the input (the other a number or a constant
    tensor). ``g_a = v·b`` (``v / b``), ``g_b = v·a`` (``−v·y / b``), each summed over its broadcast dims."""

    def __init__(self, divide: bool = False):
        self.divide = divide

    def inputs(self, args, kwargs) -> list:
        b = bind(args, kwargs, ("input", "other", "rounding_mode") if self.divide else ("input", "other"),
                 {"rounding_mode": None} if self.divide else {})
        if b.get("rounding_mode") is not None:
            raise UnsupportedLayerError("div(rounding_mode=...) is piecewise constant and has no useful reverse.")
        return [b["input"], b["other"]]

    def forward(self, call, args, kwargs) -> Tensor:
        return call(*args, **kwargs)

    def trace(self, call, args, kwargs, live) -> tuple[Tensor, MulTape]:
        a, b = self.inputs(args, kwargs)
        y = call(*args, **kwargs)
        shapes = (_per_sample_shape(a, live[0], y), _per_sample_shape(b, live[1], y))
        return y, MulTape((a, b), tuple(live), shapes, self.divide, y if self.divide and live[1] else None)

    @staticmethod
    def _times(v: Tensor, factor: Any, factor_live: bool, divide: bool) -> Tensor:
        if factor_live:  # a per-sample factor (N, *s): broadcast over the K rows of each sample
            rows = per_sample(v, factor.shape[0])
            rows = rows / factor.unsqueeze(1) if divide else rows * factor.unsqueeze(1)
            return rows.reshape(v.shape[0], *rows.shape[2:])
        if isinstance(factor, Tensor):
            factor = factor.to(v.dtype)
        return v / factor if divide else v * factor

    def reverse(self, v: Tensor, tape: MulTape) -> list[Optional[Tensor]]:
        (a, b), (live_a, live_b) = tape.operands, tape.live
        ga = _sum_to(self._times(v, b, live_b, tape.divide), tape.shapes[0]) if live_a else None
        if live_b and tape.divide:
            gb = _sum_to(self._times(v, -tape.quotient / b, True, False), tape.shapes[1])
        else:
            gb = _sum_to(self._times(v, a, live_a, False), tape.shapes[1]) if live_b else None
        return [ga, gb]


class CatTape(NamedTuple):
    sizes: tuple[int, ...]  # each input's size along dim
    dim: int  # the concatenated dimension, >= 1


class CatRule:
    """``torch.cat(tensors, dim)`` along a non-batch dimension; the reverse splits ``v`` back."""

    def _bound(self, args, kwargs):
        return bind(args, kwargs, ("tensors", "dim"), {"dim": 0})

    def inputs(self, args, kwargs) -> list:
        return list(self._bound(args, kwargs)["tensors"])

    def forward(self, call, args, kwargs) -> Tensor:
        return call(*args, **kwargs)

    def trace(self, call, args, kwargs, live) -> tuple[Tensor, CatTape]:
        b = self._bound(args, kwargs)
        tensors, dim = list(b["tensors"]), b["dim"] % b["tensors"][0].dim()
        if dim == 0:
            raise UnsupportedLayerError("torch.cat along dim 0 stacks samples; concatenate along a dim >= 1.")
        return call(*args, **kwargs), CatTape(tuple(t.shape[dim] for t in tensors), dim)

    def reverse(self, v: Tensor, tape: CatTape) -> list[Optional[Tensor]]:
        return list(torch.split(v, list(tape.sizes), dim=tape.dim))


ADD, SUB, MUL, DIV, CAT = AddRule(), AddRule(-1.0), MulRule(), MulRule(divide=True), CatRule()

MERGE_RULES: dict[Any, Any] = {
    operator.add: ADD, operator.iadd: ADD, torch.add: ADD,
    operator.sub: SUB, operator.isub: SUB, torch.sub: SUB,
    operator.mul: MUL, operator.imul: MUL, torch.mul: MUL,
    operator.truediv: DIV, operator.itruediv: DIV, torch.div: DIV,
    torch.cat: CAT, torch.concat: CAT,
}
MERGE_METHOD_RULES: dict[str, Any] = {
    "add": ADD, "add_": ADD, "sub": SUB, "sub_": SUB, "mul": MUL, "mul_": MUL, "div": DIV, "div_": DIV,
}
