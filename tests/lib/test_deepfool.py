"""revnet.attacks.deepfool: against a naive autograd DeepFool (values, iterations, second-order gradients),
on a trained classifier (fooling rate, smaller than FGS, early stop, targets, candidates), and its input checks."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given
from torch import nn

import revnet
from autograd_reference import NETS, blobs, reference_ce_input_gradient, reference_deepfool, train_mlp
from helpers import assert_vjp_close, plain_copy
from revnet.attacks import DeepFoolInfo, deepfool

F64 = torch.float64


def _case(kind: str, seed: int = 2, n: int = 10):
    make, shape = NETS[kind]
    net = make(seed).eval()
    x = torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed), dtype=F64)
    return net, x


def _mixed_targets(net, x, seed: int = 0) -> torch.Tensor:
    """-1 for every third sample, a class other than the clean prediction for the rest, and one sample
    whose target is its own clean prediction (done after 0 iterations)."""
    with torch.no_grad():
        logits = net(x)
    pred, c = logits.argmax(1), logits.shape[1]
    shift = torch.randint(1, c, (len(x),), generator=torch.Generator().manual_seed(seed))
    target = (pred + shift) % c
    target[::3] = -1
    target[1] = pred[1]
    return target


def _assert_same_attack(ours, theirs, context: str) -> None:
    (delta, info), (ref_delta, ref_info) = ours, theirs
    assert_vjp_close(delta, ref_delta, f"{context}: delta")
    assert torch.equal(info.iterations, ref_info["iterations"]), f"{context}: iterations"
    assert torch.equal(info.success, ref_info["success"]), f"{context}: success"
    assert torch.equal(info.label, ref_info["label"]), f"{context}: final labels"
    assert torch.equal(info.original_label, ref_info["original_label"]), f"{context}: original labels"


@pytest.mark.parametrize("kind", list(NETS))
@pytest.mark.parametrize("mode", ["untargeted", "mixed-targets", "candidates-3"])
@pytest.mark.parametrize("differentiable", [False, True], ids=["eval", "differentiable"])
def test_matches_the_naive_autograd_deepfool(kind, mode, differentiable):
    net, x = _case(kind)
    kwargs = {"max_iter": 20, "differentiable": differentiable}
    if mode == "mixed-targets":
        kwargs["target"] = _mixed_targets(net, x)
    if mode == "candidates-3":
        kwargs["candidates"] = 3
    ours = deepfool(net, x, **kwargs)
    theirs = reference_deepfool(plain_copy(net), x, **kwargs)
    _assert_same_attack(ours, theirs, f"{kind} {mode} differentiable={differentiable}")
    # the batch really shrinks at different iterations (the leaving-the-batch path is exercised)
    done_at = ours[1].iterations[ours[1].success]
    assert len(set(done_at.tolist())) >= 2, done_at
    assert (ours[0].grad_fn is not None) == differentiable


@pytest.mark.parametrize("kind", list(NETS))
def test_gradient_through_the_recursion_matches_double_backprop(kind):
    net, x = _case(kind)
    ref = plain_copy(net)
    target = _mixed_targets(net, x)
    weight = torch.randn(x.shape, generator=torch.Generator().manual_seed(7), dtype=F64)

    delta, info = deepfool(net, x, target=target, max_iter=8, differentiable=True)
    (weight * delta).sum().backward()
    ref_delta, ref_info = reference_deepfool(ref, x, target=target, max_iter=8, differentiable=True)
    (weight * ref_delta).sum().backward()

    assert torch.equal(info.iterations, ref_info["iterations"])
    assert (info.iterations > 1).any(), "the gradient must flow through more than one step"
    for (name, p), (_, q) in zip(net.named_parameters(), ref.named_parameters()):
        assert p.grad is not None, f"{name} got no gradient"
        assert_vjp_close(p.grad, q.grad, f"{kind}: d/d {name}")


@st.composite
def small_mlps(draw):
    seed = draw(st.integers(0, 2**31 - 1))
    torch.manual_seed(seed)
    d_in, hidden, classes = draw(st.integers(2, 8)), draw(st.integers(2, 10)), draw(st.integers(2, 6))
    act = draw(st.sampled_from([nn.ReLU, nn.LeakyReLU, nn.PReLU]))
    net = revnet.Sequential(nn.Linear(d_in, hidden), act(), nn.Linear(hidden, classes)).to(F64).eval()
    x = torch.randn(draw(st.integers(1, 6)), d_in, generator=torch.Generator().manual_seed(seed), dtype=F64)
    target = None
    if draw(st.booleans()):
        target = torch.randint(-1, classes, (len(x),), generator=torch.Generator().manual_seed(seed + 1))
    candidates = draw(st.sampled_from([None] + list(range(2, classes + 1))))
    # overshoot > 0: with 0 a step lands exactly on the boundary and the label there is decided by round-off
    # (the two implementations may then differ by one vanishing extra step)
    return net, x, target, candidates, draw(st.floats(0.01, 0.1))


@given(small_mlps(), st.booleans())
def test_random_networks_match_the_naive_autograd_deepfool(case, differentiable):
    net, x, target, candidates, overshoot = case
    ref = plain_copy(net)
    kwargs = dict(target=target, candidates=candidates, overshoot=overshoot, max_iter=10, differentiable=differentiable)
    ours, theirs = deepfool(net, x, **kwargs), reference_deepfool(ref, x, **kwargs)
    _assert_same_attack(ours, theirs, str(case))
    assert ours[0].requires_grad == theirs[0].requires_grad  # False if no sample took a step
    if ours[0].requires_grad:  # second order through the recursion, PReLU's slope included
        weight = torch.randn(x.shape, generator=torch.Generator().manual_seed(len(x)), dtype=F64)
        (weight * ours[0]).sum().backward()
        (weight * theirs[0]).sum().backward()
        for (name, p), (_, q) in zip(net.named_parameters(), ref.named_parameters()):
            zero = torch.zeros_like(p)  # unreached: None on one side, exact zeros on the other
            g, h = (p.grad if p.grad is not None else zero), (q.grad if q.grad is not None else zero)
            assert_vjp_close(g, h, f"{case}: d/d {name}")


# ----------------------------------------------------------------------------------------------------------
# On a trained classifier (10-D Gaussian blobs, 5 classes; ~97% test accuracy).


@pytest.fixture(scope="module")
def trained():
    x, y = blobs(900, 10, 5, seed=0)
    plain = train_mlp(x[:600], y[:600])
    net = revnet.Sequential.from_torch(plain)
    x_test, y_test = x[600:], y[600:]
    with torch.no_grad():
        correct = net(x_test).argmax(1) == y_test
    assert correct.double().mean() > 0.9
    return net, x_test[correct], y_test[correct]


def test_fools_correct_samples_with_less_l2_than_the_smallest_fgs(trained):
    net, x, y = trained
    delta, info = deepfool(net, x, max_iter=50)
    assert info.success.double().mean() >= 0.99
    assert (info.iterations <= 50).all()
    with torch.no_grad():
        assert torch.equal(net(x + delta).argmax(1), info.label)
    assert (info.label[info.success] != y[info.success]).all()

    # FGS: for each sample the smallest eps on a grid whose example is misclassified; L2 = eps·‖sign g‖
    sign = reference_ce_input_gradient(plain_copy(net), x, y).sign()
    grid = torch.logspace(-2.5, 1, 300, dtype=F64)  # 2.7% relative steps
    with torch.no_grad():
        flipped = torch.stack([net(x + eps * sign).argmax(1) != y for eps in grid], 1)  # (N, grid)
    fgs_ok = flipped.any(1)
    first = flipped.double().argmax(1)
    fgs_l2 = grid[first] * torch.linalg.vector_norm(sign, dim=1)
    both = fgs_ok & info.success
    assert both.double().mean() > 0.9
    df_l2 = torch.linalg.vector_norm(delta, dim=1)
    assert df_l2[both].mean() < fgs_l2[both].mean()


def test_stopped_samples_are_not_perturbed_further(trained):
    net, x, _ = trained
    short, short_info = deepfool(net, x, max_iter=1)
    long, long_info = deepfool(net, x, max_iter=50)
    first = short_info.success
    assert first.any() and (~first).any(), "need samples done at iteration 1 and samples that need more"
    assert (long_info.iterations[first] == 1).all() and (long_info.iterations[~first] > 1).all()
    assert torch.equal(long[first], short[first])
    assert torch.equal(long_info.label[first], short_info.label[first])
    assert (short_info.iterations == 1).all()


def test_targeted_mode_reaches_the_target(trained):
    net, x, y = trained
    with torch.no_grad():
        runner_up = net(x).topk(2, dim=1).indices[:, 1]
    random = (y + torch.randint(1, 5, y.shape, generator=torch.Generator().manual_seed(3))) % 5
    # a random target can sit behind a junction of several classes, where the two-class linearisation
    # oscillates between the neighbours (the targeted DeepFool's known weakness), converging to a junction
    # where several logits tie to round-off: most, not all, get there
    for target, rate in [(runner_up, 1.0), (random, 0.95)]:
        delta, info = deepfool(net, x, target=target, max_iter=50)
        assert info.success.double().mean() >= rate
        assert torch.equal(info.label[info.success], target[info.success])
        assert (info.iterations[~info.success] == 50).all()
        with torch.no_grad():
            assert (net(x + delta).argmax(1) == target).double().mean() >= rate


def test_differentiable_equals_evaluation_mode_in_value(trained):
    net, x, y = trained
    target = torch.where(torch.arange(len(y)) % 2 == 0, -1, (y + 1) % 5)
    for kwargs in [{}, {"target": target}, {"candidates": 2}]:
        d_eval, i_eval = deepfool(net, x, **kwargs)
        d_diff, i_diff = deepfool(net, x, differentiable=True, **kwargs)
        assert d_eval.grad_fn is None and d_diff.grad_fn is not None
        assert_vjp_close(d_diff, d_eval, f"differentiable vs eval {kwargs.keys()}")
        for a, b in zip(i_eval, i_diff):
            assert torch.equal(a, b)


def test_candidates_restrict_the_first_step_to_the_top_classes():
    # linear network: one step lands exactly (1 + overshoot) past the linear boundary with the chosen class
    torch.manual_seed(0)
    net = revnet.Sequential(nn.Linear(6, 7)).to(F64)
    x = torch.randn(40, 6, dtype=F64)
    weight, bias = net[0].weight.detach(), net[0].bias.detach()
    logits = x @ weight.T + bias
    order = logits.argsort(1, descending=True)
    l = order[:, 0]
    for q in [2, 4, 7]:
        delta, info = deepfool(net, x, max_iter=1, overshoot=0.0, candidates=q)
        w = weight[order[:, 1:q]] - weight[l][:, None]  # (N, q-1, D)
        f = (logits.gather(1, order[:, 1:q]) - logits.gather(1, l[:, None])).abs()
        best = (f / w.norm(dim=2)).argmin(1)
        k = order[torch.arange(len(x)), 1 + best]
        wk = weight[k] - weight[l]
        fk = (logits.gather(1, k[:, None]) - logits.gather(1, l[:, None])).abs()
        assert_vjp_close(delta, fk / wk.square().sum(1, keepdim=True) * wk, f"candidates={q}")
        if q == 2:  # the step goes to the runner-up class even when another boundary is nearer
            assert torch.equal(k, order[:, 1])
    d2, _ = deepfool(net, x, max_iter=1, candidates=2)
    d7, _ = deepfool(net, x, max_iter=1)
    assert not torch.allclose(d2, d7), "some sample's nearest boundary is not with the runner-up class"


def test_a_targeted_sample_already_at_its_target_is_untouched_and_succeeds():
    net, x = _case("mlp")
    with torch.no_grad():
        pred = net(x).argmax(1)
    delta, info = deepfool(net, x, target=pred)
    assert torch.equal(delta, torch.zeros_like(x))
    assert info.success.all() and (info.iterations == 0).all() and torch.equal(info.label, pred)


def test_zero_gradients_give_a_zero_step_not_nan():
    net = revnet.Sequential(nn.Linear(4, 3)).to(F64)
    with torch.no_grad():
        net[0].weight.zero_()
        net[0].bias.copy_(torch.tensor([1.0, 0.0, -1.0]))
    x = torch.randn(3, 4, dtype=F64)
    delta, info = deepfool(net, x, max_iter=3, differentiable=True)
    assert torch.equal(delta, torch.zeros_like(x)) and not info.success.any()
    delta.sum().backward()
    assert torch.isfinite(net[0].weight.grad).all()


def test_float32_and_info_types():
    torch.manual_seed(0)
    net = revnet.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(32, 4)).eval()
    x = torch.randn(6, 1, 6, 6)
    delta, info = deepfool(net, x)
    assert isinstance(info, DeepFoolInfo)
    assert delta.dtype == torch.float32 and delta.shape == x.shape and delta.device == x.device
    assert info.success.dtype == torch.bool and info.iterations.dtype == torch.long
    assert info.success.all()
    with torch.no_grad():
        assert torch.equal(net(x + delta).argmax(1), info.label)
    # differentiable under no_grad: no graph, same values
    with torch.no_grad():
        d2, _ = deepfool(net, x, differentiable=True)
    assert d2.grad_fn is None
    torch.testing.assert_close(d2, delta, rtol=1e-5, atol=1e-6)  # float32: one-row vs batched reverse


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda_like_on_cpu():
    net, x = _case("lenet")
    target = _mixed_targets(net, x)
    cpu = deepfool(net, x, target=target, max_iter=20)
    gpu = deepfool(net.cuda(), x.cuda(), target=target.cuda(), max_iter=20, differentiable=True)
    assert gpu[0].device.type == "cuda"
    torch.testing.assert_close(gpu[0].detach().cpu(), cpu[0], rtol=1e-9, atol=1e-11)  # cuDNN vs CPU conv order
    assert torch.equal(gpu[1].iterations.cpu(), cpu[1].iterations)


def test_bad_inputs_raise_clear_errors():
    net, x = _case("mlp", n=4)
    with pytest.raises(ValueError, match="max_iter"):
        deepfool(net, x, max_iter=0)
    bad = x.clone()
    bad[1, 0, 2, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        deepfool(net, bad)
    with pytest.raises(ValueError, match="target"):
        deepfool(net, x, target=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="target"):
        deepfool(net, x, target=torch.zeros(4, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="target"):
        deepfool(net, x, target=torch.full((4,), 5))
    with pytest.raises(ValueError, match="candidates"):
        deepfool(net, x, candidates=1)
    with pytest.raises(ValueError, match="candidates"):
        deepfool(net, x, candidates=6)
    with pytest.raises(ValueError, match="overshoot"):
        deepfool(net, x, overshoot=-0.1)
    with pytest.raises(ValueError, match="batch"):
        deepfool(net, x[0, 0, 0])
    with pytest.raises(TypeError, match="revnet.convert"):
        deepfool(plain_copy(net), x)


@pytest.mark.parametrize("kind", list(NETS))
@pytest.mark.parametrize("differentiable", [False, True], ids=["eval", "differentiable"])
def test_without_early_stop_every_sample_runs_all_iterations_like_the_naive_loop(kind, differentiable):
    net, x = _case(kind)
    target = _mixed_targets(net, x)
    kwargs = {"max_iter": 6, "differentiable": differentiable, "target": target}
    ours = deepfool(net, x, early_stop=False, **kwargs)
    theirs = reference_deepfool(plain_copy(net), x, early_stop=False, **kwargs)
    _assert_same_attack(ours, theirs, f"{kind} no early stop")
    at_target = (target >= 0) & (ours[1].original_label == target)
    assert (ours[1].iterations[~at_target] == 6).all() and (ours[1].iterations[at_target] == 0).all()


@pytest.mark.parametrize("kind", list(NETS))
@pytest.mark.parametrize("chunk", [None, 1, 2, 4])
@pytest.mark.parametrize("differentiable", [False, True], ids=["eval", "differentiable"])
def test_class_chunks_choose_the_same_classes(kind, chunk, differentiable):
    net, x = _case(kind)
    target = _mixed_targets(net, x)
    whole = deepfool(net, x, max_iter=20, target=target, differentiable=differentiable, class_chunk=1000)
    chunked = deepfool(net, x, max_iter=20, target=target, differentiable=differentiable, class_chunk=chunk)
    assert_vjp_close(chunked[0], whole[0], f"{kind} class_chunk={chunk}: delta")
    for a, b in zip(chunked[1], whole[1]):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="class_chunk"):
        deepfool(net, x, class_chunk=0)
