"""Helpers for the row convention shared by every reverse.

A layer's ``reverse`` receives ``v`` of shape ``(M, *out)`` where ``M = N·K``: the ``N`` samples the
tape was recorded on, each repeated for ``K`` cotangents (DeepFool's class axis folded into the batch,
sample-major, so row ``n·K + k`` belongs to sample ``n``). Per-sample tape entries (masks, indices)
have ``N`` rows and are broadcast over ``K`` without copying.

Inside a traced graph the same holds for *any* value, whatever its first dimension holds: the cotangent of a
value ``y`` of shape ``(T, *s)`` is ``(T·K, *s)``, row ``t·K + k`` belonging to row ``t`` of ``y``. ``T`` is the
batch ``N`` for most values, but a model may fold windows into it (Swin: ``N·windows``) or move the batch axis
elsewhere (timm's ``qkv.permute(2, 0, 3, 1, 4)`` gives ``(3, N, …)``). A rule that acts row by row pairs its
tape's ``T`` rows with ``v`` through :func:`per_sample` as before; a rule that moves data *across* the first
dimension (a permute of dim 0, a reshape that changes it, ``unbind(0)``) unfolds ``K`` first
(:func:`unfold_k`), applies its adjoint to the ``K`` copies, and folds again (:func:`fold_k`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import ReverseShapeError, TapeMismatchError


def per_sample(v: Tensor, n: int) -> Tensor:
    """View ``v`` of shape ``(N·K, *s)`` as ``(N, K, *s)``."""
    if n == 0 or v.shape[0] % n:
        raise ReverseShapeError(
            f"v has {v.shape[0]} rows, which is not a multiple of the {n} samples the tape was "
            "recorded on; pass v of shape (N, *out) or (N, K, *out)."
        )
    return v.reshape(n, v.shape[0] // n, *v.shape[1:])


def times_per_sample(v: Tensor, factor: Tensor) -> Tensor:
    """``v * factor`` where ``v`` is ``(N·K, *s)`` and ``factor`` is ``(N, *s)`` (or broadcastable)."""
    n = factor.shape[0]
    return (per_sample(v, n) * factor.unsqueeze(1)).reshape(v.shape)


def fold_shape(rows: int, shape: torch.Size) -> tuple[int, ...]:
    """``(rows, *shape[1:])``: the per-sample shape with ``rows`` rows."""
    return (rows, *shape[1:])


def expect_tape(layer: object, tape: object, tape_type: type) -> None:
    """Raise :class:`TapeMismatchError` unless ``tape`` is a ``tape_type`` (e.g. another layer's tape was passed)."""
    if not isinstance(tape, tape_type):
        raise TapeMismatchError(
            f"{type(layer).__name__}.reverse expects the {tape_type.__name__} its own trace() returned, got "
            f"{type(tape).__name__}; pass each layer the tape it recorded (a network's reverse does this for you).")


def unfold_k(v: Tensor, rows: int) -> Tensor:
    """``v`` of shape ``(rows·K, *s)`` as ``K`` cotangents of the value itself: ``(K, rows, *s)``."""
    return per_sample(v, rows).movedim(1, 0)


def fold_k(g: Tensor) -> Tensor:
    """The inverse of :func:`unfold_k`: ``(K, rows, *s)`` → ``(rows·K, *s)``."""
    g = g.movedim(0, 1)
    return g.reshape(g.shape[0] * g.shape[1], *g.shape[2:])
