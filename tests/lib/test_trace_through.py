"""``TraceThrough`` (whole-function rules for functions hidden from torch.fx, timm's notrace lists), ``F.conv2d``,
``F.normalize``, division by a traced tensor and ``F.dropout``, against autograd in float64 (forward, first order with K = 3 cotangents,
second order w.r.t. every weight and x), with weights re-drawn at unit scale.

Time budget: ≤ 20 s.
"""

from __future__ import annotations

import pytest
import torch
import torch.fx
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import revnet
from helpers import check_graph_against_autograd, randomize_unit_scale

F64 = torch.float64


def _x(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def windows(x: torch.Tensor, size: int, weight: torch.Tensor) -> torch.Tensor:
    """A Swin-like function fx cannot trace: pads ``x (N, L, C)`` to a multiple of ``size`` (an ``if`` on a
    shape), folds windows into the batch, unbinds heads, uses a value twice, and undoes the folding."""
    n, length, c = x.shape
    pad = (size - length % size) % size
    if pad:
        x = F.pad(x, (0, 0, 0, pad))
    w = x.reshape(n * (x.shape[1] // size), size, c)  # windows fold into the first dimension
    q, k = (w @ weight).chunk(2, dim=-1)
    attn = F.softmax(F.normalize(q + 1.0, dim=-1) @ k.transpose(-2, -1), dim=-1)  # no zero row (padding)
    out = (attn @ w) * w.sigmoid()  # w is read three times
    parts = out.unbind(1)  # a tuple: one element per position in the window
    out = torch.cat([p.unsqueeze(1) for p in reversed(parts)], 1)
    return out.reshape(n, -1, c)[:, :length]


torch.fx.wrap("windows")


class Windowed(nn.Module):
    def __init__(self, c: int = 4, size: int = 3):
        super().__init__()
        self.size = size
        self.proj = nn.Linear(c, c)
        self.weight = nn.Parameter(torch.empty(c, 2 * c))
        self.head = nn.Linear(c, 3)

    def forward(self, x):
        return self.head(windows(self.proj(x), self.size, self.weight).mean(1))


@settings(max_examples=10, deadline=None)
@given(n=st.integers(1, 3), length=st.integers(1, 7), size=st.integers(1, 4), seed=st.integers(0, 2**16 - 1))
def test_a_user_function_hidden_from_fx_reverses_through_its_calls(n, length, size, seed):
    revnet.register_function(windows, revnet.TraceThrough("windows"))
    try:
        model = randomize_unit_scale(Windowed(size=size).double(), seed)
        check_graph_against_autograd(model, _x(n, length, 4, seed=seed), seed=seed)
    finally:
        revnet.registry.FUNCTIONS.pop(windows)


def test_without_a_rule_the_hidden_function_is_refused_by_name():
    with pytest.raises(revnet.UnsupportedLayerError, match="windows.*no reverse rule"):
        revnet.convert(Windowed().double())


def sort_inside(x: torch.Tensor) -> torch.Tensor:
    return x.sort(dim=-1).values


def scale_in_place(x: torch.Tensor) -> torch.Tensor:
    return (x * 1.0).mul_(2.0)


torch.fx.wrap("sort_inside")
torch.fx.wrap("scale_in_place")


class Calls(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn, self.lin = fn, nn.Linear(4, 4)

    def forward(self, x):
        return self.fn(self.lin(x))


class Sorts(Calls):
    def forward(self, x):
        return sort_inside(self.lin(x))


class ScalesInPlace(Calls):
    def forward(self, x):
        return scale_in_place(self.lin(x))


@pytest.mark.parametrize("cls, fn, message", [
    (Sorts, sort_inside, "sort_inside calls sort on a value that depends on the input"),
    (ScalesInPlace, scale_in_place, "in place \\(mul_\\)")])
def test_a_call_without_rule_or_in_place_inside_is_one_line(cls, fn, message):
    revnet.register_function(fn, revnet.TraceThrough(fn.__name__))
    try:
        net = revnet.convert(cls(None))
        with pytest.raises(revnet.UnsupportedLayerError, match=message) as info:
            net.trace(torch.randn(2, 4))
        assert "\n" not in str(info.value)
    finally:
        revnet.registry.FUNCTIONS.pop(fn)


# --------------------------------------------------------------------------------- F.normalize and division


class Normalized(nn.Module):
    def __init__(self, dim: int, eps: float, shape: tuple[int, ...]):
        super().__init__()
        self.dim, self.eps = dim, eps
        self.scale = nn.Parameter(torch.empty(shape))

    def forward(self, x):
        return F.normalize(x * self.scale, dim=self.dim, eps=self.eps) * 3.0


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 3), shape=st.lists(st.integers(1, 4), min_size=1, max_size=3), data=st.data(),
       eps=st.sampled_from([1e-12, 0.5, 2.0]), seed=st.integers(0, 2**16 - 1))
def test_normalize_matches_autograd_with_and_without_the_eps_clamp(n, shape, data, eps, seed):
    dim = data.draw(st.integers(1, len(shape)))
    dim = dim if data.draw(st.booleans()) else dim - len(shape) - 1
    model = randomize_unit_scale(Normalized(dim, eps, tuple(shape)).double(), seed)
    check_graph_against_autograd(model, _x(n, *shape, seed=seed), seed=seed)


def test_normalize_along_the_batch_or_with_another_p_is_refused():
    x = torch.randn(2, 4)
    for kwargs, what in [({"dim": 0}, "dim=0"), ({"p": 1}, "p=1")]:
        net = revnet.convert(Calls(lambda t, kw=kwargs: F.normalize(t, **kw)))
        with pytest.raises(revnet.UnsupportedLayerError, match=what):
            net.trace(x)


class Divided(nn.Module):
    def __init__(self, c: int, broadcast: bool, numerator_live: bool):
        super().__init__()
        self.lin, self.den = nn.Linear(c, c), nn.Linear(c, 1 if broadcast else c)
        self.numerator_live = numerator_live

    def forward(self, x):
        denominator = F.softplus(self.den(x)) + 0.5
        numerator = self.lin(x) if self.numerator_live else self.lin.weight[0]
        return numerator / denominator


@settings(max_examples=10, deadline=None)
@given(n=st.integers(1, 3), c=st.integers(1, 4), broadcast=st.booleans(), numerator_live=st.booleans(),
       seed=st.integers(0, 2**16 - 1))
def test_division_by_a_traced_tensor_matches_autograd(n, c, broadcast, numerator_live, seed):
    model = randomize_unit_scale(Divided(c, broadcast, numerator_live).double(), seed)
    check_graph_against_autograd(model, _x(n, c, seed=seed), seed=seed)


# ------------------------------------------------------------------------------------------------ F.dropout


class FunctionalDropout(nn.Module):
    def __init__(self, p: float):
        super().__init__()
        self.p, self.lin = p, nn.Linear(4, 3)

    def forward(self, x):
        return self.lin(F.dropout(x, self.p, self.training))


def test_functional_dropout_is_the_identity_in_eval_mode_and_at_p_zero():
    for p, train in [(0.5, False), (0.0, True)]:
        model = randomize_unit_scale(FunctionalDropout(p).double().train(train))
        check_graph_against_autograd(model, _x(3, 4))


def test_functional_dropout_in_training_is_refused_in_one_line():
    net = revnet.convert(FunctionalDropout(0.5).train())
    with pytest.raises(revnet.UnsupportedLayerError, match="use nn.Dropout") as info:
        net.trace(torch.randn(2, 4))
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------- timm's notrace functions and modules

timm_fx = pytest.importorskip("timm.layers._fx")


@timm_fx.register_notrace_function
def half_rows(x: torch.Tensor) -> torch.Tensor:
    """Branches on a shape (fx cannot trace it); timm's list keeps it one node."""
    return x[:, : x.shape[1] // 2] * 2.0 if x.shape[1] > 1 else x


@timm_fx.register_notrace_module
class ShapeGate(nn.Module):
    """A module timm marks notrace: its forward branches on a shape and calls nn.Conv2d (``F.conv2d`` inside)."""

    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1, stride=1)

    def forward(self, x):
        if x.shape[-1] % 2:
            x = F.pad(x, (0, 1))
        return self.conv(x).sigmoid() * x


class UsesTimmLists(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(2, 4, 3, stride=2, padding=1)
        self.gate = ShapeGate(4)
        self.head = nn.Linear(2, 3)

    def forward(self, x):
        h = self.gate(self.stem(x)).mean((2, 3))
        return self.head(half_rows(h))


@pytest.mark.parametrize("width", [6, 7])
def test_timm_notrace_functions_and_modules_stay_whole_and_reverse_through(width):
    model = randomize_unit_scale(UsesTimmLists().double())
    net = revnet.convert(model)
    ops = {n.op for n in net.graph.nodes if n.target == "gate" or getattr(n.target, "__name__", "") == "half_rows"}
    assert ops == {"call_module", "call_function"}
    check_graph_against_autograd(model, _x(2, 2, 5, width))


class FunctionalConv(nn.Module):
    def __init__(self, c_in, c_out, k, stride, padding, dilation, groups, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(c_out, c_in // groups, k, k))
        self.bias = nn.Parameter(torch.empty(c_out)) if bias else None
        self.options = (stride, padding, dilation, groups)

    def forward(self, x):
        stride, padding, dilation, groups = self.options
        return torch.tanh(F.conv2d(x, self.weight, self.bias, stride, padding, dilation, groups))


@settings(max_examples=15, deadline=None)
@given(groups=st.sampled_from([1, 2]), k=st.integers(1, 3), stride=st.integers(1, 3), dilation=st.integers(1, 2),
       padding=st.sampled_from([0, 1, 2, "valid", "same"]), bias=st.booleans(), n=st.integers(1, 2),
       size=st.integers(5, 8), seed=st.integers(0, 2**16 - 1))
def test_functional_conv2d_with_the_models_weight_matches_autograd(groups, k, stride, dilation, padding, bias, n,
                                                                   size, seed):
    if padding == "same":
        stride = 1  # torch allows padding="same" with stride 1 only
    model = randomize_unit_scale(FunctionalConv(2, 4, k, stride, padding, dilation, groups, bias).double(), seed)
    check_graph_against_autograd(model, _x(n, 2, size, size + 1, seed=seed), seed=seed)
