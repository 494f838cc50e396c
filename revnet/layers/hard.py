"""Hardswish and Hardsigmoid ↔ multiply by the derivative at the traced point (modules and ``F.`` functions).

Derivatives follow torch's autograd kernels exactly, kinks included (``x = ±3``)::

    hardswish(x)   = x · relu6(x + 3) / 6     slope: 0 for x ≤ −3,  x/3 + 1/2 for −3 < x < 3,  1 for x ≥ 3
    hardsigmoid(x) = relu6(x + 3) / 6         slope: 1/6 for −3 < x < 3, 0 elsewhere (at ±3 too)

torch's hardsigmoid backward multiplies by the float32 constant ``1.0f / 6.0f`` in every dtype (CPU and CUDA);
revnet uses the same constant, so its VJP equals autograd's in float64 too. Hardswish's slope depends on ``x``:
``trace`` computes it with differentiable ops and keeps it in the autograd graph (as :mod:`.smooth` does), so
second order is exact (``1/3`` inside the kinks). Hardsigmoid's slope is piecewise constant (no second order).

``inplace=True`` is accepted and ignored: ``forward`` and ``trace`` never overwrite ``x``, which the slope is
computed from (a forward that overwrote it would leave a wrong ``x`` behind). There are no tensor methods
(``Tensor.hardswish`` does not exist), so ``HARD_METHOD_RULES`` is empty.

Shapes: x, y ``(N, *s)``; v, g ``(M, *s)`` with ``M = N·K`` (see :mod:`revnet.layers._rows`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._rows import expect_tape, times_per_sample
from .functional import LayerRule

ONE_SIXTH = float(torch.tensor(1 / 6, dtype=torch.float32))  # torch's backward constant 1.0f / 6.0f


def hardswish_derivative(x: Tensor) -> Tensor:
    """``∂ hardswish / ∂x`` with torch's branches (0 at −3, 1 at 3), differentiable in ``x``."""
    inside = x / 3 + 0.5
    return torch.where(x <= -3, torch.zeros_like(x), torch.where(x >= 3, torch.ones_like(x), inside))


def hardsigmoid_derivative(x: Tensor) -> Tensor:
    """``∂ hardsigmoid / ∂x``: ``1/6`` (torch's float32 constant) strictly inside ``(−3, 3)``, else 0."""
    return ((x > -3) & (x < 3)).to(x.dtype) * ONE_SIXTH


class HardTape(NamedTuple):
    slope: Tensor  # (N, *s): the derivative at x (Hardswish: in the autograd graph)


class _TimesSlope:
    """The shared reverse: ``g = v · slope``."""

    def reverse(self, v: Tensor, tape: HardTape) -> Tensor:
        expect_tape(self, tape, HardTape)
        return times_per_sample(v, tape.slope.to(v.dtype))


class Hardswish(_TimesSlope, nn.Hardswish):
    """``y = x · relu6(x + 3) / 6``; reverse ``g = v · y'(x)`` (see the module docstring for ``y'``)."""

    reverse_label = "TimesHardswishSlope"

    def forward(self, x: Tensor) -> Tensor:
        return F.hardswish(x)

    def trace(self, x: Tensor) -> tuple[Tensor, HardTape]:
        return F.hardswish(x), HardTape(hardswish_derivative(x))


class Hardsigmoid(_TimesSlope, nn.Hardsigmoid):
    """``y = relu6(x + 3) / 6``; reverse ``g = v · [−3 < x < 3] / 6``."""

    reverse_label = "TimesHardsigmoidSlope"

    def forward(self, x: Tensor) -> Tensor:
        return F.hardsigmoid(x)

    def trace(self, x: Tensor) -> tuple[Tensor, HardTape]:
        return F.hardsigmoid(x), HardTape(hardsigmoid_derivative(x))


_INPLACE = (("input", "inplace"), {"inplace": False})

HARD_COUNTERPARTS: dict = {Hardswish: nn.Hardswish, Hardsigmoid: nn.Hardsigmoid}
HARD_RULES: dict = {
    F.hardswish: LayerRule(*_INPLACE, lambda b: Hardswish()),
    F.hardsigmoid: LayerRule(*_INPLACE, lambda b: Hardsigmoid()),
}
HARD_METHOD_RULES: dict = {}
