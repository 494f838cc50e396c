"""What limits revnet's evaluation DeepFool on LeNet on the CPU: a profile with FLOP counts, the kernels that
dominate it against the alternatives that compute the same thing, and the machine's matrix-product rate.

Example::

    python benchmarks/deepfool_limits.py --output benchmarks/results     # about 2 minutes on 2 cores

Three parts, on the configuration of ``benchmarks/deepfool.py``'s LeNet row (the first ``--num-images``
embedded MNIST test images, batches of ``--batch-size``, 50 iterations, overshoot 0.02, float32; the reference
of ``step.py``/``deepfool.py``, cached in ``--cache-dir``):

1. ``torch.profiler`` with ``with_flops=True`` over one attack of all images: the operators by self time, their
   share, their FLOPs where the profiler counts them (convolutions and matrix products) and the rate.
2. The dominant kernels against alternatives that compute the same result, interleaved rounds at the shapes of
   the first DeepFool iteration (one choosing chunk: ``CPU_CHOICE_ROWS`` = 500 rows for 100 images): conv1's and
   conv2's reverse (ATen's im2col kernel, oneDNN's transposed convolution, a convolution with the flipped kernel,
   a matrix product then ``F.fold``), the forward max pooling (with indices, or a reshape and ``max``), and the
   unpooling (``scatter_add_`` into zeros, ``F.max_unpool2d``, a one-hot mask).
3. The machine's float32 rate on one large matrix product (2048³), the ceiling for convolutions.

Results: ``--output``/``deepfool-limits.{json,md}``.
"""

from __future__ import annotations

import argparse
import sys
import json
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from revnet_app.benchmarks import SCRATCH
from revnet_app.benchmarks.harness import machine_info, write_text
from revnet_app.benchmarks.rounds import interleaved, round_ratios
from revnet_app.benchmarks.step_problems import load_batch, reference_checkpoints
import revnet


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--num-images", type=int, default=500, help="first N embedded MNIST test images")
    p.add_argument("--batch-size", type=int, default=100, help="images per attack batch")
    p.add_argument("--rows", type=int, default=500, help="reverse rows of the kernel comparison (one choosing "
                   "chunk of the first iteration)")
    p.add_argument("--rounds", type=int, default=15, help="interleaved rounds per kernel comparison")
    p.add_argument("--cache-dir", default="runs/references", help="where the cached reference LeNet lives")
    p.add_argument("--ref-epochs", type=int, default=10, help="epochs of the reference if it is trained here")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--quick", action="store_true", help="tiny sizes, 3 rounds (for the tests)")
    p.add_argument("--output", default=SCRATCH, help="folder for deepfool-limits.* (a scratch folder by default; "
                   "--output benchmarks/results updates the committed results)")
    return p


def profile_attack(net, x: torch.Tensor, batch_size: int) -> list[dict]:
    """One DeepFool over all of ``x`` under the profiler: rows ``{name, calls, ms, share, gflop, gflops}``."""
    from torch.profiler import ProfilerActivity, profile

    def attack():
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                revnet.attacks.deepfool(net, x[i:i + batch_size], max_iter=50, overshoot=0.02)

    attack()  # warm-up (oneDNN primitives, allocator)
    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        attack()
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    rows = []
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:12]:
        ms = e.self_cpu_time_total / 1e3
        gflop = (e.flops or 0) / 1e9
        rows.append({"name": e.key, "calls": e.count, "ms": ms, "share": e.self_cpu_time_total / total,
                     "gflop": gflop or None, "gflops": (gflop / (ms / 1e3)) if gflop else None})
    return rows, total / 1e3


def kernel_sets(rows: int, images: int) -> dict[str, dict]:
    """``{comparison: {"what", "fns": {name: fn}, "check": max difference to the first}}`` at the first
    iteration's shapes of LeNet (conv1 20@5×5 on 28×28, pool 2, conv2 50@5×5, pool 2)."""
    g = torch.Generator().manual_seed(0)
    sets = {}
    # conv1's reverse: (rows, 20, 24, 24) -> (rows, 1, 28, 28)
    v1, w1 = torch.randn(rows, 20, 24, 24, generator=g), torch.randn(20, 1, 5, 5, generator=g)
    w1_flipped = w1.flip(2, 3).transpose(0, 1).contiguous()
    w1_cols = w1.reshape(20, 25).t().contiguous()
    one, zero = [1, 1], [0, 0]
    sets["conv1 reverse"] = {"what": f"{rows} rows (M, 20, 24, 24) -> (M, 1, 28, 28)",
                             "flop": 2 * rows * 20 * 24 * 24 * 25, "fns": {
        "im2col slow_conv_transpose2d (revnet)": lambda: torch.ops.aten.slow_conv_transpose2d(
            v1, w1, [5, 5], None, one, zero, zero, one),
        "matmul + F.fold": lambda: F.fold(torch.matmul(w1_cols, v1.reshape(rows, 20, 576)), (28, 28), 5),
        "oneDNN conv_transpose2d": lambda: F.conv_transpose2d(v1, w1),
        "conv2d, flipped kernel, padding 4": lambda: F.conv2d(v1, w1_flipped, padding=4)}}
    # conv2's reverse: (rows, 50, 8, 8) -> (rows, 20, 12, 12)
    v2, w2 = torch.randn(rows, 50, 8, 8, generator=g), torch.randn(50, 20, 5, 5, generator=g)
    w2_flipped = w2.flip(2, 3).transpose(0, 1).contiguous()
    sets["conv2 reverse"] = {"what": f"{rows} rows (M, 50, 8, 8) -> (M, 20, 12, 12)",
                             "flop": 2 * rows * 50 * 8 * 8 * 20 * 25, "fns": {
        "oneDNN conv_transpose2d (revnet)": lambda: F.conv_transpose2d(v2, w2),
        "conv2d, flipped kernel, padding 4": lambda: F.conv2d(v2, w2_flipped, padding=4),
        "im2col slow_conv_transpose2d": lambda: torch.ops.aten.slow_conv_transpose2d(
            v2, w2, [5, 5], None, one, zero, zero, one)}}
    # pool1 forward on the images, and its reverse for rows // images rows per image
    n, k = images, max(1, rows // images)
    x = torch.randn(n, 20, 24, 24, generator=g)
    _, index = F.max_pool2d(x, 2, 2, return_indices=True)
    local = x.view(n, 20, 12, 2, 12, 2).permute(0, 1, 2, 4, 3, 5).reshape(n, 20, 12, 12, 4).max(-1).indices
    mask = F.one_hot(local, 4).to(x.dtype)
    sets["pool1 forward"] = {"what": f"{n} images (N, 20, 24, 24) -> (N, 20, 12, 12) and the indices", "fns": {
        "max_pool2d_with_indices (revnet)": lambda: F.max_pool2d(x, 2, 2, return_indices=True)[0],
        "reshape + max(-1)": lambda: x.view(n, 20, 12, 2, 12, 2).permute(0, 1, 2, 4, 3, 5).reshape(
            n, 20, 12, 12, 4).max(-1).values}}
    v = torch.randn(n * k, 20, 12, 12, generator=g)

    def scatter():
        r = v.reshape(n, k, 20, 144)
        return r.new_zeros(n, k, 20, 576).scatter_add_(3, index.flatten(2).unsqueeze(1).expand_as(r), r).reshape(
            n * k, 20, 24, 24)

    def one_hot():
        r = v.reshape(n, k, 20, 12, 12, 1) * mask.unsqueeze(1)
        return r.reshape(n, k, 20, 12, 12, 2, 2).permute(0, 1, 2, 3, 5, 4, 6).reshape(n * k, 20, 24, 24)

    sets["pool1 reverse"] = {"what": f"{n * k} rows (M, 20, 12, 12) -> (M, 20, 24, 24)", "fns": {
        "scatter_add_ into zeros (revnet)": scatter,
        "F.max_unpool2d (indices expanded)": lambda: F.max_unpool2d(
            v, index.unsqueeze(1).expand(n, k, 20, 12, 12).reshape(n * k, 20, 12, 12), 2, 2, output_size=(24, 24)),
        "one-hot mask multiply": one_hot}}
    for spec in sets.values():
        outs = [fn() for fn in spec["fns"].values()]
        spec["check"] = max(float((o - outs[0]).abs().max()) for o in outs[1:])
    return sets


def matmul_rate(size: int, rounds: int) -> float:
    """GFLOP/s of one float32 ``size``³ matrix product (median of ``rounds``)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    times = interleaved({"mm": lambda: a @ b}, rounds=rounds, budget_s=10, warmup=2)["mm"]
    return 2 * size ** 3 / sorted(times)[len(times) // 2] / 1e9


def main(argv=None) -> dict:
    args = get_args_parser().parse_args(argv)
    if args.quick:
        args.num_images, args.batch_size, args.rows, args.rounds, args.ref_epochs = 20, 10, 20, 3, 1
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    ref_args = SimpleNamespace(reference=[], cache_dir=args.cache_dir, ref_epochs=args.ref_epochs, ref_lr=0.01,
                               seed=0, device="cpu")
    ref = reference_checkpoints(ref_args, ["lenet"])["lenet"]
    net, x, _ = load_batch(ref["path"], args.num_images, torch.device("cpu"), torch.float32, split="test")
    profile_rows, profile_ms = profile_attack(net, x, args.batch_size)
    comparisons = []
    for label, spec in kernel_sets(args.rows, args.batch_size).items():
        times = interleaved(spec["fns"], rounds=args.rounds, budget_s=30, warmup=2)
        first = next(iter(spec["fns"]))
        flop = spec.get("flop")
        comparisons.append({"layer": label, "shape": spec["what"], "max_difference": spec["check"], "kernels": [
            {"kernel": name, "median_ms": 1e3 * sorted(t)[len(t) // 2],
             "gflops": flop / sorted(t)[len(t) // 2] / 1e9 if flop else None,
             "ratio": round_ratios(times, name, first)} for name, t in times.items()]})
    rate = matmul_rate(256 if args.quick else 2048, args.rounds)
    report = {"command": "deepfool_limits.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "machine": machine_info(torch.device("cpu"), threads), "reference": ref["origin"],
              "config": vars(args), "profile_ms": profile_ms, "profile": profile_rows,
              "kernels": comparisons, "matmul_gflops": rate}
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "deepfool-limits.json", json.dumps(report, indent=2, default=str) + "\n")
    write_text(out / "deepfool-limits.md", markdown(report))
    print(markdown(report))
    return report


def markdown(r: dict) -> str:
    m, c = r["machine"], r["config"]
    lines = ["# What limits evaluation DeepFool on LeNet (CPU)", "",
             f"- machine: {m['cpu']}, {m['threads']} threads, torch {m['torch']}, git {m['git_commit']}",
             f"- command: `{r['command']}`; reference: {r['reference']}",
             f"- attack: {c['num_images']} embedded MNIST test images, batches of {c['batch_size']}, 50 iterations, "
             "float32", "",
             f"## Profile of one attack ({r['profile_ms']:.0f} ms of self time in all)", "",
             "| operator | calls | self ms | share | GFLOP | GFLOP/s |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for p in r["profile"]:
        gflop = "" if p["gflop"] is None else f"{p['gflop']:.3f}"
        gflops = "" if p["gflops"] is None else f"{p['gflops']:.0f}"
        lines.append(f"| {p['name']} | {p['calls']} | {p['ms']:.1f} | {100 * p['share']:.1f}% | {gflop} | {gflops} |")
    lines += ["", "(The profiler counts FLOPs of matrix products only; the convolutions' rates are in the next "
              "table.)", "", f"Machine ceiling: a 2048³ float32 matrix product runs at **{r['matmul_gflops']:.0f} "
              "GFLOP/s** here (a multiply-add is 2 FLOPs, in both tables).", "",
              f"## The dominant kernels against alternatives ({c['rounds']} interleaved rounds)", "",
              "| layer | shape | kernel | median ms | GFLOP/s | ÷ revnet's kernel: median (IQR) |",
              "| --- | --- | --- | ---: | ---: | ---: |"]
    for comp in r["kernels"]:
        for k in comp["kernels"]:
            q = k["ratio"]
            rate = "" if k["gflops"] is None else f"{k['gflops']:.0f}"
            lines.append(f"| {comp['layer']} | {comp['shape']} | {k['kernel']} | {k['median_ms']:.2f} | {rate} | "
                         f"{q['median']:.2f} ({q['q25']:.2f}–{q['q75']:.2f}) |")
    lines += ["", "Every alternative computes the same result as revnet's kernel (largest differences: "
              + ", ".join(f"{comp['layer']} {comp['max_difference']:.1e}" for comp in r["kernels"]) + ").", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
