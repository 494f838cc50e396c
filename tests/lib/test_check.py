"""``revnet.check``: the public checker for users' own rules (time budget: ≤ 5 s).

It must catch the rule a new user wrote in the issue's trial (a Hardswish reverse on top of torchvision's
``inplace=True`` module, whose trace overwrites the x it keeps: gradients 22% off, and nothing said so), a rule
that is right at first order but detaches its derivative (second order only), and a wrong function rule, and
name the node; a correct model passes.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import revnet


class InPlaceHardswish(nn.Hardswish):
    """The user's rule: ``super().forward(x)`` with ``inplace=True`` overwrites ``x``, which the tape keeps."""

    def trace(self, x):
        y = super().forward(x)
        return y, (x,)

    def reverse(self, v, tape):
        (x,) = tape
        slope = torch.where(x <= -3, torch.zeros_like(x), torch.where(x >= 3, torch.ones_like(x), x / 3 + 0.5))
        n = x.shape[0]
        return (v.reshape(n, -1, *x.shape[1:]) * slope.unsqueeze(1)).reshape(v.shape)


class DetachedHardswish(InPlaceHardswish):
    """Out of place, but the slope is detached: first order right, second order wrong."""

    def trace(self, x):
        return nn.functional.hardswish(x), (x.detach(),)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.act, self.b = nn.Linear(6, 6), nn.Hardswish(inplace=True), nn.Linear(6, 3)

    def forward(self, x):
        return self.b(self.act(self.a(x) * 2.0))


def _x():
    return torch.randn(4, 6, generator=torch.Generator().manual_seed(0)) * 3


@pytest.mark.parametrize("rule, order", [(InPlaceHardswish, "first order"), (DetachedHardswish, "second order")])
def test_a_wrong_user_rule_is_caught_and_its_node_named(monkeypatch, rule, order):
    monkeypatch.setitem(revnet.registry.MODULES, nn.Hardswish, rule)
    torch.manual_seed(0)
    report = revnet.check(Block(), _x())
    assert not report.ok and report.first_bad.startswith("node 'act'"), str(report)
    assert f"({order})" in report.first_bad and "MISMATCH" in str(report)


def test_a_wrong_function_rule_is_named(monkeypatch):
    class WrongExp:  # d/dx exp(x) written as 1
        def inputs(self, args, kwargs):
            return [args[0]]

        def forward(self, call, args, kwargs):
            return call(*args, **kwargs)

        def trace(self, call, args, kwargs, live):
            return call(*args, **kwargs), None

        def reverse(self, v, tape):
            return [v]

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 3)

        def forward(self, x):
            return self.fc(torch.exp(x * 0.1))

    monkeypatch.setitem(revnet.registry.FUNCTIONS, torch.exp, WrongExp())
    report = revnet.check(Net(), _x())
    assert not report.ok and report.first_bad.startswith("node 'exp' (torch.exp)"), str(report)


def test_a_correct_model_passes_and_the_model_is_untouched():
    torch.manual_seed(0)
    model = Block()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = revnet.check(model, _x())
    assert report.ok and report.first_bad is None and str(report).startswith("revnet.check: OK")
    assert all(v.dtype == torch.float32 and torch.equal(v, before[k]) for k, v in model.state_dict().items())
