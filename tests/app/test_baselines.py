"""The baselines of the paper's comparison, each against a direct formula (float64, autograd as the oracle)."""

from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F
from torch import nn

import revnet
from revnet import baselines
from revnet.losses import deep_defense_loss


from revnet_app.train import methods  # noqa: E402
from revnet_app.train import engine  # noqa: E402

D = torch.float64


def small_net(seed: int = 0) -> revnet.Sequential:
    torch.manual_seed(seed)
    return revnet.Sequential(
        nn.Conv2d(1, 3, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(3 * 3 * 3, 8), nn.ReLU(),
        nn.Linear(8, 4),
    ).double()


def batch(n: int = 12, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 4, (n,), generator=g)


def autograd_fgs(net, x, y, eps):
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(net(x), y), x)
    return (x + eps * g.sign()).detach()


def test_parseval_retraction_is_the_formula_on_the_chosen_rows_and_leaves_the_others():
    torch.manual_seed(0)
    w = torch.randn(10, 6, dtype=D) * 0.4
    before = w.clone()
    gen = torch.Generator().manual_seed(3)
    baselines.parseval_retraction_([w], beta=0.1, fraction=0.3, generator=gen)
    chosen = torch.randperm(10, generator=torch.Generator().manual_seed(3))[:3]
    ws = before[chosen]
    expected = before.clone()
    expected[chosen] = 1.1 * ws - 0.1 * ws @ ws.T @ ws
    torch.testing.assert_close(w, expected, rtol=1e-12, atol=1e-12)
    assert (w != before).any(dim=1).sum() == 3  # the 7 other rows are untouched


def test_parseval_retraction_moves_a_random_matrix_towards_orthonormal_rows():
    torch.manual_seed(0)
    w = torch.randn(8, 20, dtype=D) * 0.3  # rows far from orthonormal
    conv = torch.randn(6, 2, 3, 3, dtype=D) * 0.3  # a conv weight, constrained as a (6, 18) matrix
    gen = torch.Generator().manual_seed(0)

    def distance(m):
        m = m.reshape(m.shape[0], -1)
        return torch.linalg.matrix_norm(m @ m.T - torch.eye(m.shape[0], dtype=D)).item()

    d0, c0 = distance(w), distance(conv)
    for _ in range(1000):
        baselines.parseval_retraction_([w, conv], beta=0.1, fraction=0.3, generator=gen)
    assert distance(w) < 0.05 * d0 and distance(conv) < 0.05 * c0
    assert torch.allclose(w @ w.T, torch.eye(8, dtype=D), atol=1e-2)


def test_parseval_weights_are_those_of_linear_and_conv_layers_and_bad_arguments_are_refused():
    net = small_net()
    assert [tuple(w.shape) for w in baselines.parseval_weights(net)] == [(3, 1, 3, 3), (8, 27), (4, 8)]
    with pytest.raises(ValueError, match="beta"):
        baselines.parseval_retraction_(baselines.parseval_weights(net), beta=-1.0)
    with pytest.raises(ValueError, match="fraction"):
        baselines.parseval_retraction_(baselines.parseval_weights(net), beta=0.1, fraction=0.0)
    with pytest.raises(ValueError, match="at least 2"):
        baselines.parseval_retraction_([torch.zeros(3, dtype=D)], beta=0.1)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.8])
def test_fgs_adversarial_loss_equals_goodfellow_objective_with_autograd_examples(alpha):
    net = small_net()
    x, y = batch()
    eps = 0.07
    loss, logits = baselines.fgs_adversarial_loss(net, x, y, eps=eps, alpha=alpha)
    x_fgs = autograd_fgs(net, x, y, eps)
    assert (x_fgs - x).abs().max() <= eps + 1e-15  # the examples stay within ε in L∞
    expected = alpha * F.cross_entropy(net(x), y) + (1 - alpha) * F.cross_entropy(net(x_fgs), y)
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(logits, net(x), rtol=0, atol=0)
    # the weight gradient treats x_fgs as a constant (Goodfellow et al.)
    grads = torch.autograd.grad(loss, list(net.parameters()))
    oracle = torch.autograd.grad(expected, list(net.parameters()))
    for g, o in zip(grads, oracle):
        torch.testing.assert_close(g, o, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="alpha"):
        baselines.fgs_adversarial_loss(net, x, y, eps=eps, alpha=1.5)


def test_deepfool_adversarial_set_is_what_deepfool_returns_in_every_chunk():
    net = small_net().eval()
    x, _ = batch(10)
    x_adv, fooled = baselines.deepfool_adversarial_set(net, x, max_iter=30, batch_size=4)
    delta, info = revnet.deepfool(net, x, max_iter=30)
    torch.testing.assert_close(x_adv, x + delta, rtol=1e-10, atol=1e-12)
    assert torch.equal(fooled, info.success)
    assert fooled.sum() >= 8 and (net(x_adv).argmax(1) != net(x).argmax(1))[fooled].all()


def test_ce_weight_scales_only_the_cross_entropy_of_the_deep_defense_loss():
    net = small_net()
    x, y = batch()
    full, info = deep_defense_loss(net, x, y, max_iter=3, d=0.5)  # a small d keeps the terms comparable
    part, info2 = deep_defense_loss(net, x, y, max_iter=3, d=0.5, ce_weight=0.5)
    torch.testing.assert_close(full - part, 0.5 * info.ce, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(part, 0.5 * info2.ce + 15.0 * info2.reg, rtol=1e-10, atol=1e-12)


def test_deepdefense_plus_fgs_batch_loss_is_alpha_ce_plus_fgs_ce_plus_regularizer():
    net = small_net()
    x, y = batch()
    method = methods.build("deepdefense+fgs", lmbda=15.0, c=25.0, d=5.0, max_iter=3, overshoot=0.02, fgs_eps=0.05,
                           alpha=0.3, clip=None)
    loss = method.loss(net, x, y).loss
    _, info = deep_defense_loss(net, x, y, max_iter=3)
    x_fgs = autograd_fgs(net, x, y, 0.05)
    expected = 0.3 * F.cross_entropy(net(x), y) + 0.7 * F.cross_entropy(net(x_fgs), y) + 15.0 * info.reg
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-12)


def test_parseval_epoch_is_sgd_followed_by_the_retraction():
    x, y = batch(8)
    nets = [small_net(), small_net()]
    opts = [torch.optim.SGD(n.parameters(), lr=0.1) for n in nets]
    for net, opt, method in zip(nets, opts, [methods.build("parseval", parseval_beta=0.01), methods.build("clean")]):
        gen = torch.Generator().manual_seed(5)
        engine.train_one_epoch(net, method, opt, engine.tensor_batches(x, y, 8, gen), generator=gen,
                               progress=engine.EpochProgress(bar=False))
    gen = torch.Generator().manual_seed(5)
    torch.randperm(8, generator=gen)  # the batch order drawn by train_one_epoch
    baselines.parseval_retraction_(baselines.parseval_weights(nets[1]), beta=0.01, generator=gen)
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("which", ["perturbed", "perturbed+clean"])
def test_advtrain_set_is_deepfool_of_the_reference_and_is_cached(tmp_path, which):
    net = small_net().eval()
    x, y = batch(6)
    method = methods.build("advtrain-deepfool", advtrain_set=which, advtrain_max_iter=20, overshoot=0.02)
    tx, ty, info = method.prepare(x, y, ref_net=net, out=tmp_path, batch_size=4)
    delta, _ = revnet.deepfool(net, x, max_iter=20)
    expected = x + delta if which == "perturbed" else torch.cat([x, x + delta])
    torch.testing.assert_close(tx, expected, rtol=1e-10, atol=1e-12)
    assert torch.equal(ty, y if which == "perturbed" else torch.cat([y, y]))
    assert info["fooled_fraction"] > 0.5 and (tmp_path / "advtrain_set.pt").is_file()
    with torch.no_grad():  # a changed network does not matter any more: the stored set is reused
        for p in net.parameters():
            p.add_(1.0)
    tx2, _, _ = method.prepare(x, y, ref_net=net, out=tmp_path, batch_size=4)
    torch.testing.assert_close(tx2, tx, rtol=0, atol=0)
