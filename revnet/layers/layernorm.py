"""LayerNorm and GroupNorm (modules and functions) and ``F.batch_norm`` with running statistics.

LayerNorm and GroupNorm both standardise groups of entries of each row: viewing ``x (N, *s)`` as ``(N, A, B)``
(LayerNorm: ``B`` the normalised trailing dims; GroupNorm: ``A`` the groups, ``B`` a group's channels and
positions), ``x̂ = (x − μ) / σ`` over the last axis with ``σ = √(var + ε)`` (biased variance, as torch), then
``y = γ ⊙ x̂ + β``. With ``g' = v ⊙ γ`` the reverse is

    g = (g' − mean(g') − x̂ · mean(g' ⊙ x̂)) / σ        (means over each group's B entries).

``x̂`` and ``1/σ`` are computed from the traced ``x`` with differentiable ops and ``γ`` is the live parameter, so
the tape sits in the autograd graph and second-order gradients (w.r.t. ``x`` and ``γ``) are exact.

``F.batch_norm`` with ``training=False`` is the frozen per-channel affine map of the BatchNorm modules
(:mod:`revnet.layers.norm`): reverse ``g = v · γ / √(running_var + ε)``. Traced with ``training=True`` (batch
statistics) its reverse raises :class:`~revnet.errors.BatchNormTrainingError`, as the modules do.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional

import torch
from torch import Tensor, nn

from ..errors import BatchNormTrainingError, UnsupportedLayerError
from ._rows import expect_tape, per_sample
from .functional import bind


class NormTape(NamedTuple):
    xhat: Tensor  # (N, A, B): the standardised input, in the autograd graph
    rstd: Tensor  # (N, A, 1): 1 / √(var + ε) per group
    in_shape: tuple[int, ...]  # x.shape[1:]


def standardize(x: Tensor, groups: int, eps: float) -> tuple[Tensor, Tensor]:
    """``x (N, *s)`` viewed as ``(N, groups, B)``: ``(x̂, 1/σ)`` over the last axis, biased variance as torch."""
    rows = x.reshape(x.shape[0], groups, -1)
    centered = rows - rows.mean(-1, keepdim=True)
    rstd = torch.rsqrt(centered.square().mean(-1, keepdim=True) + eps)
    return centered * rstd, rstd


def normalize_reverse(v: Tensor, tape: NormTape, weight: Optional[Tensor]) -> Tensor:
    """``v (N·K, *s) -> g (N·K, *s)``: the formula in the module docstring; ``weight`` (γ, the live parameter)
    broadcasts against ``s`` (``None``: no affine)."""
    gp = v if weight is None else v * weight
    n, groups = tape.xhat.shape[:2]
    rows = per_sample(gp.reshape(v.shape[0], groups, -1), n)  # (N, K, A, B)
    xhat, rstd = tape.xhat.unsqueeze(1), tape.rstd.unsqueeze(1)
    g = (rows - rows.mean(-1, keepdim=True) - xhat * (rows * xhat).mean(-1, keepdim=True)) * rstd
    return g.reshape(v.shape[0], *tape.in_shape)


def layer_norm_tape(x: Tensor, normalized_shape: Any, eps: float) -> NormTape:
    dims = 1 if isinstance(normalized_shape, int) else len(normalized_shape)
    if dims >= x.dim():
        raise UnsupportedLayerError(
            f"layer_norm over {dims} dims of an input of shape {tuple(x.shape)} mixes the samples; normalise only "
            "trailing dims after the batch dim.")
    xhat, rstd = standardize(x, math.prod(x.shape[1:x.dim() - dims]), eps)
    return NormTape(xhat, rstd, tuple(x.shape[1:]))


def group_norm_tape(x: Tensor, num_groups: int, eps: float) -> NormTape:
    xhat, rstd = standardize(x, num_groups, eps)
    return NormTape(xhat, rstd, tuple(x.shape[1:]))


def channel_weight(weight: Optional[Tensor], in_shape: tuple[int, ...]) -> Optional[Tensor]:
    """A per-channel ``γ (C,)`` as ``(C, 1, …, 1)``, to broadcast against ``(C, *spatial)``."""
    return None if weight is None else weight.reshape(-1, *([1] * (len(in_shape) - 1)))


class LayerNorm(nn.LayerNorm):
    """``y = γ ⊙ (x − μ)/σ + β`` over the trailing ``normalized_shape`` dims; reverse in the module docstring.

    Shapes: x, y ``(N, *, *normalized_shape)``; v, g ``(M, *, *normalized_shape)`` with ``M = N·K``.
    """

    reverse_label = "LayerNormVJP"

    def trace(self, x: Tensor) -> tuple[Tensor, NormTape]:
        return self.forward(x), layer_norm_tape(x, self.normalized_shape, self.eps)

    def reverse(self, v: Tensor, tape: NormTape) -> Tensor:
        expect_tape(self, tape, NormTape)
        return normalize_reverse(v, tape, self.weight)


class GroupNorm(nn.GroupNorm):
    """``y = γ_c (x − μ_g)/σ_g + β_c`` per group ``g`` of ``C / num_groups`` channels (and all positions).

    Shapes: x, y ``(N, C, *spatial)``; v, g ``(M, C, *spatial)`` with ``M = N·K``.
    """

    reverse_label = "GroupNormVJP"

    def trace(self, x: Tensor) -> tuple[Tensor, NormTape]:
        return self.forward(x), group_norm_tape(x, self.num_groups, self.eps)

    def reverse(self, v: Tensor, tape: NormTape) -> Tensor:
        expect_tape(self, tape, NormTape)
        return normalize_reverse(v, tape, channel_weight(self.weight, tape.in_shape))


def _refuse_live(live: tuple[bool, ...], name: str) -> None:
    if any(live[1:]):
        raise UnsupportedLayerError(
            f"{name} with a weight, bias or statistics that depend on the input has no rule; they must be constants "
            "(parameters or buffers).")


class NormRuleTape(NamedTuple):
    norm: NormTape
    weight: Optional[Tensor]  # γ as passed (a parameter), reshaped to broadcast against x.shape[1:]; or None


class _NormRule:
    """Shared by the function rules: the tensor input first, then constants (parameters, buffers, numbers)."""

    names: tuple[str, ...]
    defaults: dict[str, Any]
    tensors: tuple[str, ...]  # the arguments inputs() lists
    label: str

    def _bound(self, args, kwargs) -> dict[str, Any]:
        return bind(args, kwargs, self.names, self.defaults)

    def inputs(self, args, kwargs) -> list:
        b = self._bound(args, kwargs)
        return [b[name] for name in self.tensors]

    def forward(self, call, args, kwargs) -> Tensor:
        return call(*args, **kwargs)

    def trace(self, call, args, kwargs, live) -> tuple[Tensor, Any]:
        _refuse_live(live, self.label)
        return call(*args, **kwargs), self.tape(self._bound(args, kwargs))

    def reverse(self, v: Tensor, tape: NormRuleTape) -> list[Optional[Tensor]]:
        return [normalize_reverse(v, tape.norm, tape.weight), *([None] * (len(self.tensors) - 1))]


class LayerNormRule(_NormRule):
    """``F.layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5)``; shapes as :class:`LayerNorm`."""

    names = ("input", "normalized_shape", "weight", "bias", "eps")
    defaults = {"weight": None, "bias": None, "eps": 1e-5}
    tensors = ("input", "weight", "bias")
    label = "F.layer_norm"

    def tape(self, b: dict[str, Any]) -> NormRuleTape:
        return NormRuleTape(layer_norm_tape(b["input"], b["normalized_shape"], b["eps"]), b["weight"])


class GroupNormRule(_NormRule):
    """``F.group_norm(input, num_groups, weight=None, bias=None, eps=1e-5)``; shapes as :class:`GroupNorm`."""

    names = ("input", "num_groups", "weight", "bias", "eps")
    defaults = {"weight": None, "bias": None, "eps": 1e-5}
    tensors = ("input", "weight", "bias")
    label = "F.group_norm"

    def tape(self, b: dict[str, Any]) -> NormRuleTape:
        norm = group_norm_tape(b["input"], b["num_groups"], b["eps"])
        return NormRuleTape(norm, channel_weight(b["weight"], norm.in_shape))


class FrozenBatchNormTape(NamedTuple):
    training: bool  # traced with batch statistics: no reverse
    scale: Optional[Tensor]  # (C,): γ / √(running_var + ε) from the live γ (None when training)


class BatchNormRule(_NormRule):
    """``F.batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1,
    eps=1e-5)`` with ``training=False``: reverse ``g[m, c, …] = v[m, c, …] · γ_c / √(running_var_c + ε)``.

    Shapes: x, y ``(N, C, *)``; v, g ``(M, C, *)`` with ``M = N·K``.
    """

    names = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")
    defaults = {"weight": None, "bias": None, "training": False, "momentum": 0.1, "eps": 1e-5}
    tensors = ("input", "running_mean", "running_var", "weight", "bias")
    label = "F.batch_norm"

    def tape(self, b: dict[str, Any]) -> FrozenBatchNormTape:
        if b["training"]:
            return FrozenBatchNormTape(True, None)
        scale = torch.rsqrt(b["running_var"] + b["eps"])
        return FrozenBatchNormTape(False, scale if b["weight"] is None else b["weight"] * scale)

    def reverse(self, v: Tensor, tape: FrozenBatchNormTape) -> list[Optional[Tensor]]:
        if tape.training:
            raise BatchNormTrainingError(
                "F.batch_norm was traced with training=True (batch statistics), which has no per-channel reverse; "
                "call model.eval() before tracing.")
        g = v * tape.scale.to(v.dtype).reshape(-1, *([1] * (v.dim() - 2)))
        return [g, None, None, None, None]


NORM_COUNTERPARTS: dict = {LayerNorm: nn.LayerNorm, GroupNorm: nn.GroupNorm}
NORM_RULES: dict = {nn.functional.layer_norm: LayerNormRule(), nn.functional.group_norm: GroupNormRule(),
                    nn.functional.batch_norm: BatchNormRule()}
NORM_METHOD_RULES: dict = {}
