"""``gradnorm``: input-gradient regularisation, ``CE + λ·meanᵢ‖∇ₓ CEᵢ‖²`` (double backprop; Drucker & LeCun
1992, Ross & Doshi-Velez 2018), with ∇ₓ CEᵢ from revnet's explicit reverse of the row ``softmax(f) − onehot(y)``,
kept in the graph so the penalty trains the weights (no ``torch.autograd.grad``)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..cli import finite_float
from .base import Method, StepOutput


def input_gradient_penalty(net, x, y) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits (N, C), ‖∇ₓ CEᵢ‖² (N,))``, both with a graph to the weights: ``CEᵢ`` is sample i's own
    cross-entropy, its input gradient ``net.reverse(softmax(zᵢ) − onehot(yᵢ))``."""
    logits, tape = net.trace(x)
    v = logits.softmax(1) - F.one_hot(y, logits.shape[1]).to(logits.dtype)
    g = net.reverse(v, tape)
    return logits, g.flatten(1).pow(2).sum(1)


class GradNorm(Method):
    name, label = "gradnorm", "Grad. norm"
    summary = "gradnorm: CE + lambda*mean ||grad_x CE_i||^2 (double backprop through the explicit reverse)"

    @staticmethod
    def add_args(p) -> None:
        p.add_argument("--gradnorm-lambda", type=finite_float, default=None,
                       help="gradnorm: weight λ of the mean squared input-gradient norm (default: 1.0, untuned)")

    def loss(self, net, x, y, generator=None) -> StepOutput:
        lmbda = self.settings.get("gradnorm_lambda")
        logits, sq = input_gradient_penalty(net, x, y)
        ce = F.cross_entropy(logits, y)
        loss = ce + (1.0 if lmbda is None else float(lmbda)) * sq.mean()
        return StepOutput(loss, (logits.detach().argmax(1) == y).float().sum().item(), math.nan, ce.item())

    def uses(self, flag: str) -> bool:
        return flag == "gradnorm_lambda"
