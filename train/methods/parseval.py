"""``parseval``: Parseval training (Cisse et al.): the cross-entropy, and after every optimizer step a retraction
of a random ``fraction`` of each weight's rows towards orthonormality, drawn from the loop's generator."""

from __future__ import annotations

from revnet import baselines

from ..cli import finite_float
from .base import Method, cross_entropy_step


class Parseval(Method):
    name, label = "parseval", "Par. Train"
    summary = ("parseval: Parseval training, CE + a retraction of 30%% of the weight rows towards orthonormality "
               "after every step")

    @staticmethod
    def add_args(p) -> None:
        p.add_argument("--parseval-beta", type=finite_float, default=None,
                       help="parseval: retraction step beta (Cisse et al.: 1e-4 for MNIST; the paper: 3e-4 on "
                            "CIFAR-10); default chosen on a validation split on MNIST (see README)")
        p.add_argument("--parseval-fraction", type=finite_float, default=0.3,
                       help="parseval: fraction of each weight's rows retracted after every step")

    def loss(self, net, x, y, generator=None):
        return cross_entropy_step(net, x, y)

    def after_step(self, net, generator=None) -> None:
        baselines.parseval_retraction_(baselines.parseval_weights(net), beta=self.settings["parseval_beta"],
                                       fraction=self.settings["parseval_fraction"], generator=generator)

    def uses(self, flag: str) -> bool:
        return flag in ("parseval_beta", "parseval_fraction")
