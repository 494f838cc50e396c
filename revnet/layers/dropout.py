"""Dropout ↔ the same mask (eval mode: identity)."""

from __future__ import annotations

from typing import NamedTuple, Optional

from torch import Tensor, nn

from ._rows import times_per_sample


class DropoutTape(NamedTuple):
    scale: Optional[Tensor]  # (N, *s): mask / (1 − p) drawn in training mode; None in eval mode


class Dropout(nn.Dropout):
    """Training mode: ``y = x · m / (1 − p)`` with a Bernoulli(1 − p) mask ``m`` drawn by ``trace`` and kept
    in the tape; reverse ``g = v · m / (1 − p)`` with the same mask. Eval mode: identity both ways.

    ``forward`` (no tape) is torch's own dropout. Shapes: x, y ``(N, *s)``; v, g ``(M, *s)``.
    """

    reverse_label = "DropoutMask"

    def trace(self, x: Tensor) -> tuple[Tensor, DropoutTape]:
        if not self.training or self.p == 0:
            return x, DropoutTape(None)
        keep = 1.0 - self.p
        scale = x.new_empty(x.shape).bernoulli_(keep) / keep if keep > 0 else x.new_zeros(x.shape)
        return x * scale, DropoutTape(scale)

    def reverse(self, v: Tensor, tape: DropoutTape) -> Tensor:
        if tape.scale is None:
            return v
        return times_per_sample(v, tape.scale.to(v.dtype))
