"""Every revnet layer against torch.autograd, in float64.

* Coverage: every reversible layer class is in ``revnet.TORCH_COUNTERPARTS``, and every class in the table has
  a settings case (``tests/settings``) and a hypothesis test (``@covers`` below).
* ``test_reverse_matches_autograd`` (all settings cases): ``layer(x) == trace(x)[0] ==`` the torch counterpart's
  output; ``reverse(v) ==`` autograd's VJP of the counterpart; buffers (BatchNorm running statistics) change
  exactly as torch's after one ``trace``; and the contract (shape, dtype, device, ``no_grad``, purity).
* Class axis: ``reverse`` on ``N·K`` folded rows equals ``K`` separate reverses and autograd's class-axis VJP.
* Second order (layers with parameters): gradients of ``L = ((w ⊙ reverse(v))²).sum()`` w.r.t. every parameter
  equal double backprop through the counterpart.
* Hypothesis property tests per layer run the same checks on drawn configurations.
* Unsupported options raise ``revnet.UnsupportedLayerError`` (a ``NotImplementedError``).
"""

from __future__ import annotations

import copy
import importlib
import inspect
import pkgutil
from typing import Any, Callable

import pytest
import torch
import torchvision
from hypothesis import example, given
from hypothesis import strategies as st
from torch import Tensor, nn

import revnet
import strategies
from helpers import assert_vjp_close, autograd_vjp, torch_counterpart
from settings import ALL_CASES, Case, Make, load, load_one

K = 3  # cotangents per sample in the class-axis checks

# torch warns that padding="same" with an even receptive field copies the input; expected for those cases
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths:UserWarning")

# --------------------------------------------------------------------------------------------- coverage

HYPOTHESIS_COVERED: set[type] = set()


def covers(*classes: type) -> Callable:
    """Record that the decorated hypothesis test exercises ``classes`` (read by the coverage test)."""

    def mark(test: Callable) -> Callable:
        assert getattr(test, "is_hypothesis_test", False), f"@covers goes above @given, on {test.__name__}"
        HYPOTHESIS_COVERED.update(classes)
        return test

    return mark


def _reversible_layer_classes() -> set[type]:
    """Every ``nn.Module`` subclass with ``trace``/``reverse`` defined in a ``revnet.layers`` submodule."""
    found = set()
    for info in pkgutil.iter_modules(revnet.layers.__path__):
        module = importlib.import_module(f"revnet.layers.{info.name}")
        for obj in vars(module).values():
            if (
                inspect.isclass(obj)
                and obj.__module__ == module.__name__
                and issubclass(obj, nn.Module)
                and revnet.is_reversible(obj)
            ):
                found.add(obj)
    return found


def test_table_lists_every_layer():
    table = revnet.TORCH_COUNTERPARTS
    missing = _reversible_layer_classes() - set(table)
    assert not missing, f"reversible layers missing from revnet.TORCH_COUNTERPARTS: {sorted(c.__name__ for c in missing)}"
    for rev, torch_cls in table.items():
        assert issubclass(rev, torch_cls), f"{rev.__name__} does not subclass {torch_cls.__name__}"
        home = torchvision.ops if torch_cls.__module__.startswith("torchvision.ops") else nn
        assert getattr(home, torch_cls.__name__, None) is torch_cls, f"{torch_cls!r} is not a torch.nn class"
        assert rev.__name__ == torch_cls.__name__


def _leaf_layers() -> set[type]:
    """The registered classes with their own trace/reverse (MultiheadAttention is traced through instead)."""
    return {cls for cls in revnet.TORCH_COUNTERPARTS if revnet.is_reversible(cls)}


def test_every_layer_has_a_settings_case():
    covered = {type(case.build()[0]) for case in ALL_CASES}
    missing = _leaf_layers() - covered
    assert not missing, f"layers without a case in tests/settings: {sorted(c.__name__ for c in missing)}"


def test_every_layer_has_a_hypothesis_test():
    missing = _leaf_layers() - HYPOTHESIS_COVERED
    assert not missing, f"layers without a hypothesis test: {sorted(c.__name__ for c in missing)}"


def test_loader_fills_defaults_and_rejects_bad_settings():
    base = {"id": "relu", "make_layer": revnet.ReLU, "input_shape": (2, 3), "seed": 0}
    case = load_one(base)
    assert (case.id, case.train, case.values) == ("relu-in(2,3)", False, "randn")
    assert load_one({**base, "train": True, "values": "ties"}).id == "relu-in(2,3)-train-ties"
    with pytest.raises(ValueError, match="unknown settings keys"):
        load_one({**base, "tolerance": 1e-3})
    with pytest.raises(ValueError, match="missing settings keys"):
        load_one({k: v for k, v in base.items() if k != "seed"})
    with pytest.raises(ValueError, match="values"):
        load_one({**base, "values": "rand"})
    with pytest.raises(ValueError, match="explicit values"):
        load_one({**base, "values": (1.0, 2.0)})
    with pytest.raises(ValueError, match="duplicate"):
        load([base, base])


# --------------------------------------------------------------------------------------------- helpers


def _randn(shape: Any, gen: torch.Generator) -> Tensor:
    return torch.randn(tuple(shape), generator=gen, dtype=torch.float64)


def _seeded_trace(layer: nn.Module, x: Tensor, seed: int) -> tuple[Tensor, Any]:
    """``layer.trace(x)`` with the global RNG seeded (Dropout draws its mask from it), leaving it as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return layer.trace(x)


def _draws_mask(layer: nn.Module) -> bool:
    return isinstance(layer, (nn.Dropout, torchvision.ops.StochasticDepth)) and layer.training and layer.p > 0


def _bn_training(layer: nn.Module) -> bool:
    return isinstance(layer, nn.modules.batchnorm._BatchNorm) and layer.training


def _oracle(layer: nn.Module, ref: nn.Module, case: Case) -> Callable[[Tensor], Tensor]:
    """The function autograd differentiates: the torch counterpart (on a copy of x, since ``inplace=True``
    counterparts overwrite their input), or, for Dropout in training mode, whose mask is revnet's own, the
    traced output itself (the same seed draws the same mask)."""
    if _draws_mask(layer):
        return lambda t: _seeded_trace(layer, t, case.seed)[0]
    return lambda t: ref(t.clone())


def _snapshot(obj: Any) -> Any:
    """A deep copy of a tape: tensors cloned, (named) tuples rebuilt, everything else copied."""
    if isinstance(obj, Tensor):
        return obj.detach().clone()
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)._make(_snapshot(item) for item in obj)
    if isinstance(obj, tuple):
        return type(obj)([_snapshot(item) for item in obj])
    return copy.deepcopy(obj)


def _assert_same(before: Any, after: Any, where: str) -> None:
    assert type(before) is type(after), f"{where}: {type(before).__name__} became {type(after).__name__}"
    if isinstance(before, Tensor):
        same = before.dtype == after.dtype and before.shape == after.shape and torch.equal(before, after)
        assert same, f"{where}: tape tensor changed"
    elif isinstance(before, tuple):
        assert len(before) == len(after), f"{where}: tape length changed"
        for i, (b, a) in enumerate(zip(before, after)):
            _assert_same(b, a, f"{where}[{i}]")
    else:
        assert before == after, f"{where}: {before!r} became {after!r}"


def _assert_states_equal(actual: nn.Module, expected: nn.Module, context: str) -> None:
    """Same state_dict keys and values (parameters and buffers, e.g. BatchNorm's running statistics)."""
    a, e = actual.state_dict(), expected.state_dict()
    assert list(a) == list(e), f"{context}: state_dict keys {list(a)} != {list(e)}"
    for name in a:
        if a[name].is_floating_point():
            assert_vjp_close(a[name], e[name], f"{context}: state_dict[{name!r}]")
        else:
            assert torch.equal(a[name], e[name]), f"{context}: state_dict[{name!r}] {a[name]} != {e[name]}"


# --------------------------------------------------------------------------------------------- checks


def check_first_order(case: Case) -> None:
    """Forward equality, buffer updates, reverse == autograd, and the reverse contract, for one case."""
    layer, x = case.build()
    context = case.context(layer)
    ref = torch_counterpart(layer)
    assert type(ref) is revnet.TORCH_COUNTERPARTS[type(layer)] and isinstance(layer, type(ref))
    forward_copy = copy.deepcopy(layer)  # forward() may update buffers too (BatchNorm in train mode)
    x_before, attributes_before = x.clone(), set(vars(layer))

    # forward: layer(x) == trace(x)[0] == torch's output, and buffers change as torch's do
    y, tape = _seeded_trace(layer, x, case.seed)
    assert isinstance(tape, tuple) and hasattr(tape, "_fields") and type(tape).__name__.endswith("Tape"), (
        f"{context}: the tape must be a NamedTuple called <Layer>Tape, got {type(tape).__name__}"
    )
    if _draws_mask(layer):  # revnet's own mask: y is x, each entry either dropped or scaled by 1/(1-p)
        keep = 1.0 - layer.p
        assert_vjp_close(y, torch.where(y != 0, x / keep, torch.zeros_like(x)), f"{context}: traced output")
        assert isinstance(forward_copy(x.clone()), Tensor)
    else:
        y_ref = ref(x.clone())
        assert_vjp_close(y, y_ref, f"{context}: trace(x)[0] vs torch output")
        assert_vjp_close(forward_copy(x.clone()), y_ref, f"{context}: layer(x) vs torch output")
        _assert_states_equal(layer, ref, f"{context}: after one trace vs one torch forward")
        _assert_states_equal(forward_copy, ref, f"{context}: after one forward vs one torch forward")
    assert torch.equal(x, x_before), f"{context}: trace changed its input"
    assert y.dtype == x.dtype and y.device == x.device

    v = _randn(y.shape, case.generator(1))
    if _bn_training(layer):
        with pytest.raises(revnet.BatchNormTrainingError):
            layer.reverse(v, tape)
        return

    # reverse == autograd's VJP
    v_before, tape_before = v.clone(), _snapshot(tape)
    g = layer.reverse(v, tape)
    assert g.shape == x.shape, f"{context}: g.shape {tuple(g.shape)} != x.shape {tuple(x.shape)}"
    assert g.dtype == v.dtype and g.device == v.device, f"{context}: g is {g.dtype}/{g.device}, v {v.dtype}/{v.device}"
    expected = autograd_vjp(_oracle(layer, ref, case), x, v)
    assert_vjp_close(g, expected, f"{context}: reverse vs autograd")

    # contract: no_grad, repeatable, pure (v, tape, x and the module's attributes unchanged)
    with torch.no_grad():
        g_no_grad = layer.reverse(v, tape)
    assert torch.equal(g_no_grad, g), f"{context}: reverse under torch.no_grad() differs"
    assert torch.equal(layer.reverse(v, tape), g), f"{context}: a second reverse differs from the first"
    assert torch.equal(v, v_before), f"{context}: reverse changed v"
    _assert_same(tape_before, tape, f"{context}: tape")
    assert torch.equal(x, x_before), f"{context}: reverse changed x"
    assert set(vars(layer)) == attributes_before, f"{context}: trace/reverse stored attributes on the module"


def check_class_axis(case: Case, k: int = K) -> None:
    """``reverse`` on ``N·K`` rows (sample-major) == ``K`` separate reverses == autograd with a class axis."""
    layer, x = case.build()
    if _bn_training(layer):
        return
    context = case.context(layer)
    y, tape = _seeded_trace(layer, x, case.seed)
    n, out = x.shape[0], y.shape[1:]
    v = _randn((n, k, *out), case.generator(2))
    folded = layer.reverse(v.reshape(n * k, *out), tape)
    assert folded.shape == (n * k, *x.shape[1:]), f"{context}: folded g has shape {tuple(folded.shape)}"
    g = folded.reshape(n, k, *x.shape[1:])
    for j in range(k):
        assert_vjp_close(g[:, j], layer.reverse(v[:, j], tape), f"{context}: folded row block k={j} vs its own reverse")
    expected = autograd_vjp(_oracle(layer, torch_counterpart(layer), case), x, v)
    assert_vjp_close(g, expected, f"{context}: class axis vs autograd")


def _has_parameters(layer: nn.Module) -> bool:
    return any(p.requires_grad for p in layer.parameters())


def _second_order_reference(ref: nn.Module, x: Tensor) -> Callable[[Tensor], Tensor]:
    """The function whose double backprop is the second-order oracle: the torch counterpart, except for
    PReLU at inputs with exact zeros.

    torch's PReLU is inconsistent at ``x == 0``: its first-order backward uses the negative-side slope there
    (``x > 0`` selects the identity, so ``∂y/∂x = a``, which revnet matches), but the double backward of
    ``_prelu_kernel_backward`` in torch's derivatives.yaml tests ``self >= 0`` and so reports
    ``∂(∂y/∂x)/∂a = 0`` at ``x == 0`` instead of 1 (torch 2.14). There the oracle is double backprop through
    ``where(x > 0, x, a·x)``, which has torch's forward and first-order VJP (checked by the first-order
    tests) and a consistent second derivative.
    """
    if isinstance(ref, nn.PReLU) and (x == 0).any():
        slope = ref.weight if ref.weight.numel() == 1 else ref.weight.reshape(1, -1, *[1] * (x.dim() - 2))
        return lambda t: torch.where(t > 0, t, slope * t)
    return ref


def check_second_order(case: Case) -> None:
    """Gradients of ``L = ((w ⊙ reverse(v))²).sum()`` w.r.t. every parameter == double backprop in torch."""
    layer, x = case.build()
    context = case.context(layer)
    ref = torch_counterpart(layer)
    params = dict(layer.named_parameters())
    ref_params = dict(ref.named_parameters())
    assert list(params) == list(ref_params)

    y, tape = _seeded_trace(layer, x, case.seed)
    gen = case.generator(3)
    v, w = _randn(y.shape, gen), _randn(x.shape, gen)
    loss = (w * layer.reverse(v, tape)).pow(2).sum()
    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)

    xr = x.clone().requires_grad_(True)
    gx = torch.autograd.grad(_second_order_reference(ref, x)(xr.clone()), xr, v, create_graph=True)[0]
    loss_ref = (w * gx).pow(2).sum()
    grads_ref = torch.autograd.grad(loss_ref, list(ref_params.values()), allow_unused=True)

    assert_vjp_close(loss, loss_ref, f"{context}: second-order loss")
    for (name, p), a, e in zip(params.items(), grads, grads_ref):
        a = torch.zeros_like(p) if a is None else a
        e = torch.zeros_like(p) if e is None else e
        assert_vjp_close(a, e, f"{context}: d/d{name} of ((w * reverse(v))**2).sum()")
    if isinstance(layer, nn.PReLU):  # the live slope must reach the second-order graph
        slope = layer.weight.detach()
        slope = slope if slope.numel() == 1 else slope.reshape(1, -1, *[1] * (x.dim() - 2))
        grad = grads[list(params).index("weight")]
        if (x <= 0).any():
            assert grad is not None, f"{context}: the PReLU slope is not in the reverse's graph"
        if ((x <= 0) & (slope != 0)).any():  # dL/da_c = 2 a_c Σ (w·v)² over x <= 0 in channel c
            assert grad.abs().max() > 0, f"{context}: PReLU slope got a zero second-order gradient"


# --------------------------------------------------------------------------------------------- settings cases

SECOND_ORDER_CASES = [case for case in ALL_CASES if _has_parameters(case.build()[0]) and not case.train]


@pytest.mark.parametrize("case", ALL_CASES, ids=[case.id for case in ALL_CASES])
def test_reverse_matches_autograd(case: Case):
    check_first_order(case)


@pytest.mark.parametrize("case", ALL_CASES, ids=[case.id for case in ALL_CASES])
def test_class_axis_folding(case: Case):
    check_class_axis(case)


@pytest.mark.parametrize("case", SECOND_ORDER_CASES, ids=[case.id for case in SECOND_ORDER_CASES])
def test_second_order_matches_double_backprop(case: Case):
    check_second_order(case)


def test_second_order_cases_cover_every_layer_with_parameters():
    with_params = {type(layer) for layer in (case.build()[0] for case in ALL_CASES) if _has_parameters(layer)}
    assert {revnet.Linear, revnet.Conv2d, revnet.PReLU, revnet.BatchNorm1d, revnet.BatchNorm2d} <= with_params
    covered = {type(case.build()[0]) for case in SECOND_ORDER_CASES}
    assert with_params <= covered, sorted(c.__name__ for c in with_params - covered)


# --------------------------------------------------------------------------------------------- hypothesis


def check_all(case: Case) -> None:
    """First order, class axis and (where the layer has parameters) second order."""
    check_first_order(case)
    check_class_axis(case, k=2)
    layer = case.build()[0]
    if _has_parameters(layer) and not _bn_training(layer):
        check_second_order(case)


@covers(revnet.Conv2d)
@given(case=strategies.conv2d_cases())
def test_conv2d_property(case: Case):
    check_all(case)


@covers(revnet.MaxPool2d)
@given(case=st.one_of(strategies.maxpool2d_cases(), strategies.maxpool2d_cases(ties=True)))
def test_maxpool2d_property(case: Case):
    check_all(case)


@covers(revnet.AvgPool2d)
@given(case=strategies.avgpool2d_cases())
def test_avgpool2d_property(case: Case):
    check_all(case)


@covers(revnet.AdaptiveAvgPool2d)
@given(case=strategies.adaptive_avgpool2d_cases())
def test_adaptive_avgpool2d_property(case: Case):
    check_all(case)


@covers(revnet.Linear)
@given(case=strategies.linear_cases())
def test_linear_property(case: Case):
    check_all(case)


@covers(revnet.ReLU)
@given(case=st.one_of(strategies.relu_cases(), strategies.relu_cases(ties=True)))
def test_relu_property(case: Case):
    check_all(case)


@covers(revnet.Sigmoid, revnet.Tanh, revnet.GELU, revnet.SiLU, revnet.ELU, revnet.Softplus, revnet.Hardtanh,
        revnet.ReLU6)
@given(case=st.one_of(strategies.smooth_and_clamp_cases(), strategies.smooth_and_clamp_cases(ties=True)))
def test_smooth_and_clamp_property(case: Case):
    check_all(case)


@covers(revnet.LeakyReLU)
@given(case=st.one_of(strategies.leaky_relu_cases(), strategies.leaky_relu_cases(ties=True)))
def test_leaky_relu_property(case: Case):
    check_all(case)


@covers(revnet.PReLU)
@given(case=st.one_of(strategies.prelu_cases(), strategies.prelu_cases(ties=True)))
@example(  # slope 0: the second-order gradient 2a·Σ(w·v)² is exactly zero
    case=load_one({"id": "hyp-prelu", "make_layer": Make(revnet.PReLU, 1, state={"weight": (0.0,)}), "input_shape": (1, 1), "seed": 1})
)
def test_prelu_property(case: Case):
    check_all(case)


@covers(revnet.BatchNorm1d)
@given(case=strategies.batchnorm_cases(revnet.BatchNorm1d))
def test_batchnorm1d_property(case: Case):
    check_all(case)


@covers(revnet.BatchNorm2d)
@given(case=strategies.batchnorm_cases(revnet.BatchNorm2d))
def test_batchnorm2d_property(case: Case):
    check_all(case)


@covers(revnet.Flatten, revnet.Unflatten, revnet.Identity)
@given(case=strategies.shape_cases())
def test_shape_layers_property(case: Case):
    check_all(case)


@covers(revnet.Dropout)
@given(case=strategies.dropout_cases())
def test_dropout_property(case: Case):
    check_all(case)


@covers(revnet.LayerNorm, revnet.GroupNorm, revnet.Hardswish, revnet.Hardsigmoid, revnet.StochasticDepth,
        revnet.Softmax, revnet.LogSoftmax)
@given(case=strategies.modern_cases())
def test_modern_layers_property(case: Case):
    check_all(case)


# --------------------------------------------------------------------------------------------- unsupported

UNSUPPORTED_AT_INIT = {
    "conv2d-reflect": lambda: revnet.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"),
    "conv2d-replicate": lambda: revnet.Conv2d(2, 2, 3, padding=1, padding_mode="replicate"),
    "conv2d-circular": lambda: revnet.Conv2d(2, 2, 3, padding=1, padding_mode="circular"),
    "maxpool2d-return_indices": lambda: revnet.MaxPool2d(2, return_indices=True),
    "batchnorm2d-no-running-stats": lambda: revnet.BatchNorm2d(3, track_running_stats=False),
    "batchnorm1d-no-running-stats": lambda: revnet.BatchNorm1d(3, track_running_stats=False),
}


@pytest.mark.parametrize("make", UNSUPPORTED_AT_INIT.values(), ids=UNSUPPORTED_AT_INIT.keys())
def test_unsupported_option_raises_at_init(make: Callable[[], nn.Module]):
    with pytest.raises(revnet.UnsupportedLayerError) as info:
        make()
    assert isinstance(info.value, NotImplementedError)


UNSUPPORTED_TORCH = {
    "conv2d-reflect": lambda: nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"),
    "maxpool2d-return_indices": lambda: nn.MaxPool2d(2, return_indices=True),
    "batchnorm2d-no-running-stats": lambda: nn.BatchNorm2d(3, track_running_stats=False),
}


@pytest.mark.parametrize("make", UNSUPPORTED_TORCH.values(), ids=UNSUPPORTED_TORCH.keys())
def test_unsupported_option_raises_at_conversion(make: Callable[[], nn.Module]):
    with pytest.raises(NotImplementedError):
        revnet.convert(make())


UNSUPPORTED_AT_TRACE = {
    "flatten-s0": (lambda: revnet.Flatten(start_dim=0), (2, 3, 4)),
    "flatten-s-3": (lambda: revnet.Flatten(start_dim=-3), (2, 3, 4)),
    "unflatten-d0": (lambda: revnet.Unflatten(0, (1, 2)), (2, 3)),
}


@pytest.mark.parametrize("make, shape", UNSUPPORTED_AT_TRACE.values(), ids=UNSUPPORTED_AT_TRACE.keys())
def test_unsupported_option_raises_at_trace(make: Callable[[], nn.Module], shape: tuple[int, ...]):
    with pytest.raises(revnet.UnsupportedLayerError) as info:
        make().trace(torch.randn(shape, dtype=torch.float64))
    assert isinstance(info.value, NotImplementedError)


def test_make_repr_is_the_call():
    assert repr(Make(revnet.Conv2d, 2, 4, 3, stride=2)) == "Make(revnet.Conv2d, 2, 4, 3, stride=2)"
