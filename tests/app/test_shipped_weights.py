"""The defended MNIST weights that ship with the package (``models.shipped``): they load with their checksums,
classify MNIST, and an unbounded attack drives their accuracy to 0 (no gradient masking can hide them from it).

The images are the embedded MNIST subset (``train/assets``), which is drawn from the same 5,000 training images
the shipped models were trained on: the accuracies here are training accuracies, a check that the right weights
load, not a test-set result (``results/evaluation-mnist-pairs`` has those). Time budget: ≤ 15 s.
"""

from __future__ import annotations

import shutil

import pytest
import torch

import revnet
from revnet_app import models
from revnet_app.models import shipped
from revnet_app.train import normalization
from revnet_app.train.sources import mnist as mnist_source

NAMES = ["lenet-deepdefense", "lenet-reference", "mlp-deepdefense", "mlp-reference"]


@pytest.fixture(scope="module")
def images():
    splits = mnist_source.embedded_mnist()
    return splits.test_x[:100], splits.test_y[:100]


def test_the_four_checkpoints_are_listed_with_checksums_and_commands():
    assert models.shipped_weights() == NAMES
    for name, entry in shipped.manifest().items():
        path = shipped.WEIGHTS / entry["file"]
        assert shipped.sha256(path) == entry["sha256"] and path.stat().st_size < 2.5e6
        assert entry["command"].startswith("python train/finetune.py ") and entry["arch"] in name


@pytest.mark.parametrize("name", NAMES)
def test_each_loads_classifies_and_an_unbounded_deepfool_fools_every_image(name, images):
    net, ckpt = models.pretrained(name)
    x = normalization.preprocess(images[0], ckpt["preprocess"])
    y = images[1]
    assert isinstance(net, revnet.Sequential) and not net.training
    with torch.no_grad():
        assert (net(x).argmax(1) == y).float().mean() >= 0.9
    delta, _ = revnet.deepfool(net, x, max_iter=100, overshoot=0.02)  # no box, no radius: unbounded
    with torch.no_grad():
        assert (net(x + delta).argmax(1) == y).float().mean() == 0.0
    assert ckpt["metrics"]["finetuned" if "deepdefense" in name else "train_seconds"] is not None


def test_a_wrong_name_or_a_damaged_file_is_one_line(tmp_path, monkeypatch):
    with pytest.raises(models.CheckpointError, match="no shipped weights named 'resnet'; choose one of: lenet-"):
        models.pretrained("resnet")
    copy = tmp_path / "weights"
    shutil.copytree(shipped.WEIGHTS, copy)
    entry = shipped.manifest()["mlp-reference"]
    data = bytearray((copy / entry["file"]).read_bytes())
    data[-10] ^= 0xFF
    (copy / entry["file"]).write_bytes(bytes(data))
    monkeypatch.setattr(shipped, "WEIGHTS", copy)
    with pytest.raises(models.CheckpointError, match="does not match its SHA-256"):
        models.pretrained("mlp-reference")
