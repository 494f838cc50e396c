"""Time one Deep Defense training step five ways: revnet's explicit reverse against autograd.

Example::

    python benchmarks/step.py                      # MLP and LeNet, batch 10 and 100, reference weights
    python benchmarks/step.py --no-early-stop      # worst case: every sample runs all --max-iter iterations
    python benchmarks/step.py --full               # adds batch 1000
    python benchmarks/step.py --device cuda --amp  # GPU, mixed precision (benchmarks/gpu.sh runs it)
    python benchmarks/step.py --compile            # adds variant 1c: torch.compile'd trace and reverse
    python benchmarks/step.py --graph-vs-sequential  # LeNet batch 100: revnet.Graph vs revnet.Sequential, interleaved
    python benchmarks/step.py --models resnet18-32 --variants revnet autograd-loop autograd-batched torch-func \
        autograd-shortcut --warmup 1 --repeats 5 --time-budget 30    # ResNet-18, 32×32, batch 32 (step-resnet18-32.*)

One step = forward, DeepFool with ``--max-iter`` iterations kept in the graph, the regularized loss of
``revnet.losses.deep_defense_loss``, backward to every weight, ``optimizer.step()`` (SGD, momentum 0.9). The
five variants are described in ``benchmarks/variants.py``: (1) revnet, (2) autograd ``grad()`` per class,
(3) autograd ``is_grads_batched``, (4) ``torch.func`` vmap over vjp, (5) autograd with revnet's algorithmic
shortcuts (the ablation); (1g) ``revnet-graph`` is variant 1 on ``revnet.Graph(<plain torch.nn copy>)``
instead of the ``revnet.Sequential`` (the same loss; only the network container differs). Before timing,
every variant's loss, weight gradients and DeepFool iterations are checked against revnet's in float64 on a
small batch (``--check-batch``), so the benchmark never compares different computations.

Measurement: each (model, batch size, variant) runs in a fresh subprocess (``--isolation subprocess``) on
identical weights (a reference model: ``--reference``, or one trained on the embedded MNIST subset and
cached in ``--cache-dir``) and the identical batch (the first N images of the embedded training split, true
labels). Timing is an explicit loop: ``--warmup`` untimed steps, then ``--repeats`` timed steps (fewer if
``--time-budget`` runs out, at least ``--min-repeats``, 3 by default), each from the same weights (restored
outside the timed region, so DeepFool does the same work every step), synchronised on CUDA; the median and
the interquartile range are reported, and the loss and DeepFool iterations of the last timed step. Peak
memory is above the process's baseline taken just before the first step (after one untimed 1-image step, so
the libraries' one-time initialisation is not counted, and glibc's ``malloc_trim``): on CUDA
``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()``; on the CPU the peak resident set
size (VmHWM, reset through ``/proc/self/clear_refs`` just before the first step) minus the resident set size
(VmRSS) at that moment, which excludes the import and loading overhead.

``--no-early-stop``: every variant runs all ``--max-iter`` DeepFool iterations for every sample (variant 1
through ``deep_defense_loss(early_stop=False)``). ``--class-chunk K``: variant 1 reverses the candidate classes
for DeepFool's choice in groups of K (less peak memory, the same step). Results and the Markdown table go to ``--output`` (``step[-resnet18-32][-cuda][-amp]
[-no-early-stop].{json,md,png}``); the target of issue 5 (LeNet, batch 100, ``--max-iter 5``, reference
weights: revnet <= 0.5x the time of the fastest of variants 2-4, <= 0.8x its peak memory, no slower than
variant 5) is evaluated and stated, never asserted.

``--graph-vs-sequential``: a separate mode for the Graph target (a ``revnet.Graph`` built from a chain within
10% of the ``revnet.Sequential`` step): LeNet, batch 100, reference weights, ``--max-iter`` 5 by default
(``--models``/``--batch-sizes`` override), variant 1 and variant 1g in **one process, interleaved**: after
``--warmup`` untimed steps of each, ``--pairs`` pairs of timed steps in ABBA order (pair i runs Sequential
then Graph for even i, Graph then Sequential for odd i, so drift and the order within a pair cancel),
stopping early after ``--time-budget`` seconds of pairs (at least 4). One process, not alternating
subprocesses: both networks see the same machine state (the other load on a shared CPU, the allocator, the
thread pool) within a fraction of a second of each other, which is what a ratio needs; peak memory is
therefore not measured in this mode (the plain run measures it per subprocess). Reported: the median (and
IQR) of each, the ratio of the medians, and the spread of the per-pair ratios Graph/Sequential (median,
IQR, min/max, by order); the target holds if the ratio of the medians is <= 1.10 (also stated: whether the
upper quartile of the pair ratios is). Both are first checked equal in float64 (``--check-batch``), and
their float32 loss and DeepFool iterations at the timed batch are compared. Written to
``--output``/``graph-vs-sequential[-cuda].{json,md}``.

``--models resnet18-32`` (also ``resnet18-224``: the same network on 3×224×224 inputs, and ``convnet-cifar``: the
paper's CIFAR-10 ConvNet, batch 128): torchvision's ``resnet18(num_classes=10)`` with random weights
(``torch.manual_seed(--seed)``, no CIFAR-10 offline), BatchNorm in eval mode (running statistics 0/1), on random
N(0, 1) inputs of shape (N, 3, 32, 32) from ``torch.Generator().manual_seed(--seed)`` (batch 32 unless
``--batch-sizes``);
labels are the network's own clean predictions with every 4th shifted by one class, so about 3/4 of the
samples take DeepFool's untargeted branch (as when fine-tuning a trained network) and 1/4 the targeted one.
Variant 1 runs on ``revnet.convert(model)`` (a ``revnet.Graph``), variants 2-5 on the plain torchvision
model; variant 1g is skipped (``revnet.Graph`` of the plain model is exactly variant 1's network). Results go
to ``step-resnet18-32[...]``; the issue-5 target does not apply.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from revnet_app.benchmarks import SCRATCH, add_device_flag, add_reference_flags
from revnet_app.benchmarks.harness import machine_info, write_text
from revnet_app.benchmarks.step_problems import (
    GRAPH_TARGET, GRAPH_VARIANT, MNIST_MODELS, RANDOM_MODELS, TARGET, TARGET_CONFIGS, batch_sizes_for,
    equivalence_batch, model_references, resolve_models, shortcut_engine_for, step_config, variants_for)
from revnet_app.benchmarks.step_report import (
    graph_markdown, graph_run_name, graph_sentence, markdown, plot, profile_markdown, run_name, target_sentence)
from revnet_app.benchmarks.step_targets import evaluate_target, ratios_for
from revnet_app.benchmarks.step_timing import (
    RESULT_MARKER, interleaved_pairs, interleaved_variants, measure, run_worker)
from revnet_app.benchmarks.variant_equivalence import check_equivalence
from revnet_app.benchmarks.variants import ALL_VARIANTS, COMPILED, VARIANTS, StepConfig
from revnet_app.train.utils import resolve_device


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Time one Deep Defense training step (forward, DeepFool, loss, backward, optimizer step) "
                    "five ways: revnet's explicit reverse vs autograd (and revnet on a revnet.Graph).",
        add_help=add_help, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--models", nargs="+", default=None, choices=MNIST_MODELS + list(RANDOM_MODELS),
                   help="architectures: models.mlp(), models.lenet() (MNIST reference weights); random init and "
                        "random data (no CIFAR-10/ImageNet offline; see the docstring): resnet18-32 / resnet18-224: "
                        "torchvision.models.resnet18(num_classes=10) on 3×32×32 / 3×224×224 inputs (batch 32 by "
                        "default), convnet-cifar: the paper's CIFAR-10 ConvNet (models.cifar.convnet(), batch 128). "
                        "Default: mlp lenet; lenet with --graph-vs-sequential")
    p.add_argument("--batch-sizes", nargs="+", type=int, default=None,
                   help="batch sizes to time. Default: 10 100 for mlp/lenet, 32 for resnet18-32; 100 with "
                        "--graph-vs-sequential")
    p.add_argument("--full", action="store_true", help="add batch size 1000 (mlp/lenet only)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(ALL_VARIANTS),
                   help="variants to run (1 revnet, 1c revnet-compiled (also added by --compile), 1g revnet-graph, "
                        "2 autograd-loop, 3 autograd-batched, 4 torch-func, 5 autograd-shortcut); revnet-graph is "
                        "skipped for the random models (the same network as revnet there)")
    p.add_argument("--compile", action="store_true",
                   help="also time variant 1c, revnet with torch.compile (automatic dynamic shapes) of the network's "
                        "trace and reverse (benchmarks/variants.py); its compile time (the priming and warm-up steps) and "
                        "any recompiles during the timed steps are reported apart from the step time; it is not "
                        "in the float64 check (compiling float64 as well would double the wait), its float32 loss "
                        "is compared with variant 1's in the interleaved rounds")
    p.add_argument("--graph-vs-sequential", action="store_true",
                   help="instead of the variant table: time variant 1 (revnet.Sequential) and 1g (revnet.Graph "
                        "of the plain copy) interleaved in one process (ABBA pairs), LeNet batch 100 by default, "
                        f"and state whether Graph <= {GRAPH_TARGET}x Sequential (graph-vs-sequential.{{json,md}})")
    p.add_argument("--pairs", type=int, default=200,
                   help="--graph-vs-sequential: timed (Sequential, Graph) pairs (fewer if --time-budget runs out, "
                        "at least 4)")
    p.add_argument("--max-iter", type=int, default=5, help="DeepFool iterations inside the loss")
    p.add_argument("--overshoot", type=float, default=0.02, help="DeepFool overshoot")
    p.add_argument("--lmbda", type=float, default=15.0, help="λ, weight of the regularizer")
    p.add_argument("--c", type=float, default=25.0, help="c of exp(-c·‖Δx‖/‖x‖), correctly classified samples")
    p.add_argument("--d", type=float, default=5.0, help="d of exp(d·‖Δx‖/‖x‖), misclassified samples")
    p.add_argument("--class-chunk", type=int, default=None,
                   help="revnet only: candidate classes per choosing reverse in DeepFool (default: the "
                        "library's: at most 512 rows per reverse on the CPU, all classes at once on CUDA; 9 = all for MNIST)")
    p.add_argument("--no-early-stop", action="store_true",
                   help="worst case: every sample runs all --max-iter DeepFool iterations (see the docstring)")
    p.add_argument("--lr", type=float, default=1e-3, help="SGD learning rate (momentum 0.9) of the timed step")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before timing")
    p.add_argument("--repeats", type=int, default=10, help="timed steps per (model, batch size, variant)")
    p.add_argument("--time-budget", type=float, default=120.0,
                   help="seconds of timed steps per (model, batch size, variant); stops early (>= --min-repeats). "
                        "With --graph-vs-sequential: seconds of timed pairs per (model, batch size) (>= 4 pairs)")
    p.add_argument("--min-repeats", type=int, default=3,
                   help="timed steps per (model, batch size, variant) even past --time-budget (1 caps a hopeless "
                        "variant, e.g. autograd on ResNet-18, at one timed step; its IQR is then 0)")
    p.add_argument("--rounds", type=int, default=10,
                   help="after the per-variant runs: time all variants of each (model, batch size) interleaved in "
                        "this process, this many rounds (A B C ..., ... C B A); the ratios and the targets come "
                        "from these rounds (per-round ratios, median and spread); 0: skip (ratios then come from the "
                        "separate runs)")
    p.add_argument("--rounds-budget", type=float, default=90.0,
                   help="seconds of interleaved rounds per (model, batch size); stops early (>= 3 rounds)")
    add_reference_flags(p, "reference checkpoint (models.load format; its arch says which model it is for); "
                        "repeat for several models. Default: train one on the embedded MNIST subset, cached")
    p.add_argument("--check-batch", type=int, default=8,
                   help="images in the float64 equivalence check (every 4th gets a wrong label)")
    add_device_flag(p)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"], help="dtype of the timed steps")
    p.add_argument("--amp", action="store_true",
                   help="mixed precision (torch.autocast; float16 + GradScaler on CUDA, bfloat16 on the CPU) and a "
                        "report of how it changes DeepFool against float32")
    p.add_argument("--amp-dtype", default=None, choices=["float16", "bfloat16"],
                   help="autocast dtype; unset: float16 on CUDA, bfloat16 on the CPU")
    p.add_argument("--shortcut-choice", default="auto", choices=["auto", "loop", "batched"],
                   help="variant 5: how the graph-free C-1 rows that choose k are computed (auto: loop on the CPU, "
                        "measured faster here; batched on CUDA)")
    p.add_argument("--threads", type=int, default=None, help="torch threads; unset: torch's default")
    p.add_argument("--isolation", default="subprocess", choices=["subprocess", "inprocess"],
                   help="subprocess: a fresh process per (model, batch size, variant), needed for CPU peak memory; "
                        "inprocess: all in this process (quick; CPU memory figures then include allocator reuse)")
    p.add_argument("--profile", action="store_true",
                   help="also profile one step per (model, batch size, variant) with torch.profiler "
                        "(top operators by time and by memory kept, written to <output>/<name>-profile.md)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the reference training; for resnet18-32 the seed of its random init and random batch")
    p.add_argument("--output", default=SCRATCH, help="folder for the JSON, Markdown and PNG results (default %(default)s, a scratch folder; pass --output benchmarks/results to update the committed results)")
    p.add_argument("--worker", default=None, metavar="JSON",
                   help="internal: run one measurement described by a JSON object and print its result "
                        "(how the fresh subprocess per variant is started)")
    return p


# ---------------------------------------------------------------------------------------------------------
# The whole run.


def check_args(args: argparse.Namespace) -> None:
    for name in ("max_iter", "repeats", "check_batch", "ref_epochs", "pairs", "min_repeats"):
        if getattr(args, name) < 1:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be at least 1")
    if args.warmup < 0 or any(b < 1 for b in args.batch_sizes or []):
        raise SystemExit("error: --warmup must be >= 0 and every batch size >= 1")
    if args.amp and args.dtype != "float32":
        raise SystemExit("error: --amp needs --dtype float32")


def _start(args: argparse.Namespace, **resolved: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Print the resolved configuration (``args`` with ``resolved`` on top) and the references; returns both."""
    resolved = {**vars(args), **resolved}
    resolved.pop("worker")
    print("configuration:\n" + "\n".join(f"  {k}: {v}" for k, v in sorted(resolved.items())), flush=True)
    refs = model_references(args, args.models)
    for arch, ref in refs.items():
        print(f"reference {arch}: {ref['origin']}", flush=True)
    return resolved, refs


def _equivalence(args: argparse.Namespace, refs: dict[str, Any], cfg: StepConfig, device: torch.device,
                 keys_for: Callable[[str], list[str]], what: str) -> dict[str, Any]:
    """The float64 check of each model's variants against revnet, before anything is timed."""
    equivalence: dict[str, Any] = {}
    for arch in args.models:
        net, x, y = equivalence_batch(refs[arch]["path"], args.check_batch, device, arch, args.seed)
        start = time.perf_counter()
        equivalence[arch] = check_equivalence(net, x, y, cfg, keys=keys_for(arch))
        print(f"equivalence {arch}: {what} equal revnet's (float64, {len(y)} images, "
              f"{time.perf_counter() - start:.1f} s)", flush=True)
    return equivalence


def main(args: argparse.Namespace) -> dict[str, Any]:
    if args.worker is not None:
        result = measure(json.loads(args.worker))
        print(RESULT_MARKER + json.dumps(result), flush=True)
        return result
    started = time.perf_counter()
    check_args(args)
    resolve_models(args)
    if args.graph_vs_sequential:
        return graph_vs_sequential(args)
    device = resolve_device(args.device)
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    batch_sizes = {arch: batch_sizes_for(args, arch) for arch in args.models}
    amp_dtype = (args.amp_dtype or ("float16" if device.type == "cuda" else "bfloat16")) if args.amp else None
    cfg = step_config(args)
    shortcut_engine = shortcut_engine_for(args.shortcut_choice, device)
    name = run_name(args, device)
    resolved, refs = _start(args, device=str(device), threads=threads, batch_sizes=batch_sizes, amp_dtype=amp_dtype,
                            shortcut_engine=shortcut_engine, run_name=name)
    machine = machine_info(device, threads)
    out_dir = Path(args.output)

    # 1. the equivalence checks (float64, small batch, reference weights)
    VARIANTS["autograd-shortcut"].choose_engine = shortcut_engine
    def checked(arch: str) -> list[str]:  # 1c is not in the float64 check (see --compile)
        return [k for k in variants_for(args, arch) if k != COMPILED.key]

    equivalence = _equivalence(args, refs, cfg, device, checked, "every variant's loss and weight gradients")

    # 2. the measurements
    results = []
    for arch in args.models:
        for batch in batch_sizes[arch]:
            for key in variants_for(args, arch):
                spec = {"model": arch, "batch_size": batch, "variant": key, "checkpoint": refs[arch]["path"],
                        "cfg": cfg.as_dict(), "device": str(device), "dtype": args.dtype, "amp_dtype": amp_dtype,
                        "lr": args.lr, "warmup": args.warmup, "repeats": args.repeats,
                        "time_budget": args.time_budget, "threads": threads, "shortcut_engine": shortcut_engine,
                        "profile": args.profile, "seed": args.seed, "min_repeats": args.min_repeats}
                res = run_worker(spec, args.isolation, Path(__file__).resolve())
                results.append(res)
                if "error" in res:
                    print(f"  {arch:5s} b={batch:<5d} {key:18s} FAILED: {res['error'].splitlines()[-1]}", flush=True)
                else:
                    print(f"  {arch:5s} b={batch:<5d} {key:18s} {res['median_s'] * 1e3:9.1f} ms "
                          f"(IQR {res['iqr_s'] * 1e3:.1f}, n={res['repeats']})  peak {res['peak_mib']:8.1f} MiB  "
                          f"DeepFool iters {res['mean_iterations']:.2f}", flush=True)

    # 3. the interleaved rounds: the ratios' source (separate runs drift 10-25% on a shared CPU)
    rounds: list[dict[str, Any]] = []
    if args.rounds > 0:
        dtype = getattr(torch, args.dtype)
        for arch in args.models:
            for batch in batch_sizes[arch]:
                keys = [k for k in variants_for(args, arch)
                        if any(r["variant"] == k and r["model"] == arch and r["batch_size"] == batch
                               and "error" not in r for r in results)]
                if "revnet" not in keys or len(keys) < 2 or amp_dtype is not None:
                    continue
                rounds.append(interleaved_variants(arch, refs[arch]["path"], batch, keys, cfg, args, device, dtype))
                over = rounds[-1]["revnet_over"]
                print(f"  {arch:5s} b={batch:<5d} interleaved ({rounds[-1]['rounds']} rounds): revnet ÷ "
                      + ", ".join(f"{k} {v['median']:.3f} [{v['q25']:.3f}, {v['q75']:.3f}]" for k, v in over.items()),
                      flush=True)

    def rounds_of(arch: str, b: int) -> Optional[dict[str, Any]]:
        return next((r for r in rounds if r["model"] == arch and r["batch_size"] == b), None)

    ratios = [r for arch in args.models for b in batch_sizes[arch]
              if (r := ratios_for(results, arch, b, rounds_of(arch, b))) is not None]
    target = evaluate_target(ratios, cfg)
    targets = [evaluate_target(ratios, cfg, model, b) for model, b in TARGET_CONFIGS]
    report = {
        "name": name,
        "description": "one Deep Defense training step (forward, DeepFool, loss, backward, SGD step), five ways "
                       "(and variant 1 on a revnet.Graph)",
        "config": {**resolved, "step": cfg.as_dict()},
        "machine": machine,
        "timing_method": (f"explicit loop: {args.warmup} warm-up steps, then up to {args.repeats} timed steps "
                          f"(time budget {args.time_budget:g} s, at least {min(args.min_repeats, args.repeats)}), "
                          "weights restored before each step "
                          "outside the timed region" + ("; torch.cuda.synchronize() around each step"
                                                        if device.type == "cuda" else "")),
        "isolation": args.isolation,
        "references": refs,
        "equivalence": equivalence,
        "variants": {k: {"number": v.number, "title": v.title, "summary": v.summary} for k, v in ALL_VARIANTS.items()
                     if k in VARIANTS or any(r["variant"] == k for r in results)},
        "results": [{k: v for k, v in r.items() if k != "profile"} for r in results],
        "interleaved": rounds,
        "ratios": ratios,
        "target": target,
        "targets": targets,
        "wall_s": time.perf_counter() - started,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(out_dir / f"{name}.json", json.dumps(report, indent=2, default=str) + "\n")
    write_text(out_dir / f"{name}.md", markdown(report))
    plot(report, out_dir / f"{name}.png")
    if args.profile:
        write_text(out_dir / f"{name}-profile.md", profile_markdown(results))
    print(f"wrote {out_dir / name}.json, .md, .png", flush=True)
    for t in targets:
        print(target_sentence(t), flush=True)
    return report


def graph_vs_sequential(args: argparse.Namespace) -> dict[str, Any]:
    """``--graph-vs-sequential``: the interleaved measurement, its report and its Markdown."""
    started = time.perf_counter()
    if args.amp:
        raise SystemExit("error: --graph-vs-sequential times float32/float64 steps; drop --amp")
    chains = [a for a in args.models if a in RANDOM_MODELS]
    if chains:
        raise SystemExit(f"error: --graph-vs-sequential needs Sequential models (mlp, lenet); {chains[0]} is a Graph "
                         "already (variant 1 is revnet.convert of it)")
    device = resolve_device(args.device)
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    dtype = getattr(torch, args.dtype)
    cfg = step_config(args)
    name = graph_run_name(args, device)
    batch_sizes = {arch: batch_sizes_for(args, arch) for arch in args.models}
    resolved, refs = _start(args, device=str(device), threads=threads, batch_sizes=batch_sizes, run_name=name)
    machine = machine_info(device, threads)
    equivalence = _equivalence(args, refs, cfg, device, lambda arch: ["revnet", GRAPH_VARIANT],
                               "revnet-graph's loss and weight gradients")

    results = []
    for arch in args.models:
        for batch in batch_sizes[arch]:
            r = interleaved_pairs(arch, refs[arch]["path"], batch, cfg, args, device, dtype)
            r["target_configuration"] = bool(arch == TARGET["model"] and batch == TARGET["batch_size"]
                                             and cfg.max_iter == TARGET["max_iter"] and cfg.early_stop)
            results.append(r)
            print(graph_sentence(r), flush=True)
    report = {
        "name": name,
        "description": ("one Deep Defense training step, variant 1 (revnet.Sequential) vs variant 1g (revnet.Graph "
                        "built from the plain nn.Sequential copy), interleaved in one process"),
        "config": {**resolved, "step": cfg.as_dict()},
        "machine": machine,
        "timing_method": (f"one process; prime each with a 1-image step, {args.warmup} warm-up step(s) of each, "
                          f"then up to {args.pairs} pairs in ABBA order (even pairs Sequential then Graph, odd "
                          f"pairs Graph then Sequential), stopping after {args.time_budget:g} s of pairs (at least "
                          "4); weights restored before each step outside the timed region"
                          + ("; torch.cuda.synchronize() around each step" if device.type == "cuda" else "")),
        "target": (f"a Graph built from a chain within 10% of the Sequential step (ratio of the medians ≤ "
                   f"{GRAPH_TARGET:.2f}) at the issue-5 configuration: LeNet, batch {TARGET['batch_size']}, max_iter "
                   f"{TARGET['max_iter']}, reference weights, early stopping"),
        "references": refs,
        "equivalence": equivalence,
        "results": results,
        "wall_s": time.perf_counter() - started,
    }
    out_dir = Path(args.output)
    write_text(out_dir / f"{name}.json", json.dumps(report, indent=2, default=str) + "\n")
    write_text(out_dir / f"{name}.md", graph_markdown(report))
    print(f"wrote {out_dir / name}.json, .md", flush=True)
    return report


if __name__ == "__main__":
    from torch.nn.attention import SDPBackend, sdpa_kernel

    # torch's fused CPU attention has no double backward, which the autograd variants need (ViT); revnet's own
    # attention rule does not call it, so the math backend changes only the autograd side, and only for models
    # with attention
    with sdpa_kernel(SDPBackend.MATH):
        main(get_args_parser().parse_args())
