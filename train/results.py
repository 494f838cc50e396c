"""The README's results table: reference, clean fine-tuning and Deep Defense, mean ± sd over seeds.

Example (the README's numbers)::

    python train/results.py --data-dir ../shared/data --models mlp lenet --seeds 0 1 2 --out runs/results

For every model and seed it runs ``finetune.py`` twice from the same reference (``--method clean`` and
``--method deepdefense``, each with the model's default recipe), reusing runs that already finished. All rows
of one seed are evaluated on the same test images at the *Deep Defense* model's ε_ref (as in the paper's
Table 1). Writes ``results.md`` and ``results.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import torch


from revnet_app.train.sources import mnist as mnist_source
from revnet_app.train import normalization
from revnet_app.train import engine  # noqa: E402
from revnet_app.train import finetune  # noqa: E402
from revnet_app.train import utils  # noqa: E402

from revnet_app import models  # noqa: E402

COLUMNS = ["acc", "rho2", "fgs_acc@0.2", "fgs_acc@0.5", "fgs_acc@1.0"]



def _ratio(value: float, reference: float) -> float:
    """``value / reference``, NaN (not a ZeroDivisionError) when the reference's ρ₂ is 0."""
    return value / reference if reference else float("nan")

def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Reference vs clean fine-tuning vs Deep Defense, over seeds.",
                                add_help=add_help, allow_abbrev=False, formatter_class=utils.HelpFormatter)
    p.add_argument("--models", nargs="+", default=["mlp", "lenet"], help="architectures")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (reference and fine-tuning)")
    p.add_argument("--data-dir", default=None, help="as in finetune.py")
    p.add_argument("--out", default="runs/results", help="folder for the runs and the table")
    p.add_argument("--cache-dir", default="runs/references", help="reference cache, as in finetune.py")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                   help="further finetune.py flags for every run (put last)")
    return p


def run_once(model: str, method: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    run_dir = Path(args.out) / f"{model}-{method}-s{seed}"
    if (run_dir / "metrics.json").is_file():
        print(f"reusing {run_dir}", flush=True)
        return utils.json.loads((run_dir / "metrics.json").read_text())
    argv = [model, "--method", method, "--seed", str(seed), "--out", str(run_dir), "--cache-dir", args.cache_dir,
            "--resume", "--no-progress", *(["--data-dir", args.data_dir] if args.data_dir else []), *args.extra]
    return finetune.main(finetune.get_args_parser().parse_args(argv))


def fgs_at(run_dir: Path, eps: float, args: argparse.Namespace, n: int) -> dict[str, float]:
    """FGS accuracies of ``run_dir/final.pt`` at fractions of another model's ε_ref, on the first n test images."""
    net, ckpt = models.load(run_dir / "final.pt")
    splits = mnist_source.load("mnist", args.data_dir)
    x = normalization.preprocess(splits.test_x[:n], ckpt["preprocess"])
    y = splits.test_y[:n]
    return {f"fgs_acc@{f}": engine.metrics.fgs_accuracy(net, x, y, f * eps) for f in engine.FRACTIONS}


def mean_sd(values: list[float], percent: bool) -> str:
    scale = 100.0 if percent else 1.0
    vals = [scale * v for v in values]
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    fmt = "{:.2f}" if percent else "{:.4f}"
    return f"{fmt.format(statistics.mean(vals))} ± {fmt.format(sd)}"


def main(args: argparse.Namespace) -> dict[str, Any]:
    print("configuration:\n" + "\n".join(f"  {k}: {v}" for k, v in sorted(vars(args).items())), flush=True)
    start = time.perf_counter()
    table: dict[str, Any] = {}
    for model in args.models:
        rows: dict[str, list[dict[str, float]]] = {"Reference": [], "Clean fine-tune": [], "Deep Defense": []}
        walls: dict[str, list[float]] = {"clean": [], "deepdefense": []}
        for seed in args.seeds:
            dd = run_once(model, "deepdefense", seed, args)
            clean = run_once(model, "clean", seed, args)
            eps = dd["eps_ref"]
            clean_at_dd_eps = {**clean["finetuned"],
                               **fgs_at(Path(args.out) / f"{model}-clean-s{seed}", eps, args, clean["finetuned"]["n"])}
            rows["Reference"].append(dd["reference"])
            rows["Clean fine-tune"].append(clean_at_dd_eps)
            rows["Deep Defense"].append(dd["finetuned"])
            walls["clean"].append(clean["wall_seconds"])
            walls["deepdefense"].append(dd["wall_seconds"])
        table[model] = {
            name: {col: [r[col] for r in rs] for col in COLUMNS} for name, rs in rows.items()
        }
        table[model]["rho2_ratio"] = [_ratio(d["rho2"], r["rho2"]) for d, r in zip(rows["Deep Defense"], rows["Reference"])]
        table[model]["clean_rho2_ratio"] = [
            _ratio(c["rho2"], r["rho2"]) for c, r in zip(rows["Clean fine-tune"], rows["Reference"])]
        table[model]["wall_seconds"] = walls
        table[model]["n_test"] = rows["Deep Defense"][0]["n"]
    lines = [f"Seeds {args.seeds}; mean ± sd; every row evaluated at the Deep Defense model's ε_ref of its seed.\n"]
    for model, t in table.items():
        lines.append(f"### {model} ({t['n_test']} test images)\n")
        lines.append("| model | test acc. (%) | ρ₂ | acc. @0.2 ε_ref (%) | acc. @0.5 ε_ref (%) | acc. @1.0 ε_ref (%) |")
        lines.append("| --- | --- | --- | --- | --- | --- |")
        for name in ["Reference", "Clean fine-tune", "Deep Defense"]:
            cells = [mean_sd(t[name][c], percent=c != "rho2") for c in COLUMNS]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
        lines.append(f"ρ₂ ratio to the reference: Deep Defense ×{mean_sd(t['rho2_ratio'], False)}, "
                     f"clean fine-tune ×{mean_sd(t['clean_rho2_ratio'], False)}. Wall time per run (reference "
                     f"training when not cached, fine-tuning, all evaluations): Deep Defense "
                     f"{statistics.mean(t['wall_seconds']['deepdefense']):.0f} s, clean "
                     f"{statistics.mean(t['wall_seconds']['clean']):.0f} s.\n")
    text = "\n".join(lines)
    out = Path(args.out)
    utils.write_text_atomic(out / "results.md", text)
    utils.write_json(out / "results.json", {"table": table, "config": vars(args), **utils.environment(),
                                            "wall_seconds": time.perf_counter() - start})
    print(text)
    return table


if __name__ == "__main__":
    main(get_args_parser().parse_args())
