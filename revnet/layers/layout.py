"""Layout rules: operations that only move, copy or drop elements of one traced tensor.

``permute``/``transpose``/``swapaxes``/``movedim``, ``expand``/``expand_as``/``repeat``, ``roll``, ``flip``,
``F.pad`` (constant), and the splits ``chunk``/``split``/``unbind``/``tensor_split`` (several outputs), any of
which may move the first dimension (timm's ``qkv.permute(2, 0, 3, 1, 4).unbind(0)``). Each reverse is the
operation's adjoint, applied to the ``K`` cotangents as a batch: ``v (T_y·K, *s_y)`` is unfolded to
``(K, *y.shape)`` (:func:`revnet.layers._rows.unfold_k`), the adjoint acts on the dimensions after the first,
and the result is folded to ``(T_x·K, *s_x)``. The adjoints are linear in ``v`` and use no traced value, so
second-order gradients pass through them exactly.

Shapes: x ``(T_x, *s_x)``; y ``(T_y, *s_y)``; v ``(T_y·K, *s_y)``; g ``(T_x·K, *s_x)``.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import UnsupportedLayerError
from ._rows import fold_k, unfold_k


class LayoutTape(NamedTuple):
    x_shape: tuple[int, ...]  # the input's full shape
    y_rows: tuple[int, ...]  # the first dimension of each output (one entry for a single output)
    adjoint: Callable[[Any], Tensor]  # (K, *y.shape) cotangent(s) -> (K, *x.shape)


def _positive(dims: Sequence[int], rank: int) -> list[int]:
    return [d % rank for d in dims]


def _dims_arg(args: tuple, name: str, kwargs: dict) -> list:
    """The dims given as varargs (``x.permute(2, 0, 1)``) or as one sequence (``x.permute((2, 0, 1))``)."""
    rest = list(args[1:])
    if name in kwargs:
        rest = [kwargs[name]]
    if len(rest) == 1 and isinstance(rest[0], (list, tuple, torch.Size)):
        return list(rest[0])
    return rest


class LayoutRule:
    """One layout operation: ``adjoint_of(x, y, args, kwargs)`` gives the adjoint on ``(K, *y.shape)`` batches."""

    def __init__(self, name: str, adjoint_of: Callable[[Tensor, Any, tuple, dict], Callable[[Any], Tensor]]):
        self.name, self.adjoint_of = name, adjoint_of

    def inputs(self, args, kwargs) -> list:
        return [args[0] if args else kwargs.get("input", kwargs.get("self"))]

    def forward(self, call, args, kwargs) -> Any:
        return call(*args, **kwargs)

    def trace(self, call, args, kwargs, live) -> tuple[Any, LayoutTape]:
        x = self.inputs(args, kwargs)[0]
        y = call(*args, **kwargs)
        outputs = y if isinstance(y, (tuple, list)) else (y,)
        adjoint = self.adjoint_of(x, y, args, kwargs)
        return y, LayoutTape(tuple(x.shape), tuple(o.shape[0] if o.dim() else 0 for o in outputs), adjoint)

    def reverse(self, v: Any, tape: LayoutTape) -> list[Optional[Tensor]]:
        if isinstance(v, (tuple, list)):
            k = _k_of(v, tape.y_rows)
            batched = [unfold_k(g, rows) if g is not None else None for g, rows in zip(v, tape.y_rows)]
            return [fold_k(tape.adjoint((batched, k)))]
        return [fold_k(tape.adjoint(unfold_k(v, tape.y_rows[0])))]


def _k_of(v: Sequence[Optional[Tensor]], rows: Sequence[int]) -> int:
    for g, r in zip(v, rows):
        if g is not None:
            return g.shape[0] // r
    raise UnsupportedLayerError("a split's reverse got no cotangent for any of its outputs.")  # pragma: no cover


def _permute_adjoint(x, y, args, kwargs):
    perm = _positive(_dims_arg(args, "dims", kwargs), x.dim())
    inverse = [perm.index(d) for d in range(x.dim())]
    return lambda g: g.permute(0, *[i + 1 for i in inverse])


def _transpose_adjoint(x, y, args, kwargs):
    a = args[1] if len(args) > 1 else kwargs["dim0"]
    b = args[2] if len(args) > 2 else kwargs["dim1"]
    a, b = _positive([a, b], x.dim())
    return lambda g: g.transpose(a + 1, b + 1)


def _movedim_adjoint(x, y, args, kwargs):
    src = args[1] if len(args) > 1 else kwargs["source"]
    dst = args[2] if len(args) > 2 else kwargs["destination"]
    src, dst = ([src], [dst]) if isinstance(src, int) else (list(src), list(dst))
    src, dst = _positive(src, x.dim()), _positive(dst, x.dim())
    return lambda g: g.movedim([d + 1 for d in dst], [s + 1 for s in src])


def _expand_adjoint(x, y, args, kwargs):
    """``expand``/``expand_as``: sum over the dimensions that were broadcast (and the new leading ones)."""
    lead = y.dim() - x.dim()
    sums = [d for d in range(y.dim()) if d < lead or (x.shape[d - lead] == 1 and y.shape[d] != 1)]

    def adjoint(g):
        if sums:
            g = g.sum([d + 1 for d in sums], keepdim=True)
        return g.reshape(g.shape[0], *x.shape)
    return adjoint


def _repeat_adjoint(x, y, args, kwargs):
    reps = _dims_arg(args, "repeats", kwargs)
    lead = len(reps) - x.dim()
    sizes = [1] * lead + list(x.shape)

    def adjoint(g):
        split = [g.shape[0]] + [n for r, s in zip(reps, sizes) for n in (r, s)]
        g = g.reshape(split).sum([1 + 2 * i for i in range(len(reps))])
        return g.reshape(g.shape[0], *x.shape)
    return adjoint


def _roll_adjoint(x, y, args, kwargs):
    shifts = args[1] if len(args) > 1 else kwargs["shifts"]
    dims = args[2] if len(args) > 2 else kwargs.get("dims")
    if dims is None or (isinstance(dims, (list, tuple)) and not dims):
        return lambda g: g.reshape(g.shape[0], -1).roll(-shifts, 1).reshape(g.shape[0], *x.shape)
    shifts = [shifts] if isinstance(shifts, int) else list(shifts)
    dims = [dims] if isinstance(dims, int) else list(dims)
    return lambda g: g.roll([-s for s in shifts], [d % x.dim() + 1 for d in dims])


def _flip_adjoint(x, y, args, kwargs):
    dims = _dims_arg(args, "dims", kwargs)
    return lambda g: g.flip([d % x.dim() + 1 for d in dims])


def _pad_adjoint(x, y, args, kwargs):
    pad = list(args[1] if len(args) > 1 else kwargs["pad"])
    mode = args[2] if len(args) > 2 else kwargs.get("mode", "constant")
    if mode != "constant":
        raise UnsupportedLayerError(f"F.pad(mode={mode!r}) has no reverse in revnet; only mode='constant' does.")
    # the adjoint of a constant pad by p is a pad by -p with zeros (a crop where it padded, zeros where it cropped)
    return lambda g: F.pad(g, [-p for p in pad])


def _joined(join: Callable[[list, int], Tensor], dim_position: int):
    """The adjoint of a split along ``dim`` (``chunk``/``split``/``tensor_split``: ``torch.cat``; ``unbind``:
    ``torch.stack``): the outputs' cotangents joined again, zeros for the outputs that are not used."""

    def adjoint_of(x, ys, args, kwargs):
        dim = kwargs.get("dim", args[dim_position] if len(args) > dim_position else 0) % x.dim()

        def adjoint(batched_k):
            batched, k = batched_k
            parts = [g if g is not None else torch.zeros(k, *y.shape, dtype=y.dtype, device=y.device)
                     for g, y in zip(batched, ys)]
            return join(parts, dim + 1)
        return adjoint
    return adjoint_of


PERMUTE = LayoutRule("permute", _permute_adjoint)
TRANSPOSE = LayoutRule("transpose", _transpose_adjoint)
MOVEDIM = LayoutRule("movedim", _movedim_adjoint)
EXPAND = LayoutRule("expand", _expand_adjoint)
REPEAT = LayoutRule("repeat", _repeat_adjoint)
ROLL = LayoutRule("roll", _roll_adjoint)
FLIP = LayoutRule("flip", _flip_adjoint)
PAD = LayoutRule("pad", _pad_adjoint)
SPLIT = LayoutRule("split", _joined(torch.cat, 2))
UNBIND = LayoutRule("unbind", _joined(torch.stack, 1))

LAYOUT_RULES: dict = {
    torch.permute: PERMUTE, torch.transpose: TRANSPOSE, torch.swapaxes: TRANSPOSE, torch.movedim: MOVEDIM,
    torch.roll: ROLL, torch.flip: FLIP, F.pad: PAD, torch.chunk: SPLIT, torch.split: SPLIT,
    torch.tensor_split: SPLIT, torch.unbind: UNBIND,
}
LAYOUT_METHOD_RULES: dict = {
    "permute": PERMUTE, "transpose": TRANSPOSE, "swapaxes": TRANSPOSE, "movedim": MOVEDIM, "expand": EXPAND,
    "expand_as": EXPAND, "repeat": REPEAT, "roll": ROLL, "flip": FLIP, "chunk": SPLIT, "split": SPLIT,
    "tensor_split": SPLIT, "unbind": UNBIND,
}

