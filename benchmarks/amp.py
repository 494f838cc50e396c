"""How far bf16 autocast (``finetune.py --amp``) moves ρ₂ and the Deep Defense gradients, against float32.

Example::

    python benchmarks/amp.py                       # MLP and LeNet on the CPU (CPU bf16 autocast)
    python benchmarks/amp.py --device cuda         # the same on a GPU (not run here: no GPU was lent)

For each model (a reference trained on the embedded MNIST subset, as ``benchmarks/step.py`` trains and caches
it), at the same weights:

* **the regularizer's gradient**: ``deep_defense_loss`` with the cross-entropy weighted 0 (``ce_weight=0``), so
  only λ·Σ exp(±c·‖Δx‖/‖x‖)/N through the whole DeepFool recursion (``--max-iter`` steps, kept in the graph),
  on the first ``--batch-size`` training images with their labels; and the whole loss's gradient (CE + λ·reg);
* **ρ₂**: evaluation DeepFool (``--eval-max-iter`` steps) over the first ``--eval-samples`` test images.

Each is computed in float64 (the yardstick), float32 and float32 under ``torch.autocast(dtype=bfloat16)``; the
table gives the relative L2 error ``‖g − g₆₄‖ / ‖g₆₄‖`` and cosine of the gradients, the relative change of ρ₂
and the fraction of images whose DeepFool iterations or success differ from float64's. The DeepFool step itself
(``|f_k − f_l| / ‖w‖² · w``, its norm floor and the accumulated Δx) stays in float32 under autocast
(``revnet.attacks.deepfool._wide``), as do the exp and the cross-entropy; only the convolutions and matrix
products of the forward and reverse passes run in bf16. Written to ``--output`` (``amp[-cuda].{json,md}``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

import torch  # noqa: E402

from revnet_app.benchmarks import SCRATCH, add_device_flag, add_reference_flags  # noqa: E402

from revnet_app.benchmarks.harness import machine_info, write_text  # noqa: E402
from revnet_app.benchmarks.step_problems import load_batch, reference_checkpoints  # noqa: E402
from revnet_app.train.utils import resolve_device  # noqa: E402

import revnet  # noqa: E402

MODES = ("float64", "float32", "bf16-autocast")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="bf16 autocast against float32 and float64: the Deep Defense "
                                            "regularizer's gradient and DeepFool ρ₂ (see the module docstring)")
    p.add_argument("--models", nargs="+", default=["mlp", "lenet"], choices=["mlp", "lenet"], help="models")
    p.add_argument("--batch-size", type=int, default=100, help="training images of the gradient comparison")
    p.add_argument("--eval-samples", type=int, default=500, help="test images of the ρ₂ comparison")
    p.add_argument("--max-iter", type=int, default=5, help="DeepFool iterations inside the training loss")
    p.add_argument("--eval-max-iter", type=int, default=50, help="DeepFool iterations for ρ₂")
    p.add_argument("--lmbda", type=float, default=15.0, help="λ of the regularizer")
    p.add_argument("--c", type=float, default=25.0, help="c of exp(-c·‖Δx‖/‖x‖)")
    p.add_argument("--d", type=float, default=5.0, help="d of exp(d·‖Δx‖/‖x‖)")
    add_reference_flags(p, "reference checkpoint(s); default: trained on the embedded MNIST subset and cached")
    p.add_argument("--seed", type=int, default=0, help="seed of a reference trained here")
    add_device_flag(p)
    p.add_argument("--output", default=SCRATCH, help="folder of amp[-cuda].{json,md} (default %(default)s, a scratch folder; pass --output benchmarks/results to update the committed results)")
    return p


def _context(mode: str, device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16) if mode == "bf16-autocast" else contextlib.nullcontext()


def gradients(net, x, y, mode: str, device: torch.device, args, ce_weight: float) -> torch.Tensor:
    """All weight gradients of ``deep_defense_loss`` (``ce_weight`` 0: the regularizer only), flattened, float64."""
    net.zero_grad(set_to_none=True)
    with _context(mode, device):
        loss, _ = revnet.deep_defense_loss(net, x, y, lmbda=args.lmbda, c=args.c, d=args.d, max_iter=args.max_iter,
                                           ce_weight=ce_weight)
    loss.float().backward()
    return torch.cat([p.grad.flatten().double() for p in net.parameters()])


def deepfool_stats(net, x, mode: str, device: torch.device, args) -> dict[str, Any]:
    with _context(mode, device):
        delta, info = revnet.deepfool(net, x, max_iter=args.eval_max_iter)
    ratio = delta.double().flatten(1).norm(dim=1) / x.double().flatten(1).norm(dim=1)
    return {"rho2": ratio.mean().item(), "iterations": info.iterations, "success": info.success}


def compare(arch: str, path: str, device: torch.device, args) -> dict[str, Any]:
    out: dict[str, Any] = {"model": arch}
    grads, dfs = {}, {}
    for mode in MODES:
        dtype = torch.float64 if mode == "float64" else torch.float32
        net, x, y = load_batch(path, args.batch_size, device, dtype)
        net.eval()
        grads[mode] = {w: gradients(net, x, y, mode, device, args, w) for w in (0.0, 1.0)}
        net, xt, _ = load_batch(path, args.eval_samples, device, dtype, split="test")
        dfs[mode] = deepfool_stats(net.eval(), xt, mode, device, args)
    base = grads["float64"]
    for mode in MODES[1:]:
        row: dict[str, Any] = {}
        for w, name in ((0.0, "reg_grad"), (1.0, "loss_grad")):
            g, g64 = grads[mode][w], base[w]
            row[f"{name}_rel_err"] = ((g - g64).norm() / g64.norm()).item()
            row[f"{name}_cosine"] = torch.nn.functional.cosine_similarity(g, g64, dim=0).item()
        row["rho2"] = dfs[mode]["rho2"]
        row["fooling_rate"] = dfs[mode]["success"].double().mean().item()
        row["mean_iterations"] = dfs[mode]["iterations"].double().mean().item()
        row["rho2_rel_change"] = abs(dfs[mode]["rho2"] / dfs["float64"]["rho2"] - 1)
        row["iterations_differ_frac"] = (dfs[mode]["iterations"] != dfs["float64"]["iterations"]).double().mean().item()
        row["success_differ_frac"] = (dfs[mode]["success"] != dfs["float64"]["success"]).double().mean().item()
        out[mode] = row
    out["float64"] = {"rho2": dfs["float64"]["rho2"],
                      "fooling_rate": dfs["float64"]["success"].double().mean().item(),
                      "mean_iterations": dfs["float64"]["iterations"].double().mean().item()}
    return out


def markdown(results: list[dict[str, Any]], meta: dict[str, Any], command: str) -> str:
    lines = [f"# bf16 autocast against float32 (float64 as the yardstick), {meta['device']}", "",
             f"`{command}`, {meta['seconds']:.0f} s. Machine: {meta['machine']['device_name']}, "
             f"{meta['machine']['cpu_count']} cores, torch {meta['machine']['torch']}, commit "
             f"{meta['machine']['git_commit']}.", "",
             f"Gradients: batch {meta['batch_size']}, DeepFool {meta['max_iter']} iterations in the loss, "
             f"λ {meta['lmbda']}, c {meta['c']}, d {meta['d']}. ρ₂: {meta['eval_samples']} test images, "
             f"{meta['eval_max_iter']} iterations.", "",
             "| model | precision | reg. gradient rel. error | reg. gradient cosine | loss gradient rel. error | "
             "ρ₂ | ρ₂ rel. change | fooling rate | mean iterations | DeepFool iterations differ | success differs |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        f = r["float64"]
        lines.append(f"| {r['model']} | float64 | 0 | 1 | 0 | {f['rho2']:.5f} | 0 | {100 * f['fooling_rate']:.1f}% | "
                     f"{f['mean_iterations']:.2f} | — | — |")
        for mode in MODES[1:]:
            m = r[mode]
            lines.append(f"| {r['model']} | {mode} | {m['reg_grad_rel_err']:.2e} | {m['reg_grad_cosine']:.6f} | "
                         f"{m['loss_grad_rel_err']:.2e} | {m['rho2']:.5f} | {m['rho2_rel_change']:.2e} | "
                         f"{100 * m['fooling_rate']:.1f}% | {m['mean_iterations']:.2f} | "
                         f"{100 * m['iterations_differ_frac']:.1f}% | {100 * m['success_differ_frac']:.1f}% |")
    return "\n".join(lines) + "\n"


def main(args: argparse.Namespace) -> list[dict[str, Any]]:
    device = resolve_device(args.device)
    refs = reference_checkpoints(args, args.models)
    start = time.perf_counter()
    results = [compare(arch, refs[arch]["path"], device, args) for arch in args.models]
    meta = {"device": device.type, "machine": machine_info(device, torch.get_num_threads()),
            "seconds": time.perf_counter() - start, "references": {a: refs[a]["origin"] for a in args.models},
            **{k: getattr(args, k) for k in ("batch_size", "eval_samples", "max_iter", "eval_max_iter", "lmbda",
                                             "c", "d")}}
    command = "python benchmarks/amp.py " + " ".join(sys.argv[1:])
    name = "amp" + ("-cuda" if device.type == "cuda" else "")
    out = Path(args.output)
    write_text(out / f"{name}.json", json.dumps({"meta": meta, "command": command, "results": results}, indent=2,
                                                default=str) + "\n")
    md = markdown(results, meta, command.strip())
    write_text(out / f"{name}.md", md)
    print(md)
    return results


if __name__ == "__main__":
    main(get_args_parser().parse_args())
