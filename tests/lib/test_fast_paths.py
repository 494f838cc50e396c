"""The performance paths of the reverse are exact: the CPU im2col kernel of a one-channel Conv2d's reverse, the
row difference ``W[k] − W[l]`` of a final Linear and the element-wise spread of average poolings whose windows
tile the input, against autograd in float64 (first and, with weights, second order) and against the generic
path. Time budget: ~30 s (the deepfool_limits benchmark, ~15 s)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import revnet
from revnet.layers import conv as conv_module
from revnet.layers import pooling as pooling_module

from helpers import assert_vjp_close, autograd_vjp

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("kwargs, size", [
    ({"kernel_size": 5}, (28, 28)),
    ({"kernel_size": 3, "stride": 2, "padding": 1}, (11, 14)),  # output padding in both dimensions
    ({"kernel_size": (3, 2), "stride": (2, 3), "dilation": (2, 1), "padding": (2, 0)}, (13, 10)),
])
def test_one_channel_conv_reverse_takes_im2col_and_matches_autograd(kwargs, size):
    torch.manual_seed(0)
    layer = revnet.Conv2d(1, 4, **kwargs).double()
    x = torch.randn(3, 1, *size, dtype=torch.float64)
    y, tape = layer.trace(x)
    v = torch.randn(3, 2, *y.shape[1:], dtype=torch.float64)
    assert conv_module._single_channel_on_cpu(layer.weight, layer.groups, v)
    g = layer.reverse(v.flatten(0, 1), tape).reshape(3, 2, *x.shape[1:])
    assert_vjp_close(g, autograd_vjp(lambda t: F.conv2d(t, layer.weight, layer.bias, layer.stride, layer.padding,
                                                        layer.dilation), x, v), "first order")
    # second order: a loss on the reverse output, differentiated to the weight, equals double backprop
    (explicit,) = torch.autograd.grad(layer.reverse(v.flatten(0, 1), tape).square().sum(), layer.weight)
    xr = x.clone().requires_grad_()
    out = F.conv2d(xr, layer.weight, layer.bias, layer.stride, layer.padding, layer.dilation)
    rows = [torch.autograd.grad(out, xr, v[:, k], create_graph=True)[0] for k in range(2)]
    (double,) = torch.autograd.grad(sum(r.square().sum() for r in rows), layer.weight)
    assert_vjp_close(explicit, double, "second order")
    # and it is the same transposed convolution as oneDNN's, to rounding
    generic = F.conv_transpose2d(v.flatten(0, 1), layer.weight, None, layer.stride, layer.padding,
                                 [(s + 2 * p - d * (k - 1) - 1) % st for s, p, d, k, st in
                                  zip(size, layer.padding, layer.dilation, layer.kernel_size, layer.stride)],
                                 1, layer.dilation)
    torch.testing.assert_close(g.flatten(0, 1), generic, rtol=1e-12, atol=1e-12)


def test_kernel_choice_keeps_onednn_elsewhere():
    v = torch.zeros(2, 4, 5, 5)
    assert not conv_module._single_channel_on_cpu(revnet.Conv2d(3, 4, 3).weight, 1, v)  # three input channels
    assert not conv_module._single_channel_on_cpu(revnet.Conv2d(2, 4, 3, groups=2).weight, 2, v)  # grouped
    assert not conv_module._single_channel_on_cpu(revnet.Conv2d(1, 4, 3).weight, 1, v.bfloat16())


def _lenet_like(dtype):
    torch.manual_seed(0)
    return revnet.Sequential(revnet.Conv2d(1, 3, 3), revnet.MaxPool2d(2), revnet.Flatten(), revnet.Linear(27, 8),
                             revnet.ReLU(), revnet.Linear(8, 5)).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_row_difference_equals_the_one_hot_reverse_bit_for_bit(dtype):
    net = _lenet_like(dtype)
    x = torch.randn(4, 1, 8, 8, dtype=dtype)
    _, tape = net.trace(x)
    away = torch.tensor([0, 1, 2, 4])
    toward = torch.tensor([[1, 2], [0, 3], [4, 1], [3, 0]])
    v = (F.one_hot(toward, 5) - F.one_hot(away, 5).unsqueeze(1)).to(dtype)
    assert torch.equal(net.reverse_differences(toward, away, tape), net.reverse(v, tape))
    assert torch.equal(net.reverse_differences(toward[:, 0], away, tape), net.reverse(v[:, 0], tape))


def test_row_difference_gradients_match_double_backprop():
    net = _lenet_like(torch.float64)
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    _, tape = net.trace(x)
    away, toward = torch.tensor([0, 1, 2, 4]), torch.tensor([3, 0, 4, 1])
    explicit = torch.autograd.grad(net.reverse_differences(toward, away, tape).square().sum(), list(net.parameters()),
                                   allow_unused=True)  # the biases do not enter the reverse
    xr = x.clone().requires_grad_()
    out = revnet.Sequential.forward(net, xr)
    v = (F.one_hot(toward, 5) - F.one_hot(away, 5)).double()
    (w,) = torch.autograd.grad(out, xr, v, create_graph=True)
    double = torch.autograd.grad(w.square().sum(), list(net.parameters()), allow_unused=True)
    for name, e, d in zip([n for n, _ in net.named_parameters()], explicit, double):
        p = dict(net.named_parameters())[name]
        zero = torch.zeros_like(p)
        assert_vjp_close(e if e is not None else zero, d if d is not None else zero, name)


def test_row_difference_weight_gradient_is_the_same_bits_every_time():
    """Many samples share a class, so the rows of ``W`` receive summed gradients: the sum must run in a fixed
    order (``index_select``'s backward), not in ``W[k]``'s ``index_put_(accumulate=True)``, whose order on the
    CPU changed from call to call and made a fine-tune differ from itself in the 6th digit."""
    torch.manual_seed(0)
    last = revnet.Linear(500, 10)
    toward, away = torch.randint(0, 10, (100, 3)), torch.randint(0, 10, (100,))
    g = torch.randn(100, 3, 500)
    grads = [torch.autograd.grad(last.reverse_differences(toward, away), last.weight, g)[0] for _ in range(20)]
    assert all(torch.equal(grads[0], other) for other in grads[1:])
    rows = (F.one_hot(toward, 10) - F.one_hot(away, 10).unsqueeze(1)).float()  # and it is the right gradient
    torch.testing.assert_close(grads[0], torch.einsum("nkc,nkd->cd", rows, g))


def test_networks_without_a_final_linear_take_the_one_hot_rows():
    torch.manual_seed(0)
    net = revnet.Sequential(revnet.Conv2d(1, 5, 4), revnet.Flatten()).double()  # logits straight from a conv
    x = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    _, tape = net.trace(x)
    away, toward = torch.tensor([0, 1, 2]), torch.tensor([[1], [3], [4]])
    v = (F.one_hot(toward, 5) - F.one_hot(away, 5).unsqueeze(1)).double()
    assert torch.equal(net.reverse_differences(toward, away, tape), net.reverse(v, tape))


def test_conv_kernels_benchmark_quick(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "conv_kernels.py"), "--quick", "--output",
                          str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    text = (tmp_path / "conv-kernels.md").read_text()
    assert "LeNet conv1" in text and "im2col / oneDNN" in text
    assert (tmp_path / "conv-kernels.json").is_file()


@pytest.mark.parametrize("make, size", [
    (lambda: revnet.AvgPool2d(2), (8, 6)),
    (lambda: revnet.AvgPool2d(3, divisor_override=2), (9, 6)),
    (lambda: revnet.AvgPool2d(2, ceil_mode=True, count_include_pad=False), (4, 4)),
    (lambda: revnet.AdaptiveAvgPool2d((2, 3)), (8, 9)),
    (lambda: revnet.AdaptiveAvgPool2d(1), (7, 7)),  # ResNet's global average
])
def test_tiling_average_pools_spread_exactly(make, size, monkeypatch):
    layer = make()
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    y, tape = layer.trace(x)
    v = torch.randn(2, 2, *y.shape[1:], dtype=torch.float64)
    calls = []
    real = pooling_module._spread
    monkeypatch.setattr(pooling_module, "_spread", lambda *a: calls.append(1) or real(*a))
    g = layer.reverse(v.flatten(0, 1), tape).reshape(2, 2, *x.shape[1:])
    assert calls, "the tiling fast path was not taken"
    assert_vjp_close(g, autograd_vjp(lambda t: type(layer).forward(layer, t), x, v), "first order")


def test_overlapping_average_pools_keep_the_separable_product(monkeypatch):
    monkeypatch.setattr(pooling_module, "_spread", lambda *a: pytest.fail("not a tiling"))
    for layer, size in ((revnet.AvgPool2d(3, stride=2, padding=1), (9, 9)), (revnet.AdaptiveAvgPool2d(3), (8, 8))):
        x = torch.randn(2, 3, *size, dtype=torch.float64)
        y, tape = layer.trace(x)
        v = torch.randn(2, *y.shape[1:], dtype=torch.float64)
        assert_vjp_close(layer.reverse(v, tape), autograd_vjp(lambda t: type(layer).forward(layer, t), x, v), "vjp")


def test_pool_reverse_benchmark_quick(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "pool_reverse.py"), "--quick", "--output",
                          str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "spread / einsum" in (tmp_path / "pool-reverse.md").read_text()


def test_deepfool_limits_benchmark_quick(tmp_path):
    """benchmarks/deepfool_limits.py --quick (≈ 15 s: a 1-epoch reference, 20 images, 3 rounds): the profile and
    every alternative kernel, which must compute revnet's result."""
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "deepfool_limits.py"), "--quick", "--cache-dir",
                          str(tmp_path / "refs"), "--output", str(tmp_path)], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    text = (tmp_path / "deepfool-limits.md").read_text()
    assert "slow_conv_transpose2d (revnet)" in text and "GFLOP/s" in text and "Machine ceiling" in text
    import json
    report = json.loads((tmp_path / "deepfool-limits.json").read_text())
    assert all(c["max_difference"] < 1e-2 for c in report["kernels"]), report["kernels"]  # values ~ 30
