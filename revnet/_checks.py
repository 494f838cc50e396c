"""Argument checks shared by the public entry points (attacks, losses, metrics, networks' ``reverse``).

Each check raises one clear error that says what was expected; the functions are called once, at the
public entry point, never in inner loops.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import Tensor, nn

from .errors import BatchNormTrainingError, InputMismatchError, ReverseShapeError
from .layers import is_reversible

HALF = (torch.float16, torch.bfloat16)


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
    if not x.is_floating_point() or x.dtype in HALF:
        raise ValueError(
            f"{name} must be a float32 or float64 tensor, got {x.dtype}; cast it with .float() (for mixed precision "
            "keep float32 tensors and use torch.autocast).")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values; clean the input before attacking it.")


def check_labels(y: Tensor, x: Tensor, name: str = "y") -> None:
    """Raise ``ValueError`` unless ``y`` is an integer vector with one entry per sample of ``x``."""
    if not isinstance(y, Tensor) or y.dim() != 1 or y.shape[0] != x.shape[0]:
        shape = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise ValueError(f"{name} must have shape (N,) = ({x.shape[0]},), one label per sample of x; got {shape}.")
    if y.dtype.is_floating_point or y.dtype == torch.bool or y.is_complex():
        raise ValueError(f"{name} must hold integer class indices (torch.long), got {y.dtype}.")


def check_network(net: nn.Module, x: Optional[Tensor] = None) -> None:
    """Raise unless ``net`` is a revnet network that can reverse now, and fits ``x`` (if given):

    * ``TypeError`` unless it has ``trace`` and ``reverse``;
    * ``ValueError`` for half-precision parameters, or parameters of another dtype than ``x``;
    * :class:`BatchNormTrainingError` for a BatchNorm layer in training mode, *before* anything runs, so its
      running statistics stay unchanged.
    """
    if not is_reversible(net):
        raise TypeError(
            f"expected a revnet network with trace() and reverse(), got {type(net).__name__}; "
            "convert any torch.nn model with revnet.convert(model)."
        )
    for name, module in net.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training:
            raise BatchNormTrainingError(
                f"BatchNorm layer '{name or type(module).__name__}' is in training mode, where its reverse is not a "
                "per-channel scale; call net.eval() first (fine-tuning keeps BatchNorm in eval mode).")
    param = next(iter(net.parameters()), None)
    if param is not None and param.dtype in HALF:
        raise ValueError(
            f"the network's parameters are {param.dtype}; revnet computes in float32 or float64: call net.float() "
            "(for mixed precision keep float32 parameters and use torch.autocast).")
    if param is not None and x is not None and isinstance(x, Tensor) and x.is_floating_point() and x.dtype != param.dtype:
        raise ValueError(
            f"x is {x.dtype} but the network's parameters are {param.dtype}; cast one to the other "
            f"(x.to({param.dtype}) or net.to({x.dtype})).")


def check_finite_parameters(net: nn.Module) -> None:
    """Raise ``ValueError`` naming the first parameter with NaN or infinite entries (a diverged checkpoint)."""
    for name, param in net.named_parameters():
        if not torch.isfinite(param).all():
            raise ValueError(
                f"the network's parameter '{name}' holds NaN or infinite values (training diverged or the checkpoint "
                "is damaged); evaluate an earlier checkpoint.")


def check_label_range(y: Tensor, num_classes: int, name: str = "y") -> None:
    """Raise ``ValueError`` unless every label is a class index in ``[0, num_classes)``."""
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(
            f"{name} holds labels in [{int(y.min())}, {int(y.max())}], but the network has {num_classes} classes "
            f"(valid labels 0..{num_classes - 1}).")


def check_classes(logits: Tensor) -> None:
    """Raise ``ValueError`` unless ``logits`` is ``(N, C)`` with at least two classes (a decision boundary)."""
    if logits.dim() != 2:
        raise ValueError(f"the network must output logits of shape (N, C), got {tuple(logits.shape)}.")
    if logits.shape[1] < 2:
        raise ValueError(
            f"the network outputs {logits.shape[1]} class; DeepFool, the Deep Defense loss and the robustness "
            "metrics need at least 2 classes (a decision boundary to move towards).")


def check_positive_int(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")


def check_nonnegative(value: Any, name: str) -> None:
    """Raise ``ValueError`` unless ``value`` is a finite real number >= 0 (a Python or NumPy number, or a
    one-element tensor); NaN, ±inf, negative numbers, strings and booleans are refused, naming ``name``."""
    try:
        ok = not isinstance(value, (bool, str, bytes)) and 0 <= float(value) < math.inf
    except (TypeError, ValueError, RuntimeError):  # None, a complex number, a tensor of several elements
        ok = False
    if not ok:
        several = isinstance(value, Tensor) and value.numel() != 1
        shown = f"a tensor of shape {tuple(value.shape)}" if several else repr(value)
        raise ValueError(f"{name} must be a finite number >= 0, got {shown}.")


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
    if n == 0:
        raise ReverseShapeError(f"the tape was recorded on an empty batch (N = 0); {who}.trace a batch with N >= 1.")
    if v.dim() == len(tape.out_shape) + 1 and v.shape[0] == n and tuple(v.shape[2:]) == out:
        return v.reshape(n * v.shape[1], *out), v.shape[1]
    if v.dim() == len(tape.out_shape) and tuple(v.shape) == tuple(tape.out_shape):
        return v, None
    raise ReverseShapeError(
        f"v has shape {tuple(v.shape)}, but {who}.reverse takes v of shape (N, *out) = {tuple(tape.out_shape)} "
        f"or, for K vectors per sample, (N, K, *out) = ({n}, K{''.join(', ' + str(s) for s in out)})."
    )


def layer_input_error(where: str, layer: Any, x: Tensor, exc: Exception) -> InputMismatchError:
    """One line for a layer that torch refused to run on ``x``: where, the layer, the input and torch's reason."""
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return InputMismatchError(
        f"{where} ({layer!r}) cannot take an input of shape {tuple(x.shape)} and dtype {x.dtype}: {reason}")
