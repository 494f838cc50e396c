"""Choose fine-tuning epochs and learning rate on a validation split held out of the training set.

Example::

    python train/sweep.py mlp --data-dir ../shared/data --lrs 5e-3 1e-2 2e-2 --epochs 20 --out runs/sweep-mlp

Each learning rate is one ``finetune.py`` run with ``--val-size`` images held out of the training set and
evaluated (accuracy, DeepFool ρ₂) after every epoch; the test set is not used for the choice. The chosen
setting is the learning rate with the highest validation ρ₂ whose validation accuracy is not below the
reference's, among each run's *last* epoch: only the last epoch follows exactly the recipe that a run of that
many epochs uses (the learning rate is halved in the last epoch); the other epochs are listed for information.
Finished runs are reused. Writes ``sweep.json`` and ``sweep.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import finetune  # noqa: E402
import utils  # noqa: E402


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Validation sweep over fine-tuning learning rates and epochs.",
                                add_help=add_help, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("model", help="mlp or lenet")
    p.add_argument("--method", default="deepdefense", help="fine-tuning method (see finetune.py --help)")
    p.add_argument("--lrs", type=float, nargs="+", required=True, help="learning rates to try")
    p.add_argument("--epochs", type=int, required=True, help="epochs of each run (every epoch is a candidate)")
    p.add_argument("--val-size", type=int, default=500, help="training images held out for validation")
    p.add_argument("--data-dir", default=None, help="as in finetune.py")
    p.add_argument("--seed", type=int, default=0, help="seed of every run")
    p.add_argument("--out", required=True, help="sweep directory (one run directory per learning rate inside)")
    p.add_argument("--cache-dir", default="runs/references", help="reference cache, as in finetune.py")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                   help="further finetune.py flags, passed through (put last)")
    return p


def main(args: argparse.Namespace) -> dict[str, Any]:
    print("configuration:\n" + "\n".join(f"  {k}: {v}" for k, v in sorted(vars(args).items())), flush=True)
    out = Path(args.out)
    candidates, runs = [], []
    for lr in args.lrs:
        run_dir = out / f"lr{lr:g}"
        if (run_dir / "metrics.json").is_file():
            result = utils.json.loads((run_dir / "metrics.json").read_text())
            print(f"reusing {run_dir}", flush=True)
        else:
            argv = [args.model, "--method", args.method, "--lr", str(lr), "--epochs", str(args.epochs),
                    "--val-size", str(args.val_size), "--seed", str(args.seed), "--out", str(run_dir),
                    "--cache-dir", args.cache_dir, "--eval-samples", "500", "--epoch-eval-samples", "100",
                    "--resume", "--no-progress", *(["--data-dir", args.data_dir] if args.data_dir else []), *args.extra]
            result = finetune.main(finetune.get_args_parser().parse_args(argv))
        ref_val = result["reference_val"]
        runs.append({"lr": lr, "reference_val": ref_val})
        for row in result["history"]:
            candidates.append({"lr": lr, "epoch": row["epoch"], "val_acc": row["val"]["acc"],
                               "val_rho2": row["val"]["rho2"], "ref_val_acc": ref_val["acc"],
                               "ref_val_rho2": ref_val["rho2"]})
    finals = [c for c in candidates if c["epoch"] == args.epochs]
    eligible = [c for c in finals if c["val_acc"] >= c["ref_val_acc"]]
    best = max(eligible or finals, key=lambda c: c["val_rho2"])
    table = utils.format_table(
        [{**c, "ratio": c["val_rho2"] / c["ref_val_rho2"], "chosen": "◀" if c is best else ""} for c in candidates],
        [("lr", "lr"), ("epoch", "epoch"), ("val_acc", "val acc."), ("val_rho2", "val ρ₂"), ("ratio", "ρ₂ ×"),
         ("chosen", "chosen")],
    )
    ref = runs[0]["reference_val"]
    text = (f"# Validation sweep: {args.model}, {args.method}\n\n{args.val_size} validation images held out of the "
            f"training set (seed {args.seed}); reference: val acc. {ref['acc']:.4f}, val ρ₂ {ref['rho2']:.4f}.\n"
            f"Chosen: lr {best['lr']:g}, {best['epoch']} epochs (highest val ρ₂ at the last epoch with val acc. ≥ the "
            f"reference's"
            f"{'' if eligible else '; none qualified, so highest val ρ₂ overall'}).\n\n{table}\n")
    utils.write_text_atomic(out / "sweep.md", text)
    utils.write_json(out / "sweep.json", {"candidates": candidates, "best": best, "config": vars(args)})
    print(text)
    return {"best": best, "candidates": candidates}


if __name__ == "__main__":
    main(get_args_parser().parse_args())
