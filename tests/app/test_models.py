"""models/: architectures, the checkpoint format (weights_only, atomic, architecture check), data fallback."""


import pytest
import torch
from torch import nn

from revnet_app import models
import revnet
from helpers import assert_vjp_close, autograd_vjp, plain_copy

from revnet_app.train.sources import mnist as mnist_source  # noqa: E402
from revnet_app.train import normalization  # noqa: E402
from revnet_app.train import sources  # noqa: E402


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


F64 = torch.float64
TEST_SIZE = {"mlp": 28, "lenet": 28, "convnet": 32, "nin": 32, "alexnet": 64, "resnet18": 32, "resnet18-mnist": 28}  # H = W in the tests


def _randomize_batchnorm(net: nn.Module, gen: torch.Generator) -> None:
    """Random running statistics and affine parameters, so eval-mode BatchNorm is not near the identity."""
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=gen, dtype=F64))
            m.running_var.copy_(torch.rand(c, generator=gen, dtype=F64) + 0.5)
            m.weight.data.copy_(torch.randn(c, generator=gen, dtype=F64))
            m.bias.data.copy_(torch.randn(c, generator=gen, dtype=F64))


def _plain_reference(arch: str, net: nn.Module) -> nn.Module:
    """An independent plain-torch module with ``net``'s values: a ``torch.nn`` copy of a ``revnet.Sequential``,
    or a fresh torchvision model loading ``net``'s ``state_dict`` (strictly: the keys must be torchvision's)."""
    if isinstance(net, revnet.Sequential):
        return plain_copy(net)
    import torchvision

    ref = getattr(torchvision.models, arch.split("-")[0])(weights=None, num_classes=models.NUM_CLASSES[arch])
    if arch == "resnet18-mnist":  # the one-channel stem
        ref.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    ref = ref.to(F64)
    ref.load_state_dict(net.state_dict())
    return ref.eval()


def test_architecture_tables_cover_every_architecture():
    assert set(models.ARCHITECTURES) == {"mlp", "lenet", "convnet", "nin", "alexnet", "resnet18", "resnet18-mnist"}
    assert set(models.INPUT_SHAPES) == set(models.NUM_CLASSES) == set(models.ARCHITECTURES)
    assert models.INPUT_SHAPES["nin"] == (3, 32, 32) and models.INPUT_SHAPES["resnet18"] == (3, 224, 224)
    assert models.NUM_CLASSES["convnet"] == 10 and models.NUM_CLASSES["alexnet"] == 1000


@pytest.mark.parametrize("arch", list(models.ARCHITECTURES))
def test_every_architecture_reverse_matches_autograd_of_a_plain_copy(arch):
    """Eval mode, float64, batch 2, K = 3 random cotangents; BatchNorm with random running statistics."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    net = models.build(arch).to(F64)
    _randomize_batchnorm(net, gen)
    net.eval()
    ref = _plain_reference(arch, net)
    side = TEST_SIZE[arch]
    x = torch.randn(2, models.INPUT_SHAPES[arch][0], side, side, generator=gen, dtype=F64)
    y, tape = net.trace(x)
    assert y.shape == (2, models.NUM_CLASSES[arch])
    torch.testing.assert_close(y, ref(x), rtol=1e-12, atol=1e-12)
    v = torch.randn(2, 3, models.NUM_CLASSES[arch], generator=gen, dtype=F64)
    g = net.reverse(v, tape)
    assert g.abs().max() > 0
    assert_vjp_close(g, autograd_vjp(ref, x, v), arch)


@pytest.mark.parametrize("arch", ["convnet", "nin"])
def test_cifar_models_take_32x32_images_and_follow_the_authors_layer_order(arch):
    net = models.build(arch)
    assert isinstance(net, revnet.Sequential)
    kinds = [type(m).__name__ for m in net]
    if arch == "convnet":
        assert kinds == ["Conv2d", "MaxPool2d", "ReLU", "Conv2d", "ReLU", "AvgPool2d", "Conv2d", "ReLU", "AvgPool2d",
                         "Conv2d", "ReLU", "Conv2d", "Flatten"]
        convs = [(m.out_channels, m.kernel_size[0], m.padding[0]) for m in net if isinstance(m, nn.Conv2d)]
        assert convs == [(32, 5, 2), (32, 5, 2), (64, 5, 2), (64, 4, 0), (10, 1, 0)]
    else:
        block = ["Conv2d", "ReLU", "Conv2d", "ReLU", "Conv2d"]
        assert kinds == [*block, "ReLU", "MaxPool2d", "Dropout", *block, "ReLU", "AvgPool2d", "Dropout", *block,
                         "AvgPool2d", "Flatten"]
        convs = [(m.out_channels, m.kernel_size[0], m.padding[0]) for m in net if isinstance(m, nn.Conv2d)]
        assert convs == [(192, 5, 2), (160, 1, 0), (96, 1, 0), (192, 5, 2), (192, 1, 0), (192, 1, 0),
                         (192, 3, 1), (192, 1, 0), (10, 1, 0)]
        assert [m.p for m in net if isinstance(m, nn.Dropout)] == [0.5, 0.5]
    with torch.no_grad():
        assert net.eval()(torch.zeros(2, *models.INPUT_SHAPES[arch])).shape == (2, 10)


@pytest.mark.parametrize("arch", ["alexnet", "resnet18"])
def test_imagenet_models_are_torchvisions_own(arch):
    import torchvision

    net = models.build(arch)
    assert isinstance(net, revnet.Graph) and net.source_name == {"alexnet": "AlexNet", "resnet18": "ResNet"}[arch]
    plain = getattr(torchvision.models, arch)(weights=None)
    assert list(net.state_dict()) == list(plain.state_dict())
    assert {k: v.shape for k, v in net.state_dict().items()} == {k: v.shape for k, v in plain.state_dict().items()}
    small = getattr(models, arch)(num_classes=10).eval()
    with torch.no_grad():
        assert small(torch.zeros(2, 3, TEST_SIZE[arch], TEST_SIZE[arch])).shape == (2, 10)


@pytest.mark.parametrize("arch", ["convnet", "nin"])
def test_cifar_models_second_order_matches_double_backprop(arch):
    """d/dθ of ((w ⊙ reverse(v))²).sum() for every parameter θ == autograd double backprop of the plain copy."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(2)
    net = models.build(arch).to(F64).eval()
    ref = plain_copy(net)
    x = torch.randn(2, 3, 32, 32, generator=gen, dtype=F64)
    v = torch.randn(2, 2, 10, generator=gen, dtype=F64)
    w = torch.randn(2, 2, 3, 32, 32, generator=gen, dtype=F64)

    y, tape = net.trace(x)
    loss = (w * net.reverse(v, tape)).square().sum()
    params = dict(net.named_parameters())
    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)

    xr = x.clone().requires_grad_(True)
    yr = ref(xr)
    gx = torch.stack([torch.autograd.grad(yr, xr, v[:, k], create_graph=True, retain_graph=True)[0]
                      for k in range(v.shape[1])], 1)
    loss_ref = (w * gx).square().sum()
    ref_params = dict(ref.named_parameters())
    assert list(params) == list(ref_params)
    grads_ref = torch.autograd.grad(loss_ref, list(ref_params.values()), allow_unused=True)

    assert_vjp_close(loss, loss_ref, f"{arch}: second-order loss")
    for (name, p), a, e in zip(params.items(), grads, grads_ref):
        a = torch.zeros_like(p) if a is None else a
        e = torch.zeros_like(p) if e is None else e
        assert_vjp_close(a, e, f"{arch}: d/d{name} of ((w * reverse(v))**2).sum()")
    weights = [a for name, a in zip(params, grads) if name.endswith("weight")]
    assert all(a is not None and a.abs().max() > 0 for a in weights)  # every weight reaches the reverse's graph


def test_nin_dropout_in_training_mode_reverses_with_the_tape_mask():
    """Train mode: reverse with the tape's Dropout masks == autograd through a forward with the same masks."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(3)
    net = models.nin().to(F64).train()
    x = torch.randn(2, 3, 32, 32, generator=gen, dtype=F64)
    y, tape = net.trace(x)
    noise = revnet.noise_of(net, tape)
    assert set(noise) == {"drop1", "drop2"}
    assert noise["drop1"].shape == (2, 96, 16, 16) and noise["drop2"].shape == (2, 192, 8, 8)
    for mask in noise.values():  # mask / (1 - p): zeros and twos, both present
        assert set(mask.unique().tolist()) == {0.0, 2.0}
    v = torch.randn(2, 3, 10, generator=gen, dtype=F64)
    g = net.reverse(v, tape)

    def same_masks(z):
        out, _ = net.trace(z, noise=noise)
        return out

    torch.testing.assert_close(same_masks(x), y, rtol=0, atol=0)
    assert_vjp_close(g, autograd_vjp(same_masks, x, v), "nin, train mode")
    y_eval, tape_eval = net.eval().trace(x)
    assert not torch.allclose(net.reverse(v, tape_eval), g)  # the masks matter


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
    splits = mnist_source.embedded_mnist()
    assert splits.train_x.shape == (4000, 1, 28, 28) and splits.test_x.shape == (1000, 1, 28, 28)
    assert torch.equal(splits.test_y.bincount(), torch.full((10,), 100))
    train_rows = {bytes(r) for r in splits.train_x.flatten(1).numpy()}
    assert not any(bytes(r) in train_rows for r in splits.test_x.flatten(1).numpy())
    assert "EMBEDDED" in splits.source


def test_hold_out_is_class_balanced_disjoint_and_seeded():
    splits = mnist_source.embedded_mnist()
    rest, (vx, vy) = splits.hold_out(500, seed=3)
    assert len(rest.train_y) == 3500 and torch.equal(vy.bincount(), torch.full((10,), 50))
    again = splits.hold_out(500, seed=3)[1][0]
    assert torch.equal(vx, again)
    rows = {bytes(r) for r in rest.train_x.flatten(1).numpy()}
    assert not any(bytes(r) in rows for r in vx.flatten(1).numpy())


def test_missing_data_dir_is_a_clear_error(tmp_path):
    with pytest.raises(sources.DataError, match="does not exist"):
        mnist_source.load("mnist", str(tmp_path / "nowhere"))


def test_preprocessing_subtracts_the_training_mean():
    x = torch.randint(0, 256, (50, 1, 28, 28), dtype=torch.uint8)
    params = normalization.preprocess_params(x)
    z = normalization.preprocess(x, params)
    assert z.dtype == torch.float32 and z.mean(0).abs().max() < 1e-5
