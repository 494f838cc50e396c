"""Dropout ↔ the same mask (eval mode: identity).

The mask is drawn by ``trace`` and kept in the tape. ``trace(x, noise=scale)`` reuses a mask instead of
drawing one: DeepFool passes each re-trace the rows of the first trace's mask that belong to the samples still
in its batch (``noise(tape)`` reads the mask back, :func:`revnet.layers.protocol.select_noise` picks rows), so
a sample keeps one mask for the whole recursion of a training step, in the forward pass and in every reverse,
although the module stores nothing.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UnsupportedLayerError
from ._rows import expect_tape, times_per_sample
from .functional import bind


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


class FunctionalDropoutRule:
    """``F.dropout(x, p, training)``: the identity when ``training`` is False or ``p`` is 0 (eval mode, and
    functions such as torchvision's ``shifted_window_attention`` with their default ``dropout=0.0``). With
    ``p > 0`` in training the call draws a mask a tape cannot give back to DeepFool's re-traces, so it is refused:
    use ``nn.Dropout``, whose mask revnet keeps. Shapes: x, y ``(T, *s)``; v, g ``(T·K, *s)``."""

    names = ("input", "p", "training", "inplace")
    defaults = {"p": 0.5, "training": True, "inplace": False}

    def inputs(self, args, kwargs) -> list:
        return [bind(args, kwargs, self.names, self.defaults)["input"]]

    def forward(self, call, args, kwargs) -> Tensor:
        b = bind(args, kwargs, self.names, self.defaults)
        return F.dropout(b["input"], b["p"], b["training"], inplace=False)

    def trace(self, call, args, kwargs, live) -> tuple[Tensor, None]:
        b = bind(args, kwargs, self.names, self.defaults)
        if b["training"] and b["p"] > 0:
            raise UnsupportedLayerError(
                f"F.dropout(p={b['p']}, training=True) draws a mask revnet cannot keep for DeepFool's re-traces; use "
                "nn.Dropout (revnet keeps its mask), or call the network in eval mode.")
        return b["input"], None

    def reverse(self, v: Tensor, tape: None) -> list[Optional[Tensor]]:
        return [v]


DROPOUT_RULES: dict = {F.dropout: FunctionalDropoutRule()}
