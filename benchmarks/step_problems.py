"""What ``step.py`` times: the models (the paper's MNIST networks with trained references, and randomly initialised
larger ones), their batches and the float64 equivalence batch, and which batch sizes and variants a run takes."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Optional

import torch

from revnet_app import models
from revnet_app.train import normalization
from revnet_app.train.sources import mnist as mnist_source
from revnet_app.benchmarks.variants import COMPILED, StepConfig

ROOT = Path(__file__).resolve().parents[1]
GRAPH_VARIANT = "revnet-graph"
GRAPH_TARGET = 1.10  # a Graph built from a chain: within 10% of the Sequential step (ratio of the medians)

MASKED = ("autograd-loop", "autograd-batched", "torch-func")  # variants 2-4
# issue 17's targets (issue 5 had "no slower than variant 5"), for LeNet and the MLP at batch 100 on the CPU
TARGET = {"model": "lenet", "batch_size": 100, "max_iter": 5, "early_stop": True,
          "time_vs_fastest_autograd": 0.5, "memory_vs_fastest_autograd": 0.8, "time_vs_shortcut": 0.9}
TARGET_CONFIGS = (("lenet", 100), ("mlp", 100))
AMP_TOLERANCE = 1e-2  # relative change of the loss / ‖Δx‖ above which mixed precision "changes DeepFool's results"
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
        splits = mnist_source.embedded_mnist()
        pre = normalization.preprocess_params(splits.train_x)
        torch.manual_seed(args.seed)
        net = models.build(arch)
        start = time.perf_counter()
        engine.train_reference(net, normalization.preprocess(splits.train_x, pre), splits.train_y, epochs=args.ref_epochs,
                               lr=args.ref_lr, batch_size=100, seed=args.seed, progress=False)
        with torch.no_grad():
            acc = (net(normalization.preprocess(splits.test_x, pre)).argmax(1) == splits.test_y).double().mean().item()
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
    splits = mnist_source.embedded_mnist()
    images, labels = (splits.train_x, splits.train_y) if split == "train" else (splits.test_x, splits.test_y)
    if batch_size > len(labels):
        raise SystemExit(f"error: batch size {batch_size} exceeds the {len(labels)} embedded {split} images.")
    x = normalization.preprocess(images[:batch_size], ckpt["preprocess"])
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


def shortcut_engine_for(choice: str, device: torch.device) -> str:
    """``--shortcut-choice`` on ``device``: ``auto`` is the loop on the CPU, batched on CUDA."""
    return ("batched" if device.type == "cuda" else "loop") if choice == "auto" else choice


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


def step_config(args: argparse.Namespace) -> StepConfig:
    """The Deep Defense settings of the timed step, from the flags."""
    return StepConfig(lmbd=args.lmbda, c=args.c, d=args.d, max_iter=args.max_iter, overshoot=args.overshoot,
                      early_stop=not args.no_early_stop, class_chunk=args.class_chunk)
