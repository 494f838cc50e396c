"""``deepdefense+fgs``: ``α·CE(x) + (1 − α)·CE(x_fgs)`` plus the Deep Defense regularizer (the paper's "Ours+FGS")."""

from __future__ import annotations

import torch.nn.functional as F

import revnet

from .base import StepOutput
from .deepdefense import DeepDefense


class DeepDefenseFGS(DeepDefense):
    name, label = "deepdefense+fgs", "Ours+FGS"
    summary = "deepdefense+fgs: alpha*CE(x) + (1-alpha)*CE(x_fgs) + the Deep Defense regularizer"
    model_defaults = {"mlp": {"fgs_eps": 0.1}, "lenet": {"fgs_eps": 0.1}}  # chosen with train/sweep.py (README)
    tuned = {}  # not Deep Defense's MNIST c and λ

    @staticmethod
    def add_args(p) -> None:
        """Its flags are Deep Defense's and Adv. Train II's (--alpha, --fgs-eps)."""

    def loss(self, net, x, y, generator=None) -> StepOutput:
        s = self.settings
        loss, info = self.regularized(net, x, y, s["alpha"])
        x_fgs = revnet.fgs_perturb(net, x, y, s["fgs_eps"], clip=s.get("clip"))
        loss = loss + (1.0 - s["alpha"]) * F.cross_entropy(net(x_fgs), y)
        return StepOutput(loss, info.correct.float().sum().item(), info.ratio.sum().item(), info.ce.item())

    def uses(self, flag: str) -> bool:
        return super().uses(flag) or flag in ("alpha", "fgs_eps")
