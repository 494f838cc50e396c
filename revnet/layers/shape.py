"""Shape-only layers ↔ the inverse reshape: Flatten, Unflatten, Identity."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor, nn

from ._rows import expect_tape

from ..errors import UnsupportedLayerError


class ShapeTape(NamedTuple):
    in_shape: tuple[int, ...]  # the input's per-sample shape x.shape[1:]


class Flatten(nn.Flatten):
    """Flattens dims ``start_dim..end_dim`` (never the batch dim); reverse reshapes back.

    Shapes: x ``(N, *s)``, y ``(N, prod(s[a:b]), ...)``; v ``(M, *y.shape[1:])``, g ``(M, *s)``.
    """

    reverse_label = "Unflatten"

    def trace(self, x: Tensor) -> tuple[Tensor, ShapeTape]:
        if self.start_dim % max(x.dim(), 1) == 0:
            raise UnsupportedLayerError(
                "revnet.Flatten cannot flatten the batch dimension (start_dim resolves to 0); use start_dim >= 1."
            )
        return super().forward(x), ShapeTape(tuple(x.shape[1:]))

    def reverse(self, v: Tensor, tape: ShapeTape) -> Tensor:
        expect_tape(self, tape, ShapeTape)
        return v.reshape(v.shape[0], *tape.in_shape)


class Unflatten(nn.Unflatten):
    """Unflattens one dim (never the batch dim); reverse flattens back."""

    reverse_label = "Flatten"

    def trace(self, x: Tensor) -> tuple[Tensor, ShapeTape]:
        if self.dim % max(x.dim(), 1) == 0:
            raise UnsupportedLayerError("revnet.Unflatten cannot unflatten the batch dimension; use dim >= 1.")
        return super().forward(x), ShapeTape(tuple(x.shape[1:]))

    def reverse(self, v: Tensor, tape: ShapeTape) -> Tensor:
        expect_tape(self, tape, ShapeTape)
        return v.reshape(v.shape[0], *tape.in_shape)


class IdentityTape(NamedTuple):
    """Identity needs nothing from the forward pass."""


class Identity(nn.Identity):
    """``y = x``; reverse ``g = v``."""

    reverse_label = "Identity"

    def trace(self, x: Tensor) -> tuple[Tensor, IdentityTape]:
        return x, IdentityTape()

    def reverse(self, v: Tensor, tape: IdentityTape) -> Tensor:
        expect_tape(self, tape, IdentityTape)
        return v
