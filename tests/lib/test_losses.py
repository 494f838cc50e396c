"""revnet.losses.deep_defense_loss: value and gradients w.r.t. every weight against a naive autograd
implementation (double backprop), reg_layers, the formula itself, and input checks."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from autograd_reference import NETS, mixed_batch, reference_deep_defense_loss
from helpers import assert_vjp_close, plain_copy
import revnet
from revnet.losses import DeepDefenseInfo, deep_defense_loss

F64 = torch.float64
MAX_ITER = 5


_batch = mixed_batch


def _grads(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    # a parameter the loss does not reach counts as a zero gradient (see test_sequential._param_grads)
    return {n: p.grad.clone() if p.grad is not None else torch.zeros_like(p) for n, p in module.named_parameters()}


def _assert_batch_is_interesting(info: DeepDefenseInfo) -> None:
    assert info.correct.any() and (~info.correct).any(), "need correctly and wrongly classified samples"
    assert len(set(info.iterations.tolist())) >= 3, f"need samples stopping at different iterations: {info}"
    assert (info.success & (info.iterations < MAX_ITER)).any(), "need samples that stop early"
    assert (info.success & ~info.correct).any(), "need a misclassified sample moved to its ground truth"


@pytest.mark.parametrize("kind", list(NETS))
def test_loss_and_weight_gradients_match_double_backprop(kind):
    net, x, y = _batch(kind)
    ref = plain_copy(net)

    loss, info = deep_defense_loss(net, x, y, max_iter=MAX_ITER)
    loss.backward()
    ref_loss, ref_info = reference_deep_defense_loss(ref, x, y, max_iter=MAX_ITER)
    ref_loss.backward()

    _assert_batch_is_interesting(info)
    assert_vjp_close(loss, ref_loss, f"{kind}: loss")
    assert_vjp_close(info.ce, ref_info["ce"], f"{kind}: ce")
    assert_vjp_close(info.ratio, ref_info["ratio"], f"{kind}: ratio")
    assert torch.equal(info.iterations, ref_info["iterations"]) and torch.equal(info.success, ref_info["success"])
    ours, theirs = _grads(net), _grads(ref)
    for name in ours:
        assert ours[name].abs().sum() > 0, f"{name} got no gradient"
        assert_vjp_close(ours[name], theirs[name], f"{kind}: d loss / d {name}")


@pytest.mark.parametrize("kind,reg_layers", [("mlp", ["1"]), ("lenet", ["0", "7"])])
def test_reg_layers_restrict_the_regularizer_gradient(kind, reg_layers):
    net, x, y = _batch(kind)
    ref = plain_copy(net)

    loss, info = deep_defense_loss(net, x, y, max_iter=MAX_ITER, reg_layers=reg_layers)
    loss.backward()
    # oracle: the regularizer runs on a copy that shares only the chosen layers with ref
    reg_model = copy.deepcopy(ref)
    for name in reg_layers:
        reg_model[int(name)] = ref[int(name)]
    ref_loss, _ = reference_deep_defense_loss(ref, x, y, max_iter=MAX_ITER, reg_model=reg_model)
    ref_loss.backward()
    assert_vjp_close(loss, ref_loss, f"{kind}: loss")
    ours, theirs = _grads(net), _grads(ref)
    for name in ours:
        assert_vjp_close(ours[name], theirs[name], f"{kind} reg_layers={reg_layers}: d loss / d {name}")

    ce_only = plain_copy(net)
    ce_only.zero_grad()
    F.cross_entropy(ce_only(x), y).backward()
    ce_grads = _grads(ce_only)
    for name in ours:
        if name.split(".")[0] in reg_layers:
            assert not torch.allclose(ours[name], ce_grads[name]), f"the regularizer must reach {name}"
        else:
            assert_vjp_close(ours[name], ce_grads[name], f"only the cross-entropy reaches {name}")


def test_reg_layers_leave_the_network_unchanged():
    net, x, y = _batch("lenet")
    before = {n: (p, p.detach().clone()) for n, p in net.named_parameters()}
    deep_defense_loss(net, x, y, reg_layers=["0"])[0].backward()
    after = dict(net.named_parameters())
    assert after.keys() == before.keys()
    for name, (param, value) in before.items():
        assert after[name] is param and torch.equal(param.detach(), value)
        assert param.grad is not None


def test_loss_is_the_formula_of_eq_6():
    net, x, y = _batch("mlp")
    lmbd, c, d = 3.0, 10.0, 2.0
    loss, info = deep_defense_loss(net, x, y, lmbda=lmbd, c=c, d=d)
    with torch.no_grad():
        logits = net(x)
    ratio = info.ratio
    terms = torch.where(info.correct, torch.exp(-c * ratio), torch.exp(d * ratio))
    assert torch.equal(info.correct, logits.argmax(1) == y)
    assert_vjp_close(info.ce, F.cross_entropy(logits, y), "ce")
    assert_vjp_close(info.reg, terms.sum() / len(x), "reg")
    assert_vjp_close(loss.detach(), info.ce + lmbd * terms.mean(), "loss")
    no_reg, _ = deep_defense_loss(net, x, y, lmbda=0.0)
    assert_vjp_close(no_reg.detach(), info.ce, "lambda = 0")
    assert info.ratio.grad_fn is None and info.ce.grad_fn is None and loss.grad_fn is not None


def test_float32_runs_and_gives_finite_gradients():
    net, x, y = _batch("lenet")
    net, x = net.float(), x.float()
    loss, info = deep_defense_loss(net, x, y)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    net, x, y = _batch("lenet")
    loss, _ = deep_defense_loss(net, x, y)
    loss.backward()
    cpu_grads = _grads(net)
    net.zero_grad()
    net.cuda()
    gpu_loss, _ = deep_defense_loss(net, x.cuda(), y.cuda())
    gpu_loss.backward()
    torch.testing.assert_close(gpu_loss.cpu(), loss.detach(), rtol=1e-9, atol=0)  # cuDNN vs CPU sum order
    for name, g in _grads(net).items():
        torch.testing.assert_close(g.cpu(), cpu_grads[name], rtol=1e-7, atol=1e-9 * cpu_grads[name].abs().max())


def test_bad_inputs_raise_clear_errors():
    net, x, y = _batch("mlp")
    with pytest.raises(ValueError, match="one label per sample"):
        deep_defense_loss(net, x, y[:-1])
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        deep_defense_loss(net, bad, y)
    with pytest.raises(ValueError, match="max_iter"):
        deep_defense_loss(net, x, y, max_iter=0)
    with pytest.raises(ValueError, match="valid labels 0..4"):
        deep_defense_loss(net, x, y + 10)
    with pytest.raises(ValueError, match="integer"):
        deep_defense_loss(net, x, y.double())
    with pytest.raises(ValueError, match="not modules of the network"):
        deep_defense_loss(net, x, y, reg_layers=["fc1"])


def test_deep_defense_loss_takes_the_top_candidate_classes():
    torch.manual_seed(0)
    net = revnet.Sequential(nn.Flatten(), nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 12)).double()
    x = torch.randn(8, 6, dtype=torch.float64)
    with torch.no_grad():
        y = net(x).argmax(1)
    y[:2] = (y[:2] + 1) % 12  # two misclassified samples: targeted, unaffected by candidates
    loss, info = revnet.deep_defense_loss(net, x, y, candidates=3, max_iter=4)
    delta, _ = revnet.deepfool(net, x, target=torch.where(info.correct, torch.full_like(y, -1), y), candidates=3,
                               max_iter=4, differentiable=True)
    ratio = delta.flatten(1).norm(dim=1) / x.flatten(1).norm(dim=1)
    torch.testing.assert_close(info.ratio, ratio.detach(), rtol=1e-12, atol=1e-12)
    full, _ = revnet.deep_defense_loss(net, x, y, candidates=12, max_iter=4)
    torch.testing.assert_close(full, revnet.deep_defense_loss(net, x, y, max_iter=4)[0], rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="candidates must be an integer in"):
        revnet.deep_defense_loss(net, x, y, candidates=1)


def test_lmbd_is_a_deprecated_alias_of_lmbda():
    torch.manual_seed(0)
    net = revnet.Sequential(revnet.Linear(4, 3))
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    new, _ = revnet.deep_defense_loss(net, x, y, lmbda=3.0)
    with pytest.warns(DeprecationWarning, match="use lmbda="):
        old, _ = revnet.deep_defense_loss(net, x, y, lmbd=3.0)
    torch.testing.assert_close(new, old, rtol=1e-6, atol=1e-7)  # the same computation, by either name
