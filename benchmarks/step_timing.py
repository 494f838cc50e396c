"""``step.py``'s timed measurements: one (model, batch size, variant) per worker (a fresh subprocess by default)
with its peak memory, all variants in interleaved rounds, and variant 1 against 1g in ABBA pairs."""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch

from revnet_app.benchmarks.harness import (
    MiB, PeakMemory, amp_context, profile_step, quartiles, release_free_memory, summarize, synchronize)
from revnet_app.benchmarks.rounds import interleaved, round_ratios
from revnet_app.benchmarks.step_problems import AMP_TOLERANCE, GRAPH_TARGET, GRAPH_VARIANT, model_batch
from revnet_app.benchmarks.variants import ALL_VARIANTS, COMPILED, VARIANTS, StepConfig, compile_frames

RESULT_MARKER = "@@BENCHMARK-RESULT@@ "


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Time and measure one (model, batch size, variant); ``spec`` holds plain values (see ``step.main``)."""
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    dtype = getattr(torch, spec["dtype"])
    cfg = StepConfig(**spec["cfg"])
    VARIANTS["autograd-shortcut"].choose_engine = spec["shortcut_engine"]
    base_net, x, y = model_batch(spec["model"], spec["checkpoint"], spec["batch_size"], device, dtype,
                                 spec.get("seed", 0))
    run = prepared_runs(base_net, [spec["variant"]], spec["lr"])[spec["variant"]]
    del base_net
    variant, net, optimizer, _ = run
    autocast = amp_context(device, spec.get("amp_dtype"))
    scaler = torch.amp.GradScaler("cuda") if autocast is not None and spec["amp_dtype"] == "float16" else None

    def restore() -> None:
        restore_weights(run)

    last: list[Any] = []  # the LossOutput of the latest full-batch step (all start from the same weights)

    def one_step_on(xb, yb) -> Any:
        return variant.step(net, optimizer, xb, yb, cfg, autocast=autocast, scaler=scaler, details=True)

    def one_step() -> None:
        last[:] = [one_step_on(x, y)]

    # prime the libraries (thread pools, oneDNN/cuDNN primitives, autograd workers) with one 1-image step, so
    # their one-time allocations are not counted as the step's memory; then give freed heap back to the OS
    first = time.perf_counter()
    restore()
    one_step_on(x[:1], y[:1])
    first_step_s = time.perf_counter() - first  # with --compile: the 1-sample graph's compile
    release_free_memory()
    memory = PeakMemory(device)
    memory.start()
    first = time.perf_counter()
    for _ in range(spec["warmup"]):
        restore()
        one_step()
    warmup_s = time.perf_counter() - first  # with --compile: the full batch's (dynamic) compile
    frames_before = compile_frames()
    times: list[float] = []
    budget_start = time.perf_counter()
    while len(times) < spec["repeats"]:
        restore()
        synchronize(device)
        t0 = time.perf_counter()
        one_step()
        synchronize(device)
        times.append(time.perf_counter() - t0)
        if len(times) >= spec.get("min_repeats", 3) and time.perf_counter() - budget_start > spec["time_budget"]:
            break
    peak = memory.peak_bytes()

    out = last[0]  # what the (last timed) step computed, at the benchmark's weights
    result = {
        **{k: spec[k] for k in ("model", "batch_size", "variant")},
        **summarize(times),
        "input_shape": list(x.shape),
        "dtype": str(x.dtype).replace("torch.", ""),
        "peak_mib": peak / MiB,
        "memory_method": memory.method,
        "loss": out.loss.item(),
        "mean_iterations": out.iterations.double().mean().item(),
        "max_iterations": int(out.iterations.max()),
        "correct": int(out.correct.sum()),
        "success": int(out.success.sum()),
        "first_step_s": first_step_s,
        "warmup_s": warmup_s,
    }
    if spec["variant"] == COMPILED.key:
        result["compile"] = {"frames_before_timing": frames_before,
                             "recompiles_during_timing": compile_frames() - frames_before,
                             "first_steps_s": first_step_s + warmup_s}
    if autocast is not None:
        result["amp_vs_fp32"] = amp_comparison(variant, net, x, y, cfg, autocast, restore)
    if spec.get("profile"):
        result["profile"] = profile_step(one_step, restore, device)
    return result


def amp_comparison(variant, net, x, y, cfg, autocast, restore) -> dict[str, Any]:
    """How mixed precision changes the loss, DeepFool's iterations/perturbations and the weight gradients,
    against the same variant in ``x.dtype`` at the same weights and batch."""
    outs, grads = [], []
    for ctx in (contextlib.nullcontext, autocast):
        restore()
        net.zero_grad(set_to_none=True)
        with ctx():
            out = variant.loss(net, x, y, cfg)
        out.loss.float().backward()
        outs.append(out)
        grads.append(torch.cat([p.grad.flatten().float() for p in net.parameters() if p.grad is not None]))
    ref, amp = outs
    loss_rel = abs(amp.loss.item() - ref.loss.item()) / max(abs(ref.loss.item()), 1e-30)
    grad_rel = ((grads[1] - grads[0]).norm() / grads[0].norm().clamp_min(1e-30)).item()
    iters_differ = (amp.iterations != ref.iterations).double().mean().item()
    success_differ = (amp.success != ref.success).double().mean().item()
    return {
        "loss_rel_change": loss_rel, "grad_rel_change": grad_rel,
        "iterations_differ_frac": iters_differ, "success_differ_frac": success_differ,
        "beyond_tolerance": bool(loss_rel > AMP_TOLERANCE or iters_differ > 0 or success_differ > 0),
    }


def run_worker(spec: dict[str, Any], isolation: str, script: Path) -> dict[str, Any]:
    """:func:`measure` of ``spec`` in this process (``isolation="inprocess"``), or in a fresh process running
    ``script --worker JSON`` (step.py: it prints the result after ``RESULT_MARKER``); a failure is returned as
    an ``"error"`` entry."""
    if isolation == "inprocess":
        try:
            return measure(spec)
        except Exception as exc:  # noqa: BLE001 - a failed variant (e.g. out of memory) is reported, not fatal
            return {**{k: spec[k] for k in ("model", "batch_size", "variant")}, "error": repr(exc)}
    cmd = [sys.executable, str(script), "--worker", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_MARKER):
            return json.loads(line[len(RESULT_MARKER):])
    tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
    return {**{k: spec[k] for k in ("model", "batch_size", "variant")},
            "error": f"worker exited with {proc.returncode}: {tail}"}


def prepared_runs(base, keys: list[str], lr: float) -> dict[str, tuple]:
    """``{key: (variant, net, optimizer, saved weights)}``: each variant's own copy of ``base`` (the same
    weights), an SGD optimizer (momentum 0.9) and the weights to restore before every timed step."""
    runs = {}
    for key in keys:
        variant = ALL_VARIANTS[key]
        net = variant.prepare(base)
        runs[key] = (variant, net, torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9),
                     [p.detach().clone() for p in net.parameters()])
    return runs


def restore_weights(run: tuple) -> None:
    """Put a :func:`prepared_runs` entry's weights back (so every timed step does the same DeepFool work)."""
    _, net, _, saved = run
    with torch.no_grad():
        for p, s in zip(net.parameters(), saved):
            p.copy_(s)


def interleaved_variants(arch: str, ref_path: Optional[str], batch: int, keys: list[str], cfg: StepConfig,
                         args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """All ``keys`` variants of one (model, batch size) timed in interleaved rounds in this process
    (:func:`benchmarks.rounds.interleaved`; weights restored before every step, outside the timed region).
    Returns each variant's timing and the per-round ratios revnet ÷ variant."""
    base, x, y = model_batch(arch, ref_path, batch, device, dtype, args.seed)
    runs = prepared_runs(base, keys, args.lr)

    def restore(key: str) -> None:
        restore_weights(runs[key])

    def step(key: str) -> None:
        variant, net, optimizer, _ = runs[key]
        variant.step(net, optimizer, x, y, cfg)

    times = interleaved({k: (lambda k=k: step(k)) for k in keys}, rounds=args.rounds, budget_s=args.rounds_budget,
                        warmup=max(1, args.warmup), device=device, setup={k: (lambda k=k: restore(k)) for k in keys})
    losses = {}
    for key in keys:  # what each computed at the benchmark's weights (float32): the same step
        restore(key)
        losses[key] = runs[key][0].loss(runs[key][1], x, y, cfg).loss.item()
    out = {"model": arch, "batch_size": batch, "rounds": len(times[keys[0]]),
           "variants": {k: summarize(t) for k, t in times.items()}, "losses": losses}
    if "revnet" in times:
        out["revnet_over"] = {k: round_ratios(times, "revnet", k) for k in keys if k != "revnet"}
    return out


def interleaved_pairs(arch: str, ref_path: Optional[str], batch: int, cfg: StepConfig, args: argparse.Namespace,
                      device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """Time variant 1 and variant 1g in ABBA pairs in this process (see the module docstring)."""
    base, x, y = model_batch(arch, ref_path, batch, device, dtype, args.seed)
    runs = prepared_runs(base, ["revnet", GRAPH_VARIANT], args.lr)

    def restore(key: str) -> None:
        restore_weights(runs[key])

    def step(key: str, xb=x, yb=y) -> float:
        variant, net, optimizer, _ = runs[key]
        restore(key)  # outside the timed region: every step does the same DeepFool work
        synchronize(device)
        t0 = time.perf_counter()
        variant.step(net, optimizer, xb, yb, cfg)
        synchronize(device)
        return time.perf_counter() - t0

    for key in runs:  # prime the libraries, then warm up both
        step(key, x[:1], y[:1])
    for _ in range(args.warmup):
        for key in runs:
            step(key)
    times: dict[str, list[float]] = {key: [] for key in runs}
    pair_ratios: list[float] = []
    graph_first: list[bool] = []
    start = time.perf_counter()
    for i in range(args.pairs):
        order = ("revnet", GRAPH_VARIANT) if i % 2 == 0 else (GRAPH_VARIANT, "revnet")  # ABBA
        pair = {key: step(key) for key in order}
        for key, t in pair.items():
            times[key].append(t)
        pair_ratios.append(pair[GRAPH_VARIANT] / pair["revnet"])
        graph_first.append(order[0] == GRAPH_VARIANT)
        if i + 1 >= 4 and time.perf_counter() - start > args.time_budget:
            break
    timed_s = time.perf_counter() - start

    outs = {}
    for key, (variant, net, _, _) in runs.items():  # what each computed, at the benchmark's weights
        restore(key)
        out = variant.loss(net, x, y, cfg)
        outs[key] = out
    seq, graph = outs["revnet"], outs[GRAPH_VARIANT]
    q1, q3 = quartiles(pair_ratios)
    seq_sum, graph_sum = summarize(times["revnet"]), summarize(times[GRAPH_VARIANT])
    by_order = {
        "sequential_first": statistics.median([r for r, g in zip(pair_ratios, graph_first) if not g]),
        "graph_first": statistics.median([r for r, g in zip(pair_ratios, graph_first) if g]),
    }
    ratio = graph_sum["median_s"] / seq_sum["median_s"]
    return {
        "model": arch, "batch_size": batch, "pairs": len(pair_ratios), "timed_s": timed_s,
        "sequential": seq_sum, "graph": graph_sum,
        "ratio_of_medians": ratio,
        "pair_ratio": {"median": statistics.median(pair_ratios), "q25": q1, "q75": q3, "iqr": q3 - q1,
                       "min": min(pair_ratios), "max": max(pair_ratios), "by_order": by_order,
                       "values": pair_ratios},
        "target": GRAPH_TARGET,
        "target_met": bool(ratio <= GRAPH_TARGET),
        "q75_within_target": bool(q3 <= GRAPH_TARGET),
        "same_step": {
            "loss_sequential": seq.loss.item(), "loss_graph": graph.loss.item(),
            "loss_rel_diff": abs(graph.loss.item() - seq.loss.item()) / max(abs(seq.loss.item()), 1e-30),
            "iterations_equal": bool(torch.equal(seq.iterations, graph.iterations)),
            "mean_iterations": seq.iterations.double().mean().item(),
            "max_iterations": int(seq.iterations.max()), "correct": int(seq.correct.sum()),
        },
        "input_shape": list(x.shape), "dtype": str(x.dtype).replace("torch.", ""),
    }
