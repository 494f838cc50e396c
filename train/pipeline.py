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
the standard ones (``datasets.cifar10_stats``/``imagenet_stats``). ‖x‖ in ρ₂ is the norm of the network input,
i.e. after this normalisation. The preprocessing dict ``{"scale", "mean"[, "std"]}`` is applied by
``data.preprocess``; checkpoints written before ``std`` existed (MNIST) keep loading.

MNIST and Fashion-MNIST keep their whole-tensor loading (``data.load``: IDX files checked, the embedded subset
offline) and are wrapped as ``loaders.TensorImages``; their sample order is unchanged, so runs are bit-exact with
the earlier path (``tests/app/test_regression.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset

from revnet_app.train import data as data_lib
from revnet_app.train import datasets as ds
from revnet_app.train.loaders import SeededItems, TensorImages

DATASETS = ("mnist", "fashion-mnist", "cifar10", "imagenet")
NUM_CLASSES = {"mnist": 10, "fashion-mnist": 10, "cifar10": 10, "imagenet": 1000}
DATA_HELP = {
    "mnist": "MNIST: --data-dir DIR with DIR/MNIST/raw/ (the 4 IDX files, .gz or not); default ./data, downloading if "
             "possible, else the embedded 5,000-image subset",
    "fashion-mnist": "Fashion-MNIST: --data-dir DIR with DIR/FashionMNIST/raw/; default ./data, filled from "
                     "`apt-get install dataset-fashion-mnist` or a download",
    "cifar10": f"CIFAR-10 (python version): --data-dir DIR with {ds.CIFAR10_LAYOUT} (downloaded there when online "
               "and --no-download is not given)",
    "imagenet": f"ImageNet (ILSVRC-2012) in ImageFolder layout: --data-dir DIR with {ds.IMAGENET_LAYOUT} (never "
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


def _split(n: int, n_val: int, labels: Tensor, seed: int) -> tuple[Tensor, Tensor]:
    """(kept, held-out) training indices: ``n_val`` a seeded class-balanced choice (as ``data.Splits.hold_out``)."""
    if n_val <= 0:
        return torch.arange(n), torch.zeros(0, dtype=torch.long)
    if n_val >= n:
        raise data_lib.DataError(f"--val-size {n_val} leaves no training images (the training set has {n}).")
    val = ds.balanced_subset(labels, n_val, seed)
    keep = torch.ones(n, dtype=torch.bool)
    keep[val] = False
    return torch.nonzero(keep).flatten(), val


def _train_subset(n: int, train_samples: int, seed: int) -> Tensor:
    """A seeded random ``train_samples`` of ``n`` indices, sorted (as finetune.py has always drawn them)."""
    keep = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return keep[:train_samples].sort().values


def load_pipeline(dataset: str, data_dir: Optional[str], *, download: bool, val_size: int = 0,
                  train_samples: int = 0, seed: int = 0, crop: int = 224) -> Pipeline:
    """The ``Pipeline`` of ``dataset`` (see the module docstring); a ``data.DataError`` (one line naming the flag
    or the file) if the data cannot be found or read."""
    if dataset in data_lib.DATASETS:
        return _mnist_like(dataset, data_dir, download, val_size, train_samples, seed)
    if dataset == "cifar10":
        return _cifar10(data_dir, download, val_size, train_samples, seed)
    if dataset == "imagenet":
        return _imagenet(data_dir, download, val_size, train_samples, seed, crop)
    raise data_lib.DataError(f"unknown dataset {dataset!r}; choose one of: {', '.join(DATASETS)}.")


def _mnist_like(dataset, data_dir, download, val_size, train_samples, seed) -> Pipeline:
    splits = data_lib.load(dataset, data_dir, download=download)
    splits, (val_x, val_y) = splits.hold_out(val_size, seed)
    if train_samples:
        keep = _train_subset(len(splits.train_y), train_samples, seed)
        splits.train_x, splits.train_y = splits.train_x[keep], splits.train_y[keep]
    return Pipeline(dataset, TensorImages(splits.train_x, splits.train_y), TensorImages(val_x, val_y),
                    TensorImages(splits.test_x, splits.test_y), splits.test_y,
                    data_lib.preprocess_params(splits.train_x), tuple(splits.train_x.shape[1:]), 10, splits.source,
                    [splits.train_x, splits.train_y])


def _cifar10(data_dir, download, val_size, train_samples, seed) -> Pipeline:
    if data_dir is None:
        raise data_lib.DataError(f"CIFAR-10 needs --data-dir DIR with {ds.CIFAR10_LAYOUT} (it is downloaded into DIR "
                                 "when online).")
    train = ds.cifar10(data_dir, True, download=download)
    test = ds.cifar10(data_dir, False, download=False)
    keep, val = _split(len(train), val_size, train.targets, seed)
    if train_samples:
        keep = keep[_train_subset(len(keep), train_samples, seed)]
    stats = ds.cifar10_stats()
    x, y = train.data, train.targets
    return Pipeline("cifar10", TensorImages(x[keep], y[keep]), TensorImages(x[val], y[val]),
                    TensorImages(test.data, test.targets), test.targets,
                    {"scale": 1.0 / 255.0, "mean": stats["mean"], "std": stats["std"]}, (3, 32, 32), 10,
                    f"cifar10 from {data_dir} ({len(keep)} training / {len(test)} test images)", [x[keep], y[keep]])


def _imagenet(data_dir, download, val_size, train_samples, seed, crop) -> Pipeline:
    if data_dir is None:
        raise data_lib.DataError(f"ImageNet needs --data-dir DIR with {ds.IMAGENET_LAYOUT} (it is never downloaded).")
    train = ds.imagenet(data_dir, True, crop=crop)
    train_eval = ds.imagenet(data_dir, True, crop=crop, transform=ds.imagenet_transform(False, crop))
    test = ds.imagenet(data_dir, False, crop=crop)
    if test.classes != train.classes:
        raise data_lib.DataError(f"--data-dir {data_dir}: val/ has {len(test.classes)} class folders and train/ "
                                 f"{len(train.classes)}, or other names; both need the same class folders.")
    targets = torch.tensor(train.targets, dtype=torch.long)
    keep, val = _split(len(train), val_size, targets, seed)
    if train_samples:
        keep = keep[_train_subset(len(keep), train_samples, seed)]
    stats = ds.imagenet_stats()
    return Pipeline("imagenet", SeededItems(Subset(train, keep.tolist()), seed), Subset(train_eval, val.tolist()),
                    test, torch.tensor(test.targets, dtype=torch.long),
                    {"scale": 1.0, "mean": stats["mean"], "std": stats["std"]}, (3, crop, crop), len(train.classes),
                    f"imagenet from {data_dir} ({len(keep)} training / {len(test)} validation images, "
                    f"{len(train.classes)} classes, crop {crop})", [], raw_max=1.0, in_memory=False,
                    train_eval_set=Subset(train_eval, keep.tolist()))
