"""Smooth activations ↔ multiply by the derivative at the traced point.

``trace`` computes ``σ'(x)`` with differentiable tensor ops and keeps it in the tape, inside the autograd
graph: a loss on the reverse output therefore back-propagates through ``σ'(x)`` to ``x`` and on to the
weights, so second-order gradients are exact (unlike ReLU's mask, whose derivative is zero almost everywhere).
Each derivative follows torch's own formula and branch conventions (ELU and Softplus at their kinks).

Shapes: x, y ``(N, *s)``; v, g ``(M, *s)`` with ``M = N·K`` (see :mod:`revnet.layers._rows`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._rows import expect_tape, times_per_sample


def sigmoid_derivative(x: Tensor) -> Tensor:
    s = torch.sigmoid(x)
    return s * (1 - s)


def tanh_derivative(x: Tensor) -> Tensor:
    return 1 - torch.tanh(x).square()


def gelu_derivative(x: Tensor, approximate: str = "none") -> Tensor:
    if approximate == "tanh":  # y = x/2 · (1 + tanh(u)), u = √(2/π)·(x + 0.044715 x³)
        k = math.sqrt(2 / math.pi)
        t = torch.tanh(k * (x + 0.044715 * x.pow(3)))
        return 0.5 * (1 + t) + 0.5 * x * (1 - t.square()) * k * (1 + 3 * 0.044715 * x.square())
    cdf = 0.5 * (1 + torch.erf(x / math.sqrt(2)))  # y = x·Φ(x): Φ(x) + x·φ(x)
    return cdf + x * torch.exp(-0.5 * x.square()) / math.sqrt(2 * math.pi)


def silu_derivative(x: Tensor) -> Tensor:
    s = torch.sigmoid(x)
    return s * (1 + x * (1 - s))


def elu_derivative(x: Tensor, alpha: float = 1.0) -> Tensor:
    # the exp is clamped so the unused branch never overflows (which would give NaN gradients through where)
    return torch.where(x > 0, torch.ones_like(x), alpha * torch.exp(x.clamp_max(0)))


def softplus_derivative(x: Tensor, beta: float = 1.0, threshold: float = 20.0) -> Tensor:
    bx = beta * x
    return torch.where(bx > threshold, torch.ones_like(x), torch.sigmoid(bx))


class SmoothTape(NamedTuple):
    slope: Tensor  # (N, *s): σ'(x), in the autograd graph


class _TimesSlope:
    """The reverse every smooth activation shares: ``g = v · σ'(x)`` with the recorded slope."""

    def reverse(self, v: Tensor, tape: SmoothTape) -> Tensor:
        expect_tape(self, tape, SmoothTape)
        return times_per_sample(v, tape.slope)


class Sigmoid(_TimesSlope, nn.Sigmoid):
    """``y = 1 / (1 + e^{−x})``; reverse ``g = v · σ(x)(1 − σ(x))``."""

    reverse_label = "TimesSigmoidSlope"

    def trace(self, x: Tensor) -> tuple[Tensor, SmoothTape]:
        return torch.sigmoid(x), SmoothTape(sigmoid_derivative(x))


class Tanh(_TimesSlope, nn.Tanh):
    """``y = tanh(x)``; reverse ``g = v · (1 − tanh²(x))``."""

    reverse_label = "TimesTanhSlope"

    def trace(self, x: Tensor) -> tuple[Tensor, SmoothTape]:
        return torch.tanh(x), SmoothTape(tanh_derivative(x))


class GELU(_TimesSlope, nn.GELU):
    """``y = x·Φ(x)`` (or its tanh approximation); reverse ``g = v · y'(x)``."""

    reverse_label = "TimesGELUSlope"

    def trace(self, x: Tensor) -> tuple[Tensor, SmoothTape]:
        return F.gelu(x, approximate=self.approximate), SmoothTape(gelu_derivative(x, self.approximate))


class SiLU(_TimesSlope, nn.SiLU):
    """``y = x·σ(x)``; reverse ``g = v · σ(x)(1 + x(1 − σ(x)))``. ``inplace=True`` is accepted and ignored."""

    reverse_label = "TimesSiLUSlope"

    def trace(self, x: Tensor) -> tuple[Tensor, SmoothTape]:
        return F.silu(x), SmoothTape(silu_derivative(x))


class ELU(_TimesSlope, nn.ELU):
    """``y = x`` if ``x > 0`` else ``α(eˣ − 1)``; reverse ``g = v`` or ``v·αeˣ``. ``inplace`` is ignored."""

    reverse_label = "TimesELUSlope"

    def trace(self, x: Tensor) -> tuple[Tensor, SmoothTape]:
        return F.elu(x, self.alpha), SmoothTape(elu_derivative(x, self.alpha))


class Softplus(_TimesSlope, nn.Softplus):
    """``y = log(1 + e^{βx}) / β`` (``x`` where ``βx > threshold``); reverse ``g = v · σ(βx)`` (1 there)."""

    reverse_label = "TimesSoftplusSlope"

    def trace(self, x: Tensor) -> tuple[Tensor, SmoothTape]:
        y = F.softplus(x, self.beta, self.threshold)
        return y, SmoothTape(softplus_derivative(x, self.beta, self.threshold))
