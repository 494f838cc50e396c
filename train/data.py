"""Data for the training scripts: MNIST and Fashion-MNIST through torchvision, an embedded MNIST fallback, and
the preprocessing.

``load(dataset, data_dir)`` returns uint8 images ``(N, 1, 28, 28)`` and int64 labels for the training and test
sets, plus a sentence saying where they came from. Preprocessing (``preprocess``) is x/255 minus the per-pixel
mean of the training images; its parameters go into every checkpoint.
"""

from __future__ import annotations

import gzip
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import Tensor

EMBEDDED = Path(__file__).resolve().parent / "assets" / "mnist_subset_5k.npz"
# where Debian's package puts the Fashion-MNIST files (`apt-get install dataset-fashion-mnist`)
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
DATASETS = ("mnist", "fashion-mnist")


class DataError(RuntimeError):
    """The requested data cannot be found or read; the message says which flag or path to use."""


@dataclass
class Splits:
    train_x: Tensor  # (N_train, 1, 28, 28) uint8
    train_y: Tensor  # (N_train,) int64
    test_x: Tensor  # (N_test, 1, 28, 28) uint8
    test_y: Tensor  # (N_test,) int64
    source: str  # where the data came from, for logs and run directories

    def hold_out(self, n_val: int, seed: int) -> tuple["Splits", tuple[Tensor, Tensor]]:
        """Move ``n_val`` training images (a seeded, class-balanced choice) into a validation set."""
        if n_val <= 0:
            return self, (self.train_x[:0], self.train_y[:0])
        if n_val >= len(self.train_y):
            raise DataError(f"--val-size {n_val} leaves no training images (the training set has {len(self.train_y)}).")
        gen = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(self.train_y), generator=gen)
        # class-balanced: sort the shuffled indices by class rank within the class, then take the first n_val
        labels = self.train_y[order]
        rank = torch.zeros_like(labels)
        for c in labels.unique():
            where = labels == c
            rank[where] = torch.arange(int(where.sum()))
        val_idx = order[torch.argsort(rank, stable=True)[:n_val]]
        keep = torch.ones(len(self.train_y), dtype=torch.bool)
        keep[val_idx] = False
        rest = Splits(self.train_x[keep], self.train_y[keep], self.test_x, self.test_y, self.source)
        return rest, (self.train_x[val_idx], self.train_y[val_idx])


def _from_torchvision(dataset: str, root: Path, download: bool) -> Splits:
    from torchvision import datasets

    cls = {"mnist": datasets.MNIST, "fashion-mnist": datasets.FashionMNIST}[dataset]
    train = cls(str(root), train=True, download=download)
    test = cls(str(root), train=False, download=download)
    return Splits(
        train.data.unsqueeze(1), train.targets.long(), test.data.unsqueeze(1), test.targets.long(),
        f"{dataset} from {root} ({len(train.targets)} training / {len(test.targets)} test images)",
    )


def embedded_mnist() -> Splits:
    """The embedded 5,000-image MNIST subset, split 4,000 train / 1,000 test (last 100 per class), in a fixed
    shuffled order."""
    with np.load(EMBEDDED) as f:
        images, labels = torch.from_numpy(f["images"]), torch.from_numpy(f["labels"]).long()
    test = torch.zeros(len(labels), dtype=torch.bool)
    for c in range(10):
        test[torch.nonzero(labels == c).flatten()[-100:]] = True
    # the file is sorted by class: a fixed shuffle makes "the first N test images" a mix of all classes
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    images, labels, test = images[order], labels[order], test[order]
    return Splits(
        images[~test].unsqueeze(1), labels[~test], images[test].unsqueeze(1), labels[test],
        f"EMBEDDED MNIST subset ({int((~test).sum())} training / {int(test.sum())} test images from {EMBEDDED.name})",
    )


def load(dataset: str = "mnist", data_dir: Optional[str] = None, *, download: bool = True) -> Splits:
    """Load ``dataset`` from ``data_dir`` (torchvision layout: ``DIR/MNIST/raw/``), downloading it if missing.

    ``data_dir=None``: try ``./data``; for Fashion-MNIST, then copy in the files of Debian's package
    (``DEBIAN_FASHION_MNIST``) if it is installed; then a download into ``./data``. If MNIST is neither there nor
    downloadable, fall back to the embedded MNIST subset and say so loudly on stderr. An explicit ``data_dir`` that
    does not exist, or that lacks the data when no download is possible, is an error.
    """
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r}; choose one of: {', '.join(DATASETS)}.")
    explicit = data_dir is not None
    root = Path(data_dir if explicit else "data")
    if explicit and not root.is_dir():
        raise DataError(
            f"--data-dir {root} does not exist; pass the folder that holds {_folder(dataset)}/raw/ "
            "(e.g. --data-dir ../shared/data), or omit --data-dir to use ./data or the embedded MNIST subset."
        )
    try:
        return _from_torchvision(dataset, root, download=False)
    except RuntimeError:
        pass  # not on disk
    raw = root / _folder(dataset) / "raw"
    try:
        if not explicit and dataset == "fashion-mnist":
            _copy_debian_fashion_mnist(raw)
        if _extract_idx(raw):
            return _from_torchvision(dataset, root, download=False)
        if not download:
            raise DataError("downloads are switched off (--no-download)")
        return _from_torchvision(dataset, root, download=True)
    except Exception as exc:  # noqa: BLE001 - offline: any network error
        if explicit or dataset != "mnist":
            hint = (
                f"apt-get install dataset-fashion-mnist (then omit --data-dir: its files in {DEBIAN_FASHION_MNIST} "
                f"are copied into ./data), or copy {DEBIAN_FASHION_MNIST}/*.gz into {root}/FashionMNIST/raw/"
                if dataset == "fashion-mnist"
                else f"put the IDX files in {root}/MNIST/raw/"
            )
            raise DataError(f"{dataset} is not in {root} and could not be downloaded ({exc.__class__.__name__}); {hint}.")
    splits = embedded_mnist()
    print(
        "\n" + "!" * 78 + f"\n!! MNIST is not in ./data and was not downloaded: using the {splits.source}.\n"
        "!! Pass --data-dir DIR (torchvision layout DIR/MNIST/raw/) for the real data.\n" + "!" * 78 + "\n",
        file=sys.stderr,
    )
    return splits


def _copy_debian_fashion_mnist(raw: Path) -> None:
    """Copy the compressed IDX files of Debian's ``dataset-fashion-mnist`` into ``raw`` (when the package is
    installed and ``raw`` lacks them), saying so on stderr; ``_extract_idx`` then decompresses them there."""
    archives = sorted(DEBIAN_FASHION_MNIST.glob("*-ubyte.gz"))
    missing = [gz for gz in archives if not (raw / gz.name).is_file() and not (raw / gz.stem).is_file()]
    if not missing:
        return
    print(f"Fashion-MNIST: copying {len(missing)} file(s) of Debian's dataset-fashion-mnist from "
          f"{DEBIAN_FASHION_MNIST} into {raw}", file=sys.stderr, flush=True)
    raw.mkdir(parents=True, exist_ok=True)
    for gz in missing:
        tmp = raw / f".{gz.name}.tmp"
        shutil.copyfile(gz, tmp)
        os.replace(tmp, raw / gz.name)


def _extract_idx(raw: Path) -> bool:
    """Decompress ``raw/*-ubyte.gz`` next to themselves (e.g. the files of ``apt-get install
    dataset-fashion-mnist``, recompressed by Debian so torchvision's MD5 check would reject them and try to
    download). Returns whether any compressed files were there."""
    archives = sorted(raw.glob("*-ubyte.gz"))
    for gz in archives:
        target = gz.with_suffix("")
        if not target.is_file():
            tmp = target.with_name(f".{target.name}.tmp")
            with gzip.open(gz, "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.replace(tmp, target)
    return bool(archives)


def _folder(dataset: str) -> str:
    return {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}[dataset]


def preprocess_params(train_x: Tensor) -> dict:
    """``{"scale": 1/255, "mean": (1, 28, 28) per-pixel mean of x/255 over the training images}``."""
    return {"scale": 1.0 / 255.0, "mean": (train_x.double() / 255.0).mean(0).float()}


def preprocess(x_uint8: Tensor, params: dict) -> Tensor:
    """Network input: ``x/255 − mean`` as float32, shape ``(N, 1, 28, 28)``."""
    return x_uint8.float() * params["scale"] - params["mean"].to(x_uint8.device)
