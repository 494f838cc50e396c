"""The float64 check that every step variant computes revnet's step: loss, weight gradients and DeepFool
iterations, before anything is timed."""

from __future__ import annotations

import copy
from typing import Any, Optional

import torch
from torch import Tensor, nn

from revnet_app.benchmarks.variants import VARIANTS, LossOutput, StepConfig, Variant

RTOL = 1e-10  # float64: explicit reverse vs double backprop agree to ~1e-14 of scale; a float32 cast fails
ATOL = 1e-12


class EquivalenceError(AssertionError):
    """A variant's loss, gradients or DeepFool iterations differ from revnet's: the benchmark would compare
    different computations."""


def _scaled_error(actual: Tensor, expected: Tensor) -> float:
    """max |a − e| / (atol + rtol·|e|) after dividing both by max(1, |e|max): <= 1 means equal."""
    scale = max(1.0, expected.detach().abs().max().item()) if expected.numel() else 1.0
    a, e = actual.detach().double() / scale, expected.detach().double() / scale
    if a.shape != e.shape:
        return float("inf")
    if not a.numel():
        return 0.0
    return ((a - e).abs() / (ATOL + RTOL * e.abs())).max().item()


def loss_and_gradients(variant: Variant, net: nn.Module, x: Tensor, y: Tensor, cfg: StepConfig):
    """``(LossOutput, {name: d loss / d weight})`` of one variant (no optimizer step). A weight the loss
    does not reach counts as a zero gradient."""
    out = variant.loss(net, x, y, cfg)
    weights = dict(net.named_parameters())
    grads = torch.autograd.grad(out.loss, list(weights.values()), allow_unused=True)
    return out, {
        name: g if g is not None else torch.zeros_like(p) for (name, p), g in zip(weights.items(), grads)
    }


def check_equivalence(
    net: nn.Module,
    x: Tensor,
    y: Tensor,
    cfg: StepConfig = StepConfig(),
    keys: Optional[list[str]] = None,
) -> dict[str, dict[str, Any]]:
    """Run each variant on its own float64 copy of the revnet network ``net`` and compare its loss, weight
    gradients and DeepFool iterations/success with variant 1 (``revnet``). Tolerance: ``|a − e| <= ATOL +
    RTOL·|e|`` after dividing both by ``max(1, |e|max)``. Raises :class:`EquivalenceError`; returns per
    variant the worst scaled error (<= 1 passes) of the loss and of the gradients."""
    keys = list(VARIANTS) if keys is None else list(keys)
    x64, y = x.detach().to(torch.float64), y.detach().long()
    base = copy.deepcopy(net).to(torch.float64).eval()
    report: dict[str, dict[str, Any]] = {}

    ref, ref_grads = loss_and_gradients(VARIANTS["revnet"], VARIANTS["revnet"].prepare(base), x64, y, cfg)
    for key in keys:
        if key == "revnet":
            continue
        variant = VARIANTS[key]
        out, grads = loss_and_gradients(variant, variant.prepare(base), x64, y, cfg)
        report[key] = _compare(key, out, grads, ref, ref_grads)
    report["revnet"] = {
        "loss_error": 0.0, "grad_error": 0.0, "mean_iterations": ref.iterations.double().mean().item(),
        "correct": int(ref.correct.sum()), "n": len(y),
    }
    return report


def _compare(name: str, out: LossOutput, grads: dict, ref: LossOutput, ref_grads: dict) -> dict[str, Any]:
    problems = []
    if not torch.equal(out.iterations, ref.iterations) or not torch.equal(out.success, ref.success):
        problems.append(
            f"DeepFool differs: iterations {out.iterations.tolist()} vs revnet {ref.iterations.tolist()}, "
            f"success {out.success.tolist()} vs {ref.success.tolist()}"
        )
    loss_err = _scaled_error(out.loss, ref.loss)
    if not loss_err <= 1:
        problems.append(f"loss {out.loss.item():.17g} vs revnet {ref.loss.item():.17g}")
    grad_err = 0.0
    if grads.keys() != ref_grads.keys():
        problems.append(f"parameter names {sorted(grads)} vs {sorted(ref_grads)}")
    else:
        for pname, g in grads.items():
            err = _scaled_error(g, ref_grads[pname])
            grad_err = max(grad_err, err)
            if not err <= 1:
                diff = (g - ref_grads[pname]).abs().max().item()
                problems.append(f"d loss / d {pname}: max |diff| {diff:.3g} (max |revnet| "
                                f"{ref_grads[pname].abs().max().item():.3g})")
    if problems:
        raise EquivalenceError(
            f"{name} does not compute revnet's step (float64, rtol={RTOL}, atol={ATOL} after scaling):\n  "
            + "\n  ".join(problems)
        )
    return {"loss_error": loss_err, "grad_error": grad_err, "mean_iterations": out.iterations.double().mean().item()}

