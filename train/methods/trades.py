"""``trades``: TRADES, L2 (Zhang et al., 2019): ``CE(x) + β·KL(p(x) ‖ p(x′))``, summed over the batch and divided
by N, where x′ maximises the KL by L2 PGD from ``x + 0.001·N(0, I)``."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..cli import finite_float
from . import pixel_pgd
from .base import Method, StepOutput
from .pgd_at import box_and_factor


class TRADES(Method):
    name, label = "trades", "TRADES"
    summary = "trades: TRADES, L2 (Zhang et al.), CE(x) + beta*KL(p(x) || p(x')) with x' from PGD on the KL"

    @staticmethod
    def add_args(p) -> None:
        p.add_argument("--trades-beta", type=finite_float, default=6.0,
                       help="trades: weight β of the KL term (Zhang et al.: 6)")

    def __init__(self, settings) -> None:
        super().__init__(settings)
        self.eps, self.steps, self.step_size = pixel_pgd.pgd_settings(self.settings)
        self.box, self.factor = box_and_factor(self.settings)
        self.beta = float(self.settings.get("trades_beta", 6.0))

    def examples(self, net, x, p_clean, generator=None) -> torch.Tensor:
        """x′ ``(N, *in)``: PGD on ``KL(p_clean ‖ p(x′))`` (its logit gradient is ``softmax(z′) − p_clean``)
        from ``x + 0.001·N(0, I)`` (pixel space)."""
        factor = self.factor.to(x.device, x.dtype)
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        return pixel_pgd.pgd(net, x, lambda z: z.softmax(1) - p_clean, eps=self.eps, steps=self.steps,
                             step_size=self.step_size, factor=factor, box=self.box, start=x + 0.001 * noise * factor)

    def loss(self, net, x, y, generator=None) -> StepOutput:
        logits = net(x)
        x_adv = self.examples(net, x, logits.detach().softmax(1), generator)
        log_p = logits.log_softmax(1)
        kl = (log_p.exp() * (log_p - net(x_adv).log_softmax(1))).sum() / len(x)
        ce = F.cross_entropy(logits, y)
        return StepOutput(ce + self.beta * kl, (logits.detach().argmax(1) == y).float().sum().item(), math.nan,
                          ce.item())

    def uses(self, flag: str) -> bool:
        return flag in ("pgd_eps", "pgd_steps", "pgd_step_size", "trades_beta")
