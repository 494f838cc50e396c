"""Linear ↔ transposed linear (the same weight, no bias)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from ._rows import expect_tape


class LinearTape(NamedTuple):
    """A linear map needs nothing from the forward pass."""


class Linear(nn.Linear):
    """``y = x Wᵀ + b``; reverse ``g = v W``.

    Shapes: x ``(N, *, D_in)``, y ``(N, *, D_out)``; v ``(M, *, D_out)``, g ``(M, *, D_in)``.
    """

    reverse_label = "TransposedLinear"

    def trace(self, x: Tensor) -> tuple[Tensor, LinearTape]:
        return super().forward(x), LinearTape()

    def reverse(self, v: Tensor, tape: LinearTape) -> Tensor:
        expect_tape(self, tape, LinearTape)
        # g[..., i] = Σ_o v[..., o] · W[o, i]
        return torch.matmul(v, self.weight)

    def reverse_extra_repr(self) -> str:
        """The reverse maps ``out_features`` to ``in_features``; the bias takes no part in it."""
        return f"in_features={self.out_features}, out_features={self.in_features}"

    def reverse_differences(self, toward: Tensor, away: Tensor) -> Tensor:
        """The reverse of the one-hot difference rows ``e_toward − e_away`` without building them: the row
        difference ``W[toward] − W[away]`` (what DeepFool reverses; equal to ``reverse`` of those rows, since
        the product adds exact zeros). Shapes: toward ``(N, K)``, away ``(N,)`` -> ``(N, K, D_in)``.

        The rows are taken with ``index_select``: its backward (``index_add_``) adds the gradients of repeated
        classes in a fixed order, while advanced indexing ``W[toward]`` backpropagates through
        ``index_put_(accumulate=True)``, whose sum order on the CPU changes from run to run (a fine-tune then
        differs from itself in the 6th digit)."""
        n, k = toward.shape
        rows = self.weight.index_select(0, toward.reshape(-1)).reshape(n, k, -1)
        return rows - self.weight.index_select(0, away).unsqueeze(1)


class FunctionalLinearTape(NamedTuple):
    weight: Tensor  # the weight the call used (a parameter of the model: live, so second order reaches it)


class FunctionalLinearRule:
    """``F.linear(x, W, b)`` with the model's own ``W`` and ``b`` (constants of the graph, e.g. Swin's attention
    projections): the reverse is ``Linear``'s, ``g = v W``. A weight or bias that depends on the input is
    refused. Shapes as :class:`Linear`."""

    def inputs(self, args, kwargs) -> list:
        names = ("input", "weight", "bias")
        bound = {**dict(zip(names, args)), **kwargs}
        return [bound["input"], bound["weight"], bound.get("bias")]

    def forward(self, call, args, kwargs) -> Tensor:
        return call(*args, **kwargs)

    def trace(self, call, args, kwargs, live) -> tuple[Tensor, FunctionalLinearTape]:
        from ..errors import UnsupportedLayerError

        if any(live[1:]):
            raise UnsupportedLayerError("F.linear with a weight or bias that depends on the input has no reverse; "
                                        "its weight and bias must be the model's parameters.")
        return call(*args, **kwargs), FunctionalLinearTape(self.inputs(args, kwargs)[1])

    def reverse(self, v: Tensor, tape: FunctionalLinearTape) -> list:
        return [torch.matmul(v, tape.weight), None, None]


LINEAR_RULES = {torch.nn.functional.linear: FunctionalLinearRule()}
