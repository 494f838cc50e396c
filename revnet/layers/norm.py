"""BatchNorm1d / BatchNorm2d with frozen statistics ↔ the per-channel scale ``γ / √(σ² + ε)``.

In eval mode BatchNorm is the affine map ``y = γ (x − μ) / √(σ² + ε) + β`` with the running statistics
``μ, σ²``; its Jacobian is the per-channel scale above, read from the *live* ``γ`` so second-order
gradients reach it. In training mode the batch statistics make every output depend on every sample, which
this reverse does not implement: ``trace`` records the mode and ``reverse`` raises
:class:`~revnet.errors.BatchNormTrainingError` (freeze the statistics with ``net.eval()``).
``affine=False`` is supported (scale ``1 / √(σ² + ε)``); ``track_running_stats=False`` is not, since such a
layer never has frozen statistics.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from ._rows import expect_tape

from ..errors import BatchNormTrainingError, UnsupportedLayerError


class BatchNormTape(NamedTuple):
    training: bool  # True if traced in training mode (batch statistics): no reverse


class _FrozenBatchNormReverse:
    """Shared reverse of BatchNorm1d/2d: ``g[m, c, ...] = v[m, c, ...] · scale[c]``."""

    reverse_label = "ChannelScale"

    def _check_supported(self) -> None:
        if not self.track_running_stats:
            raise UnsupportedLayerError(
                f"revnet.{type(self).__name__}(track_running_stats=False) always normalises with batch "
                "statistics, so it has no frozen per-channel scale to reverse; use track_running_stats=True."
            )

    def trace(self, x: Tensor) -> tuple[Tensor, BatchNormTape]:
        return self.forward(x), BatchNormTape(self.training)

    def reverse(self, v: Tensor, tape: BatchNormTape) -> Tensor:
        expect_tape(self, tape, BatchNormTape)
        if tape.training:
            raise BatchNormTrainingError(
                f"{type(self).__name__}({self.num_features}) was traced in training mode, where it uses batch "
                "statistics and its reverse is not a per-channel scale. Freeze the statistics with "
                "net.eval() before net.trace(x)."
            )
        scale = torch.rsqrt(self.running_var + self.eps)
        if self.affine:
            scale = self.weight * scale
        return v * scale.to(v.dtype).reshape(-1, *([1] * (v.dim() - 2)))


class BatchNorm1d(_FrozenBatchNormReverse, nn.BatchNorm1d):
    """Shapes: x, y ``(N, C)`` or ``(N, C, L)``; v, g ``(M, C)`` or ``(M, C, L)``."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._check_supported()


class BatchNorm2d(_FrozenBatchNormReverse, nn.BatchNorm2d):
    """Shapes: x, y ``(N, C, H, W)``; v, g ``(M, C, H, W)``."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._check_supported()
