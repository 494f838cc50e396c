"""Conv2d ↔ transposed convolution with the same weight.

The forward may drop the last rows/columns of the padded input when ``(H_in + 2p − d(k−1) − 1)`` is not a
multiple of the stride; the reverse restores the input size exactly with
``output_padding = (H_in + 2p − d(k−1) − 1) mod s`` in each spatial dimension. ``padding="same"`` with an
even receptive field pads asymmetrically: then the reverse transposes without padding and crops.

Kernel choice (the same transposed convolution either way, exact up to float rounding): on the CPU a
convolution with one input channel (the first layer of an MNIST network) reverses through ATen's im2col/GEMM
kernel (``slow_conv_transpose2d``) instead of oneDNN's, whose transposed convolution onto a single channel is
slow there. LeNet's conv1 reverse (20→1 channels, 24×24→28×28, float32, 2 cores): 1.6 instead of 4.7 ms at
100 rows, 3.1 instead of 9.3 ms at 200 rows, 6.9 instead of 13.4 ms with its backward. With more input channels
oneDNN was faster for LeNet's conv2 (im2col 2.0× slower) and CIFAR's 5×5 conv1 (2.3×); ResNet-18's 3×3 conv1
(3 channels) was faster in im2col (0.34×) but is not switched (one rule, measured on few shapes).
``python benchmarks/conv_kernels.py``, ``benchmarks/results/conv-kernels.md``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._rows import expect_tape

from ..errors import UnsupportedLayerError


class Conv2dTape(NamedTuple):
    in_size: tuple[int, int]  # (H_in, W_in)


class Conv2d(nn.Conv2d):
    """Any stride, padding (ints, ``"valid"``, ``"same"``), dilation and groups; bias or not.

    Shapes: x ``(N, C_in, H_in, W_in)``, y ``(N, C_out, H_out, W_out)``; v ``(M, C_out, H_out, W_out)``,
    g ``(M, C_in, H_in, W_in)``.
    """

    reverse_label = "ConvTranspose2d"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._check_supported()

    def _check_supported(self) -> None:
        if self.padding_mode != "zeros":
            raise UnsupportedLayerError(
                f"revnet.Conv2d supports padding_mode='zeros' only, got {self.padding_mode!r}; "
                "pad explicitly before the convolution or register a layer of your own."
            )

    def _pads(self, in_size: tuple[int, int]) -> list[tuple[int, int]]:
        """(before, after) zero padding per spatial dimension, as the forward applied it."""
        return conv_pads(self.padding, self.dilation, self.kernel_size)

    def reverse_extra_repr(self) -> str:
        """The transposed convolution maps ``out_channels`` to ``in_channels``; the bias takes no part in it."""
        text = f"{self.out_channels}, {self.in_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding not in ((0, 0), "valid"):
            text += f", padding={self.padding!r}" if isinstance(self.padding, str) else f", padding={self.padding}"
        if self.dilation != (1, 1):
            text += f", dilation={self.dilation}"
        return text + (f", groups={self.groups}" if self.groups != 1 else "")

    def trace(self, x: Tensor) -> tuple[Tensor, Conv2dTape]:
        if x.dim() != 4:
            raise ValueError(f"revnet.Conv2d expects input of shape (N, C, H, W), got {tuple(x.shape)}.")
        return super().forward(x), Conv2dTape((x.shape[-2], x.shape[-1]))

    def reverse(self, v: Tensor, tape: Conv2dTape) -> Tensor:
        expect_tape(self, tape, Conv2dTape)
        return conv2d_reverse(v, self.weight, self.stride, self._pads(tape.in_size), self.dilation, self.groups,
                              tape.in_size)


def conv_pads(padding, dilation, kernel_size) -> list[tuple[int, int]]:
    """(before, after) zero padding per spatial dimension of a convolution with ``padding`` (ints, ``"valid"`` or
    ``"same"``)."""
    if padding == "valid":
        return [(0, 0), (0, 0)]
    if padding == "same":
        total = [d * (k - 1) for d, k in zip(dilation, kernel_size)]
        return [(t // 2, t - t // 2) for t in total]
    return [(p, p) for p in padding]


def conv2d_reverse(v: Tensor, weight: Tensor, stride, pads, dilation, groups: int, in_size) -> Tensor:
    """The transposed convolution with ``weight`` that restores ``in_size`` exactly: ``v (M, C_out, H_out, W_out)
    -> (M, C_in, H_in, W_in)``."""
    kernel_size = tuple(weight.shape[-2:])
    if all(before == after for before, after in pads):
        output_padding = [(size + 2 * p - d * (k - 1) - 1) % s
                          for size, (p, _), d, k, s in zip(in_size, pads, dilation, kernel_size, stride)]
        padding = [p for p, _ in pads]
        if _single_channel_on_cpu(weight, groups, v):
            return torch.ops.aten.slow_conv_transpose2d(
                v, weight, kernel_size, None, stride, padding, output_padding, dilation)
        return F.conv_transpose2d(v, weight, None, stride, padding, output_padding, groups, dilation)
    # Asymmetric ("same" with an even receptive field; torch allows it only with stride 1): transpose
    # onto the whole padded grid (H_in + total padding), then crop the padding away.
    g = F.conv_transpose2d(v, weight, None, stride, 0, 0, groups, dilation)
    (top, _), (left, _) = pads
    return g[..., top : top + in_size[0], left : left + in_size[1]]


class FunctionalConv2dTape(NamedTuple):
    weight: Tensor  # the model's weight (C_out, C_in / groups, kH, kW)
    stride: tuple[int, int]
    pads: list[tuple[int, int]]
    dilation: tuple[int, int]
    groups: int
    in_size: tuple[int, int]


class FunctionalConv2dRule:
    """``F.conv2d(x, W, b, stride, padding, dilation, groups)`` with the model's own ``W`` and ``b`` (what
    ``nn.Conv2d`` calls inside a traced-through module, or timm's ``Conv2dSame``): the reverse is ``Conv2d``'s.
    A weight or bias that depends on the input is refused. Shapes as :class:`Conv2d`."""

    names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")

    def _bound(self, args, kwargs) -> dict:
        return {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1,
                **dict(zip(self.names, args)), **kwargs}

    def inputs(self, args, kwargs) -> list:
        b = self._bound(args, kwargs)
        return [b["input"], b["weight"], b["bias"]]

    def forward(self, call, args, kwargs) -> Tensor:
        return call(*args, **kwargs)

    def trace(self, call, args, kwargs, live) -> tuple[Tensor, FunctionalConv2dTape]:
        if any(live[1:]):
            raise UnsupportedLayerError("F.conv2d with a weight or bias that depends on the input has no reverse; "
                                        "its weight and bias must be the model's parameters.")
        b = self._bound(args, kwargs)
        x, weight = b["input"], b["weight"]
        if x.dim() != 4:
            raise UnsupportedLayerError(f"F.conv2d on input of shape {tuple(x.shape)}; revnet reverses (N, C, H, W).")
        pair = lambda value: (value, value) if isinstance(value, int) else tuple(value)  # noqa: E731
        dilation = pair(b["dilation"])
        padding = b["padding"] if isinstance(b["padding"], str) else pair(b["padding"])
        tape = FunctionalConv2dTape(weight, pair(b["stride"]), conv_pads(padding, dilation, weight.shape[-2:]),
                                    dilation, b["groups"], (x.shape[-2], x.shape[-1]))
        return call(*args, **kwargs), tape

    def reverse(self, v: Tensor, tape: FunctionalConv2dTape) -> list:
        return [conv2d_reverse(v, tape.weight, tape.stride, tape.pads, tape.dilation, tape.groups, tape.in_size),
                None, None]


def _single_channel_on_cpu(weight: Tensor, groups: int, v: Tensor) -> bool:
    """True where the im2col kernel beats oneDNN's transposed convolution (see the module docstring): one input
    channel, no groups, float32/float64 rows on the CPU, and not inside ``torch.compile`` (the im2col op has no
    symbolic-shape meta function; compiled code leaves the kernel choice to inductor)."""
    return (v.device.type == "cpu" and weight.shape[1] == 1 and groups == 1
            and v.dtype in (torch.float32, torch.float64) and not torch.compiler.is_compiling())


CONV_RULES: dict = {F.conv2d: FunctionalConv2dRule()}
