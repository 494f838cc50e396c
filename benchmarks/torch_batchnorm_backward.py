"""torch's CPU ``batch_norm`` backward in eval mode at batch 1, with a gradient of channels-last strides (a report).

Example::

    python benchmarks/torch_batchnorm_backward.py     # writes results/torch-batchnorm-backward.{json,md}

A BatchNorm in eval mode is the per-channel scale ``γ / √(σ² + ε)``, so its input gradient is the incoming
gradient times that scale, whatever the strides. For an input ``(N, 64, 14, 14)`` and an incoming gradient made
by ``(N, 196, 64).transpose(1, 2).reshape(N, 64, 14, 14)`` (what ``flatten(2).transpose(1, 2)`` after the norm
gives backwards, as in timm's iformer and EfficientFormer), this compares autograd with that scale, and with
autograd on the same gradient made contiguous, for N = 1 and 2, float32 and float64, oneDNN on and off. revnet's
reverse is the scale itself (``revnet/layers/norm.py``), which ``tests/lib/test_rules_norm.py`` checks on such a
gradient at N = 1.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import torch

from revnet_app.benchmarks import SCRATCH
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]


def measure(n: int, dtype: torch.dtype, onednn: bool) -> dict:
    gen = torch.Generator().manual_seed(0)
    c = 64
    x = torch.randn(n, c, 14, 14, dtype=dtype, generator=gen, requires_grad=True)
    grad = torch.randn(n, 196, c, dtype=dtype, generator=gen).transpose(1, 2).reshape(n, c, 14, 14)
    mean, var = torch.zeros(c, dtype=dtype), torch.rand(c, dtype=dtype, generator=gen) + 0.5
    weight = torch.rand(c, dtype=dtype, generator=gen) + 0.5
    scale = (weight / (var + 1e-5).sqrt()).view(1, -1, 1, 1)
    with torch.backends.mkldnn.flags(enabled=onednn):
        y = F.batch_norm(x, mean, var, weight, None, False, 0.1, 1e-5)
        strided = torch.autograd.grad(y, x, grad, retain_graph=True)[0]
        contiguous = torch.autograd.grad(y, x, grad.contiguous())[0]
    exact = grad * scale
    rel = lambda a: float((a - exact).abs().max() / exact.abs().max())  # noqa: E731
    return {"batch": n, "dtype": str(dtype).replace("torch.", ""), "onednn": onednn,
            "grad_strides": list(grad.stride()), "autograd_strided_error": rel(strided),
            "autograd_contiguous_error": rel(contiguous)}


def main(args: argparse.Namespace) -> dict:
    rows = [measure(n, dtype, onednn) for n in (1, 2) for dtype in (torch.float32, torch.float64)
            for onednn in (True, False)]
    report = {"torch": torch.__version__, "rows": rows}
    lines = ["# torch's eval-mode batch_norm backward with a channels-last gradient", "",
             f"`python benchmarks/torch_batchnorm_backward.py` (torch {torch.__version__}, CPU). Error: max |autograd "
             "− exact| / max |exact|, exact = incoming gradient × γ/√(σ²+ε).", "",
             "| batch | dtype | oneDNN | gradient strides | autograd, strided gradient | autograd, contiguous |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['batch']} | {r['dtype']} | {r['onednn']} | {tuple(r['grad_strides'])} | "
                     f"{r['autograd_strided_error']:.1e} | {r['autograd_contiguous_error']:.1e} |")
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    for name, text in (("torch-batchnorm-backward.json", json.dumps(report, indent=1) + "\n"),
                       ("torch-batchnorm-backward.md", "\n".join(lines) + "\n")):
        with tempfile.NamedTemporaryFile("w", dir=out, delete=False, suffix=".tmp") as f:
            f.write(text)
        os.replace(f.name, out / name)
    print("\n".join(lines))
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default=SCRATCH,
                        help="folder for torch-batchnorm-backward.{json,md} (default %(default)s, a scratch folder; pass --output benchmarks/results to update the committed results)")
    main(parser.parse_args())
