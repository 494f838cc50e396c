"""Attention rules against autograd, in float64, with every weight re-drawn at unit scale: softmax/log_softmax,
matmul/bmm/einsum with one or both operands traced, ``F.scaled_dot_product_attention`` and
``nn.MultiheadAttention``; plus their one-line refusals.

Graph checks (``check_graph_against_autograd``): forward, first order with K = 3 cotangents, and second order
w.r.t. every parameter and ``x``; ``net(x)`` equals ``net.trace(x)[0]``. The forwards are also compared with
torch's own (SDPA's kernels, MultiheadAttention's fast path).

Time budget: ≤ 30 s.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

import revnet
from helpers import check_graph_against_autograd, randomize_unit_scale
from revnet.layers.attention import SDPA, MultiheadAttention

F64 = torch.float64


def _x(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _check(model: nn.Module, x: torch.Tensor, seed: int = 0) -> None:
    """The graph check; torch's SDPA runs its math backend there, the only one with a double backward on the CPU
    (the CPU flash kernel's backward has no derivative)."""
    model = randomize_unit_scale(model.to(F64), seed)
    with sdpa_kernel(SDPBackend.MATH):
        check_graph_against_autograd(model, x, k=3, seed=seed)
    net = revnet.convert(model)
    assert torch.equal(net(x), net.trace(x)[0])  # the rules' forward (no tape) is their trace's output


def _refused(model: nn.Module, x: torch.Tensor, match: str) -> None:
    """Conversion or the trace raises one line matching ``match``."""
    with pytest.raises(revnet.UnsupportedLayerError, match=match) as info:
        revnet.convert(model.to(F64)).trace(x)
    assert "\n" not in str(info.value)


class QKV(nn.Module):
    """Three Linears ``(N, L, C) -> (N, L, D)``: the query, key and value of the tests below."""

    def __init__(self, c: int, d: int):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(c, d), nn.Linear(c, d), nn.Linear(c, d)


# ------------------------------------------------------------------------------------------ softmax

SOFTMAXES = {
    "torch.softmax": lambda x, d: torch.softmax(x, d),
    "F.softmax": lambda x, d: F.softmax(x, dim=d),
    "Tensor.softmax": lambda x, d: x.softmax(d),
    "torch.log_softmax": lambda x, d: torch.log_softmax(x, dim=d),
    "F.log_softmax": lambda x, d: F.log_softmax(x, d, dtype=None),
    "Tensor.log_softmax": lambda x, d: x.log_softmax(dim=d),
}


class Softmax(nn.Module):
    """``Linear → softmax over dim → Linear`` on ``(N, *s, C)``."""

    def __init__(self, kind: str, dim: int, c: int):
        super().__init__()
        self.kind, self.dim = kind, dim
        self.a, self.b = nn.Linear(c, c), nn.Linear(c, 2)

    def forward(self, x):
        return self.b(SOFTMAXES[self.kind](self.a(x), self.dim))


@pytest.mark.parametrize("kind", list(SOFTMAXES))
@pytest.mark.parametrize("dim", [1, 2, -1])
def test_softmax(kind, dim):
    _check(Softmax(kind, dim, 4), _x(2, 3, 5, 4))


@settings(max_examples=10, deadline=None)
@given(n=st.integers(1, 3), shape=st.lists(st.integers(1, 4), min_size=1, max_size=3), data=st.data(),
       kind=st.sampled_from(list(SOFTMAXES)), seed=st.integers(0, 2**16 - 1))
def test_softmax_property(n, shape, data, kind, seed):
    rank = len(shape) + 1
    dim = data.draw(st.sampled_from([d for d in range(-rank, rank) if d % rank != 0]), label="dim")
    _check(Softmax(kind, dim, shape[-1]), _x(n, *shape, seed=seed), seed=seed)


# ------------------------------------------------------------------------------------------ products


class HandAttention(QKV):
    """``softmax(q kᵀ/√d) v`` written out (``q @ k.transpose(-2, -1)``, ``@``), mean over L, a Linear head."""

    def __init__(self, c: int = 5, d: int = 4):
        super().__init__(c, d)
        self.head = nn.Linear(d, 3)

    def forward(self, x):
        q, k, v = self.q(x), self.k(x), self.v(x)
        attn = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(-1)
        return self.head((attn @ v).mean(1))


class Products(QKV):
    """Every product form: ``torch.matmul`` and ``Tensor.matmul`` with a constant matrix on either side,
    ``torch.bmm``/``Tensor.bmm`` of two traced tensors, broadcast leading dims ``(N, H, L, D) @ (N, 1, D, L)``."""

    def __init__(self, c: int = 5, d: int = 4, length: int = 3):
        super().__init__(c, d)
        self.w = nn.Parameter(torch.empty(d, 6))  # right: (N, L, d) @ (d, 6)
        self.m = nn.Parameter(torch.empty(2, length))  # left: (2, L) @ (N, L, d)

    def forward(self, x):
        q, k, v = self.q(x), self.k(x), self.v(x)
        s = torch.bmm(q, k.transpose(1, 2)).softmax(-1).bmm(v)  # (N, L, d)
        heads = q.view(q.shape[0], q.shape[1], 2, 2).transpose(1, 2)  # (N, 2, L, 2)
        cross = torch.matmul(heads, k.view(k.shape[0], k.shape[1], 2, 2)[:, :, :1].permute(0, 2, 3, 1))  # (N,2,L,L)
        return torch.cat([torch.matmul(s, self.w).flatten(1), (self.m @ v).matmul(self.w).flatten(1),
                          cross.flatten(1), (x.flatten(1) @ self.w.new_ones(15, 2))], 1)


def _heads(t):
    """``(N, L, 4) -> (N, 2, L, 2)``."""
    return t.view(t.shape[0], t.shape[1], 2, 2).transpose(1, 2)


EINSUMS = {
    "bqd,bkd->bqk": lambda q, k, w: torch.einsum("bqd,bkd->bqk", q, k),
    "bhqd,bhkd->bhqk": lambda q, k, w: torch.einsum("bhqd,bhkd->bhqk", _heads(q), _heads(k)),
    "list operands, constant weight": lambda q, k, w: torch.einsum("bld,de->ble", [q, w]),
    "three operands": lambda q, k, w: torch.einsum("bld, bmd, de -> blme", q, k, w),
    "index only in one operand": lambda q, k, w: torch.einsum("bld,bmd->bl", q, k),
    "size-1 broadcast": lambda q, k, w: torch.einsum("bld,bld->bld", q, k[:, :1]),  # l: 3 against 1
}


class Einsum(QKV):
    def __init__(self, kind: str, c: int = 5, d: int = 4):
        super().__init__(c, d)
        self.kind, self.w = kind, nn.Parameter(torch.empty(d, 3))

    def forward(self, x):
        return EINSUMS[self.kind](self.q(x), self.k(x), self.w).flatten(1)


def test_hand_written_attention():
    _check(HandAttention(), _x(2, 3, 5))


def test_matmul_and_bmm():
    _check(Products(), _x(2, 3, 5))


@pytest.mark.parametrize("kind", list(EINSUMS))
def test_einsum(kind):
    _check(Einsum(kind), _x(2, 3, 5))


# ------------------------------------------------------------------------------------------ SDPA

L = 4
BOOL_MASK = torch.tensor([[1, 0, 1, 1], [0, 1, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0]], dtype=torch.bool)  # row 3: none


class Options(QKV):
    """Holds SDPA's keyword arguments; a mask is a buffer (fx would make a tensor closed over a constant
    ``_tensor_constant0`` attribute, which the Graph does not hold)."""

    def __init__(self, c: int, d: int, **options):
        super().__init__(c, d)
        mask = options.pop("attn_mask", None)
        self.options = options
        self.register_buffer("mask", mask)

    def sdpa(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask, **self.options)


class SDPA3(Options):
    """``F.scaled_dot_product_attention`` on ``(N, L, C)``: one head; keys and values from the first ``keys``
    positions."""

    def __init__(self, c: int = 5, d: int = 4, keys: int = L, **options):
        super().__init__(c, d, **options)
        self.head, self.keys = nn.Linear(d, 3), keys

    def forward(self, x):
        return self.head(self.sdpa(self.q(x), self.k(x[:, :self.keys]), self.v(x[:, :self.keys])).mean(1))


class SDPAHeads(Options):
    """Heads ``(N, H, L, D)`` by ``view`` + ``transpose(1, 2)``, SDPA, heads merged back, a Linear."""

    def __init__(self, c: int = 6, heads: int = 2, d: int = 3, **options):
        super().__init__(c, heads * d, **options)
        self.heads, self.out = heads, nn.Linear(heads * d, 3)

    def split(self, t):
        return t.view(t.shape[0], t.shape[1], self.heads, -1).transpose(1, 2)

    def forward(self, x):
        o = self.sdpa(self.split(self.q(x)), self.split(self.k(x)), self.split(self.v(x)))
        return self.out(o.transpose(1, 2).flatten(2)).flatten(1)


SDPA_OPTIONS = {
    "plain": {},
    "causal": {"is_causal": True},
    "bool mask": {"attn_mask": BOOL_MASK},
    "float mask": {"attn_mask": _x(L, L, seed=5)},
    "scale": {"scale": 0.3},
}


@pytest.mark.parametrize("name", list(SDPA_OPTIONS))
@pytest.mark.parametrize("model", [SDPA3, SDPAHeads])
def test_sdpa(model, name):
    _check(model(**SDPA_OPTIONS[name]), _x(2, L, 5 if model is SDPA3 else 6))


def test_sdpa_causal_with_fewer_keys():
    _check(SDPA3(keys=2, is_causal=True), _x(2, L, 5))  # (L, S) = (4, 2): causal tril aligned top left
    _check(SDPA3(keys=3, attn_mask=BOOL_MASK[:, :3]), _x(2, L, 5))


def test_sdpa_positional_arguments():
    class Positional(SDPA3):
        def forward(self, x):
            q, k, v = self.q(x), self.k(x), self.v(x)
            return F.scaled_dot_product_attention(q, k, v, None, 0.0, True, scale=-0.5).flatten(1)

    _check(Positional(), _x(2, L, 5))


def test_sdpa_forward_matches_torch():
    """Our decomposition is torch's math backend bit for bit; torch's CPU kernel differs by rounding."""
    q, k, v = _x(2, 3, 5, 4, seed=1), _x(2, 3, 6, 4, seed=2), _x(2, 3, 6, 3, seed=3)
    mask = torch.rand(5, 6, generator=torch.Generator().manual_seed(0), dtype=F64) > 0.3
    for options in ({}, {"is_causal": True}, {"attn_mask": mask}, {"attn_mask": _x(5, 6)}, {"scale": -0.7}):
        ours = SDPA.forward(None, (q, k, v), options)
        torch.testing.assert_close(ours, F.scaled_dot_product_attention(q, k, v, **options), rtol=1e-13, atol=1e-14)
        if "attn_mask" not in options:  # the math op takes the float form of a bool mask; skip those
            math_ = torch.ops.aten._scaled_dot_product_attention_math(
                q, k, v, None, 0.0, options.get("is_causal", False), scale=options.get("scale"))[0]
            assert torch.equal(ours, math_)


# ------------------------------------------------------------------------------------------ nn.MultiheadAttention


class MHA(nn.Module):
    """``attn(x, x, x, need_weights=False)[0]``, mean over L, a Linear (or, with ``weights``, the averaged
    attention weights appended)."""

    def __init__(self, bias: bool = True, weights: bool = False, **options):
        super().__init__()
        self.weights = weights
        self.attn = nn.MultiheadAttention(embed_dim=8, num_heads=2, bias=bias, **{"batch_first": True, **options})
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        if self.weights:
            y, w = self.attn(x, x, x)
            return torch.cat([self.head(y.mean(1)), w.flatten(1)], 1)
        y = self.attn(x, x, x, need_weights=False)[0]
        return self.head(y.mean(1))


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("weights", [False, True])
def test_multihead_attention(bias, weights):
    model = MHA(bias, weights).eval()
    _check(model, _x(2, 4, 8))
    net = revnet.convert(model)
    assert type(net.attn) is MultiheadAttention and type(model.attn) is nn.MultiheadAttention
    assert net.attn.in_proj_weight is model.attn.in_proj_weight


def test_multihead_attention_dropout_in_eval_and_training():
    model = MHA(dropout=0.5).eval()
    _check(model, _x(2, 4, 8))
    net = revnet.convert(model).train()
    with pytest.raises(revnet.UnsupportedLayerError, match="dropout=0.5 in training mode"):
        net.trace(_x(2, 4, 8))
    _check(MHA(dropout=0.0).train(), _x(2, 4, 8))


@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_multihead_attention_forward_matches_torch_fast_path(dtype, rtol):
    torch.manual_seed(0)
    for embed, heads in ((8, 2), (64, 8)):
        torch_mha = nn.MultiheadAttention(embed, heads, batch_first=True).to(dtype).eval()
        ours = revnet.registry.convert_leaf(torch_mha)
        x = torch.randn(3, 7, embed, dtype=dtype)
        with torch.no_grad():  # eval, no grad: torch._native_multi_head_attention
            expected = torch_mha(x, x, x, need_weights=False)[0]
            torch.testing.assert_close(ours(x, x, x, need_weights=False)[0], expected, rtol=rtol, atol=rtol)


# ------------------------------------------------------------------------------------------ refusals


class Lambda(nn.Module):
    def __init__(self, fn, *params: tuple[int, ...]):
        super().__init__()
        self.fn, self.lin = fn, nn.Linear(4, 4)
        self.p = nn.ParameterList([nn.Parameter(torch.randn(s, dtype=F64)) for s in params])

    def forward(self, x):
        return self.fn(self.lin(x), *self.p)


class CrossMHA(MHA):
    def forward(self, x):
        return self.attn(x, x * 2, x * 2, need_weights=False)[0].flatten(1)


class MaskedMHA(MHA):
    def forward(self, x):
        return self.attn(x, x, x, need_weights=False, attn_mask=BOOL_MASK)[0].flatten(1)


class CausalAndMask(Lambda):
    def __init__(self):
        super().__init__(None)
        self.register_buffer("mask", torch.ones(3, 3, dtype=torch.bool))

    def forward(self, x):
        h = self.lin(x)
        return F.scaled_dot_product_attention(h, h, h, attn_mask=self.mask, is_causal=True)


REFUSALS = [
    ("softmax dim 0", lambda: Lambda(lambda h: h.softmax(0)), "across the batch dimension"),
    ("F.softmax no dim", lambda: Lambda(lambda h: F.softmax(h)), "without dim"),
    ("softmax dtype", lambda: Lambda(lambda h: torch.softmax(h, -1, dtype=torch.float32)), r"dtype=torch.float32"),
    ("matmul 1-D", lambda: Lambda(lambda h, w: h @ w, (4,)), "1-D"),
    ("matmul contracts rows", lambda: Lambda(lambda h, w: w @ h[:, 0], (3, 2)), "across the batch dimension"),
    ("einsum contracts rows", lambda: Lambda(lambda h: torch.einsum("bld,bmd->lm", h, h)), "batch index"),
    ("einsum batch in constant", lambda: Lambda(lambda h, w: torch.einsum("bld,bd->bl", h, w), (2, 4)), "batch index"),
    ("einsum ellipsis", lambda: Lambda(lambda h: torch.einsum("...d,...d->...", h, h)), r"no '\.\.\.'"),
    ("einsum implicit", lambda: Lambda(lambda h: torch.einsum("bld,bmd", h, h)), "explicit '->'"),
    ("einsum diagonal", lambda: Lambda(lambda h: torch.einsum("bii->bi", h[:, :, :3])), "repeated index"),
    ("sdpa dropout", lambda: Lambda(lambda h: F.scaled_dot_product_attention(h, h, h, dropout_p=0.1)), "dropout_p=0.1"),
    ("sdpa mask and causal", lambda: CausalAndMask(), "both attn_mask"),
    ("sdpa live mask", lambda: Lambda(lambda h: F.scaled_dot_product_attention(h, h, h, attn_mask=h[:, :, :3])),
     "depends on the input"),
    ("sdpa gqa", lambda: Lambda(lambda h: F.scaled_dot_product_attention(h, h, h, enable_gqa=True)), "enable_gqa"),
    ("sdpa shapes", lambda: Lambda(lambda h: F.scaled_dot_product_attention(h, h[:, None], h[:, None])), "same dims"),
    ("mha cross", lambda: CrossMHA(), "key or value other than the query"),
    ("mha mask", lambda: MaskedMHA(), "attn_mask"),
    ("mha batch_first=False", lambda: MHA(batch_first=False), "batch_first=False"),
    ("mha kdim", lambda: MHA(kdim=4, vdim=4), "kdim/vdim"),
    ("mha bias_kv", lambda: MHA(add_bias_kv=True), "add_bias_kv"),
    ("mha zero attn", lambda: MHA(add_zero_attn=True), "add_zero_attn"),
]


@pytest.mark.parametrize("make, match", [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS])
def test_refusals(make, match):
    model = make()
    _refused(model.eval(), _x(2, 3, 8 if isinstance(model, MHA) else 4), match)


def test_multihead_attention_refuses_at_construction():
    with pytest.raises(revnet.UnsupportedLayerError, match="batch_first=False"):
        MultiheadAttention(8, 2)
