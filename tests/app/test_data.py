"""``train/sources/mnist.py``: compressed IDX files as ``apt-get install dataset-fashion-mnist`` ships them load offline."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch


from revnet_app.train.sources import mnist as mnist_source  # noqa: E402
from revnet_app.train import sources  # noqa: E402


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
    splits = mnist_source.load("fashion-mnist", str(tmp_path), download=False)
    assert splits.train_x.shape == (12, 1, 28, 28) and splits.test_x.shape == (5, 1, 28, 28)
    assert torch.equal(splits.train_x[:, 0], torch.from_numpy(images["train"].astype(np.uint8)))
    assert torch.equal(splits.test_y, torch.from_numpy(labels["t10k"]).long())
    assert (raw / "train-images-idx3-ubyte").is_file()  # extracted next to the archive, reused next time
    again = mnist_source.load("fashion-mnist", str(tmp_path), download=False)
    assert torch.equal(again.train_y, splits.train_y)


def _fake_debian_package(folder: Path) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (7, 28, 28)),
              "train-labels-idx1-ubyte": rng.integers(0, 10, 7),
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (3, 28, 28)),
              "t10k-labels-idx1-ubyte": rng.integers(0, 10, 3)}
    for name, array in arrays.items():
        write_idx_gz(folder / f"{name}.gz", array)
    return arrays


def test_without_data_dir_fashion_mnist_comes_from_the_debian_package(tmp_path, monkeypatch, capsys):
    arrays = _fake_debian_package(tmp_path / "debian")
    monkeypatch.setattr(mnist_source, "DEBIAN_FASHION_MNIST", tmp_path / "debian")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    splits = mnist_source.load("fashion-mnist", None, download=False)
    assert torch.equal(splits.train_x[:, 0], torch.from_numpy(arrays["train-images-idx3-ubyte"].astype(np.uint8)))
    assert torch.equal(splits.test_y, torch.from_numpy(arrays["t10k-labels-idx1-ubyte"]).long())
    assert (work / "data" / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte").is_file()
    assert "copying 4 file(s) of Debian's dataset-fashion-mnist" in capsys.readouterr().err
    again = mnist_source.load("fashion-mnist", None, download=False)  # now from ./data: nothing copied again
    assert torch.equal(again.train_y, splits.train_y)
    assert "copying" not in capsys.readouterr().err


def test_fashion_mnist_missing_everywhere_is_an_error_naming_the_package(tmp_path, monkeypatch):
    monkeypatch.setattr(mnist_source, "DEBIAN_FASHION_MNIST", tmp_path / "not-installed")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(sources.DataError, match="apt-get install dataset-fashion-mnist"):
        mnist_source.load("fashion-mnist", None, download=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(sources.DataError, match="empty/FashionMNIST/raw"):  # an explicit folder is never filled
        mnist_source.load("fashion-mnist", str(tmp_path / "empty"), download=False)
    assert not (tmp_path / "empty" / "FashionMNIST").exists()


def test_both_evaluation_sets_implement_the_written_batch_interface():
    from revnet_app.train import loaders

    x, y = torch.randn(7, 1, 2, 2), torch.arange(7)
    tensors = loaders.TensorEvalSet(x, y, 3)
    streamed = loaders.EvalSet(torch.utils.data.TensorDataset(x, y), lambda raw: raw, 3)
    for batches in (tensors, streamed):
        assert isinstance(batches, loaders.EvalBatches)
        assert len(batches) == 7 and batches.num_batches == 3
        assert torch.equal(torch.cat([xb for xb, _ in batches]), x)
