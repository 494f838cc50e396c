"""Which kernel should a Conv2d's reverse (a transposed convolution) use on the CPU? oneDNN's (``F.conv_transpose2d``)
against ATen's im2col/GEMM kernel (``torch.ops.aten.slow_conv_transpose2d``) and against oneDNN's on
``channels_last`` rows (with the layout conversions in and out), on the layer shapes of the
benchmarked networks, with and without a backward (the differentiable DeepFool row).

Example::

    python benchmarks/conv_kernels.py                  # writes benchmarks/results/conv-kernels.{json,md}

For every layer the three run interleaved in one process (A B A B ..., ``--repeats`` rounds after
``--warmup``), on the same random rows; reported: the median and interquartile range of each and the median of
the per-round ratios over oneDNN's. ``revnet.Conv2d.reverse`` uses the im2col kernel where this table says it
is faster: on the CPU for one input channel (see ``revnet/layers/conv.py``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from revnet_app.benchmarks import SCRATCH
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]

from revnet_app.benchmarks.harness import machine_info, quartiles, write_text  # noqa: E402

# (label, C_in, C_out, kernel, H_in, stride, padding, rows)
LAYERS = [
    ("LeNet conv1, 100 rows", 1, 20, 5, 28, 1, 0, 100),
    ("LeNet conv1, 200 rows (one choosing chunk)", 1, 20, 5, 28, 1, 0, 200),
    ("LeNet conv2, 200 rows", 20, 50, 5, 12, 1, 0, 200),
    ("CIFAR ConvNet conv1, 128 rows", 3, 32, 5, 32, 1, 2, 128),
    ("CIFAR ConvNet conv2, 128 rows", 32, 32, 5, 16, 1, 2, 128),
    ("ResNet-18 32 px conv1, 128 rows", 3, 64, 3, 32, 1, 1, 128),
]


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--repeats", type=int, default=15, help="interleaved rounds per layer and pass")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls of each kernel first")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--quick", action="store_true", help="the first layer only, 3 rounds (for the tests)")
    p.add_argument("--output", default=SCRATCH, help="folder for conv-kernels.* (default %(default)s, a scratch folder; pass --output benchmarks/results to update the committed results)")
    return p


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure_layer(spec, repeats: int, warmup: int) -> dict:
    label, c_in, c_out, k, h, s, p, rows = spec
    gen = torch.Generator().manual_seed(0)
    h_out = (h + 2 * p - k) // s + 1
    out_pad = (h + 2 * p - k) % s
    w = torch.randn(c_out, c_in, k, k, generator=gen).requires_grad_()
    v = torch.randn(rows, c_out, h_out, h_out, generator=gen).requires_grad_()
    kernels = {
        "onednn": lambda: F.conv_transpose2d(v, w, None, s, p, out_pad),
        "im2col": lambda: torch.ops.aten.slow_conv_transpose2d(v, w, [k, k], None, [s, s], [p, p],
                                                                [out_pad, out_pad], [1, 1]),
        # channels_last rows, with the conversions in and out (the neighbouring reverses work on NCHW rows)
        "channels_last": lambda: F.conv_transpose2d(v.contiguous(memory_format=torch.channels_last), w, None, s, p,
                                                    out_pad).contiguous(),
    }
    with torch.no_grad():
        diff = (kernels["onednn"]() - kernels["im2col"]()).abs().max().item()
    out = {"layer": label, "shape": {"c_in": c_in, "c_out": c_out, "kernel": k, "h_in": h, "stride": s,
                                      "padding": p, "rows": rows}, "max_abs_difference": diff}
    for mode in ("reverse", "reverse+backward"):
        def run(name):
            if mode == "reverse":
                with torch.no_grad():
                    return kernels[name]()
            kernels[name]().square().sum().backward()

        for name in kernels:
            for _ in range(warmup):
                run(name)
        times = {name: [] for name in kernels}
        for i in range(repeats):
            for name in (list(kernels) if i % 2 == 0 else list(kernels)[::-1]):
                times[name].append(_time(lambda: run(name)))
        out[mode] = {name: {"median_ms": statistics.median(t) * 1e3,
                            "iqr_ms": [q * 1e3 for q in quartiles(t)]} for name, t in times.items()}
        for name in ("im2col", "channels_last"):
            ratios = [a / b for a, b in zip(times[name], times["onednn"])]
            out[mode][f"{name}_over_onednn"] = {"median": statistics.median(ratios), "iqr": list(quartiles(ratios))}
    return out


def markdown(report: dict) -> str:
    lines = ["# Conv2d reverse on the CPU: oneDNN vs im2col transposed convolution", "",
             f"- machine: {report['machine']['cpu']} ({report['machine']['cpu_count']} logical cores), "
             f"torch {report['machine']['torch']}, {report['machine']['threads']} threads, git {report['machine']['git_commit']}",
             f"- command: `{report['command']}`",
             f"- {report['repeats']} interleaved rounds per layer and pass after {report['warmup']} warm-up calls; "
             "random rows; float32", "",
             "| layer | pass | oneDNN ms (IQR) | im2col ms (IQR) | im2col / oneDNN (IQR of the round ratios) | "
             "channels_last ms (IQR) | channels_last / oneDNN (IQR) |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in report["layers"]:
        for mode in ("reverse", "reverse+backward"):
            m = r[mode]
            cell = lambda k: f"{m[k]['median_ms']:.2f} ({m[k]['iqr_ms'][0]:.2f}–{m[k]['iqr_ms'][1]:.2f})"  # noqa: E731
            ratio = lambda k: f"{m[k]['median']:.2f} ({m[k]['iqr'][0]:.2f}–{m[k]['iqr'][1]:.2f})"  # noqa: E731
            lines.append(f"| {r['layer']} | {mode} | {cell('onednn')} | {cell('im2col')} | "
                         f"{ratio('im2col_over_onednn')} | {cell('channels_last')} | "
                         f"{ratio('channels_last_over_onednn')} |")
    lines += ["", "channels_last: the rows converted to channels_last before oneDNN's transposed convolution and back "
              "after it (the neighbouring reverses, e.g. the unpooling, index NCHW rows).", "",
              "revnet.Conv2d.reverse takes the im2col kernel on the CPU for one input channel (the rows where it "
              "is faster above) and oneDNN's otherwise; both compute the same transposed convolution "
              f"(largest difference here {max(r['max_abs_difference'] for r in report['layers']):.1e} in float32)."]
    return "\n".join(lines) + "\n"


def main(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    layers = LAYERS[:1] if args.quick else LAYERS
    repeats, warmup = (3, 1) if args.quick else (args.repeats, args.warmup)
    results = []
    for spec in layers:
        print(f"{spec[0]} ...", flush=True)
        results.append(measure_layer(spec, repeats, warmup))
    info = machine_info(torch.device("cpu"), torch.get_num_threads())
    report = {"machine": info, "command": "python benchmarks/conv_kernels.py" + (" --quick" if args.quick else ""),
              "repeats": repeats, "warmup": warmup, "layers": results}
    out = Path(args.output)
    write_text(out / "conv-kernels.json", json.dumps(report, indent=2) + "\n")
    write_text(out / "conv-kernels.md", markdown(report))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main(get_args_parser().parse_args())
