"""Compare two ``finetune.py`` run folders under the tolerance policy (``tests/tolerances.py``).

    python tests/compare_runs.py RUN_A RUN_B --policy roundoff   # torchrun (1 process) against one process
    python tests/compare_runs.py RUN_A RUN_B --policy kernels    # GPU against CPU: another device drifts like
                                                                 # another CPU (policy point 4)

Checks the largest weight difference of the two ``final.pt`` (``roundoff``: ≤ 1e-6, as two processes against
one in ``tests/app/test_distributed.py``; ``kernels``: reported only, a short float32 run drifts), then
``metrics.json``: the reference and fine-tuned rows, ε_ref and the first epoch's training accuracy and loss, within
``FLOAT32_ROUNDOFF`` or ``FLOAT32_KERNELS``. Prints one line per check, writes ``--output`` (Markdown) if given,
and exits 1 on the first metric out of tolerance (its message names it with both values).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

import tolerances  # tests/ is on sys.path: this file runs as a script from it
from revnet_app.train.utils import write_text_atomic

POLICIES = {"roundoff": (tolerances.FLOAT32_ROUNDOFF, 1e-6), "kernels": (tolerances.FLOAT32_KERNELS, None)}
ROW_KEYS = ("n", "acc", "fooling_rate", "mean_iterations", "rho2", "fgs_acc@0.2", "fgs_acc@0.5", "fgs_acc@1.0")


def load_run(run: Path) -> tuple[dict, dict]:
    """``(metrics, state_dict)`` of a finished run; a one-line SystemExit if it is not one."""
    for name in ("metrics.json", "final.pt"):
        if not (run / name).is_file():
            raise SystemExit(f"error: {run} has no {name}: not a finished finetune.py run (see its summary.md)")
    metrics = json.loads((run / "metrics.json").read_text())
    state = torch.load(run / "final.pt", map_location="cpu", weights_only=True)["state_dict"]
    return metrics, state


def picked(m: dict) -> dict:
    """The compared part of a ``metrics.json``."""
    out = {row: {k: m[row][k] for k in ROW_KEYS if k in m[row]} for row in ("reference", "finetuned")}
    out["eps_ref"] = m["eps_ref"]
    out["first_epoch"] = {k: m["history"][0][k] for k in ("train_acc", "train_loss")}
    return out


def compare(a: Path, b: Path, policy: str) -> list[str]:
    """The report lines; raises AssertionError naming the first metric out of tolerance."""
    tol, weight_tol = POLICIES[policy]
    (ma, wa), (mb, wb) = load_run(a), load_run(b)
    if wa.keys() != wb.keys():
        raise AssertionError(f"the two runs have different parameters: {sorted(wa.keys() ^ wb.keys())}")
    dw = max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa if wa[k].is_floating_point())
    lines = [f"- max |Δw| of the fine-tuned weights: {dw:.3g}"
             + (f" (tolerance {weight_tol:g})" if weight_tol is not None else " (reported; not held to a bound)")]
    if weight_tol is not None and dw > weight_tol:
        raise AssertionError(f"max |Δw| {dw:.3g} > {weight_tol:g}")
    pa, pb = picked(ma), picked(mb)
    tolerances.assert_metrics_close(pb, pa, tol)
    for row in ("reference", "finetuned"):
        lines.append(f"- {row}: acc {pa[row]['acc']:.4f} / {pb[row]['acc']:.4f}, ρ₂ {pa[row]['rho2']:.4f} / "
                     f"{pb[row]['rho2']:.4f}")
    lines.append(f"- ε_ref {pa['eps_ref']:.5f} / {pb['eps_ref']:.5f}; every metric within the {policy} tolerance "
                 f"({tol})")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("run_a", type=Path, help="the first finetune.py run folder (the baseline)")
    p.add_argument("run_b", type=Path, help="the second run folder")
    p.add_argument("--policy", choices=sorted(POLICIES), required=True,
                   help="roundoff: the same device, another number of processes; kernels: another device")
    p.add_argument("--output", type=Path, help="also write the report here (Markdown)")
    args = p.parse_args(argv)
    head = f"## {args.run_b.name} against {args.run_a.name} ({args.policy} policy)"
    try:
        lines, ok = compare(args.run_a, args.run_b, args.policy), True
    except AssertionError as exc:
        lines, ok = [f"- OUT OF TOLERANCE: {exc}"], False
    text = "\n".join([head, "", *lines, ""])
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(args.output, text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
