"""Layout rules and values whose first dimension is not the batch (time budget: ≤ 20 s).

Every check is ``helpers.check_graph_against_autograd`` in float64 with weights re-drawn at unit scale: the
traced forward equals the model's, the reverse of K = 3 cotangents equals autograd's VJPs, and the gradients
of a loss on the reverse w.r.t. every weight and x equal double backprop. The models put a Linear before and
after each layout op so that a wrong adjoint cannot hide behind a symmetric input.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import revnet
from helpers import check_graph_against_autograd, randomize_unit_scale

F64 = torch.float64


class Around(nn.Module):
    """Linear → ``op`` → flatten the non-first dims → Linear, on x (N, L, C); ``op`` may move the first dim as
    long as the value it returns again has N rows."""

    def __init__(self, op, c: int = 4, width: int = 24):
        super().__init__()
        self.op, self.inp = op, nn.Linear(c, c)
        self.out = nn.LazyLinear(3)
        self.width = width

    def forward(self, x):
        return self.out(self.op(self.inp(x)).flatten(1))


def _check(op, shape=(2, 3, 4), seed=0):
    model = Around(op, shape[-1]).double()
    model(torch.zeros(shape, dtype=F64))  # materialise the lazy head
    randomize_unit_scale(model, seed)
    check_graph_against_autograd(model, torch.randn(shape, dtype=F64, generator=torch.Generator().manual_seed(seed)))


@given(perm=st.permutations([1, 2, 3]), split=st.integers(0, 2))
@settings(max_examples=12, deadline=None)
def test_permutes_that_move_the_batch_axis_and_back(perm, split):
    def op(x):  # (N, L, C) → (N, L, 2, 2) → a permutation that moves N, then back to N first
        y = x.reshape(x.shape[0], x.shape[1], 2, 2)
        order = list(perm)
        order.insert(split, 0)
        z = y.permute(*order) * 2.0
        return z.permute(*[order.index(d) for d in range(4)])
    _check(op)


OPS = {
    "transpose": lambda x: x.transpose(1, 2),
    "swapaxes-batch": lambda x: torch.swapaxes(x, 0, 1).transpose(0, 1),
    "movedim": lambda x: torch.movedim(x, 2, 1),
    "movedim-batch": lambda x: x.movedim(0, 2).movedim(2, 0),
    "expand": lambda x: x[:, :1].expand(-1, 3, -1) + x,
    "expand-new-dim": lambda x: x.unsqueeze(1).expand(x.shape[0], 2, 3, 4).flatten(1, 2),
    "repeat": lambda x: x.repeat(1, 2, 1),
    "repeat-lead": lambda x: x.repeat(2, 1, 1, 1).transpose(0, 1).flatten(1, 2),
    "roll": lambda x: torch.roll(x, shifts=(1, -2), dims=(1, 2)),
    "roll-flat": lambda x: x.roll(1, 1),
    "flip": lambda x: x.flip(1, 2),
    "pad": lambda x: F.pad(x, (1, 2, 0, 1)),
    "pad-crop": lambda x: F.pad(x, (-1, 1)),
    "chunk": lambda x: torch.cat([x.chunk(2, dim=-1)[1], x.chunk(2, dim=-1)[0]], -1),
    "split-unused": lambda x: torch.split(x, [1, 3], dim=2)[1],
    "tensor-split": lambda x: torch.cat([torch.tensor_split(x, (1,), dim=1)[1], x[:, :1]], 1),
    "unbind": lambda x: torch.cat([x.unbind(1)[2].unsqueeze(1), x.unbind(1)[0].unsqueeze(1)], 1),
    "unbind-batch": lambda x: x.permute(1, 0, 2).unbind(0)[1] + x[:, 0],
    "token": lambda x: torch.cat([x[:, 0:1], x[:, 1:] * 2], 1),
    "index-first-dim": lambda x: x.transpose(0, 1)[1:].transpose(0, 1),
    "unflatten": lambda x: x.unflatten(2, (2, 2)).transpose(2, 3).flatten(2),
    "windows-into-batch": lambda x: (x.reshape(-1, 2) * x.reshape(-1, 2).flip(1)).reshape(x.shape),
}


@pytest.mark.parametrize("name", sorted(OPS))
def test_layout_op_matches_autograd(name):
    _check(OPS[name])


def test_timm_attention_layout_with_the_batch_axis_moved():
    """timm's Attention: qkv.reshape(B, N, 3, H, D).permute(2, 0, 3, 1, 4).unbind(0), then the heads back."""

    class Attn(nn.Module):
        def __init__(self, c=8, heads=2):
            super().__init__()
            self.qkv, self.proj, self.heads = nn.Linear(c, 3 * c), nn.Linear(c, c), heads
            self.head = nn.Linear(c, 3)

        def forward(self, x):
            b, n, c = x.shape
            q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
            y = (q * k.flip(2) + v).transpose(1, 2).reshape(b, n, c)
            return self.head(self.proj(y).mean(1))

    model = randomize_unit_scale(Attn().double())
    check_graph_against_autograd(model, torch.randn(3, 5, 8, dtype=F64))


def test_swin_windows_folded_into_the_batch():
    """Swin's window partition (B, H, W, C) → (B·nW, ws², C), a per-window op, and the window merge back."""

    class Windows(nn.Module):
        def __init__(self, c=4, ws=2):
            super().__init__()
            self.mix, self.head, self.ws = nn.Linear(c, c), nn.Linear(c, 3), ws

        def forward(self, x):
            b, h, w, c = x.shape
            ws = self.ws
            t = x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws, c)
            t = self.mix(t) * t.roll(1, 1)
            t = t.view(b, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)
            return self.head(t.roll((1, 1), (1, 2)).mean((1, 2)))

    model = randomize_unit_scale(Windows().double())
    check_graph_against_autograd(model, torch.randn(2, 4, 4, 4, dtype=F64))


def test_deepfool_through_a_moved_batch_axis_matches_autograd():
    """DeepFool and the Deep Defense loss read the reverse through these rules: their perturbations equal the
    autograd reference (misclassified samples included, so targeted steps run too)."""
    from autograd_reference import reference_deep_defense_loss

    model = Around(lambda x: x.permute(2, 0, 1).flip(0).permute(1, 2, 0)).double()
    model(torch.zeros(1, 3, 4, dtype=F64))
    randomize_unit_scale(model, 3)
    net = revnet.convert(model)
    x = torch.randn(6, 3, 4, dtype=F64, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    ours, info = revnet.deep_defense_loss(net, x, y, lmbda=1.0, c=5.0, d=5.0, max_iter=3)
    theirs, ref = reference_deep_defense_loss(model, x, y, lmbd=1.0, c=5.0, d=5.0, max_iter=3)
    assert 0 < int(ref["correct"].sum()) < len(y)  # both kinds of samples: untargeted and targeted steps
    torch.testing.assert_close(info.ratio, ref["ratio"], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)
    params = list(model.parameters())
    for a, b in zip(torch.autograd.grad(ours, params), torch.autograd.grad(theirs, params)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_an_output_without_the_batch_first_and_a_broadcast_across_rows_are_refused():
    class Flat(nn.Module):
        def forward(self, x):
            return x.reshape(-1, 2)

    with pytest.raises(revnet.UnsupportedLayerError, match=r"does not keep the batch dimension"):
        revnet.convert(Flat()).trace(torch.randn(2, 4))

    class RowBroadcast(nn.Module):
        def forward(self, x):
            return x * x[:1]

    with pytest.raises(revnet.UnsupportedLayerError, match=r"across the first dimension"):
        revnet.convert(RowBroadcast()).trace(torch.randn(3, 4))

    class ReflectPad(nn.Module):
        def forward(self, x):
            return F.pad(x, (1, 1), mode="reflect")

    with pytest.raises(revnet.UnsupportedLayerError, match=r"only mode='constant'"):
        revnet.convert(ReflectPad()).trace(torch.randn(2, 3, 4))


def test_every_layout_rule_is_registered():
    names = set(revnet.registry.supported_functions())
    for method in ("permute", "transpose", "movedim", "expand", "repeat", "roll", "flip", "chunk", "split",
                   "unbind", "unflatten"):
        assert method in names, method
    assert set(itertools.chain(["torch.nn.functional.pad", "torch.permute", "torch.roll"])) <= names
