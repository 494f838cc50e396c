"""``step.py``'s reports: the Markdown tables and sentences, the plot, the profile page and the file names."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Optional

import torch

from revnet_app.benchmarks.harness import fmt
from revnet_app.benchmarks.step_problems import AMP_TOLERANCE, GRAPH_VARIANT, RANDOM_MODELS, RANDOM_SPECS, TARGET
from revnet_app.benchmarks.variants import ALL_VARIANTS


def graph_sentence(r: dict[str, Any]) -> str:
    pr = r["pair_ratio"]
    met = "met" if r["target_met"] else "MISSED"
    where = "" if r.get("target_configuration", True) else " (not the target configuration)"
    return (f"{r['model']} batch {r['batch_size']}{where}: Graph {r['graph']['median_s'] * 1e3:.1f} ms vs Sequential "
            f"{r['sequential']['median_s'] * 1e3:.1f} ms (medians of {r['pairs']} interleaved pairs): ratio "
            f"{r['ratio_of_medians']:.3f}× (target ≤ {r['target']:.2f}×: {met}); per-pair ratios median "
            f"{pr['median']:.3f}, IQR {pr['q25']:.3f}–{pr['q75']:.3f}, min–max {pr['min']:.3f}–{pr['max']:.3f}"
            + ("" if r["q75_within_target"] else f" (upper quartile above {r['target']:.2f})"))


def graph_markdown(report: dict[str, Any]) -> str:
    cfg, m, step = report["config"], report["machine"], report["config"]["step"]
    lines = [
        "# revnet.Graph vs revnet.Sequential: one Deep Defense training step, interleaved", "",
        f"- machine: {m['platform']}, CPU {m['cpu']} ({m['cpu_count']} logical cores), device {m['device']} "
        f"({m['device_name']}), torch {m['torch']}, {m['threads']} threads, git {m['git_commit']}",
        "- networks: variant 1 on the `revnet.Sequential` (models.lenet()), variant 1g on `revnet.Graph(nn.Sequential)` "
        "built from its plain torch.nn copy (`benchmarks/variants.py` `to_torch`); independent copies of the same "
        "weights",
        f"- step: forward, DeepFool (max_iter {step['max_iter']}, overshoot {step['overshoot']}"
        + ("" if step["early_stop"] else ", no early stop") + f"), loss CE + {step['lmbd']:g}/N·Σexp(∓c·‖Δx‖/‖x‖) "
        f"(c {step['c']:g}, d {step['d']:g}), backward to all weights, SGD step (lr {cfg['lr']:g}, momentum 0.9); "
        f"dtype {cfg['dtype']}",
        *input_lines(report),
        f"- timing: {report['timing_method']}",
        "- why one process: both networks run within a fraction of a second of each other, under the same other "
        "load (a shared 2-core CPU here), allocator and thread pool; the ABBA order cancels drift and any "
        "first-in-pair effect. Peak memory is not measured in this mode (see step.md: one subprocess per variant)",
        f"- command: `{m['command']}` (wall time {report['wall_s']:.0f} s)", "",
        f"## Result (target: {report['target']})", "",
        "| model | batch | pairs | Sequential median ms (IQR) | Graph median ms (IQR) | ratio of medians | "
        "pair ratio median | pair ratio IQR | pair ratio min–max | median, S first / G first | ≤ 1.10 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in report["results"]:
        pr, s, g = r["pair_ratio"], r["sequential"], r["graph"]
        lines.append(
            f"| {r['model']} | {r['batch_size']} | {r['pairs']} | {s['median_s'] * 1e3:.1f} ({s['iqr_s'] * 1e3:.1f}) | "
            f"{g['median_s'] * 1e3:.1f} ({g['iqr_s'] * 1e3:.1f}) | {r['ratio_of_medians']:.3f} | {pr['median']:.3f} | "
            f"{pr['q25']:.3f}–{pr['q75']:.3f} | {pr['min']:.3f}–{pr['max']:.3f} | "
            f"{pr['by_order']['sequential_first']:.3f} / {pr['by_order']['graph_first']:.3f} | "
            f"{'met' if r['target_met'] else 'MISSED'} |")
    lines += [""] + [graph_sentence(r) + "." for r in report["results"]]
    lines += ["", "## The same step", "",
              "Float64 check before timing (`--check-batch` images, every 4th mislabelled): worst scaled error of "
              "revnet-graph's loss and weight gradients against revnet's (≤ 1 passes; DeepFool iterations equal).", "",
              "| model | loss | gradients | mean DeepFool iterations |", "| --- | ---: | ---: | ---: |"]
    for arch, checks in report["equivalence"].items():
        c = checks[GRAPH_VARIANT]
        lines.append(f"| {arch} | {c['loss_error']:.2g} | {c['grad_error']:.2g} | {c['mean_iterations']:.2f} |")
    lines += ["", f"At the timed batch ({cfg['dtype']}):", "",
              "| model | batch | loss Sequential | loss Graph | relative difference | iterations equal | "
              "DeepFool iters (mean / max) | correct |", "| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: |"]
    for r in report["results"]:
        same = r["same_step"]
        lines.append(f"| {r['model']} | {r['batch_size']} | {same['loss_sequential']:.7g} | {same['loss_graph']:.7g} | "
                     f"{same['loss_rel_diff']:.1e} | {'yes' if same['iterations_equal'] else 'NO'} | "
                     f"{same['mean_iterations']:.2f} / {same['max_iterations']} | {same['correct']}/{r['batch_size']} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------
# Reports.


def target_sentence(target: dict[str, Any]) -> str:
    where = f"{target['model']} batch {target['batch_size']}"
    if "time_vs_fastest_autograd_measured" not in target and "time_vs_shortcut_measured" not in target:
        return f"target ({where}, max_iter 5, reference weights): not measured in this run (" + "; ".join(
            target["not_applicable"]) + ")."
    spreads = target.get("round_spread", {})

    def part(key: str, label: str, variant: Optional[str] = None) -> str:
        value = target.get(key + "_measured")
        if value is None:
            return f"{label}: not measured"
        met = "met" if target[key + "_met"] else "MISSED"
        sp = spreads.get(variant) if variant else None
        spread_text = f", rounds IQR {sp['q25']:.2f}–{sp['q75']:.2f}, min–max {sp['min']:.2f}–{sp['max']:.2f}" \
            if sp else ""
        return f"{label} {value:.2f}×{spread_text} (target ≤ {TARGET[key]}×: {met})"

    head = "target" if target["in_run"] else "target-like ratios (" + "; ".join(target["not_applicable"]) + ")"
    fastest = target.get("fastest_autograd") or "–"
    source = f" [times: {target['time_source']}]" if target.get("time_source") else ""
    return (f"{head}, {where}{source}: "
            + part("time_vs_fastest_autograd", f"time vs fastest of 2-4 ({fastest})", target.get("fastest_autograd"))
            + "; " + part("memory_vs_fastest_autograd", "peak memory vs it") + "; "
            + part("time_vs_shortcut", "time vs variant 5", "autograd-shortcut") + ".")


def markdown(report: dict[str, Any]) -> str:
    cfg, m, step = report["config"], report["machine"], report["config"]["step"]
    archs = list(report["references"])
    random_only = all(a in RANDOM_MODELS for a in archs)
    weights = "random-init weights" if random_only else "reference weights"
    mode = "every sample runs all iterations (--no-early-stop)" if not step["early_stop"] else \
        f"{weights}, DeepFool stops early per sample"
    title = f"{', '.join(archs)}: " if random_only else ""
    lines = [
        f"# {title}Deep Defense training step: revnet vs autograd ({mode})", "",
        f"- machine: {m['platform']}, CPU {m['cpu']} ({m['cpu_count']} logical cores), device {m['device']} "
        f"({m['device_name']}), torch {m['torch']}, {m['threads']} threads, git {m['git_commit']}",
        f"- step: forward, DeepFool (max_iter {step['max_iter']}, overshoot {step['overshoot']}), loss "
        f"CE + {step['lmbd']:g}/N·Σexp(∓c·‖Δx‖/‖x‖) (c {step['c']:g}, d {step['d']:g}), backward to all weights, "
        f"SGD step (lr {cfg['lr']:g}, momentum 0.9); dtype {cfg['dtype']}"
        + (f", autocast {cfg['amp_dtype']}" if cfg["amp_dtype"] else ""),
        *input_lines(report),
        f"- timing: {report['timing_method']}; median and interquartile range (IQR) in ms",
        "- peak memory: above the baseline just before the first step (after a 1-image priming step), "
        + ("fresh subprocess per variant" if report["isolation"] == "subprocess" else
           "all variants in one process (allocator reuse: indicative only)")
        + (f"; {report['results'][0].get('memory_method', '')}" if report["results"] else ""),
        f"- command: `{m['command']}`" + (f" (wall time {report['wall_s']:.0f} s)" if "wall_s" in report else ""),
        "",
        "## Time per step", "",
        "| model | batch | variant | median ms | IQR ms | × revnet | peak MiB | DeepFool iters (mean / max) | "
        "correct | loss |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    variants = report["variants"]
    for r in report["results"]:
        label = f"{variants[r['variant']]['number']}. {r['variant']}"
        if "error" in r:
            lines.append(f"| {r['model']} | {r['batch_size']} | {label} | failed: "
                         f"{r['error'].splitlines()[-1][:80]} | | | | | | |")
            continue
        rev = next((x for x in report["results"] if x["model"] == r["model"] and x["batch_size"] == r["batch_size"]
                    and x["variant"] == "revnet" and "error" not in x), None)
        rel = r["median_s"] / rev["median_s"] if rev else None
        lines.append(
            f"| {r['model']} | {r['batch_size']} | {label} | {r['median_s'] * 1e3:.1f} | {r['iqr_s'] * 1e3:.1f} | "
            f"{fmt(rel)} | {r['peak_mib']:.1f} | {r['mean_iterations']:.2f} / {r['max_iterations']} | "
            f"{r['correct']}/{r['batch_size']} | {r['loss']:.4g} |")
    if report.get("interleaved"):
        lines += ["", "## Interleaved rounds (one process)", "",
                  "After the separate runs, all variants of a (model, batch size) run once per round in this process, "
                  "in alternating order (A B C …, … C B A), weights restored outside the timed region; the ratio is "
                  "taken per round, so machine drift cancels.", "",
                  "| model | batch | rounds | variant | median ms | IQR ms | revnet ÷ this: median (IQR; min–max) |",
                  "| --- | ---: | ---: | --- | ---: | ---: | ---: |"]
        for block in report["interleaved"]:
            for key, t in block["variants"].items():
                sp = block.get("revnet_over", {}).get(key)
                cell = f"{sp['median']:.3f} ({sp['q25']:.3f}–{sp['q75']:.3f}; {sp['min']:.3f}–{sp['max']:.3f})" \
                    if sp else "1"
                lines.append(f"| {block['model']} | {block['batch_size']} | {block['rounds']} | "
                             f"{ALL_VARIANTS[key].number}. {key} | {t['median_s'] * 1e3:.1f} | {t['iqr_s'] * 1e3:.1f} | "
                             f"{cell} |")
    compiled = [r for r in report["results"] if "compile" in r]
    if compiled:
        lines += ["", "## torch.compile (variant 1c)", "",
                  "Compile time is the time of the untimed first steps (the 1-sample priming step and the warm-up "
                  "steps, which compile the 1-sample and the dynamic-shape graphs), apart from the step time above; "
                  "recompiles: frames compiled during the timed steps.", "",
                  "| model | batch | first steps s (compile) | frames compiled before timing | recompiles while timed |",
                  "| --- | ---: | ---: | ---: | ---: |"]
        for r in compiled:
            c = r["compile"]
            lines.append(f"| {r['model']} | {r['batch_size']} | {c['first_steps_s']:.1f} | {c['frames_before_timing']} | "
                         f"{c['recompiles_during_timing']} |")
    targets = report.get("targets") or [report["target"]]
    lines += ["", "## Ratios (revnet ÷ the other)" if random_only else "## Against the targets", ""]
    if not random_only:
        lines += [f"- {target_sentence(t)}" for t in targets] + [""]
    lines += ["Targets (issue 17): LeNet and the MLP, batch 100, max_iter 5, reference weights: revnet ≤ 0.5× the "
              "time of the fastest of variants 2-4, ≤ 0.8× its peak memory, and ≤ 0.9× the time of variant 5. Times: "
              "the median of the per-round ratios of the interleaved rounds (one process; `--rounds`), memory: the "
              "separate runs (one fresh subprocess per variant). Ratios for every configuration of this run (revnet ÷ "
              "the other):", "",
              "| model | batch | fastest of 2-4 | time ratio (≤ 0.5) | memory ratio (≤ 0.8) | time vs 5 (≤ 0.9) | "
              "memory vs 5 | time 1g ÷ 1 |", "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in report["ratios"]:
        lines.append(f"| {r['model']} | {r['batch_size']} | {r.get('fastest_autograd', '–')} | "
                     f"{fmt(r.get('time_vs_fastest_autograd'))} | {fmt(r.get('memory_vs_fastest_autograd'))} | "
                     f"{fmt(r.get('time_vs_shortcut'))} | {fmt(r.get('memory_vs_shortcut'))} | "
                     f"{fmt(r.get('graph_vs_sequential'))} |")
    if any("graph_vs_sequential" in r for r in report["ratios"]):
        lines += ["", "Time 1g ÷ 1 compares medians of separate subprocesses; the interleaved measurement with "
                      "its spread is `--graph-vs-sequential` (graph-vs-sequential.md)."]
    amp_rows = [r for r in report["results"] if "amp_vs_fp32" in r]
    if amp_rows:
        lines += ["", f"## Mixed precision ({cfg['amp_dtype']}) against {cfg['dtype']}", "",
                  f"Beyond tolerance = any sample whose DeepFool iterations or success change, or a loss change "
                  f"above {AMP_TOLERANCE:g} (relative).", "",
                  "| model | batch | variant | loss rel. change | grad rel. change | iterations differ | "
                  "success differs | beyond tolerance |", "| --- | ---: | --- | ---: | ---: | ---: | ---: | --- |"]
        for r in amp_rows:
            a = r["amp_vs_fp32"]
            lines.append(f"| {r['model']} | {r['batch_size']} | {r['variant']} | {a['loss_rel_change']:.2e} | "
                         f"{a['grad_rel_change']:.2e} | {a['iterations_differ_frac']:.0%} | "
                         f"{a['success_differ_frac']:.0%} | {'yes' if a['beyond_tolerance'] else 'no'} |")
    lines += ["", "## Equivalence (float64, before timing)", "",
              "Each variant's loss and weight gradients against revnet's: worst |a − e| / (1e-12 + 1e-10·|e|) after "
              "dividing both by max(1, max|e|); ≤ 1 passes. DeepFool iterations and success are equal too.", "",
              "| model | variant | loss | gradients | mean DeepFool iterations |", "| --- | --- | ---: | ---: | ---: |"]
    for arch, checks in report["equivalence"].items():
        for key, c in checks.items():
            lines.append(f"| {arch} | {key} | {c['loss_error']:.2g} | {c['grad_error']:.2g} | "
                         f"{c['mean_iterations']:.2f} |")
    lines += ["", "## Variants", ""]
    lines += [f"{v['number']}. **{k}**: {v['summary']}." for k, v in variants.items()]
    lines += ["", "Variants 2-4 run the whole batch every DeepFool iteration until every sample has stopped "
                  "(finished samples masked); variants 1, 1g and 5 drop finished samples from the batch."]
    if any(a in RANDOM_MODELS for a in archs):
        lines += ["", "resnet18-32/-224: variant 1 is `revnet.convert(torchvision.models.resnet18(num_classes=10))`, "
                      "a `revnet.Graph`; convnet-cifar: `models.cifar.convnet()`, a `revnet.Sequential` (variant 1g "
                      "is not run for these); variants 2-5 run on the plain torch.nn model."]
    if not step["early_stop"]:
        lines += ["", "**--no-early-stop**: every variant runs all max_iter iterations for every sample (samples "
                      "keep stepping after their label flipped); variant 1 through "
                      "`deep_defense_loss(early_stop=False)`."]
    return "\n".join(lines) + "\n"


def input_lines(report: dict[str, Any]) -> list[str]:
    """The Markdown lines describing the inputs and weights of each model of a run."""
    refs = report["references"]
    lines = []
    mnist = [a for a in refs if a not in RANDOM_MODELS]
    if mnist:
        lines.append("- inputs (" + ", ".join(mnist) + "): the first N images of the embedded MNIST training split, "
                     "shape (N, 1, 28, 28), true labels; weights: " + "; ".join(f"{a} {refs[a]['origin']}"
                                                                               for a in mnist))
    for arch in (a for a in refs if a in RANDOM_SPECS):
        seed = report["config"].get("seed", 0)
        shape = ", ".join(str(d) for d in RANDOM_SPECS[arch][0])
        lines.append(f"- inputs ({arch}): **random data** (no CIFAR-10/ImageNet offline): N(0, 1) images of shape (N, "
                     f"{shape}) from torch.Generator().manual_seed({seed}); labels = the network's clean predictions "
                     "with every 4th shifted by one class (≈3/4 untargeted, 1/4 targeted DeepFool); weights: "
                     + refs[arch]["origin"])
    return lines


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    archs = list(dict.fromkeys(r["model"] for r in report["results"]))
    fig, axes = plt.subplots(1, max(1, len(archs)), figsize=(5.5 * max(1, len(archs)), 4.2), squeeze=False)
    for ax, arch in zip(axes[0], archs):
        for key, v in report["variants"].items():
            rows = sorted((r for r in report["results"] if r["model"] == arch and r["variant"] == key
                           and "error" not in r), key=lambda r: r["batch_size"])
            if not rows:
                continue
            b = [r["batch_size"] for r in rows]
            med = [r["median_s"] * 1e3 for r in rows]
            err = [[(r["median_s"] - r["q25_s"]) * 1e3 for r in rows],
                   [(r["q75_s"] - r["median_s"]) * 1e3 for r in rows]]
            ax.errorbar(b, med, yerr=err, marker="o", capsize=3, label=f"{v['number']}. {key}",
                        linewidth=2.5 if key == "revnet" else 1.2)
        ax.set_xscale("log")
        ax.set_yscale("log")
        sizes = sorted({r["batch_size"] for r in report["results"]})
        ax.set_xticks(sizes, [str(b) for b in sizes])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xlabel("batch size")
        ax.set_ylabel("time per step (ms, median; bars: IQR)")
        weights = "random init, random data" if arch in RANDOM_MODELS else "reference weights"
        ax.set_title(f"{arch}, max_iter {report['config']['step']['max_iter']}, "
                     + (weights if report["config"]["step"]["early_stop"] else "no early stop"))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Deep Defense step on {report['machine']['device_name']} ({report['machine']['threads']} threads)",
                 fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def profile_markdown(results: list[dict[str, Any]]) -> str:
    lines = ["# torch.profiler: one step per configuration (top operators by self time)", ""]
    for r in results:
        if "profile" in r:
            lines += [f"## {r['model']}, batch {r['batch_size']}, {r['variant']}", "", "```", r["profile"], "```", ""]
    return "\n".join(lines)


def run_name(args: argparse.Namespace, device: torch.device) -> str:
    """The results' file name (without the suffix) of a variant-table run."""
    extra = "".join(f"-{m}" for m in args.models if m in RANDOM_MODELS)  # never overwrites the MNIST step.*
    return "step" + extra + ("-cuda" if device.type == "cuda" else "") + ("-amp" if args.amp else "") + (
        "-no-early-stop" if args.no_early_stop else "") + (
        f"-class-chunk{args.class_chunk}" if args.class_chunk else "")


def graph_run_name(args: argparse.Namespace, device: torch.device) -> str:
    """The results' file name (without the suffix) of a ``--graph-vs-sequential`` run."""
    return "graph-vs-sequential" + ("-cuda" if device.type == "cuda" else "") + (
        "-no-early-stop" if args.no_early_stop else "") + (
        f"-class-chunk{args.class_chunk}" if args.class_chunk else "")
