"""LayerNorm, GroupNorm (modules and ``F.layer_norm`` / ``F.group_norm``) and ``F.batch_norm`` with running
statistics against autograd, in float64, with every weight re-drawn at unit scale.

Graph checks (``check_graph_against_autograd``): forward, first order with K = 3 cotangents, and second order
w.r.t. every parameter and ``x``. Layer checks: ``trace``/``reverse`` directly on folded rows ``(N·K, *s)``.

Time budget: ≤ 20 s.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import revnet
from helpers import assert_vjp_close, autograd_vjp, check_graph_against_autograd, randomize_unit_scale
from revnet.layers.layernorm import GroupNorm, LayerNorm, NormTape

F64 = torch.float64


def _x(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


class Scaled(nn.Module):
    """``x ⊙ s`` (a per-entry scale parameter) before ``inner``: gives a parameter-free norm a parameter, which
    ``check_graph_against_autograd`` needs (it unpacks the model's parameters)."""

    def __init__(self, inner: nn.Module, shape: tuple[int, ...]):
        super().__init__()
        self.scale, self.inner = nn.Parameter(torch.empty(shape)), inner

    def forward(self, x):
        return self.inner(x * self.scale)


def _check(model: nn.Module, x: torch.Tensor, seed: int = 0) -> None:
    if not any(True for _ in model.parameters()):
        model = Scaled(model, tuple(x.shape[1:]))
    check_graph_against_autograd(randomize_unit_scale(model.to(F64), seed), x, k=3, seed=seed)


# ------------------------------------------------------------------------------------------ LayerNorm module


@settings(max_examples=15, deadline=None)
@given(
    n=st.integers(1, 3),
    shape=st.lists(st.integers(1, 4), min_size=1, max_size=3),
    dims=st.integers(1, 3),
    affine=st.booleans(),
    bias=st.booleans(),
    eps=st.sampled_from([1e-5, 1e-3, 0.1, 1.0]),
    seed=st.integers(0, 2**16 - 1),
)
def test_layernorm_module_property(n, shape, dims, affine, bias, eps, seed):
    normalized = shape[len(shape) - min(dims, len(shape)):]
    model = nn.Sequential(nn.LayerNorm(normalized, eps=eps, elementwise_affine=affine, bias=bias))
    _check(model, _x(n, *shape, seed=seed), seed)


@pytest.mark.parametrize("normalized, shape", [(6, (2, 5, 6)), ((5, 6), (2, 5, 6)), ((3, 4), (2, 2, 3, 4))],
                         ids=["last-dim", "last-two-dims", "4d-last-two"])
@pytest.mark.parametrize("options", [{}, {"elementwise_affine": False}, {"bias": False}],
                         ids=["affine", "no-affine", "no-bias"])
def test_layernorm_module(normalized, shape, options):
    _check(nn.Sequential(nn.LayerNorm(normalized, **options)), _x(*shape))


class TokenMLP(nn.Module):
    """Linear → LayerNorm → GELU → Linear on (N, L, C), mean over L, Linear head."""

    def __init__(self, c: int = 6, hidden: int = 8, classes: int = 3):
        super().__init__()
        self.fc1, self.norm, self.act = nn.Linear(c, hidden), nn.LayerNorm(hidden), nn.GELU()
        self.fc2, self.head = nn.Linear(hidden, hidden), nn.Linear(hidden, classes)

    def forward(self, x):
        return self.head(self.fc2(self.act(self.norm(self.fc1(x)))).mean(1))


def test_layernorm_in_a_model():
    _check(TokenMLP(), _x(2, 5, 6, seed=1), seed=1)


def test_registry_converts_layernorm():
    net = revnet.convert(nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6)))
    assert isinstance(net[1], LayerNorm)
    _check(nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6)), _x(3, 4))


# ------------------------------------------------------------------------------------------ F.layer_norm


class FunctionalLayerNorm(nn.Module):
    """Linear, then ``F.layer_norm`` with the module's own weight/bias (or ``None``)."""

    def __init__(self, shape: tuple[int, ...], weight: bool = True, bias: bool = True, eps: float = 1e-3):
        super().__init__()
        self.lin, self.shape, self.eps = nn.Linear(shape[-1], shape[-1]), shape, eps
        self.weight = nn.Parameter(torch.empty(shape)) if weight else None
        self.bias = nn.Parameter(torch.empty(shape)) if bias else None

    def forward(self, x):
        return F.layer_norm(self.lin(x), self.shape, self.weight, self.bias, self.eps)


@pytest.mark.parametrize("weight, bias", [(True, True), (False, True), (False, False), (True, False)])
@pytest.mark.parametrize("shape", [(6,), (5, 6)], ids=["last-dim", "last-two-dims"])
def test_functional_layer_norm(weight, bias, shape):
    _check(FunctionalLayerNorm(shape, weight, bias), _x(2, 5, 6, seed=2), seed=2)


class ChannelsLastLayerNorm2d(nn.LayerNorm):
    """timm's LayerNorm2d: permute to channels-last, F.layer_norm over C, permute back."""

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps).permute(0, 3, 1, 2)


def test_timm_layernorm2d():
    if revnet.registry.rule_for("permute") is None:
        pytest.skip("the permute rule is not in this tree yet")
    _check(nn.Sequential(nn.Conv2d(2, 4, 3), ChannelsLastLayerNorm2d(4)), _x(2, 2, 5, 5, seed=3), seed=3)


# ------------------------------------------------------------------------------------------ GroupNorm


@pytest.mark.parametrize("groups", [1, 2, 4])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape", [(2, 4, 3, 3), (3, 4, 5), (2, 4)], ids=["2d", "1d", "no-spatial"])
def test_groupnorm_module(groups, affine, shape):
    _check(nn.Sequential(nn.GroupNorm(groups, 4, eps=1e-3, affine=affine)), _x(*shape, seed=groups))


class FunctionalGroupNorm(nn.Module):
    def __init__(self, groups: int, affine: bool):
        super().__init__()
        self.conv, self.groups = nn.Conv2d(2, 4, 3, padding=1), groups
        self.weight = nn.Parameter(torch.empty(4)) if affine else None
        self.bias = nn.Parameter(torch.empty(4)) if affine else None

    def forward(self, x):
        return F.silu(F.group_norm(self.conv(x), self.groups, self.weight, self.bias, 1e-4))


@pytest.mark.parametrize("groups, affine", [(1, True), (2, True), (4, False)])
def test_functional_group_norm(groups, affine):
    _check(FunctionalGroupNorm(groups, affine), _x(2, 2, 4, 3, seed=4), seed=4)


# ------------------------------------------------------------------------------------------ F.batch_norm


class BatchNormAct2d(nn.BatchNorm2d):
    """timm's BatchNormAct2d (eval path): F.batch_norm with the running statistics, then an activation."""

    def forward(self, x):
        bn_training = self.training and not self.track_running_stats
        x = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, bn_training,
                         self.momentum, self.eps)
        return F.gelu(x)


class FunctionalBatchNorm(nn.Module):
    """A conv and ``F.batch_norm(x, running_mean, running_var, weight, bias, self.training, …)``."""

    def __init__(self, affine: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3)
        self.register_buffer("running_mean", torch.zeros(3))
        self.register_buffer("running_var", torch.ones(3))
        self.weight = nn.Parameter(torch.empty(3)) if affine else None
        self.bias = nn.Parameter(torch.empty(3)) if affine else None

    def forward(self, x):
        return F.batch_norm(self.conv(x), self.running_mean, self.running_var, self.weight, self.bias,
                            self.training, 0.1, 1e-3)


@pytest.mark.parametrize("affine", [True, False])
def test_functional_batch_norm_eval(affine):
    _check(FunctionalBatchNorm(affine).eval(), _x(2, 2, 5, 5, seed=5), seed=5)
    _check(nn.Sequential(nn.Conv2d(2, 3, 3), BatchNormAct2d(3, affine=affine)).eval(), _x(2, 2, 5, 5), seed=6)


def test_functional_batch_norm_training_refused():
    net = revnet.convert(randomize_unit_scale(FunctionalBatchNorm().to(F64), 7).train())
    y, tape = net.trace(_x(2, 2, 5, 5))
    with pytest.raises(revnet.BatchNormTrainingError, match="model.eval()"):
        net.reverse(torch.ones_like(y), tape)


# ------------------------------------------------------------------------------------------ layers directly


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("make, shape", [
    (lambda: LayerNorm(6), (2, 4, 6)),
    (lambda: LayerNorm((4, 6), bias=False), (2, 4, 6)),
    (lambda: LayerNorm(6, elementwise_affine=False), (3, 6)),
    (lambda: GroupNorm(2, 4), (2, 4, 3, 3)),
], ids=["ln-last", "ln-two-nobias", "ln-noaffine", "gn-2"])
def test_layer_trace_reverse_on_folded_rows(make, shape, k):
    layer = randomize_unit_scale(make().to(F64), seed=k)
    ref = revnet.TORCH_COUNTERPARTS[type(layer)].__new__(revnet.TORCH_COUNTERPARTS[type(layer)])
    ref.__dict__.update(layer.__dict__)  # the plain torch module on the same tensors
    x = _x(*shape, seed=8)
    y, tape = layer.trace(x)
    assert isinstance(tape, NormTape)
    assert_vjp_close(y, ref(x), "forward")
    n = shape[0]
    v = _x(n, k, *y.shape[1:], seed=9)
    g = layer.reverse(v.reshape(n * k, *y.shape[1:]), tape)
    assert g.shape == (n * k, *shape[1:])
    assert_vjp_close(g.reshape(n, k, *shape[1:]), autograd_vjp(ref, x, v), "folded rows vs autograd")
    with torch.no_grad():
        assert torch.equal(layer.reverse(v.reshape(n * k, *y.shape[1:]), tape), g)


class NormThenTokens(nn.Module):
    """A 1×1 convolution, BatchNorm, then ``flatten(2).transpose(1, 2)`` (timm's iformer and EfficientFormer):
    the gradient reaching the norm backwards has channels-last strides."""

    def __init__(self, c: int = 8):
        super().__init__()
        self.conv, self.bn, self.head = nn.Conv2d(3, c, 1), nn.BatchNorm2d(c), nn.Linear(c, 4)

    def forward(self, x):
        return self.head(self.bn(self.conv(x)).flatten(2).transpose(1, 2)).mean(1)


def test_batchnorm_reverse_is_exact_at_batch_one_with_a_channels_last_cotangent():
    """torch's own eval-mode batch_norm backward is wrong here at batch 1 (benchmarks/torch_batchnorm_backward.py);
    revnet's reverse is the per-channel scale, and revnet.check compares with autograd on two copies of x."""
    model = randomize_unit_scale(NormThenTokens().double().eval())
    x = _x(1, 3, 5, 6)
    net = revnet.convert(model)
    y, tape = net.trace(x)
    v = torch.randn(1, 2, 4, dtype=F64, generator=torch.Generator().manual_seed(1))
    g = net.reverse(v, tape)
    twice = x.repeat(2, 1, 1, 1).requires_grad_(True)  # batch 2: torch's kernel is right there
    out = model(twice)
    ref = torch.stack([torch.autograd.grad(out, twice, v[:, j].repeat(2, 1), retain_graph=True)[0][:1]
                       for j in range(2)], 1)
    assert_vjp_close(g, ref, "BatchNorm at batch 1")
    assert revnet.check(model, x).ok
