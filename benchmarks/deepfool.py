"""Evaluation-mode DeepFool throughput: revnet's explicit reverse against autograd, and the scaling with the
number of classes.

Example::

    python benchmarks/deepfool.py                       # MNIST MLP/LeNet at reference weights + class scaling
    python benchmarks/deepfool.py --device cuda --amp    # GPU, mixed precision (untested here: no GPU was lent)

Two parts (``--parts``):

* ``mnist``: untargeted DeepFool (``--max-iter 50``, overshoot 0.02) on the first ``--num-images`` embedded
  MNIST test images, in batches of ``--batch-size``, for the reference MLP and LeNet (``--reference`` or a
  cached/trained one, as in ``benchmarks/step.py``); ``--models convnet-cifar``: the paper's CIFAR-10 ConvNet
  with random weights on ``--num-images`` random N(0, 1) 3×32×32 images (no CIFAR-10 offline).
* ``scaling``: a random MLP 784-500-150-C (C = ``--classes``: 10, 100, 1000) on one batch of
  ``--scaling-batch`` synthetic N(0, 1) inputs of shape (1, 28, 28), with all classes as candidates and with
  ``--candidates`` (10: only the top-10 clean classes, as on ImageNet).

Engines (``--engines``): ``revnet`` is the library's ``revnet.attacks.deepfool`` on the ``revnet.Sequential``;
``loop`` (one ``torch.autograd.grad`` per candidate row), ``batched`` (one ``is_grads_batched`` backward)
and ``func`` (``torch.func.vjp`` + ``vmap``) run the *same algorithm* on a plain ``torch.nn`` copy with frozen
weights (``benchmarks/deepfool_algorithms.py: shortcut_deepfool``: only the Q−1 candidate rows ``e_c − e_l`` per
iteration, the chosen row reused, finished samples leave the batch), so the comparison isolates the
explicit reverse from autograd. Before timing, every engine's perturbations, iterations and labels are
checked against revnet's in float64 (``--check-batch`` images).

Peers (``--peers``, mnist part; ``benchmarks/peers.py``): foolbox's ``L2DeepFoolAttack`` and torchattacks'
``DeepFool`` on the same plain network, images, batches, iteration budget and overshoot, with the clean
predictions as labels and no box in effect; reported with their images/s, fooling rate and the median over
images of their ‖Δx‖ over revnet's. A peer that is not installed gets a row saying so.

Timing (``benchmarks/rounds.py``): all engines and peers of a configuration run in interleaved rounds in one
process (``--warmup`` untimed runs each, then ``--repeats`` rounds A B C …, … C B A, fewer after
``--time-budget`` seconds but at least 3); images/s is the number of images over the median time, and the
revnet speed-up over an engine is the median (with quartiles, min and max) of the per-round time ratios. Peak
memory is recorded on CUDA only (``max_memory_allocated`` of one extra run). ``--profile``: one
``torch.profiler`` run per engine and peer (mnist part), top operators by self time, in
``<name>-profile.md``. Results: ``--output``/``deepfool[-cuda][-amp].{json,md}``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]

import torch  # noqa: E402

from revnet_app.benchmarks import SCRATCH, add_device_flag, add_reference_flags  # noqa: E402
from revnet_app.benchmarks.harness import (  # noqa: E402
    MiB, PeakMemory, amp_context, machine_info, summarize, synchronize, write_text)
from revnet_app.benchmarks.step_problems import (  # noqa: E402
    RANDOM_SPECS, load_batch, random_batch, reference_checkpoints)
from revnet_app.benchmarks.rounds import MIN_ROUNDS, interleaved, spread  # noqa: E402
from revnet_app.benchmarks.peers import PEERS, foolbox_attack, missing, torchattacks_attack  # noqa: E402
from revnet_app.benchmarks.deepfool_algorithms import eval_deepfool  # noqa: E402
from revnet_app.benchmarks.deepfool_report import AMP_TOLERANCE, markdown  # noqa: E402
from revnet_app.benchmarks.variant_equivalence import ATOL, RTOL, EquivalenceError  # noqa: E402
from revnet_app.benchmarks.variants import to_torch  # noqa: E402

from revnet_app import models  # noqa: E402
from revnet_app.train.utils import resolve_device  # noqa: E402
import revnet  # noqa: E402

ENGINES = ("revnet", "loop", "batched", "func")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Evaluation-mode DeepFool throughput (images/s): revnet's explicit reverse vs autograd, and "
                    "the scaling with the number of classes.",
        add_help=add_help, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--parts", nargs="+", default=["mnist", "scaling"], choices=["mnist", "scaling"],
                   help="mnist: reference MLP/LeNet on MNIST test images; scaling: random MLP with C classes")
    p.add_argument("--engines", nargs="+", default=list(ENGINES), choices=list(ENGINES),
                   help="revnet: revnet.attacks.deepfool; loop / batched / func: the same algorithm with "
                        "torch.autograd.grad per row / is_grads_batched / torch.func vmap(vjp)")
    p.add_argument("--models", nargs="+", default=["mlp", "lenet"], choices=sorted(models.ARCHITECTURES) + ["convnet-cifar"],
                   help="architectures of the mnist part; convnet-cifar: the paper's CIFAR-10 ConvNet with random "
                        "weights on random N(0, 1) 3×32×32 images (no CIFAR-10 offline; benchmarks/step_problems.py)")
    p.add_argument("--num-images", type=int, default=500, help="mnist part: first N embedded MNIST test images")
    p.add_argument("--batch-size", type=int, default=100, help="mnist part: images per attack batch")
    p.add_argument("--classes", nargs="+", type=int, default=[10, 100, 1000],
                   help="scaling part: numbers of logits C")
    p.add_argument("--candidates", type=int, default=10,
                   help="scaling part: also run with only the top-N clean classes as candidates (0: never)")
    p.add_argument("--scaling-batch", type=int, default=100, help="scaling part: synthetic images (one batch)")
    p.add_argument("--peers", nargs="*", default=list(PEERS), choices=list(PEERS),
                   help="mnist part: the peers' DeepFool on the same networks and images (benchmarks/peers.py); a "
                        "peer that is not installed is reported as such")
    p.add_argument("--max-iter", type=int, default=50, help="DeepFool iterations")
    p.add_argument("--overshoot", type=float, default=0.02, help="DeepFool overshoot")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs before timing")
    p.add_argument("--repeats", type=int, default=7,
                   help="timed rounds per configuration; one round runs every engine (and foolbox) once, in "
                        "alternating order (A B C, C B A, ...)")
    p.add_argument("--time-budget", type=float, default=120.0,
                   help="seconds of timed rounds per configuration; stops early (>= 3 rounds)")
    add_reference_flags(p, "reference checkpoint (models.load format), repeat for several models; default: train one "
                        "on the embedded MNIST subset, cached")
    p.add_argument("--check-batch", type=int, default=8, help="images in the float64 equivalence check")
    add_device_flag(p)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"], help="dtype of the timed attacks")
    p.add_argument("--amp", action="store_true",
                   help="run the timed attacks under torch.autocast (float16 on CUDA, bfloat16 on the CPU) and "
                        "report how it changes DeepFool's results against --dtype")
    p.add_argument("--amp-dtype", default=None, choices=["float16", "bfloat16"], help="autocast dtype")
    p.add_argument("--threads", type=int, default=None, help="torch threads; unset: torch's default")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic network/inputs and the references")
    p.add_argument("--class-chunks", type=int, nargs="*", default=[],
                   help="also time revnet with these candidate classes per choosing reverse, as extra engines "
                        "'revnet/chunkN' in the same rounds (revnet itself uses the library's default: at most 512 "
                        "rows per reverse on the CPU)")
    p.add_argument("--profile", action="store_true",
                   help="mnist part: also profile one run of every engine and peer with torch.profiler (top "
                        "operators by self time, <output>/<name>-profile.md)")
    p.add_argument("--output", default=SCRATCH, help="folder for the JSON and Markdown results (default %(default)s, a scratch folder; pass --output benchmarks/results to update the committed results)")
    return p


def scaling_net(num_classes: int, seed: int) -> revnet.Sequential:
    """A random MLP 784-500-150-C (``models.mlp`` with C outputs), eval mode."""
    torch.manual_seed(seed)
    return revnet.Sequential(
        revnet.Flatten(), revnet.Linear(784, 500), revnet.ReLU(), revnet.Linear(500, 150), revnet.ReLU(),
        revnet.Linear(150, num_classes),
    ).eval()


def engine_net(engine: str, net: revnet.Sequential) -> torch.nn.Module:
    """revnet: the network itself; autograd engines: a plain torch.nn copy whose weights do not require grad."""
    if engine == "revnet":
        return net
    plain = to_torch(net).eval()
    plain.requires_grad_(False)
    return plain


def attack_all(engine: str, net, x: torch.Tensor, batch_size: int, max_iter: int, overshoot: float,
               candidates: Optional[int], class_chunk: Optional[int] = None):
    """DeepFool on every image of ``x`` in batches; returns ``(delta, iterations, success, label)``."""
    parts = [eval_deepfool(engine, net, x[i:i + batch_size], max_iter=max_iter, overshoot=overshoot,
                           candidates=candidates, class_chunk=class_chunk) for i in range(0, len(x), batch_size)]
    return tuple(torch.cat([getattr(p, f) for p in parts]) for f in ("delta", "iterations", "success", "label"))


def check_engines(net: revnet.Sequential, x: torch.Tensor, engines: list[str], max_iter: int, overshoot: float,
                  candidates: Optional[int]) -> dict[str, float]:
    """Each engine's float64 perturbations, iterations, success and labels against revnet's; returns the worst
    scaled error of Δx per engine (<= 1 passes) or raises :class:`EquivalenceError`."""
    net64 = copy.deepcopy(net).to(torch.float64)
    x64 = x.detach().to(torch.float64)
    ref = attack_all("revnet", net64, x64, len(x64), max_iter, overshoot, candidates)
    report = {}
    for engine in engines:
        if engine == "revnet":
            continue
        out = attack_all(engine, engine_net(engine, net64), x64, len(x64), max_iter, overshoot, candidates)
        scale = max(1.0, ref[0].abs().max().item())
        err = ((out[0] - ref[0]).abs() / scale / (ATOL + RTOL * (ref[0].abs() / scale))).max().item()
        same = all(torch.equal(a, b) for a, b in zip(out[1:], ref[1:]))
        if not err <= 1 or not same:
            raise EquivalenceError(
                f"DeepFool with engine {engine} differs from revnet's (float64, candidates {candidates}): scaled "
                f"Δx error {err:.3g}; iterations {out[1].tolist()} vs {ref[1].tolist()}; labels "
                f"{out[3].tolist()} vs {ref[3].tolist()}"
            )
        report[engine] = err
    return report


PROFILES: dict[str, dict[str, str]] = {}  # --profile: {model: {engine: table}}


def profile_run(fn, device: torch.device) -> str:
    """The top operators by self time of one run of ``fn`` (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    fn()  # warm
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        fn()
        synchronize(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=12)


def peak_mib(fn, device: torch.device) -> Optional[float]:
    """CUDA: ``max_memory_allocated`` above the allocation before one run of ``fn``; ``None`` on the CPU."""
    if device.type != "cuda":
        return None
    memory = PeakMemory(device)
    memory.start()
    fn()
    return memory.peak_bytes() / MiB


def _norms(delta: torch.Tensor) -> torch.Tensor:
    return delta.detach().float().flatten(1).norm(dim=1)


def norm_ratio(delta: torch.Tensor, ref: torch.Tensor) -> Optional[float]:
    """Median over images of ‖Δx_peer‖ / ‖Δx_revnet‖ (images where revnet's is 0 are left out)."""
    a, b = _norms(delta), _norms(ref)
    keep = b > 0
    return (a[keep] / b[keep]).median().item() if keep.any() else None


def amp_change(reference, amp, x: torch.Tensor) -> dict[str, Any]:
    """How mixed precision changes DeepFool against the full-precision run on the same images."""
    norm_x = x.flatten(1).norm(dim=1)
    rho_ref = (reference[0].float().flatten(1).norm(dim=1) / norm_x).mean().item()
    rho_amp = (amp[0].float().flatten(1).norm(dim=1) / norm_x).mean().item()
    rel = abs(rho_amp - rho_ref) / max(abs(rho_ref), 1e-30)
    iters = (amp[1] != reference[1]).double().mean().item()
    labels = (amp[3] != reference[3]).double().mean().item()
    success = (amp[2] != reference[2]).double().mean().item()
    return {"rho_fp": rho_ref, "rho_amp": rho_amp, "rho_rel_change": rel, "iterations_differ_frac": iters,
            "labels_differ_frac": labels, "success_differ_frac": success,
            "beyond_tolerance": bool(rel > AMP_TOLERANCE or success > 0)}


def run_config(args, device, dtype, autocast, net, x, batch_size, candidates, label: dict,
               peers: Optional[dict[str, Any]] = None) -> list[dict[str, Any]]:
    """Every engine (and the batched peers, e.g. foolbox) on all of ``x``, timed interleaved; one row each.
    ``peers``: ``{name: attack}`` with ``attack(x) -> (Δx, fooled)``, or ``{name: "reason"}`` if missing."""
    where = ", ".join(f"{k} {v}" for k, v in label.items() if k != "shape")
    outputs: dict[str, Any] = {}
    fns: dict[str, Any] = {}
    for engine in args.engines:
        enet = engine_net(engine, net)

        def fn(enet=enet, engine=engine):
            with autocast() if autocast is not None else contextlib.nullcontext():
                outputs[engine] = attack_all(engine, enet, x, batch_size, args.max_iter, args.overshoot, candidates)

        fns[engine] = fn
    for chunk in (args.class_chunks if "revnet" in args.engines else []):
        def chunk_fn(chunk=chunk):
            with autocast() if autocast is not None else contextlib.nullcontext():
                outputs[f"revnet/chunk{chunk}"] = attack_all("revnet", net, x, batch_size, args.max_iter,
                                                              args.overshoot, candidates, chunk)

        fns[f"revnet/chunk{chunk}"] = chunk_fn
    missing_peers = {}
    for name, attack in (peers or {}).items():
        if isinstance(attack, str):
            missing_peers[name] = attack
            continue

        def peer_fn(attack=attack, name=name):
            parts = [attack(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
            outputs[name] = (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))

        fns[name] = peer_fn
    if getattr(args, "profile", False) and "model" in label:
        PROFILES[label["model"]] = {name: profile_run(fn, device) for name, fn in fns.items()}
    try:
        times = interleaved(fns, rounds=args.repeats, budget_s=args.time_budget, warmup=args.warmup,
                            device=device)
    except Exception as exc:  # noqa: BLE001 - e.g. out of memory: reported, not fatal
        print(f"  {where} FAILED: {exc!r}", flush=True)
        return [{**label, "engine": name, "error": repr(exc)} for name in fns]
    ref = outputs.get("revnet")
    rows = []
    for name, fn in fns.items():
        timing = summarize(times[name])
        out = outputs[name]
        row = {**label, "engine": name, **timing, "images": len(x), "images_per_s": len(x) / timing["median_s"],
               "median_norm": _norms(out[0]).median().item(),
               "fooling_rate": (out[1] if name in (peers or {}) else out[2]).double().mean().item(),
               "peak_mib": peak_mib(fn, device)}
        if name not in (peers or {}):
            row["mean_iterations"] = out[1].double().mean().item()
        if ref is not None and name != "revnet":
            row["revnet_speedup"] = spread([t / r for t, r in zip(times[name], times["revnet"])])
            row["norm_ratio"] = norm_ratio(out[0], ref[0])
        if autocast is not None and name in args.engines:  # the same engine without autocast, same images
            full = attack_all(name, engine_net(name, net), x, batch_size, args.max_iter, args.overshoot, candidates)
            row["amp_vs_full"] = amp_change(full, out, x)
        rows.append(row)
        speed = row.get("revnet_speedup", {}).get("median")
        print(f"  {where} {name:12s} {row['images_per_s']:10.1f} images/s (median {timing['median_s']:.3f} s, "
              f"IQR {timing['iqr_s']:.3f}, n={timing['repeats']})"
              + (f", revnet {speed:.2f}x faster" if speed else ""), flush=True)
    for name, reason in missing_peers.items():
        rows.append({**label, "engine": name, "missing": reason})
        print(f"  {where} {name:12s} {reason}", flush=True)
    return rows


def peer_attacks(args, net, num_classes: int, pre: Optional[dict]) -> dict[str, Any]:
    """The peers for :func:`run_config`: ``{name: attack}``, or ``{name: "not installed (...)"}``."""
    out: dict[str, Any] = {}
    plain = engine_net("loop", net)
    if "foolbox" in args.peers:
        out["foolbox"] = missing("foolbox") or foolbox_attack(plain, args.max_iter, args.overshoot, num_classes)
    if "torchattacks" in args.peers and pre is None:
        out["torchattacks"] = "not run (its [0, 1] clamp needs pixel images; these are random N(0, 1) inputs)"
    elif "torchattacks" in args.peers:
        out["torchattacks"] = missing("torchattacks") or torchattacks_attack(
            plain, args.max_iter, args.overshoot, float(pre["scale"]) * 255.0, pre["mean"].to(next(plain.parameters())))
    return out


def main(args: argparse.Namespace) -> dict[str, Any]:
    for name in ("num_images", "batch_size", "scaling_batch", "max_iter", "repeats", "check_batch"):
        if getattr(args, name) < 1:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be at least 1")
    if args.amp and args.dtype != "float32":
        raise SystemExit("error: --amp needs --dtype float32")
    device = resolve_device(args.device)
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    dtype = getattr(torch, args.dtype)
    amp_dtype = (args.amp_dtype or ("float16" if device.type == "cuda" else "bfloat16")) if args.amp else None
    autocast = amp_context(device, amp_dtype)
    name = "deepfool" + ("-cuda" if device.type == "cuda" else "") + ("-amp" if args.amp else "")
    resolved = {**vars(args), "device": str(device), "threads": threads, "amp_dtype": amp_dtype, "run_name": name}
    print("configuration:\n" + "\n".join(f"  {k}: {v}" for k, v in sorted(resolved.items())), flush=True)
    machine = machine_info(device, threads)
    report: dict[str, Any] = {"name": name, "config": resolved, "machine": machine,
                              "timing_method": f"interleaved rounds in one process: {args.warmup} warm-up run(s) of "
                                               f"each engine, then up to {args.repeats} rounds (budget "
                                               f"{args.time_budget:g} s, at least {MIN_ROUNDS}), each running every "
                                               "engine once in alternating order"
                                               + ("; CUDA synchronised" if device.type == "cuda" else ""),
                              "equivalence": {}, "mnist": [], "scaling": []}

    if "mnist" in args.parts:
        refs = reference_checkpoints(args, [a for a in args.models if a not in RANDOM_SPECS])
        report["references"] = refs
        for arch in args.models:
            if arch in RANDOM_SPECS:  # random weights and images; torchattacks' [0, 1] box does not apply
                print(f"{arch}: random weights, {args.num_images} random N(0, 1) images", flush=True)
                net, x, _ = random_batch(arch, args.num_images, device, dtype, seed=args.seed)
                pre = None
            else:
                print(f"reference {arch}: {refs[arch]['origin']}", flush=True)
                net, x, _ = load_batch(refs[arch]["path"], args.num_images, device, dtype, split="test")
                pre = models.load(refs[arch]["path"], map_location="cpu")[1]["preprocess"]
            report["equivalence"][f"{arch}"] = check_engines(net, x[:args.check_batch], args.engines, args.max_iter,
                                                              args.overshoot, None)
            print(f"equivalence {arch}: every engine's DeepFool equals revnet's (float64)", flush=True)
            label = {"model": arch, "shape": [args.batch_size, *x.shape[1:]]}
            with torch.no_grad():
                num_classes = net(x[:1]).shape[1]
            rows = run_config(args, device, dtype, autocast, net, x, args.batch_size, None, label,
                              peers=peer_attacks(args, net, num_classes, pre))
            report["mnist"] += rows

    if "scaling" in args.parts:
        gen = torch.Generator().manual_seed(args.seed)
        x = torch.randn(args.scaling_batch, 1, 28, 28, generator=gen).to(device=device, dtype=dtype)
        for num_classes in args.classes:
            net = scaling_net(num_classes, args.seed).to(device=device, dtype=dtype)
            cands = [None] + ([args.candidates] if 2 <= args.candidates < num_classes else [])
            for cand in cands:
                key = f"C{num_classes}-q{cand or 'all'}"
                report["equivalence"][f"scaling-{key}"] = check_engines(
                    net, x[:args.check_batch], args.engines, args.max_iter, args.overshoot, cand)
                report["scaling"] += run_config(args, device, dtype, autocast, net, x, len(x), cand,
                                                {"classes": num_classes, "candidates": cand or num_classes})
        print("equivalence scaling: every engine's DeepFool equals revnet's (float64)", flush=True)

    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(out_dir / f"{name}.json", json.dumps(report, indent=2, default=str) + "\n")
    write_text(out_dir / f"{name}.md", markdown(report))
    if getattr(args, "profile", False) and PROFILES:
        text = [f"# torch.profiler: one run of each engine and peer (`{machine['command']}`)", ""]
        for model, tables in PROFILES.items():
            for engine, table in tables.items():
                text += [f"## {model}, {engine}", "", "```", table, "```", ""]
        write_text(out_dir / f"{name}-profile.md", "\n".join(text))
    print(f"wrote {out_dir / name}.json, .md", flush=True)
    return report


if __name__ == "__main__":
    main(get_args_parser().parse_args())
