"""What a fine-tuning run prints and writes at its end: the legends, the before/after table (``summary.md``),
the check that every rank holds the same weights, and a diverged run marked as failed.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import torch

from revnet_app.train import distributed, engine, references, utils
from revnet_app.train.methods import LABELS


def epoch_legend(epoch_eps: float) -> str:
    """What the reference line and the per-epoch lines mean (printed once, before the first epoch)."""
    return (
        "  rho2 = mean ‖Δx‖/‖x‖ of DeepFool over the evaluated images (higher = more robust)\n"
        "  eps_ref = the smallest FGS step ε that misclassifies 50% of the evaluated images (higher = more robust)\n"
        f"  fgs@1.0 = test accuracy under FGS at 1.0·ε_ref, with the reference's ε_ref = {epoch_eps:.4g} fixed for "
        "every epoch so the epochs are comparable"
    )


def final_legend(eps: float, epoch_eps: float) -> str:
    """What the final table's ε_ref is (printed once, under the table): not the per-epoch one."""
    return (f"ε_ref in the table = {eps:.4g} is the fine-tuned model's own (the epochs above used the reference's, "
            f"{epoch_eps:.4g}); both rows are attacked at 0.2/0.5/1.0 of it, as in the paper's Table 1, so the "
            "fine-tuned model's acc. @1.0 ε_ref is ~50% by construction\n")


def summary_markdown(args, ref_final: dict, ft_final: dict, eps: float, wall: float, source: str) -> str:
    rows = []
    for name, m in [("Reference", ref_final), (f"Fine-tuned: {LABELS[args.method]} ({args.method})", ft_final)]:
        rows.append({"model": name, "acc": f"{100 * m['acc']:.2f}%", "rho2": f"{m['rho2']:.4f}",
                     **{f"f{f}": f"{100 * m[f'fgs_acc@{f}']:.2f}%" for f in engine.FRACTIONS}})
    cols = [("model", "model"), ("acc", "test acc."), ("rho2", "ρ₂")] + [
        (f"f{f}", f"acc. @{f} ε_ref") for f in engine.FRACTIONS]
    ratio_text = (f"×{ft_final['rho2'] / ref_final['rho2']:.3f}" if ref_final["rho2"]
                  else "undefined (the reference's ρ₂ is 0)")
    return (
        f"# {args.model}: {args.method} fine-tuning\n\n"
        f"- data: {source}; evaluated on {ft_final['n']} test images\n"
        f"- ε_ref = {eps:.5g} (the fine-tuned model's; FGS images clipped to the pixel range: {'yes' if args.clip else 'no'})\n"
        f"- ρ₂ ratio: {ratio_text}; wall time {wall:.0f} s\n\n"
        + utils.format_table(rows, cols) + "\n"
    )


def same_weights_on_every_rank(net: torch.nn.Module, world: distributed.World) -> str:
    """The fingerprint of the fine-tuned weights, checked to be the same on every rank (DDP keeps the replicas
    equal bit for bit; a difference would mean that a rank trained differently, and is an error)."""
    prints = world.gather(references.fingerprint(*(t.detach().cpu() for t in net.state_dict().values())))
    if len(set(prints)) > 1:
        raise SystemExit(f"error: the fine-tuned weights differ between the ranks (fingerprints {prints}); the "
                         "processes did not train the same model. Please report this with the run's config.json.")
    return prints[0]


WEAK_REFERENCE_ACC = 0.5  # below it, most training images are misclassified: Deep Defense's d-term dominates


def weak_reference_hint(args: argparse.Namespace, ref_metrics: dict, stats: dict | None = None) -> str:
    """Why a Deep Defense run from a weak reference diverges, and what to do (empty for other runs): each
    misclassified training image adds λ·exp(d·‖Δx‖/‖x‖) (up to λ·e³⁰), and a weak reference misclassifies most."""
    if args.method not in ("deepdefense", "deepdefense+fgs") or ref_metrics.get("acc", 1.0) >= WEAK_REFERENCE_ACC:
        return ""
    loss = f" (mean training loss {stats['train_loss']:.3g})" if stats and "train_loss" in stats else ""
    return (f"; the reference is weak: test accuracy {ref_metrics['acc']:.1%}, so most images are misclassified "
            f"and each adds the regularizer's term λ·exp(d·‖Δx‖/‖x‖) = {args.lmbda:g}·exp({args.d:g}·‖Δx‖/‖x‖), up "
            f"to {args.lmbda * math.exp(30):.2g}{loss}. Fine-tune a trained reference (more --ref-epochs, or "
            "--reference PATH) rather than an untrained one")


STRENGTH_FLAG = {"trades": "--trades-beta", "gradnorm": "--gradnorm-lambda", "pgd-at": "--pgd-eps",
                 "advtrain-fgs": "--fgs-eps", "parseval": "--parseval-beta"}
"""The flag that sets how hard a method pushes, named in the hint of a diverged run (Deep Defense: --lmbda)."""


def fail_run(out: Path, args: argparse.Namespace, history: list[dict[str, Any]], reason: str, resume_path: Path,
             world: distributed.World | None = None):
    """Mark a diverged run as failed (``summary.md``, ``failed.json``, ``log.jsonl``) and exit with status 1;
    the resume checkpoint stays at the last good epoch (or the reference, before the first). Every rank reaches
    this at the same step (the failure is agreed on by a collective); rank 0 writes and prints, and the others
    wait for it at a barrier before they exit, so torchrun does not stop rank 0 halfway."""
    world = world or distributed.World()
    last = resume_path if resume_path.exists() else "none (the reference; no epoch finished)"
    message = (f"error: the run diverged: {reason}. Marked FAILED in {out / 'summary.md'}; the last good state "
               f"is {last}. Lower --lr or {STRENGTH_FLAG.get(args.method, '--lmbda')} and start again in a new --out.")
    if world.main:
        utils.write_text_atomic(out / "summary.md", f"# {args.model} / {args.method}: FAILED\n\n- diverged: "
                                f"{reason}\n- last good state: {last}\n")
        utils.write_json(out / "failed.json", {"failed": reason, "history": history})  # metrics.json: finished
        utils.write_text_atomic(out / "log.jsonl",
                                "".join(utils.json.dumps(r, sort_keys=True) + "\n" for r in history))
        if world.distributed:
            print(message, file=sys.stderr, flush=True)
    world.barrier()
    raise SystemExit(1 if world.distributed else message)

