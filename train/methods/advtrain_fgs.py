"""``advtrain-fgs``: Adv. Train II, ``α·CE(x) + (1 − α)·CE(x + ε·sign ∇ₓCE)`` with online FGS examples
(Goodfellow et al.)."""

from __future__ import annotations

import torch.nn.functional as F

from revnet import baselines

from ..cli import finite_float
from .base import Method, StepOutput


class AdvTrainFGS(Method):
    name, label = "advtrain-fgs", "Adv. Train II"
    summary = "advtrain-fgs: Adv. Train II, alpha*CE(x) + (1-alpha)*CE(x + eps*sign(grad)) with online FGS examples"

    @staticmethod
    def add_args(p) -> None:
        p.add_argument("--alpha", type=finite_float, default=0.5,
                       help="advtrain-fgs, deepdefense+fgs: weight of the clean CE (Goodfellow et al.: 0.5)")
        p.add_argument("--fgs-eps", type=finite_float, default=None,
                       help="advtrain-fgs, deepdefense+fgs: FGS step of the training examples, in network-input units "
                            "(MNIST: x/255 - mean); default chosen on a validation split on MNIST (see README), untuned "
                            "elsewhere")

    def loss(self, net, x, y, generator=None) -> StepOutput:
        s = self.settings
        loss, logits = baselines.fgs_adversarial_loss(net, x, y, eps=s["fgs_eps"], alpha=s["alpha"], clip=s.get("clip"))
        ce = F.cross_entropy(logits.detach(), y).item()
        return StepOutput(loss, (logits.detach().argmax(1) == y).float().sum().item(), float("nan"), ce)

    def uses(self, flag: str) -> bool:
        return flag in ("alpha", "fgs_eps")
