"""One checkpoint format for every model: architecture, weights, preprocessing, metrics, configuration.

``{"arch": str, "state_dict": {...}, "preprocess": {"mean": Tensor INPUT_SHAPES[arch], "scale": float},
"metrics": {...}, "config": {...}}`` holds tensors and Python builtins only, so ``torch.load(path,
weights_only=True)`` reads it. Files are written atomically (temporary file, then ``os.replace``), so a
killed process never leaves a truncated checkpoint behind.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor, nn

from . import cifar, imagenet, mnist

ARCHITECTURES = {
    "mlp": mnist.mlp,
    "lenet": mnist.lenet,
    "convnet": cifar.convnet,
    "nin": cifar.nin,
    "alexnet": imagenet.alexnet,
    "resnet18": imagenet.resnet18,
}
"""Architecture name -> a function returning a fresh reversible network (``revnet.Sequential`` or ``revnet.Graph``)."""

INPUT_SHAPES = {
    "mlp": (1, 28, 28),
    "lenet": (1, 28, 28),
    "convnet": (3, 32, 32),
    "nin": (3, 32, 32),
    "alexnet": (3, 224, 224),
    "resnet18": (3, 224, 224),
}
"""Architecture name -> the per-sample input shape ``(C, H, W)`` it was designed for (inputs are ``(N, C, H, W)``)."""

NUM_CLASSES = {"mlp": 10, "lenet": 10, "convnet": 10, "nin": 10, "alexnet": 1000, "resnet18": 1000}
"""Architecture name -> the number of logits it returns (MNIST and CIFAR-10: 10, ImageNet: 1000)."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, unreadable, or of another architecture."""


def build(arch: str) -> nn.Module:
    """A fresh reversible network of the named architecture (a key of ``ARCHITECTURES``)."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown model {arch!r}; choose one of: {', '.join(sorted(ARCHITECTURES))}.")
    return ARCHITECTURES[arch]()


def save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save(
    path: str | os.PathLike,
    arch: str,
    net: torch.nn.Module,
    preprocess: dict[str, Any],
    metrics: Optional[dict[str, Any]] = None,
    config: Optional[dict[str, Any]] = None,
) -> None:
    """Write a checkpoint (see the module docstring) atomically."""
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    pre = {k: (v.detach().cpu() if isinstance(v, Tensor) else v) for k, v in preprocess.items()}
    save_atomic(
        {"arch": arch, "state_dict": state, "preprocess": pre, "metrics": metrics or {}, "config": config or {}}, path
    )


def load(
    path: str | os.PathLike, *, arch: Optional[str] = None, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Read a checkpoint with ``weights_only=True``; return ``(net, checkpoint)`` with ``net`` in eval mode.

    ``arch``, if given, must match the checkpoint's architecture.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; pass the path of a .pt file written by train/finetune.py.")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - report any unreadable file the same way
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(ckpt, dict) or not {"arch", "state_dict", "preprocess"} <= ckpt.keys():
        raise CheckpointError(f"{path} is not a revnet checkpoint (needs arch, state_dict and preprocess).")
    if arch is not None and ckpt["arch"] != arch:
        raise CheckpointError(f"{path} holds a {ckpt['arch']!r} model, not {arch!r}; pass a {arch} checkpoint.")
    net = build(ckpt["arch"])
    net.load_state_dict(ckpt["state_dict"])
    return net.to(map_location).eval(), ckpt
