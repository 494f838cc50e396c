"""How close revnet's explicit reverse comes to autograd on converted models, in float64 (a report, not a test).

Example::

    python benchmarks/equivalence.py                        # every model below, batch 2, K = 3 cotangents
    python benchmarks/equivalence.py --models resnet18 nin  # some of them

For each model: ``revnet.convert(model)``, one ``trace`` of a random batch, then

* first order: ``max |reverse(v) − VJP| / max(1, max |VJP|)`` over K random cotangents, the VJP by
  ``torch.autograd.grad`` on the plain model;
* second order: the same scaled difference between the gradients of ``L = Σ (w ⊙ reverse(v))²`` w.r.t. every
  parameter and double backprop (``create_graph=True``), the largest over all parameters.

BatchNorm layers are in eval mode with random running statistics and affine weights; Dropout in eval mode.
Results go to ``--output`` as ``graph-equivalence.json`` and ``.md``. The tests (``tests/lib/test_graph.py``,
``tests/app/test_models.py``) assert these at ``rtol = 1e-10, atol = 1e-12`` after the same scaling.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

import torch  # noqa: E402
import torchvision  # noqa: E402

from revnet_app.benchmarks import SCRATCH  # noqa: E402
from torch import nn  # noqa: E402

from revnet_app import models  # noqa: E402
import revnet  # noqa: E402

F64 = torch.float64
MODELS: dict[str, tuple[Any, int]] = {  # name -> (builder of a plain torch model, input size)
    "alexnet": (lambda: torchvision.models.alexnet(num_classes=10), 64),
    "resnet18": (lambda: torchvision.models.resnet18(num_classes=10), 32),
    "resnet34": (lambda: torchvision.models.resnet34(num_classes=10), 32),
    "vgg11_bn": (lambda: torchvision.models.vgg11_bn(num_classes=10), 32),
    "squeezenet1_1": (lambda: torchvision.models.squeezenet1_1(num_classes=10), 64),
    "mobilenet_v2": (lambda: torchvision.models.mobilenet_v2(num_classes=10), 32),
    "convnet": (models.convnet, 32),
    "nin": (models.nin, 32),
}


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=add_help,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS), help="the models to check")
    p.add_argument("--classes", type=int, default=3, help="K: random cotangents per sample")
    p.add_argument("--batch-size", type=int, default=2, help="N: samples in the traced batch")
    p.add_argument("--seed", type=int, default=0, help="seeds the weights, the statistics and the data")
    p.add_argument("--output", default=SCRATCH, help="folder for the JSON and Markdown (default %(default)s, a scratch folder; pass --output benchmarks/results to update the committed results)")
    return p


def _scaled(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.detach(), expected.detach()
    return float((actual - expected).abs().max() / max(1.0, float(expected.abs().max())))


def check(name: str, k: int, n: int, seed: int) -> dict[str, Any]:
    build, size = MODELS[name]
    torch.manual_seed(seed)
    model = build().double().eval()
    gen = torch.Generator().manual_seed(seed + 1)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=gen, dtype=F64))
            m.running_var.copy_(torch.rand(m.num_features, generator=gen, dtype=F64) + 0.5)
            m.weight.data.copy_(1 + 0.2 * torch.randn(m.num_features, generator=gen, dtype=F64))
    start = time.perf_counter()
    net = revnet.convert(model)
    x = torch.randn(n, 3, size, size, generator=gen, dtype=F64)
    y, tape = net.trace(x)
    v = torch.randn(n, k, *y.shape[1:], generator=gen, dtype=F64)
    g = net.reverse(v, tape)
    xr = x.clone().requires_grad_(True)
    plain = model(xr)  # for the Sequential models, model is already the converted net: its forward is torch's
    ref = torch.stack([torch.autograd.grad(plain, xr, v[:, j], retain_graph=True, create_graph=True)[0]
                       for j in range(k)], 1)
    w = torch.randn(g.shape, generator=gen, dtype=F64)
    params = [p for p in model.parameters()]
    ours = torch.autograd.grad((w * g).square().sum(), params, allow_unused=True)
    theirs = torch.autograd.grad((w * ref).square().sum(), params, allow_unused=True)
    second = max(_scaled(a if a is not None else torch.zeros_like(p), b if b is not None else torch.zeros_like(p))
                 for a, b, p in zip(ours, theirs, params))
    return {"model": name, "kind": type(net).__name__, "input": list(x.shape), "classes": k,
            "forward": _scaled(y, plain), "first_order": _scaled(g, ref), "second_order": second,
            "parameters": len(params), "seconds": round(time.perf_counter() - start, 2)}


def main(args: argparse.Namespace) -> dict[str, Any]:
    print(f"config: {vars(args)}")
    rows = []
    for name in args.models:
        row = check(name, args.classes, args.batch_size, args.seed)
        print(f"{name:14s} {row['kind']:10s} forward {row['forward']:.1e}  first order {row['first_order']:.1e}  "
              f"second order {row['second_order']:.1e}  ({row['seconds']} s)", flush=True)
        rows.append(row)
    report = {"torch": torch.__version__, "torchvision": torchvision.__version__, "machine": platform.machine(),
              "threads": torch.get_num_threads(), "dtype": "float64", "rows": rows, "config": vars(args)}
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "graph-equivalence.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    lines = ["# revnet.convert vs autograd, float64", "",
             f"`python benchmarks/equivalence.py` (torch {torch.__version__}, torchvision {torchvision.__version__}, "
             f"CPU). Scaled max difference `max|ours − autograd| / max(1, max|autograd|)`; batch {args.batch_size}, "
             f"K = {args.classes} random cotangents; second order: the largest over all parameters.", "",
             "| model | converted to | input | forward | first order | second order |", "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['kind']} | {tuple(r['input'])} | {r['forward']:.1e} | {r['first_order']:.1e} | "
                     f"{r['second_order']:.1e} |")
    (out / "graph-equivalence.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return report


if __name__ == "__main__":
    main(get_args_parser().parse_args())
