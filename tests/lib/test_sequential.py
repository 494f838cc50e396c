"""revnet.Sequential: random stacks against autograd (first and second order), the class axis, conversion,
parameter sharing, nesting, the reverse network, and the tape discipline (nothing stored on modules)."""

from __future__ import annotations

from collections import OrderedDict

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given
from torch import nn

import revnet
from helpers import assert_vjp_close, autograd_vjp, plain_copy

F64 = torch.float64


def _randomize_bn(bn: nn.Module, gen: torch.Generator) -> None:
    c = bn.num_features
    bn.running_mean.copy_(torch.randn(c, generator=gen, dtype=F64))
    bn.running_var.copy_(torch.rand(c, generator=gen, dtype=F64) + 0.5)
    if bn.affine:
        bn.weight.data.copy_(torch.randn(c, generator=gen, dtype=F64))
        bn.bias.data.copy_(torch.randn(c, generator=gen, dtype=F64))


@st.composite
def image_stacks(draw):
    """A random conv stack for (N, C, H, W) inputs ending in linear logits: (net, x)."""
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # layer initialisation
    x = torch.randn(
        draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(6, 11)), draw(st.integers(6, 11)),
        generator=gen, dtype=F64,
    )
    layers: list[nn.Module] = []

    def current_shape():
        with torch.no_grad():
            return nn.Sequential(*layers).double().eval()(x).shape[1:]

    for _ in range(draw(st.integers(1, 2))):
        c, h, w = current_shape()
        k = draw(st.integers(1, min(3, h, w)))
        pad = draw(st.integers(0, k // 2))
        out_c = draw(st.integers(1, 4))
        layers.append(nn.Conv2d(c, out_c, k, stride=draw(st.integers(1, 2)), padding=pad, bias=draw(st.booleans())))
        if draw(st.booleans()):
            layers.append(nn.BatchNorm2d(out_c, affine=draw(st.booleans())))
        act = draw(st.sampled_from(["relu", "leaky", "prelu", "none"]))
        if act == "relu":
            layers.append(nn.ReLU())
        elif act == "leaky":
            layers.append(nn.LeakyReLU(draw(st.floats(0.01, 0.5))))
        elif act == "prelu":
            layers.append(nn.PReLU(draw(st.sampled_from([1, out_c]))))
        _, h, w = current_shape()
        pool = draw(st.sampled_from(["max", "avg", "adaptive", "none"]))
        if min(h, w) >= 2 and pool == "max":
            layers.append(nn.MaxPool2d(2, stride=draw(st.integers(1, 2)), ceil_mode=draw(st.booleans())))
        elif min(h, w) >= 2 and pool == "avg":
            layers.append(nn.AvgPool2d(2, stride=draw(st.integers(1, 2)), ceil_mode=draw(st.booleans())))
        elif pool == "adaptive":
            layers.append(nn.AdaptiveAvgPool2d((draw(st.integers(1, h)), draw(st.integers(1, w)))))
    layers.append(nn.Flatten())
    hidden, classes = draw(st.integers(2, 6)), draw(st.integers(2, 5))
    layers += [nn.Linear(current_shape()[0], hidden), nn.ReLU(), nn.Linear(hidden, classes)]
    net = revnet.Sequential(*layers).double()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            _randomize_bn(m, gen)
    return net.eval(), x


def _class_eye(y: torch.Tensor) -> torch.Tensor:
    n, k = y.shape
    return torch.eye(k, dtype=y.dtype).expand(n, k, k)


@given(image_stacks())
def test_stack_reverse_matches_autograd_for_every_class(case):
    net, x = case
    ref = plain_copy(net)
    y, tape = net.trace(x)
    torch.testing.assert_close(y, ref(x), rtol=0, atol=0)
    v = _class_eye(y)
    assert_vjp_close(net.reverse(v, tape), autograd_vjp(ref, x, v), f"{net}")


@given(image_stacks(), st.integers(0, 2**31 - 1))
def test_class_axis_equals_separate_reverses(case, seed):
    net, x = case
    y, tape = net.trace(x)
    k = 3
    v = torch.randn(len(x), k, *y.shape[1:], generator=torch.Generator().manual_seed(seed), dtype=F64)
    batched = net.reverse(v, tape)
    assert batched.shape == (len(x), k, *x.shape[1:])
    for i in range(k):
        assert_vjp_close(batched[:, i], net.reverse(v[:, i], tape), f"class {i}")


def _param_grads(module: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter's gradient; a parameter the loss does not reach counts as a zero gradient (autograd's
    double backward reaches biases through ReLU's mask with an exact zero, the explicit reverse not at all)."""
    return {
        name: p.grad.clone() if p.grad is not None else torch.zeros_like(p) for name, p in module.named_parameters()
    }


def _assert_same_param_grads(net: nn.Module, ref: nn.Module, context: str) -> None:
    ours, theirs = _param_grads(net), _param_grads(ref)
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert_vjp_close(ours[name], theirs[name], f"{context}: d/d {name}")


@given(image_stacks(), st.integers(0, 2**31 - 1))
def test_second_order_loss_on_reverse_matches_double_backprop(case, seed):
    net, x = case
    ref = plain_copy(net)
    gen = torch.Generator().manual_seed(seed)
    y, tape = net.trace(x)
    v = torch.randn(len(x), 2, *y.shape[1:], generator=gen, dtype=F64)
    weight = torch.randn(len(x), 2, *x.shape[1:], generator=gen, dtype=F64)

    (weight * net.reverse(v, tape)).square().sum().backward()

    xr = x.clone().requires_grad_(True)
    yr = ref(xr)
    grads = torch.stack(
        [torch.autograd.grad(yr, xr, v[:, i], create_graph=True)[0] for i in range(v.shape[1])], 1
    )
    (weight * grads).square().sum().backward()
    _assert_same_param_grads(net, ref, str(net))


def _deepfool_like(logits: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """Σ_n Σ_{k≠l} |f_k − f_l| / ‖w_k − w_l‖ with l the predicted class: uses forward and reverse together."""
    n, k = logits.shape
    label = logits.argmax(1)
    f = logits - logits.gather(1, label[:, None])
    w = (grads - grads[torch.arange(n), label].unsqueeze(1)).flatten(2)
    dist = f.abs() / (w.norm(dim=2) + 1e-6)
    others = torch.ones_like(dist, dtype=torch.bool).scatter(1, label[:, None], False)
    return dist[others].sum()


@given(image_stacks())
def test_second_order_deepfool_like_expression_matches_double_backprop(case):
    net, x = case
    ref = plain_copy(net)
    y, tape = net.trace(x)
    _deepfool_like(y, net.reverse(_class_eye(y), tape)).backward()

    xr = x.clone().requires_grad_(True)
    yr = ref(xr)
    grads = torch.stack(
        [torch.autograd.grad(yr[:, i].sum(), xr, create_graph=True)[0] for i in range(yr.shape[1])], 1
    )
    _deepfool_like(yr, grads).backward()
    _assert_same_param_grads(net, ref, str(net))


def test_second_order_reaches_every_weight_of_a_lenet_like_net():
    torch.manual_seed(0)
    net = revnet.Sequential(
        nn.Conv2d(1, 4, 3), nn.MaxPool2d(2), nn.Conv2d(4, 6, 3), nn.PReLU(6), nn.Flatten(), nn.Linear(24, 8),
        nn.ReLU(), nn.Linear(8, 3),
    ).double()
    ref = plain_copy(net)
    x = torch.randn(4, 1, 10, 10, dtype=F64)
    y, tape = net.trace(x)
    _deepfool_like(y, net.reverse(_class_eye(y), tape)).backward()
    xr = x.clone().requires_grad_(True)
    yr = ref(xr)
    grads = torch.stack([torch.autograd.grad(yr[:, i].sum(), xr, create_graph=True)[0] for i in range(3)], 1)
    _deepfool_like(yr, grads).backward()
    _assert_same_param_grads(net, ref, "lenet-like")
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name} got no second-order gradient"


def test_mlp_stack_with_bn1d_dropout_and_float32():
    torch.manual_seed(0)
    net = revnet.Sequential(
        nn.Flatten(), nn.Linear(12, 8), nn.BatchNorm1d(8), nn.LeakyReLU(0.1), nn.Dropout(0.3), nn.Linear(8, 3)
    ).eval()
    x = torch.randn(5, 3, 4)
    y, tape = net.trace(x)
    assert y.dtype == torch.float32
    v = _class_eye(y)
    g = net.reverse(v, tape)
    assert g.dtype == torch.float32 and g.shape == (5, 3, 3, 4)
    torch.testing.assert_close(g, autograd_vjp(plain_copy(net), x, v), rtol=1e-5, atol=1e-6)  # float32


def test_dropout_in_training_mode_uses_the_traced_mask():
    torch.manual_seed(0)
    net = revnet.Sequential(nn.Linear(6, 6), nn.Dropout(0.5), nn.Linear(6, 2)).double().train()
    x = torch.randn(4, 6, dtype=F64, requires_grad=True)
    y, tape = net.trace(x)
    v = _class_eye(y)
    expected = torch.stack([torch.autograd.grad(y[:, k].sum(), x, retain_graph=True)[0] for k in range(2)], 1)
    assert_vjp_close(net.reverse(v, tape), expected, "dropout train")


def test_nested_sequential_reverses_through_the_inner_network():
    torch.manual_seed(0)
    inner = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU())
    net = revnet.Sequential(inner, nn.MaxPool2d(2), nn.Flatten(), nn.Linear(3 * 3 * 3, 4)).double()
    assert isinstance(net[0], revnet.Sequential)
    x = torch.randn(2, 2, 6, 6, dtype=F64)
    y, tape = net.trace(x)
    v = _class_eye(y)
    assert_vjp_close(net.reverse(v, tape), autograd_vjp(plain_copy(net), x, v), "nested")
    assert "ConvTranspose2d" in repr(net.reversed())


def test_conversion_shares_parameters_and_state_dict_keys():
    plain = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    net = revnet.Sequential(*plain)
    assert net[0].weight is plain[0].weight and net[4].bias is plain[4].bias
    assert net[1].running_var is plain[1].running_var
    assert isinstance(net[0], revnet.Conv2d) and isinstance(net[0], nn.Conv2d)
    assert list(net.state_dict()) == list(plain.state_dict())

    fresh = revnet.Sequential(
        revnet.Conv2d(1, 2, 3), revnet.BatchNorm2d(2), revnet.ReLU(), revnet.Flatten(), revnet.Linear(32, 3)
    )
    fresh.load_state_dict(plain.state_dict())
    x = torch.randn(2, 1, 6, 6)
    torch.testing.assert_close(fresh.eval()(x), plain.eval()(x))

    converted = revnet.Sequential.from_torch(nn.Sequential(OrderedDict(body=plain, head=nn.Identity())))
    assert isinstance(converted.body, revnet.Sequential) and converted.body[0].weight is plain[0].weight


def test_append_insert_and_setitem_convert_too():
    net = revnet.Sequential(nn.Linear(3, 3))
    net.append(nn.ReLU())
    net.insert(0, nn.Identity())
    net[2] = nn.LeakyReLU()
    assert [type(m) for m in net] == [revnet.Identity, revnet.Linear, revnet.LeakyReLU]


def test_reversed_network_prints_reverse_layers_and_shares_parameters():
    torch.manual_seed(0)
    net = revnet.Sequential(nn.Conv2d(1, 2, 3), nn.PReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8, 3))
    rev = net.reversed()
    text = repr(rev)
    for label in ["TransposedLinear", "Unflatten", "MaxUnpool2d", "PReLUMask", "ConvTranspose2d"]:
        assert label in text
    assert text.index("(4): TransposedLinear") < text.index("(0): ConvTranspose2d")  # reverse order
    assert {id(p) for p in rev.parameters()} == {id(p) for p in net.parameters()}
    x = torch.randn(2, 1, 6, 6)
    y, tape = net.trace(x)
    v = torch.randn(2, 3, 3)
    torch.testing.assert_close(rev(v, tape), net.reverse(v, tape), rtol=0, atol=0)


def test_trace_stores_nothing_on_modules_and_tapes_are_independent():
    torch.manual_seed(0)
    net = revnet.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8, 3)).double()
    ref = plain_copy(net)
    before = [sorted(m.__dict__) for m in net.modules()]
    x1, x2 = torch.randn(2, 1, 6, 6, dtype=F64), torch.randn(3, 1, 6, 6, dtype=F64)
    y1, tape1 = net.trace(x1)
    y2, tape2 = net.trace(x2)
    assert [sorted(m.__dict__) for m in net.modules()] == before
    for x, y, tape in [(x1, y1, tape1), (x2, y2, tape2)]:
        v = _class_eye(y)
        assert_vjp_close(net.reverse(v, tape), autograd_vjp(ref, x, v), "independent tapes")


def test_reverse_is_pure_and_works_without_grad():
    torch.manual_seed(0)
    net = revnet.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2)).double()
    x = torch.randn(3, 4, dtype=F64)
    y, tape = net.trace(x)
    v = torch.randn(3, 2, 2, dtype=F64)
    v_before = v.clone()
    mask_before = tape.entries[1].positive.clone()
    with torch.no_grad():
        first = net.reverse(v, tape)
    second = net.reverse(v, tape)
    assert not first.requires_grad
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    assert torch.equal(v, v_before) and torch.equal(tape.entries[1].positive, mask_before)
    assert net(x).shape == y.shape and torch.equal(net(x), y)


def test_register_a_user_activation_as_in_the_readme():
    class Square(nn.Module):
        def forward(self, x):
            return x * x

    class ReversibleSquare(Square):
        reverse_label = "TimesTwoX"

        def trace(self, x):
            return x * x, (x,)

        def reverse(self, v, tape):
            (x,) = tape
            return (v.reshape(len(x), -1, *x.shape[1:]) * 2 * x.unsqueeze(1)).reshape(v.shape)

    assert isinstance(revnet.Sequential(Square())[0], revnet.Graph)  # unregistered: traced (x * x has a rule)
    revnet.register(Square, ReversibleSquare)
    torch.manual_seed(0)
    net = revnet.Sequential(nn.Linear(4, 3), Square(), nn.Linear(3, 2)).double()
    assert isinstance(net[1], ReversibleSquare) and "TimesTwoX" in repr(net.reversed())
    x = torch.randn(5, 4, dtype=F64)
    y, tape = net.trace(x)
    v = _class_eye(y)
    expected = autograd_vjp(lambda t: net[2](net[1](net[0](t))), x, v)
    assert_vjp_close(net.reverse(v, tape), expected, "registered Square")


def test_readme_example_is_the_quickstart_script():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    readme = (root / "README.md").read_text()
    script = (root / "examples" / "quickstart.py").read_text()
    assert f"```python\n{script}```" in readme


@pytest.mark.parametrize("train_mode", [False, True], ids=["eval", "dropout-train"])
def test_second_order_through_shape_dropout_identity_and_bn1d(train_mode):
    """Second order through the parameter-free layers the image stacks do not draw (Dropout with the traced
    mask, Identity, Unflatten, Flatten) and BatchNorm1d, against double backprop of the traced forward."""
    torch.manual_seed(0)
    net = revnet.Sequential(
        nn.Flatten(), nn.Linear(12, 8), nn.BatchNorm1d(8), nn.Identity(), nn.LeakyReLU(0.2), nn.Dropout(0.4),
        nn.Unflatten(1, (2, 4)), nn.Flatten(), nn.Linear(8, 3),
    ).double()
    gen = torch.Generator().manual_seed(1)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm1d):
            _randomize_bn(m, gen)
    net.eval()
    net[5].train(train_mode)  # Dropout only: BatchNorm stays frozen
    x = torch.randn(5, 3, 4, dtype=F64, generator=gen, requires_grad=True)
    y, tape = net.trace(x)
    v = torch.randn(5, 2, 3, dtype=F64, generator=gen)
    weight = torch.randn(5, 2, 3, 4, dtype=F64, generator=gen)

    g_ours = net.reverse(v, tape)
    g_ref = torch.stack([torch.autograd.grad(y, x, v[:, i], create_graph=True, retain_graph=True)[0] for i in range(2)], 1)
    assert_vjp_close(g_ours, g_ref, "first order")
    params = list(net.parameters())
    ours = torch.autograd.grad((weight * g_ours).square().sum(), params, allow_unused=True)
    theirs = torch.autograd.grad((weight * g_ref).square().sum(), params, allow_unused=True)
    for (name, p), a, e in zip(net.named_parameters(), ours, theirs):
        a = torch.zeros_like(p) if a is None else a
        e = torch.zeros_like(p) if e is None else e
        assert_vjp_close(a, e, f"d/d {name}")
    assert ours[0].abs().sum() > 0 and ours[-2].abs().sum() > 0


def test_the_printed_reverse_names_what_the_reverse_maps():
    net = revnet.Sequential(revnet.Conv2d(1, 8, 3, padding=1, groups=1), revnet.ReLU(), revnet.Flatten(),
                            revnet.Linear(8 * 4 * 4, 10))
    text = repr(net.reversed())
    assert "TransposedLinear(in_features=10, out_features=128)" in text
    assert "ConvTranspose2d(8, 1, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))" in text
    assert "bias" not in text


def test_torch_compile_of_the_reverse_with_automatic_dynamic_shapes_equals_eager():
    """``torch.compile`` (inductor, automatic dynamic shapes, as variant 1c of ``benchmarks/step.py`` uses it) of a
    network's ``reverse_differences`` through a transposed convolution, a max unpooling, a flatten and a ReLU
    mask: it compiles for the first batch, once more with a symbolic batch when the batch shrinks (as DeepFool's
    early stopping shrinks it), and every result equals the eager reverse. ``dynamic=True`` is not what this
    checks: it makes the tape's spatial sizes symbolic too, which inductor (torch 2.14) fails to order on LeNet.
    Time budget: two inductor compiles, about 20 s on the 2-core CPU with a cold cache."""
    torch.manual_seed(0)
    net = revnet.Sequential(nn.Conv2d(1, 3, 3), nn.MaxPool2d(2), nn.Flatten(), nn.ReLU(), nn.Linear(3 * 6 * 6, 5))
    reverse = torch.compile(net.reverse_differences)
    x = torch.randn(12, 1, 14, 14)
    toward, away = torch.randint(0, 5, (12, 4)), torch.randint(0, 5, (12,))
    for n in (12, 7, 5):
        y, tape = net.trace(x[:n])
        with torch.no_grad():  # the inference graph only: a joint forward-backward graph doubles the compile
            g = reverse(toward[:n], away[:n], tape)
        torch.testing.assert_close(g, net.reverse_differences(toward[:n], away[:n], tape))
        assert g.shape == (n, 4, 1, 14, 14)
