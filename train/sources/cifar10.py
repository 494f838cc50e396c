"""**CIFAR-10** — ``cifar10(data_dir, train, download=...)`` reads the python version of the data set::

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
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.datasets import CIFAR10
from torchvision.datasets.utils import download_and_extract_archive

from revnet_app.train import safe_pickle
from revnet_app.train.sources import DataError, one_line, removing_created

PathLike = Union[str, os.PathLike]

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_FILES = ("test_batch",)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_LAYOUT = f"DIR/{CIFAR10_FOLDER}/data_batch_1 ... data_batch_5, test_batch"


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
                            f"({one_line(exc)}); pass --data-dir DIR with the python version of CIFAR-10: "
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
        raise DataError(f"CIFAR-10 batch {path} is truncated or unreadable ({one_line(exc)}); {fix}.") from None
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
