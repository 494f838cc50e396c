"""``step.py``'s ratios of revnet over the other variants, and the issue targets they are held against."""

from __future__ import annotations

from typing import Any, Optional

from revnet_app.benchmarks.step_problems import GRAPH_VARIANT, MASKED, TARGET
from revnet_app.benchmarks.variants import StepConfig


def ratios_for(results: list[dict[str, Any]], model: str, batch: int,
               rounds: Optional[dict[str, Any]] = None) -> Optional[dict[str, Any]]:
    """revnet's time and memory over the fastest of variants 2-4 and over variant 5. Times: from the interleaved
    ``rounds`` when given (the median of the per-round ratios, with their spread), else the separate runs'
    medians; memory: the separate runs' peaks (one fresh subprocess each)."""
    rows = {r["variant"]: r for r in results if r["model"] == model and r["batch_size"] == batch and "error" not in r}
    if "revnet" not in rows:
        return None
    rev = rows["revnet"]
    out: dict[str, Any] = {"model": model, "batch_size": batch, "revnet_median_s": rev["median_s"],
                           "time_source": "interleaved rounds" if rounds else "separate runs"}

    def time_ratio(key: str) -> float:
        if rounds and key in rounds.get("revnet_over", {}):
            out.setdefault("round_spread", {})[key] = rounds["revnet_over"][key]
            return rounds["revnet_over"][key]["median"]
        return rev["median_s"] / rows[key]["median_s"]

    masked = [rows[k] for k in MASKED if k in rows]
    if masked:
        medians = {r["variant"]: (rounds["variants"][r["variant"]]["median_s"] if rounds else r["median_s"])
                   for r in masked}
        fastest = rows[min(medians, key=medians.get)]
        out.update({
            "fastest_autograd": fastest["variant"],
            "time_vs_fastest_autograd": time_ratio(fastest["variant"]),
            "memory_vs_fastest_autograd": rev["peak_mib"] / fastest["peak_mib"] if fastest["peak_mib"] > 0 else None,
        })
    if "autograd-shortcut" in rows:
        out["time_vs_shortcut"] = time_ratio("autograd-shortcut")
        sc = rows["autograd-shortcut"]["peak_mib"]
        out["memory_vs_shortcut"] = rev["peak_mib"] / sc if sc > 0 else None
    if GRAPH_VARIANT in rows:  # revnet-graph ÷ revnet (separate subprocesses: see --graph-vs-sequential)
        out["graph_vs_sequential"] = rows[GRAPH_VARIANT]["median_s"] / rev["median_s"]
    return out


def evaluate_target(ratios: list[dict[str, Any]], cfg: StepConfig, model: str = "lenet",
                    batch: int = 100) -> dict[str, Any]:
    target = {**TARGET, "model": model, "batch_size": batch}
    row = next((r for r in ratios if r["model"] == model and r["batch_size"] == batch), None)
    reasons = []
    if cfg.max_iter != TARGET["max_iter"]:
        reasons.append(f"--max-iter is {cfg.max_iter}, not {TARGET['max_iter']}")
    if not cfg.early_stop:
        reasons.append("--no-early-stop (the target is defined at reference weights with early stopping)")
    if row is None:
        reasons.append(f"{model} batch {batch} with variant 1 is not in this run")
    target["in_run"] = not reasons and row is not None
    target["not_applicable"] = reasons
    if row is not None:
        target["time_source"] = row.get("time_source")
        target["round_spread"] = row.get("round_spread", {})
        for key in ("time_vs_fastest_autograd", "memory_vs_fastest_autograd", "time_vs_shortcut"):
            value = row.get(key)
            target[key + "_measured"] = value
            target[key + "_met"] = None if value is None else bool(value <= TARGET[key])
        target["fastest_autograd"] = row.get("fastest_autograd")
    return target
