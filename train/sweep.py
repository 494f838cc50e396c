"""Choose a fine-tuning hyper-parameter (learning rate, FGS ε, Parseval β, ...) on a validation split.

Examples::

    python train/sweep.py mlp --data-dir ../shared/data --lrs 5e-3 1e-2 2e-2 --epochs 20 --out runs/sweep-mlp
    python train/sweep.py lenet --method advtrain-fgs --param fgs-eps --values 0.05 0.1 0.2 --epochs 10 \
        --data-dir ../shared/data --out runs/sweep-lenet-advtrain-fgs

    python train/sweep.py lenet --grid c=5,15,25 lmbda=15,25 --epochs 10 --data-dir ../shared/data \
        --out runs/sweep-lenet-deepdefense

Each value (or, with ``--grid``, each combination of values) is one ``finetune.py`` run (``--PARAM VALUE``) with ``--val-size`` images held out of the training set and
evaluated (accuracy, DeepFool ρ₂) after every epoch; the test set is not used for the choice. The chosen
setting is the value with the highest validation ρ₂ whose validation accuracy is not below the
reference's, among each run's *last* epoch: only the last epoch follows exactly the recipe that a run of that
many epochs uses (the learning rate is halved in the last epoch); the other epochs are listed for information.
Finished runs are reused. Writes ``sweep.json`` and ``sweep.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import finetune  # noqa: E402
import utils  # noqa: E402


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Validation sweep over fine-tuning learning rates and epochs.",
                                add_help=add_help, allow_abbrev=False, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("model", help="mlp or lenet")
    p.add_argument("--method", default="deepdefense", help="fine-tuning method (see finetune.py --help)")
    p.add_argument("--param", default="lr",
                   help="the finetune.py flag to sweep, without its dashes (lr, fgs-eps, parseval-beta, alpha, ...)")
    p.add_argument("--values", type=float, nargs="+", default=None, help="values of --param to try")
    p.add_argument("--grid", nargs="+", default=None, metavar="PARAM=V1,V2,...",
                   help="sweep every combination of several flags instead of one --param (e.g. c=5,15,25 lmbda=15,25)")
    p.add_argument("--lrs", type=float, nargs="+", default=None, help="shorthand for --param lr --values ...")
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
    settings = grid_settings(args)
    names = list(settings[0])
    out = Path(args.out)
    candidates, runs = [], []
    for setting in settings:
        label = "-".join(f"{name}{value:g}" for name, value in setting.items())
        run_dir = out / label
        if (run_dir / "metrics.json").is_file():
            result = utils.json.loads((run_dir / "metrics.json").read_text())
            print(f"reusing {run_dir}", flush=True)
        else:
            flags = [x for name, value in setting.items() for x in (f"--{name}", str(value))]
            argv = [args.model, "--method", args.method, *flags, "--epochs", str(args.epochs),
                    "--val-size", str(args.val_size), "--seed", str(args.seed), "--out", str(run_dir),
                    "--cache-dir", args.cache_dir, "--eval-samples", "500", "--epoch-eval-samples", "100",
                    "--resume", "--no-progress", *(["--data-dir", args.data_dir] if args.data_dir else []), *args.extra]
            result = finetune.main(finetune.get_args_parser().parse_args(argv))
        ref_val = result["reference_val"]
        runs.append({"setting": setting, "reference_val": ref_val})
        value = setting[names[0]] if len(names) == 1 else label
        for row in result["history"]:
            candidates.append({"value": value, **setting, "epoch": row["epoch"], "val_acc": row["val"]["acc"],
                               "val_rho2": row["val"]["rho2"], "ref_val_acc": ref_val["acc"],
                               "ref_val_rho2": ref_val["rho2"]})
    finals = [c for c in candidates if c["epoch"] == args.epochs]
    eligible = [c for c in finals if c["val_acc"] >= c["ref_val_acc"]]
    best = max(eligible or finals, key=lambda c: c["val_rho2"])
    table = utils.format_table(
        [{**c, "ratio": c["val_rho2"] / c["ref_val_rho2"], "chosen": "◀" if c is best else ""} for c in candidates],
        [*((name, name) for name in names), ("epoch", "epoch"), ("val_acc", "val acc."), ("val_rho2", "val ρ₂"),
         ("ratio", "ρ₂ ×"), ("chosen", "chosen")],
    )
    ref = runs[0]["reference_val"]
    param = ", ".join(names)
    chosen = ", ".join(f"{name} {best[name]:g}" for name in names)
    text = (f"# Validation sweep: {args.model}, {args.method}, {param}\n\n{args.val_size} validation images held out of the "
            f"training set (seed {args.seed}); reference: val acc. {ref['acc']:.4f}, val ρ₂ {ref['rho2']:.4f}.\n"
            f"Chosen: {chosen}, {best['epoch']} epochs (highest val ρ₂ at the last epoch with val acc. ≥ the "
            f"reference's"
            f"{'' if eligible else '; none qualified, so highest val ρ₂ overall'}).\n\n{table}\n")
    utils.write_text_atomic(out / "sweep.md", text)
    utils.write_json(out / "sweep.json", {"candidates": candidates, "best": best, "config": vars(args)})
    print(text)
    return {"best": best, "candidates": candidates}


def grid_settings(args: argparse.Namespace) -> list[dict[str, float]]:
    """The runs to make, each as ``{flag name: value}``, from ``--grid``, ``--param/--values`` or ``--lrs``."""
    given = [args.grid is not None, args.values is not None, args.lrs is not None]
    if sum(given) != 1 or (args.lrs is not None and args.param != "lr"):
        raise SystemExit("error: give exactly one of --grid, --values (with --param) or --lrs (shorthand for "
                         "--param lr --values).")
    if args.grid is None:
        values = args.values if args.values is not None else args.lrs
        if not values:
            raise SystemExit("error: give the values to try with --values (or learning rates with --lrs).")
        return [{args.param.lstrip("-"): value} for value in values]
    axes = {}
    for item in args.grid:
        name, _, values = item.partition("=")
        try:
            axes[name.lstrip("-")] = [float(v) for v in values.split(",")]
        except ValueError:
            raise SystemExit(f"error: --grid {item!r}: expected PARAM=V1,V2,... with numbers") from None
        if not name or not values:
            raise SystemExit(f"error: --grid {item!r}: expected PARAM=V1,V2,...")
    return [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]


if __name__ == "__main__":
    main(get_args_parser().parse_args())
