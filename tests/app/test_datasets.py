"""``train/sources/cifar10.py`` and ``imagenet.py``: CIFAR-10 batches in the real on-disk format, an ImageFolder of JPEGs (one corrupt),
normalisation statistics and balanced evaluation subsets."""

from __future__ import annotations

import functools
import http.server
import io
import pickle
import struct
import tarfile
import threading

import numpy as np
import pytest
import torch
from PIL import Image


from revnet_app.train.sources import cifar10 as cifar10_source  # noqa: E402
from revnet_app.train.sources import imagenet as imagenet_source  # noqa: E402
from revnet_app.train import normalization  # noqa: E402
from revnet_app.train import pipeline as pipeline_lib  # noqa: E402
from revnet_app.train import sources  # noqa: E402

PER_CLASS = {"train": 3, "test": 2}  # images per class in each training batch / in the test batch


class Py2Pickler(pickle._Pickler):
    """Pickles ``bytes`` as Python 2 ``str`` (SHORT_BINSTRING/BINSTRING), as cPickle wrote the real CIFAR-10
    files: dict keys, the numpy array's buffer, the file names. ``encoding="latin1"`` reads them as ``str``,
    ``encoding="bytes"`` as ``bytes``."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def py2_pickle(obj) -> bytes:
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    # the real files were written with numpy 1.x: its array constructor lived in numpy.core
    return buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def make_batch(rng: np.random.Generator, per_class: int, name: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """Images (N, 32, 32, 3) uint8, labels (N,), and the batch dict as laid out in the real files."""
    labels = np.repeat(np.arange(10), per_class)
    rng.shuffle(labels)
    images = rng.integers(0, 256, (len(labels), 32, 32, 3), dtype=np.uint8)
    rows = images.transpose(0, 3, 1, 2).reshape(len(labels), 3072)  # 1024 R, 1024 G, 1024 B, row-major
    batch = {b"batch_label": name.encode(), b"labels": [int(v) for v in labels], b"data": rows,
             b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))]}
    return images, labels, batch


@pytest.fixture
def cifar_dir(tmp_path):
    """``tmp/cifar-10-batches-py/`` with five training batches, a test batch and ``batches.meta``; returns
    ``(root, {"train": (images, labels), "test": (images, labels)})`` with images (N, 32, 32, 3)."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    truth = {}
    parts = []
    for i in range(1, 6):
        images, labels, batch = make_batch(rng, PER_CLASS["train"], f"training batch {i} of 5")
        (folder / f"data_batch_{i}").write_bytes(py2_pickle(batch))
        parts.append((images, labels))
    truth["train"] = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    images, labels, batch = make_batch(rng, PER_CLASS["test"], "testing batch 1 of 1")
    (folder / "test_batch").write_bytes(py2_pickle(batch))
    truth["test"] = (images, labels)
    names = [n.encode() for n in cifar10_source.CIFAR10_CLASSES]
    (folder / "batches.meta").write_bytes(py2_pickle({b"num_cases_per_batch": 30, b"label_names": names,
                                                      b"num_vis": 3072}))
    return tmp_path, truth


def test_fixture_is_in_the_real_format(cifar_dir):
    root, _ = cifar_dir
    with open(root / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        entry = pickle.load(f, encoding="bytes")  # how the CIFAR-10 page says to read them
    assert set(entry) == {b"batch_label", b"labels", b"data", b"filenames"}
    assert entry[b"data"].dtype == np.uint8 and entry[b"data"].shape == (30, 3072)
    assert b"cnumpy.core.multiarray\n_reconstruct\n" in (root / "cifar-10-batches-py" / "test_batch").read_bytes()


@pytest.mark.parametrize("train", [True, False])
def test_cifar10_reads_the_batches_pixel_for_pixel(cifar_dir, train):
    root, truth = cifar_dir
    images, labels = truth["train" if train else "test"]
    ds = cifar10_source.cifar10(root, train=train, download=False)
    n = 50 * PER_CLASS["train"] if train else 10 * PER_CLASS["test"]
    assert len(ds) == n and ds.data.shape == (n, 3, 32, 32) and ds.data.dtype == torch.uint8
    assert ds.targets.dtype == torch.int64 and torch.equal(ds.targets, torch.from_numpy(labels))
    assert torch.equal(ds.data.permute(0, 2, 3, 1), torch.from_numpy(images))  # RGB planes, row-major
    assert ds.classes == list(cifar10_source.CIFAR10_CLASSES)
    x, y = ds[7]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == int(labels[7])
    assert torch.equal((x * 255).round().to(torch.uint8), torch.from_numpy(images[7]).permute(2, 0, 1))
    xb, yb = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert xb.shape == (4, 3, 32, 32) and yb.dtype == torch.int64


def test_cifar10_applies_a_tensor_transform(cifar_dir):
    root, _ = cifar_dir
    ds = cifar10_source.cifar10(root, train=False, download=False, transform=lambda x: x[:, :16, :16] * 2)
    x, _ = ds[0]
    assert x.shape == (3, 16, 16) and torch.allclose(x, ds.data[0, :, :16, :16].float() / 255 * 2)


def test_cifar10_reads_python3_pickles_with_bytes_keys(cifar_dir):
    root, _ = cifar_dir
    images, labels, batch = make_batch(np.random.default_rng(1), 2, "testing batch 1 of 1")
    (root / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps(batch))
    ds = cifar10_source.cifar10(root, train=False, download=False)
    assert torch.equal(ds.targets, torch.from_numpy(labels))
    assert torch.equal(ds.data.permute(0, 2, 3, 1), torch.from_numpy(images))


@pytest.mark.parametrize("cut", [0, 100, -1000])
def test_truncated_cifar10_batch_is_a_one_line_error_naming_the_file(cifar_dir, cut):
    root, _ = cifar_dir
    path = root / "cifar-10-batches-py" / "data_batch_3"
    data = path.read_bytes()
    path.write_bytes(data[:cut])  # empty, header only, the end cut off
    with pytest.raises(sources.DataError) as err:
        cifar10_source.cifar10(root, train=True, download=True)  # a file on disk is corrupt: no download over it
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and "truncated or unreadable" in msg
    assert "corrupted. You can use download=True" not in msg  # not torchvision's MD5 message


def test_cifar10_batch_with_wrong_shape_is_named(cifar_dir):
    root, _ = cifar_dir
    path = root / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(py2_pickle({b"data": np.zeros((4, 1000), np.uint8), b"labels": [0, 1, 2, 3]}))
    with pytest.raises(sources.DataError, match=r"test_batch holds uint8 data of shape \(4, 1000\)"):
        cifar10_source.cifar10(root, train=False, download=False)


def test_missing_cifar10_is_one_error_naming_data_dir_and_the_layout(tmp_path):
    for root in (tmp_path, tmp_path / "nowhere"):
        with pytest.raises(sources.DataError) as err:
            cifar10_source.cifar10(root, train=True, download=False)
        msg = str(err.value)
        assert "\n" not in msg and f"--data-dir {root}" in msg
        assert "cifar-10-batches-py/data_batch_1 ... data_batch_5, test_batch" in msg
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"")
    with pytest.raises(sources.DataError, match="lacks data_batch_1, data_batch_2"):
        cifar10_source.cifar10(tmp_path, train=True, download=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(sources.DataError, match="is a file, not a folder"):
        cifar10_source.cifar10(tmp_path / "file", train=True, download=False)


def test_cifar10_download_failure_is_one_line_and_leaves_no_folder(tmp_path, monkeypatch):
    # torchvision's real download code, pointed at a local URL that does not exist (no network is touched)
    monkeypatch.setattr(cifar10_source.CIFAR10, "url", (tmp_path / "absent.tar.gz").as_uri())
    root = tmp_path / "data"
    with pytest.raises(sources.DataError) as err:
        cifar10_source.cifar10(root, train=False, download=True)
    msg = str(err.value)
    assert "\n" not in msg and "could not be downloaded (URLError" in msg and f"--data-dir {root}" in msg
    assert not root.exists()


def test_cifar10_download_extracts_the_archive(cifar_dir, tmp_path, monkeypatch):
    # the real download-and-extract path, from a local tar.gz of the fixture in the archive's layout
    src, truth = cifar_dir
    archive = tmp_path / "cifar.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    from torchvision.datasets.utils import calculate_md5

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)  # served on localhost only
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setattr(cifar10_source.CIFAR10, "url", f"http://127.0.0.1:{server.server_address[1]}/cifar.tar.gz")
        monkeypatch.setattr(cifar10_source.CIFAR10, "tgz_md5", calculate_md5(str(archive)))
        ds = cifar10_source.cifar10(tmp_path / "fresh", train=False, download=True)
    finally:
        server.shutdown()
        server.server_close()
    assert torch.equal(ds.targets, torch.from_numpy(truth["test"][1]))
    assert (tmp_path / "fresh" / "cifar-10-batches-py" / "data_batch_5").is_file()


# ---------------------------------------------------------------------------------------------------- ImageNet

CLASSES = ("n01", "n02", "n03")
PER_FOLDER = 3


@pytest.fixture
def imagenet_dir(tmp_path):
    """``tmp/train/<class>/*.JPEG`` and ``tmp/val/<class>/*.JPEG`` of 40x40 JPEGs (one colour per class), plus a
    corrupt ``bad.jpg`` (garbage) in train/n02 and a truncated JPEG in val/n01."""
    colours = {"n01": (250, 10, 10), "n02": (10, 250, 10), "n03": (10, 10, 250)}
    for split in ("train", "val"):
        for c in CLASSES:
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(PER_FOLDER):
                Image.new("RGB", (40, 40), colours[c]).save(tmp_path / split / c / f"{c}_{i}.JPEG", quality=95)
    (tmp_path / "train" / "n02" / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG" * 10)
    good = (tmp_path / "val" / "n01" / "n01_0.JPEG").read_bytes()
    (tmp_path / "val" / "n01" / "n01_00_truncated.JPEG").write_bytes(good[: len(good) // 2])
    return tmp_path


def test_imagenet_reads_the_folders_with_the_standard_transforms(imagenet_dir):
    train = imagenet_source.imagenet(imagenet_dir, train=True, crop=64)
    assert train.classes == list(CLASSES) and len(train) == 3 * PER_FOLDER + 1
    x, y = train[0]
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32 and y == 0
    assert x[0].mean() > 0.9 and x[1].mean() < 0.1  # red, the colour of n01
    names = [t.__class__.__name__ for t in train.transform.transforms]
    assert names == ["RandomResizedCrop", "RandomHorizontalFlip", "ToTensor"]
    val = imagenet_source.imagenet(imagenet_dir, train=False, crop=64)
    names = [t.__class__.__name__ for t in val.transform.transforms]
    assert names == ["Resize", "CenterCrop", "ToTensor"] and val.transform.transforms[0].size == 73
    x, y = val[len(val) - 1]
    assert x.shape == (3, 64, 64) and y == 2 and x[2].mean() > 0.9
    custom = imagenet_source.imagenet(imagenet_dir, train=False, transform=lambda im: im.size)
    assert custom[1][0] == (40, 40)


def test_default_crop_is_224(imagenet_dir):
    x, _ = imagenet_source.imagenet(imagenet_dir, train=False)[1]
    assert x.shape == (3, 224, 224)


def test_unreadable_images_are_skipped_with_one_warning_line_each(imagenet_dir, capfd):
    train = imagenet_source.imagenet(imagenet_dir, train=True, crop=64)
    bad = str(imagenet_dir / "train" / "n02" / "bad.jpg")
    i = [p for p, _ in train.samples].index(bad)
    x, y = train[i]  # the next image in folder order instead
    assert x.shape == (3, 64, 64) and y == train.samples[i + 1][1] == 1
    loader = torch.utils.data.DataLoader(train, batch_size=len(train))
    xb, yb = next(iter(loader))  # the whole epoch goes through
    assert xb.shape == (len(train), 3, 64, 64)
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and bad in err[0] and err[0].startswith("warning: skipping unreadable image")
    assert train.bad_files == {bad}
    val = imagenet_source.imagenet(imagenet_dir, train=False, crop=64)
    truncated = str(imagenet_dir / "val" / "n01" / "n01_00_truncated.JPEG")
    xs = [val[k][0] for k in range(len(val))]
    assert all(x.shape == (3, 64, 64) for x in xs) and val.bad_files == {truncated}
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and truncated in err[0]


def test_missing_imagenet_folders_are_one_error_naming_data_dir(tmp_path):
    layout = "DIR/train/<class>/*.JPEG and DIR/val/<class>/*.JPEG"
    for root, what in ((tmp_path / "nowhere", "does not exist"), (tmp_path, "has no val/ folder")):
        with pytest.raises(sources.DataError) as err:
            imagenet_source.imagenet(root, train=False)
        msg = str(err.value)
        assert "\n" not in msg and f"--data-dir {root} {what}" in msg and layout in msg
    (tmp_path / "train").mkdir()
    with pytest.raises(sources.DataError, match="holds no images") as err:
        imagenet_source.imagenet(tmp_path, train=True)
    assert "\n" not in str(err.value) and layout in str(err.value)


# ---------------------------------------------------------------------------------------------- normalisation


def test_channel_stats_matches_a_direct_computation(cifar_dir):
    root, truth = cifar_dir
    ds = cifar10_source.cifar10(root, train=True, download=False)
    stats = normalization.channel_stats(ds, batch_size=7)  # batches that do not divide the set
    x = torch.from_numpy(truth["train"][0]).double().permute(3, 0, 1, 2).reshape(3, -1) / 255
    assert stats["mean"].shape == (3, 1, 1) and stats["std"].shape == (3, 1, 1)
    assert stats["mean"].dtype == torch.float32
    torch.testing.assert_close(stats["mean"].flatten(), x.mean(1).float(), rtol=0, atol=1e-6)
    torch.testing.assert_close(stats["std"].flatten(), x.std(1, unbiased=False).float(), rtol=0, atol=1e-6)
    z = normalization.normalize(ds.data.float() / 255, stats)
    torch.testing.assert_close(z.mean(dim=(0, 2, 3)), torch.zeros(3), rtol=0, atol=1e-5)
    torch.testing.assert_close(z.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), rtol=0, atol=1e-5)


def test_standard_stats_are_checkpointable_tensors(tmp_path):
    im = normalization.imagenet_stats()
    assert im["mean"].shape == (3, 1, 1) and torch.allclose(im["mean"].flatten(), torch.tensor([0.485, 0.456, 0.406]))
    assert torch.allclose(im["std"].flatten(), torch.tensor([0.229, 0.224, 0.225]))
    torch.save({"preprocess": normalization.cifar10_stats()}, tmp_path / "c.pt")
    back = torch.load(tmp_path / "c.pt")["preprocess"]
    assert torch.equal(back["std"], normalization.cifar10_stats()["std"]) and back["mean"].shape == (3, 1, 1)
    assert normalization.normalize(torch.zeros(2, 3, 4, 4), im).shape == (2, 3, 4, 4)


# ---------------------------------------------------------------------------------------------- subsets


def test_balanced_subset_is_balanced_sorted_and_reproducible():
    labels = torch.arange(10).repeat_interleave(100)[torch.randperm(1000, generator=torch.Generator().manual_seed(3))]
    idx = pipeline_lib.balanced_subset(labels, 200, seed=0)
    assert idx.dtype == torch.int64 and len(idx) == 200 and len(idx.unique()) == 200
    assert torch.equal(idx, idx.sort().values)
    assert torch.bincount(labels[idx], minlength=10).tolist() == [20] * 10
    assert torch.equal(idx, pipeline_lib.balanced_subset(labels.tolist(), 200, seed=0))  # a list works too
    assert not torch.equal(idx, pipeline_lib.balanced_subset(labels, 200, seed=1))
    counts = torch.bincount(labels[pipeline_lib.balanced_subset(labels, 205, seed=0)], minlength=10)
    assert counts.max() - counts.min() == 1 and counts.sum() == 205
    assert pipeline_lib.balanced_subset(labels, 0, seed=0).numel() == 0
    assert torch.equal(pipeline_lib.balanced_subset(labels, 1000, seed=5), torch.arange(1000))
    with pytest.raises(sources.DataError):
        pipeline_lib.balanced_subset(labels, 1001, seed=0)


def test_balanced_subset_fills_up_from_the_larger_classes():
    labels = np.array([0] * 3 + [1] * 50 + [2] * 50)  # class 0 cannot give its share of 20
    idx = pipeline_lib.balanced_subset(labels, 60, seed=0)
    counts = torch.bincount(torch.from_numpy(labels)[idx], minlength=3).tolist()
    assert counts[0] == 3 and sorted(counts[1:]) == [28, 29]
