"""Figures 3 and 4 of the paper from ``studies.py``'s summaries: ρ₂ against test accuracy, one curve per λ (``cl``)
or per regularized layer (``layers``), the reference as a star; ``figures.py figure3|figure4`` runs them."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from revnet_app.train import utils
from revnet_app.train.plotting import MARKERS, MODEL_NAMES, _num, _save_png

STUDY_FIGURES = {
    "figure3": ("cl", "rho2 vs test accuracy for every (lambda, c), one curve per lambda (studies.py cl)",
                "Figure 3: DeepFool rho2 against test accuracy (%) of Deep Defense runs with varying c and lambda "
                "(<runs>/cl.json from studies.py cl), one curve per lambda, each point labelled with its c; the "
                "reference model as a black star."),
    "figure4": ("layers", "rho2 vs test accuracy with one layer regularized, one curve per layer (studies.py layers)",
                "Figure 4: DeepFool rho2 against test accuracy (%) of Deep Defense runs that regularize one layer "
                "only (<runs>/layers.json from studies.py layers), one curve per layer, each point labelled with "
                "its c; the reference model as a black star. The JSON names the layer with the highest rho2 at "
                "an accuracy not below the reference's."),
}


def read_study(runs: Path, study: str) -> dict[str, Any]:
    """``<runs>/<study>.json`` as written by ``studies.py``, checked for what the figures use."""
    path = runs / f"{study}.json"
    if not path.is_file():
        raise SystemExit(f"error: no {path}; run `python train/studies.py {study} --out {runs}` first (or pass the "
                         "--runs folder it wrote to).")
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise SystemExit(f"error: cannot read {path}: {exc}") from None
    if not isinstance(summary, dict) or summary.get("study") != study:
        raise SystemExit(f"error: {path} is not a studies.py {study} summary (its 'study' is "
                         f"{summary.get('study') if isinstance(summary, dict) else None!r}).")
    points, ref = summary.get("points"), summary.get("reference")
    need = ["c", "acc", "rho2"] + (["layer"] if study == "layers" else ["lmbda"])
    if not points or not isinstance(points, list) or not all(isinstance(p, dict) and all(k in p for k in need)
                                                              for p in points):
        raise SystemExit(f"error: {path}: 'points' must be a non-empty list of points with {', '.join(need)}.")
    if not isinstance(ref, dict) or "acc" not in ref or "rho2" not in ref:
        raise SystemExit(f"error: {path}: no 'reference' with acc and rho2.")
    return summary


def study_curves(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One curve per λ (``cl``, ascending) or per layer (``layers``, in the study's order), points by c."""
    key = "layer" if summary["study"] == "layers" else "lmbda"
    groups: dict[Any, list[dict[str, Any]]] = {}
    for p in summary["points"]:
        groups.setdefault(p[key], []).append(p)
    order = list(groups) if key == "layer" else sorted(groups, key=float)
    curves = []
    for value in order:
        pts = sorted(groups[value], key=lambda p: float(p["c"]))
        head = ({"label": str(value), "layer": value, "child": pts[0].get("child")} if key == "layer"
                else {"label": f"λ = {float(value):g}", "lmbda": float(value)})
        curves.append({**head, "c": [float(p["c"]) for p in pts], "acc": [_num(p["acc"]) for p in pts],
                       "rho2": [_num(p["rho2"]) for p in pts], "n": [p.get("n") for p in pts],
                       "run": [p.get("run") for p in pts]})
    return curves


def best_layer(curves: list[dict[str, Any]], reference: dict[str, Any]) -> dict[str, Any]:
    """The point with the highest ρ₂ among those whose accuracy is not below the reference's (or among all
    points when none is), and the same per layer."""
    ref_acc = _num(reference["acc"])
    points = [{"layer": cv["layer"], "c": c, "acc": a, "rho2": r}
              for cv in curves for c, a, r in zip(cv["c"], cv["acc"], cv["rho2"]) if r == r]

    def top(pts: list[dict[str, Any]]) -> dict[str, Any] | None:
        return max(pts, key=lambda p: p["rho2"]) if pts else None

    keeping = [p for p in points if p["acc"] >= ref_acc]
    best = top(keeping) or top(points)
    criterion = ("highest rho2 among the points with test accuracy >= the reference's" if keeping else
                 "highest rho2 overall: no point reaches the reference's test accuracy")
    per_layer = {}
    for cv in curves:
        mine = [p for p in points if p["layer"] == cv["layer"]]
        mine_keeping = [p for p in mine if p["acc"] >= ref_acc]
        b = top(mine_keeping) or top(mine)
        per_layer[cv["layer"]] = None if b is None else {**b, "accuracy_kept": bool(mine_keeping)}
    return {"best": None if best is None else {**best, "criterion": criterion}, "best_per_layer": per_layer,
            "reference_acc": ref_acc}


def _study_title(figure: str, summary: dict[str, Any]) -> str:
    model = MODEL_NAMES.get(summary.get("model"), summary.get("model"))
    grid = summary.get("grid", {})
    n = summary.get("n_test")
    n_text = f"{n} test images" if isinstance(n, int) else "test images"
    epochs = summary.get("epochs")
    runs = f"{epochs} epoch{'' if epochs == 1 else 's'}, {n_text}" if epochs is not None else n_text
    d = f"d = {grid['d']:g}" if "d" in grid else "d fixed"
    if figure == "figure3":
        return f"Figure 3: {model}, {d}, varying c and λ ({runs})"
    lmbda = f"λ = {grid['lmbda']:g}, " if "lmbda" in grid else ""
    return f"Figure 4: {model}, {lmbda}{d}, one layer regularized, varying c ({runs})"


def plot_study(curves: list[dict[str, Any]], reference: dict[str, Any], title: str, legend_title: str,
               x_label: str, path: Path, dpi: int) -> None:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise SystemExit("error: figures.py needs matplotlib: pip install matplotlib") from None

    fig = Figure(figsize=(7.5, 5.5))
    ax = fig.subplots()
    for i, cv in enumerate(curves):
        color = f"C{i % 10}"
        xs = [100.0 * a for a in cv["acc"]]
        ax.plot(xs, cv["rho2"], color=color, marker=MARKERS[i % len(MARKERS)], markersize=5, linewidth=1.3,
                label=cv["label"])
        for c, x, y in zip(cv["c"], xs, cv["rho2"]):
            ax.annotate(f"{c:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7, color=color)
    rx, ry = 100.0 * _num(reference["acc"]), _num(reference["rho2"])
    ax.plot([rx], [ry], linestyle="none", marker="*", markersize=14, color="black", label="reference")
    ax.annotate("reference", (rx, ry), textcoords="offset points", xytext=(6, -10), fontsize=8, color="black")
    ax.margins(0.08)  # room for the c labels at the edges
    ax.set_xlabel(x_label)
    ax.set_ylabel(r"$\rho_2$ (DeepFool)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(title=legend_title, fontsize=8, title_fontsize=8)
    fig.tight_layout()
    _save_png(fig, path, dpi)


def study_figure(args: argparse.Namespace) -> dict[str, Any]:
    study = STUDY_FIGURES[args.figure][0]
    runs = Path(args.runs)
    summary = read_study(runs, study)
    curves = study_curves(summary)
    reference = {k: summary["reference"].get(k) for k in ("acc", "rho2", "n", "checkpoint")}
    title = _study_title(args.figure, summary)
    n = summary.get("n_test")
    x_label = f"test accuracy (%) on {n} test images" if isinstance(n, int) else "test accuracy (%)"
    legend_title = ("λ (point labels: c)" if study == "cl" else "regularized layer (point labels: c)")
    out = Path(args.out)
    png, json_path = out / f"{args.figure}.png", out / f"{args.figure}.json"
    plot_study(curves, reference, title, legend_title, x_label, png, args.dpi)
    result: dict[str, Any] = {
        "figure": args.figure, "study": study, "source": str(runs / f"{study}.json"), "title": title,
        "model": summary.get("model"), "grid": summary.get("grid"), "epochs": summary.get("epochs"),
        "n_test": n, "units": {"acc": "fraction of the test images (plotted ×100, x axis)",
                               "rho2": "DeepFool rho2 (y axis)", "c": "the label of each point"},
        "curves": curves, "reference": reference,
    }
    if study == "layers":
        result.update(best_layer(curves, reference))
        result["paper_best"] = "fc1"  # the paper's Figure 4: regularizing fc1 alone works best on LeNet
        if summary.get("model") == "lenet" and result["best"] is not None:
            result["agrees_with_paper"] = result["best"]["layer"] == "fc1"
    result.update({"png": str(png), "config": vars(args), "environment": utils.environment()})
    utils.write_json(json_path, result)
    for cv in curves:
        pts = ", ".join(f"c {c:g}: {100 * a:.2f}% / {r:.4g}" for c, a, r in zip(cv["c"], cv["acc"], cv["rho2"]))
        print(f"{cv['label']}: {pts}", flush=True)
    print(f"reference: {100 * _num(reference['acc']):.2f}% / {_num(reference['rho2']):.4g}", flush=True)
    if study == "layers" and result["best"] is not None:
        b = result["best"]
        print(f"best: {b['layer']} (c {b['c']:g}: {100 * b['acc']:.2f}%, rho2 {b['rho2']:.4g}; {b['criterion']})",
              flush=True)
    print(f"wrote {png} and {json_path}", flush=True)
    return {"png": str(png), "json": str(json_path), **{k: result[k] for k in result if k not in ("png", "config")}}
