"""DeepFool and the Deep Defense loss inside a box (``box=(lo, hi)``: the active-set step of
``revnet/attacks/deepfool.py``) against an autograd reference in float64: the perturbation, the loss and its weight
gradients. The reference runs one sample at a time, with ``torch.autograd.grad`` (``create_graph=True``) for
every class's input gradient. Time budget: ≤ 15 s.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import revnet

FACTOR, MEAN = 2.0, 0.3  # network input = (pixels − MEAN) · FACTOR, pixels in [0, 1]
LO, HI = (0 - MEAN) * FACTOR, (1 - MEAN) * FACTOR


def small_net(seed: int = 0) -> revnet.Sequential:
    torch.manual_seed(seed)
    return revnet.Sequential(revnet.Conv2d(1, 3, 3), revnet.Tanh(), revnet.Flatten(), revnet.Linear(3 * 4 * 4, 4)
                             ).double().eval()


def mnist_like(n: int = 6) -> torch.Tensor:
    """``(n, 1, 6, 6)`` network inputs whose pixels are mostly exactly 0 or 1 (at the box's bounds), as MNIST's."""
    torch.manual_seed(1)
    pixels = torch.rand(n, 1, 6, 6, dtype=torch.float64)
    pixels = torch.where(pixels < 0.4, torch.zeros_like(pixels), torch.where(pixels > 0.7, torch.ones_like(pixels),
                                                                                 pixels))
    return (pixels - MEAN) * FACTOR


def reference(net, x1, target: int, max_iter: int, overshoot: float) -> torch.Tensor:
    """Box DeepFool of one sample ``x1 (1, *in)`` with autograd: zero the blocked components of every class's
    ``w``, choose the nearest class with them, step, clamp into the box."""
    scale = 1.0 + overshoot
    orig = int(net(x1).argmax(1))
    if target == orig:
        return torch.zeros_like(x1)
    total, p, label = torch.zeros_like(x1), x1, orig
    for _ in range(max_iter):
        if not p.requires_grad:  # the clean point: a leaf to differentiate at (x itself is a constant)
            p = p.clone().requires_grad_(True)
        z = net(p)
        away = label if target >= 0 else orig
        best = None
        for k in ([target] if target >= 0 else [c for c in range(z.shape[1]) if c != away]):
            (w,) = torch.autograd.grad(z[0, k] - z[0, away], p, create_graph=True)
            blocked = ((p.detach() >= HI) & (w.detach() > 0)) | ((p.detach() <= LO) & (w.detach() < 0))
            w = w.masked_fill(blocked, 0.0)
            gap = (z[0, k] - z[0, away]).abs()
            dist = (gap / w.norm()).item()
            if best is None or dist < best[0]:
                best = (dist, gap, w)
        _, gap, w = best
        total = total + gap / w.norm() ** 2 * w
        total = (torch.clamp(x1 + scale * total, LO, HI) - x1) / scale
        p = x1 + scale * total
        label = int(net(p).argmax(1))
        if (label == target) if target >= 0 else (label != orig):
            break
    return scale * total


def test_box_deepfool_equals_the_autograd_reference_and_stays_inside():
    net, x = small_net(), mnist_like()
    delta, info = revnet.deepfool(net, x, max_iter=8, box=(LO, HI))
    for i in range(len(x)):
        ref = reference(net, x[i:i + 1], -1, 8, 0.02)
        torch.testing.assert_close(delta[i:i + 1], ref.detach(), rtol=1e-9, atol=1e-11)
    adv = x + delta
    assert adv.min() >= LO - 1e-12 and adv.max() <= HI + 1e-12
    assert info.success.any()
    free, _ = revnet.deepfool(net, x, max_iter=8)  # unconstrained: leaves the box on these inputs
    assert (x + free).min() < LO - 1e-6 or (x + free).max() > HI + 1e-6


def test_box_deep_defense_loss_and_weight_gradients_equal_the_autograd_reference():
    net, x = small_net(seed=2), mnist_like()
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    lmbda, c, d, max_iter = 2.0, 5.0, 3.0, 4
    loss, info = revnet.deep_defense_loss(net, x, y, lmbda=lmbda, c=c, d=d, max_iter=max_iter,
                                          box=(LO, HI))
    logits = net(x)
    correct = logits.argmax(1) == y
    assert correct.any() and (~correct).any()  # both branches of eq. 6
    terms = []
    for i in range(len(x)):
        delta = reference(net, x[i:i + 1], -1 if correct[i] else int(y[i]), max_iter, 0.02)
        ratio = delta.norm() / x[i].norm()
        terms.append(torch.exp(-c * ratio) if correct[i] else torch.exp(d * ratio))
    ref_loss = F.cross_entropy(logits, y) + lmbda * torch.stack(terms).sum() / len(x)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-10, atol=1e-12)
    params = list(net.parameters())
    for a, b in zip(torch.autograd.grad(loss, params), torch.autograd.grad(ref_loss, params)):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def test_a_bad_box_is_one_line():
    net, x = small_net(), mnist_like(2)
    with pytest.raises(ValueError, match="lo must not exceed hi"):
        revnet.deepfool(net, x, box=(torch.tensor(1.0), torch.tensor(0.0)))
    with pytest.raises(ValueError, match="broadcast against one input of shape"):
        revnet.deepfool(net, x, box=(torch.zeros(5), torch.ones(5)))
