"""The average pooling's reverse where the windows tile the input: the general separable product
(``einsum`` with the two averaging matrices) against the element-wise spread that ``revnet.AvgPool2d`` and
``revnet.AdaptiveAvgPool2d`` use there, on the shapes of the CIFAR ConvNet, NIN and ResNet-18 (9 candidate rows
per image, as in DeepFool's choosing reverse).

Example::

    python benchmarks/pool_reverse.py          # writes benchmarks/results/pool-reverse.{json,md}

The two run interleaved (``benchmarks/rounds.py``) on the same random rows, float32; reported: the median (IQR)
of each and the median of the per-round ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from revnet_app.benchmarks import SCRATCH

ROOT = Path(__file__).resolve().parents[1]

from revnet_app.benchmarks.rounds import interleaved, round_ratios  # noqa: E402
from revnet_app.benchmarks.harness import machine_info, write_text  # noqa: E402
from revnet.layers import pooling  # noqa: E402

# (label, rows, channels, output size, window)
SHAPES = [
    ("ConvNet pool2 (32 ch, 16→8), 128 images × 9 rows", 1152, 32, 8, 2),
    ("ConvNet pool3 (64 ch, 8→4), 128 images × 9 rows", 1152, 64, 4, 2),
    ("NIN pool2 (192 ch, 16→8), 128 images × 9 rows", 1152, 192, 8, 2),
    ("ResNet-18 global average (512 ch, 7→1), 32 images × 9 rows", 288, 512, 1, 7),
]


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--rounds", type=int, default=15, help="interleaved rounds per shape")
    p.add_argument("--quick", action="store_true", help="the first shape only, 3 rounds (for the tests)")
    p.add_argument("--output", default=SCRATCH, help="folder for pool-reverse.* (default %(default)s, a scratch folder; pass --output benchmarks/results to update the committed results)")
    return p


def measure(spec, rounds: int) -> dict:
    label, rows, channels, out, k = spec
    v = torch.randn(rows, channels, out, out, generator=torch.Generator().manual_seed(0))
    size = out * k
    eye = torch.eye(out).repeat_interleave(k, dim=1) / k  # (O, H): 1/k inside each window
    fns = {"einsum": lambda: pooling._transposed_average(v, eye, eye),
           "spread": lambda: pooling._spread(v, (size, size), 1.0 / (k * k))}
    diff = (fns["einsum"]() - fns["spread"]()).abs().max().item()
    times = interleaved(fns, rounds=rounds, budget_s=60, warmup=2)
    ratio = round_ratios(times, "spread", "einsum")
    return {"shape": label, "max_abs_difference": diff,
            **{f"{k}_ms": statistics.median(t) * 1e3 for k, t in times.items()}, "spread_over_einsum": ratio}


def main(args: argparse.Namespace) -> dict:
    shapes = SHAPES[:1] if args.quick else SHAPES
    rounds = 3 if args.quick else args.rounds
    results = [measure(spec, rounds) for spec in shapes]
    info = machine_info(torch.device("cpu"), torch.get_num_threads())
    report = {"machine": info, "command": "python benchmarks/pool_reverse.py" + (" --quick" if args.quick else ""),
              "rounds": rounds, "results": results}
    lines = ["# Average pooling's reverse where the windows tile the input: einsum vs element-wise spread", "",
             f"- machine: {info['cpu']} ({info['cpu_count']} logical cores), torch {info['torch']}, "
             f"{info['threads']} threads, git {info['git_commit']}",
             f"- command: `{report['command']}`; {rounds} interleaved rounds, float32, random rows", "",
             "| shape | einsum ms | spread ms | spread / einsum: median (IQR) | max difference |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for r in results:
        q = r["spread_over_einsum"]
        lines.append(f"| {r['shape']} | {r['einsum_ms']:.2f} | {r['spread_ms']:.2f} | {q['median']:.2f} "
                     f"({q['q25']:.2f}–{q['q75']:.2f}) | {r['max_abs_difference']:.1e} |")
    out = Path(args.output)
    write_text(out / "pool-reverse.json", json.dumps(report, indent=2) + "\n")
    write_text(out / "pool-reverse.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return report


if __name__ == "__main__":
    main(get_args_parser().parse_args())
