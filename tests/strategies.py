"""Hypothesis strategies for the per-layer property tests; each returns a :class:`settings.Case`.

Every strategy draws the hyperparameters first (kernel, stride, dilation, padding, ``ceil_mode``, groups that
divide the channel counts, slopes, BatchNorm statistics), then a spatial size of at least ``d(k-1)+1`` (less
only where padding still leaves a non-empty output), then a ``seed`` that feeds a ``torch.Generator`` for the
float64 ``randn`` input. Tensors are never drawn element by element, except the small tie-forcing inputs of
the piecewise layers (ReLU family, MaxPool2d), drawn from ``sampled_from([-1.0, 0.0, 1.0])``.

Limits keep every example small (batch <= 3, channels <= 6, spatial <= 12), so a test runs in milliseconds.
A drawn configuration that torch itself rejects (its forward raises) is discarded with ``reject()``.
"""

from __future__ import annotations

import math

import torch
from hypothesis import reject
from hypothesis import strategies as st
from torch.nn.modules.utils import _pair

import revnet
from settings import Case, Make, load_one

SEEDS = st.integers(0, 2**16 - 1)
TIE_VALUES = st.sampled_from([-1.0, 0.0, 1.0])
MAX_SPATIAL = 12


def int_or_pair(lo: int, hi: int) -> st.SearchStrategy:
    """An int (the same in both dims) or an (h, w) tuple, as torch's 2d layers accept either."""
    ints = st.integers(lo, hi)
    return st.one_of(ints, st.tuples(ints, ints))


def _case(draw, make: Make, shape: tuple[int, ...], *, train: bool = False, ties: bool = False) -> Case:
    """The case for ``make`` on an input of ``shape``: ``randn`` from a drawn seed, or drawn ties."""
    values = "randn"
    if ties:
        n = math.prod(shape)
        values = tuple(draw(st.lists(TIE_VALUES, min_size=n, max_size=n)))
    setting = {"id": f"hyp-{make.cls.__name__.lower()}", "make_layer": make, "input_shape": shape}
    return load_one({**setting, "seed": draw(SEEDS), "train": train, "values": values})


def _reject_if_torch_rejects(make: Make, shape: tuple[int, ...]) -> None:
    """Discard configurations the torch counterpart itself refuses (e.g. an empty ceil_mode output)."""
    try:
        make.torch_module()(torch.zeros(shape, dtype=torch.float64))
    except RuntimeError:
        reject()


def _spatial(draw, min_size: int, hi: int = MAX_SPATIAL) -> int:
    return draw(st.integers(max(1, min_size), max(max(1, min_size), hi)))


@st.composite
def conv2d_cases(draw) -> Case:
    """Conv2d: groups dividing both channel counts, kernel 1..4, dilation 1..3, stride 1..3, padding as
    ints 0..3 (also more than k // 2), "valid", or "same" (then stride 1); bias on/off; non-square inputs."""
    groups = draw(st.sampled_from([1, 2, 3]))
    c_in = groups * draw(st.integers(1, 6 // groups))
    c_out = groups * draw(st.integers(1, 6 // groups))
    kernel = draw(int_or_pair(1, 4))
    dilation = draw(int_or_pair(1, 3))
    padding = draw(st.one_of(int_or_pair(0, 3), st.sampled_from(["valid", "same"])))
    stride = 1 if padding == "same" else draw(int_or_pair(1, 3))
    bias = draw(st.booleans())
    pads = (0, 0) if isinstance(padding, str) else _pair(padding)
    if padding == "same":  # any size works
        sizes = [_spatial(draw, 1) for _ in range(2)]
    else:
        sizes = [_spatial(draw, d * (k - 1) + 1 - 2 * p) for k, d, p in zip(_pair(kernel), _pair(dilation), pads)]
    n = draw(st.integers(1, 3))
    make = Make(
        revnet.Conv2d, c_in, c_out, kernel, stride=stride, padding=padding, dilation=dilation, groups=groups, bias=bias
    )
    return _case(draw, make, (n, c_in, *sizes))


def _pool_padding(draw, kernel) -> object:
    """Padding <= kernel // 2 in each dimension (torch's rule for max and average pooling)."""
    kh, kw = _pair(kernel)
    if isinstance(kernel, int) and draw(st.booleans()):
        return draw(st.integers(0, kernel // 2))
    return (draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2)))


@st.composite
def maxpool2d_cases(draw, ties: bool = False) -> Case:
    """MaxPool2d: kernel 1..4, stride 1..3 or None (= kernel; stride < kernel overlaps), dilation 1..2,
    padding <= k // 2, ceil_mode. ``ties``: a small input with values from {-1, 0, 1}."""
    kernel = draw(int_or_pair(1, 4))
    stride = draw(st.one_of(st.none(), int_or_pair(1, 3)))
    dilation = draw(int_or_pair(1, 2))
    padding = _pool_padding(draw, kernel)
    ceil_mode = draw(st.booleans())
    hi = 6 if ties else 10
    sizes = [_spatial(draw, d * (k - 1) + 1, max(hi, d * (k - 1) + 1)) for k, d in zip(_pair(kernel), _pair(dilation))]
    n, c = draw(st.integers(1, 2 if ties else 3)), draw(st.integers(1, 2 if ties else 4))
    make = Make(revnet.MaxPool2d, kernel, stride=stride, padding=padding, dilation=dilation, ceil_mode=ceil_mode)
    shape = (n, c, *sizes)
    _reject_if_torch_rejects(make, shape)
    return _case(draw, make, shape, ties=ties)


@st.composite
def avgpool2d_cases(draw) -> Case:
    """AvgPool2d: kernel 1..4, stride 1..3 or None, padding <= k // 2, ceil_mode, count_include_pad,
    divisor_override None or 1..6."""
    kernel = draw(int_or_pair(1, 4))
    stride = draw(st.one_of(st.none(), int_or_pair(1, 3)))
    padding = _pool_padding(draw, kernel)
    ceil_mode = draw(st.booleans())
    count_include_pad = draw(st.booleans())
    divisor_override = draw(st.one_of(st.none(), st.integers(1, 6)))
    sizes = [_spatial(draw, k, 10) for k in _pair(kernel)]
    n, c = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    make = Make(
        revnet.AvgPool2d,
        kernel,
        stride=stride,
        padding=padding,
        ceil_mode=ceil_mode,
        count_include_pad=count_include_pad,
        divisor_override=divisor_override,
    )
    shape = (n, c, *sizes)
    _reject_if_torch_rejects(make, shape)
    return _case(draw, make, shape)


@st.composite
def adaptive_avgpool2d_cases(draw) -> Case:
    """AdaptiveAvgPool2d: input 1..10, output an int or a pair with None entries (keep that size), 1..8
    (sizes that do not divide the input, and outputs larger than the input)."""
    sizes = [draw(st.integers(1, 10)) for _ in range(2)]
    out = st.integers(1, 8)
    output_size = draw(st.one_of(out, st.tuples(st.one_of(st.none(), out), st.one_of(st.none(), out))))
    n, c = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    return _case(draw, Make(revnet.AdaptiveAvgPool2d, output_size), (n, c, *sizes))


@st.composite
def linear_cases(draw) -> Case:
    """Linear: D_in, D_out 1..6, bias on/off, 0..2 extra middle dims of size 1..3: x (N, *, D_in)."""
    d_in, d_out = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    bias = draw(st.booleans())
    middle = draw(st.lists(st.integers(1, 3), max_size=2))
    n = draw(st.integers(1, 3))
    return _case(draw, Make(revnet.Linear, d_in, d_out, bias=bias), (n, *middle, d_in))


def _activation_shape(draw, ties: bool) -> tuple[int, ...]:
    """(N, C) or (N, C, L) or (N, C, H, W): channels at dim 1 (PReLU's per-channel slopes)."""
    rest = draw(st.lists(st.integers(1, 4 if ties else 5), max_size=2))
    return (draw(st.integers(1, 2 if ties else 3)), draw(st.integers(1, 4)), *rest)


@st.composite
def relu_cases(draw, ties: bool = False) -> Case:
    inplace = draw(st.booleans())  # accepted and ignored by trace
    return _case(draw, Make(revnet.ReLU, inplace=inplace), _activation_shape(draw, ties), ties=ties)


@st.composite
def leaky_relu_cases(draw, ties: bool = False) -> Case:
    """LeakyReLU with any slope in [-2, 2] (0 and 1 included); ``inplace`` only for slopes >= 0, the
    only ones torch's in-place backward supports."""
    slope = draw(st.one_of(st.sampled_from([0.0, 0.01, 1.0]), st.floats(-2.0, 2.0, allow_nan=False)))
    inplace = draw(st.booleans()) if slope >= 0 else False
    shape = _activation_shape(draw, ties)
    return _case(draw, Make(revnet.LeakyReLU, slope, inplace=inplace), shape, ties=ties)


@st.composite
def prelu_cases(draw, ties: bool = False) -> Case:
    """PReLU with one shared slope or one per channel, slopes drawn from [-2, 2]."""
    shape = _activation_shape(draw, ties)
    num_parameters = draw(st.sampled_from([1, shape[1]]))
    slopes = tuple(draw(st.lists(st.floats(-2.0, 2.0), min_size=num_parameters, max_size=num_parameters)))
    make = Make(revnet.PReLU, num_parameters, state={"weight": slopes})
    return _case(draw, make, shape, ties=ties)


@st.composite
def batchnorm_cases(draw, cls: type) -> Case:
    """BatchNorm1d on (N, C) or (N, C, L), BatchNorm2d on (N, C, H, W); running mean in [-3, 3], running
    variance in [1e-3, 10] (positive), affine on/off with γ, β in [-2, 2], eps, momentum (None: cumulative),
    train or eval mode (train: N >= 2, as torch needs more than one value per channel)."""
    c = draw(st.integers(1, 4))
    affine = draw(st.booleans())
    eps = draw(st.sampled_from([1e-5, 1e-3, 0.1, 1.0]))
    momentum = draw(st.sampled_from([0.1, 0.5, 1.0, None]))
    train = draw(st.booleans())

    def per_channel(lo: float, hi: float) -> tuple[float, ...]:
        return tuple(draw(st.lists(st.floats(lo, hi), min_size=c, max_size=c)))

    state = {"running_mean": per_channel(-3.0, 3.0), "running_var": per_channel(1e-3, 10.0)}
    if affine:
        state.update(weight=per_channel(-2.0, 2.0), bias=per_channel(-2.0, 2.0))
    if cls is revnet.BatchNorm2d:
        spatial = [draw(st.integers(1, 5)) for _ in range(2)]
    else:
        spatial = draw(st.lists(st.integers(1, 5), max_size=1))
    n = draw(st.integers(2 if train else 1, 3))
    make = Make(cls, c, eps=eps, momentum=momentum, affine=affine, state=state)
    return _case(draw, make, (n, c, *spatial), train=train)


@st.composite
def shape_cases(draw) -> Case:
    """Flatten (start/end dims >= 1, given as positive or negative), Unflatten (dim >= 1, sizes with
    at most one -1), Identity; inputs of 2..4 dims with sizes 1..4."""
    kind = draw(st.sampled_from(["flatten", "unflatten", "identity"]))
    n = draw(st.integers(1, 3))
    if kind == "unflatten":
        before = draw(st.lists(st.integers(1, 3), max_size=2))
        sizes = draw(st.lists(st.integers(1, 3), min_size=1, max_size=3))
        after = draw(st.lists(st.integers(1, 3), max_size=1))
        shape = (n, *before, math.prod(sizes), *after)
        dim = 1 + len(before)
        if draw(st.booleans()):
            dim -= len(shape)  # the same dim, counted from the end
        if draw(st.booleans()):
            sizes[draw(st.integers(0, len(sizes) - 1))] = -1
        return _case(draw, Make(revnet.Unflatten, dim, tuple(sizes)), shape)
    shape = (n, *draw(st.lists(st.integers(1, 4), min_size=1, max_size=3)))
    if kind == "identity":
        return _case(draw, Make(revnet.Identity), shape)
    ndim = len(shape)
    start = draw(st.integers(1, ndim - 1))
    end = draw(st.integers(start, ndim - 1))
    start, end = (d - ndim if draw(st.booleans()) else d for d in (start, end))
    return _case(draw, Make(revnet.Flatten, start, end), shape)


@st.composite
def dropout_cases(draw) -> Case:
    """Dropout with p in [0, 1] (0 and 1 included), in train mode (the traced mask) or eval mode (identity)."""
    p = draw(st.one_of(st.sampled_from([0.0, 0.5, 1.0]), st.floats(0.0, 1.0)))
    train = draw(st.booleans())
    shape = (draw(st.integers(1, 3)), *draw(st.lists(st.integers(1, 5), min_size=1, max_size=3)))
    return _case(draw, Make(revnet.Dropout, p), shape, train=train)


@st.composite
def smooth_and_clamp_cases(draw, ties: bool = False) -> Case:
    """The smooth activations (with their options drawn) and the clamps Hardtanh/ReLU6; ``ties`` puts inputs on
    the kinks (ELU at 0, Hardtanh at ±1 with the default range, Softplus' threshold at 0 when drawn so)."""
    kind = draw(st.sampled_from(["sigmoid", "tanh", "gelu", "silu", "elu", "softplus", "hardtanh", "relu6"]))
    if kind == "gelu":
        make = Make(revnet.GELU, approximate=draw(st.sampled_from(["none", "tanh"])))
    elif kind == "elu":
        make = Make(revnet.ELU, alpha=draw(st.floats(0.1, 2.0)))
    elif kind == "softplus":
        make = Make(revnet.Softplus, beta=draw(st.sampled_from([0.5, 1.0, 2.0])),
                    threshold=draw(st.sampled_from([0.0, 1.0, 20.0])))
    elif kind == "hardtanh":
        lo = draw(st.sampled_from([-1.0, -0.5, 0.0]))
        make = Make(revnet.Hardtanh, lo, lo + draw(st.sampled_from([0.5, 1.0, 2.0])))
    else:
        make = Make({"sigmoid": revnet.Sigmoid, "tanh": revnet.Tanh, "silu": revnet.SiLU, "relu6": revnet.ReLU6}[kind])
    return _case(draw, make, _activation_shape(draw, ties), ties=ties)


@st.composite
def modern_cases(draw) -> Case:
    """LayerNorm over the last 1..2 dims (affine, bias, eps drawn), GroupNorm (groups dividing C), Hardswish and
    Hardsigmoid on random values or ties, StochasticDepth (row or batch mode, p drawn) in eval or training mode,
    Softmax and LogSoftmax over a drawn dim >= 1 (positive or negative);
    inputs of 2..4 dims with sizes 1..4 (N ≥ 1)."""
    kind = draw(st.sampled_from(["layernorm", "groupnorm", "hardswish", "hardsigmoid", "stochasticdepth", "softmax",
                                 "logsoftmax"]))
    n = draw(st.integers(1, 3))
    rest = draw(st.lists(st.integers(1, 4), min_size=1, max_size=3))
    shape = (n, *rest)
    if kind == "layernorm":
        k = draw(st.integers(1, len(rest)))
        make = Make(revnet.LayerNorm, tuple(rest[-k:]), eps=draw(st.sampled_from([1e-5, 0.1])),
                    elementwise_affine=draw(st.booleans()), bias=draw(st.booleans()))
        return _case(draw, make, shape)
    if kind == "groupnorm":
        c = draw(st.sampled_from([2, 3, 4, 6]))
        groups = draw(st.sampled_from([g for g in (1, 2, 3, 6) if c % g == 0]))
        make = Make(revnet.GroupNorm, groups, c, affine=draw(st.booleans()))
        spatial = [max(2, rest[1]), *rest[2:]] if len(rest) > 1 else [2]  # more than one value per group
        return _case(draw, make, (n, c, *spatial))
    if kind == "stochasticdepth":
        make = Make(revnet.StochasticDepth, draw(st.sampled_from([0.0, 0.3, 0.7])), draw(st.sampled_from(["row", "batch"])))
        return _case(draw, make, shape, train=draw(st.booleans()))
    if kind in ("softmax", "logsoftmax"):
        cls = revnet.Softmax if kind == "softmax" else revnet.LogSoftmax
        dim = draw(st.integers(1, len(rest)))
        return _case(draw, Make(cls, dim=dim if draw(st.booleans()) else dim - len(shape)), shape)
    cls = revnet.Hardswish if kind == "hardswish" else revnet.Hardsigmoid
    return _case(draw, Make(cls, inplace=draw(st.booleans())), shape, ties=draw(st.booleans()))
