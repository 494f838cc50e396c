"""Dropout ↔ the same mask (eval mode: identity).

The mask is drawn by ``trace`` and kept in the tape. ``trace(x, noise=scale)`` reuses a mask instead of
drawing one: DeepFool passes each re-trace the rows of the first trace's mask that belong to the samples still
in its batch (``noise(tape)`` reads the mask back, :func:`revnet.layers.protocol.select_noise` picks rows), so
a sample keeps one mask for the whole recursion of a training step, in the forward pass and in every reverse,
although the module stores nothing.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

from torch import Tensor, nn

from ._rows import expect_tape, times_per_sample


class DropoutTape(NamedTuple):
    scale: Optional[Tensor]  # (N, *s): mask / (1 − p) drawn in training mode; None in eval mode


class Dropout(nn.Dropout):
    """Training mode: ``y = x · m / (1 − p)`` with a Bernoulli(1 − p) mask ``m`` drawn by ``trace`` (or given as
    ``noise``) and kept in the tape; reverse ``g = v · m / (1 − p)`` with the same mask. Eval mode: identity both
    ways. ``forward`` (no tape) is torch's own dropout. Shapes: x, y ``(N, *s)``; v, g ``(M, *s)``.
    """

    reverse_label = "DropoutMask"

    def trace(self, x: Tensor, noise: Optional[Tensor] = None) -> tuple[Tensor, DropoutTape]:
        if not self.training or self.p == 0:
            return x, DropoutTape(None)
        if noise is not None:
            if noise.shape != x.shape:
                raise ValueError(
                    f"Dropout noise has shape {tuple(noise.shape)} but x has shape {tuple(x.shape)}; pass the rows of "
                    "an earlier tape's noise that belong to the samples of x."
                )
            scale = noise.to(x.dtype)
        else:
            keep = 1.0 - self.p
            scale = x.new_empty(x.shape).bernoulli_(keep) / keep if keep > 0 else x.new_zeros(x.shape)
        return x * scale, DropoutTape(scale)

    def reverse(self, v: Tensor, tape: DropoutTape) -> Tensor:
        expect_tape(self, tape, DropoutTape)
        if tape.scale is None:
            return v
        return times_per_sample(v, tape.scale.to(v.dtype))

    def noise(self, tape: DropoutTape) -> Optional[Tensor]:
        """The mask this tape drew (``None`` in eval mode): pass it back as ``trace(x, noise=...)``."""
        return tape.scale
