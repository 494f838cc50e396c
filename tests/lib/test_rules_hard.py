"""Hardswish / Hardsigmoid (modules and ``F.`` functions), squeeze-excitation gating and torchvision's stochastic
depth (module and function) against autograd, in float64, with every weight re-drawn at unit scale.

Graph checks: forward, first order with K = 3 cotangents, second order w.r.t. every parameter and ``x``
(``check_graph_against_autograd``). Where torch's autograd cannot give the second order, :func:`check_against`
takes the oracle from a twin of the model:

* Hardsigmoid: torch has no double backward for ``hardsigmoid_backward``. The twin's Hardsigmoid has torch's
  value and torch's slope with a zero second derivative; the first order is still checked against the model.
* StochasticDepth in training mode: the twin multiplies by the mask the network drew (its ``noise``).

Time budget: ≤ 20 s (about 8 s on a 2-core CPU). The module runs torch on one thread: with two, the many tiny
grouped convolutions of the torchvision models took 150 s instead of 1 s each on a busy machine.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.nn.functional as F
import torchvision
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torchvision.ops import StochasticDepth, stochastic_depth
from torchvision.ops.misc import SqueezeExcitation

import revnet
from helpers import assert_vjp_close, autograd_vjp, check_graph_against_autograd, randomize_unit_scale
from revnet.layers.hard import Hardsigmoid, Hardswish
from revnet.layers.protocol import select_noise

F64 = torch.float64
KINKS = [-3.0, 3.0, -3.0 - 1e-9, -3.0 + 1e-9, 3.0 - 1e-9, 3.0 + 1e-9, 0.0, -4.5, 4.5, 1.5]
TORCH_ONE_SIXTH = float(torch.tensor(1 / 6, dtype=torch.float32))  # torch's hardsigmoid backward constant


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """torch on one intra-op thread for this module (see the module docstring), restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _x(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


# ------------------------------------------------------------------------------------------- the oracle

class TwinHardsigmoid(nn.Module):
    """torch's hardsigmoid value, with torch's slope ``[−3 < x < 3] · (1.0f / 6.0f)`` as a twice-differentiable
    autograd expression (zero second derivative)."""

    def forward(self, x):
        slope = ((x > -3) & (x < 3)).to(x.dtype) * TORCH_ONE_SIXTH
        return F.hardsigmoid(x).detach() + (x - x.detach()) * slope.detach()


class FixedScale(nn.Module):
    """Multiplies by a fixed mask (the twin of a StochasticDepth whose mask is known)."""

    def __init__(self, scale):
        super().__init__()
        self.scale = scale

    def forward(self, x):
        return x * self.scale


def _is_hardsigmoid(obj) -> bool:
    return isinstance(obj, nn.Hardsigmoid) or obj is F.hardsigmoid or getattr(obj, "func", None) is F.hardsigmoid


def hardsigmoid_twin(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose Hardsigmoid modules (and ``act`` attributes holding ``F.hardsigmoid``) are twins."""
    twin = copy.deepcopy(model)
    for module in list(twin.modules()):
        for name, value in list(vars(module).items()) + list(module._modules.items()):
            if _is_hardsigmoid(value):
                setattr(module, name, TwinHardsigmoid())
    return twin


def _vjps(model, x, v, create_graph):
    xr = x.detach().requires_grad_(True)
    y = model(xr)
    return xr, torch.stack([torch.autograd.grad(y, xr, v[:, j], retain_graph=True, create_graph=create_graph)[0]
                            for j in range(v.shape[1])], 1)


def check_against(net, x, twin, *, model=None, noise=None, k=3, seed=0):
    """``check_graph_against_autograd`` for a converted ``net`` with ``twin`` as the oracle (same parameter names):
    ``net.trace(x, noise)`` equals ``twin(x)``, the reverse equals the twin's VJPs (and ``model``'s, by torch's own
    first derivative, when given), and second order w.r.t. every parameter and ``x`` equals the twin's. Returns
    ``(y, tape)``."""
    gen = torch.Generator().manual_seed(seed)
    x = x.detach().requires_grad_(True)
    y, tape = net.trace(x, noise=noise)
    with torch.no_grad():
        torch.testing.assert_close(y, twin(x), rtol=1e-10, atol=1e-12)
    v = torch.randn(x.shape[0], k, *y.shape[1:], generator=gen, dtype=y.dtype)
    g = net.reverse(v, tape)
    xr, ref = _vjps(twin, x, v, create_graph=True)
    assert_vjp_close(g, ref, "first order vs twin")
    if model is not None:
        assert_vjp_close(g, _vjps(model, x, v, create_graph=False)[1], "first order vs the model")
    w = torch.randn(g.shape, generator=gen, dtype=g.dtype)
    names, params = zip(*net.named_parameters())
    theirs_params = dict(twin.named_parameters())
    ours = torch.autograd.grad((w * g).square().sum(), [*params, x], allow_unused=True)
    theirs = torch.autograd.grad((w * ref).square().sum(), [*(theirs_params[n] for n in names), xr],
                                 allow_unused=True)
    for name, a, b, p in zip([*names, "x"], ours, theirs, [*params, x]):
        assert_vjp_close(torch.zeros_like(p) if a is None else a, torch.zeros_like(p) if b is None else b,
                         f"second order, {name}")
    return y, tape


def check_hardsigmoid_model(model, x, k=3):
    check_against(revnet.convert(model), x, hardsigmoid_twin(model), model=model, k=k)


def test_torch_has_no_hardsigmoid_double_backward():
    """Why the twin exists (drop it once torch has one); and torch's slope is the float32 1/6 in float64 too."""
    x = torch.tensor([0.5], dtype=F64, requires_grad=True)
    (g,) = torch.autograd.grad(F.hardsigmoid(x).sum(), x, create_graph=True)
    assert g.item() == TORCH_ONE_SIXTH != 1 / 6
    with pytest.raises(RuntimeError, match="not implemented"):
        torch.autograd.grad(g.sum(), x)


# ------------------------------------------------------------------------------------ Hardswish / Hardsigmoid

@pytest.mark.parametrize("cls,fn", [(Hardswish, F.hardswish), (Hardsigmoid, F.hardsigmoid)])
def test_slopes_at_the_kinks_match_autograd(cls, fn):
    """The layer alone on x exactly at and next to ±3, K = 2 folded rows; the input is never overwritten."""
    x = torch.tensor([KINKS, [-x for x in KINKS]], dtype=F64)
    layer = cls(inplace=True)
    before = x.clone()
    y, tape = layer.trace(x)
    assert torch.equal(layer(x), fn(x)) and torch.equal(y, fn(x)) and torch.equal(x, before)
    v = _x(2, 2, len(KINKS), seed=1)
    g = layer.reverse(v.reshape(4, -1), tape).reshape(v.shape)
    assert_vjp_close(g, autograd_vjp(fn, x, v), cls.__name__)


class ActNet(nn.Module):
    """``x·1 → act → Linear → act2 → Linear``: the first activation sees ``x`` itself (kinks hit exactly); ``x·1``
    keeps an in-place activation off the leaf ``x``. ``act``/``act2`` are modules or functions."""

    def __init__(self, act, act2, width=4):
        super().__init__()
        self.act, self.act2 = act, act2
        self.fc1, self.fc2 = nn.Linear(width, 5), nn.Linear(5, 3)

    def forward(self, x):
        return self.fc2(self.act2(self.fc1(self.act(x * 1.0))))


def _acts(name: str, form: str, inplace: bool):
    if form == "module":
        cls = nn.Hardswish if name == "hardswish" else nn.Hardsigmoid
        return cls(inplace=inplace), cls(inplace=inplace)
    fn = F.hardswish if name == "hardswish" else F.hardsigmoid
    return functools.partial(fn, inplace=inplace), functools.partial(fn, inplace=inplace)


@given(name=st.sampled_from(["hardswish", "hardsigmoid"]), form=st.sampled_from(["module", "function"]),
       inplace=st.booleans(), values=st.lists(st.sampled_from(KINKS), min_size=8, max_size=8),
       seed=st.integers(0, 2**16 - 1))
def test_activation_model_at_and_near_kinks(name, form, inplace, values, seed):
    model = randomize_unit_scale(ActNet(*_acts(name, form, inplace)).double(), seed)
    x = torch.tensor(values, dtype=F64).reshape(2, 4)
    if name == "hardswish":
        check_graph_against_autograd(model, x, k=3, seed=seed)
    else:
        check_hardsigmoid_model(model, x)


@pytest.mark.parametrize("form", ["module", "function"])
@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("name", ["hardswish", "hardsigmoid"])
def test_activation_model_random_inputs(name, form, inplace):
    model = randomize_unit_scale(ActNet(*_acts(name, form, inplace)).double())
    x = 3 * _x(3, 4)
    if name == "hardswish":
        check_graph_against_autograd(model, x, k=3)
    else:
        check_hardsigmoid_model(model, x)


class ReadsAgain(nn.Module):
    """An in-place Hardswish whose input is read again: torch returns ``2·hardswish(h)``, out of place gives
    ``hardswish(h) + h``, so revnet refuses rather than silently differ."""

    def __init__(self):
        super().__init__()
        self.fc, self.act = nn.Linear(4, 4), nn.Hardswish(inplace=True)

    def forward(self, x):
        h = self.fc(x)
        return self.act(h) + h


def test_in_place_hardswish_read_again_is_refused():
    with pytest.raises(revnet.UnsupportedLayerError, match="inplace=False"):
        revnet.convert(ReadsAgain().double())


# ------------------------------------------------------------------------------------ squeeze-excitation

class SENet(nn.Module):
    """Conv2d → SqueezeExcitation (``x · scale_activation(fc2(relu(fc1(pool(x)))))``) → pool → flatten → Linear."""

    def __init__(self, scale_activation):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.se = SqueezeExcitation(8, 4, scale_activation=scale_activation)
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(8, 5)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.se(self.conv(x))), 1))


def test_squeeze_excitation_hardsigmoid():
    check_hardsigmoid_model(randomize_unit_scale(SENet(nn.Hardsigmoid).double()), _x(2, 3, 6, 6))


def test_squeeze_excitation_sigmoid():
    check_graph_against_autograd(randomize_unit_scale(SENet(nn.Sigmoid).double()), _x(2, 3, 6, 6), k=3)


# ------------------------------------------------------------------------------------ stochastic depth

class Residual(nn.Module):
    """``fc2(x + depth(tanh(fc1(x))))`` with ``depth`` a StochasticDepth (module)."""

    def __init__(self, depth):
        super().__init__()
        self.fc1, self.depth, self.fc2 = nn.Linear(4, 4), depth, nn.Linear(4, 3)

    def forward(self, x):
        return self.fc2(x + self.depth(torch.tanh(self.fc1(x))))


class TracedThroughDepth(StochasticDepth):
    """Not registered (lookup is by exact class), so fx traces its forward: the bare ``stochastic_depth`` call."""


@pytest.mark.parametrize("mode", ["row", "batch"])
@pytest.mark.parametrize("cls", [StochasticDepth, TracedThroughDepth])
def test_stochastic_depth_eval_is_identity(cls, mode):
    model = randomize_unit_scale(Residual(cls(0.5, mode)).double()).eval()
    check_graph_against_autograd(model, _x(3, 4), k=3)


def test_function_rule_target_is_torchvision_function():
    graph = torch.fx.symbolic_trace(Residual(TracedThroughDepth(0.5, "row")).eval()).graph
    targets = [n.target for n in graph.nodes if n.op == "call_function"]
    assert stochastic_depth in targets and stochastic_depth in revnet.registry.FUNCTIONS


def test_function_in_training_mode_is_refused():
    """The function has no noise to reuse: refused at conversion in training mode, or at the first training-mode run
    of a network converted in eval mode. With p == 0 it is the identity in both modes."""
    with pytest.raises(revnet.UnsupportedLayerError, match="torchvision.ops.StochasticDepth"):
        revnet.convert(Residual(TracedThroughDepth(0.5, "row")).double().train())
    net = revnet.convert(Residual(TracedThroughDepth(0.5, "row")).double().eval())
    with pytest.raises(revnet.UnsupportedLayerError, match="torchvision.ops.StochasticDepth"):
        net.train().trace(_x(3, 4))
    check_graph_against_autograd(randomize_unit_scale(Residual(TracedThroughDepth(0.0, "row")).double().train()),
                                 _x(3, 4), k=3)


@pytest.mark.parametrize("p", [0.5, 1.0])
@pytest.mark.parametrize("mode", ["row", "batch"])
def test_stochastic_depth_training_draws_torchvisions_mask(mode, p):
    """Under one seed, ``trace`` gives torchvision's own training forward; the tape's noise is ``(N, 1)`` and is
    ``m / (1 − p)`` (0 or 2 at p = 0.5; one value per batch in batch mode; zeros at p = 1)."""
    model = randomize_unit_scale(Residual(StochasticDepth(p, mode)).double()).train()
    net, x = revnet.convert(model), _x(8, 4)
    torch.manual_seed(3)
    y, tape = net.trace(x)
    torch.manual_seed(3)
    torch.testing.assert_close(y, model(x), rtol=0, atol=0)
    scale = net.noise(tape)["depth"]
    assert scale.shape == (8, 1)
    if p == 1.0:
        assert not scale.any()
    else:
        assert set(scale.flatten().tolist()) <= {0.0, 2.0}
        assert len(set(scale.flatten().tolist())) == (2 if mode == "row" else 1)  # seed 3: rows of both kinds


@pytest.mark.parametrize("mode", ["row", "batch"])
def test_stochastic_depth_training_matches_autograd_with_the_same_mask(mode):
    """Reverse (first and second order) equals autograd through ``x · mask`` with the traced mask; a re-trace with
    ``noise=`` reuses it (same output), and the noise rows of some samples reproduce their rows."""
    model = randomize_unit_scale(Residual(StochasticDepth(0.5, mode)).double()).train()
    net, x = revnet.convert(model), _x(8, 4)
    torch.manual_seed(3)
    y, tape = net.trace(x)
    noise = net.noise(tape)
    twin = copy.deepcopy(model)
    twin.depth = FixedScale(noise["depth"])
    y2, _ = check_against(net, x, twin, noise=noise)
    assert torch.equal(y2, y)
    index = torch.tensor([5, 0, 2])
    y3, _ = net.trace(x[index], noise=select_noise(noise, index))
    torch.testing.assert_close(y3, y[index], rtol=1e-12, atol=1e-12)


def test_stochastic_depth_reverse_on_folded_rows():
    """The layer alone: ``reverse`` of ``N·K`` folded rows multiplies each sample's K rows by its own scale."""
    layer = revnet.layers.droppath.StochasticDepth(0.5, "row").train()
    x = _x(4, 3, 2)
    scale = torch.tensor([0.0, 2.0, 2.0, 0.0], dtype=F64).reshape(4, 1, 1)
    y, tape = layer.trace(x, noise=scale)
    v = _x(4, 3, 3, 2, seed=1)
    g = layer.reverse(v.reshape(12, 3, 2), tape).reshape(v.shape)
    assert_vjp_close(g, autograd_vjp(lambda t: t * scale, x, v), "StochasticDepth")
    with pytest.raises(ValueError, match="noise"):
        layer.trace(x, noise=scale[:3])


# ------------------------------------------------------------------------------------ torchvision models

def test_mobilenet_v3_small():
    """Hardswish(inplace=True), SE blocks with Hardsigmoid, Dropout (eval): second order through the twin."""
    model = randomize_unit_scale(torchvision.models.mobilenet_v3_small(num_classes=10).double()).eval()
    check_hardsigmoid_model(model, _x(2, 3, 32, 32))


def test_efficientnet_b0():
    """SiLU(inplace=True), SE blocks with Sigmoid, StochasticDepth (eval: identity)."""
    model = randomize_unit_scale(torchvision.models.efficientnet_b0(num_classes=10).double()).eval()
    check_graph_against_autograd(model, _x(2, 3, 32, 32), k=3)
