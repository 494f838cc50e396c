"""The training methods of ``finetune.py --method``: one :class:`~.base.Method` subclass per file, in a
name → class table (``METHOD_CLASSES``), with the names the paper's Table 1 uses.

``build(name, settings)`` makes the method a run trains with; ``add_all_args(parser)`` adds every method's flags.
"""

from __future__ import annotations

import argparse
from typing import Any, Mapping, Optional

from .advtrain_deepfool import AdvTrainDeepFool
from .advtrain_fgs import AdvTrainFGS
from .base import Method, StepOutput
from .clean import Clean
from .deepdefense import DeepDefense
from .deepdefense_fgs import DeepDefenseFGS
from .grad_norm import GradNorm
from .parseval import Parseval
from .pgd_at import PGDAT
from .trades import TRADES

METHOD_CLASSES: dict[str, type[Method]] = {cls.name: cls for cls in (
    DeepDefense, Clean, AdvTrainDeepFool, AdvTrainFGS, Parseval, DeepDefenseFGS)}
METHODS = tuple(METHOD_CLASSES)  # "deepdefense", "clean", "advtrain-deepfool", "advtrain-fgs", "parseval", "deepdefense+fgs"
# today's defenses beside the paper's (issue 32): not in Table 1's default rows
MODERN_CLASSES: dict[str, type[Method]] = {cls.name: cls for cls in (PGDAT, TRADES, GradNorm)}
METHOD_CLASSES.update(MODERN_CLASSES)
ALL_METHODS = tuple(METHOD_CLASSES)  # what finetune.py --method accepts

LABELS = {
    "reference": "Reference",
    **{name: cls.label for name, cls in METHOD_CLASSES.items()},
    "deepdefense-paper": "Ours (paper's c, λ)",  # table1.py's row where the defaults are tuned ones (MNIST)
    "deepdefense-box": "Ours (box-aware)",  # table1.py --box-ours: Deep Defense with --deepfool-box
}

# rows of Table 1 in the paper's order, then the rows the paper's Table 1 does not have
PAPER_ROWS = ("reference", "parseval", "advtrain-deepfool", "deepdefense")
EXTRA_ROWS = ("clean", "advtrain-fgs", "deepdefense+fgs")
MODERN_ROWS = tuple(MODERN_CLASSES)  # table1.py --methods pgd-at trades gradnorm: after the extra rows

# the order the flags appear in --help
_FLAG_OWNERS = (DeepDefense, AdvTrainFGS, Parseval, AdvTrainDeepFool, PGDAT, TRADES, GradNorm)


# every method setting and its value when neither the run nor the caller gives one
DEFAULT_SETTINGS: dict[str, Any] = {
    "lmbda": 15.0, "c": 25.0, "d": 5.0, "max_iter": 5, "overshoot": 0.02, "candidates": None, "reg_layers": None,
    "fgs_eps": 0.1, "alpha": 0.5, "clip": None, "parseval_beta": 1e-4, "parseval_fraction": 0.3,
    "advtrain_set": "perturbed", "advtrain_max_iter": 50,
    "pgd_eps": None, "pgd_steps": 40, "pgd_step_size": None, "no_random_start": False, "trades_beta": 6.0,
    "gradnorm_lambda": None, "box": None, "pixel_factor": None, "deepfool_box": False,
}


def build(name: str, settings: Optional[Mapping[str, Any]] = None, **overrides: Any) -> Method:
    """The method ``name`` with :data:`DEFAULT_SETTINGS`, then ``settings`` (a run's parsed flags, plus ``clip``
    and ``candidates``), then ``overrides``."""
    if name not in METHOD_CLASSES:
        raise ValueError(f"unknown method {name!r}; choose one of: {', '.join(ALL_METHODS)}")
    return METHOD_CLASSES[name]({**DEFAULT_SETTINGS, **(settings or {}), **overrides})


def add_all_args(parser: argparse.ArgumentParser) -> None:
    """Every method's own flags (each flag once)."""
    for cls in _FLAG_OWNERS:
        cls.add_args(parser)


def method_help() -> str:
    """``--method``'s help: one clause per method."""
    return "; ".join(cls.summary for cls in METHOD_CLASSES.values())


__all__ = ["ALL_METHODS", "DEFAULT_SETTINGS", "METHOD_CLASSES", "METHODS", "MODERN_ROWS", "LABELS", "PAPER_ROWS", "EXTRA_ROWS", "Method", "StepOutput", "build",
           "add_all_args", "method_help"]
