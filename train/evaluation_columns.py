"""The columns that keep a robustness evaluation honest, shared by ``evaluate.py`` and ``table1.py``.

* **Box-constrained minimal norms** (:mod:`~revnet_app.train.minimal_norm`): the median ‖Δx‖/‖x‖ that foolbox's
  DDN and Carlini-Wagner L2 (binary search) need inside the valid pixel box, in ρ₂'s space (the network input), so
  they stand next to DeepFool's unconstrained ρ₂.
* **The saturation check** (:mod:`~revnet_app.train.saturation`): the fraction of images whose cross-entropy input
  gradient is exactly zero (as the attacks compute it, float32), the logit-margin quantiles, and L2 PGD with the
  CE loss beside PGD with the margin (C&W) loss, all in the box. A model that fails it gets a warning line, and
  the columns that follow the CE gradient (PGD-L2, FMN-L2, which starts from DDN, and DDN) are marked unreliable
  on it: the tables drop FMN there and flag the others.
"""

from __future__ import annotations

import argparse
import math
from typing import Any, Optional

import torch
from torch import nn

from revnet_app.train import library_attacks, minimal_norm, saturation

KEYS = ("ddn_median", "cw_median", "ddn_success", "cw_success", "zero_grad_fraction", "margin_q10", "margin_q50",
        "margin_q90", "pgd_ce_box_acc", "pgd_cw_box_acc", "saturated", "saturation_warning")

MEANINGS = {
    "ddn_median": "median ‖Δx‖/‖x‖ of foolbox's DDN-L2 inside the pixel box (higher = more robust)",
    "cw_median": "median ‖Δx‖/‖x‖ of foolbox's Carlini-Wagner L2 (binary search) inside the pixel box",
    "ddn_success": "fraction of the images DDN pushed to another label",
    "cw_success": "fraction of the images C&W pushed to another label",
    "zero_grad_fraction": "fraction of the images whose cross-entropy input gradient is exactly 0 (float32)",
    "margin_q10": "10% quantile of the logit margin z_y − max_{j≠y} z_j",
    "margin_q50": "median logit margin",
    "margin_q90": "90% quantile of the logit margin",
    "pgd_ce_box_acc": "accuracy under L2 PGD on the cross-entropy, in the pixel box, at the saturation ε",
    "pgd_cw_box_acc": "accuracy under L2 PGD on the margin (C&W) loss, in the pixel box, at the saturation ε",
    "saturated": f"whether the saturation check fails ({saturation.RULE})",
    "saturation_warning": "the warning line of a saturated model (None: not saturated)",
    "saturation_eps": "L2 radius of the saturation check's PGD, network-input units",
    "minimal_norm_n": "images attacked with DDN and C&W",
    "saturation_n": "images in the saturation check",
}


def add_flags(p: argparse.ArgumentParser, *, samples: int, eps: str) -> None:
    """``--minimal-norm-samples``, ``--ddn-steps``, ``--cw-*``, ``--saturation-samples``, ``--saturation-steps``."""
    p.add_argument("--minimal-norm-samples", type=int, default=samples,
                   help="report the median ‖Δx‖/‖x‖ (ρ₂'s space) of foolbox's DDN and Carlini-Wagner L2 inside the "
                        "valid pixel box over the first N test images (the clean predictions as labels); 0: skip")
    p.add_argument("--ddn-steps", type=int, default=200, help="DDN steps")
    p.add_argument("--cw-binary-steps", type=int, default=6, help="C&W binary-search steps over its constant")
    p.add_argument("--cw-steps", type=int, default=200, help="C&W Adam steps per binary-search step")
    p.add_argument("--cw-stepsize", type=float, default=minimal_norm.CW_STEPSIZE,
                   help="C&W's Adam step in its tanh space (foolbox's default 0.01 cannot move MNIST's zero pixels "
                        "in 200 steps)")
    p.add_argument("--saturation-samples", type=int, default=samples,
                   help="run the saturation check on the first N test images: the fraction of exactly-zero "
                        "cross-entropy input gradients, the logit-margin quantiles, and CE-PGD beside margin-PGD "
                        f"(L2, in the pixel box) at {eps}; a model that fails it gets a warning line; 0: skip")
    p.add_argument("--saturation-steps", type=int, default=20, help="PGD steps of the saturation check")


def check_flags(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """One ``parser.error`` line for a negative count or a step count below 1."""
    if args.minimal_norm_samples < 0 or args.saturation_samples < 0:
        parser.error("--minimal-norm-samples and --saturation-samples must not be negative")
    if min(args.ddn_steps, args.cw_binary_steps, args.cw_steps, args.saturation_steps) < 1:
        parser.error("--ddn-steps, --cw-binary-steps, --cw-steps and --saturation-steps must be at least 1")
    if not (math.isfinite(args.cw_stepsize) and args.cw_stepsize > 0):
        parser.error(f"--cw-stepsize must be a positive finite number, got {args.cw_stepsize}")


def cache_key(args: argparse.Namespace, eps: Optional[float]) -> str:
    """What the columns depend on, for the per-run caches of ``table1.py``."""
    return (f"box|eps={eps!r}|mn={args.minimal_norm_samples}|ddn={args.ddn_steps}|cw={args.cw_binary_steps}x"
            f"{args.cw_steps}@{args.cw_stepsize!r}|sat={args.saturation_samples}x{args.saturation_steps}")


def columns(net: nn.Module, test_set, preprocess: dict, raw_max: float, args: argparse.Namespace, *,
            eps: Optional[float], name: str, progress: bool = True) -> dict[str, Any]:
    """The minimal-norm columns over the first ``--minimal-norm-samples`` images of ``test_set`` (an iterable of
    preprocessed ``(x (B, *in), y (B,))`` batches) and the saturation check over the first
    ``--saturation-samples`` at L2 radius ``eps`` (network-input units; ``None``: the median ‖x‖ times the
    model's DeepFool ρ₂ is the caller's to give). Keys: :data:`KEYS` for what was asked, ``"not installed"``
    where foolbox is missing."""
    net.eval()
    out: dict[str, Any] = {}
    if args.minimal_norm_samples:
        x, _ = library_attacks.first_images(test_set, args.minimal_norm_samples)
        found = minimal_norm.median_columns(net, x, preprocess, raw_max, ddn_steps=args.ddn_steps,
                                            cw_binary_steps=args.cw_binary_steps, cw_steps=args.cw_steps,
                                            cw_stepsize=args.cw_stepsize, progress=progress)
        cols = ("ddn_median", "cw_median", "ddn_success", "cw_success")
        out.update({c: found for c in cols} if isinstance(found, str) else {c: found[c] for c in cols})
        out["minimal_norm_n"] = len(x)
    if args.saturation_samples and eps:
        x, y = library_attacks.first_images(test_set, args.saturation_samples)
        result = saturation.check(net, x, y, eps=eps, steps=args.saturation_steps,
                                  box=saturation.pixel_box(preprocess, raw_max))
        out.update({k: result[k] for k in ("zero_grad_fraction", "margin_q10", "margin_q50", "margin_q90",
                                           "saturated")})
        out.update({"pgd_ce_box_acc": result["pgd_ce_acc"], "pgd_cw_box_acc": result["pgd_cw_acc"],
                    "saturation_eps": float(eps), "saturation_n": len(x),
                    "saturation_warning": saturation.warning_line(name, result)})
    return out


def default_eps(rho2: float, test_set, n: int) -> float:
    """A radius where a model is neither always nor never fooled: its DeepFool ρ₂ times the median ‖x‖ of the
    first ``n`` images (the median ‖Δx‖ DeepFool needs, roughly)."""
    x, _ = library_attacks.first_images(test_set, n)
    return float(rho2) * torch.linalg.vector_norm(x.flatten(1), dim=1).median().item()
