"""``pgd-at``: PGD adversarial training, L2 (Madry et al., 2018): the cross-entropy of L2 PGD examples only."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import pixel_pgd
from .base import Method, StepOutput


def box_and_factor(settings: dict) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The valid network inputs ``(lo, hi)`` and the pixel → input factor of a run (``finetune.py`` passes them as
    ``box`` and ``pixel_factor``; without them: no box and the identity)."""
    box = settings.get("box") or (torch.tensor(-math.inf), torch.tensor(math.inf))
    factor = settings.get("pixel_factor")
    return box, torch.as_tensor(1.0 if factor is None else factor)


class PGDAT(Method):
    name, label = "pgd-at", "PGD-AT"
    summary = ("pgd-at: PGD adversarial training, L2 (Madry et al.), CE of PGD examples in the pixel box "
               "(--pgd-eps in pixels, --pgd-steps, random start)")

    @staticmethod
    def add_args(p) -> None:
        pixel_pgd.add_pgd_args(p)

    def __init__(self, settings) -> None:
        super().__init__(settings)
        self.eps, self.steps, self.step_size = pixel_pgd.pgd_settings(self.settings)
        self.box, self.factor = box_and_factor(self.settings)

    def examples(self, net, x, y, generator=None) -> torch.Tensor:
        """The training examples ``(N, *in)``: PGD from a uniform point of the ε-ball (or from ``x``)."""
        factor = self.factor.to(x.device, x.dtype)
        start = None if self.settings.get("no_random_start") else pixel_pgd.ball_start(x, self.eps, factor, generator)
        return pixel_pgd.pgd(net, x, pixel_pgd.ce_cotangent(y), eps=self.eps, steps=self.steps,
                             step_size=self.step_size, factor=factor, box=self.box, start=start)

    def loss(self, net, x, y, generator=None) -> StepOutput:
        x_adv = self.examples(net, x, y, generator)
        loss = F.cross_entropy(net(x_adv), y)
        with torch.no_grad():
            clean = net(x)
        return StepOutput(loss, (clean.argmax(1) == y).float().sum().item(), math.nan,
                          F.cross_entropy(clean, y).item())

    def uses(self, flag: str) -> bool:
        return flag in ("pgd_eps", "pgd_steps", "pgd_step_size", "no_random_start")
