"""Reverse rules for functions and tensor methods that appear in traced models (``torch.fx`` nodes).

A rule is a small stateless object with four methods (the function-level twin of a layer's trace/reverse)::

    inputs(args, kwargs) -> list             # the arguments whose cotangents reverse returns, in order
    forward(call, args, kwargs) -> y         # the plain result, never in place
    trace(call, args, kwargs, live) -> (y, tape)
    reverse(v, tape) -> [g, ...]             # one cotangent (or None) per inputs() entry, on folded rows

``call`` runs the original function (out of place); ``live`` says which ``inputs()`` depend on the network
input (the others are constants and get no cotangent). Rows follow :mod:`revnet.layers._rows`: ``v`` is
``(M, *y.shape[1:])`` with ``M = N·K``; per-sample tape tensors have ``N`` rows.

This module holds the rules that reuse a layer (``F.relu`` is ``ReLU``, ``F.max_pool2d`` is ``MaxPool2d``, …),
the reshapes (``flatten``, ``view``, ``reshape``, …), basic indexing (``x[:, :3]``) and the reductions over non-batch dimensions (``mean``,
``sum``). :mod:`revnet.layers.merge` holds ``add``, ``mul``/``div`` and ``cat``.
"""

from __future__ import annotations

import operator
from typing import Any, Callable, NamedTuple, Optional, Sequence

import torch
from torch import Tensor, nn

from ..errors import UnsupportedLayerError
from ._rows import fold_k, unfold_k
from .activation import Hardtanh, LeakyReLU, ReLU, ReLU6
from .pooling import AdaptiveAvgPool2d, AvgPool2d, MaxPool2d
from .smooth import ELU, GELU, Sigmoid, SiLU, Softplus, Tanh


def bind(args: Sequence[Any], kwargs: dict[str, Any], names: Sequence[str], defaults: dict[str, Any]) -> dict[str, Any]:
    """Name the arguments of a call: ``args`` by position in ``names``, then ``kwargs``, then ``defaults``."""
    if len(args) > len(names):
        raise UnsupportedLayerError(f"too many positional arguments ({len(args)}) for ({', '.join(names)}).")
    bound = dict(defaults)
    bound.update(zip(names, args))
    unknown = set(kwargs) - set(names)
    if unknown:
        raise UnsupportedLayerError(f"unsupported keyword arguments {sorted(unknown)} (supported: {', '.join(names)}).")
    bound.update(kwargs)
    return bound


class LayerRuleTape(NamedTuple):
    layer: nn.Module  # the stateless layer the call amounts to
    entry: Any  # its tape


class LayerRule:
    """A function that amounts to a stateless revnet layer: ``F.relu(x)`` is ``ReLU()(x)`` and so on.

    ``make(bound)`` builds the layer from the named arguments; the first name is the tensor input.
    ``inplace=True`` is accepted: the layer computes out of place (the graph refuses in-place calls whose input
    is read again later, where the two would differ).
    """

    def __init__(self, names: Sequence[str], defaults: dict[str, Any], make: Callable[[dict[str, Any]], nn.Module]):
        self.names, self.defaults, self.make = tuple(names), dict(defaults), make

    def _bound(self, args, kwargs) -> dict[str, Any]:
        return bind(args, kwargs, self.names, self.defaults)

    def inputs(self, args, kwargs) -> list:
        return [self._bound(args, kwargs)[self.names[0]]]

    def inplace(self, args, kwargs) -> bool:
        return bool(self._bound(args, kwargs).get("inplace", False))

    def forward(self, call, args, kwargs) -> Tensor:
        bound = self._bound(args, kwargs)
        return self.make(bound)(bound[self.names[0]])

    def trace(self, call, args, kwargs, live) -> tuple[Tensor, LayerRuleTape]:
        bound = self._bound(args, kwargs)
        layer = self.make(bound)
        y, entry = layer.trace(bound[self.names[0]])
        return y, LayerRuleTape(layer, entry)

    def reverse(self, v: Tensor, tape: LayerRuleTape) -> list[Optional[Tensor]]:
        return [tape.layer.reverse(v, tape.entry)]


def _max_pool(b):
    if b["return_indices"]:
        raise UnsupportedLayerError("F.max_pool2d(return_indices=True) has no reverse; drop return_indices.")
    return MaxPool2d(b["kernel_size"], b["stride"], b["padding"], b["dilation"], ceil_mode=b["ceil_mode"])


_POOL_NAMES = ("input", "kernel_size", "stride", "padding")
_UNARY = (("input",), {})
_INPLACE = (("input", "inplace"), {"inplace": False})

LAYER_RULES: dict[Any, LayerRule] = {
    torch.relu: LayerRule(*_UNARY, lambda b: ReLU()),
    nn.functional.relu: LayerRule(*_INPLACE, lambda b: ReLU()),
    nn.functional.leaky_relu: LayerRule(
        ("input", "negative_slope", "inplace"), {"negative_slope": 0.01, "inplace": False},
        lambda b: LeakyReLU(b["negative_slope"])),
    nn.functional.hardtanh: LayerRule(
        ("input", "min_val", "max_val", "inplace"), {"min_val": -1.0, "max_val": 1.0, "inplace": False},
        lambda b: Hardtanh(b["min_val"], b["max_val"])),
    nn.functional.relu6: LayerRule(*_INPLACE, lambda b: ReLU6()),
    torch.sigmoid: LayerRule(*_UNARY, lambda b: Sigmoid()),
    nn.functional.sigmoid: LayerRule(*_UNARY, lambda b: Sigmoid()),
    torch.tanh: LayerRule(*_UNARY, lambda b: Tanh()),
    nn.functional.tanh: LayerRule(*_UNARY, lambda b: Tanh()),
    nn.functional.gelu: LayerRule(("input", "approximate"), {"approximate": "none"}, lambda b: GELU(b["approximate"])),
    nn.functional.silu: LayerRule(*_INPLACE, lambda b: SiLU()),
    nn.functional.elu: LayerRule(("input", "alpha", "inplace"), {"alpha": 1.0, "inplace": False},
                                 lambda b: ELU(b["alpha"])),
    nn.functional.softplus: LayerRule(("input", "beta", "threshold"), {"beta": 1.0, "threshold": 20.0},
                                      lambda b: Softplus(b["beta"], b["threshold"])),
    nn.functional.max_pool2d: LayerRule(
        (*_POOL_NAMES, "dilation", "ceil_mode", "return_indices"),
        {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False, "return_indices": False}, _max_pool),
    nn.functional.avg_pool2d: LayerRule(
        (*_POOL_NAMES, "ceil_mode", "count_include_pad", "divisor_override"),
        {"stride": None, "padding": 0, "ceil_mode": False, "count_include_pad": True, "divisor_override": None},
        lambda b: AvgPool2d(b["kernel_size"], b["stride"], b["padding"], b["ceil_mode"], b["count_include_pad"],
                            b["divisor_override"])),
    nn.functional.adaptive_avg_pool2d: LayerRule(("input", "output_size"), {},
                                                 lambda b: AdaptiveAvgPool2d(b["output_size"])),
}

# Tensor methods (fx ``call_method`` nodes, by name): the tensor is the first argument.
LAYER_METHOD_RULES: dict[str, LayerRule] = {
    "relu": LayerRule(*_UNARY, lambda b: ReLU()),
    "relu_": LayerRule(*_UNARY, lambda b: ReLU()),
    "sigmoid": LayerRule(*_UNARY, lambda b: Sigmoid()),
    "tanh": LayerRule(*_UNARY, lambda b: Tanh()),
}


class ReshapeTape(NamedTuple):
    in_shape: tuple[int, ...]  # x.shape (all of it)
    out_rows: int  # y.shape[0]


class ReshapeRule:
    """Any reshape (``flatten``, ``view``, ``reshape``, ``squeeze``, ``unflatten``, …). If it keeps the first
    dimension, the reverse reshapes the rows back to ``(M, *x.shape[1:])``; if it folds or splits the first
    dimension (Swin's windows folded into the batch), the ``K`` cotangents are unfolded first
    (:func:`revnet.layers._rows.unfold_k`) so that each is reshaped as a whole."""

    def inputs(self, args, kwargs) -> list:
        return [args[0] if args else kwargs["input"]]

    def forward(self, call, args, kwargs) -> Tensor:
        return call(*args, **kwargs)

    def trace(self, call, args, kwargs, live) -> tuple[Tensor, ReshapeTape]:
        x = self.inputs(args, kwargs)[0]
        y = call(*args, **kwargs)
        if y.dim() == 0:
            raise UnsupportedLayerError(f"a reshape from {tuple(x.shape)} to a scalar mixes the samples.")
        return y, ReshapeTape(tuple(x.shape), y.shape[0])

    def reverse(self, v: Tensor, tape: ReshapeTape) -> list[Optional[Tensor]]:
        if tape.out_rows == tape.in_shape[0]:
            return [v.reshape(v.shape[0], *tape.in_shape[1:])]
        g = unfold_k(v, tape.out_rows)
        return [fold_k(g.reshape(g.shape[0], *tape.in_shape))]


class ReduceTape(NamedTuple):
    in_shape: tuple[int, ...]  # x.shape[1:]
    dims: tuple[int, ...]  # the reduced dimensions of x, sorted, all >= 1
    keepdim: bool
    count: int  # elements averaged per output (1 for sum)


class ReduceRule:
    """``mean`` / ``sum`` over non-batch dimensions (e.g. the spatial ``x.mean((2, 3))``); the reverse spreads
    ``v`` back over the reduced dimensions (divided by their size for the mean)."""

    def __init__(self, average: bool):
        self.average = average

    def _bound(self, args, kwargs):
        return bind(args, kwargs, ("input", "dim", "keepdim"), {"dim": None, "keepdim": False})

    def inputs(self, args, kwargs) -> list:
        return [self._bound(args, kwargs)["input"]]

    def forward(self, call, args, kwargs) -> Tensor:
        return call(*args, **kwargs)

    def trace(self, call, args, kwargs, live) -> tuple[Tensor, ReduceTape]:
        b = self._bound(args, kwargs)
        x, dim = b["input"], b["dim"]
        name = "mean" if self.average else "sum"
        if dim is None:
            raise UnsupportedLayerError(f"{name}() over all dimensions mixes the samples; pass dim, e.g. (2, 3).")
        dims = tuple(sorted(d % x.dim() for d in ((dim,) if isinstance(dim, int) else dim)))
        if 0 in dims:
            raise UnsupportedLayerError(f"{name}(dim={dim}) reduces the batch dimension; reduce only dims >= 1.")
        count = 1
        for d in dims:
            count *= x.shape[d]
        return call(*args, **kwargs), ReduceTape(tuple(x.shape[1:]), dims, bool(b["keepdim"]), count if self.average else 1)

    def reverse(self, v: Tensor, tape: ReduceTape) -> list[Optional[Tensor]]:
        g = v
        if not tape.keepdim:
            for d in tape.dims:
                g = g.unsqueeze(d)
        g = g.expand(v.shape[0], *tape.in_shape)
        return [g / tape.count if tape.count != 1 else g]


class IndexTape(NamedTuple):
    in_shape: Any  # x.shape (all of it), or the tuple's length when x is a tuple of tensors
    index: Any  # the basic index (a tuple), or the element's position in the tuple
    out_rows: int  # y.shape[0] (0 for a tuple element)


class IndexRule:
    """``operator.getitem``: an element of a tuple of traced tensors (the outputs of ``chunk``, ``unbind``, a
    ``split``), or basic indexing of a traced tensor (slices, ints, ``None`` and ``...``; no tensor indices),
    e.g. ``x[:, 0]`` (a class token), ``x[:, 1:]`` or ``qkv[0]``. The reverse writes ``v`` into zeros of
    ``x``'s shape, per cotangent (through :func:`revnet.layers._rows.unfold_k` when the index selects along the
    first dimension)."""

    def inputs(self, args, kwargs) -> list:
        return [args[0]]

    def forward(self, call, args, kwargs) -> Tensor:
        return call(*args, **kwargs)

    def trace(self, call, args, kwargs, live) -> tuple[Tensor, IndexTape]:
        x, index = args
        if isinstance(x, (tuple, list)):
            if not isinstance(index, int):
                raise UnsupportedLayerError(f"indexing a tuple of tensors with {index!r}; use one integer.")
            return x[index], IndexTape(len(x), index % len(x), 0)
        index = index if isinstance(index, tuple) else (index,)
        if not all(i is None or i is Ellipsis or isinstance(i, (int, slice)) for i in index):
            raise UnsupportedLayerError(
                f"indexing with {index!r} uses tensor or list indices; revnet reverses basic indexing (slices, "
                "integers, None and ...), e.g. x[:, :3] or x[:, 0].")
        y = call(*args, **kwargs)
        if y.dim() == 0:
            raise UnsupportedLayerError(f"indexing with {index!r} leaves a scalar, which mixes the samples.")
        return y, IndexTape(tuple(x.shape), index, y.shape[0])

    def reverse(self, v: Tensor, tape: IndexTape) -> list[Optional[Tensor]]:
        if isinstance(tape.in_shape, int):  # an element of a tuple: its cotangent, None for the others
            return [[v if i == tape.index else None for i in range(tape.in_shape)]]
        if tape.out_rows == tape.in_shape[0] and _keeps_rows(tape.index):
            g = v.new_zeros(v.shape[0], *tape.in_shape[1:])
            g[tape.index] = v
            return [g]
        vk = unfold_k(v, tape.out_rows)
        g = vk.new_zeros(vk.shape[0], *tape.in_shape)
        g[(slice(None), *tape.index)] = vk
        return [fold_k(g)]


def _keeps_rows(index: tuple) -> bool:
    """Whether ``index`` leaves the first dimension alone (``x[:, …]``, ``x[..., i]`` with more dims after)."""
    used = [i for i in index if i is not None]
    return bool(index) and index[0] is not None and (used[0] == slice(None) or (used[0] is Ellipsis and len(used) > 1))


RESHAPE = ReshapeRule()
RESHAPE_RULES: dict[Any, Any] = {torch.flatten: RESHAPE, torch.reshape: RESHAPE, torch.squeeze: RESHAPE,
                                 torch.unsqueeze: RESHAPE, torch.unflatten: RESHAPE, operator.getitem: IndexRule()}
RESHAPE_METHOD_RULES: dict[str, Any] = {
    "flatten": RESHAPE, "view": RESHAPE, "reshape": RESHAPE, "squeeze": RESHAPE, "unsqueeze": RESHAPE,
    "contiguous": RESHAPE, "unflatten": RESHAPE, "mean": ReduceRule(True), "sum": ReduceRule(False),
}
REDUCE_RULES: dict[Any, ReduceRule] = {torch.mean: ReduceRule(True), torch.sum: ReduceRule(False)}
