"""Each kind of misuse raises its documented exception with a message that says what to do."""

import pytest
import torch
from torch import nn

import revnet
from revnet import (
    BatchNormTrainingError,
    ReverseShapeError,
    RevnetError,
    TapeMismatchError,
    UnsupportedLayerError,
)


def _net():
    torch.manual_seed(0)
    return revnet.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))


def test_every_error_is_a_revnet_error():
    for cls in [UnsupportedLayerError, BatchNormTrainingError, ReverseShapeError, TapeMismatchError]:
        assert issubclass(cls, RevnetError)
    assert issubclass(UnsupportedLayerError, NotImplementedError)


def test_unsupported_module_is_named_and_supported_ones_listed():
    with pytest.raises(UnsupportedLayerError) as info:
        revnet.Sequential(nn.Linear(3, 3), nn.Embedding(3, 3))
    message = str(info.value)
    assert "Embedding" in message and "Conv2d" in message and "MaxPool2d" in message and "revnet.register" in message


def test_subclass_of_a_supported_module_is_not_silently_accepted():
    class MyReLU(nn.ReLU):
        def forward(self, x):
            return x.clamp(min=0.5)

    with pytest.raises(UnsupportedLayerError, match="MyReLU"):
        revnet.Sequential(MyReLU())


@pytest.mark.parametrize(
    "make",
    [
        lambda: nn.Conv2d(1, 1, 3, padding=1, padding_mode="reflect"),
        lambda: nn.MaxPool2d(2, return_indices=True),
        lambda: nn.BatchNorm2d(3, track_running_stats=False),
    ],
    ids=["conv-reflect", "maxpool-return-indices", "bn-no-running-stats"],
)
def test_unsupported_options_raise_when_converted_and_when_constructed(make):
    with pytest.raises(UnsupportedLayerError):
        revnet.Sequential(make())
    torch_layer = make()
    revnet_cls = {v: k for k, v in revnet.TORCH_COUNTERPARTS.items()}[type(torch_layer)]
    args = {
        nn.Conv2d: lambda: revnet_cls(1, 1, 3, padding=1, padding_mode="reflect"),
        nn.MaxPool2d: lambda: revnet_cls(2, return_indices=True),
        nn.BatchNorm2d: lambda: revnet_cls(3, track_running_stats=False),
    }[type(torch_layer)]
    with pytest.raises(UnsupportedLayerError):
        args()


def test_flattening_the_batch_dimension_is_refused():
    net = revnet.Sequential(nn.Flatten(start_dim=0))
    with pytest.raises(UnsupportedLayerError, match="start_dim"):
        net.trace(torch.randn(2, 3))


def test_batchnorm_in_training_mode_asks_for_eval():
    net = revnet.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2 * 4 * 4, 3)).train()
    y, tape = net.trace(torch.randn(4, 1, 6, 6))
    with pytest.raises(BatchNormTrainingError, match=r"\.eval\(\)"):
        net.reverse(torch.ones_like(y), tape)
    net.eval()
    y, tape = net.trace(torch.randn(4, 1, 6, 6))
    assert net.reverse(torch.ones_like(y), tape).shape == (4, 1, 6, 6)


@pytest.mark.parametrize(
    "shape", [(2, 4), (3, 3), (2, 2, 4), (3, 2, 3), (2,), (2, 1, 1, 3)], ids=lambda s: f"v{s}"
)
def test_v_of_the_wrong_shape_is_refused_with_the_expected_shapes(shape):
    net = _net()
    y, tape = net.trace(torch.randn(2, 1, 6, 6))
    with pytest.raises(ReverseShapeError) as info:
        net.reverse(torch.randn(*shape), tape)
    assert "(2, 3)" in str(info.value) and "(2, K, 3)" in str(info.value)


def test_v_of_another_dtype_is_refused():
    net = _net()
    y, tape = net.trace(torch.randn(2, 1, 6, 6))
    with pytest.raises(ReverseShapeError, match="dtype"):
        net.reverse(torch.ones(2, 3, dtype=torch.float64), tape)


def test_tape_of_another_network_is_refused():
    net, other = _net(), _net()
    y, tape = other.trace(torch.randn(2, 1, 6, 6))
    with pytest.raises(TapeMismatchError, match="another network"):
        net.reverse(torch.ones_like(y), tape)


def test_tape_of_a_changed_network_is_refused():
    net = _net()
    y, tape = net.trace(torch.randn(2, 1, 6, 6))
    net[1] = nn.LeakyReLU()
    with pytest.raises(TapeMismatchError, match="trace"):
        net.reverse(torch.ones_like(y), tape)


def test_something_that_is_not_a_tape_is_refused():
    net = _net()
    with pytest.raises(TapeMismatchError):
        net.reverse(torch.ones(2, 3), (None, None))


def test_register_checks_its_arguments():
    class Square(nn.Module):
        def forward(self, x):
            return x * x

    class NotASubclass(nn.Module):
        def trace(self, x):
            return x, ()

        def reverse(self, v, tape):
            return v

    class NoReverse(Square):
        pass

    with pytest.raises(TypeError, match="subclass"):
        revnet.register(Square, NotASubclass)
    with pytest.raises(TypeError, match="trace"):
        revnet.register(Square, NoReverse)
    with pytest.raises(TypeError):
        revnet.register("Square", NoReverse)
