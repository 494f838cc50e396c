"""Reference and defended models side by side: how much of ρ₂'s gain survives box-constrained attacks.

For each pair ``REFERENCE:DEFENDED`` (checkpoint paths, or the names of the shipped weights, see
``models.shipped``) both models are evaluated with ``evaluate.py``'s columns on the same images: accuracy and
DeepFool ρ₂ (unclipped), the box-constrained DDN and C&W medians, the FMN median and the saturation check. The
table gives each column and the ratio defended / reference, so ρ₂'s gain stands beside DDN's and C&W's.

Example::

    python train/compare.py --pairs mlp-reference:mlp-deepdefense lenet-reference:lenet-deepdefense \\
        --data-dir ../shared/data --output results/evaluation-mnist-pairs

Writes ``compare.json`` and ``compare.md`` (and one ``<name>.eval.json`` per model) into ``--output``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from revnet_app import models
from revnet_app.train import evaluate, utils

COLUMNS = [("acc", "Acc. (%)", True), ("rho2", "ρ₂ (DeepFool, unclipped)", False),
           ("ddn_median", "DDN median (box)", False), ("cw_median", "C&W median (box)", False),
           ("fmn_median", "FMN median (box)", False), ("zero_grad_fraction", "zero CE grad. (%)", True),
           ("margin_q50", "median logit margin", False), ("pgd_ce_box_acc", "CE-PGD acc. (%)", True),
           ("pgd_cw_box_acc", "margin-PGD acc. (%)", True)]
RATIOS = ("rho2", "ddn_median", "cw_median", "fmn_median")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=utils.HelpFormatter)
    p.add_argument("--pairs", nargs="+", required=True, metavar="REFERENCE:DEFENDED",
                   help="pairs of checkpoints (paths or shipped names: " + ", ".join(models.shipped_weights()) + ")")
    p.add_argument("--data-dir", default=None, help="as in evaluate.py")
    p.add_argument("--output", default="runs/compare", help="folder for the JSON and Markdown files")
    p.add_argument("--eval-samples", type=int, default=0, help="images for accuracy and ρ₂ (0: all test images)")
    p.add_argument("--samples", type=int, default=500,
                   help="images for DDN, C&W, FMN and the saturation check (the first N test images)")
    p.add_argument("--saturation-eps", type=float, default=None,
                   help="PGD radius of the saturation check (default: the reference's ρ₂ times the median ‖x‖, "
                        "the same for both models of a pair)")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                   help="further evaluate.py flags for every model, e.g. --ddn-steps 100 (put last)")
    return p


def resolve(entry: str) -> tuple[str, str]:
    """``(name, path)`` of a shipped name or a checkpoint path."""
    if entry in models.shipped_weights():
        return entry, str(models.shipped.WEIGHTS / models.shipped.manifest()[entry]["file"])
    if not Path(entry).is_file():
        raise SystemExit(f"error: {entry!r} is neither a checkpoint file nor a shipped name "
                         f"({', '.join(models.shipped_weights())}).")
    path = Path(entry)  # a run's final.pt is named after its run directory, so two runs do not share a name
    return (f"{path.parent.name}-{path.stem}" if path.stem == "final" else path.stem), entry


def run_one(path: str, name: str, args: argparse.Namespace, eps: float | None) -> dict[str, Any]:
    argv = [path, "--eval-samples", str(args.eval_samples), "--minimal-norm-samples", str(args.samples),
            "--saturation-samples", str(args.samples), "--fmn-samples", str(args.samples), "--no-progress",
            "--output", str(Path(args.output) / f"{name}.eval.json"),
            *(["--data-dir", args.data_dir] if args.data_dir else []),
            *(["--saturation-eps", repr(eps)] if eps else []), *args.extra]
    print(f"== {name}: python train/evaluate.py {' '.join(argv)}", flush=True)
    return evaluate.main(evaluate.get_args_parser().parse_args(argv))


def _cell(v: Any, percent: bool) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return "—" if v is None else str(v)
    return f"{100 * v:.2f}" if percent else f"{v:.4g}"


def markdown(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = ["# Reference vs defended: ρ₂ beside box-constrained minimal norms\n",
             "Command: `python train/compare.py " + " ".join(sys.argv[1:]) + "`\n",
             f"ρ₂ over {'all' if not args.eval_samples else args.eval_samples} test images (DeepFool, unclipped, "
             f"mean ‖Δx‖/‖x‖); DDN (foolbox), C&W L2 (foolbox, binary search) and FMN (foolbox, from DDN) medians of "
             f"‖Δx‖/‖x‖ inside the [0, 1] pixel box in ρ₂'s space (network input), first {args.samples} test "
             "images, the clean predictions as labels; the saturation check on the same images (PGD in the box at "
             "the reference's radius).\n",
             "| pair | model | " + " | ".join(h for _, h, _ in COLUMNS) + " |",
             "| --- " * (len(COLUMNS) + 2) + "|"]
    for r in rows:
        for role in ("reference", "defended"):
            m = r[role]
            cells = [_cell(m.get(k), percent) for k, _, percent in COLUMNS]
            lines.append(f"| {r['pair']} | {role}: {r[role + '_name']} | " + " | ".join(cells) + " |")
    lines += ["", "| pair | " + " | ".join(f"ratio {h}" for k, h, _ in COLUMNS if k in RATIOS) + " |",
              "| --- " * (len(RATIOS) + 1) + "|"]
    for r in rows:
        lines.append(f"| {r['pair']} | " + " | ".join(
            f"×{r['ratios'][k]:.2f}" if r["ratios"].get(k) else "—" for k in RATIOS) + " |")
    warnings = [m["saturation_warning"] for r in rows for m in (r["reference"], r["defended"])
                if isinstance(m.get("saturation_warning"), str)]
    return "\n".join(lines + [""] + [f"- {w}" for w in warnings]) + "\n"


def main(args: argparse.Namespace) -> list[dict[str, Any]]:
    out = Path(args.output)
    utils.prepare_dir(out, "--output")
    start, rows = time.perf_counter(), []
    for pair in args.pairs:
        if pair.count(":") != 1:
            raise SystemExit(f"error: --pairs takes REFERENCE:DEFENDED, got {pair!r}.")
        (ref_name, ref_path), (def_name, def_path) = (resolve(e) for e in pair.split(":"))
        ref = run_one(ref_path, ref_name, args, args.saturation_eps)
        eps = args.saturation_eps or ref.get("saturation_eps")  # both models of a pair at the same radius
        defended = run_one(def_path, def_name, args, eps)
        ratios = {k: defended[k] / ref[k] for k in RATIOS
                  if isinstance(ref.get(k), float) and isinstance(defended.get(k), float) and ref[k]}
        rows.append({"pair": pair, "reference_name": ref_name, "defended_name": def_name, "reference": ref,
                     "defended": defended, "ratios": ratios})
    utils.write_json(out / "compare.json", {"rows": rows, "config": vars(args), "command": sys.argv,
                                            "wall_seconds": time.perf_counter() - start, **utils.environment()})
    text = markdown(rows, args)
    utils.write_text_atomic(out / "compare.md", text)
    print(text, flush=True)
    return rows


if __name__ == "__main__":
    main(get_args_parser().parse_args())
