"""The input-gradient-norm training step (``finetune.py --method gradnorm``): revnet's explicit reverse against
autograd's double backprop (``torch.autograd.grad(..., create_graph=True)``).

One step is ``CE + λ·meanᵢ‖∇ₓ CEᵢ‖²`` and its backward to the weights, on the MNIST MLP and LeNet:

* ``revnet``: ``logits, tape = net.trace(x)``; ``∇ₓ CEᵢ = net.reverse(softmax(z) − onehot(y), tape)`` kept in the
  graph (``train/methods/grad_norm.py``);
* ``autograd``: the same network's forward, ``torch.autograd.grad(CE summed, x, create_graph=True)``.

First a float64 check: both give the same loss and weight gradients (relative error ≤ 1e-9), or nothing is timed.
Then interleaved rounds (``benchmarks/rounds.py``) in float32 on one batch; reported: the median time of each and
the median of the per-round ratios revnet / autograd (< 1: revnet faster).

Example::

    python benchmarks/gradnorm.py --output benchmarks/results      # writes gradnorm.{json,md}
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from revnet_app import models
from revnet_app.benchmarks import SCRATCH
from revnet_app.benchmarks.harness import git_commit, machine_info, write_text
from revnet_app.benchmarks.rounds import interleaved, round_ratios
from revnet_app.train.methods.grad_norm import input_gradient_penalty

LMBDA = 1.0


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--models", nargs="+", default=["mlp", "lenet"], choices=["mlp", "lenet"], help="networks")
    p.add_argument("--batch-size", type=int, default=100, help="images per step")
    p.add_argument("--rounds", type=int, default=20, help="interleaved rounds per model")
    p.add_argument("--budget", type=float, default=60.0, help="seconds of rounds per model at most (at least 3)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--output", default=SCRATCH,
                   help="folder for gradnorm.* (a scratch folder by default; --output benchmarks/results updates "
                        "the committed results)")
    return p


def revnet_step(net, x, y):
    logits, sq = input_gradient_penalty(net, x, y)
    loss = F.cross_entropy(logits, y) + LMBDA * sq.mean()
    return loss, torch.autograd.grad(loss, list(net.parameters()))


def autograd_step(net, x, y):
    x = x.detach().requires_grad_(True)
    logits = net(x)
    (g,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), x, create_graph=True)
    loss = F.cross_entropy(logits, y) + LMBDA * g.flatten(1).pow(2).sum(1).mean()
    return loss, torch.autograd.grad(loss, list(net.parameters()))


def check_float64(arch: str, batch: int) -> float:
    """The largest relative difference between the two steps' loss and weight gradients in float64."""
    torch.manual_seed(0)
    net = models.build(arch).double().eval()
    x, y = torch.randn(batch, 1, 28, 28, dtype=torch.float64), torch.randint(0, 10, (batch,))
    (la, ga), (lb, gb) = revnet_step(net, x, y), autograd_step(net, x, y)
    errs = [((la - lb).abs() / lb.abs()).item()] + [((a - b).norm() / b.norm()).item() for a, b in zip(ga, gb)]
    return max(errs)


def measure(arch: str, args: argparse.Namespace) -> dict:
    err = check_float64(arch, 8)
    if not err <= 1e-9:
        raise SystemExit(f"error: {arch}: revnet's and autograd's gradient-norm steps differ in float64 (relative "
                         f"{err:.3g}); nothing timed.")
    torch.manual_seed(0)
    net = models.build(arch).eval()
    x, y = torch.randn(args.batch_size, 1, 28, 28), torch.randint(0, 10, (args.batch_size,))
    fns = {"revnet": lambda: revnet_step(net, x, y), "autograd": lambda: autograd_step(net, x, y)}
    times = interleaved(fns, rounds=args.rounds, budget_s=args.budget, warmup=2)
    return {"model": arch, "batch": args.batch_size, "float64_max_rel_error": err,
            **{f"{k}_ms": statistics.median(t) * 1e3 for k, t in times.items()},
            "revnet_over_autograd": round_ratios(times, "revnet", "autograd")}


def markdown(rows: list[dict], info: dict) -> str:
    lines = ["# Input-gradient-norm step: revnet's reverse vs autograd's double backprop\n",
             f"Command: `python benchmarks/gradnorm.py {' '.join(sys.argv[1:])}` (commit {info['commit']}; "
             f"{info['machine'].get('cpu', '')}, {info['machine'].get('threads', '')} threads). One step = CE + "
             "λ·mean‖∇ₓCEᵢ‖² and its backward to the weights, float32, interleaved rounds; the float64 check "
             "ran first.\n",
             "| model | batch | float64 max rel. error | revnet (ms) | autograd (ms) | revnet / autograd, median [IQR] "
             "(rounds) |", "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        q = r["revnet_over_autograd"]
        lines.append(f"| {r['model']} | {r['batch']} | {r['float64_max_rel_error']:.1e} | {r['revnet_ms']:.2f} | "
                     f"{r['autograd_ms']:.2f} | {q['median']:.3f} [{q['q25']:.3f}, {q['q75']:.3f}] ({q['n']}) |")
    return "\n".join(lines) + "\n"


def main(args: argparse.Namespace) -> list[dict]:
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [measure(arch, args) for arch in args.models]
    info = {"commit": git_commit(), "machine": machine_info(torch.device("cpu"), torch.get_num_threads())}
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "gradnorm.json", json.dumps({"rows": rows, "config": vars(args), **info}, indent=1) + "\n")
    text = markdown(rows, info)
    write_text(out / "gradnorm.md", text)
    print(text)
    return rows


if __name__ == "__main__":
    main(get_args_parser().parse_args())
