"""Table 1 as Markdown: the paper's columns, the library attacks', the box-constrained minimal norms and the
saturation check; the ratios of Ours to the reference under ρ₂, DDN and C&W; a warning line per saturated model.
"""

from __future__ import annotations

import statistics
from typing import Any, Optional

from revnet_app.train import paper
from revnet_app.train.methods import EXTRA_ROWS, LABELS, MODERN_ROWS

COLUMNS = ["acc", "rho2", "fgs_acc@0.2", "fgs_acc@0.5", "fgs_acc@1.0", "pgd_acc", "aa_acc", "fmn_median",
           "ddn_median", "cw_median", "zero_grad_fraction", "margin_q50", "pgd_cw_box_acc"]

NORM_COLUMNS = ("rho2", "fmn_median", "ddn_median", "cw_median", "margin_q50")  # not percentages

HEADERS = ["Acc. (%)", "ρ₂", "Acc. @0.2 ε_ref", "Acc. @0.5 ε_ref", "Acc. @1.0 ε_ref", "PGD-L2 acc. (%)",
           "AutoAttack-L2 acc. (%)", "FMN-L2 median ‖Δx‖/‖x‖", "DDN-L2 median (box)", "C&W-L2 median (box)",
           "zero CE gradients (%)", "median logit margin", "margin-PGD acc. (%) (box)"]

PAPER_OURS = "deepdefense-paper"  # the row of Ours at the paper's c and λ, where the defaults are tuned ones
BOX_OURS = "deepdefense-box"  # the row of Ours with the box-aware DeepFool (--deepfool-box; table1.py --box-ours)


def paper_row(dataset: str, model: str, method: str) -> Optional[dict[str, float]]:
    """The paper's numbers for a row; both Ours rows stand beside the paper's Ours."""
    return paper.paper_row(dataset, model, "deepdefense" if method == PAPER_OURS else method)


def fmt(values: list, percent: bool) -> str:
    words = [v for v in values if isinstance(v, str)]  # "not installed", "not run"
    if words:
        return words[0]
    scale = 100.0 if percent else 1.0
    vals = [scale * v for v in values]
    if any(v != v for v in vals):
        return "n/a"
    text = f"{statistics.mean(vals):.2f}" if percent else f"{statistics.mean(vals):.4f}"
    if len(vals) > 1:
        sd = statistics.stdev(vals)
        text += f" ± {sd:.2f}" if percent else f" ± {sd:.4f}"
    return text


SATURATION_MARKED = ("pgd_acc", "ddn_median")  # follow the CE gradient: flagged † on a saturated row
SATURATION_DROPPED = ("fmn_median",)  # starts where DDN stopped: dropped on a saturated row


def ratio(rows: dict, col: str, method: str = "deepdefense") -> Optional[float]:
    """Mean of ``method``'s ``col`` over the mean of the reference's (``None`` where either is not a number)."""
    try:
        num, den = statistics.mean(rows[method][col]), statistics.mean(rows["reference"][col])
    except (KeyError, TypeError, statistics.StatisticsError):
        return None
    return num / den if den and num == num and den == den else None


def ratio_line(t: dict) -> str:
    """``Ours / Reference: ρ₂ ×a, DDN ×b, C&W ×c, FMN ×d`` for a model's rows."""
    parts = [f"{label} ×{r:.2f}" for col, label in (("rho2", "ρ₂"), ("ddn_median", "DDN"), ("cw_median", "C&W"),
                                                    ("fmn_median", "FMN"))
             if (r := ratio(t["rows"], col)) is not None]
    ours = "Ours (tuned)" if PAPER_OURS in t["rows"] else "Ours"  # the row's own label in the table above
    return f"{ours} / Reference: " + (", ".join(parts) if parts else "no numbers") + "."


def cell(row: dict, col: str, saturated: bool) -> str:
    if saturated and col in SATURATION_DROPPED:
        return "dropped (saturated)"
    text = fmt(row[col], percent=col not in NORM_COLUMNS)
    return text + " †" if saturated and col in SATURATION_MARKED else text


def markdown(table: dict[str, Any], args) -> str:
    lines = [f"# Table 1 ({args.dataset})\n",
             f"Seeds {args.seeds}{' (mean ± sd)' if len(args.seeds) > 1 else ''}. ε_ref: the FGS step at which "
             "the Deep Defense model's accuracy drops to 50%; every row is attacked at 0.2/0.5/1.0·ε_ref. PGD: "
             f"L2, {args.pgd_steps} steps, ε = the reference's median DeepFool ‖Δx‖₂, first {args.pgd_samples} "
             f"test images. AutoAttack-L2 (pyautoattack, standard: APGD-CE, APGD-T, FAB-T, Square; seed "
             f"{args.attack_seed}) at the same ε on the first {args.autoattack_samples} test images; FMN-L2 "
             f"(foolbox, {args.fmn_steps} steps from a {args.fmn_init_steps}-step DDN start, its L2 projection repaired "
             "(train/library_attacks.py); the clean predictions as labels): median ‖Δx‖/‖x‖ on the first "
             f"{args.fmn_samples}. DDN-L2 ({args.ddn_steps} steps) and C&W-L2 ({args.cw_binary_steps} binary-search "
             f"steps × {args.cw_steps}, Adam step {args.cw_stepsize:g}), both foolbox, the clean predictions as labels: "
             f"median ‖Δx‖/‖x‖ (failures count as ∞) on the first {args.minimal_norm_samples}, in ρ₂'s space. "
             f"Saturation check on the first {args.saturation_samples}: the share of images whose cross-entropy input "
             "gradient is exactly 0 (float32), the median logit margin, and L2 PGD on the margin loss "
             f"({args.saturation_steps} steps, PGD's ε); a saturated row (more than 5% zero gradients, or margin-PGD "
             "more than 5 points below CE-PGD) has its FMN dropped and its PGD and DDN marked †. AutoAttack, FMN, "
             "DDN, C&W and the check stay in the [0, 1] pixel box; DeepFool, FGS and PGD here are unclipped. Rows "
             "marked * are not in the paper's Table 1."
             + ((" Paper: the numbers printed in the paper's Table 1 (train/paper.py, transcribed from ../shared/paper/ "
                 "and checked twice)" + (" — full MNIST, 0–255 inputs, so for comparison of orderings and gains only."
                                         if args.dataset == "mnist" else ", for comparison.")
                 ) if args.dataset in paper.TABLE1 else "")
             + "".join(f" Flags of the {LABELS.get(item.partition('=')[0], item.partition('=')[0])} rows: "
                       f"`{item.partition('=')[2]}`." for item in getattr(args, "method_flags", []))
             + "\n"]
    with_paper = args.dataset in paper.TABLE1  # no column of dashes for a dataset the paper did not use
    for model, t in table.items():
        lines.append(f"## {model} ({t['n_test']} test images; ε_ref = {fmt(t['eps_ref'], False)}, "
                     f"PGD ε = {fmt(t['pgd_eps'], False)})\n")
        lines.append("| method | " + " | ".join(HEADERS) + " | "
                     + ("paper: Acc. / ρ₂ / @0.2 / @0.5 / @1.0 | " if with_paper else "") + "wall time (s) |")
        lines.append("| --- " * (len(HEADERS) + (3 if with_paper else 2)) + "|")
        saturation = t.get("saturation", {})
        for method, row in t["rows"].items():
            name = ("Ours (tuned)" if method == "deepdefense" and PAPER_OURS in t["rows"] else LABELS[method]) + (
                " *" if method in EXTRA_ROWS or method in MODERN_ROWS or method == BOX_OURS else "")
            saturated = any(saturation.get(method, {}).get("saturated", []))
            cells = [cell(row, c, saturated) for c in COLUMNS]
            p = paper_row(args.dataset, model, method)
            paper_cell = (f"{p['acc']:.2f} / {p['rho2']:.3g} / {p['fgs_acc@0.2']:.2f} / {p['fgs_acc@0.5']:.2f} / "
                          f"{p['fgs_acc@1.0']:.2f}") if p else "—"
            wall = f"{statistics.mean(row['wall_seconds']):.0f}" if row.get("wall_seconds") else "—"
            if row.get("failed"):
                cells = [f"failed ({len(row['failed'])} of {len(args.seeds)} seeds; see its run directory)"] + [
                    "" for _ in COLUMNS[1:]]
            lines.append(f"| {name} | " + " | ".join(cells) + (f" | {paper_cell}" if with_paper else "") + f" | {wall} |")
        lines.append("")
        if "reference" in t["rows"] and "deepdefense" in t["rows"]:
            lines.append(ratio_line(t) + "\n")
        warnings = [w for m in t["rows"] for w in saturation.get(m, {}).get("warnings", [])]
        lines += [f"- {w}" for w in warnings] + ([""] if warnings else [])
    return "\n".join(lines)
