"""revnet.metrics: accuracy, ρ₂ on linear models (DeepFool is exact there), FGS against autograd, the ε_ref
bisection, accuracy at fractions of ε_ref, batching, and input checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import revnet
from autograd_reference import NETS, blobs, reference_ce_input_gradient, train_mlp
from helpers import assert_vjp_close, plain_copy
from revnet import metrics
from revnet.attacks import ce_input_gradient, deepfool

F64 = torch.float64


@pytest.fixture(scope="module")
def trained():
    x, y = blobs(900, 10, 5, seed=1, spread=1.5)  # ~96% test accuracy: some test images are misclassified
    net = revnet.Sequential.from_torch(train_mlp(x[:600], y[:600], seed=1))
    return net, x[600:], y[600:]


def test_accuracy():
    logits = torch.tensor([[0.0, 1.0], [2.0, 1.0], [0.0, 3.0], [5.0, 0.0]])
    assert metrics.accuracy(logits, torch.tensor([1, 0, 0, 1])) == 0.5
    assert metrics.accuracy(logits, torch.tensor([1, 0, 1, 0])) == 1.0
    with pytest.raises(ValueError, match="one label per sample"):
        metrics.accuracy(logits, torch.tensor([1, 0]))


@pytest.mark.parametrize("kind", list(NETS))
def test_fgs_gradient_equals_autograd_input_gradient_of_ce(kind):
    make, shape = NETS[kind]
    net = make(0)
    x = torch.randn(7, *shape, generator=torch.Generator().manual_seed(0), dtype=F64)
    y = torch.randint(0, 5, (7,), generator=torch.Generator().manual_seed(1))
    g = ce_input_gradient(net, x, y)
    assert g.grad_fn is None
    assert_vjp_close(g, reference_ce_input_gradient(plain_copy(net), x, y), kind)
    adv = metrics.fgs(net, x, y, 0.3)
    assert torch.equal(adv, x + 0.3 * g.sign())


def test_fgs_examples_stay_within_eps_and_clip(trained):
    net, x, y = trained
    for eps in [0.0, 0.05, 1.5]:
        adv = metrics.fgs(net, x, y, eps)
        assert adv.shape == x.shape and adv.dtype == x.dtype
        step = (adv - x).abs()
        assert step.max() <= eps * (1 + 1e-12)
        assert ((step - eps).abs() <= 1e-12 * max(eps, 1)).double().mean() > 0.99  # sign(g) is rarely exactly 0
    lo, hi = -1.0, 2.0
    clipped = metrics.fgs(net, x, y, 0.5, clip=(lo, hi))
    assert clipped.min() >= lo and clipped.max() <= hi
    assert torch.equal(clipped, metrics.fgs(net, x, y, 0.5).clamp(lo, hi))
    assert (metrics.fgs(net, x, y, 0.5) > hi).any(), "not clipped by default"


def test_eps_ref_is_where_fgs_accuracy_crosses_one_half(trained):
    net, x, y = trained
    tol = 1e-3
    eps = metrics.eps_ref(net, x, y, tol=tol, batch_size=128)
    assert eps > 0
    assert metrics.fgs_accuracy(net, x, y, eps) <= 0.5
    assert metrics.fgs_accuracy(net, x, y, 0.99 * eps) > 0.5
    # another starting point and batch size land on the same crossing within the tolerance
    again = metrics.eps_ref(net, x, y, tol=tol, eps_start=10.0, batch_size=1000)
    assert abs(again - eps) <= 2 * tol * eps
    fractions = metrics.accuracy_at_eps_fractions(net, x, y, eps)
    assert list(fractions) == [0.2, 0.5, 1.0]
    assert fractions[1.0] <= 0.5 < fractions[0.5] <= fractions[0.2]
    assert fractions[0.2] == metrics.fgs_accuracy(net, x, y, 0.2 * eps)
    assert metrics.accuracy_at_eps_fractions(net, x, y, eps, fractions=(0.0,))[0.0] == metrics.network_accuracy(
        net, x, y
    )


def test_eps_ref_raises_when_fgs_never_reaches_one_half():
    net = revnet.Sequential(nn.Linear(3, 2)).to(F64)
    with torch.no_grad():
        net[0].weight.zero_()
        net[0].bias.copy_(torch.tensor([1.0, 0.0]))
    x = torch.randn(8, 3, dtype=F64)
    y = torch.zeros(8, dtype=torch.long)  # always right, and the input gradient is 0: FGS cannot move it
    with pytest.raises(ValueError, match="stays above 50%"):
        metrics.eps_ref(net, x, y, max_doublings=5)
    assert metrics.eps_ref(net, x, torch.ones(8, dtype=torch.long)) == 0.0  # clean accuracy already 0


def _linear_distance(net: revnet.Sequential, x: torch.Tensor) -> torch.Tensor:
    """Exact L2 distance from each x to the decision region boundary of a linear classifier."""
    w, b = net[0].weight.detach(), net[0].bias.detach()
    logits = x @ w.T + b
    l = logits.argmax(1)
    gap = logits.gather(1, l[:, None]) - logits  # (N, C) >= 0
    diff = (w[None] - w[l][:, None]).norm(dim=2)  # ‖w_k − w_l‖
    dist = gap / diff
    dist[torch.arange(len(x)), l] = float("inf")
    return dist.min(1).values


@pytest.mark.parametrize("classes", [2, 6])
def test_rho2_of_a_linear_model_is_the_analytic_value(classes):
    torch.manual_seed(classes)
    net = revnet.Sequential(nn.Linear(8, classes)).to(F64)
    x = torch.randn(45, 8, dtype=F64) + 0.5
    overshoot = 0.02
    result = metrics.deepfool_robustness(net, x, overshoot=overshoot, batch_size=7)
    expected = ((1 + overshoot) * _linear_distance(net, x) / x.norm(dim=1)).mean().item()
    assert result["rho2"] == pytest.approx(expected, rel=1e-12)
    assert result["fooling_rate"] == 1.0 and result["mean_iterations"] == 1.0 and result["n"] == 45


def test_rho2_counts_every_image_including_misclassified_and_unfooled(trained):
    net, x, y = trained
    with torch.no_grad():
        wrong = net(x).argmax(1) != y
    assert wrong.any(), "the set must contain misclassified images"
    result = metrics.deepfool_robustness(net, x, max_iter=2, batch_size=64)
    delta, info = deepfool(net, x, max_iter=2)
    assert (~info.success).any(), "some images are not fooled within 2 iterations"
    ratio = delta.flatten(1).norm(dim=1) / x.flatten(1).norm(dim=1)
    assert result["rho2"] == pytest.approx(ratio.mean().item(), rel=1e-10)
    assert result["fooling_rate"] == pytest.approx(info.success.double().mean().item())
    assert result["mean_iterations"] == pytest.approx(info.iterations.double().mean().item())


def test_metrics_run_in_float32(trained):
    net, x, y = trained
    net32 = revnet.Sequential.from_torch(plain_copy(net).float())
    x32 = x.float()
    assert metrics.deepfool_robustness(net32, x32)["rho2"] == pytest.approx(
        metrics.deepfool_robustness(net, x)["rho2"], rel=1e-4
    )
    assert metrics.fgs(net32, x32, y, 0.1).dtype == torch.float32
    eps = metrics.eps_ref(net32, x32, y)  # not compared with float64's: one gradient sign near 0 may differ
    assert metrics.fgs_accuracy(net32, x32, y, eps) <= 0.5 < metrics.fgs_accuracy(net32, x32, y, 0.99 * eps)


def test_bad_inputs_raise_clear_errors(trained):
    net, x, y = trained
    with pytest.raises(ValueError, match="one label per sample"):
        metrics.fgs_accuracy(net, x, y[:-1], 0.1)
    with pytest.raises(ValueError, match="batch_size"):
        metrics.deepfool_robustness(net, x, batch_size=0)
    with pytest.raises(ValueError, match="eps"):
        metrics.fgs(net, x, y, -0.1)
    with pytest.raises(ValueError, match="clip"):
        metrics.fgs(net, x, y, 0.1, clip=(1.0, 0.0))
    with pytest.raises(ValueError, match="tol"):
        metrics.eps_ref(net, x, y, tol=0.0)
    with pytest.raises(ValueError, match="max_iter"):
        metrics.deepfool_robustness(net, x, max_iter=0)
    bad = x.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        metrics.fgs(net, bad, y, 0.1)
