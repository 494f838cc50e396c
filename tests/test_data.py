"""``train/data.py``: compressed IDX files as ``apt-get install dataset-fashion-mnist`` ships them load offline."""

from __future__ import annotations

import gzip
import struct
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))

import data  # noqa: E402


def write_idx_gz(path: Path, array: np.ndarray) -> None:
    """An IDX file (big-endian header: magic 0x08 0x0N for uint8, then the dims), gzip-compressed."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_compressed_fashion_mnist_files_are_extracted_and_loaded_without_download(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = {"train": rng.integers(0, 256, (12, 28, 28)), "t10k": rng.integers(0, 256, (5, 28, 28))}
    labels = {"train": rng.integers(0, 10, 12), "t10k": rng.integers(0, 10, 5)}
    for split in ("train", "t10k"):
        write_idx_gz(raw / f"{split}-images-idx3-ubyte.gz", images[split])
        write_idx_gz(raw / f"{split}-labels-idx1-ubyte.gz", labels[split])
    splits = data.load("fashion-mnist", str(tmp_path), download=False)
    assert splits.train_x.shape == (12, 1, 28, 28) and splits.test_x.shape == (5, 1, 28, 28)
    assert torch.equal(splits.train_x[:, 0], torch.from_numpy(images["train"].astype(np.uint8)))
    assert torch.equal(splits.test_y, torch.from_numpy(labels["t10k"]).long())
    assert (raw / "train-images-idx3-ubyte").is_file()  # extracted next to the archive, reused next time
    again = data.load("fashion-mnist", str(tmp_path), download=False)
    assert torch.equal(again.train_y, splits.train_y)
