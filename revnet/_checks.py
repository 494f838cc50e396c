"""Argument checks shared by the public entry points (attacks, losses, metrics, networks' ``reverse``).

Each check raises one clear error that says what was expected; the functions are called once, at the
public entry point, never in inner loops.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor, nn

from .errors import ReverseShapeError
from .layers import is_reversible


def norm_floor(dtype: torch.dtype) -> float:
    """The smallest norm a division uses: ``finfo(dtype).eps²``, far below any meaningful gradient norm and
    large enough that ``1 / floor²`` (the scale of the step's derivative at a zero gradient) is finite."""
    return torch.finfo(dtype).eps ** 2


def check_batch(x: Tensor, name: str = "x") -> None:
    """Raise ``ValueError`` unless ``x`` is a non-empty floating batch ``(N, *in)`` of finite values."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a tensor of shape (N, *in), got {type(x).__name__}.")
    if x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty batch of shape (N, *in), got shape {tuple(x.shape)}.")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor (float32 or float64), got {x.dtype}.")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values; clean the input before attacking it.")


def check_labels(y: Tensor, x: Tensor, name: str = "y") -> None:
    """Raise ``ValueError`` unless ``y`` is an integer vector with one entry per sample of ``x``."""
    if not isinstance(y, Tensor) or y.dim() != 1 or y.shape[0] != x.shape[0]:
        shape = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise ValueError(f"{name} must have shape (N,) = ({x.shape[0]},), one label per sample of x; got {shape}.")
    if y.dtype.is_floating_point or y.dtype == torch.bool or y.is_complex():
        raise ValueError(f"{name} must hold integer class indices (torch.long), got {y.dtype}.")


def check_network(net: nn.Module) -> None:
    """Raise ``TypeError`` unless ``net`` has ``trace`` and ``reverse``."""
    if not is_reversible(net):
        raise TypeError(
            f"expected a revnet network with trace() and reverse(), got {type(net).__name__}; "
            "convert any torch.nn model with revnet.convert(model)."
        )


def check_positive_int(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")


def fold_class_rows(v: Tensor, tape: Any, who: str) -> tuple[Tensor, Optional[int]]:
    """The public ``reverse``'s input check: ``v`` is ``(N, *out)`` or ``(N, K, *out)`` for the ``N`` samples and
    output shape the tape recorded (``tape.out_shape``, ``tape.dtype``, ``tape.device``), nothing else.

    Returns the folded rows ``(N·K, *out)`` (sample-major) and ``K``, or ``v`` itself and ``None``.
    """
    if not isinstance(v, Tensor):
        raise ReverseShapeError(f"{who}.reverse expects a tensor v, got {type(v).__name__}.")
    if v.dtype != tape.dtype or v.device != tape.device:
        raise ReverseShapeError(
            f"v has dtype {v.dtype} on {v.device}, but the traced output has dtype {tape.dtype} on "
            f"{tape.device}; create v with y.new_zeros(...)/torch.zeros_like(y) or cast it."
        )
    n, out = tape.out_shape[0], tuple(tape.out_shape[1:])
    if v.dim() == len(tape.out_shape) + 1 and v.shape[0] == n and tuple(v.shape[2:]) == out:
        return v.reshape(n * v.shape[1], *out), v.shape[1]
    if v.dim() == len(tape.out_shape) and tuple(v.shape) == tuple(tape.out_shape):
        return v, None
    raise ReverseShapeError(
        f"v has shape {tuple(v.shape)}, but {who}.reverse takes v of shape (N, *out) = {tuple(tape.out_shape)} "
        f"or, for K vectors per sample, (N, K, *out) = ({n}, K{''.join(', ' + str(s) for s in out)})."
    )
