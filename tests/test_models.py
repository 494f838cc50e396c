"""models/: architectures, the checkpoint format (weights_only, atomic, architecture check), data fallback."""

import sys
from pathlib import Path

import pytest
import torch

import models
import revnet
from helpers import assert_vjp_close, autograd_vjp, plain_copy

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
import data as data_lib  # noqa: E402


@pytest.mark.parametrize("arch", ["mlp", "lenet"])
def test_architectures_are_reversible_and_match_autograd(arch):
    torch.manual_seed(0)
    net = models.build(arch).double()
    assert isinstance(net, revnet.Sequential)
    x = torch.randn(3, 1, 28, 28, dtype=torch.float64)
    y, tape = net.trace(x)
    assert y.shape == (3, 10)
    v = torch.eye(10, dtype=torch.float64).expand(3, 10, 10)
    assert_vjp_close(net.reverse(v, tape), autograd_vjp(plain_copy(net), x, v), arch)


def test_lenet_layers_follow_the_paper():
    net = models.lenet()
    kinds = [type(m).__name__ for m in net]
    assert kinds == ["Conv2d", "MaxPool2d", "Conv2d", "MaxPool2d", "Flatten", "Linear", "ReLU", "Linear"]
    assert (net[0].out_channels, net[2].out_channels, net[5].out_features) == (20, 50, 500)
    assert [m.out_features for m in models.mlp() if isinstance(m, torch.nn.Linear)] == [500, 150, 10]


def test_checkpoint_round_trip_with_weights_only(tmp_path):
    torch.manual_seed(0)
    net = models.lenet()
    pre = {"scale": 1 / 255, "mean": torch.rand(1, 28, 28)}
    path = tmp_path / "sub" / "model.pt"
    models.save(path, "lenet", net, pre, metrics={"acc": 0.5}, config={"seed": 0})
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"arch", "state_dict", "preprocess", "metrics", "config"}
    loaded, ckpt = models.load(path)
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(loaded(x), net.eval()(x), rtol=0, atol=0)
    assert ckpt["metrics"]["acc"] == 0.5 and torch.equal(ckpt["preprocess"]["mean"], pre["mean"])
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temporary file left behind


def test_checkpoint_of_another_architecture_or_missing_is_a_clear_error(tmp_path):
    path = tmp_path / "mlp.pt"
    models.save(path, "mlp", models.mlp(), {"scale": 1 / 255, "mean": torch.zeros(1, 28, 28)})
    with pytest.raises(models.CheckpointError, match="'mlp' model, not 'lenet'"):
        models.load(path, arch="lenet")
    with pytest.raises(models.CheckpointError, match="no checkpoint"):
        models.load(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(models.CheckpointError, match="cannot read"):
        models.load(tmp_path / "junk.pt")
    with pytest.raises(ValueError, match="unknown model"):
        models.build("resnet")


def test_embedded_mnist_keeps_test_images_out_of_training():
    splits = data_lib.embedded_mnist()
    assert splits.train_x.shape == (4000, 1, 28, 28) and splits.test_x.shape == (1000, 1, 28, 28)
    assert torch.equal(splits.test_y.bincount(), torch.full((10,), 100))
    train_rows = {bytes(r) for r in splits.train_x.flatten(1).numpy()}
    assert not any(bytes(r) in train_rows for r in splits.test_x.flatten(1).numpy())
    assert "EMBEDDED" in splits.source


def test_hold_out_is_class_balanced_disjoint_and_seeded():
    splits = data_lib.embedded_mnist()
    rest, (vx, vy) = splits.hold_out(500, seed=3)
    assert len(rest.train_y) == 3500 and torch.equal(vy.bincount(), torch.full((10,), 50))
    again = splits.hold_out(500, seed=3)[1][0]
    assert torch.equal(vx, again)
    rows = {bytes(r) for r in rest.train_x.flatten(1).numpy()}
    assert not any(bytes(r) in rows for r in vx.flatten(1).numpy())


def test_missing_data_dir_is_a_clear_error(tmp_path):
    with pytest.raises(data_lib.DataError, match="does not exist"):
        data_lib.load("mnist", str(tmp_path / "nowhere"))


def test_preprocessing_subtracts_the_training_mean():
    x = torch.randint(0, 256, (50, 1, 28, 28), dtype=torch.uint8)
    params = data_lib.preprocess_params(x)
    z = data_lib.preprocess(x, params)
    assert z.dtype == torch.float32 and z.mean(0).abs().max() < 1e-5
