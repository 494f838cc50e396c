"""The contract every reversible module follows (layers, ``Sequential``, ``Graph``).

Conventions, written down once for the whole package:

* ``trace(x) -> (y, tape)`` runs the forward pass and returns the output together with an immutable
  tape (a ``NamedTuple``) holding everything the reverse needs: masks, pooling indices, shapes.
  Nothing is stored on the module, so one module can be traced on many batches.
* ``reverse(v, tape) -> g`` of a **layer** (and of anything you register) computes the vector-Jacobian
  product ``g = vᵀ·∂y/∂x`` at the traced point on folded rows: ``v`` has shape ``(M, *y.shape[1:])`` with
  ``M = N·K`` (``K`` cotangents per sample, folded sample-major into the batch); ``g`` has shape
  ``(M, *x.shape[1:])``. ``reverse`` is built from differentiable tensor ops (never ``torch.autograd.grad``),
  changes neither ``v`` nor the tape, and does not branch on tensor values, so one tape serves any number
  of reverses and a loss on ``g`` back-propagates to the parameters.
* **Networks** (``Sequential``, ``Graph``) are the public face: their ``reverse(v, tape)`` accepts only
  ``(N, *out)`` or ``(N, K, *out)`` and refuses anything else. A network nested in another one is reached
  on folded rows through its ``reverse_rows(v, tape)``; :func:`reverse_rows` picks the right method.
* ``forward(x)`` equals ``trace(x)[0]`` and builds no tape.
* ``reverse_label`` names the reverse operation when the reverse network is printed.
* Random layers (Dropout) also take ``trace(x, noise=...)`` and give ``noise(tape)``: the random draws of an
  earlier trace, so a re-trace of some of its samples (DeepFool) reuses them. Containers pass ``noise`` on.
"""

from __future__ import annotations

from typing import Any, Optional, Protocol, runtime_checkable

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


def reverse_rows(module: Any, v: Tensor, tape: Any) -> Tensor:
    """``module``'s VJP on folded rows ``(N·K, *out) -> (N·K, *in)``: a network's ``reverse_rows``, a layer's
    ``reverse``."""
    rows = getattr(module, "reverse_rows", None)
    return rows(v, tape) if rows is not None else module.reverse(v, tape)


def takes_noise(module: Any) -> bool:
    """True if ``module`` has random draws to report and reuse (``noise(tape)``, ``trace(x, noise=...)``)."""
    return callable(getattr(module, "noise", None))


def trace_with(module: Any, x: Tensor, noise: Any = None) -> tuple[Tensor, Any]:
    """``module.trace(x)``, reusing the random draws ``noise`` when there are any."""
    if noise is None:
        return module.trace(x)
    return module.trace(x, noise=noise)


def noise_of(module: Any, tape: Any) -> Any:
    """The random draws recorded in ``tape`` (``None`` if there are none, e.g. in eval mode)."""
    return module.noise(tape) if takes_noise(module) else None


def select_noise(noise: Any, index: Tensor) -> Any:
    """The rows ``index`` of every tensor in ``noise`` (a tensor, a dict of them, or ``None``)."""
    if noise is None:
        return None
    if isinstance(noise, dict):
        return {key: select_noise(value, index) for key, value in noise.items()}
    return noise[index]


def nested_noise(children: list[tuple[str, Any, Any]]) -> Optional[dict[str, Any]]:
    """A container's noise: ``{name: child.noise(entry)}`` for the children that drew any; ``None`` if none did."""
    found = {name: noise_of(child, entry) for name, child, entry in children if takes_noise(child)}
    found = {name: value for name, value in found.items() if value is not None}
    return found or None
