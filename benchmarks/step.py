"""Time one Deep Defense training step five ways: revnet's explicit reverse against autograd.

Example::

    python benchmarks/step.py                      # MLP and LeNet, batch 10 and 100, reference weights
    python benchmarks/step.py --no-early-stop      # worst case: every sample runs all --max-iter iterations
    python benchmarks/step.py --full               # adds batch 1000
    python benchmarks/step.py --device cuda --amp  # GPU, mixed precision (benchmarks/gpu.sh runs it)
    python benchmarks/step.py --compile            # adds variant 1c: torch.compile'd trace and reverse
    python benchmarks/step.py --graph-vs-sequential  # LeNet batch 100: revnet.Graph vs revnet.Sequential, interleaved
    python benchmarks/step.py --models resnet18-32 --variants revnet autograd-loop autograd-batched torch-func \
        autograd-shortcut --warmup 1 --repeats 5 --time-budget 30    # ResNet-18, 32×32, batch 32 (step-resnet18-32.*)

One step = forward, DeepFool with ``--max-iter`` iterations kept in the graph, the regularized loss of
``revnet.losses.deep_defense_loss``, backward to every weight, ``optimizer.step()`` (SGD, momentum 0.9). The
five variants are described in ``benchmarks/variants.py``: (1) revnet, (2) autograd ``grad()`` per class,
(3) autograd ``is_grads_batched``, (4) ``torch.func`` vmap over vjp, (5) autograd with revnet's algorithmic
shortcuts (the ablation); (1g) ``revnet-graph`` is variant 1 on ``revnet.Graph(<plain torch.nn copy>)``
instead of the ``revnet.Sequential`` (the same loss; only the network container differs). Before timing,
every variant's loss, weight gradients and DeepFool iterations are checked against revnet's in float64 on a
small batch (``--check-batch``), so the benchmark never compares different computations.

Measurement: each (model, batch size, variant) runs in a fresh subprocess (``--isolation subprocess``) on
identical weights (a reference model: ``--reference``, or one trained on the embedded MNIST subset and
cached in ``--cache-dir``) and the identical batch (the first N images of the embedded training split, true
labels). Timing is an explicit loop: ``--warmup`` untimed steps, then ``--repeats`` timed steps (fewer if
``--time-budget`` runs out, at least ``--min-repeats``, 3 by default), each from the same weights (restored
outside the timed region, so DeepFool does the same work every step), synchronised on CUDA; the median and
the interquartile range are reported, and the loss and DeepFool iterations of the last timed step. Peak
memory is above the process's baseline taken just before the first step (after one untimed 1-image step, so
the libraries' one-time initialisation is not counted, and glibc's ``malloc_trim``): on CUDA
``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()``; on the CPU the peak resident set
size (VmHWM, reset through ``/proc/self/clear_refs`` just before the first step) minus the resident set size
(VmRSS) at that moment, which excludes the import and loading overhead.

``--no-early-stop``: every variant runs all ``--max-iter`` DeepFool iterations for every sample (variant 1
through ``deep_defense_loss(early_stop=False)``). ``--class-chunk K``: variant 1 reverses the candidate classes
for DeepFool's choice in groups of K (less peak memory, the same step). Results and the Markdown table go to ``--output`` (``step[-resnet18-32][-cuda][-amp]
[-no-early-stop].{json,md,png}``); the target of issue 5 (LeNet, batch 100, ``--max-iter 5``, reference
weights: revnet <= 0.5x the time of the fastest of variants 2-4, <= 0.8x its peak memory, no slower than
variant 5) is evaluated and stated, never asserted.

``--graph-vs-sequential``: a separate mode for the Graph target (a ``revnet.Graph`` built from a chain within
10% of the ``revnet.Sequential`` step): LeNet, batch 100, reference weights, ``--max-iter`` 5 by default
(``--models``/``--batch-sizes`` override), variant 1 and variant 1g in **one process, interleaved**: after
``--warmup`` untimed steps of each, ``--pairs`` pairs of timed steps in ABBA order (pair i runs Sequential
then Graph for even i, Graph then Sequential for odd i, so drift and the order within a pair cancel),
stopping early after ``--time-budget`` seconds of pairs (at least 4). One process, not alternating
subprocesses: both networks see the same machine state (the other load on a shared CPU, the allocator, the
thread pool) within a fraction of a second of each other, which is what a ratio needs; peak memory is
therefore not measured in this mode (the plain run measures it per subprocess). Reported: the median (and
IQR) of each, the ratio of the medians, and the spread of the per-pair ratios Graph/Sequential (median,
IQR, min/max, by order); the target holds if the ratio of the medians is <= 1.10 (also stated: whether the
upper quartile of the pair ratios is). Both are first checked equal in float64 (``--check-batch``), and
their float32 loss and DeepFool iterations at the timed batch are compared. Written to
``--output``/``graph-vs-sequential[-cuda].{json,md}``.

``--models resnet18-32`` (also ``resnet18-224``: the same network on 3×224×224 inputs, and ``convnet-cifar``: the
paper's CIFAR-10 ConvNet, batch 128): torchvision's ``resnet18(num_classes=10)`` with random weights
(``torch.manual_seed(--seed)``, no CIFAR-10 offline), BatchNorm in eval mode (running statistics 0/1), on random
N(0, 1) inputs of shape (N, 3, 32, 32) from ``torch.Generator().manual_seed(--seed)`` (batch 32 unless
``--batch-sizes``);
labels are the network's own clean predictions with every 4th shifted by one class, so about 3/4 of the
samples take DeepFool's untargeted branch (as when fine-tuning a trained network) and 1/4 the targeted one.
Variant 1 runs on ``revnet.convert(model)`` (a ``revnet.Graph``), variants 2-5 on the plain torchvision
model; variant 1g is skipped (``revnet.Graph`` of the plain model is exactly variant 1's network). Results go
to ``step-resnet18-32[...]``; the issue-5 target does not apply.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]

import torch  # noqa: E402

from revnet_app.benchmarks import SCRATCH, add_device_flag, add_reference_flags  # noqa: E402

from revnet_app.train import data as data_lib  # noqa: E402
from revnet_app.train.utils import git_commit as _git_commit, resolve_device  # noqa: E402,F401
from revnet_app import models  # noqa: E402
from revnet_app.benchmarks.rounds import interleaved, round_ratios  # noqa: E402
from revnet_app.benchmarks.variants import ALL_VARIANTS, COMPILED, VARIANTS, StepConfig, check_equivalence, compile_frames  # noqa: E402,E501

MNIST_MODELS = ["lenet", "mlp"]  # models.build(arch) + checkpoints, embedded MNIST batches
# random init and random N(0, 1) batches (no CIFAR-10/ImageNet offline): (input shape, default batch, network)
RANDOM_SPECS = {
    "resnet18-32": ((3, 32, 32), 32, "torchvision.models.resnet18(num_classes=10)"),
    "resnet18-224": ((3, 224, 224), 32, "torchvision.models.resnet18(num_classes=10)"),
    "convnet-cifar": ((3, 32, 32), 128, "models.cifar.convnet() (the paper's CIFAR-10 ConvNet)"),
    "vit-s16-112": ((3, 112, 112), 4, "torchvision VisionTransformer, ViT-S/16 (12 layers, 6 heads, width 384) "
                                      "at 112 px"),
    "convnext-t-112": ((3, 112, 112), 4, "torchvision.models.convnext_tiny(num_classes=10) at 112 px"),
}
RANDOM_MODELS = tuple(RANDOM_SPECS)
GRAPH_VARIANT = "revnet-graph"
GRAPH_TARGET = 1.10  # a Graph built from a chain: within 10% of the Sequential step (ratio of the medians)

RESULT_MARKER = "@@BENCHMARK-RESULT@@ "
MASKED = ("autograd-loop", "autograd-batched", "torch-func")  # variants 2-4
# issue 17's targets (issue 5 had "no slower than variant 5"), for LeNet and the MLP at batch 100 on the CPU
TARGET = {"model": "lenet", "batch_size": 100, "max_iter": 5, "early_stop": True,
          "time_vs_fastest_autograd": 0.5, "memory_vs_fastest_autograd": 0.8, "time_vs_shortcut": 0.9}
TARGET_CONFIGS = (("lenet", 100), ("mlp", 100))
AMP_TOLERANCE = 1e-2  # relative change of the loss / ‖Δx‖ above which mixed precision "changes DeepFool's results"
MiB = 2**20


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Time one Deep Defense training step (forward, DeepFool, loss, backward, optimizer step) "
                    "five ways: revnet's explicit reverse vs autograd (and revnet on a revnet.Graph).",
        add_help=add_help, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--models", nargs="+", default=None, choices=MNIST_MODELS + list(RANDOM_MODELS),
                   help="architectures: models.mlp(), models.lenet() (MNIST reference weights); random init and "
                        "random data (no CIFAR-10/ImageNet offline; see the docstring): resnet18-32 / resnet18-224: "
                        "torchvision.models.resnet18(num_classes=10) on 3×32×32 / 3×224×224 inputs (batch 32 by "
                        "default), convnet-cifar: the paper's CIFAR-10 ConvNet (models.cifar.convnet(), batch 128). "
                        "Default: mlp lenet; lenet with --graph-vs-sequential")
    p.add_argument("--batch-sizes", nargs="+", type=int, default=None,
                   help="batch sizes to time. Default: 10 100 for mlp/lenet, 32 for resnet18-32; 100 with "
                        "--graph-vs-sequential")
    p.add_argument("--full", action="store_true", help="add batch size 1000 (mlp/lenet only)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(ALL_VARIANTS),
                   help="variants to run (1 revnet, 1c revnet-compiled (also added by --compile), 1g revnet-graph, "
                        "2 autograd-loop, 3 autograd-batched, 4 torch-func, 5 autograd-shortcut); revnet-graph is "
                        "skipped for the random models (the same network as revnet there)")
    p.add_argument("--compile", action="store_true",
                   help="also time variant 1c, revnet with torch.compile(dynamic=True) of the network's trace and "
                        "reverse (benchmarks/variants.py); its compile time (the priming and warm-up steps) and "
                        "any recompiles during the timed steps are reported apart from the step time; it is not "
                        "in the float64 check (compiling float64 as well would double the wait), its float32 loss "
                        "is compared with variant 1's in the interleaved rounds")
    p.add_argument("--graph-vs-sequential", action="store_true",
                   help="instead of the variant table: time variant 1 (revnet.Sequential) and 1g (revnet.Graph "
                        "of the plain copy) interleaved in one process (ABBA pairs), LeNet batch 100 by default, "
                        f"and state whether Graph <= {GRAPH_TARGET}x Sequential (graph-vs-sequential.{{json,md}})")
    p.add_argument("--pairs", type=int, default=200,
                   help="--graph-vs-sequential: timed (Sequential, Graph) pairs (fewer if --time-budget runs out, "
                        "at least 4)")
    p.add_argument("--max-iter", type=int, default=5, help="DeepFool iterations inside the loss")
    p.add_argument("--overshoot", type=float, default=0.02, help="DeepFool overshoot")
    p.add_argument("--lmbda", type=float, default=15.0, help="λ, weight of the regularizer")
    p.add_argument("--c", type=float, default=25.0, help="c of exp(-c·‖Δx‖/‖x‖), correctly classified samples")
    p.add_argument("--d", type=float, default=5.0, help="d of exp(d·‖Δx‖/‖x‖), misclassified samples")
    p.add_argument("--class-chunk", type=int, default=None,
                   help="revnet only: candidate classes per choosing reverse in DeepFool (default: the "
                        "library's: at most 512 rows per reverse on the CPU, all classes at once on CUDA; 9 = all for MNIST)")
    p.add_argument("--no-early-stop", action="store_true",
                   help="worst case: every sample runs all --max-iter DeepFool iterations (see the docstring)")
    p.add_argument("--lr", type=float, default=1e-3, help="SGD learning rate (momentum 0.9) of the timed step")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before timing")
    p.add_argument("--repeats", type=int, default=10, help="timed steps per (model, batch size, variant)")
    p.add_argument("--time-budget", type=float, default=120.0,
                   help="seconds of timed steps per (model, batch size, variant); stops early (>= --min-repeats). "
                        "With --graph-vs-sequential: seconds of timed pairs per (model, batch size) (>= 4 pairs)")
    p.add_argument("--min-repeats", type=int, default=3,
                   help="timed steps per (model, batch size, variant) even past --time-budget (1 caps a hopeless "
                        "variant, e.g. autograd on ResNet-18, at one timed step; its IQR is then 0)")
    p.add_argument("--rounds", type=int, default=10,
                   help="after the per-variant runs: time all variants of each (model, batch size) interleaved in "
                        "this process, this many rounds (A B C ..., ... C B A); the ratios and the targets come "
                        "from these rounds (per-round ratios, median and spread); 0: skip (ratios then come from the "
                        "separate runs)")
    p.add_argument("--rounds-budget", type=float, default=90.0,
                   help="seconds of interleaved rounds per (model, batch size); stops early (>= 3 rounds)")
    add_reference_flags(p, "reference checkpoint (models.load format; its arch says which model it is for); "
                        "repeat for several models. Default: train one on the embedded MNIST subset, cached")
    p.add_argument("--check-batch", type=int, default=8,
                   help="images in the float64 equivalence check (every 4th gets a wrong label)")
    add_device_flag(p)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"], help="dtype of the timed steps")
    p.add_argument("--amp", action="store_true",
                   help="mixed precision (torch.autocast; float16 + GradScaler on CUDA, bfloat16 on the CPU) and a "
                        "report of how it changes DeepFool against float32")
    p.add_argument("--amp-dtype", default=None, choices=["float16", "bfloat16"],
                   help="autocast dtype; unset: float16 on CUDA, bfloat16 on the CPU")
    p.add_argument("--shortcut-choice", default="auto", choices=["auto", "loop", "batched"],
                   help="variant 5: how the graph-free C-1 rows that choose k are computed (auto: loop on the CPU, "
                        "measured faster here; batched on CUDA)")
    p.add_argument("--threads", type=int, default=None, help="torch threads; unset: torch's default")
    p.add_argument("--isolation", default="subprocess", choices=["subprocess", "inprocess"],
                   help="subprocess: a fresh process per (model, batch size, variant), needed for CPU peak memory; "
                        "inprocess: all in this process (quick; CPU memory figures then include allocator reuse)")
    p.add_argument("--profile", action="store_true",
                   help="also profile one step per (model, batch size, variant) with torch.profiler "
                        "(top operators by time and by memory kept, written to <output>/<name>-profile.md)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the reference training; for resnet18-32 the seed of its random init and random batch")
    p.add_argument("--output", default=SCRATCH, help="folder for the JSON, Markdown and PNG results (default %(default)s, a scratch folder; pass --output benchmarks/results to update the committed results)")
    p.add_argument("--worker", default=None, metavar="JSON",
                   help="internal: run one measurement described by a JSON object and print its result "
                        "(how the fresh subprocess per variant is started)")
    return p


# ---------------------------------------------------------------------------------------------------------
# Shared helpers (benchmarks/deepfool.py imports these too).


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_commit() -> str:
    """The short commit of the checkout (``+dirty`` with uncommitted changes), as the results record it."""
    return _git_commit(short=True)


def machine_info(device: torch.device, threads: int) -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": threads,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
        "cuda": torch.version.cuda,
        "git_commit": git_commit(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def summarize(times: list[float]) -> dict[str, Any]:
    """Median, quartiles and IQR (seconds) of repeated timings."""
    if len(times) == 1:
        q1 = q3 = times[0]
    else:
        q1, _, q3 = statistics.quantiles(times, n=4, method="inclusive")
    return {"median_s": statistics.median(times), "q25_s": q1, "q75_s": q3, "iqr_s": q3 - q1,
            "min_s": min(times), "repeats": len(times), "times_s": times}


def _proc_status_kib(key: str) -> Optional[int]:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def release_free_memory() -> None:
    """Collect garbage and return the C heap's free pages to the OS (glibc ``malloc_trim``, where available)."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak memory above the baseline at ``start()``: CUDA allocator peak, or CPU peak RSS (VmHWM, reset via
    ``/proc/self/clear_refs``) minus the RSS at ``start()``."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.method, self.base = device, "", 0

    def start(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            self.method = "torch.cuda.max_memory_allocated - memory_allocated before the first step"
            return
        rss = _proc_status_kib("VmRSS")
        if rss is None:  # no /proc: ru_maxrss cannot be reset, so the figure includes the imports
            self.base, self.method = 0, "ru_maxrss (includes import overhead: no /proc here)"
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            self.method = "VmHWM (reset before the first step) - VmRSS before the first step"
        except OSError:
            self.method = "VmHWM - VmRSS before the first step (VmHWM could not be reset: may include imports)"
        self.base = rss * 1024

    def peak_bytes(self) -> int:
        if self.device.type == "cuda":
            synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) - self.base
        hwm = _proc_status_kib("VmHWM")
        if hwm is None:
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return max(0, hwm * 1024 - self.base)


def reference_checkpoints(args: argparse.Namespace, archs: list[str]) -> dict[str, dict[str, Any]]:
    """``{arch: {"path", "origin"}}``: the ``--reference`` checkpoints, else cached or freshly trained ones."""
    given: dict[str, str] = {}
    for path in args.reference:
        try:
            _, ckpt = models.load(path)
        except models.CheckpointError as exc:
            raise SystemExit(f"error: {exc}") from None
        given[ckpt["arch"]] = str(Path(path).resolve())  # absolute: workers may run elsewhere
    out = {}
    for arch in archs:
        if arch in given:
            out[arch] = {"path": given[arch], "origin": f"given: {given[arch]}"}
            continue
        path = (Path(args.cache_dir) / f"bench-{arch}-embedded-e{args.ref_epochs}-lr{args.ref_lr:g}-s{args.seed}.pt"
                ).resolve()
        if path.is_file():
            out[arch] = {"path": str(path), "origin": f"cached: {path}"}
            continue
        from revnet_app.train import engine

        print(f"training a reference {arch} on the embedded MNIST subset ({args.ref_epochs} epochs) -> {path}",
              flush=True)
        splits = data_lib.embedded_mnist()
        pre = data_lib.preprocess_params(splits.train_x)
        torch.manual_seed(args.seed)
        net = models.build(arch)
        start = time.perf_counter()
        engine.train_reference(net, data_lib.preprocess(splits.train_x, pre), splits.train_y, epochs=args.ref_epochs,
                               lr=args.ref_lr, batch_size=100, seed=args.seed, progress=False)
        with torch.no_grad():
            acc = (net(data_lib.preprocess(splits.test_x, pre)).argmax(1) == splits.test_y).double().mean().item()
        seconds = time.perf_counter() - start
        models.save(path, arch, net, pre, metrics={"test_acc": acc, "train_seconds": seconds},
                    config={"recipe": "train/engine.train_reference (SGD momentum 0.9, weight decay 5e-4)",
                            "epochs": args.ref_epochs, "lr": args.ref_lr, "batch_size": 100, "seed": args.seed,
                            "data": splits.source})
        out[arch] = {"path": str(path), "origin": f"trained ({seconds:.0f} s, test acc {acc:.4f}), cached: {path}"}
    return out


def load_batch(ckpt_path: str, batch_size: int, device: torch.device, dtype: torch.dtype, split: str = "train"):
    """``(net, x, y)``: the checkpoint's network (eval mode) and the first ``batch_size`` images of the
    embedded MNIST ``split``, preprocessed as the checkpoint says."""
    net, ckpt = models.load(ckpt_path, map_location="cpu")
    splits = data_lib.embedded_mnist()
    images, labels = (splits.train_x, splits.train_y) if split == "train" else (splits.test_x, splits.test_y)
    if batch_size > len(labels):
        raise SystemExit(f"error: batch size {batch_size} exceeds the {len(labels)} embedded {split} images.")
    x = data_lib.preprocess(images[:batch_size], ckpt["preprocess"])
    return net.to(device=device, dtype=dtype), x.to(device=device, dtype=dtype), labels[:batch_size].to(device)


RANDOM_ORIGIN = ("random init: torch.manual_seed({seed}), {network}, eval mode (BatchNorm running statistics 0/1); "
                 "no CIFAR-10/ImageNet offline")


def random_batch(arch: str, batch_size: int, device: torch.device, dtype: torch.dtype, seed: int = 0):
    """``(net, x, y)`` for a random model (``RANDOM_SPECS``): the network with random weights from
    ``torch.manual_seed(seed)``, eval mode; ``x`` random N(0, 1) images of the model's input shape from
    ``torch.Generator().manual_seed(seed)``; ``y`` the clean predictions with every 4th label shifted by one
    class (about 3/4 untargeted and 1/4 targeted DeepFool, as when fine-tuning a trained network).
    ``resnet18-224`` has 10 classes too: with the ImageNet recipe's ``candidates=10`` DeepFool reverses the same
    9 rows per sample, so the step costs what an ImageNet step does, up to the 512×1000 last layer."""
    import torchvision

    shape, _, _ = RANDOM_SPECS[arch]
    torch.manual_seed(seed)
    builders = {
        "convnet-cifar": lambda: models.build("convnet"),
        "vit-s16-112": lambda: torchvision.models.VisionTransformer(image_size=112, patch_size=16, num_layers=12,
                                                                    num_heads=6, hidden_dim=384, mlp_dim=1536,
                                                                    num_classes=10),
        "convnext-t-112": lambda: torchvision.models.convnext_tiny(num_classes=10),
    }
    net = builders.get(arch, lambda: torchvision.models.resnet18(num_classes=10))().eval()
    if arch == "vit-s16-112":  # torchvision zero-initialises the head: every input gradient would be 0
        torch.nn.init.normal_(net.heads.head.weight, std=0.02)
    x = torch.randn(batch_size, *shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        y = net(x).argmax(1)
    y[::4] = (y[::4] + 1) % 10
    return net.to(device=device, dtype=dtype), x.to(device=device, dtype=dtype), y.to(device)


def model_batch(arch: str, ckpt_path: Optional[str], batch_size: int, device: torch.device, dtype: torch.dtype,
                seed: int = 0):
    """``(net, x, y)`` of one configuration: :func:`load_batch` for the MNIST models, :func:`random_batch`."""
    if arch in RANDOM_SPECS:
        return random_batch(arch, batch_size, device, dtype, seed)
    return load_batch(ckpt_path, batch_size, device, dtype)


def amp_context(device: torch.device, amp_dtype: Optional[str]):
    """A factory of autocast contexts, or ``None`` without mixed precision."""
    if amp_dtype is None:
        return None
    dtype = getattr(torch, amp_dtype)
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


# ---------------------------------------------------------------------------------------------------------
# One measurement (in a fresh subprocess by default).


def _shortcut_engine(choice: str, device: torch.device) -> str:
    return ("batched" if device.type == "cuda" else "loop") if choice == "auto" else choice


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Time and measure one (model, batch size, variant); ``spec`` holds plain values (see ``run_all``)."""
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    dtype = getattr(torch, spec["dtype"])
    cfg = StepConfig(**spec["cfg"])
    variant = ALL_VARIANTS[spec["variant"]]
    VARIANTS["autograd-shortcut"].choose_engine = spec["shortcut_engine"]
    base_net, x, y = model_batch(spec["model"], spec["checkpoint"], spec["batch_size"], device, dtype,
                                 spec.get("seed", 0))
    net = variant.prepare(base_net)
    del base_net
    optimizer = torch.optim.SGD(net.parameters(), lr=spec["lr"], momentum=0.9)
    saved = [p.detach().clone() for p in net.parameters()]
    autocast = amp_context(device, spec.get("amp_dtype"))
    scaler = torch.amp.GradScaler("cuda") if autocast is not None and spec["amp_dtype"] == "float16" else None

    def restore() -> None:
        with torch.no_grad():
            for p, s in zip(net.parameters(), saved):
                p.copy_(s)

    last: list[Any] = []  # the LossOutput of the latest full-batch step (all start from the same weights)

    def one_step_on(xb, yb) -> Any:
        return variant.train_step(net, optimizer, xb, yb, cfg, autocast=autocast, scaler=scaler)

    def one_step() -> None:
        last[:] = [one_step_on(x, y)]

    # prime the libraries (thread pools, oneDNN/cuDNN primitives, autograd workers) with one 1-image step, so
    # their one-time allocations are not counted as the step's memory; then give freed heap back to the OS
    first = time.perf_counter()
    restore()
    one_step_on(x[:1], y[:1])
    first_step_s = time.perf_counter() - first  # with --compile: the 1-sample graph's compile
    release_free_memory()
    memory = PeakMemory(device)
    memory.start()
    first = time.perf_counter()
    for _ in range(spec["warmup"]):
        restore()
        one_step()
    warmup_s = time.perf_counter() - first  # with --compile: the full batch's (dynamic) compile
    frames_before = compile_frames()
    times: list[float] = []
    budget_start = time.perf_counter()
    while len(times) < spec["repeats"]:
        restore()
        synchronize(device)
        t0 = time.perf_counter()
        one_step()
        synchronize(device)
        times.append(time.perf_counter() - t0)
        if len(times) >= spec.get("min_repeats", 3) and time.perf_counter() - budget_start > spec["time_budget"]:
            break
    peak = memory.peak_bytes()

    out = last[0]  # what the (last timed) step computed, at the benchmark's weights
    result = {
        **{k: spec[k] for k in ("model", "batch_size", "variant")},
        **summarize(times),
        "input_shape": list(x.shape),
        "dtype": str(x.dtype).replace("torch.", ""),
        "peak_mib": peak / MiB,
        "memory_method": memory.method,
        "loss": out.loss.item(),
        "mean_iterations": out.iterations.double().mean().item(),
        "max_iterations": int(out.iterations.max()),
        "correct": int(out.correct.sum()),
        "success": int(out.success.sum()),
        "first_step_s": first_step_s,
        "warmup_s": warmup_s,
    }
    if spec["variant"] == COMPILED.key:
        result["compile"] = {"frames_before_timing": frames_before,
                             "recompiles_during_timing": compile_frames() - frames_before,
                             "first_steps_s": first_step_s + warmup_s}
    if autocast is not None:
        result["amp_vs_fp32"] = amp_comparison(variant, net, x, y, cfg, autocast, restore)
    if spec.get("profile"):
        result["profile"] = profile_step(one_step, restore, device)
    return result


def amp_comparison(variant, net, x, y, cfg, autocast, restore) -> dict[str, Any]:
    """How mixed precision changes the loss, DeepFool's iterations/perturbations and the weight gradients,
    against the same variant in ``x.dtype`` at the same weights and batch."""
    outs, grads = [], []
    for ctx in (contextlib.nullcontext, autocast):
        restore()
        net.zero_grad(set_to_none=True)
        with ctx():
            out = variant.loss(net, x, y, cfg)
        out.loss.float().backward()
        outs.append(out)
        grads.append(torch.cat([p.grad.flatten().float() for p in net.parameters() if p.grad is not None]))
    ref, amp = outs
    loss_rel = abs(amp.loss.item() - ref.loss.item()) / max(abs(ref.loss.item()), 1e-30)
    grad_rel = ((grads[1] - grads[0]).norm() / grads[0].norm().clamp_min(1e-30)).item()
    iters_differ = (amp.iterations != ref.iterations).double().mean().item()
    success_differ = (amp.success != ref.success).double().mean().item()
    return {
        "loss_rel_change": loss_rel, "grad_rel_change": grad_rel,
        "iterations_differ_frac": iters_differ, "success_differ_frac": success_differ,
        "beyond_tolerance": bool(loss_rel > AMP_TOLERANCE or iters_differ > 0 or success_differ > 0),
    }


def profile_step(one_step, restore, device: torch.device) -> str:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    restore()
    with profile(activities=activities, profile_memory=True) as prof:
        one_step()
        synchronize(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    memory = "self_cuda_memory_usage" if device.type == "cuda" else "self_cpu_memory_usage"
    averages = prof.key_averages()
    return (f"By time:\n\n{averages.table(sort_by=key, row_limit=15)}\n\nBy memory the operator itself allocates "
            f"and does not free (what stays alive for the reverse and the backward):\n\n"
            f"{averages.table(sort_by=memory, row_limit=15)}")


def run_worker(spec: dict[str, Any], isolation: str) -> dict[str, Any]:
    if isolation == "inprocess":
        try:
            return measure(spec)
        except Exception as exc:  # noqa: BLE001 - a failed variant (e.g. out of memory) is reported, not fatal
            return {**{k: spec[k] for k in ("model", "batch_size", "variant")}, "error": repr(exc)}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_MARKER):
            return json.loads(line[len(RESULT_MARKER):])
    tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
    return {**{k: spec[k] for k in ("model", "batch_size", "variant")},
            "error": f"worker exited with {proc.returncode}: {tail}"}


# ---------------------------------------------------------------------------------------------------------
# The whole run.


def _run_name(args: argparse.Namespace, device: torch.device) -> str:
    extra = "".join(f"-{m}" for m in args.models if m in RANDOM_MODELS)  # never overwrites the MNIST step.*
    return "step" + extra + ("-cuda" if device.type == "cuda" else "") + ("-amp" if args.amp else "") + (
        "-no-early-stop" if args.no_early_stop else "") + (
        f"-class-chunk{args.class_chunk}" if args.class_chunk else "")


def resolve_models(args: argparse.Namespace) -> None:
    """Fill in the defaults of ``--models`` and ``--batch-sizes`` that depend on the mode."""
    if args.models is None:
        args.models = ["lenet"] if args.graph_vs_sequential else ["mlp", "lenet"]
    args.models = list(dict.fromkeys(args.models))


def batch_sizes_for(args: argparse.Namespace, arch: str) -> list[int]:
    if args.batch_sizes is not None:
        sizes = list(args.batch_sizes)
    elif args.graph_vs_sequential:
        sizes = [TARGET["batch_size"]]
    else:
        sizes = [RANDOM_SPECS[arch][1]] if arch in RANDOM_MODELS else [10, 100]
    if args.full and arch not in RANDOM_MODELS:
        sizes.append(1000)
    return sorted(set(sizes))


def variants_for(args: argparse.Namespace, arch: str) -> list[str]:
    """``--variants`` for one model (plus 1c with ``--compile``): revnet-graph only for Sequential models (for the
    random models it is variant 1)."""
    keys = [k for k in args.variants if not (k == GRAPH_VARIANT and arch in RANDOM_MODELS)]
    if getattr(args, "compile", False) and COMPILED.key not in keys:
        keys.insert(1, COMPILED.key)
    return keys


def check_args(args: argparse.Namespace) -> None:
    for name in ("max_iter", "repeats", "check_batch", "ref_epochs", "pairs", "min_repeats"):
        if getattr(args, name) < 1:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be at least 1")
    if args.warmup < 0 or any(b < 1 for b in args.batch_sizes or []):
        raise SystemExit("error: --warmup must be >= 0 and every batch size >= 1")
    if args.amp and args.dtype != "float32":
        raise SystemExit("error: --amp needs --dtype float32")


def equivalence_batch(ckpt_path: Optional[str], n: int, device: torch.device, arch: str = "lenet", seed: int = 0):
    if arch in RANDOM_MODELS:  # its labels already hold every 4th sample misclassified
        return model_batch(arch, ckpt_path, n, device, torch.float64, seed)
    net, x, y = load_batch(ckpt_path, n, device, torch.float64)
    with torch.no_grad():
        pred = net(x).argmax(1)
    y = y.clone()
    y[::4] = (pred[::4] + 1) % net(x[:1]).shape[1]  # misclassified on purpose: exercises targeted DeepFool
    return net, x, y


def model_references(args: argparse.Namespace, archs: list[str]) -> dict[str, dict[str, Any]]:
    """:func:`reference_checkpoints` for the MNIST models; the random init's description for resnet18-32."""
    refs = reference_checkpoints(args, [a for a in archs if a not in RANDOM_MODELS])
    for arch in archs:
        if arch in RANDOM_MODELS:
            refs[arch] = {"path": None, "origin": RANDOM_ORIGIN.format(seed=args.seed, network=RANDOM_SPECS[arch][2])}
    return {arch: refs[arch] for arch in archs}


def prepared_runs(base, keys: list[str], lr: float) -> dict[str, tuple]:
    """``{key: (variant, net, optimizer, saved weights)}``: each variant's own copy of ``base`` (the same
    weights), an SGD optimizer (momentum 0.9) and the weights to restore before every timed step."""
    runs = {}
    for key in keys:
        variant = ALL_VARIANTS[key]
        net = variant.prepare(base)
        runs[key] = (variant, net, torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9),
                     [p.detach().clone() for p in net.parameters()])
    return runs


def restore_weights(run: tuple) -> None:
    """Put a :func:`prepared_runs` entry's weights back (so every timed step does the same DeepFool work)."""
    _, net, _, saved = run
    with torch.no_grad():
        for p, s in zip(net.parameters(), saved):
            p.copy_(s)


def interleaved_variants(arch: str, ref_path: Optional[str], batch: int, keys: list[str], cfg: StepConfig,
                         args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """All ``keys`` variants of one (model, batch size) timed in interleaved rounds in this process
    (:func:`benchmarks.rounds.interleaved`; weights restored before every step, outside the timed region).
    Returns each variant's timing and the per-round ratios revnet ÷ variant."""
    base, x, y = model_batch(arch, ref_path, batch, device, dtype, args.seed)
    runs = prepared_runs(base, keys, args.lr)

    def restore(key: str) -> None:
        restore_weights(runs[key])

    def step(key: str) -> None:
        variant, net, optimizer, _ = runs[key]
        variant.step(net, optimizer, x, y, cfg)

    times = interleaved({k: (lambda k=k: step(k)) for k in keys}, rounds=args.rounds, budget_s=args.rounds_budget,
                        warmup=max(1, args.warmup), device=device, setup={k: (lambda k=k: restore(k)) for k in keys})
    losses = {}
    for key in keys:  # what each computed at the benchmark's weights (float32): the same step
        restore(key)
        losses[key] = runs[key][0].loss(runs[key][1], x, y, cfg).loss.item()
    out = {"model": arch, "batch_size": batch, "rounds": len(times[keys[0]]),
           "variants": {k: summarize(t) for k, t in times.items()}, "losses": losses}
    if "revnet" in times:
        out["revnet_over"] = {k: round_ratios(times, "revnet", k) for k in keys if k != "revnet"}
    return out


def ratios_for(results: list[dict[str, Any]], model: str, batch: int,
               rounds: Optional[dict[str, Any]] = None) -> Optional[dict[str, Any]]:
    """revnet's time and memory over the fastest of variants 2-4 and over variant 5. Times: from the interleaved
    ``rounds`` when given (the median of the per-round ratios, with their spread), else the separate runs'
    medians; memory: the separate runs' peaks (one fresh subprocess each)."""
    rows = {r["variant"]: r for r in results if r["model"] == model and r["batch_size"] == batch and "error" not in r}
    if "revnet" not in rows:
        return None
    rev = rows["revnet"]
    out: dict[str, Any] = {"model": model, "batch_size": batch, "revnet_median_s": rev["median_s"],
                           "time_source": "interleaved rounds" if rounds else "separate runs"}

    def time_ratio(key: str) -> float:
        if rounds and key in rounds.get("revnet_over", {}):
            out.setdefault("round_spread", {})[key] = rounds["revnet_over"][key]
            return rounds["revnet_over"][key]["median"]
        return rev["median_s"] / rows[key]["median_s"]

    masked = [rows[k] for k in MASKED if k in rows]
    if masked:
        medians = {r["variant"]: (rounds["variants"][r["variant"]]["median_s"] if rounds else r["median_s"])
                   for r in masked}
        fastest = rows[min(medians, key=medians.get)]
        out.update({
            "fastest_autograd": fastest["variant"],
            "time_vs_fastest_autograd": time_ratio(fastest["variant"]),
            "memory_vs_fastest_autograd": rev["peak_mib"] / fastest["peak_mib"] if fastest["peak_mib"] > 0 else None,
        })
    if "autograd-shortcut" in rows:
        out["time_vs_shortcut"] = time_ratio("autograd-shortcut")
        sc = rows["autograd-shortcut"]["peak_mib"]
        out["memory_vs_shortcut"] = rev["peak_mib"] / sc if sc > 0 else None
    if GRAPH_VARIANT in rows:  # revnet-graph ÷ revnet (separate subprocesses: see --graph-vs-sequential)
        out["graph_vs_sequential"] = rows[GRAPH_VARIANT]["median_s"] / rev["median_s"]
    return out


def evaluate_target(ratios: list[dict[str, Any]], cfg: StepConfig, model: str = "lenet",
                    batch: int = 100) -> dict[str, Any]:
    target = {**TARGET, "model": model, "batch_size": batch}
    row = next((r for r in ratios if r["model"] == model and r["batch_size"] == batch), None)
    reasons = []
    if cfg.max_iter != TARGET["max_iter"]:
        reasons.append(f"--max-iter is {cfg.max_iter}, not {TARGET['max_iter']}")
    if not cfg.early_stop:
        reasons.append("--no-early-stop (the target is defined at reference weights with early stopping)")
    if row is None:
        reasons.append(f"{model} batch {batch} with variant 1 is not in this run")
    target["in_run"] = not reasons and row is not None
    target["not_applicable"] = reasons
    if row is not None:
        target["time_source"] = row.get("time_source")
        target["round_spread"] = row.get("round_spread", {})
        for key in ("time_vs_fastest_autograd", "memory_vs_fastest_autograd", "time_vs_shortcut"):
            value = row.get(key)
            target[key + "_measured"] = value
            target[key + "_met"] = None if value is None else bool(value <= TARGET[key])
        target["fastest_autograd"] = row.get("fastest_autograd")
    return target


def main(args: argparse.Namespace) -> dict[str, Any]:
    if args.worker is not None:
        result = measure(json.loads(args.worker))
        print(RESULT_MARKER + json.dumps(result), flush=True)
        return result
    started = time.perf_counter()
    check_args(args)
    resolve_models(args)
    if args.graph_vs_sequential:
        return graph_vs_sequential(args)
    device = resolve_device(args.device)
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    batch_sizes = {arch: batch_sizes_for(args, arch) for arch in args.models}
    amp_dtype = (args.amp_dtype or ("float16" if device.type == "cuda" else "bfloat16")) if args.amp else None
    cfg = StepConfig(lmbd=args.lmbda, c=args.c, d=args.d, max_iter=args.max_iter, overshoot=args.overshoot,
                     early_stop=not args.no_early_stop, class_chunk=args.class_chunk)
    shortcut_engine = _shortcut_engine(args.shortcut_choice, device)
    name = _run_name(args, device)
    resolved = {**vars(args), "device": str(device), "threads": threads, "batch_sizes": batch_sizes,
                "amp_dtype": amp_dtype, "shortcut_engine": shortcut_engine, "run_name": name}
    resolved.pop("worker")
    print("configuration:\n" + "\n".join(f"  {k}: {v}" for k, v in sorted(resolved.items())), flush=True)
    machine = machine_info(device, threads)
    out_dir = Path(args.output)

    refs = model_references(args, args.models)
    for arch, ref in refs.items():
        print(f"reference {arch}: {ref['origin']}", flush=True)

    # 1. the equivalence checks (float64, small batch, reference weights)
    VARIANTS["autograd-shortcut"].choose_engine = shortcut_engine
    equivalence: dict[str, Any] = {}
    for arch in args.models:
        net, x, y = equivalence_batch(refs[arch]["path"], args.check_batch, device, arch, args.seed)
        start = time.perf_counter()
        equivalence[arch] = check_equivalence(net, x, y, cfg,
                                              keys=[k for k in variants_for(args, arch) if k != COMPILED.key])
        print(f"equivalence {arch}: every variant's loss and weight gradients equal revnet's (float64, "
              f"{len(y)} images, {time.perf_counter() - start:.1f} s)", flush=True)

    # 2. the measurements
    results = []
    for arch in args.models:
        for batch in batch_sizes[arch]:
            for key in variants_for(args, arch):
                spec = {"model": arch, "batch_size": batch, "variant": key, "checkpoint": refs[arch]["path"],
                        "cfg": cfg.as_dict(), "device": str(device), "dtype": args.dtype, "amp_dtype": amp_dtype,
                        "lr": args.lr, "warmup": args.warmup, "repeats": args.repeats,
                        "time_budget": args.time_budget, "threads": threads, "shortcut_engine": shortcut_engine,
                        "profile": args.profile, "seed": args.seed, "min_repeats": args.min_repeats}
                res = run_worker(spec, args.isolation)
                results.append(res)
                if "error" in res:
                    print(f"  {arch:5s} b={batch:<5d} {key:18s} FAILED: {res['error'].splitlines()[-1]}", flush=True)
                else:
                    print(f"  {arch:5s} b={batch:<5d} {key:18s} {res['median_s'] * 1e3:9.1f} ms "
                          f"(IQR {res['iqr_s'] * 1e3:.1f}, n={res['repeats']})  peak {res['peak_mib']:8.1f} MiB  "
                          f"DeepFool iters {res['mean_iterations']:.2f}", flush=True)

    # 3. the interleaved rounds: the ratios' source (separate runs drift 10-25% on a shared CPU)
    rounds: list[dict[str, Any]] = []
    if args.rounds > 0:
        dtype = getattr(torch, args.dtype)
        for arch in args.models:
            for batch in batch_sizes[arch]:
                keys = [k for k in variants_for(args, arch)
                        if any(r["variant"] == k and r["model"] == arch and r["batch_size"] == batch
                               and "error" not in r for r in results)]
                if "revnet" not in keys or len(keys) < 2 or amp_dtype is not None:
                    continue
                rounds.append(interleaved_variants(arch, refs[arch]["path"], batch, keys, cfg, args, device, dtype))
                over = rounds[-1]["revnet_over"]
                print(f"  {arch:5s} b={batch:<5d} interleaved ({rounds[-1]['rounds']} rounds): revnet ÷ "
                      + ", ".join(f"{k} {v['median']:.3f} [{v['q25']:.3f}, {v['q75']:.3f}]" for k, v in over.items()),
                      flush=True)

    def rounds_of(arch: str, b: int) -> Optional[dict[str, Any]]:
        return next((r for r in rounds if r["model"] == arch and r["batch_size"] == b), None)

    ratios = [r for arch in args.models for b in batch_sizes[arch]
              if (r := ratios_for(results, arch, b, rounds_of(arch, b))) is not None]
    target = evaluate_target(ratios, cfg)
    targets = [evaluate_target(ratios, cfg, model, b) for model, b in TARGET_CONFIGS]
    report = {
        "name": name,
        "description": "one Deep Defense training step (forward, DeepFool, loss, backward, SGD step), five ways "
                       "(and variant 1 on a revnet.Graph)",
        "config": {**resolved, "step": cfg.as_dict()},
        "machine": machine,
        "timing_method": (f"explicit loop: {args.warmup} warm-up steps, then up to {args.repeats} timed steps "
                          f"(time budget {args.time_budget:g} s, at least {min(args.min_repeats, args.repeats)}), "
                          "weights restored before each step "
                          "outside the timed region" + ("; torch.cuda.synchronize() around each step"
                                                        if device.type == "cuda" else "")),
        "isolation": args.isolation,
        "references": refs,
        "equivalence": equivalence,
        "variants": {k: {"number": v.number, "title": v.title, "summary": v.summary} for k, v in ALL_VARIANTS.items()
                     if k in VARIANTS or any(r["variant"] == k for r in results)},
        "results": [{k: v for k, v in r.items() if k != "profile"} for r in results],
        "interleaved": rounds,
        "ratios": ratios,
        "target": target,
        "targets": targets,
        "wall_s": time.perf_counter() - started,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(out_dir / f"{name}.json", json.dumps(report, indent=2, default=str) + "\n")
    write_text(out_dir / f"{name}.md", markdown(report))
    plot(report, out_dir / f"{name}.png")
    if args.profile:
        write_text(out_dir / f"{name}-profile.md", profile_markdown(results))
    print(f"wrote {out_dir / name}.json, .md, .png", flush=True)
    for t in targets:
        print(target_sentence(t), flush=True)
    return report


# ---------------------------------------------------------------------------------------------------------
# --graph-vs-sequential: variant 1 (revnet.Sequential) against 1g (revnet.Graph of the chain), interleaved.


def _quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) == 1:
        return values[0], values[0]
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q3


def interleaved_pairs(arch: str, ref_path: Optional[str], batch: int, cfg: StepConfig, args: argparse.Namespace,
                      device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """Time variant 1 and variant 1g in ABBA pairs in this process (see the module docstring)."""
    base, x, y = model_batch(arch, ref_path, batch, device, dtype, args.seed)
    runs = prepared_runs(base, ["revnet", GRAPH_VARIANT], args.lr)

    def restore(key: str) -> None:
        restore_weights(runs[key])

    def step(key: str, xb=x, yb=y) -> float:
        variant, net, optimizer, _ = runs[key]
        restore(key)  # outside the timed region: every step does the same DeepFool work
        synchronize(device)
        t0 = time.perf_counter()
        variant.step(net, optimizer, xb, yb, cfg)
        synchronize(device)
        return time.perf_counter() - t0

    for key in runs:  # prime the libraries, then warm up both
        step(key, x[:1], y[:1])
    for _ in range(args.warmup):
        for key in runs:
            step(key)
    times: dict[str, list[float]] = {key: [] for key in runs}
    pair_ratios: list[float] = []
    graph_first: list[bool] = []
    start = time.perf_counter()
    for i in range(args.pairs):
        order = ("revnet", GRAPH_VARIANT) if i % 2 == 0 else (GRAPH_VARIANT, "revnet")  # ABBA
        pair = {key: step(key) for key in order}
        for key, t in pair.items():
            times[key].append(t)
        pair_ratios.append(pair[GRAPH_VARIANT] / pair["revnet"])
        graph_first.append(order[0] == GRAPH_VARIANT)
        if i + 1 >= 4 and time.perf_counter() - start > args.time_budget:
            break
    timed_s = time.perf_counter() - start

    outs = {}
    for key, (variant, net, _, _) in runs.items():  # what each computed, at the benchmark's weights
        restore(key)
        out = variant.loss(net, x, y, cfg)
        outs[key] = out
    seq, graph = outs["revnet"], outs[GRAPH_VARIANT]
    q1, q3 = _quartiles(pair_ratios)
    seq_sum, graph_sum = summarize(times["revnet"]), summarize(times[GRAPH_VARIANT])
    by_order = {
        "sequential_first": statistics.median([r for r, g in zip(pair_ratios, graph_first) if not g]),
        "graph_first": statistics.median([r for r, g in zip(pair_ratios, graph_first) if g]),
    }
    ratio = graph_sum["median_s"] / seq_sum["median_s"]
    return {
        "model": arch, "batch_size": batch, "pairs": len(pair_ratios), "timed_s": timed_s,
        "sequential": seq_sum, "graph": graph_sum,
        "ratio_of_medians": ratio,
        "pair_ratio": {"median": statistics.median(pair_ratios), "q25": q1, "q75": q3, "iqr": q3 - q1,
                       "min": min(pair_ratios), "max": max(pair_ratios), "by_order": by_order,
                       "values": pair_ratios},
        "target": GRAPH_TARGET,
        "target_met": bool(ratio <= GRAPH_TARGET),
        "q75_within_target": bool(q3 <= GRAPH_TARGET),
        "same_step": {
            "loss_sequential": seq.loss.item(), "loss_graph": graph.loss.item(),
            "loss_rel_diff": abs(graph.loss.item() - seq.loss.item()) / max(abs(seq.loss.item()), 1e-30),
            "iterations_equal": bool(torch.equal(seq.iterations, graph.iterations)),
            "mean_iterations": seq.iterations.double().mean().item(),
            "max_iterations": int(seq.iterations.max()), "correct": int(seq.correct.sum()),
        },
        "input_shape": list(x.shape), "dtype": str(x.dtype).replace("torch.", ""),
    }


def graph_vs_sequential(args: argparse.Namespace) -> dict[str, Any]:
    """``--graph-vs-sequential``: the interleaved measurement, its report and its Markdown."""
    started = time.perf_counter()
    if args.amp:
        raise SystemExit("error: --graph-vs-sequential times float32/float64 steps; drop --amp")
    chains = [a for a in args.models if a in RANDOM_MODELS]
    if chains:
        raise SystemExit(f"error: --graph-vs-sequential needs Sequential models (mlp, lenet); {chains[0]} is a Graph "
                         "already (variant 1 is revnet.convert of it)")
    device = resolve_device(args.device)
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    dtype = getattr(torch, args.dtype)
    cfg = StepConfig(lmbd=args.lmbda, c=args.c, d=args.d, max_iter=args.max_iter, overshoot=args.overshoot,
                     early_stop=not args.no_early_stop, class_chunk=args.class_chunk)
    name = "graph-vs-sequential" + ("-cuda" if device.type == "cuda" else "") + (
        "-no-early-stop" if args.no_early_stop else "") + (f"-class-chunk{args.class_chunk}" if args.class_chunk else "")
    batch_sizes = {arch: batch_sizes_for(args, arch) for arch in args.models}
    resolved = {**vars(args), "device": str(device), "threads": threads, "batch_sizes": batch_sizes, "run_name": name}
    resolved.pop("worker")
    print("configuration:\n" + "\n".join(f"  {k}: {v}" for k, v in sorted(resolved.items())), flush=True)
    machine = machine_info(device, threads)
    refs = model_references(args, args.models)
    for arch, ref in refs.items():
        print(f"reference {arch}: {ref['origin']}", flush=True)

    equivalence: dict[str, Any] = {}
    for arch in args.models:
        net, x, y = equivalence_batch(refs[arch]["path"], args.check_batch, device, arch, args.seed)
        t0 = time.perf_counter()
        equivalence[arch] = check_equivalence(net, x, y, cfg, keys=["revnet", GRAPH_VARIANT])
        print(f"equivalence {arch}: revnet-graph's loss and weight gradients equal revnet's (float64, {len(y)} "
              f"images, {time.perf_counter() - t0:.1f} s)", flush=True)

    results = []
    for arch in args.models:
        for batch in batch_sizes[arch]:
            r = interleaved_pairs(arch, refs[arch]["path"], batch, cfg, args, device, dtype)
            r["target_configuration"] = bool(arch == TARGET["model"] and batch == TARGET["batch_size"]
                                             and cfg.max_iter == TARGET["max_iter"] and cfg.early_stop)
            results.append(r)
            print(graph_sentence(r), flush=True)
    report = {
        "name": name,
        "description": ("one Deep Defense training step, variant 1 (revnet.Sequential) vs variant 1g (revnet.Graph "
                        "built from the plain nn.Sequential copy), interleaved in one process"),
        "config": {**resolved, "step": cfg.as_dict()},
        "machine": machine,
        "timing_method": (f"one process; prime each with a 1-image step, {args.warmup} warm-up step(s) of each, "
                          f"then up to {args.pairs} pairs in ABBA order (even pairs Sequential then Graph, odd "
                          f"pairs Graph then Sequential), stopping after {args.time_budget:g} s of pairs (at least "
                          "4); weights restored before each step outside the timed region"
                          + ("; torch.cuda.synchronize() around each step" if device.type == "cuda" else "")),
        "target": (f"a Graph built from a chain within 10% of the Sequential step (ratio of the medians ≤ "
                   f"{GRAPH_TARGET:.2f}) at the issue-5 configuration: LeNet, batch {TARGET['batch_size']}, max_iter "
                   f"{TARGET['max_iter']}, reference weights, early stopping"),
        "references": refs,
        "equivalence": equivalence,
        "results": results,
        "wall_s": time.perf_counter() - started,
    }
    out_dir = Path(args.output)
    write_text(out_dir / f"{name}.json", json.dumps(report, indent=2, default=str) + "\n")
    write_text(out_dir / f"{name}.md", graph_markdown(report))
    print(f"wrote {out_dir / name}.json, .md", flush=True)
    return report


def graph_sentence(r: dict[str, Any]) -> str:
    pr = r["pair_ratio"]
    met = "met" if r["target_met"] else "MISSED"
    where = "" if r.get("target_configuration", True) else " (not the target configuration)"
    return (f"{r['model']} batch {r['batch_size']}{where}: Graph {r['graph']['median_s'] * 1e3:.1f} ms vs Sequential "
            f"{r['sequential']['median_s'] * 1e3:.1f} ms (medians of {r['pairs']} interleaved pairs): ratio "
            f"{r['ratio_of_medians']:.3f}× (target ≤ {r['target']:.2f}×: {met}); per-pair ratios median "
            f"{pr['median']:.3f}, IQR {pr['q25']:.3f}–{pr['q75']:.3f}, min–max {pr['min']:.3f}–{pr['max']:.3f}"
            + ("" if r["q75_within_target"] else f" (upper quartile above {r['target']:.2f})"))


def graph_markdown(report: dict[str, Any]) -> str:
    cfg, m, step = report["config"], report["machine"], report["config"]["step"]
    lines = [
        "# revnet.Graph vs revnet.Sequential: one Deep Defense training step, interleaved", "",
        f"- machine: {m['platform']}, CPU {m['cpu']} ({m['cpu_count']} logical cores), device {m['device']} "
        f"({m['device_name']}), torch {m['torch']}, {m['threads']} threads, git {m['git_commit']}",
        "- networks: variant 1 on the `revnet.Sequential` (models.lenet()), variant 1g on `revnet.Graph(nn.Sequential)` "
        "built from its plain torch.nn copy (`benchmarks/variants.py` `to_torch`); independent copies of the same "
        "weights",
        f"- step: forward, DeepFool (max_iter {step['max_iter']}, overshoot {step['overshoot']}"
        + ("" if step["early_stop"] else ", no early stop") + f"), loss CE + {step['lmbd']:g}/N·Σexp(∓c·‖Δx‖/‖x‖) "
        f"(c {step['c']:g}, d {step['d']:g}), backward to all weights, SGD step (lr {cfg['lr']:g}, momentum 0.9); "
        f"dtype {cfg['dtype']}",
        *input_lines(report),
        f"- timing: {report['timing_method']}",
        "- why one process: both networks run within a fraction of a second of each other, under the same other "
        "load (a shared 2-core CPU here), allocator and thread pool; the ABBA order cancels drift and any "
        "first-in-pair effect. Peak memory is not measured in this mode (see step.md: one subprocess per variant)",
        f"- command: `{m['command']}` (wall time {report['wall_s']:.0f} s)", "",
        f"## Result (target: {report['target']})", "",
        "| model | batch | pairs | Sequential median ms (IQR) | Graph median ms (IQR) | ratio of medians | "
        "pair ratio median | pair ratio IQR | pair ratio min–max | median, S first / G first | ≤ 1.10 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in report["results"]:
        pr, s, g = r["pair_ratio"], r["sequential"], r["graph"]
        lines.append(
            f"| {r['model']} | {r['batch_size']} | {r['pairs']} | {s['median_s'] * 1e3:.1f} ({s['iqr_s'] * 1e3:.1f}) | "
            f"{g['median_s'] * 1e3:.1f} ({g['iqr_s'] * 1e3:.1f}) | {r['ratio_of_medians']:.3f} | {pr['median']:.3f} | "
            f"{pr['q25']:.3f}–{pr['q75']:.3f} | {pr['min']:.3f}–{pr['max']:.3f} | "
            f"{pr['by_order']['sequential_first']:.3f} / {pr['by_order']['graph_first']:.3f} | "
            f"{'met' if r['target_met'] else 'MISSED'} |")
    lines += [""] + [graph_sentence(r) + "." for r in report["results"]]
    lines += ["", "## The same step", "",
              "Float64 check before timing (`--check-batch` images, every 4th mislabelled): worst scaled error of "
              "revnet-graph's loss and weight gradients against revnet's (≤ 1 passes; DeepFool iterations equal).", "",
              "| model | loss | gradients | mean DeepFool iterations |", "| --- | ---: | ---: | ---: |"]
    for arch, checks in report["equivalence"].items():
        c = checks[GRAPH_VARIANT]
        lines.append(f"| {arch} | {c['loss_error']:.2g} | {c['grad_error']:.2g} | {c['mean_iterations']:.2f} |")
    lines += ["", f"At the timed batch ({cfg['dtype']}):", "",
              "| model | batch | loss Sequential | loss Graph | relative difference | iterations equal | "
              "DeepFool iters (mean / max) | correct |", "| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: |"]
    for r in report["results"]:
        same = r["same_step"]
        lines.append(f"| {r['model']} | {r['batch_size']} | {same['loss_sequential']:.7g} | {same['loss_graph']:.7g} | "
                     f"{same['loss_rel_diff']:.1e} | {'yes' if same['iterations_equal'] else 'NO'} | "
                     f"{same['mean_iterations']:.2f} / {same['max_iterations']} | {same['correct']}/{r['batch_size']} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------
# Reports.


def target_sentence(target: dict[str, Any]) -> str:
    where = f"{target['model']} batch {target['batch_size']}"
    if "time_vs_fastest_autograd_measured" not in target and "time_vs_shortcut_measured" not in target:
        return f"target ({where}, max_iter 5, reference weights): not measured in this run (" + "; ".join(
            target["not_applicable"]) + ")."
    spreads = target.get("round_spread", {})

    def part(key: str, label: str, variant: Optional[str] = None) -> str:
        value = target.get(key + "_measured")
        if value is None:
            return f"{label}: not measured"
        met = "met" if target[key + "_met"] else "MISSED"
        sp = spreads.get(variant) if variant else None
        spread_text = f", rounds IQR {sp['q25']:.2f}–{sp['q75']:.2f}, min–max {sp['min']:.2f}–{sp['max']:.2f}" \
            if sp else ""
        return f"{label} {value:.2f}×{spread_text} (target ≤ {TARGET[key]}×: {met})"

    head = "target" if target["in_run"] else "target-like ratios (" + "; ".join(target["not_applicable"]) + ")"
    fastest = target.get("fastest_autograd") or "–"
    source = f" [times: {target['time_source']}]" if target.get("time_source") else ""
    return (f"{head}, {where}{source}: "
            + part("time_vs_fastest_autograd", f"time vs fastest of 2-4 ({fastest})", target.get("fastest_autograd"))
            + "; " + part("memory_vs_fastest_autograd", "peak memory vs it") + "; "
            + part("time_vs_shortcut", "time vs variant 5", "autograd-shortcut") + ".")


def markdown(report: dict[str, Any]) -> str:
    cfg, m, step = report["config"], report["machine"], report["config"]["step"]
    archs = list(report["references"])
    random_only = all(a in RANDOM_MODELS for a in archs)
    weights = "random-init weights" if random_only else "reference weights"
    mode = "every sample runs all iterations (--no-early-stop)" if not step["early_stop"] else \
        f"{weights}, DeepFool stops early per sample"
    title = f"{', '.join(archs)}: " if random_only else ""
    lines = [
        f"# {title}Deep Defense training step: revnet vs autograd ({mode})", "",
        f"- machine: {m['platform']}, CPU {m['cpu']} ({m['cpu_count']} logical cores), device {m['device']} "
        f"({m['device_name']}), torch {m['torch']}, {m['threads']} threads, git {m['git_commit']}",
        f"- step: forward, DeepFool (max_iter {step['max_iter']}, overshoot {step['overshoot']}), loss "
        f"CE + {step['lmbd']:g}/N·Σexp(∓c·‖Δx‖/‖x‖) (c {step['c']:g}, d {step['d']:g}), backward to all weights, "
        f"SGD step (lr {cfg['lr']:g}, momentum 0.9); dtype {cfg['dtype']}"
        + (f", autocast {cfg['amp_dtype']}" if cfg["amp_dtype"] else ""),
        *input_lines(report),
        f"- timing: {report['timing_method']}; median and interquartile range (IQR) in ms",
        f"- peak memory: above the baseline just before the first step (after a 1-image priming step), "
        + ("fresh subprocess per variant" if report["isolation"] == "subprocess" else
           "all variants in one process (allocator reuse: indicative only)")
        + (f"; {report['results'][0].get('memory_method', '')}" if report["results"] else ""),
        f"- command: `{m['command']}`" + (f" (wall time {report['wall_s']:.0f} s)" if "wall_s" in report else ""),
        "",
        "## Time per step", "",
        "| model | batch | variant | median ms | IQR ms | × revnet | peak MiB | DeepFool iters (mean / max) | "
        "correct | loss |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    variants = report["variants"]
    for r in report["results"]:
        label = f"{variants[r['variant']]['number']}. {r['variant']}"
        if "error" in r:
            lines.append(f"| {r['model']} | {r['batch_size']} | {label} | failed: "
                         f"{r['error'].splitlines()[-1][:80]} | | | | | | |")
            continue
        rev = next((x for x in report["results"] if x["model"] == r["model"] and x["batch_size"] == r["batch_size"]
                    and x["variant"] == "revnet" and "error" not in x), None)
        rel = r["median_s"] / rev["median_s"] if rev else None
        lines.append(
            f"| {r['model']} | {r['batch_size']} | {label} | {r['median_s'] * 1e3:.1f} | {r['iqr_s'] * 1e3:.1f} | "
            f"{fmt(rel)} | {r['peak_mib']:.1f} | {r['mean_iterations']:.2f} / {r['max_iterations']} | "
            f"{r['correct']}/{r['batch_size']} | {r['loss']:.4g} |")
    if report.get("interleaved"):
        lines += ["", "## Interleaved rounds (one process)", "",
                  "After the separate runs, all variants of a (model, batch size) run once per round in this process, "
                  "in alternating order (A B C …, … C B A), weights restored outside the timed region; the ratio is "
                  "taken per round, so machine drift cancels.", "",
                  "| model | batch | rounds | variant | median ms | IQR ms | revnet ÷ this: median (IQR; min–max) |",
                  "| --- | ---: | ---: | --- | ---: | ---: | ---: |"]
        for block in report["interleaved"]:
            for key, t in block["variants"].items():
                sp = block.get("revnet_over", {}).get(key)
                cell = f"{sp['median']:.3f} ({sp['q25']:.3f}–{sp['q75']:.3f}; {sp['min']:.3f}–{sp['max']:.3f})" \
                    if sp else "1"
                lines.append(f"| {block['model']} | {block['batch_size']} | {block['rounds']} | "
                             f"{ALL_VARIANTS[key].number}. {key} | {t['median_s'] * 1e3:.1f} | {t['iqr_s'] * 1e3:.1f} | "
                             f"{cell} |")
    compiled = [r for r in report["results"] if "compile" in r]
    if compiled:
        lines += ["", "## torch.compile (variant 1c)", "",
                  "Compile time is the time of the untimed first steps (the 1-sample priming step and the warm-up "
                  "steps, which compile the 1-sample and the dynamic-shape graphs), apart from the step time above; "
                  "recompiles: frames compiled during the timed steps.", "",
                  "| model | batch | first steps s (compile) | frames compiled before timing | recompiles while timed |",
                  "| --- | ---: | ---: | ---: | ---: |"]
        for r in compiled:
            c = r["compile"]
            lines.append(f"| {r['model']} | {r['batch_size']} | {c['first_steps_s']:.1f} | {c['frames_before_timing']} | "
                         f"{c['recompiles_during_timing']} |")
    targets = report.get("targets") or [report["target"]]
    lines += ["", "## Ratios (revnet ÷ the other)" if random_only else "## Against the targets", ""]
    if not random_only:
        lines += [f"- {target_sentence(t)}" for t in targets] + [""]
    lines += ["Targets (issue 17): LeNet and the MLP, batch 100, max_iter 5, reference weights: revnet ≤ 0.5× the "
              "time of the fastest of variants 2-4, ≤ 0.8× its peak memory, and ≤ 0.9× the time of variant 5. Times: "
              "the median of the per-round ratios of the interleaved rounds (one process; `--rounds`), memory: the "
              "separate runs (one fresh subprocess per variant). Ratios for every configuration of this run (revnet ÷ "
              "the other):", "",
              "| model | batch | fastest of 2-4 | time ratio (≤ 0.5) | memory ratio (≤ 0.8) | time vs 5 (≤ 0.9) | "
              "memory vs 5 | time 1g ÷ 1 |", "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in report["ratios"]:
        lines.append(f"| {r['model']} | {r['batch_size']} | {r.get('fastest_autograd', '–')} | "
                     f"{fmt(r.get('time_vs_fastest_autograd'))} | {fmt(r.get('memory_vs_fastest_autograd'))} | "
                     f"{fmt(r.get('time_vs_shortcut'))} | {fmt(r.get('memory_vs_shortcut'))} | "
                     f"{fmt(r.get('graph_vs_sequential'))} |")
    if any("graph_vs_sequential" in r for r in report["ratios"]):
        lines += ["", "Time 1g ÷ 1 compares medians of separate subprocesses; the interleaved measurement with "
                      "its spread is `--graph-vs-sequential` (graph-vs-sequential.md)."]
    amp_rows = [r for r in report["results"] if "amp_vs_fp32" in r]
    if amp_rows:
        lines += ["", f"## Mixed precision ({cfg['amp_dtype']}) against {cfg['dtype']}", "",
                  f"Beyond tolerance = any sample whose DeepFool iterations or success change, or a loss change "
                  f"above {AMP_TOLERANCE:g} (relative).", "",
                  "| model | batch | variant | loss rel. change | grad rel. change | iterations differ | "
                  "success differs | beyond tolerance |", "| --- | ---: | --- | ---: | ---: | ---: | ---: | --- |"]
        for r in amp_rows:
            a = r["amp_vs_fp32"]
            lines.append(f"| {r['model']} | {r['batch_size']} | {r['variant']} | {a['loss_rel_change']:.2e} | "
                         f"{a['grad_rel_change']:.2e} | {a['iterations_differ_frac']:.0%} | "
                         f"{a['success_differ_frac']:.0%} | {'yes' if a['beyond_tolerance'] else 'no'} |")
    lines += ["", "## Equivalence (float64, before timing)", "",
              "Each variant's loss and weight gradients against revnet's: worst |a − e| / (1e-12 + 1e-10·|e|) after "
              "dividing both by max(1, max|e|); ≤ 1 passes. DeepFool iterations and success are equal too.", "",
              "| model | variant | loss | gradients | mean DeepFool iterations |", "| --- | --- | ---: | ---: | ---: |"]
    for arch, checks in report["equivalence"].items():
        for key, c in checks.items():
            lines.append(f"| {arch} | {key} | {c['loss_error']:.2g} | {c['grad_error']:.2g} | "
                         f"{c['mean_iterations']:.2f} |")
    lines += ["", "## Variants", ""]
    lines += [f"{v['number']}. **{k}**: {v['summary']}." for k, v in variants.items()]
    lines += ["", "Variants 2-4 run the whole batch every DeepFool iteration until every sample has stopped "
                  "(finished samples masked); variants 1, 1g and 5 drop finished samples from the batch."]
    if any(a in RANDOM_MODELS for a in archs):
        lines += ["", "resnet18-32/-224: variant 1 is `revnet.convert(torchvision.models.resnet18(num_classes=10))`, "
                      "a `revnet.Graph`; convnet-cifar: `models.cifar.convnet()`, a `revnet.Sequential` (variant 1g "
                      "is not run for these); variants 2-5 run on the plain torch.nn model."]
    if not step["early_stop"]:
        lines += ["", "**--no-early-stop**: every variant runs all max_iter iterations for every sample (samples "
                      "keep stepping after their label flipped); variant 1 through "
                      "`deep_defense_loss(early_stop=False)`."]
    return "\n".join(lines) + "\n"


def input_lines(report: dict[str, Any]) -> list[str]:
    """The Markdown lines describing the inputs and weights of each model of a run."""
    refs = report["references"]
    lines = []
    mnist = [a for a in refs if a not in RANDOM_MODELS]
    if mnist:
        lines.append("- inputs (" + ", ".join(mnist) + "): the first N images of the embedded MNIST training split, "
                     "shape (N, 1, 28, 28), true labels; weights: " + "; ".join(f"{a} {refs[a]['origin']}"
                                                                               for a in mnist))
    for arch in (a for a in refs if a in RANDOM_SPECS):
        seed = report["config"].get("seed", 0)
        shape = ", ".join(str(d) for d in RANDOM_SPECS[arch][0])
        lines.append(f"- inputs ({arch}): **random data** (no CIFAR-10/ImageNet offline): N(0, 1) images of shape (N, "
                     f"{shape}) from torch.Generator().manual_seed({seed}); labels = the network's clean predictions "
                     "with every 4th shifted by one class (≈3/4 untargeted, 1/4 targeted DeepFool); weights: "
                     + refs[arch]["origin"])
    return lines


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    archs = list(dict.fromkeys(r["model"] for r in report["results"]))
    fig, axes = plt.subplots(1, max(1, len(archs)), figsize=(5.5 * max(1, len(archs)), 4.2), squeeze=False)
    for ax, arch in zip(axes[0], archs):
        for key, v in report["variants"].items():
            rows = sorted((r for r in report["results"] if r["model"] == arch and r["variant"] == key
                           and "error" not in r), key=lambda r: r["batch_size"])
            if not rows:
                continue
            b = [r["batch_size"] for r in rows]
            med = [r["median_s"] * 1e3 for r in rows]
            err = [[(r["median_s"] - r["q25_s"]) * 1e3 for r in rows],
                   [(r["q75_s"] - r["median_s"]) * 1e3 for r in rows]]
            ax.errorbar(b, med, yerr=err, marker="o", capsize=3, label=f"{v['number']}. {key}",
                        linewidth=2.5 if key == "revnet" else 1.2)
        ax.set_xscale("log")
        ax.set_yscale("log")
        sizes = sorted({r["batch_size"] for r in report["results"]})
        ax.set_xticks(sizes, [str(b) for b in sizes])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xlabel("batch size")
        ax.set_ylabel("time per step (ms, median; bars: IQR)")
        weights = "random init, random data" if arch in RANDOM_MODELS else "reference weights"
        ax.set_title(f"{arch}, max_iter {report['config']['step']['max_iter']}, "
                     + (weights if report["config"]["step"]["early_stop"] else "no early stop"))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Deep Defense step on {report['machine']['device_name']} ({report['machine']['threads']} threads)",
                 fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def profile_markdown(results: list[dict[str, Any]]) -> str:
    lines = ["# torch.profiler: one step per configuration (top operators by self time)", ""]
    for r in results:
        if "profile" in r:
            lines += [f"## {r['model']}, batch {r['batch_size']}, {r['variant']}", "", "```", r["profile"], "```", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    from torch.nn.attention import SDPBackend, sdpa_kernel

    # torch's fused CPU attention has no double backward, which the autograd variants need (ViT); revnet's own
    # attention rule does not call it, so the math backend changes only the autograd side, and only for models
    # with attention
    with sdpa_kernel(SDPBackend.MATH):
        main(get_args_parser().parse_args())
