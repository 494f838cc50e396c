"""What every training method provides (``finetune.py --method``), and what one training step returns.

A method is a small object built from the run's settings (the parsed flags, plus ``clip`` and ``candidates``):

* ``add_args(parser)`` (a static method): the flags it owns;
* ``model_defaults`` / ``tuned``: its defaults per model (below the dataset's) and per dataset and model (above
  everything; see :func:`revnet_app.train.recipes.default_settings`);
* ``prepare(...)``: its training set, if not the clean one (Adv. Train I's DeepFool examples);
* ``loss(net, x, y, generator)`` → :class:`StepOutput`: the batch's loss, drawing any noise from ``generator``;
* ``after_step(net, generator)``: what follows the optimizer step (Parseval's retraction).

Adding a method means one file with a subclass and one entry in ``methods/__init__.py``'s table.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class StepOutput:
    loss: Tensor  # the batch's training loss: a scalar with a graph
    correct: float  # how many clean predictions of the batch are right
    ratio: float  # Σ ‖Δx‖/‖x‖ of the training DeepFool over the batch (the Deep Defense methods), else NaN
    ce: float  # the clean cross-entropy, the batch mean


class Method:
    name: ClassVar[str] = ""
    label: ClassVar[str] = ""  # its name in the paper's Table 1
    summary: ClassVar[str] = ""  # one clause for --method's help
    reports_ratio: ClassVar[bool] = False  # loss() reports Σ ‖Δx‖/‖x‖ (the epoch's train_ratio)
    needs_train_tensors: ClassVar[bool] = False  # prepare() makes its set from the training images as tensors
    model_defaults: ClassVar[dict[str, dict[str, float]]] = {}  # model -> flag -> default, below the dataset's
    tuned: ClassVar[dict[str, dict[str, dict[str, float]]]] = {}  # dataset -> model -> flag -> default, on top

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.settings = dict(settings)

    @staticmethod
    def add_args(parser: argparse.ArgumentParser) -> None:
        """Add the flags this method owns (none by default)."""

    def prepare(self, train_x: Tensor, train_y: Tensor, **context: Any) -> tuple[Tensor, Tensor, dict]:
        """With ``needs_train_tensors``: the training set ``(x, y, info)`` made from the training images (the run
        passes ``ref_net``, ``out`` and ``batch_size`` as context)."""
        return train_x, train_y, {}

    def loss(self, net: nn.Module, x: Tensor, y: Tensor, generator: Optional[torch.Generator] = None) -> StepOutput:
        raise NotImplementedError

    def after_step(self, net: nn.Module, generator: Optional[torch.Generator] = None) -> None:
        """Called after every optimizer step."""

    def uses(self, flag: str) -> bool:
        """Whether a flag (its ``dest``) matters to this method (for messages such as --reg-layers')."""
        return False


def cross_entropy_step(net: nn.Module, x: Tensor, y: Tensor) -> StepOutput:
    """The plain cross-entropy of one batch (clean training, Adv. Train I on its set, Parseval)."""
    logits = net(x)
    loss = F.cross_entropy(logits, y)
    return StepOutput(loss, (logits.detach().argmax(1) == y).float().sum().item(), math.nan, loss.item())
