"""How many of timm's model families ``revnet.convert`` reproduces, in float64 (a report, not a test).

Example::

    python benchmarks/timm_coverage.py                  # one model per module of timm.list_modules()
    python benchmarks/timm_coverage.py --named          # the issue's nine named models, full size

Default: for every module of ``timm.list_modules()``, its model with the fewest parameters (counted on the
meta device), built with random weights (10 classes), eval mode, weights re-drawn at unit scale, batch 2 at the
model's default input size (batch 1 would hit torch's own wrong batch_norm backward at batch 1 with channels-last
gradients, ``benchmarks/torch_batchnorm_backward.py``, which made autograd disagree on iformer and EfficientFormer), each in its own process with a time limit: whether it converts (else the one-line
refusal), the forward and the reverse of K = 2 cotangents against autograd (first order). ``--named``: the
issue's named models at full size, first order and (up to ``--second-order-max`` parameters) second order.
Results: ``--output`` ``timm-coverage.{json,md}`` or ``timm-named.{json,md}``, with the ten most common
reasons among the models that do not convert.
"""

from __future__ import annotations

import argparse
import collections
import json
import platform
import re
import time
from pathlib import Path
from typing import Any

import torch

from revnet_app.benchmarks import SCRATCH

from revnet_app.benchmarks.torchvision_coverage import _scaled, run_isolated, second_order_fields, unit_scale

ROOT = Path(__file__).resolve().parents[1]
F64 = torch.float64
NAMED = ["convnext_tiny", "vit_small_patch16_224", "deit_small_patch16_224", "swin_tiny_patch4_window7_224",
         "efficientnet_b0", "mobilenetv3_large_100", "regnety_016", "densenet121", "resnet50"]

BATCH = 2  # not 1: torch's eval batch_norm backward is wrong at batch 1 (see the module docstring)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--named", action="store_true", help="the issue's nine named models instead of one per module")
    p.add_argument("--second-order-max", type=float, default=3e7,
                   help="with --named: second order for models of at most this many parameters (default 3e7)")
    p.add_argument("--timeout", type=float, default=240, help="seconds per model (default 240)")
    p.add_argument("--output", default=SCRATCH, help="folder for the JSON and Markdown (default %(default)s, a scratch folder; pass --output benchmarks/results to update the committed results)")
    return p


def smallest_per_module() -> list[tuple[str, str]]:
    """``(module, model name)``: each module's model with the fewest parameters, counted on the meta device."""
    import timm

    chosen = []
    for module in timm.list_modules():
        sizes = []
        for name in timm.list_models(module=module):
            try:
                with torch.device("meta"):
                    model = timm.create_model(name, pretrained=False, num_classes=10)
                sizes.append((sum(p.numel() for p in model.parameters()), name))
            except Exception:  # noqa: BLE001 - a model that cannot even be built is skipped here
                continue
        if sizes:
            chosen.append((module, min(sizes)[1]))
    return chosen


def check(name: str, second_order_max: float) -> dict[str, Any]:
    import timm
    from torch.nn.attention import SDPBackend, sdpa_kernel

    import revnet

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10).double().eval()
    unit_scale(model)
    size = tuple(model.pretrained_cfg.get("input_size", (3, 224, 224)))
    row: dict[str, Any] = {"model": name, "parameters": sum(p.numel() for p in model.parameters()),
                           "input": [BATCH, *size]}
    second_order = row["parameters"] <= second_order_max
    start = time.perf_counter()
    with sdpa_kernel(SDPBackend.MATH):
        try:
            net = revnet.convert(model)
            x = torch.randn(BATCH, *size, dtype=F64, generator=torch.Generator().manual_seed(1))
            y, tape = net.trace(x)
        except revnet.RevnetError as exc:
            return {**row, "converts": False, "error": " ".join(str(exc).split())[:400]}
        xr = x.clone().requires_grad_(True)
        plain = model(xr)
        v = torch.randn(BATCH, 2, *y.shape[1:], dtype=F64, generator=torch.Generator().manual_seed(2))
        g = net.reverse(v, tape)
        ref = torch.stack([torch.autograd.grad(plain, xr, v[:, j], retain_graph=True, create_graph=second_order)[0]
                           for j in range(2)], 1)
        row.update(converts=True, forward=_scaled(y, plain), first_order=_scaled(g, ref))
        if second_order:
            w = torch.randn(g.shape, dtype=F64, generator=torch.Generator().manual_seed(3))
            params = list(model.parameters())
            try:
                ours = torch.autograd.grad((w * g).square().sum(), params, allow_unused=True)
                theirs = torch.autograd.grad((w * ref).square().sum(), params, allow_unused=True)
                row.update(second_order_fields(ours, theirs, params))
            except RuntimeError as exc:  # torch without a double backward (hardsigmoid)
                row["second_order_note"] = " ".join(str(exc).split())[:120]
    row["seconds"] = round(time.perf_counter() - start, 1)
    return row


def reason(error: str) -> str:
    """A refusal reduced to its cause (what has no reverse, or the kind of failure), for the top-ten list."""
    for pattern in (r"calls (\w+), which has no reverse", r"\((call_\w+ [\w.]+)\).*has no reverse rule",
                    r"(torch.fx cannot trace)", r"(timed out)", r"(does not keep the batch dimension)",
                    r"cannot be reversed: (.{0,60})"):
        found = re.search(pattern, error)
        if found:
            return re.sub(r"call_(function|method|module) ", "", found.group(1))
    return error[:80]


def markdown(report: dict[str, Any]) -> str:
    rows = report["rows"]
    ok = [r for r in rows if r.get("converts") and r["first_order"] < 1e-9 and r["forward"] < 1e-9]
    failing = collections.Counter(reason(r.get("error", "")) for r in rows if not r.get("converts"))
    lines = [f"# timm through revnet.convert, float64 ({report['what']})", "",
             f"`{report['command']}` (timm {report['timm']}, torch {report['torch']}, CPU): {len(ok)} of "
             f"{len(rows)} models convert and match autograd to 1e-9 (scaled, first order; eval mode, random "
             f"weights at unit scale, batch {BATCH} at the default input size).", "",
             "Most common reasons among the rest:", ""]
    lines += [f"{i}. {why} ({n})" for i, (why, n) in enumerate(failing.most_common(10), 1)] or ["none"]
    lines += ["", "| module | model | parameters | converts | forward | first order | second order | s | refusal |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        fmt = lambda key: f"{r[key]:.1e}" if key in r else "–"  # noqa: E731
        lines.append(f"| {r.get('module', '')} | {r['model']} | {r.get('parameters', '–')} | "
                     f"{ {True: 'yes', False: 'no', None: '?'}[r.get('converts')] } | {fmt('forward')} | "
                     f"{fmt('first_order')} | {fmt('second_order')} | {r.get('seconds', '–')} | "
                     f"{r.get('error', '').replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def main(args: argparse.Namespace) -> dict[str, Any]:
    import timm

    todo = [("", name) for name in NAMED] if args.named else smallest_per_module()
    stem = "timm-named" if args.named else "timm-coverage"
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    report = {"timm": timm.__version__, "torch": torch.__version__, "machine": platform.machine(),
              "what": "the issue's named models" if args.named else "one model per module",
              "command": "python benchmarks/timm_coverage.py" + (" --named" if args.named else ""),
              "config": vars(args), "rows": []}
    for module, name in todo:
        row = run_isolated(check, (name, args.second_order_max if args.named else 0), name, args.timeout)
        report["rows"].append({"module": module, **row})
        print(json.dumps(report["rows"][-1]), flush=True)
        (out / f"{stem}.json").write_text(json.dumps(report, indent=1) + "\n")  # after every model
        (out / f"{stem}.md").write_text(markdown(report))
    return report


if __name__ == "__main__":
    main(get_args_parser().parse_args())
