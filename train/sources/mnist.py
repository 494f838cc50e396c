"""MNIST and Fashion-MNIST: torchvision's layout, our own IDX reader, Debian's Fashion-MNIST and an embedded
MNIST subset.

``load(dataset, data_dir)`` returns uint8 images ``(N, 1, 28, 28)`` and int64 labels for the training and test
sets, plus a sentence saying where they came from (:class:`Splits`).
"""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from revnet_app.train.sources import DataError, removing_created

EMBEDDED = Path(__file__).resolve().parent.parent / "assets" / "mnist_subset_5k.npz"
# where Debian's package puts the Fashion-MNIST files (`apt-get install dataset-fashion-mnist`)
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
DATASETS = ("mnist", "fashion-mnist")


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
    if explicit and root.exists() and not root.is_dir():
        raise DataError(
            f"--data-dir {root} is a file, not a folder; pass the folder that holds {_folder(dataset)}/raw/ "
            "(e.g. --data-dir ../shared/data), or omit --data-dir to use ./data or the embedded MNIST subset."
        )
    if explicit and not root.is_dir():
        raise DataError(
            f"--data-dir {root} does not exist; pass the folder that holds {_folder(dataset)}/raw/ "
            "(e.g. --data-dir ../shared/data), or omit --data-dir to use ./data or the embedded MNIST subset."
        )
    raw = root / _folder(dataset) / "raw"
    splits = _from_raw(dataset, raw)  # a DataError if a file is there but truncated or corrupt
    if splits is not None:
        return splits
    try:
        return _from_torchvision(dataset, root, download=False)  # torchvision's legacy processed/ files
    except RuntimeError:
        pass  # not on disk
    try:
        if not explicit and dataset == "fashion-mnist":
            _copy_debian_fashion_mnist(raw)
        if _extract_idx(raw):
            splits = _from_raw(dataset, raw)
            if splits is not None:
                return splits
        if not download:
            raise _NotFound("downloads are switched off (--no-download)")
        _download(dataset, root)
        splits = _from_raw(dataset, raw)
        if splits is None:
            raise _NotFound("the download did not produce the IDX files")
        return splits
    except DataError:
        raise  # a file on disk is corrupt: say so, do not fall back
    except Exception as exc:  # noqa: BLE001 - offline: any network error
        if explicit or dataset != "mnist":
            hint = (
                f"apt-get install dataset-fashion-mnist (then omit --data-dir: its files in {DEBIAN_FASHION_MNIST} "
                f"are copied into ./data), or copy {DEBIAN_FASHION_MNIST}/*.gz into {root}/FashionMNIST/raw/"
                if dataset == "fashion-mnist"
                else f"put the IDX files in {root}/MNIST/raw/"
            )
            why = "downloads are switched off" if isinstance(exc, _NotFound) and not download else (
                f"could not be downloaded ({exc.__class__.__name__})")
            raise DataError(f"{dataset} is not in {root} and {why}; {hint}.")
    splits = embedded_mnist()
    print(
        "\n" + "!" * 78 + f"\n!! MNIST is not in ./data and was not downloaded: using the {splits.source}.\n"
        "!! Pass --data-dir DIR (torchvision layout DIR/MNIST/raw/) for the real data.\n" + "!" * 78 + "\n",
        file=sys.stderr,
    )
    return splits


class _NotFound(Exception):
    """The data is not on disk and was not downloaded (internal: becomes a DataError or the embedded fallback)."""


def _download(dataset: str, root: Path) -> None:
    """torchvision's download into ``root``; the folders it created are removed again if it fails and they are
    empty (a failed download leaves no ``MNIST/raw/`` behind)."""
    with removing_created([root, root / _folder(dataset), root / _folder(dataset) / "raw"]):
        _from_torchvision(dataset, root, download=True)
IDX_FILES = {"train-images-idx3-ubyte": 3, "train-labels-idx1-ubyte": 1,
             "t10k-images-idx3-ubyte": 3, "t10k-labels-idx1-ubyte": 1}
"""The four IDX files of MNIST/Fashion-MNIST in ``DIR/<Folder>/raw/`` and their number of dimensions."""


def _from_raw(dataset: str, raw: Path) -> Optional[Splits]:
    """The four IDX files in ``raw``, checked (header, size, 28×28 images, labels 0..9, as many labels as images);
    ``None`` if any is missing; a ``DataError`` naming the file if one is truncated or corrupt."""
    paths = {name: raw / name for name in IDX_FILES}
    if not all(p.is_file() for p in paths.values()):
        return None
    arrays = {name: read_idx(p, IDX_FILES[name]) for name, p in paths.items()}
    out = []
    for split in ("train", "t10k"):
        images, labels = arrays[f"{split}-images-idx3-ubyte"], arrays[f"{split}-labels-idx1-ubyte"]
        if images.shape[1:] != (28, 28):
            raise DataError(f"{paths[f'{split}-images-idx3-ubyte']} holds {images.shape[1]}x{images.shape[2]} images, "
                            f"not 28x28: it is not a {dataset} file; replace it with the right one.")
        if len(labels) and int(labels.max()) > 9:
            raise DataError(f"{paths[f'{split}-labels-idx1-ubyte']} is corrupt: it holds label {int(labels.max())} "
                            f"(labels must be 0..9); replace it with a good copy.")
        if len(labels) != len(images):
            raise DataError(f"{paths[f'{split}-labels-idx1-ubyte']} holds {len(labels)} labels but "
                            f"{paths[f'{split}-images-idx3-ubyte'].name} {len(images)} images; replace the pair "
                            "with matching copies.")
        out += [torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))]
    return Splits(*out, f"{dataset} from {raw.parent.parent} ({len(out[1])} training / {len(out[3])} test images)")


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """A uint8 IDX file (big-endian header: 0x0000, type 0x08, ``ndim``, then ``ndim`` 32-bit sizes); a truncated
    or corrupt file is a ``DataError`` naming it."""
    fix = "delete it and download or copy it again"
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror}.") from None
    if len(data) < 4:
        raise DataError(f"{path} is truncated ({len(data)} bytes, shorter than an IDX header); {fix}.")
    zero, kind, nd = struct.unpack(">HBB", data[:4])
    if zero != 0 or kind != 0x08 or nd != ndim:
        raise DataError(f"{path} is corrupt or not an IDX file (magic {data[:4].hex()}, expected 000008{ndim:02x}); "
                        f"{fix}.")
    header = 4 + 4 * nd
    if len(data) < header:
        raise DataError(f"{path} is truncated ({len(data)} bytes, its IDX header needs {header}); {fix}.")
    dims = struct.unpack(f">{nd}I", data[4:header])
    size = int(np.prod(dims))
    if len(data) - header != size:
        state = "truncated" if len(data) - header < size else "corrupt"
        raise DataError(f"{path} is {state}: its header announces {size} bytes of data ({' x '.join(map(str, dims))}) "
                        f"but it holds {len(data) - header}; {fix}.")
    return np.frombuffer(data, dtype=np.uint8, count=size, offset=header).reshape(dims)


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
            try:
                with gzip.open(gz, "rb") as src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst)
            except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
                tmp.unlink(missing_ok=True)
                raise DataError(f"{gz} is truncated or corrupt ({exc.__class__.__name__}); delete it and download "
                                "or copy it again.") from None
            except OSError as exc:
                tmp.unlink(missing_ok=True)
                raise DataError(f"cannot extract {gz} into {raw}: {exc.strerror}; make the folder writable.") from None
            os.replace(tmp, target)
    return bool(archives)


def _folder(dataset: str) -> str:
    return {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}[dataset]
