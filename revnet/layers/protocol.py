"""The contract every reversible module follows (layers, ``Sequential`` and, later, blocks).

Conventions, written down once for the whole package:

* ``trace(x) -> (y, tape)`` runs the forward pass and returns the output together with an immutable
  tape (a ``NamedTuple``) holding everything the reverse needs: masks, pooling indices, shapes.
  Nothing is stored on the module, so one module can be traced on many batches.
* ``reverse(v, tape) -> g`` computes the vector-Jacobian product ``g = vᵀ·∂y/∂x`` at the traced point.
  ``v`` has shape ``(M, *y.shape[1:])`` with ``M = N·K`` (``K`` cotangents per sample, folded
  sample-major into the batch); ``g`` has shape ``(M, *x.shape[1:])``. ``reverse`` is built from
  differentiable tensor ops (never ``torch.autograd.grad``), changes neither ``v`` nor the tape, and
  does not branch on tensor values, so one tape serves any number of reverses and a loss on ``g``
  back-propagates to the parameters.
* ``forward(x)`` equals ``trace(x)[0]`` and builds no tape.
* ``reverse_label`` names the reverse operation when the reverse network is printed.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from torch import Tensor


@runtime_checkable
class Reversible(Protocol):
    """A module with an explicit reverse (see the module docstring for the contract)."""

    reverse_label: str

    def trace(self, x: Tensor) -> tuple[Tensor, Any]: ...

    def reverse(self, v: Tensor, tape: Any) -> Tensor: ...


def is_reversible(module: object) -> bool:
    """True if ``module`` has ``trace`` and ``reverse`` methods."""
    return callable(getattr(module, "trace", None)) and callable(getattr(module, "reverse", None))
