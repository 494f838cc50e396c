"""Pooling ↔ its transpose.

* MaxPool2d ↔ unpooling with the recorded argmax indices (torch's own tie-breaking); where windows
  overlap, the contributions that land on one input pixel add up (``scatter_add``).
* AvgPool2d, AdaptiveAvgPool2d ↔ the transposed averaging. Both are separable: ``y = A_H · x · A_Wᵀ`` per
  channel with one averaging matrix per spatial dimension (``A[o, i] = 1/count`` for input ``i`` in output
  window ``o``), so the reverse is ``g = A_Hᵀ · v · A_W``. The matrices follow torch's divisor rules
  exactly (padding, ``ceil_mode``, ``count_include_pad``, ``divisor_override``). Where the windows tile the
  input exactly (kernel = stride, no padding, sizes divisible: the CIFAR ConvNet's and NIN's poolings,
  ResNet's global average), the reverse spreads each value over its window in one element-wise pass.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._rows import expect_tape
from torch.nn.modules.utils import _pair

from ..errors import UnsupportedLayerError


class MaxPool2dTape(NamedTuple):
    indices: Tensor  # (N, C, H_out, W_out): flat offsets into H_in·W_in
    in_size: tuple[int, int]  # (H_in, W_in)


class MaxPool2d(nn.MaxPool2d):
    """Any kernel, stride, padding, dilation, ``ceil_mode``; overlapping windows.

    Shapes: x ``(N, C, H_in, W_in)``, y ``(N, C, H_out, W_out)``; v ``(M, C, H_out, W_out)``, g ``(M, C, H_in, W_in)``.
    """

    reverse_label = "MaxUnpool2d"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._check_supported()

    def _check_supported(self) -> None:
        if self.return_indices:
            raise UnsupportedLayerError(
                "revnet.MaxPool2d(return_indices=True) is not supported: trace() records the indices "
                "in the tape already; drop return_indices."
            )

    def trace(self, x: Tensor) -> tuple[Tensor, MaxPool2dTape]:
        if x.dim() != 4:
            raise ValueError(f"revnet.MaxPool2d expects input of shape (N, C, H, W), got {tuple(x.shape)}.")
        y, indices = F.max_pool2d(
            x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode, return_indices=True
        )
        return y, MaxPool2dTape(indices, (x.shape[-2], x.shape[-1]))

    def reverse(self, v: Tensor, tape: MaxPool2dTape) -> Tensor:
        expect_tape(self, tape, MaxPool2dTape)
        n, c = tape.indices.shape[:2]
        h, w = tape.in_size
        rows = v.reshape(n, -1, c, v.shape[-2] * v.shape[-1])  # (N, K, C, H_out·W_out)
        index = tape.indices.flatten(2).unsqueeze(1).expand_as(rows)
        # in place into fresh zeros (the out-of-place scatter_add would copy the zeros once more)
        g = rows.new_zeros(n, rows.shape[1], c, h * w).scatter_add_(3, index, rows)
        return g.reshape(v.shape[0], c, h, w)


def _averaging_matrix(
    out_size: int, in_size: int, starts: list[int], ends: list[int], divisors: list[float], like: Tensor
) -> Tensor:
    """``A[o, i] = 1/divisors[o]`` for ``starts[o] <= i < ends[o]`` (window clipped to the input), else 0."""
    i = torch.arange(in_size, device=like.device)
    start = torch.tensor(starts, device=like.device).unsqueeze(1)
    end = torch.tensor(ends, device=like.device).unsqueeze(1)
    inside = (i >= start) & (i < end)
    return inside.to(like.dtype) / torch.tensor(divisors, dtype=like.dtype, device=like.device).unsqueeze(1)


def _transposed_average(v: Tensor, a_h: Tensor, a_w: Tensor) -> Tensor:
    # v: (M, C, O_h, O_w); a_h: (O_h, H); a_w: (O_w, W) -> g: (M, C, H, W); g = A_hᵀ v A_w
    return torch.einsum("mcpq,ph,qw->mchw", v, a_h, a_w)


def _spread(v: Tensor, in_size: tuple[int, int], factor: float) -> Tensor:
    """The transposed average where the windows tile the input exactly (no overlap, no padding, no remainder):
    every ``v`` value times ``factor`` copied over its ``k_h × k_w`` window. ``v (M, C, O_h, O_w) -> (M, C, H, W)``
    with ``H = O_h·k_h``, ``W = O_w·k_w``. The same map as :func:`_transposed_average` in one element-wise pass
    instead of two small products (``python benchmarks/pool_reverse.py``)."""
    m, c, oh, ow = v.shape
    kh, kw = in_size[0] // oh, in_size[1] // ow
    return (v * factor)[:, :, :, None, :, None].expand(m, c, oh, kh, ow, kw).reshape(m, c, oh * kh, ow * kw)


class AvgPool2dTape(NamedTuple):
    """Shared by AvgPool2d and AdaptiveAvgPool2d: the averaging matrices depend on the sizes alone."""

    in_size: tuple[int, int]  # (H_in, W_in)
    out_size: tuple[int, int]  # (H_out, W_out)


def _trace_average(layer: nn.Module, x: Tensor) -> tuple[Tensor, AvgPool2dTape]:
    if x.dim() != 4:
        raise ValueError(f"revnet.{type(layer).__name__} expects input of shape (N, C, H, W), got {tuple(x.shape)}.")
    y = layer.forward(x)  # the torch.nn forward (revnet does not override it)
    return y, AvgPool2dTape((x.shape[-2], x.shape[-1]), (y.shape[-2], y.shape[-1]))


class AvgPool2d(nn.AvgPool2d):
    """Any kernel, stride, padding, ``ceil_mode``, ``count_include_pad`` and ``divisor_override``.

    Shapes: x ``(N, C, H_in, W_in)``, y ``(N, C, H_out, W_out)``; v ``(M, C, H_out, W_out)``, g ``(M, C, H_in, W_in)``.
    """

    reverse_label = "TransposedAvgPool2d"

    def trace(self, x: Tensor) -> tuple[Tensor, AvgPool2dTape]:
        return _trace_average(self, x)

    def _matrix(self, dim: int, tape: AvgPool2dTape, like: Tensor) -> Tensor:
        k = _pair(self.kernel_size)[dim]
        s = _pair(self.stride if self.stride is not None else self.kernel_size)[dim]
        p = _pair(self.padding)[dim]
        size, out = tape.in_size[dim], tape.out_size[dim]
        starts, ends, divisors = [], [], []
        for o in range(out):  # torch's avg_pool2d rule, one dimension at a time
            start = o * s - p
            end = min(start + k, size + p)
            padded_count = end - start
            start, end = max(start, 0), min(end, size)
            starts.append(start)
            ends.append(end)
            divisors.append(padded_count if self.count_include_pad else end - start)
        if self.divisor_override:  # one constant divisor, applied once (here: on the H matrix)
            divisors = [float(self.divisor_override) if dim == 0 else 1.0] * out
        return _averaging_matrix(out, size, starts, ends, divisors, like)

    def _tiles(self, tape: AvgPool2dTape) -> bool:
        """True if the windows tile the input exactly: kernel = stride, no padding, sizes divisible."""
        k = _pair(self.kernel_size)
        s = _pair(self.stride if self.stride is not None else self.kernel_size)
        return (k == s and _pair(self.padding) == (0, 0)
                and all(size == out * kk for size, out, kk in zip(tape.in_size, tape.out_size, k)))

    def reverse(self, v: Tensor, tape: AvgPool2dTape) -> Tensor:
        expect_tape(self, tape, AvgPool2dTape)
        if self._tiles(tape):
            kh, kw = _pair(self.kernel_size)
            return _spread(v, tape.in_size, 1.0 / (self.divisor_override or kh * kw))
        return _transposed_average(v, self._matrix(0, tape, v), self._matrix(1, tape, v))


AdaptiveAvgPool2dTape = AvgPool2dTape


class AdaptiveAvgPool2d(nn.AdaptiveAvgPool2d):
    """Output window ``o`` averages inputs ``floor(o·H/O) <= i < ceil((o+1)·H/O)``.

    Shapes: x ``(N, C, H_in, W_in)``, y ``(N, C, H_out, W_out)``; v ``(M, C, H_out, W_out)``, g ``(M, C, H_in, W_in)``.
    """

    reverse_label = "TransposedAdaptiveAvgPool2d"

    def trace(self, x: Tensor) -> tuple[Tensor, AvgPool2dTape]:
        return _trace_average(self, x)

    def reverse(self, v: Tensor, tape: AvgPool2dTape) -> Tensor:
        expect_tape(self, tape, AvgPool2dTape)
        if all(size % out == 0 for size, out in zip(tape.in_size, tape.out_size)):  # equal windows tiling it
            window = (tape.in_size[0] // tape.out_size[0]) * (tape.in_size[1] // tape.out_size[1])
            return _spread(v, tape.in_size, 1.0 / window)
        mats = []
        for size, out in zip(tape.in_size, tape.out_size):
            starts = [(o * size) // out for o in range(out)]
            ends = [((o + 1) * size + out - 1) // out for o in range(out)]  # ceil, in integers
            mats.append(_averaging_matrix(out, size, starts, ends, [e - s for s, e in zip(starts, ends)], v))
        return _transposed_average(v, *mats)
