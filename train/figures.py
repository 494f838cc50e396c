"""Regenerate the paper's figures from stored run directories, without retraining.

Example (Figure 2: test accuracy and ρ₂ during fine-tuning, one row per model)::

    python train/figures.py figure2 --runs runs/table1-mnist --models mlp lenet --seed 0 --out results/figures

One subcommand per figure. ``figure2`` reads ``<runs>/<model>-<method>-s<seed>/metrics.json`` for every method
of ``finetune.py`` (missing runs are skipped with a note) and plots, per model, the test accuracy (%) and the
DeepFool ρ₂ after every fine-tuning epoch, one line per method. Epoch 0 is the reference model, evaluated on the
same test images as the epochs (``metrics.json["reference_epoch_eval"]``, or for older runs the
``reference_metrics`` of ``resume/checkpoint.pt``; without either a curve starts at epoch 1). Writes
``figure2-<dataset>.png`` and ``figure2-<dataset>.json`` (the plotted numbers) to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import utils  # noqa: E402
from methods import LABELS, METHODS  # noqa: E402

MODEL_NAMES = {"mlp": "MLP", "lenet": "LeNet", "alexnet": "AlexNet", "nin": "NIN"}
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def _add_figure2(sub: argparse._SubParsersAction, add_help: bool) -> None:
    p = sub.add_parser("figure2", help="test accuracy and rho2 vs fine-tuning epoch, one row per model",
                       description="Figure 2: test accuracy (%) and DeepFool rho2 after every fine-tuning epoch "
                                   "(epoch 0 = the reference), one row per model, one line per method.",
                       add_help=add_help, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--runs", required=True,
                   help="folder holding the run directories <model>-<method>-s<seed>/ (each with metrics.json)")
    p.add_argument("--models", nargs="+", default=["mlp", "lenet"], help="architectures, one figure row each")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS, metavar="METHOD",
                   help="fine-tuning methods to plot (runs that are missing are skipped)")
    p.add_argument("--seed", type=int, default=0, help="seed of the runs to plot (the s<seed> of the folder names)")
    p.add_argument("--dataset", default="mnist", help="dataset name, used in the file names and the title")
    p.add_argument("--out", default="results/figures", help="folder for figure2-<dataset>.png and .json")
    p.add_argument("--dpi", type=int, default=150, help="resolution of the PNG")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Regenerate the paper's figures from stored run directories.",
                                add_help=add_help, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = p.add_subparsers(dest="figure", required=True, metavar="FIGURE", help="which figure to draw")
    _add_figure2(sub, add_help)
    return p


# ---------------------------------------------------------------------------------------------------------- reading


def _read_metrics(run: Path) -> dict[str, Any]:
    path = run / "metrics.json"
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise SystemExit(f"error: cannot read {path}: {exc}") from None
    if not isinstance(metrics.get("history"), list):
        raise SystemExit(f"error: {path} has no 'history' list of per-epoch rows; is it a finetune.py run?")
    return metrics


def _reference_metrics(run: Path, metrics: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """The reference's metrics on the epoch-evaluation test images, and where they came from (or ``None``)."""
    if metrics.get("reference_epoch_eval"):
        return metrics["reference_epoch_eval"], "metrics.json:reference_epoch_eval"
    checkpoint = run / "resume" / "checkpoint.pt"
    if checkpoint.is_file():
        import torch

        try:
            state = torch.load(checkpoint, weights_only=True, map_location="cpu")
        except Exception as exc:  # a damaged or foreign file: plot without epoch 0 rather than fail
            print(f"note: cannot read {checkpoint} ({type(exc).__name__}: {exc}); {run.name} starts at epoch 1",
                  flush=True)
            return None, None
        ref = state.get("reference_metrics") if isinstance(state, dict) else None
        if ref:
            return ref, "resume/checkpoint.pt:reference_metrics"
    print(f"note: no reference metrics for {run.name} (neither metrics.json:reference_epoch_eval nor "
          f"resume/checkpoint.pt); its curve starts at epoch 1", flush=True)
    return None, None


def _num(v: Any) -> float:
    return float("nan") if v is None else float(v)


def _curve(run: Path) -> dict[str, Any]:
    """Epochs, accuracy (fraction), ρ₂ and test-set size of one run, the reference as epoch 0 where known."""
    metrics = _read_metrics(run)
    points = []
    ref, source = _reference_metrics(run, metrics)
    if ref is not None:
        points.append((0, ref))
    for row in metrics["history"]:
        try:
            points.append((int(row["epoch"]), row["test"]))
        except (KeyError, TypeError, ValueError):
            raise SystemExit(f"error: {run / 'metrics.json'}: a history row lacks 'epoch' or 'test': {row}") from None
    points.sort(key=lambda p: p[0])
    try:
        return {"epochs": [e for e, _ in points], "acc": [_num(m["acc"]) for _, m in points],
                "rho2": [_num(m["rho2"]) for _, m in points], "n": [m.get("n") for _, m in points],
                "reference": source, "run": str(run)}
    except KeyError as exc:
        raise SystemExit(f"error: {run / 'metrics.json'}: test metrics without {exc}") from None


def collect(runs: Path, models: list[str], methods: list[str], seed: int) -> tuple[dict, dict]:
    """``{model: {method: curve}}`` for the runs that exist, and ``{model: [missing methods]}``."""
    if not runs.is_dir():
        raise SystemExit(f"error: --runs {runs} is not a folder (expected run directories <model>-<method>-s<seed>/ "
                         f"written by finetune.py)")
    data: dict[str, dict[str, Any]] = {}
    missing: dict[str, list[str]] = {}
    for model in models:
        data[model], missing[model] = {}, []
        for method in methods:
            run = runs / f"{model}-{method}-s{seed}"
            if not (run / "metrics.json").is_file():
                print(f"note: skipping {model}/{method}: no {run / 'metrics.json'}", flush=True)
                missing[model].append(method)
                continue
            data[model][method] = _curve(run)
        if not data[model]:
            raise SystemExit(f"error: no runs for model {model!r} with seed {seed} in {runs} (looked for "
                             f"{model}-<method>-s{seed}/metrics.json with <method> in {', '.join(methods)})")
    return data, missing


# --------------------------------------------------------------------------------------------------------- plotting


def _n_text(curves: dict[str, Any]) -> str:
    ns = sorted({n for c in curves.values() for n in c["n"] if n is not None})
    if not ns:
        return "test images"
    return f"{ns[0]} test images" if len(ns) == 1 else f"{ns[0]}–{ns[-1]} test images"


def _save_png(fig: Any, path: Path, dpi: int) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png", dpi=dpi)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def plot_figure2(data: dict[str, dict[str, Any]], title: str, path: Path, dpi: int) -> None:
    try:
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        raise SystemExit("error: figures.py needs matplotlib: pip install matplotlib") from None

    rows = len(data)
    legend_in = 0.45
    fig = Figure(figsize=(10, 3.2 * rows + legend_in + 0.4))
    axes = fig.subplots(rows, 2, squeeze=False)
    shown: list[str] = []
    for r, (model, curves) in enumerate(data.items()):
        name = MODEL_NAMES.get(model, model)
        n_text = _n_text(curves)
        ax_acc, ax_rho = axes[r]
        for method, c in curves.items():
            i = METHODS.index(method)
            style = dict(color=f"C{i}", marker=MARKERS[i % len(MARKERS)], markersize=4, linewidth=1.3,
                         label=LABELS[method])
            ax_acc.plot(c["epochs"], [100.0 * a for a in c["acc"]], **style)
            ax_rho.plot(c["epochs"], c["rho2"], **style)
            if method not in shown:
                shown.append(method)
        ax_acc.set_title(f"{name}: test accuracy")
        ax_acc.set_ylabel(f"accuracy (%) on {n_text}")
        ax_rho.set_title(rf"{name}: $\rho_2$")
        ax_rho.set_ylabel(rf"$\rho_2$ on {n_text}")
        for ax in (ax_acc, ax_rho):
            ax.set_xlabel("epoch (0 = reference)")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(True, alpha=0.3)
    shown.sort(key=METHODS.index)
    handles = [Line2D([], [], color=f"C{METHODS.index(m)}", marker=MARKERS[METHODS.index(m) % len(MARKERS)],
                      markersize=4, linewidth=1.3) for m in shown]
    fig.legend(handles, [LABELS[m] for m in shown], loc="lower center", ncol=min(len(shown), 6), frameon=False)
    fig.suptitle(title)
    height = fig.get_figheight()
    fig.tight_layout(rect=(0, legend_in / height, 1, 1))
    _save_png(fig, path, dpi)


# ------------------------------------------------------------------------------------------------------------ main


def figure2(args: argparse.Namespace) -> dict[str, Any]:
    data, missing = collect(Path(args.runs), args.models, args.methods, args.seed)
    out = Path(args.out)
    png, json_path = out / f"figure2-{args.dataset}.png", out / f"figure2-{args.dataset}.json"
    title = f"{args.dataset.upper()}, seed {args.seed}: fine-tuning from the reference (epoch 0)"
    plot_figure2(data, title, png, args.dpi)
    utils.write_json(json_path, {
        "figure": "figure2", "dataset": args.dataset, "seed": args.seed, "runs": str(args.runs),
        "units": {"acc": "fraction of the test images (plotted ×100)", "rho2": "DeepFool rho2",
                  "n": "test images behind each point", "epochs": "0 = the reference model"},
        "models": data, "missing": missing, "png": str(png), "config": vars(args), "environment": utils.environment(),
    })
    for model, curves in data.items():
        for method, c in curves.items():
            last = c["epochs"][-1]
            acc, rho = c["acc"][-1], c["rho2"][-1]
            print(f"{model} {method}: epochs {c['epochs'][0]}..{last}, last: acc {100 * acc:.2f}%, rho2 {rho:.4g}",
                  flush=True)
    print(f"wrote {png} and {json_path}", flush=True)
    return {"png": str(png), "json": str(json_path), "data": data}


FIGURES = {"figure2": figure2}


def main(args: argparse.Namespace) -> dict[str, Any]:
    print("configuration:\n" + "\n".join(f"  {k}: {v}" for k, v in sorted(vars(args).items())), flush=True)
    return FIGURES[args.figure](args)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
