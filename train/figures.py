"""Regenerate the paper's figures from stored run directories, without retraining.

Examples (Figure 2: test accuracy and ρ₂ during fine-tuning, one row per model; Figures 3 and 4: ρ₂ against
test accuracy for the hyper-parameter studies of ``train/studies.py``)::

    python train/figures.py figure2 --runs runs/table1-mnist --models mlp lenet --seed 0 --out results/figures
    python train/figures.py figure2 --runs runs/table1-fashion-mnist --dataset fashion-mnist --out results/figures
    python train/figures.py figure3 --runs runs/studies --out results/figures
    python train/figures.py figure4 --runs runs/studies --out results/figures
    python train/figures.py all    # every figure above, from the stored results (see below)

One subcommand per figure. ``figure2`` reads ``<runs>/<model>-<method>-s<seed>/metrics.json`` for every method
of ``finetune.py`` (missing runs are skipped with a note; with several ``--runs`` folders the first that holds a
run wins) and plots, per model, the test accuracy (%) and the DeepFool ρ₂ after every fine-tuning epoch, one
line per method. Epoch 0 is the reference model, evaluated on the same test images as the epochs
(``metrics.json["reference_epoch_eval"]``, or for older runs the ``reference_metrics`` of
``resume/checkpoint.pt``; without either a curve starts at epoch 1). Writes
``figure2-<dataset>.png`` and ``figure2-<dataset>.json`` (the plotted numbers) to ``--out``.

``figure3`` reads ``<runs>/cl.json`` (``studies.py cl``) and plots, for every λ, DeepFool ρ₂ against the test
accuracy of the runs with c = ``--cs`` (each point labelled with its c), the reference model as a black star.
``figure4`` does the same for ``<runs>/layers.json`` (``studies.py layers``), one curve per regularized layer, and
records in its JSON which layer reaches the highest ρ₂ without losing accuracy against the reference (the paper:
fc1). They write ``figure3.png``/``figure3.json`` and ``figure4.png``/``figure4.json`` to ``--out``.

``all`` redraws every figure of the README without training: each ``results/figures/figure2-<dataset>.json``
from the run directories it names when they are all still there, else from the plotted numbers stored in it
(``figure2 --from-json``; run directories are not committed, so a fresh checkout takes this path), and
figures 3 and 4 from the committed study summaries in ``results/studies`` (``--studies`` for others).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


from revnet_app.train import utils  # noqa: E402
from revnet_app.train.methods import LABELS, METHODS  # noqa: E402
from revnet_app.train.plotting import MARKERS, MODEL_NAMES, _num, _save_png  # noqa: E402,F401
from revnet_app.train.study_figures import (  # noqa: E402,F401  (figures 3 and 4)
    STUDY_FIGURES, best_layer, plot_study, read_study, study_curves, study_figure)

def _add_figure2(sub: argparse._SubParsersAction, add_help: bool) -> None:
    p = sub.add_parser("figure2", help="test accuracy and rho2 vs fine-tuning epoch, one row per model",
                       description="Figure 2: test accuracy (%) and DeepFool rho2 after every fine-tuning epoch "
                                   "(epoch 0 = the reference), one row per model, one line per method.",
                       add_help=add_help, formatter_class=utils.HelpFormatter)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--runs", nargs="+", metavar="FOLDER",
                        help="folder(s) holding the run directories <model>-<method>-s<seed>/ (each with "
                             "metrics.json); with several folders, each run is taken from the first folder that has "
                             "it (e.g. the MLP and the LeNet table of one dataset written to different --out folders)")
    source.add_argument("--from-json", metavar="FILE",
                        help="redraw from the plotted numbers of an earlier figure2-<dataset>.json (e.g. the "
                             "committed results/figures/figure2-mnist.json) when its run directories are gone; the "
                             "dataset and seed come from the file, --models/--methods select from it")
    p.add_argument("--models", nargs="+", default=None,
                   help="architectures, one figure row each; unset: mlp lenet (with --from-json: the file's, in "
                        "its order)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS, metavar="METHOD",
                   help="fine-tuning methods to plot (runs that are missing are skipped)")
    p.add_argument("--seed", type=int, default=0, help="seed of the runs to plot (the s<seed> of the folder names)")
    p.add_argument("--dataset", default="mnist", help="dataset name, used in the file names and the title")
    p.add_argument("--out", default="results/figures", help="folder for figure2-<dataset>.png and .json")
    p.add_argument("--dpi", type=int, default=150, help="resolution of the PNG")


def _add_study_figure(sub: argparse._SubParsersAction, name: str, add_help: bool) -> None:
    study, short, long = STUDY_FIGURES[name]
    p = sub.add_parser(name, help=short, description=long, add_help=add_help,
                       formatter_class=utils.HelpFormatter)
    p.add_argument("--runs", default="runs/studies",
                   help=f"the --out folder of studies.py, holding {study}.json")
    p.add_argument("--out", default="results/figures", help=f"folder for {name}.png and {name}.json")
    p.add_argument("--dpi", type=int, default=150, help="resolution of the PNG")


def _add_all(sub: argparse._SubParsersAction, add_help: bool) -> None:
    p = sub.add_parser("all", help="every figure of the README from the stored results, no training",
                       description="Redraw every figure: each figure2-<dataset>.json in <results>/figures from its "
                                   "run directories when they are all still there, else from the plotted numbers "
                                   "stored in that JSON; figure3/figure4 from <studies>/cl.json and layers.json.",
                       add_help=add_help, formatter_class=utils.HelpFormatter)
    p.add_argument("--results", default="results",
                   help="folder holding figures/figure2-<dataset>.json (the committed results/ of the repo)")
    p.add_argument("--studies", default=None,
                   help="folder holding cl.json and layers.json of studies.py (e.g. runs/studies); unset: "
                        "<results>/studies, the committed summaries")
    p.add_argument("--out", default="results/figures", help="folder for every PNG and JSON")
    p.add_argument("--dpi", type=int, default=150, help="resolution of the PNGs")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Regenerate the paper's figures from stored run directories.",
                                add_help=add_help, formatter_class=utils.HelpFormatter)
    sub = p.add_subparsers(dest="figure", required=True, metavar="FIGURE", help="which figure to draw")
    _add_figure2(sub, add_help)
    for name in STUDY_FIGURES:
        _add_study_figure(sub, name, add_help)
    _add_all(sub, add_help)
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


def collect(folders: list[Path], models: list[str], methods: list[str], seed: int) -> tuple[dict, dict]:
    """``{model: {method: curve}}`` for the runs that exist, and ``{model: [missing methods]}``.

    Each run ``<model>-<method>-s<seed>`` is read from the first of ``folders`` that holds it (its curve records
    that run directory under ``"run"``).
    """
    for runs in folders:
        if not runs.is_dir():
            raise SystemExit(f"error: --runs {runs} is not a folder (expected run directories "
                             f"<model>-<method>-s<seed>/ written by finetune.py)")
    searched = " or ".join(str(f) for f in folders)
    data: dict[str, dict[str, Any]] = {}
    missing: dict[str, list[str]] = {}
    for model in models:
        data[model], missing[model] = {}, []
        for method in methods:
            name = f"{model}-{method}-s{seed}"
            run = next((f / name for f in folders if (f / name / "metrics.json").is_file()), None)
            if run is None:
                print(f"note: skipping {model}/{method}: no {name}/metrics.json in {searched}", flush=True)
                missing[model].append(method)
                continue
            data[model][method] = _curve(run)
        if not data[model]:
            raise SystemExit(f"error: no runs for model {model!r} with seed {seed} in {searched} (looked for "
                             f"{model}-<method>-s{seed}/metrics.json with <method> in {', '.join(methods)})")
    return data, missing


# --------------------------------------------------------------------------------------------------------- plotting


def _n_text(curves: dict[str, Any]) -> str:
    ns = sorted({n for c in curves.values() for n in c["n"] if n is not None})
    if not ns:
        return "test images"
    return f"{ns[0]} test images" if len(ns) == 1 else f"{ns[0]}–{ns[-1]} test images"


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


def read_figure2_json(path: Path) -> dict[str, Any]:
    """A ``figure2-<dataset>.json`` written by ``figure2``, checked for what redrawing it needs."""
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise SystemExit(f"error: cannot read {path}: {exc}") from None
    figure = stored.get("figure") if isinstance(stored, dict) else None
    models = stored.get("models") if isinstance(stored, dict) else None
    if figure != "figure2" or not isinstance(models, dict) or not models:
        raise SystemExit(f"error: {path} is not a figure2 JSON with plotted curves (its 'figure' is {figure!r}).")
    for model, curves in models.items():
        for method, c in curves.items():
            if not isinstance(c, dict) or not all(isinstance(c.get(k), list) for k in ("epochs", "acc", "rho2", "n")):
                raise SystemExit(f"error: {path}: the curve of {model}/{method} lacks epochs, acc, rho2 or n.")
    runs = stored.get("runs")
    stored["runs"] = [runs] if isinstance(runs, str) else list(runs or [])  # older files hold one folder as a str
    return stored


def stored_rows(stored: dict[str, Any]) -> list[str]:
    """The models of a stored figure2 JSON in the order its rows were drawn (its ``config.models``)."""
    config = stored.get("config") if isinstance(stored.get("config"), dict) else {}
    return [m for m in config.get("models") or [] if m in stored["models"]] or list(stored["models"])


def _from_json(args: argparse.Namespace) -> tuple[dict, dict, list[str]]:
    """Curves, missing methods and run folders of ``--from-json``, restricted to ``--models``/``--methods``."""
    path = Path(args.from_json)
    stored = read_figure2_json(path)
    args.dataset, args.seed = stored.get("dataset", args.dataset), stored.get("seed", args.seed)
    if args.models is None:
        args.models = stored_rows(stored)
    models = [m for m in args.models if m in stored["models"]]
    if not models:
        raise SystemExit(f"error: {path} has no curves for --models {' '.join(args.models)} (it has "
                         f"{', '.join(stored['models'])}).")
    data = {m: {k: stored["models"][m][k] for k in args.methods if k in stored["models"][m]} for m in models}
    missing = {m: [k for k in args.methods if k not in data[m]] for m in models}
    print(f"redrawing from the plotted numbers in {path} (runs were {', '.join(stored['runs']) or 'not recorded'})",
          flush=True)
    return data, missing, stored["runs"]


def figure2(args: argparse.Namespace) -> dict[str, Any]:
    if args.from_json:
        data, missing, runs = _from_json(args)
    else:
        args.models = args.models or ["mlp", "lenet"]
        data, missing = collect([Path(r) for r in args.runs], args.models, args.methods, args.seed)
        runs = [str(r) for r in args.runs]
    out = Path(args.out)
    png, json_path = out / f"figure2-{args.dataset}.png", out / f"figure2-{args.dataset}.json"
    title = f"{args.dataset.upper()}, seed {args.seed}: fine-tuning from the reference (epoch 0)"
    plot_figure2(data, title, png, args.dpi)
    utils.write_json(json_path, {
        "figure": "figure2", "dataset": args.dataset, "seed": args.seed, "runs": runs,
        "redrawn_from": args.from_json,
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


# ------------------------------------------------------------------------------------------ figures 3 and 4


def _runs_all_there(stored: dict[str, Any]) -> bool:
    """Whether every curve of a stored figure2 JSON still has its run directory (``metrics.json``)."""
    return all(c.get("run") and (Path(c["run"]) / "metrics.json").is_file()
               for curves in stored["models"].values() for c in curves.values())


def all_figures(args: argparse.Namespace) -> dict[str, Any]:
    """Every figure2 JSON under ``<results>/figures`` (from its runs, else from its numbers), then figures 3, 4."""
    common = {"out": args.out, "dpi": args.dpi}
    done: dict[str, Any] = {}
    stored_figure2 = sorted(Path(args.results, "figures").glob("figure2-*.json"))
    for path in stored_figure2:
        stored = read_figure2_json(path)
        sub = argparse.Namespace(figure="figure2", models=stored_rows(stored), methods=list(METHODS),
                                 seed=stored.get("seed", 0), dataset=stored.get("dataset", "mnist"),
                                 runs=None, from_json=None, **common)
        if _runs_all_there(stored):
            sub.runs = stored["runs"]
            print(f"== figure2 ({sub.dataset}) from the run directories in {', '.join(sub.runs)}", flush=True)
        else:
            sub.from_json = str(path)
            print(f"== figure2 ({sub.dataset}): run directories gone, from the numbers in {path}", flush=True)
        done[f"figure2-{sub.dataset}"] = figure2(sub)
    for name, (study, _, _) in STUDY_FIGURES.items():
        runs = Path(args.studies) if args.studies else Path(args.results, "studies")
        if not (runs / f"{study}.json").is_file():
            print(f"note: skipping {name}: no {study}.json in {runs}", flush=True)
            continue
        print(f"== {name} from {runs / f'{study}.json'}", flush=True)
        done[name] = study_figure(argparse.Namespace(figure=name, runs=str(runs), **common))
    if not done:
        raise SystemExit(f"error: nothing to draw: no {args.results}/figures/figure2-*.json and no study summaries "
                         "(run table1.py and studies.py first, or pass --results / --studies).")
    print(f"drew {len(done)} figures: {', '.join(done)}", flush=True)
    return done


FIGURES = {"figure2": figure2, "figure3": study_figure, "figure4": study_figure, "all": all_figures}


def main(args: argparse.Namespace) -> dict[str, Any]:
    print("configuration:\n" + "\n".join(f"  {k}: {v}" for k, v in sorted(vars(args).items())), flush=True)
    return FIGURES[args.figure](args)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
