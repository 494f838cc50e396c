"""Data for CIFAR-10 and ImageNet: loaders, standard preprocessing, normalisation and evaluation subsets.

Everything that cannot be found or read is a one-line ``data.DataError`` that names the file, or ``--data-dir`` and
the layout it expects.

**CIFAR-10** — ``cifar10(data_dir, train, download=...)`` reads the python version of the data set::

    DATA_DIR/cifar-10-batches-py/data_batch_1 ... data_batch_5   training, 5 x 10,000 images
    DATA_DIR/cifar-10-batches-py/test_batch                      test, 10,000 images
    DATA_DIR/cifar-10-batches-py/batches.meta                    class names (optional here)

Each batch is a pickled dict (written by Python 2: load with ``encoding="latin1"``, or ``"bytes"`` for ``b"..."``
keys) with ``"data"``: uint8 ``(N, 3072)``, one row per image, the 1024 red, then green, then blue values of the
32x32 image in row-major order, and ``"labels"``: a list of N ints in 0..9. The reader is our own, so no MD5 is
checked (torchvision's ``CIFAR10`` checks the MD5 of all six batches and reports any other copy, and a truncated
one, as "not found or corrupted"); a truncated or unreadable batch is reported as that, naming the file. Missing
files with ``download=True`` are fetched by torchvision's own download (``download_and_extract_archive`` with
``CIFAR10.url``/``CIFAR10.tgz_md5``) into ``DATA_DIR``.

The dataset keeps all images in memory: ``.data`` uint8 ``(N, 3, 32, 32)``, ``.targets`` int64 ``(N,)``,
``.classes`` the ten names. An item is ``(image, label)``: ``image`` the float32 ``(3, 32, 32)`` tensor ``x/255``
in [0, 1] (what ``ToTensor`` gives), passed through ``transform`` if one is given (a tensor transform, e.g.
``T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()])``); ``label`` an int.

**ImageNet** — ``imagenet(data_dir, train, crop=224)`` is a ``torchvision.datasets.ImageFolder``::

    DATA_DIR/train/<wnid>/*.JPEG     e.g. DATA_DIR/train/n01440764/n01440764_10026.JPEG
    DATA_DIR/val/<wnid>/*.JPEG       the 50,000 validation images sorted into the same class folders

An item is ``(image, label)``: ``image`` float32 ``(3, crop, crop)`` in [0, 1] after the standard preprocessing
(``imagenet_transform``): training ``RandomResizedCrop(crop)`` + ``RandomHorizontalFlip()``; evaluation
``Resize(round(crop * 256 / 224))`` (the shorter side) + ``CenterCrop(crop)``; then ``ToTensor()``. ``label`` is
the index of the class folder in sorted order (``.classes``, ``.class_to_idx``, ``.targets`` as in
``ImageFolder``). Unreadable images are skipped with a warning line (see ``SkippingImageFolder``).

**Normalisation** — ``channel_stats(dataset)`` computes the per-channel mean and (population) standard deviation
of a dataset's images over a DataLoader in bounded memory; ``IMAGENET_MEAN``/``IMAGENET_STD`` are the standard
constants (``imagenet_stats()``), ``CIFAR10_MEAN``/``CIFAR10_STD`` what ``channel_stats`` gives on the real
CIFAR-10 training set (``cifar10_stats()``). Both come as ``{"mean": Tensor (C, 1, 1), "std": Tensor (C, 1, 1)}``
(float32), to be stored in a checkpoint and applied with ``normalize(x, stats)`` to ``(N, C, H, W)`` or
``(C, H, W)`` images in [0, 1].

**Evaluation subsets** — ``balanced_subset(labels, n, seed)``: sorted int64 indices of n images, as nearly as
possible the same number per class, the same for the same seed.

Example::

    train_set = cifar10("../shared/data", train=True, download=False)
    stats = channel_stats(train_set)                              # {"mean": (3,1,1), "std": (3,1,1)}
    test_set = cifar10("../shared/data", train=False, download=False)
    idx = balanced_subset(test_set.targets, 1000, seed=0)         # 100 test images per class
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(test_set, idx.tolist()), batch_size=100)
    for x, y in loader:                                          # x (100, 3, 32, 32) float32, y (100,) int64
        logits = net(normalize(x, stats))
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T
from torchvision.datasets import CIFAR10, ImageFolder
from torchvision.datasets.utils import download_and_extract_archive

from revnet_app.train import safe_pickle
from revnet_app.train.data import DataError, removing_created

PathLike = Union[str, os.PathLike]

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_FILES = ("test_batch",)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_LAYOUT = f"DIR/{CIFAR10_FOLDER}/data_batch_1 ... data_batch_5, test_batch"
IMAGENET_LAYOUT = "DIR/train/<class>/*.JPEG and DIR/val/<class>/*.JPEG"

# what channel_stats gives on the 50,000 real CIFAR-10 training images (x/255, population std over all pixels)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ---------------------------------------------------------------------------------------------------- CIFAR-10


class CIFAR10Batches(Dataset):
    """CIFAR-10 images held in memory: ``data`` uint8 ``(N, 3, 32, 32)``, ``targets`` int64 ``(N,)``,
    ``classes``; an item is ``(transform(data[i] / 255), int(targets[i]))``, the image float32 ``(3, 32, 32)``."""

    def __init__(self, data: Tensor, targets: Tensor, classes: Sequence[str], source: str,
                 transform: Optional[Callable] = None) -> None:
        self.data, self.targets, self.classes = data, targets, list(classes)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.source = source  # where the images came from, for logs
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = self.data[index].float().div_(255.0)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.targets[index])

    def __repr__(self) -> str:
        return f"CIFAR10Batches({len(self)} images from {self.source})"


def cifar10(data_dir: PathLike, train: bool, *, download: bool, transform: Optional[Callable] = None) -> CIFAR10Batches:
    """The CIFAR-10 training (``train=True``, 50,000 images) or test set (10,000) from
    ``data_dir/cifar-10-batches-py/`` (layout in the module docstring), as a ``CIFAR10Batches``.

    If a batch file of the requested split is missing: with ``download=True``, torchvision's download of the
    archive into ``data_dir`` (its folder is removed again if the download fails and leaves it empty); without,
    or if the download fails, a ``DataError`` naming ``--data-dir`` and the layout. A truncated or unreadable
    batch is a ``DataError`` naming the file (no fallback, no download over it). No MD5 is checked.
    """
    root = Path(data_dir)
    if root.exists() and not root.is_dir():
        raise DataError(f"--data-dir {root} is a file, not a folder; pass the folder that holds {CIFAR10_FOLDER}/ "
                        f"(layout {CIFAR10_LAYOUT}).")
    folder = root / CIFAR10_FOLDER
    names = CIFAR10_TRAIN_FILES if train else CIFAR10_TEST_FILES
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        where = f"{folder} lacks {', '.join(missing)}" if folder.is_dir() else f"{folder} does not exist"
        if not download:
            raise DataError(f"CIFAR-10 is not in --data-dir {root} ({where}) and downloads are switched off; pass "
                            f"--data-dir DIR with the python version of CIFAR-10: {CIFAR10_LAYOUT}.")
        try:
            _download_cifar10(root)
        except Exception as exc:  # noqa: BLE001 - offline: any network or archive error
            raise DataError(f"CIFAR-10 is not in --data-dir {root} ({where}) and could not be downloaded "
                            f"({_one_line(exc)}); pass --data-dir DIR with the python version of CIFAR-10: "
                            f"{CIFAR10_LAYOUT}.") from None
        still = [n for n in names if not (folder / n).is_file()]
        if still:
            raise DataError(f"the CIFAR-10 download into {root} did not produce {', '.join(still)}; pass "
                            f"--data-dir DIR with {CIFAR10_LAYOUT}.")
    images, labels = [], []
    for name in names:
        x, y = read_cifar10_batch(folder / name)
        images.append(x)
        labels.append(y)
    data = torch.from_numpy(np.concatenate(images)).reshape(-1, 3, 32, 32)
    targets = torch.from_numpy(np.concatenate(labels))
    classes = _cifar10_classes(folder / "batches.meta")
    split = "training" if train else "test"
    return CIFAR10Batches(data, targets, classes, f"CIFAR-10 {split} set in {folder} ({len(targets)} images)",
                          transform)


def read_cifar10_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One pickled CIFAR-10 batch: ``(data uint8 (N, 3072), labels int64 (N,))``; keys may be ``str`` (as
    ``encoding="latin1"`` gives for the real files) or ``bytes``. A truncated, unreadable or malformed file is a
    ``DataError`` naming it. The file is untrusted: it is read with ``safe_pickle.load``, and one that names
    anything a CIFAR-10 batch never holds (``os.system``, an object array, ...) is refused, naming it."""
    fix = f"delete it and download or copy {path.parent.name}/ again"
    try:
        with open(path, "rb") as f:
            entry = safe_pickle.load(f, encoding="latin1")
    except OSError as exc:
        raise DataError(f"cannot read CIFAR-10 batch {path}: {exc.strerror or exc}; {fix}.") from None
    except safe_pickle.Refused as exc:
        raise DataError(f"CIFAR-10 batch {path} refers to {exc.what}, which a CIFAR-10 batch never holds; refused "
                        f"(untrusted pickle, not loaded); {fix}.") from None
    except Exception as exc:  # noqa: BLE001 - EOFError, UnpicklingError, ValueError from numpy, ...
        raise DataError(f"CIFAR-10 batch {path} is truncated or unreadable ({_one_line(exc)}); {fix}.") from None
    if not isinstance(entry, dict):
        raise DataError(f"CIFAR-10 batch {path} is not a CIFAR-10 batch (a pickled {type(entry).__name__}, not a "
                        f"dict); {fix}.")
    entry = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}
    data, labels = entry.get("data"), entry.get("labels")
    if not isinstance(data, np.ndarray) or labels is None:
        raise DataError(f"CIFAR-10 batch {path} is not a CIFAR-10 batch (no 'data' array and 'labels' list); {fix}.")
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"CIFAR-10 batch {path} holds {data.dtype} data of shape {tuple(data.shape)}, not uint8 "
                        f"(N, 3072); {fix}.")
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (len(data),):
        raise DataError(f"CIFAR-10 batch {path} holds {labels.size} labels for {len(data)} images; {fix}.")
    wrong = labels[(labels < 0) | (labels > 9)]
    if len(wrong):
        raise DataError(f"CIFAR-10 batch {path} holds label {int(wrong[0])} (labels must be 0..9); {fix}.")
    return data, labels


def _cifar10_classes(meta: Path) -> list[str]:
    """The class names from ``batches.meta`` when it is there and readable, else the standard ten. The file is
    untrusted (read with ``safe_pickle.load``): one that names anything ``batches.meta`` never holds is a
    ``DataError`` naming it, not a silent fallback."""
    try:
        with open(meta, "rb") as f:
            names = safe_pickle.load(f, encoding="latin1")
    except safe_pickle.Refused as exc:
        raise DataError(f"CIFAR-10 class names {meta} refer to {exc.what}, which batches.meta never holds; refused "
                        f"(untrusted pickle, not loaded); delete it and download or copy {meta.parent.name}/ "
                        f"again.") from None
    except Exception:  # noqa: BLE001 - missing or unreadable: the names are cosmetic
        return list(CIFAR10_CLASSES)
    try:
        names = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in names.items()}["label_names"]
        names = [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names]
        return names if len(names) == 10 else list(CIFAR10_CLASSES)
    except Exception:  # noqa: BLE001 - the names are cosmetic
        return list(CIFAR10_CLASSES)


def _download_cifar10(root: Path) -> None:
    """torchvision's download and extraction of CIFAR-10 (``CIFAR10.download`` without its MD5 pre-check of the
    batches, which would re-download over a good copy that is not byte-identical); folders it created are removed
    again if it fails and leaves them empty."""
    with removing_created([root, root / CIFAR10_FOLDER]):
        download_and_extract_archive(CIFAR10.url, str(root), filename=CIFAR10.filename, md5=CIFAR10.tgz_md5)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__


# ---------------------------------------------------------------------------------------------------- ImageNet


def imagenet_transform(train: bool, crop: int = 224) -> Callable:
    """The standard ImageNet preprocessing of a PIL image into float32 ``(3, crop, crop)`` in [0, 1]: training
    ``RandomResizedCrop(crop)`` + ``RandomHorizontalFlip()``, evaluation ``Resize(round(crop * 256 / 224))`` +
    ``CenterCrop(crop)``; then ``ToTensor()`` (normalise with ``normalize(x, imagenet_stats())``)."""
    if train:
        return T.Compose([T.RandomResizedCrop(crop), T.RandomHorizontalFlip(), T.ToTensor()])
    return T.Compose([T.Resize(round(crop * 256 / 224)), T.CenterCrop(crop), T.ToTensor()])


class SkippingImageFolder(ImageFolder):
    """``ImageFolder`` that skips unreadable images.

    Policy: an image that PIL cannot open or decode (a corrupt or truncated JPEG, an empty file) is skipped
    when it is first read: one warning line on stderr naming the file (once per file and process: with
    ``DataLoader`` workers, which are new processes every epoch, once per worker and epoch that meets it), and the
    item is the next readable image in folder order (wrapping around) with its own label, so ``len()`` and the
    batch shapes stay fixed and one bad file does not stop a multi-hour run. The files are not opened when the
    dataset is built (that would read all 1.28 M training images up front). ``bad_files`` lists the skipped
    paths seen by this process. Only if no image at all is readable is it a ``DataError``.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.bad_files: set[str] = set()

    def __getitem__(self, index: int) -> tuple[Any, int]:
        n = len(self.samples)
        for k in range(n):
            path, target = self.samples[(index + k) % n]
            if path in self.bad_files:
                continue
            try:
                image = self.loader(path)
            except Exception as exc:  # noqa: BLE001 - OSError, PIL.UnidentifiedImageError, SyntaxError, ...
                self.bad_files.add(path)
                print(f"warning: skipping unreadable image {path} ({_one_line(exc)}); using the next image "
                      "instead", file=sys.stderr, flush=True)
                continue
            if self.transform is not None:
                image = self.transform(image)
            if self.target_transform is not None:
                target = self.target_transform(target)
            return image, target
        raise DataError(f"no image in {self.root} is readable ({len(self.bad_files)} unreadable files); "
                        "replace them with good copies.")


def imagenet(data_dir: PathLike, train: bool, *, crop: int = 224,
             transform: Optional[Callable] = None) -> SkippingImageFolder:
    """ImageNet's ``data_dir/train/`` (``train=True``) or ``data_dir/val/`` as a ``SkippingImageFolder`` (an
    ``ImageFolder``), items ``(float32 (3, crop, crop), label)`` after ``imagenet_transform(train, crop)``, or
    after ``transform`` (given a PIL RGB image) if one is given.

    Unreadable images: skipped with one warning line naming the file; the item is the next readable image (see
    ``SkippingImageFolder``). A missing or empty folder, or one without images, is a ``DataError`` naming
    ``--data-dir`` and the layout.
    """
    root = Path(data_dir)
    split = "train" if train else "val"
    folder = root / split
    hint = f"pass --data-dir DIR with ImageNet in ImageFolder layout: {IMAGENET_LAYOUT}"
    if root.exists() and not root.is_dir():
        raise DataError(f"--data-dir {root} is a file, not a folder; {hint}.")
    if not folder.is_dir():
        what = "does not exist" if not root.is_dir() else f"has no {split}/ folder"
        raise DataError(f"--data-dir {root} {what}; {hint}.")
    try:
        transform = transform if transform is not None else imagenet_transform(train, crop)
        return SkippingImageFolder(str(folder), transform=transform)
    except FileNotFoundError as exc:  # no class folders, or no image files in them
        raise DataError(f"ImageNet {split} folder {folder} holds no images ({_one_line(exc)}); {hint}.") from None


# ---------------------------------------------------------------------------------------------- normalisation


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


# ---------------------------------------------------------------------------------------------- subsets


def balanced_subset(labels: Union[Tensor, np.ndarray, Sequence[int]], n: int, seed: int) -> Tensor:
    """Sorted int64 indices of ``n`` of the items with these ``labels``: as nearly as possible the same number
    per class (the counts of any two classes differ by at most one, except that a class with fewer items than its
    share gives all it has and the others make up the difference), a seeded random choice within each class (and
    of the classes that get one more when ``n`` is not a multiple of the number of classes); the same ``labels``,
    ``n`` and ``seed`` give the same indices. ``n`` larger than the number of items is a ``DataError``."""
    labels = torch.as_tensor(np.asarray(labels) if not isinstance(labels, Tensor) else labels).long().flatten().cpu()
    if n < 0 or n > len(labels):
        raise DataError(f"cannot choose {n} evaluation images from {len(labels)}.")
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
