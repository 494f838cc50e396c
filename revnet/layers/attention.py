"""Attention: softmax/log_softmax over a non-batch dim, products of traced tensors (matmul, bmm, einsum),
``F.scaled_dot_product_attention`` and ``nn.MultiheadAttention``.

Every rule keeps the first dimension (the rows ``T``, see :mod:`revnet.layers._rows`) where it is: each operand
that depends on the input is ``(T, …)`` and row ``t`` of the result depends on row ``t`` of the operands only.
What would broadcast or contract across dim 0 is refused in one line. The reverses use the traced operands (and
the softmax computed from them) as they are, inside the autograd graph, so second-order gradients are exact.

* ``softmax(x, dim)``: ``g = s ⊙ (v − Σ_dim v ⊙ s)``; ``log_softmax``: ``g = v − s · Σ_dim v``
  (``s = softmax(x)``).
* ``a @ b`` (``matmul``, ``bmm``, ``einsum``): the product rule, ``g_a = v @ bᵀ``, ``g_b = aᵀ @ v``; an operand
  that does not depend on the input (a parameter) is a constant and gets no cotangent.
* ``F.scaled_dot_product_attention``: one rule through ``P = softmax(q kᵀ·scale + bias)``, ``out = P v``.
* ``nn.MultiheadAttention`` (self-attention, ``batch_first=True``) is converted to :class:`MultiheadAttention`,
  whose forward torch.fx traces through into the rules above.

Shapes: x, y ``(T, *s)``; v ``(T·K, *s_y)``; g ``(T·K, *s_x)``.
"""

from __future__ import annotations

import math
import operator
import string
from typing import Any, NamedTuple, Optional

import torch
import torch.fx
from torch import Tensor, nn

from ..errors import UnsupportedLayerError
from ._rows import per_sample
from .functional import bind
from .merge import _sum_to


def _with_rows(v: Tensor, f: Tensor, fn, rows: bool) -> Tensor:
    """``fn(v, f)`` for folded rows ``v (T·K, *s)``; ``f`` has a row dimension (``rows``: ``(T or 1, …)``,
    paired with each row's ``K`` cotangents) or broadcasts over the rows as it is."""
    if not rows:
        return fn(v, f)
    out = fn(per_sample(v, f.shape[0]), f.unsqueeze(1))
    return out.reshape(v.shape[0], *out.shape[2:])


# ------------------------------------------------------------------------------------------------ softmax


class SoftmaxTape(NamedTuple):
    s: Tensor  # (T, *s): softmax(x) along dim, in the autograd graph
    dim: int  # >= 1


class SoftmaxRule:
    """``softmax(x, dim)`` / ``log_softmax(x, dim)`` over a dim ``>= 1`` (``torch.``, ``F.`` and the tensor
    method; ``dtype`` only ``None`` or ``x``'s own). Reverse: softmax ``g = s ⊙ (v − Σ_dim v ⊙ s)``, log_softmax
    ``g = v − s · Σ_dim v``. Shapes: x, y ``(T, *s)``; v, g ``(T·K, *s)``."""

    def __init__(self, log: bool, names: tuple[str, ...] = ("input", "dim", "dtype")):
        self.log, self.names = log, names
        self.name = "log_softmax" if log else "softmax"

    def _bound(self, args, kwargs):
        return bind(args, kwargs, self.names, {"dim": None, "dtype": None, "_stacklevel": 3})

    def inputs(self, args, kwargs) -> list:
        return [self._bound(args, kwargs)["input"]]

    def _dim(self, b) -> int:
        x, dim = b["input"], b["dim"]
        if dim is None:
            raise UnsupportedLayerError(f"{self.name} without dim (the implicit legacy dim); pass dim, e.g. dim=-1.")
        if dim % x.dim() == 0:
            raise UnsupportedLayerError(
                f"{self.name}(dim={dim}) normalises across the batch dimension; use a dim >= 1.")
        if b["dtype"] not in (None, x.dtype):
            raise UnsupportedLayerError(
                f"{self.name}(dtype={b['dtype']}) casts {x.dtype}; only dtype=None is supported.")
        return dim % x.dim()

    def forward(self, call, args, kwargs) -> Tensor:
        return self.trace(call, args, kwargs, None)[0]

    def trace(self, call, args, kwargs, live) -> tuple[Tensor, SoftmaxTape]:
        b = self._bound(args, kwargs)
        dim = self._dim(b)
        y = torch.log_softmax(b["input"], dim) if self.log else torch.softmax(b["input"], dim)
        return y, SoftmaxTape(y.exp() if self.log else y, dim)

    def reverse(self, v: Tensor, tape: SoftmaxTape) -> list[Optional[Tensor]]:
        d = tape.dim

        def vjp(rows, s):  # rows (T, K, *s), s (T, 1, *s): dim d is d + 1 here
            if self.log:
                return rows - s * rows.sum(d + 1, keepdim=True)
            return s * (rows - (rows * s).sum(d + 1, keepdim=True))

        return [_with_rows(v, tape.s, vjp, rows=True)]


_SOFTMAX, _LOG_SOFTMAX = SoftmaxRule(False), SoftmaxRule(True)


class Softmax(nn.Softmax):
    """``nn.Softmax(dim)`` (timm's Swin keeps one as a module) with :class:`SoftmaxRule`'s reverse, side by side.
    Shapes: x, y ``(T, *s)``; v, g ``(T·K, *s)``."""

    reverse_label = "SoftmaxJacobian"

    def trace(self, x: Tensor) -> tuple[Tensor, SoftmaxTape]:
        return _SOFTMAX.trace(None, (x, self.dim), {}, (True,))

    def reverse(self, v: Tensor, tape: SoftmaxTape) -> Tensor:
        return _SOFTMAX.reverse(v, tape)[0]


class LogSoftmax(nn.LogSoftmax):
    """``nn.LogSoftmax(dim)`` with :class:`SoftmaxRule`'s reverse. Shapes as :class:`Softmax`."""

    reverse_label = "LogSoftmaxJacobian"

    def trace(self, x: Tensor) -> tuple[Tensor, SoftmaxTape]:
        return _LOG_SOFTMAX.trace(None, (x, self.dim), {}, (True,))

    def reverse(self, v: Tensor, tape: SoftmaxTape) -> Tensor:
        return _LOG_SOFTMAX.reverse(v, tape)[0]


# ------------------------------------------------------------------------------------------------ products


def _transposed(t: Tensor) -> Tensor:
    return t.transpose(-2, -1)


class MatmulTape(NamedTuple):
    operands: tuple[Tensor, Tensor]  # a, b as traced
    live: tuple[bool, bool]
    out_dim: int  # y.dim()


class MatmulRule:
    """``a @ b`` (``torch.matmul``, ``operator.matmul``, ``Tensor.matmul``; ``torch.bmm``, ``Tensor.bmm``) with
    the rows first: an operand that depends on the input is ``(T, …, n, k)`` with ``y``'s rank (its leading
    dims may broadcast against the other's, e.g. ``(T, H, n, k) @ (T, 1, k, m)``); a constant is any matrix
    ``(…, k, m)`` (a parameter ``(k, m)``: ``y = a @ W``). The second operand, if it depends on the input, is at
    least 3-D (a 2-D one would contract its rows). 1-D operands are refused.
    Reverse: ``g_a = v @ bᵀ``, ``g_b = aᵀ @ v`` (summed over broadcast dims), with per-row operands paired to
    their rows. Shapes: a ``(T, …, n, k)``, b ``(T, …, k, m)`` or ``(k, m)``; v ``(T·K, …, n, m)``."""

    def __init__(self, names: tuple[str, str] = ("input", "other")):
        self.names = names

    def inputs(self, args, kwargs) -> list:
        b = bind(args, kwargs, self.names, {})
        return [b[self.names[0]], b[self.names[1]]]

    def forward(self, call, args, kwargs) -> Tensor:
        return call(*args, **kwargs)

    def trace(self, call, args, kwargs, live) -> tuple[Tensor, MatmulTape]:
        a, b = self.inputs(args, kwargs)
        if not (isinstance(a, Tensor) and isinstance(b, Tensor)) or a.dim() < 2 or b.dim() < 2:
            raise UnsupportedLayerError(
                "matmul with a 1-D (or non-tensor) operand; use matrices (T, …, n, k) @ (…, k, m).")
        y = call(*args, **kwargs)
        if (live[0] and a.dim() != y.dim()) or (live[1] and (b.dim() < 3 or b.dim() != y.dim())):
            raise UnsupportedLayerError(
                f"matmul of {tuple(a.shape)} and {tuple(b.shape)} broadcasts or contracts an input-dependent operand "
                "across the batch dimension; keep dim 0 the batch of every such operand (and of the result).")
        return y, MatmulTape((a, b), tuple(live), y.dim())

    def reverse(self, v: Tensor, tape: MatmulTape) -> list[Optional[Tensor]]:
        (a, b), (live_a, live_b) = tape.operands, tape.live
        rows = lambda f: tape.out_dim >= 3 and f.dim() == tape.out_dim  # noqa: E731  f has rows (T or 1, …)
        ga = gb = None
        if live_a:
            ga = _sum_to(_with_rows(v, b, lambda r, f: r @ _transposed(f), rows(b)), tuple(a.shape[1:]))
        if live_b:
            gb = _sum_to(_with_rows(v, a, lambda r, f: _transposed(f) @ r, rows(a)), tuple(b.shape[1:]))
        return [ga, gb]


class EinsumTape(NamedTuple):
    terms: tuple[str, ...]  # the subscripts of each operand
    out: str  # the output subscripts; out[0] is the batch letter
    operands: tuple[Tensor, ...]  # as traced
    live: tuple[bool, ...]


class EinsumRule:
    """``torch.einsum(equation, *operands)`` (or a list of operands) with an explicit ``->``, no ``...`` and no
    repeated letter within a term, whose output and every input-dependent operand start with the same batch
    letter (``'bhqd,bhkd->bhqk'``, ``'bqd,bkd->bqk'``); constant operands (weights) must not use it.
    Reverse: operand ``i`` gets ``einsum(v, the other operands -> term i)`` (letters only in term ``i`` are
    broadcast back, size-1 broadcasts summed). Shapes: operands ``(T, …)``, y ``(T, …)``, v ``(T·K, …)``."""

    def _parts(self, args, kwargs) -> tuple[str, list]:
        if kwargs or not args or not isinstance(args[0], str):
            raise UnsupportedLayerError(
                "einsum needs a string equation and operands (the sublist form is not supported).")
        ops = list(args[1]) if len(args) == 2 and isinstance(args[1], (list, tuple)) else list(args[1:])
        return args[0], ops

    def inputs(self, args, kwargs) -> list:
        return self._parts(args, kwargs)[1]

    def forward(self, call, args, kwargs) -> Tensor:
        return call(*args, **kwargs)

    @staticmethod
    def _parse(equation: str, count: int) -> tuple[tuple[str, ...], str]:
        eq = equation.replace(" ", "")
        terms = tuple(eq.split("->")[0].split(","))
        out = eq.split("->")[1] if "->" in eq else ""
        if "->" not in eq or "." in eq or len(terms) != count or any(len(set(t)) != len(t) for t in (*terms, out)):
            raise UnsupportedLayerError(
                f"einsum '{equation}': revnet supports an explicit '->', no '...' and no repeated index in a term.")
        return terms, out

    def trace(self, call, args, kwargs, live) -> tuple[Tensor, EinsumTape]:
        equation, ops = self._parts(args, kwargs)
        terms, out = self._parse(equation, len(ops))
        batch = out[:1]
        if any((on and (not batch or t[0] != batch)) or (not on and batch and batch in t) for t, on in zip(terms, live)):
            raise UnsupportedLayerError(
                f"einsum '{equation}' does not keep one batch index first in the output and in every input-dependent "
                "operand (and out of the constant ones), e.g. 'bqd,bkd->bqk'.")
        return call(*args, **kwargs), EinsumTape(terms, out, tuple(ops), tuple(live))

    @staticmethod
    def _one(v: Tensor, tape: EinsumTape, i: int) -> Tensor:
        terms, out = tape.terms, tape.out
        rows = tape.operands[i].shape[0]
        k = next(c for c in string.ascii_letters if c not in "".join((*terms, out)))  # the cotangent index
        others = [j for j in range(len(terms)) if j != i]
        known = set(out).union(*(terms[j] for j in others))
        target = terms[i]
        reached = "".join(c for c in target if c in known)
        eq = ",".join([f"{out[0]}{k}{out[1:]}", *(terms[j] for j in others)]) + f"->{out[0]}{k}{reached[1:]}"
        g = torch.einsum(eq, per_sample(v, rows), *(tape.operands[j] for j in others))
        for pos, c in enumerate(target):  # indices summed inside operand i alone: broadcast back
            if c not in known:
                g = g.unsqueeze(pos + 1)
        shape = tape.operands[i].shape
        g = g.expand(*g.shape[:2], *(n if m == 1 else m for n, m in zip(shape[1:], g.shape[2:])))
        g = g.reshape(v.shape[0], *g.shape[2:])
        return _sum_to(g, tuple(shape[1:]))

    def reverse(self, v: Tensor, tape: EinsumTape) -> list[Optional[Tensor]]:
        return [self._one(v, tape, i) if on else None for i, on in enumerate(tape.live)]


# ------------------------------------------------------------------------------------------------ SDPA


def attention_bias(q: Tensor, k: Tensor, attn_mask: Optional[Tensor], is_causal: bool) -> Optional[Tensor]:
    """The additive bias of the scores ``(…, L, S)``: ``−inf`` where a bool mask is False or above the causal
    diagonal (``tril``, top-left aligned as torch's), a float mask as it is; ``None`` without a mask."""
    if is_causal:
        allowed = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
        return torch.zeros(allowed.shape, dtype=q.dtype, device=q.device).masked_fill(~allowed, -math.inf)
    if attn_mask is None:
        return None
    if attn_mask.dtype == torch.bool:
        return torch.zeros(attn_mask.shape, dtype=q.dtype, device=q.device).masked_fill(~attn_mask, -math.inf)
    return attn_mask.to(q.dtype)


def attention_weights(q: Tensor, k: Tensor, scale: float, bias: Optional[Tensor]) -> Tensor:
    """``P = softmax(q kᵀ·scale + bias)`` over the keys, ``(…, L, S)``; rows whose every key is masked are 0
    (torch's math backend does the same), kept free of NaNs for second-order gradients."""
    root = math.sqrt(abs(scale))  # torch's math backend scales q and k by √|scale| each (q by −√|scale| if < 0)
    scores = (q * math.copysign(root, scale)) @ _transposed(k * root)
    if bias is None:
        return torch.softmax(scores, -1)
    blocked = torch.isneginf(bias).all(-1, keepdim=True)
    return torch.softmax(scores + bias.masked_fill(blocked, 0.0), -1).masked_fill(blocked, 0.0)


class SDPATape(NamedTuple):
    q: Tensor  # (T, …, L, E), as traced
    k: Tensor  # (T, …, S, E)
    v: Tensor  # (T, …, S, Ev)
    p: Tensor  # (T, …, L, S): the attention weights, in the autograd graph
    scale: float
    live: tuple[bool, bool, bool]


class SDPARule:
    """``F.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None)``
    as one rule: ``P = softmax(q kᵀ·scale + bias)``, ``out = P v`` with ``scale = 1/√E`` by default. The bias
    comes from a constant ``attn_mask`` broadcastable to ``(T, …, L, S)``: a bool mask sets ``−inf`` where it is
    False (attend where True), a float mask is added; ``is_causal=True`` lets query ``i`` attend keys ``j ≤ i``.
    Rows with every key masked give 0, as torch's math backend. Refused: ``dropout_p > 0`` (always applied by
    the function; modules pass ``dropout_p=0`` in eval mode), ``enable_gqa=True``, a mask with ``is_causal``, a
    mask that depends on the input, and operands whose dims before the last two differ.
    Forward: the decomposition above, bit for bit torch's math backend (``q`` and ``k`` each scaled by √scale);
    torch's default CPU kernel differs from it by ≤ 1.3e-15 (float64) and ≤ 7e-7 (float32) of ``max |out|``.
    Reverse: ``g_v = Pᵀ v_o``, ``g_P = v_o vᵀ``, ``g_S = P ⊙ (g_P − Σ_S g_P ⊙ P)``, ``g_q = scale·g_S k``,
    ``g_k = scale·g_Sᵀ q``. Shapes: q ``(T, …, L, E)``, k ``(T, …, S, E)``, v ``(T, …, S, Ev)``,
    out ``(T, …, L, Ev)``; cotangents ``(T·K, …)``."""

    names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
    defaults = {"attn_mask": None, "dropout_p": 0.0, "is_causal": False, "scale": None, "enable_gqa": False}

    def _bound(self, args, kwargs):
        return bind(args, kwargs, self.names, self.defaults)

    def inputs(self, args, kwargs) -> list:
        b = self._bound(args, kwargs)
        return [b["query"], b["key"], b["value"], b["attn_mask"]]

    def _attend(self, b) -> tuple[Tensor, Tensor, float]:
        q, k, v, mask = b["query"], b["key"], b["value"], b["attn_mask"]
        if b["dropout_p"] > 0:
            raise UnsupportedLayerError(
                f"scaled_dot_product_attention(dropout_p={b['dropout_p']}) drops at random; pass dropout_p=0.0 "
                "(e.g. dropout_p=self.p if self.training else 0.0, in eval mode).")
        if b["enable_gqa"]:
            raise UnsupportedLayerError("scaled_dot_product_attention(enable_gqa=True) is not supported.")
        if b["is_causal"] and mask is not None:
            raise UnsupportedLayerError(
                "scaled_dot_product_attention with both attn_mask and is_causal=True; pass one.")
        if not (q.dim() >= 3 and q.shape[:-2] == k.shape[:-2] == v.shape[:-2]):
            raise UnsupportedLayerError(
                f"scaled_dot_product_attention of q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}: revnet "
                "needs (T, …, L, E) operands with the same dims before the last two.")
        scale = 1.0 / math.sqrt(q.shape[-1]) if b["scale"] is None else float(b["scale"])
        p = attention_weights(q, k, scale, attention_bias(q, k, mask, b["is_causal"]))
        return p @ v, p, scale

    def forward(self, call, args, kwargs) -> Tensor:
        return self._attend(self._bound(args, kwargs))[0]

    def trace(self, call, args, kwargs, live) -> tuple[Tensor, SDPATape]:
        if live[3]:
            raise UnsupportedLayerError("scaled_dot_product_attention with an attn_mask that depends on the input; "
                                        "only constant masks are supported.")
        b = self._bound(args, kwargs)
        y, p, scale = self._attend(b)
        return y, SDPATape(b["query"], b["key"], b["value"], p, scale, tuple(live[:3]))

    def reverse(self, v: Tensor, tape: SDPATape) -> list[Optional[Tensor]]:
        rows, one = tape.p.shape[0], lambda t: t.unsqueeze(1)  # per row: (T, K, …) against (T, 1, …)
        vo = per_sample(v, rows)
        p, q, k = one(tape.p), one(tape.q), one(tape.k)
        fold = lambda g: g.reshape(v.shape[0], *g.shape[2:])  # noqa: E731
        gv = fold(_transposed(p) @ vo) if tape.live[2] else None
        gs = vo @ _transposed(one(tape.v))  # g_P
        gs = p * (gs - (gs * p).sum(-1, keepdim=True))
        gq = fold(tape.scale * (gs @ k)) if tape.live[0] else None
        gk = fold(tape.scale * (_transposed(gs) @ q)) if tape.live[1] else None
        return [gq, gk, gv, None]


# ------------------------------------------------------------------------------------------------ nn.MultiheadAttention


class MultiheadAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` as self-attention, ``batch_first=True``: ``attn(x, x, x, need_weights=False)``
    (or ``need_weights=True``: the weights, averaged over heads unless ``average_attn_weights=False``, may be
    used too). Not a leaf: torch.fx traces through this forward, which is written in reversible ops (``x @ Wᵀ``
    with the packed in-projection, ``view``, indexing, ``einsum``, ``softmax``, ``einsum``, the out-projection),
    so ``revnet.convert`` reverses it with those rules and no tuple-valued node reaches the graph.

    Refused (one line, at conversion): ``batch_first=False``, ``kdim``/``vdim`` other than ``embed_dim``,
    ``add_bias_kv``, ``add_zero_attn``; (at the call) key or value other than the query tensor, masks
    (``key_padding_mask``, ``attn_mask``, ``is_causal``), non-3-D input, and dropout > 0 in training mode.

    Forward vs torch, measured on the CPU (embed_dim 8–64, 2–8 heads, with and without bias), as a fraction of
    ``max |out|``: torch's Python path (with grad) ≤ 5e-16 (float64), ≤ 3e-7 (float32); its native fast path
    (eval mode without grad, ``torch._native_multi_head_attention``) ≤ 4e-16 (float64), ≤ 3e-7 (float32).
    Tolerance: ``rtol = atol = 1e-12`` in float64, ``1e-5`` in float32.

    Shapes: x ``(N, L, E)``; output ``(N, L, E)``; weights ``(N, L, L)`` or ``(N, H, L, L)``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._check_supported()

    def _check_supported(self) -> None:
        unsupported = [name for name, bad in (
            ("batch_first=False", not self.batch_first),
            ("kdim/vdim other than embed_dim", not self._qkv_same_embed_dim),
            ("add_bias_kv=True", self.bias_k is not None),
            ("add_zero_attn=True", self.add_zero_attn)) if bad]
        if unsupported:
            raise UnsupportedLayerError(f"MultiheadAttention with {', '.join(unsupported)} is not supported; revnet "
                                        "converts batch_first self-attention with the packed in-projection.")

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Optional[Tensor] = None,
                need_weights: bool = True, attn_mask: Optional[Tensor] = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[Tensor, Optional[Tensor]]:
        self._check_supported()
        refused = [name for name, bad in (
            ("key or value other than the query tensor", key is not query or value is not query),
            ("key_padding_mask", key_padding_mask is not None), ("attn_mask", attn_mask is not None),
            ("is_causal=True", is_causal),
            (f"dropout={self.dropout} in training mode", self.training and self.dropout > 0),
            ("non-3-D input", not isinstance(query, torch.fx.Proxy) and query.dim() != 3)) if bad]
        if refused:
            raise UnsupportedLayerError(f"MultiheadAttention called with {', '.join(refused)}; revnet supports "
                                        "attn(x, x, x) self-attention without masks (and dropout only in eval mode).")
        n, length, heads = query.size(0), query.size(1), self.num_heads
        qkv = torch.matmul(query, self.in_proj_weight.t())
        if self.in_proj_bias is not None:
            qkv = qkv + self.in_proj_bias
        qkv = qkv.view(n, length, 3, heads, self.head_dim)  # (N, L, 3, H, D): q, k, v, heads in embed order
        q, k, v = qkv[:, :, 0] * (1.0 / math.sqrt(self.head_dim)), qkv[:, :, 1], qkv[:, :, 2]
        weights = torch.einsum("blhd,bmhd->bhlm", q, k).softmax(-1)  # (N, H, L, L)
        out = torch.einsum("bhlm,bmhd->blhd", weights, v).reshape(n, length, self.embed_dim)
        out = torch.matmul(out, self.out_proj.weight.t())
        if self.out_proj.bias is not None:
            out = out + self.out_proj.bias
        if not need_weights:
            return out, None
        return out, weights.mean(1) if average_attn_weights else weights


# ------------------------------------------------------------------------------------------------ tables

SOFTMAX, LOG_SOFTMAX = SoftmaxRule(False), SoftmaxRule(True)
F_NAMES = ("input", "dim", "_stacklevel", "dtype")
MATMUL, BMM, EINSUM, SDPA = MatmulRule(), MatmulRule(("input", "mat2")), EinsumRule(), SDPARule()

ATTENTION_COUNTERPARTS: dict = {MultiheadAttention: nn.MultiheadAttention, Softmax: nn.Softmax,
                               LogSoftmax: nn.LogSoftmax}
ATTENTION_RULES: dict = {
    torch.softmax: SOFTMAX, nn.functional.softmax: SoftmaxRule(False, F_NAMES),
    torch.log_softmax: LOG_SOFTMAX, nn.functional.log_softmax: SoftmaxRule(True, F_NAMES),
    torch.matmul: MATMUL, operator.matmul: MATMUL, torch.bmm: BMM, torch.einsum: EINSUM,
    nn.functional.scaled_dot_product_attention: SDPA,
}
ATTENTION_METHOD_RULES: dict = {"softmax": SOFTMAX, "log_softmax": LOG_SOFTMAX, "matmul": MATMUL, "bmm": BMM}
