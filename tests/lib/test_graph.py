"""revnet.convert / revnet.Graph against autograd in float64: torchvision models, hand-made graphs (a module
called twice, torch.cat, every smooth activation, the functional ops), hypothesis-drawn random DAGs, DeepFool
and the Deep Defense loss on a converted ResNet-18, and the conversion errors.

Time budget: about 20 s on a 2-core CPU (the six torchvision models dominate; inputs are 32-64 px, batch 2;
AlexNet's and VGG's classifiers 64 units wide instead of 4096).
"""

from __future__ import annotations

import operator

import hypothesis.strategies as st
import pytest
import torch
import torch.nn.functional as F
import torchvision
from hypothesis import given
from torch import nn

import revnet
from autograd_reference import reference_deep_defense_loss, reference_deepfool
from helpers import assert_vjp_close, check_graph_against_autograd

F64 = torch.float64


def _randomize_bn(model: nn.Module, gen: torch.Generator) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            c = m.num_features
            m.running_mean.copy_(0.1 * torch.randn(c, generator=gen, dtype=F64))
            m.running_var.copy_(torch.rand(c, generator=gen, dtype=F64) + 0.5)
            m.weight.data.copy_(1 + 0.2 * torch.randn(c, generator=gen, dtype=F64))
            m.bias.data.copy_(0.1 * torch.randn(c, generator=gen, dtype=F64))


def _slim_classifier(model: nn.Module, width: int = 64) -> None:
    """AlexNet's and VGG's classifier (Dropout, Linear 4096, ReLU, ..., Linear) at ``width`` hidden units: the
    same layer types in the same order, a thousandth of the float64 parameters (their 4096-wide layers made
    double backprop take most of this file's time)."""
    if not isinstance(getattr(model, "classifier", None), nn.Sequential):
        return
    linears = [i for i, m in enumerate(model.classifier) if isinstance(m, nn.Linear)]
    for i in linears:
        old = model.classifier[i]
        out = old.out_features if i == linears[-1] else width
        model.classifier[i] = nn.Linear(old.in_features if i == linears[0] else width, out).double()


def _check_first_and_second_order(model: nn.Module, x: torch.Tensor, k: int = 3, seed: int = 0) -> None:
    """The reverse of K cotangents equals autograd's VJPs of the plain model; the gradient of a loss on the
    reverse w.r.t. every parameter (and x) equals double backprop (``helpers.check_graph_against_autograd``)."""
    check_graph_against_autograd(model, x, k, seed, forward_rtol=1e-12)


TORCHVISION = [
    ("alexnet", 64),
    ("resnet18", 32),
    ("resnet34", 32),
    ("vgg11_bn", 32),
    ("squeezenet1_1", 64),
    ("mobilenet_v2", 32),
]


@pytest.mark.parametrize("name,size", TORCHVISION, ids=[f"{n}-{s}px" for n, s in TORCHVISION])
def test_torchvision_model_matches_autograd(name, size):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    model = getattr(torchvision.models, name)(num_classes=10).double().eval()
    _slim_classifier(model)
    _randomize_bn(model, gen)
    x = torch.randn(2, 3, size, size, generator=gen, dtype=F64)
    _check_first_and_second_order(model, x)


class CalledTwice(nn.Module):
    """One ReLU and one conv module used twice, a residual add written as +=, flatten in Python code."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(3 * 4 * 4, 5)

    def forward(self, x):
        out = self.relu(self.conv(x))
        out = self.conv(out)
        out += x
        out = self.relu(out)
        out = F.max_pool2d(out, 2)
        return self.fc(torch.flatten(out, 1))


class Concat(nn.Module):
    """Two branches joined by torch.cat, one branch shared with a residual add; view(size(0), -1)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(2, 3, 1)
        self.b = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.fc = nn.Linear(7 * 3 * 3, 4)

    def forward(self, x):
        a = self.a(x)
        y = torch.cat([a, self.b(x)], dim=1)
        y = y + torch.cat((a, a, a[:, :1]), 1) * 0.5
        y = F.avg_pool2d(y, 2, ceil_mode=True)
        return self.fc(y.view(y.size(0), -1))


class Smooth(nn.Module):
    """Every smooth activation as a module and as a function, plus clamps, products and reductions."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 8)
        self.mods = nn.ModuleList([nn.Sigmoid(), nn.Tanh(), nn.GELU(), nn.GELU(approximate="tanh"), nn.SiLU(),
                                   nn.ELU(alpha=0.7), nn.Softplus(beta=2.0, threshold=3.0), nn.ReLU6(),
                                   nn.Hardtanh(-0.5, 0.5)])
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x):
        h = self.fc1(x)
        out = h * 0
        for m in self.mods:
            out = out + m(h)
        out = out + torch.sigmoid(h) + h.sigmoid() + torch.tanh(h) + F.gelu(h) + F.gelu(h, approximate="tanh")
        out = out + F.silu(h) + F.elu(h, 0.3) + F.softplus(h, 1.5) + F.relu6(h) + F.hardtanh(h) + F.leaky_relu(h, 0.2)
        out = out + h * torch.sigmoid(h) - h / 3 + 2 * h
        return self.fc2(out)


class Pooled(nn.Module):
    """Functional pools, a spatial mean, division by a constant and a product of two traced tensors."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        h = F.relu(self.conv(x))
        h = F.max_pool2d(h, 3, stride=2, padding=1)
        gate = F.adaptive_avg_pool2d(h, 1).sigmoid()
        h = h * gate / 1.5
        return self.fc(h.mean((2, 3)))


class Misc(nn.Module):
    """The remaining rules: sum over dims, torch.add with alpha, reshape/squeeze/unsqueeze/contiguous,
    Ellipsis indexing, torch.mul/torch.div by a constant buffer."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.register_buffer("scale", torch.linspace(0.5, 2.0, 3).reshape(3, 1, 1))
        self.fc = nn.Linear(3 * 6 + 3, 4)

    def forward(self, x):
        h = torch.tanh(self.conv(x))
        h = torch.add(h, torch.mul(h, self.scale), alpha=0.5)
        h = torch.div(h, self.scale).contiguous()
        pooled = h[..., ::2].sum((2, 3))  # (N, 3)
        rows = torch.reshape(h[:, :, 1], (h.shape[0], -1)).unsqueeze(1).squeeze(1)  # (N, 3·6)
        return self.fc(torch.cat([rows, pooled], 1))


HANDMADE = [
    ("called-twice", CalledTwice, (2, 3, 8, 8)),
    ("concat", Concat, (2, 2, 6, 6)),
    ("smooth", Smooth, (3, 6)),
    ("pooled", Pooled, (2, 2, 9, 9)),
    ("misc", Misc, (2, 2, 6, 6)),
]


@pytest.mark.parametrize("name,cls,shape", HANDMADE, ids=[h[0] for h in HANDMADE])
def test_handmade_graph_matches_autograd(name, cls, shape):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(2)
    model = cls().double().eval()
    _randomize_bn(model, gen)
    _check_first_and_second_order(model, torch.randn(*shape, generator=gen, dtype=F64))


def test_module_called_twice_has_one_tape_entry_per_call():
    net = revnet.convert(CalledTwice().double())
    _, tape = net.trace(torch.randn(2, 3, 8, 8, dtype=F64))
    module_nodes = [s.node.target for s in net._steps if s.kind == "module"]
    assert module_nodes.count("relu") == 2 and module_nodes.count("conv") == 2
    assert len(tape.entries) == len(list(net.graph.nodes))


class _Dag(nn.Module):
    """A DAG given as data: ``ops[i]`` makes value ``i + 1`` from earlier values (value 0 is the input)."""

    def __init__(self, ops, mods, head):
        super().__init__()
        self.ops, self.mods, self.head = ops, nn.ModuleList(mods), head

    def forward(self, x):
        values = [x]
        for op in self.ops:
            kind, args = op[0], op[1:]
            if kind == "module":
                values.append(self.mods[args[0]](values[args[1]]))
            elif kind == "add":
                values.append(values[args[0]] + values[args[1]])
            elif kind == "cat":
                values.append(torch.cat([values[args[0]], values[args[1]]], 1))
            elif kind == "scale":
                values.append(values[args[0]] * args[1])
        return self.head(torch.flatten(F.adaptive_avg_pool2d(values[-1], 2), 1))


@st.composite
def random_dags(draw):
    """Random DAGs over (C, H, W) values: convs (some reused), eval-mode BN, ReLU, pools, adds and cats."""
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    c0, size = draw(st.integers(1, 3)), draw(st.integers(4, 8))
    shapes = [(c0, size, size)]
    ops, mods = [], []
    for _ in range(draw(st.integers(2, 7))):
        i = draw(st.integers(0, len(shapes) - 1))
        c, h, w = shapes[i]
        kind = draw(st.sampled_from(["conv", "reuse", "bn", "relu", "pool", "add", "cat", "scale"]))
        same = [j for j, s in enumerate(shapes) if s == shapes[i]]
        same_hw = [j for j, s in enumerate(shapes) if s[1:] == (h, w)]
        reusable = [m for m, mod in enumerate(mods) if isinstance(mod, nn.Conv2d) and mod.in_channels == c
                    and mod.out_channels == c]
        if kind == "conv" or (kind == "reuse" and not reusable):
            out_c = draw(st.integers(1, 4)) if kind == "conv" else c
            mods.append(nn.Conv2d(c, out_c, 3, padding=1, bias=draw(st.booleans())))
            ops.append(("module", len(mods) - 1, i))
            shapes.append((out_c, h, w))
        elif kind == "reuse":
            ops.append(("module", draw(st.sampled_from(reusable)), i))
            shapes.append((c, h, w))
        elif kind == "bn":
            mods.append(nn.BatchNorm2d(c))
            ops.append(("module", len(mods) - 1, i))
            shapes.append((c, h, w))
        elif kind == "relu":
            mods.append(nn.ReLU(inplace=False))
            ops.append(("module", len(mods) - 1, i))
            shapes.append((c, h, w))
        elif kind == "pool" and min(h, w) >= 2:
            mods.append(draw(st.sampled_from([nn.MaxPool2d(2), nn.AvgPool2d(2, ceil_mode=True)])))
            ops.append(("module", len(mods) - 1, i))
            shapes.append(tuple(int(s) for s in mods[-1](torch.zeros(1, *shapes[i])).shape[1:]))
        elif kind == "add":
            ops.append(("add", i, draw(st.sampled_from(same))))
            shapes.append((c, h, w))
        elif kind == "cat":
            j = draw(st.sampled_from(same_hw))
            ops.append(("cat", i, j))
            shapes.append((c + shapes[j][0], h, w))
        else:
            ops.append(("scale", i, draw(st.sampled_from([0.5, -2.0, 3.0]))))
            shapes.append((c, h, w))
    head = nn.Linear(shapes[-1][0] * 4, draw(st.integers(2, 4)))
    model = _Dag(ops, mods, head).double().eval()
    _randomize_bn(model, gen)
    x = torch.randn(draw(st.integers(1, 3)), *shapes[0], generator=gen, dtype=F64)
    return model, x, seed


@given(random_dags())
def test_random_dag_matches_autograd(case):
    model, x, seed = case
    _check_first_and_second_order(model, x, k=2, seed=seed)


# -- DeepFool and the loss on a converted ResNet-18 ---------------------------------------------------------


def _small_resnet():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=4).double().eval()
    _randomize_bn(model, torch.Generator().manual_seed(3))
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(4), dtype=F64)
    return model, x


def test_deepfool_on_resnet18_matches_autograd_reference():
    model, x = _small_resnet()
    net = revnet.convert(model)
    ours, info = revnet.deepfool(net, x, max_iter=6)
    theirs, ref = reference_deepfool(model, x, max_iter=6)
    assert_vjp_close(ours, theirs, "resnet18 deepfool")
    assert torch.equal(info.iterations, ref["iterations"]) and torch.equal(info.success, ref["success"])


def test_deep_defense_loss_on_resnet18_matches_autograd_reference():
    model, x = _small_resnet()
    net = revnet.convert(model)
    with torch.no_grad():
        pred = model(x).argmax(1)
    y = pred.clone()
    y[:2] = (pred[:2] + 1) % 4  # two misclassified samples: targeted DeepFool towards y
    loss, info = revnet.deep_defense_loss(net, x, y, max_iter=3)
    ref_loss, ref = reference_deep_defense_loss(model, x, y, max_iter=3)
    assert info.correct.tolist() == [False, False, True, True]
    assert_vjp_close(loss, ref_loss, "loss")
    params = list(model.parameters())
    for (name, _), a, b in zip(model.named_parameters(), torch.autograd.grad(loss, params),
                               torch.autograd.grad(ref_loss, params)):
        assert_vjp_close(a, b, f"d loss / d {name}")


def test_reg_layers_take_dotted_module_names():
    model, x = _small_resnet()
    net = revnet.convert(model)
    y = torch.zeros(4, dtype=torch.long)
    loss, _ = revnet.deep_defense_loss(net, x, y, max_iter=2, reg_layers=["layer1.0.conv1"], ce_weight=0.0)
    grads = dict(zip([n for n, _ in net.named_parameters()],
                     torch.autograd.grad(loss, list(net.parameters()), allow_unused=True)))
    reached = {n for n, g in grads.items() if g is not None and g.abs().max() > 0}
    assert reached == {"layer1.0.conv1.weight"}
    with pytest.raises(ValueError, match="not modules of the network"):
        revnet.deep_defense_loss(net, x, y, reg_layers=["layer9.conv"])


# -- conversion: sharing, pass-through, dropout masks, BatchNorm while fine-tuning ---------------------------


def test_convert_shares_parameters_and_keeps_state_dict_keys():
    model = torchvision.models.resnet18(num_classes=10)
    net = revnet.convert(model)
    assert isinstance(net, revnet.Graph)
    assert list(net.state_dict()) == list(model.state_dict())
    for (name, p), (_, q) in zip(model.named_parameters(), net.named_parameters()):
        assert p is q, name
    assert revnet.convert(net) is net
    seq = revnet.convert(nn.Sequential(nn.Linear(3, 2)))
    assert isinstance(seq, revnet.Sequential) and isinstance(revnet.convert(nn.ReLU()), revnet.ReLU)
    net.load_state_dict(model.state_dict())


class _Dropped(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.drop, self.fc2 = nn.Linear(5, 16), nn.Dropout(0.5), nn.Linear(16, 3)

    def forward(self, x):
        return self.fc2(self.drop(F.relu(self.fc1(x))))


def test_dropout_keeps_each_samples_mask_through_deepfool():
    torch.manual_seed(0)
    net = revnet.convert(_Dropped().double()).train()
    x = torch.randn(6, 5, dtype=F64)
    _, tape = net.trace(x)
    noise = revnet.noise_of(net, tape)
    assert set(noise) == {"drop"}
    whole, info = revnet.deepfool(net, x, max_iter=10, noise=noise)
    assert info.iterations.unique().numel() > 1  # samples left the batch at different steps
    for i in range(len(x)):  # each sample alone, with its own mask rows: the same perturbation
        alone, _ = revnet.deepfool(net, x[i:i + 1], max_iter=10, noise=revnet.select_noise(noise, torch.tensor([i])))
        torch.testing.assert_close(alone[0], whole[i], rtol=1e-12, atol=1e-12)


def test_batchnorm_network_fine_tunes_with_frozen_statistics():
    from revnet_app.train import engine, methods

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    net = revnet.convert(model)
    x, y = torch.randn(20, 1, 8, 8), torch.randint(0, 3, (20,))
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    bn = net[1]
    before = (bn.running_mean.clone(), bn.running_var.clone())
    for method in ("deepdefense", "clean", "advtrain-fgs"):
        gen = torch.Generator().manual_seed(0)
        engine.train_one_epoch(net, methods.build(method, max_iter=2), opt, engine.tensor_batches(x, y, 10, gen),
                               generator=gen, progress=engine.EpochProgress(bar=False))
    assert torch.equal(bn.running_mean, before[0]) and torch.equal(bn.running_var, before[1])
    gen = torch.Generator().manual_seed(0)
    engine.train_one_epoch(net, methods.build("clean"), opt, engine.tensor_batches(x, y, 10, gen), generator=gen,
                           progress=engine.EpochProgress(bar=False, freeze_bn=False))  # reference training: batch statistics
    assert not torch.equal(bn.running_mean, before[0])


# -- errors ------------------------------------------------------------------------------------------------


class _Exp(nn.Module):
    def forward(self, x):
        return torch.exp(x).flatten(1)


class _Branchy(nn.Module):
    def forward(self, x):
        if x.sum() > 0:
            return x
        return -x


class _Lstm(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(3, 3)

    def forward(self, x):
        return self.lstm(x)[0]


class _Overwrite(nn.Module):
    def forward(self, x):
        y = x * 2
        z = F.relu(y, inplace=True)
        return z + y


class _BatchMean(nn.Module):
    def forward(self, x):
        return x - x.mean(0, keepdim=True)


class _Reshuffle(nn.Module):
    def forward(self, x):
        return x.reshape(-1, 2)


class _TwoInputs(nn.Module):
    def forward(self, x, y):
        return x + y


class _Tuple(nn.Module):
    def forward(self, x):
        return x, x


ERRORS = [
    ("function", _Exp(), (2, 3), r"node 'exp' \(call_function torch.exp\) \(at .*test_graph.py:\d+: return torch.exp"
                                 r".*register_function"),
    ("control-flow", _Branchy(), (2, 3), r"torch.fx cannot trace _Branchy.forward at .*test_graph.py:\d+: if x.sum"),
    ("module", _Lstm(), (2, 3), r"node 'lstm' \(call_module lstm\).*calls LSTM, which has no reverse.*revnet.register"),
    ("in-place", _Overwrite(), (2, 3), r"overwrites 'mul' in place, which 'add' reads afterwards"),
    ("batch-mean", _BatchMean(), (2, 3), r"mean\(dim=0\) reduces the batch dimension"),
    ("batch-reshape", _Reshuffle(), (2, 4), r"returns \(4, 2\), which does not keep the batch dimension \(N = 2\)"),
    ("two-inputs", _TwoInputs(), (2, 3), r"more than one required input"),
    ("tuple-output", _Tuple(), (2, 3), r"must return one tensor"),
]


@pytest.mark.parametrize("name,model,shape,message", ERRORS, ids=[e[0] for e in ERRORS])
def test_unsupported_graphs_give_one_clear_line(name, model, shape, message):
    with pytest.raises(revnet.UnsupportedLayerError, match=message) as err:
        net = revnet.convert(model)
        net.trace(torch.randn(*shape))
    assert "\n" not in str(err.value)


def test_unsupported_torch_leaf_is_named():
    with pytest.raises(revnet.UnsupportedLayerError, match=r"Embedding has no reverse.*revnet.register\(Embedding"):
        revnet.convert(nn.Embedding(3, 2))


@pytest.mark.parametrize("kind", ["sequential", "graph"])
def test_reverse_refuses_ambiguous_rows(kind):
    model = nn.Sequential(nn.Linear(3, 4)) if kind == "sequential" else CalledTwice()
    net = revnet.convert(model).double()
    x = torch.randn(1, 3) if kind == "sequential" else torch.randn(1, 3, 8, 8)
    y, tape = net.trace(x.double())
    with pytest.raises(revnet.ReverseShapeError, match=r"takes v of shape \(N, \*out\)"):
        net.reverse(torch.ones(100, *y.shape[1:], dtype=F64), tape)  # 100 rows for a 1-sample tape
    assert net.reverse(torch.ones(1, 100, *y.shape[1:], dtype=F64), tape).shape == (1, 100, *x.shape[1:])


def test_register_function_adds_a_rule():
    class ExpRule:
        """exp(x): reverse v · exp(x)."""

        def inputs(self, args, kwargs):
            return [args[0]]

        def forward(self, call, args, kwargs):
            return call(*args, **kwargs)

        def trace(self, call, args, kwargs, live):
            y = call(*args, **kwargs)
            return y, y

        def reverse(self, v, tape):
            n = tape.shape[0]
            return [(v.reshape(n, -1, *tape.shape[1:]) * tape.unsqueeze(1)).reshape(v.shape)]

    revnet.register_function(torch.exp, ExpRule())
    try:
        _check_first_and_second_order(nn.Sequential(nn.Linear(3, 3), _Exp()).double(), torch.randn(2, 3, dtype=F64))
    finally:
        revnet.registry.FUNCTIONS.pop(torch.exp)
    assert operator.add in revnet.registry.FUNCTIONS


def test_readme_convert_example_runs():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    start = readme.index("import torch, torchvision, revnet\n")
    block = readme[start:readme.index("```", start)]
    assert "revnet.convert(model)" in block and "resnet18" in block
    exec(compile(block, "README.md", "exec"), {})
