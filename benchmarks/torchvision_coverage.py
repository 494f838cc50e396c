"""Which of torchvision's classification models ``revnet.convert`` reproduces, in float64 (a report, not a test).

Example::

    python benchmarks/torchvision_coverage.py                       # every model, smallest first
    python benchmarks/torchvision_coverage.py --models vit_b_16 swin_t --second-order-max 0

Every model of ``torchvision.models.list_models(module=torchvision.models)`` is built with random weights
(``num_classes=10``), put in eval mode, re-drawn at unit scale (ViT's zero head and ConvNeXt's 1e-6 layer
scale would otherwise hide a wrong rule) and run in its own process with a time limit. For each: whether it
converts (else the one-line refusal), the forward against the model's, the reverse of K random cotangents
against autograd's VJPs (first order), and for models of at most ``--second-order-max`` parameters the
gradients of a loss on the reverse w.r.t. every weight against double backprop. Differences are scaled,
``max|ours − autograd| / max(1, max|autograd|)``. Results: ``--output`` ``torchvision-coverage.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import time
from pathlib import Path
from typing import Any

import torch

from revnet_app.benchmarks import SCRATCH
import torchvision
from torch import nn

import revnet

ROOT = Path(__file__).resolve().parents[1]
F64 = torch.float64
SIZES = {"inception_v3": 75, "googlenet": 64, "alexnet": 64, "squeezenet1_0": 64, "squeezenet1_1": 64}
FIXED = ("vit_", "swin_", "maxvit_")  # built for 224 px (position embeddings, window layouts)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=None, help="model names (default: every classification model)")
    p.add_argument("--classes", type=int, default=2, help="K: random cotangents per sample (default 2)")
    p.add_argument("--second-order-max", type=float, default=3e7,
                   help="check second order only for models of at most this many parameters (default 3e7)")
    p.add_argument("--timeout", type=float, default=600, help="seconds per model before it is reported as timed out")
    p.add_argument("--output", default=SCRATCH, help="folder for the JSON and Markdown (default %(default)s, a scratch folder; pass --output benchmarks/results to update the committed results)")
    return p


def unit_scale(model: nn.Module, seed: int = 0) -> None:
    """Weights ``N(0, 1/fan_in)``, vectors ``1 + 0.5·N(0, 1)``, running statistics near 0 and 1 (float64)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            draw = torch.randn(p.shape, generator=gen, dtype=F64)
            p.copy_(draw / p[0].numel() ** 0.5 if p.dim() >= 2 else 1 + 0.5 * draw)
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=gen, dtype=F64))
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=gen, dtype=F64) + 0.5)


def _scaled(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max|a − b| / max(1, max|b|)`` over the entries where autograd's ``b`` is finite (``inf`` where ``a`` is
    not finite there); :func:`_autograd_nan` counts the others, which a row reports."""
    a, b = a.detach(), b.detach()
    finite = b.isfinite()
    if not bool(a[finite].isfinite().all()):
        return float("inf")
    if not bool(finite.any()):
        return 0.0
    return float((a[finite] - b[finite]).abs().max() / max(1.0, float(b[finite].abs().max())))


def _autograd_nan(grads) -> int:
    """How many entries of autograd's gradients are not finite (torch's double backward of a norm at 0 gives
    NaN, e.g. F.normalize of swin_v2's zero-padded windows, where revnet's rule is finite)."""
    return sum(int((~g.isfinite()).sum()) for g in grads if g is not None)


def second_order_fields(ours, theirs, params) -> dict[str, Any]:
    """A row's second-order entry: the largest scaled difference over the weights (``None`` gradients as zeros),
    and a note where autograd's own gradient has NaN entries (compared on the rest)."""
    out: dict[str, Any] = {}
    if _autograd_nan(theirs):
        out["second_order_note"] = (f"autograd gives NaN at {_autograd_nan(theirs)} weight-gradient entries "
                                    "(norm at 0); compared on the rest")
    out["second_order"] = max(_scaled(a if a is not None else torch.zeros_like(p),
                                      b if b is not None else torch.zeros_like(p))
                              for a, b, p in zip(ours, theirs, params))
    return out


def check(name: str, k: int, second_order_max: float) -> dict[str, Any]:
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, num_classes=10).double().eval()
    unit_scale(model)
    n_params = sum(p.numel() for p in model.parameters())
    size = 224 if name.startswith(FIXED) else SIZES.get(name, 32)
    row: dict[str, Any] = {"model": name, "parameters": n_params, "input": [1, 3, size, size]}
    start = time.perf_counter()
    try:
        net = revnet.convert(model)
        x = torch.randn(1, 3, size, size, dtype=F64, generator=torch.Generator().manual_seed(1))
        y, tape = net.trace(x)
    except revnet.RevnetError as exc:
        return {**row, "converts": False, "error": " ".join(str(exc).split())[:400]}
    xr = x.clone().requires_grad_(True)
    plain = model(xr)
    v = torch.randn(1, k, *y.shape[1:], dtype=F64, generator=torch.Generator().manual_seed(2))
    g = net.reverse(v, tape)
    second = n_params <= second_order_max
    ref = torch.stack([torch.autograd.grad(plain, xr, v[:, j], retain_graph=True, create_graph=second)[0]
                       for j in range(k)], 1)
    row.update(converts=True, forward=_scaled(y, plain), first_order=_scaled(g, ref))
    if second:
        w = torch.randn(g.shape, dtype=F64, generator=torch.Generator().manual_seed(3))
        params = list(model.parameters())
        ours = torch.autograd.grad((w * g).square().sum(), params, allow_unused=True)
        try:
            theirs = torch.autograd.grad((w * ref).square().sum(), params, allow_unused=True)
        except RuntimeError as exc:  # torch has no double backward for some ops (hardsigmoid): first order only
            row["second_order_note"] = " ".join(str(exc).split())[:120]
        else:
            row.update(second_order_fields(ours, theirs, params))
    row["seconds"] = round(time.perf_counter() - start, 1)
    return row


def _worker(check_fn, args: tuple, name: str, queue) -> None:
    try:
        queue.put(check_fn(*args))
    except Exception as exc:  # noqa: BLE001 - reported per model
        queue.put({"model": name, "converts": None, "error": f"{type(exc).__name__}: {' '.join(str(exc).split())[:400]}"})


def run_isolated(check_fn, args: tuple, name: str, timeout: float) -> dict[str, Any]:
    """``check_fn(*args)`` in a fresh process (a crash or a model too big for memory stays one row) with a time
    limit; ``check_fn`` must be importable (a module-level function)."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_worker, args=(check_fn, args, name, queue))
    proc.start()
    proc.join(timeout)
    if proc.is_alive():
        proc.kill()
        return {"model": name, "converts": None, "error": f"timed out after {timeout:.0f} s"}
    return queue.get() if not queue.empty() else {"model": name, "converts": None,
                                                 "error": f"the process died (exit code {proc.exitcode})"}


def markdown(report: dict[str, Any]) -> str:
    rows = report["rows"]
    ok = [r for r in rows if r.get("converts") and r["first_order"] < 1e-9 and r["forward"] < 1e-9
          and r.get("second_order", 0.0) < 1e-9]
    lines = ["# torchvision's classification models through revnet.convert, float64", "",
             f"`python benchmarks/torchvision_coverage.py` (torch {report['torch']}, torchvision "
             f"{report['torchvision']}, CPU, {report['threads']} threads): {len(ok)} of {len(rows)} models convert "
             "and match autograd to 1e-9 (scaled). Eval mode, random weights at unit scale, batch 1, "
             f"K = {report['config']['classes']} cotangents; second order for models of at most "
             f"{report['config']['second_order_max']:.0e} parameters.", "",
             "| model | parameters | input | converts | forward | first order | second order | s | refusal / error |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        fmt = lambda key: f"{r[key]:.1e}" if key in r else "–"  # noqa: E731
        lines.append(f"| {r['model']} | {r.get('parameters', '–')} | {tuple(r['input']) if 'input' in r else '–'} | "
                     f"{ {True: 'yes', False: 'no', None: '?'}[r.get('converts')] } | {fmt('forward')} | "
                     f"{fmt('first_order')} | {fmt('second_order')} | {r.get('seconds', '–')} | "
                     f"{(r.get('error') or r.get('second_order_note', '')).replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def main(args: argparse.Namespace) -> dict[str, Any]:
    names = args.models or torchvision.models.list_models(module=torchvision.models)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    report = {"torch": torch.__version__, "torchvision": torchvision.__version__, "machine": platform.machine(),
              "threads": torch.get_num_threads(), "config": vars(args), "rows": rows}
    for name in names:
        row = run_isolated(check, (name, args.classes, args.second_order_max), name, args.timeout)
        rows.append(row)
        print(json.dumps(row), flush=True)
        (out / "torchvision-coverage.json").write_text(json.dumps(report, indent=1) + "\n")  # after every model
        (out / "torchvision-coverage.md").write_text(markdown(report))
    return report


if __name__ == "__main__":
    main(get_args_parser().parse_args())
