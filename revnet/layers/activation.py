"""ReLU, LeakyReLU, PReLU ↔ multiply by the forward pass's slope pattern (index sharing).

The tape records only the strict sign mask ``x > 0`` (torch's own convention at ``x == 0``: the slope of
the negative side). The negative slope is read in ``reverse``: a constant for LeakyReLU, the *live*
parameter for PReLU, so second-order gradients reach it.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._rows import expect_tape, per_sample, times_per_sample


class ActivationTape(NamedTuple):
    positive: Tensor  # (N, *s) bool: x > 0


class ReLU(nn.ReLU):
    """``y = max(x, 0)``; reverse ``g = v · [x > 0]``. Shapes: x, y ``(N, *s)``; v, g ``(M, *s)``.

    ``inplace=True`` is accepted and ignored: ``trace`` needs the input to record the mask.
    """

    reverse_label = "ReLUMask"

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x)

    def trace(self, x: Tensor) -> tuple[Tensor, ActivationTape]:
        return F.relu(x), ActivationTape(x > 0)

    def reverse(self, v: Tensor, tape: ActivationTape) -> Tensor:
        expect_tape(self, tape, ActivationTape)
        return times_per_sample(v, tape.positive.to(v.dtype))


class LeakyReLU(nn.LeakyReLU):
    """``y = x`` if ``x > 0`` else ``a·x``; reverse ``g = v`` or ``a·v`` by the recorded mask."""

    reverse_label = "LeakyReLUMask"

    def forward(self, x: Tensor) -> Tensor:
        return F.leaky_relu(x, self.negative_slope)

    def trace(self, x: Tensor) -> tuple[Tensor, ActivationTape]:
        return F.leaky_relu(x, self.negative_slope), ActivationTape(x > 0)

    def reverse(self, v: Tensor, tape: ActivationTape) -> Tensor:
        expect_tape(self, tape, ActivationTape)
        pos = tape.positive.to(v.dtype)
        slope = pos + (1 - pos) * self.negative_slope
        return times_per_sample(v, slope)


class PReLU(nn.PReLU):
    """``y = x`` if ``x > 0`` else ``a_c·x`` with ``a`` the learned slope (one, or one per channel = dim 1)."""

    reverse_label = "PReLUMask"

    def trace(self, x: Tensor) -> tuple[Tensor, ActivationTape]:
        return super().forward(x), ActivationTape(x > 0)

    def reverse(self, v: Tensor, tape: ActivationTape) -> Tensor:
        expect_tape(self, tape, ActivationTape)
        n = tape.positive.shape[0]
        rows = per_sample(v, n)  # (N, K, C, *s)
        slope = self.weight
        if slope.numel() > 1:  # per channel: broadcast along dim 1 of x, i.e. dim 2 of rows
            slope = slope.reshape(1, 1, -1, *([1] * (v.dim() - 2)))
        g = torch.where(tape.positive.unsqueeze(1), rows, rows * slope)
        return g.reshape(v.shape)


class ClampTape(NamedTuple):
    inside: Tensor  # (N, *s) bool: min_val < x < max_val (where the slope is 1)


class Hardtanh(nn.Hardtanh):
    """``y = clamp(x, min_val, max_val)``; reverse ``g = v · [min_val < x < max_val]`` (torch's convention: the
    slope is 0 at both kinks). ``inplace=True`` is accepted; ``trace`` never overwrites its input."""

    reverse_label = "ClampMask"

    def trace(self, x: Tensor) -> tuple[Tensor, ClampTape]:
        return F.hardtanh(x, self.min_val, self.max_val), ClampTape((x > self.min_val) & (x < self.max_val))

    def reverse(self, v: Tensor, tape: ClampTape) -> Tensor:
        expect_tape(self, tape, ClampTape)
        return times_per_sample(v, tape.inside.to(v.dtype))


class ReLU6(nn.ReLU6):
    """``y = clamp(x, 0, 6)``; reverse ``g = v · [0 < x < 6]``. ``inplace=True`` is accepted (see Hardtanh)."""

    reverse_label = "ClampMask"

    def trace(self, x: Tensor) -> tuple[Tensor, ClampTape]:
        return F.hardtanh(x, 0.0, 6.0), ClampTape((x > 0) & (x < 6))

    def reverse(self, v: Tensor, tape: ClampTape) -> Tensor:
        expect_tape(self, tape, ClampTape)
        return times_per_sample(v, tape.inside.to(v.dtype))
