"""One data pipeline per dataset for ``finetune.py`` and ``evaluate.py``: datasets, input shape, classes and the
normalisation that goes into every checkpoint.

``load_pipeline(dataset, data_dir, ...)`` returns a ``Pipeline``:

==============  ===========================  =====================================  ============================
dataset         files                        items (raw)                            normalisation (checkpoint)
==============  ===========================  =====================================  ============================
mnist           DIR/MNIST/raw/ (IDX)         uint8 ``(1, 28, 28)``                  x/255 − per-pixel mean
fashion-mnist   DIR/FashionMNIST/raw/        uint8 ``(1, 28, 28)``                  x/255 − per-pixel mean
cifar10         DIR/cifar-10-batches-py/     uint8 ``(3, 32, 32)``                  (x/255 − mean_c) / std_c
imagenet        DIR/train/, DIR/val/         float32 ``(3, crop, crop)`` in [0, 1]  (x − mean_c) / std_c
==============  ===========================  =====================================  ============================

The per-pixel MNIST mean is that of the training images used; the per-channel CIFAR-10 and ImageNet statistics are
the standard ones (``normalization.cifar10_stats``/``imagenet_stats``). ‖x‖ in ρ₂ is the norm of the network input,
i.e. after this normalisation. The preprocessing dict ``{"scale", "mean"[, "std"]}`` is applied by
``normalization.preprocess``; checkpoints written before ``std`` existed (MNIST) keep loading.

MNIST and Fashion-MNIST keep their whole-tensor loading (``sources.mnist.load``: IDX files checked, the embedded subset
offline) and are wrapped as ``loaders.TensorImages``; their sample order is unchanged, so runs are bit-exact with
the earlier path (``tests/app/test_regression.py``).

``balanced_subset(labels, n, seed)`` chooses class-balanced evaluation subsets (``--eval-subset balanced``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset

from revnet_app.train.sources import cifar10 as cifar10_source
from revnet_app.train.sources import imagenet as imagenet_source
from revnet_app.train.sources import mnist as mnist_source
from revnet_app.train import normalization
from revnet_app.train import sources
from revnet_app.train.loaders import SeededItems, TensorImages

DATASETS = ("mnist", "fashion-mnist", "cifar10", "imagenet")
NUM_CLASSES = {"mnist": 10, "fashion-mnist": 10, "cifar10": 10, "imagenet": 1000}
DATA_HELP = {
    "mnist": "MNIST: --data-dir DIR with DIR/MNIST/raw/ (the 4 IDX files, .gz or not); default ./data, downloading if "
             "possible, else the embedded 5,000-image subset",
    "fashion-mnist": "Fashion-MNIST: --data-dir DIR with DIR/FashionMNIST/raw/; default ./data, filled from "
                     "`apt-get install dataset-fashion-mnist` or a download",
    "cifar10": f"CIFAR-10 (python version): --data-dir DIR with {cifar10_source.CIFAR10_LAYOUT} (downloaded there when online "
               "and --no-download is not given)",
    "imagenet": f"ImageNet (ILSVRC-2012) in ImageFolder layout: --data-dir DIR with {imagenet_source.IMAGENET_LAYOUT} (never "
                "downloaded)",
}


@dataclass
class Pipeline:
    """The data of one run: raw-item datasets, their shapes and the preprocessing of the network input."""

    dataset: str
    train_set: Dataset  # items (raw image, label); shuffled by loaders.EpochBatches
    val_set: Dataset  # held-out training images (evaluation preprocessing), possibly empty
    test_set: Dataset  # in file order: "the first N test images"
    test_targets: Tensor  # int64 (N_test,), for class-balanced subsets
    preprocess: dict  # {"scale": float, "mean": Tensor, "std": Tensor (optional)}
    input_shape: tuple  # (C, H, W) of the network input
    num_classes: int
    source: str  # one sentence for logs and run directories
    fingerprint_tensors: list = field(default_factory=list)  # what keys the reference cache (in-memory data)
    raw_max: float = 255.0  # the largest raw pixel value (uint8: 255, float images: 1.0)
    in_memory: bool = True  # whether the raw images are held in memory (MNIST, CIFAR-10)
    train_eval_set: Optional[Dataset] = None  # the training images with the evaluation preprocessing (ImageNet)


def balanced_subset(labels: Union[Tensor, np.ndarray, Sequence[int]], n: int, seed: int) -> Tensor:
    """Sorted int64 indices of ``n`` of the items with these ``labels``: as nearly as possible the same number
    per class (the counts of any two classes differ by at most one, except that a class with fewer items than its
    share gives all it has and the others make up the difference), a seeded random choice within each class (and
    of the classes that get one more when ``n`` is not a multiple of the number of classes); the same ``labels``,
    ``n`` and ``seed`` give the same indices. ``n`` larger than the number of items is a ``DataError``."""
    labels = torch.as_tensor(np.asarray(labels) if not isinstance(labels, Tensor) else labels).long().flatten().cpu()
    if n < 0 or n > len(labels):
        raise sources.DataError(f"cannot choose {n} evaluation images from {len(labels)}.")
    if n == 0:
        return torch.zeros(0, dtype=torch.long)
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=gen)
    shuffled = labels[order]
    # rank of each item within its class, in shuffled order
    by_class = torch.argsort(shuffled, stable=True)
    _, counts = torch.unique(shuffled[by_class], return_counts=True)
    starts = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    rank = torch.empty_like(order)
    rank[by_class] = torch.arange(len(labels)) - starts
    # round-robin over the classes: all rank-0 items (in shuffled order), then all rank-1 items, ...
    chosen = order[torch.argsort(rank, stable=True)[:n]]
    return torch.sort(chosen).values


def _split(n: int, n_val: int, labels: Tensor, seed: int) -> tuple[Tensor, Tensor]:
    """(kept, held-out) training indices: ``n_val`` a seeded class-balanced choice (as ``sources.mnist.Splits.hold_out``)."""
    if n_val <= 0:
        return torch.arange(n), torch.zeros(0, dtype=torch.long)
    if n_val >= n:
        raise sources.DataError(f"--val-size {n_val} leaves no training images (the training set has {n}).")
    val = balanced_subset(labels, n_val, seed)
    keep = torch.ones(n, dtype=torch.bool)
    keep[val] = False
    return torch.nonzero(keep).flatten(), val


def _train_subset(n: int, train_samples: int, seed: int) -> Tensor:
    """A seeded random ``train_samples`` of ``n`` indices, sorted (as finetune.py has always drawn them)."""
    keep = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return keep[:train_samples].sort().values


def load_pipeline(dataset: str, data_dir: Optional[str], *, download: bool, val_size: int = 0,
                  train_samples: int = 0, seed: int = 0, crop: int = 224) -> Pipeline:
    """The ``Pipeline`` of ``dataset`` (see the module docstring); a ``sources.DataError`` (one line naming the flag
    or the file) if the data cannot be found or read."""
    if dataset in mnist_source.DATASETS:
        return _mnist_like(dataset, data_dir, download, val_size, train_samples, seed)
    if dataset == "cifar10":
        return _cifar10(data_dir, download, val_size, train_samples, seed)
    if dataset == "imagenet":
        return _imagenet(data_dir, download, val_size, train_samples, seed, crop)
    raise sources.DataError(f"unknown dataset {dataset!r}; choose one of: {', '.join(DATASETS)}.")


def _mnist_like(dataset, data_dir, download, val_size, train_samples, seed) -> Pipeline:
    splits = mnist_source.load(dataset, data_dir, download=download)
    splits, (val_x, val_y) = splits.hold_out(val_size, seed)
    if train_samples:
        keep = _train_subset(len(splits.train_y), train_samples, seed)
        splits.train_x, splits.train_y = splits.train_x[keep], splits.train_y[keep]
    return Pipeline(dataset, TensorImages(splits.train_x, splits.train_y), TensorImages(val_x, val_y),
                    TensorImages(splits.test_x, splits.test_y), splits.test_y,
                    normalization.preprocess_params(splits.train_x), tuple(splits.train_x.shape[1:]), 10, splits.source,
                    [splits.train_x, splits.train_y])


def _cifar10(data_dir, download, val_size, train_samples, seed) -> Pipeline:
    if data_dir is None:
        raise sources.DataError(f"CIFAR-10 needs --data-dir DIR with {cifar10_source.CIFAR10_LAYOUT} (it is downloaded into DIR "
                                 "when online).")
    train = cifar10_source.cifar10(data_dir, True, download=download)
    test = cifar10_source.cifar10(data_dir, False, download=False)
    keep, val = _split(len(train), val_size, train.targets, seed)
    if train_samples:
        keep = keep[_train_subset(len(keep), train_samples, seed)]
    stats = normalization.cifar10_stats()
    x, y = train.data, train.targets
    return Pipeline("cifar10", TensorImages(x[keep], y[keep]), TensorImages(x[val], y[val]),
                    TensorImages(test.data, test.targets), test.targets,
                    {"scale": 1.0 / 255.0, "mean": stats["mean"], "std": stats["std"]}, (3, 32, 32), 10,
                    f"cifar10 from {data_dir} ({len(keep)} training / {len(test)} test images)", [x[keep], y[keep]])


def _imagenet(data_dir, download, val_size, train_samples, seed, crop) -> Pipeline:
    if data_dir is None:
        raise sources.DataError(f"ImageNet needs --data-dir DIR with {imagenet_source.IMAGENET_LAYOUT} (it is never downloaded).")
    train = imagenet_source.imagenet(data_dir, True, crop=crop)
    train_eval = imagenet_source.imagenet(data_dir, True, crop=crop, transform=imagenet_source.imagenet_transform(False, crop))
    test = imagenet_source.imagenet(data_dir, False, crop=crop)
    if test.classes != train.classes:
        raise sources.DataError(f"--data-dir {data_dir}: val/ has {len(test.classes)} class folders and train/ "
                                 f"{len(train.classes)}, or other names; both need the same class folders.")
    targets = torch.tensor(train.targets, dtype=torch.long)
    keep, val = _split(len(train), val_size, targets, seed)
    if train_samples:
        keep = keep[_train_subset(len(keep), train_samples, seed)]
    stats = normalization.imagenet_stats()
    return Pipeline("imagenet", SeededItems(Subset(train, keep.tolist()), seed), Subset(train_eval, val.tolist()),
                    test, torch.tensor(test.targets, dtype=torch.long),
                    {"scale": 1.0, "mean": stats["mean"], "std": stats["std"]}, (3, crop, crop), len(train.classes),
                    f"imagenet from {data_dir} ({len(keep)} training / {len(test)} validation images, "
                    f"{len(train.classes)} classes, crop {crop})", [], raw_max=1.0, in_memory=False,
                    train_eval_set=Subset(train_eval, keep.tolist()))
