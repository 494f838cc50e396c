"""Stochastic depth (torchvision's ``StochasticDepth`` module and ``stochastic_depth`` function) ↔ the same mask.

Eval mode (or ``p == 0``): identity both ways. Training mode, exactly torchvision's formula::

    y = x · m / (1 − p)     m ~ Bernoulli(1 − p): one draw per row (mode "row") or one for the batch ("batch")

(``p == 1`` gives zeros). ``trace`` draws ``m`` as torchvision does (same shape, same random stream) and keeps
``scale = m / (1 − p)`` in the tape with shape ``(N, 1, …, 1)`` in both modes (batch mode repeats its one draw per
row), so ``trace(x, noise=scale)`` reuses a mask, and a re-trace of some of the samples
(:func:`revnet.layers.protocol.select_noise`) keeps their draw, as for Dropout.

The bare function is a rule only in eval mode (or ``p == 0``): ``revnet.Graph`` hands noise to modules, not to
function rules, so a training-mode call could not reuse its mask on a re-trace and is refused at conversion with
a pointer to the module. torchvision's models call the module (``self.stochastic_depth(x)``); the function node
appears only where a forward calls ``stochastic_depth`` itself. timm's ``DropPath`` is not registered (timm is not
a dependency).

Shapes: x, y ``(N, *s)``; v, g ``(M, *s)`` with ``M = N·K`` (see :mod:`revnet.layers._rows`).
"""

from __future__ import annotations

import sys
from typing import NamedTuple, Optional

import torchvision.ops
from torch import Tensor

from ..errors import UnsupportedLayerError
from ._rows import expect_tape, times_per_sample
from .functional import bind

_TORCHVISION = sys.modules["torchvision.ops.stochastic_depth"]  # the module (the package attribute is the function)


def _check_options(p: float, mode: str) -> None:
    """torchvision's own checks (its function raises them at every call)."""
    if p < 0.0 or p > 1.0:
        raise ValueError(f"drop probability has to be between 0 and 1, but got {p}")
    if mode not in ("batch", "row"):
        raise ValueError(f"mode has to be either 'batch' or 'row', but got {mode}")


class StochasticDepthTape(NamedTuple):
    scale: Optional[Tensor]  # (N, 1, …, 1): m / (1 − p) in training mode; None in eval mode (identity)


class StochasticDepth(torchvision.ops.StochasticDepth):
    """torchvision's stochastic depth: training mode ``y = x · m / (1 − p)`` with the mask drawn by ``trace`` (or given
    as ``noise``, shape ``(N, 1, …, 1)``) and kept in the tape; reverse ``g = v · m / (1 − p)`` with the same mask.
    Eval mode or ``p == 0``: identity. ``forward`` (no tape) is torchvision's own."""

    reverse_label = "StochasticDepthMask"

    def trace(self, x: Tensor, noise: Optional[Tensor] = None) -> tuple[Tensor, StochasticDepthTape]:
        _check_options(self.p, self.mode)
        if not self.training or self.p == 0.0:
            return x, StochasticDepthTape(None)
        rows = (x.shape[0], *[1] * (x.dim() - 1))
        if noise is not None:
            if tuple(noise.shape) != rows:
                raise ValueError(
                    f"StochasticDepth noise has shape {tuple(noise.shape)} but x of shape {tuple(x.shape)} needs "
                    f"{rows}; pass the rows of an earlier tape's noise that belong to the samples of x.")
            scale = noise.to(x.dtype)
        else:
            keep = 1.0 - self.p
            scale = x.new_empty(rows if self.mode == "row" else (1,) * x.dim()).bernoulli_(keep)
            if keep > 0.0:
                scale.div_(keep)
            scale = scale.expand(rows)
        return x * scale, StochasticDepthTape(scale)

    def reverse(self, v: Tensor, tape: StochasticDepthTape) -> Tensor:
        expect_tape(self, tape, StochasticDepthTape)
        if tape.scale is None:
            return v
        return times_per_sample(v, tape.scale.to(v.dtype))

    def noise(self, tape: StochasticDepthTape) -> Optional[Tensor]:
        """The mask this tape drew, ``(N, 1, …, 1)`` (``None`` in eval mode); pass it back as ``trace(x, noise=…)``."""
        return tape.scale


class EvalTape(NamedTuple):
    """An eval-mode stochastic depth needs nothing from the forward pass."""


class StochasticDepthRule:
    """``stochastic_depth(input, p, mode, training=True)`` in eval mode (``training=False``) or with ``p == 0``:
    identity. Training mode is refused at conversion (see the module docstring)."""

    names = ("input", "p", "mode", "training")

    def _bound(self, args, kwargs) -> dict:
        bound = bind(args, kwargs, self.names, {"training": True})
        training, p = bound["training"], bound["p"]
        if not isinstance(training, bool) or not isinstance(p, (int, float)):
            raise UnsupportedLayerError("stochastic_depth needs a constant p and training flag.")
        if training and p != 0.0:
            raise UnsupportedLayerError(
                "stochastic_depth(training=True) draws a mask that revnet cannot reuse on a re-trace; call it through "
                "the module torchvision.ops.StochasticDepth(p, mode), whose mask revnet keeps and reuses.")
        return bound

    def inputs(self, args, kwargs) -> list:
        return [self._bound(args, kwargs)["input"]]

    def forward(self, call, args, kwargs) -> Tensor:
        return call(*args, **kwargs)

    def trace(self, call, args, kwargs, live) -> tuple[Tensor, EvalTape]:
        self._bound(args, kwargs)
        return call(*args, **kwargs), EvalTape()

    def reverse(self, v: Tensor, tape: EvalTape) -> list[Optional[Tensor]]:
        return [v]


DROPPATH_COUNTERPARTS: dict = {StochasticDepth: torchvision.ops.StochasticDepth}
DROPPATH_RULES: dict = {_TORCHVISION.stochastic_depth: StochasticDepthRule()}
