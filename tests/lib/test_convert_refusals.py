"""``revnet.convert`` refuses what the converted network would not reproduce, and reproduces what it can (issue 28,
item 3): module hooks (the model's, its submodules', global ones; old-style weight/spectral norm), forwards that
branch on ``self.training`` (one traced graph per mode), parts swapped on the model after conversion, TorchScript
modules, an optional ``forward`` argument, and source lines inside torchvision in refusals.

Reverse-vs-autograd checks in float64. Time budget: ≤ 20 s on a 2-core CPU (two small torchvision models are
built and converted; everything else is a few Linear layers).
"""

from __future__ import annotations

import copy
import re

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import revnet
from helpers import assert_vjp_close, autograd_vjp

F64 = torch.float64


class _Block(nn.Module):
    """A traced-through submodule whose forward branches on ``self.training``."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        h = self.fc(x)
        if self.training:
            return torch.tanh(h) * 2.0 + h
        return torch.sigmoid(h) - 0.5 * h


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.block, self.fc2 = nn.Linear(3, 4), _Block(), nn.Linear(4, 2)

    def forward(self, x):
        h = F.relu(self.fc1(x))
        if self.training:
            h = h * 3.0
        return self.fc2(self.block(h))


def _one_line(err) -> str:
    text = str(err.value)
    assert "\n" not in text, text
    return text


def _check_matches(model: nn.Module, net: nn.Module, x: torch.Tensor, context: str) -> None:
    """``net``'s output equals ``model(x)`` and its reverse equals autograd's VJP of ``model``."""
    y, tape = net.trace(x)
    with torch.no_grad():
        torch.testing.assert_close(y, model(x), rtol=1e-12, atol=1e-12, msg=context)
        torch.testing.assert_close(net(x), y, rtol=0, atol=0, msg=context)
    v = torch.randn(y.shape, generator=torch.Generator().manual_seed(3), dtype=y.dtype)
    assert_vjp_close(net.reverse(v, tape), autograd_vjp(model, x, v), context)


def _x(*shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0), dtype=F64)


# -- 1. hooks ------------------------------------------------------------------------------------------------


HOOKS = [
    ("forward-hook-leaf", lambda m: m.block.fc.register_forward_hook(lambda mod, i, o: o * 2),
     r"'block\.fc' \(forward hook <lambda>\)"),
    ("forward-hook-model", lambda m: m.register_forward_hook(lambda mod, i, o: o + 1),
     r"the model itself \(forward hook <lambda>\)"),
    ("pre-hook-with-kwargs", lambda m: m.fc1.register_forward_pre_hook(lambda mod, a, k: None, with_kwargs=True),
     r"'fc1' \(forward pre-hook <lambda>\)"),
    ("always-call", lambda m: m.block.register_forward_hook(lambda mod, i, o: o, always_call=True),
     r"'block' \(forward hook <lambda>\)"),
    ("full-backward-hook", lambda m: m.fc2.register_full_backward_hook(lambda mod, gi, go: None),
     r"'fc2' \(backward hook <lambda>\)"),
]


@pytest.mark.parametrize("name,register,message", HOOKS, ids=[h[0] for h in HOOKS])
def test_module_hooks_are_refused_naming_the_module_and_kind(name, register, message):
    model = _Net().eval()
    register(model)
    with pytest.raises(revnet.UnsupportedLayerError, match=r"_Net has module hooks, which the converted network would "
                                                         r"not run: " + message) as err:
        revnet.convert(model)
    assert _one_line(err).endswith("; remove the hooks (handle.remove()) before revnet.convert(model).")


def test_hooks_in_a_sequential_are_refused_too():
    seq = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
    seq[1].register_forward_pre_hook(lambda mod, a: None)
    with pytest.raises(revnet.UnsupportedLayerError, match=r"'1' \(forward pre-hook <lambda>\)"):
        revnet.convert(seq)


@pytest.mark.filterwarnings("ignore:.*is deprecated:FutureWarning")
@pytest.mark.parametrize("kind", ["weight_norm", "spectral_norm"])
def test_old_weight_and_spectral_norm_point_to_parametrizations(kind):
    model = _Net().eval()
    getattr(torch.nn.utils, kind)(model.fc1)
    with pytest.raises(revnet.UnsupportedLayerError,
                       match=rf"'fc1' \(forward pre-hook of torch\.nn\.utils\.{kind}\).*"
                             rf"torch\.nn\.utils\.parametrizations\.{kind}.*remove_{kind}") as err:
        revnet.convert(model)
    _one_line(err)


@pytest.mark.parametrize("kind", ["weight_norm", "spectral_norm"])
def test_parametrized_modules_are_refused_in_one_line(kind):
    """The parametrizations versions do not convert yet either (the message says so and what to do)."""
    model = _Net().eval()
    getattr(torch.nn.utils.parametrizations, kind)(model.block.fc)
    with pytest.raises(revnet.UnsupportedLayerError,
                       match=r"'block\.fc' \(ParametrizedLinear\) is parametrized.*remove_parametrizations") as err:
        revnet.convert(model)
    _one_line(err)


def test_global_module_hooks_are_refused():
    handle = torch.nn.modules.module.register_module_forward_hook(lambda mod, i, o: o)
    try:
        with pytest.raises(revnet.UnsupportedLayerError,
                           match=r"a global module forward hook <lambda> .*handle\.remove\(\)") as err:
            revnet.convert(_Net().eval())
        _one_line(err)
    finally:
        handle.remove()
    revnet.convert(_Net().eval())  # converts once the hook is gone


# -- 2. forwards that branch on self.training ----------------------------------------------------------------


@pytest.mark.parametrize("start", ["eval", "train"])
def test_training_branches_follow_the_graphs_mode(start):
    torch.manual_seed(0)
    model = _Net().double().train(start == "train")
    net = revnet.convert(model)
    x = _x(5, 3)
    for mode in ([True, False, True] if start == "eval" else [False, True, False]):
        net.train(mode)
        model.train(mode)
        _check_matches(model, net, x, f"converted in {start} mode, run in {'train' if mode else 'eval'} mode")


def test_both_mode_graphs_share_the_parameters():
    torch.manual_seed(0)
    model = _Net().double().eval()
    net = revnet.convert(model)
    assert [id(p) for p in net.parameters()] == [id(p) for p in model.parameters()]
    x = _x(4, 3)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for mode in (True, False):  # one optimizer step in each mode; both graphs see both steps
        net.train(mode)
        net(x).square().sum().backward()
        opt.step()
        opt.zero_grad()
    for mode in (True, False):
        _check_matches(model.train(mode), net.train(mode), x, f"after steps, mode {mode}")


def test_a_tape_is_reversed_by_the_graph_that_recorded_it():
    torch.manual_seed(0)
    model = _Net().double().train()
    net = revnet.convert(model)
    x = _x(3, 3)
    y, tape = net.trace(x)
    v = torch.randn(y.shape, dtype=F64)
    net.eval()
    assert_vjp_close(net.reverse(v, tape), autograd_vjp(model, x, v), "train tape reversed after eval()")


def test_a_traced_through_submodule_in_another_mode_is_refused():
    net = revnet.convert(_Net().double().train())
    net.block.eval()
    with pytest.raises(revnet.UnsupportedLayerError, match=r"'block' is in eval mode.*net\.train\(\) or net\.eval\(\)"):
        net.trace(_x(2, 3))


# -- 3. parts swapped on the model after conversion ----------------------------------------------------------


class _WithBn(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.bn, self.fc2 = nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)

    def forward(self, x):
        return self.fc2(F.relu(self.bn(self.fc1(x))))


def _bn_model():
    torch.manual_seed(0)
    model = _WithBn().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.2, 0.2)
        model.bn.running_var.uniform_(0.5, 1.5)
    return model


SWAPS = [
    ("submodule", lambda m: setattr(m, "fc2", nn.Linear(4, 2)), r"submodule 'fc2'"),
    ("parameter", lambda m: setattr(m.fc2, "weight", nn.Parameter(torch.zeros(2, 4))), r"parameter 'fc2\.weight'"),
    ("buffer", lambda m: setattr(m.bn, "running_mean", torch.zeros(4)), r"buffer 'bn\.running_mean'"),
    ("model.double()", lambda m: m.double(), r"buffer 'bn\.running_mean'.*\.to\(\)"),
]


@pytest.mark.parametrize("name,swap,message", SWAPS, ids=[s[0] for s in SWAPS])
def test_a_part_swapped_on_the_model_after_conversion_is_refused(name, swap, message):
    model = _bn_model()
    net = revnet.convert(model)
    net.trace(torch.randn(2, 3))
    swap(model)
    x = torch.randn(2, 3, dtype=next(model.parameters()).dtype)
    for run in (net.trace, net):
        with pytest.raises(revnet.UnsupportedLayerError, match=r"_WithBn: the model changed after conversion: its "
                                                             + message) as err:
            run(x)
        assert _one_line(err).endswith("call revnet.convert(model) again.")


def test_load_state_dict_and_optimizer_steps_keep_working():
    model = _bn_model().double()
    net = revnet.convert(model)
    x = _x(4, 3)
    other = _bn_model().double()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1.0)
        other.bn.running_var.add_(0.5)
    model.load_state_dict(other.state_dict())  # copies into the same tensors
    _check_matches(other, net, x, "after model.load_state_dict")
    net.load_state_dict(_bn_model().double().state_dict())
    _check_matches(model, net, x, "after net.load_state_dict")
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    net(x).square().sum().backward()
    opt.step()
    _check_matches(model, net, x, "after an optimizer step")


def test_double_keeps_parameter_objects_and_is_not_refused():
    model = _bn_model()
    reference = copy.deepcopy(model).double()
    net = revnet.convert(model).double()  # replaces the converted network's buffers, keeps the parameters
    assert [id(p) for p in net.parameters()] == [id(p) for p in model.parameters()]
    _check_matches(reference, net, _x(4, 3), "after net.double()")
    plain = _Net().eval()  # no buffers: .double() on the model itself keeps every tensor object
    net = revnet.convert(plain)
    plain.double()
    _check_matches(plain, net, _x(4, 3), "after model.double()")


# -- 4. TorchScript and optional forward arguments -----------------------------------------------------------


@pytest.mark.filterwarnings("ignore:.*is deprecated:FutureWarning")
def test_torchscript_is_refused_in_one_line():
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
    with pytest.raises(revnet.UnsupportedLayerError,
                       match=r"cannot convert a TorchScript module.*convert the nn\.Module before scripting it") as err:
        revnet.convert(torch.jit.script(model))
    _one_line(err)
    outer = _Net().eval()
    outer.block = torch.jit.script(_Block().eval())
    with pytest.raises(revnet.UnsupportedLayerError, match=r"'block' is a TorchScript module") as err:
        revnet.convert(outer)
    _one_line(err)


class _Masked(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x, mask=None, *, scale: float = 2.0):
        if mask is not None:
            x = x * mask
        return self.fc(x * scale)


def test_optional_forward_arguments_are_traced_at_their_defaults():
    torch.manual_seed(0)
    model = _Masked().double()
    net = revnet.convert(model)
    _check_matches(model, net, _x(4, 3), "forward(x, mask=None, *, scale=2.0)")


# -- 5. refusals inside torchvision name a torchvision source line -------------------------------------------


@pytest.mark.parametrize("name,target,what", [("resnet18", torch.flatten, "torch.flatten"),
                                              ("mobilenet_v2", torch.nn.functional.adaptive_avg_pool2d,
                                               "adaptive_avg_pool2d")])
def test_refusal_inside_torchvision_names_its_source_line(name, target, what, monkeypatch):
    """An op without a rule (here one whose rule is taken away for the test, so the test does not depend on
    what revnet supports) inside a torchvision model is named with torchvision's source line."""
    monkeypatch.delitem(revnet.registry.FUNCTIONS, target)
    model = getattr(torchvision.models, name)(num_classes=10).eval()
    with pytest.raises(revnet.UnsupportedLayerError, match=rf"{what}") as err:
        revnet.convert(model)
    assert "torchvision" in _one_line(err) and ".py:" in str(err.value)
    assert re.search(r"\(at [^ ]*torchvision[/\\]models[/\\]\w+\.py:\d+: ", str(err.value)), str(err.value)
