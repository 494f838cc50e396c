"""From raw images to network input, and the statistics that define it (stored in every checkpoint).

* MNIST and Fashion-MNIST: ``preprocess_params(train_x)`` gives ``{"scale": 1/255, "mean": (1, 28, 28)}``, the
  per-pixel mean of x/255 over the training images.
* CIFAR-10 and ImageNet: per-channel ``{"mean": (C, 1, 1), "std": (C, 1, 1)}`` (with ``"scale"``).

**Normalisation** — ``channel_stats(dataset)`` computes the per-channel mean and (population) standard deviation
of a dataset's images over a DataLoader in bounded memory; ``IMAGENET_MEAN``/``IMAGENET_STD`` are the standard
constants (``imagenet_stats()``), ``CIFAR10_MEAN``/``CIFAR10_STD`` what ``channel_stats`` gives on the real
CIFAR-10 training set (``cifar10_stats()``). Both come as ``{"mean": Tensor (C, 1, 1), "std": Tensor (C, 1, 1)}``
(float32), to be stored in a checkpoint and applied with ``normalize(x, stats)`` to ``(N, C, H, W)`` or
``(C, H, W)`` images in [0, 1].

``preprocess(x, params)`` applies any of them to raw images; ``pixel_range`` is the range of valid inputs.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from revnet_app.train.sources import DataError

# what channel_stats gives on the 50,000 real CIFAR-10 training images (x/255, population std over all pixels)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _stats(mean: Sequence[float], std: Sequence[float]) -> dict:
    return {"mean": torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1),
            "std": torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)}


def imagenet_stats() -> dict:
    """ImageNet's standard ``{"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}`` as float32
    ``(3, 1, 1)`` tensors."""
    return _stats(IMAGENET_MEAN, IMAGENET_STD)


def cifar10_stats() -> dict:
    """The per-channel mean/std of the real CIFAR-10 training set (``CIFAR10_MEAN``/``CIFAR10_STD``, what
    ``channel_stats(cifar10(DIR, train=True, ...))`` gives to 4 digits) as float32 ``(3, 1, 1)`` tensors."""
    return _stats(CIFAR10_MEAN, CIFAR10_STD)


@torch.no_grad()
def channel_stats(dataset: Dataset, *, batch_size: int = 500, num_workers: int = 0) -> dict:
    """Per-channel mean and population standard deviation over all pixels of all images of ``dataset`` (items
    ``(image (C, H, W) tensor, label)``, all the same size within a batch), accumulated in float64 over a
    DataLoader (memory: one batch). Returns ``{"mean": Tensor (C, 1, 1), "std": Tensor (C, 1, 1)}``, float32."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    total = total_sq = None
    count = 0
    for batch in loader:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        x = x.double()
        s, sq = x.sum(dim=(0, 2, 3)), (x * x).sum(dim=(0, 2, 3))
        total, total_sq = (s, sq) if total is None else (total + s, total_sq + sq)
        count += x.shape[0] * x.shape[2] * x.shape[3]
    if not count:
        raise DataError("channel_stats: the dataset holds no images.")
    mean = total / count
    var = (total_sq / count - mean * mean).clamp_min(0.0)
    return {"mean": mean.float().view(-1, 1, 1), "std": var.sqrt().float().view(-1, 1, 1)}


def normalize(x: Tensor, stats: dict) -> Tensor:
    """``(x - mean) / std`` per channel for ``x`` of shape ``(N, C, H, W)`` or ``(C, H, W)`` in [0, 1]; the
    statistics are moved to ``x``'s device and dtype."""
    mean = stats["mean"].to(device=x.device, dtype=x.dtype)
    std = stats["std"].to(device=x.device, dtype=x.dtype)
    return (x - mean) / std


def preprocess_params(train_x: Tensor) -> dict:
    """``{"scale": 1/255, "mean": (1, 28, 28) per-pixel mean of x/255 over the training images}``."""
    return {"scale": 1.0 / 255.0, "mean": (train_x.double() / 255.0).mean(0).float()}


def preprocess(x_uint8: Tensor, params: dict, dtype: torch.dtype = torch.float32) -> Tensor:
    """Network input as ``dtype`` (float32 by default): ``x·scale − mean``, then divided by ``std`` if ``params``
    has one, computed in ``dtype``. MNIST: ``x/255 − per-pixel mean``, ``(N, 1, 28, 28)``; CIFAR-10 and ImageNet:
    ``(x·scale − mean_c) / std_c`` per channel (``mean``/``std`` of shape ``(C, 1, 1)``)."""
    out = x_uint8.to(dtype) * params["scale"] - params["mean"].to(x_uint8.device, dtype)
    if params.get("std") is not None:
        out = out / params["std"].to(x_uint8.device, dtype)
    return out


def pixel_range(params: dict, shape: tuple, raw_max: float = 255.0) -> tuple[float, float]:
    """The smallest and largest network input (``preprocess`` of all-0 and all-``raw_max`` images of ``shape``):
    the valid range that ``--clip`` clamps FGS images to."""
    lo = preprocess(torch.zeros(1, *shape), params).min().item()
    hi = preprocess(torch.full((1, *shape), float(raw_max)), params).max().item()
    return lo, hi
