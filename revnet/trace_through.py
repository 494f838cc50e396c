"""``TraceThrough``: a whole-function rule for functions hidden from ``torch.fx`` (``torch.fx.wrap``).

Libraries wrap functions whose Python code branches on shapes, so fx records them as one opaque node:
torchvision's ``shifted_window_attention`` and ``_patch_merging_pad`` (Swin). ``TraceThrough`` reverses such a
node by running the function on the actual tensors under a :class:`torch.overrides.TorchFunctionMode` that
records every torch call reading a traced value, each through its own registered rule (the same rules as a
traced graph, :func:`revnet.registry.rule_for`), and keeping their tapes in order. Shapes are concrete while it
runs, so shape arithmetic and ``if`` on sizes simply execute; calls that read no traced value (masks built
from ``x.new_zeros``, parameter arithmetic) run as they are. The reverse walks the recorded calls backwards,
summing the cotangents of values used twice, exactly as :class:`revnet.Graph` does.

Refused in one line: a call that reads a traced value and has no rule (named), and an in-place call on a traced
value. Register your own wrapped function with ``revnet.register_function(fn, TraceThrough())``.

timm marks the functions and modules its own fx tools must not trace into (``register_notrace_function`` /
``register_notrace_module``); the graph tracer honours both lists (they stay one node) and reverses those nodes
with ``TraceThrough`` unless a rule is registered for them (:func:`hidden_rule`).

Shapes: each traced tensor argument ``(T_i, *s_i)``; the output ``(T, *s)``; v ``(T·K, *s)``; g_i ``(T_i·K, *s_i)``.
"""

from __future__ import annotations

import operator
from typing import Any, NamedTuple, Optional

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from . import registry
from .errors import UnsupportedLayerError

_TENSOR_BASE = torch._C.TensorBase
_VALUE_FREE_METHODS = {"size", "dim", "numel", "nelement", "ndimension", "new_zeros", "new_ones", "new_empty",
                       "new_full", "new_tensor", "type_as", "get_device", "is_contiguous", "is_floating_point",
                       "element_size", "stride"}
_VALUE_FREE_ATTRIBUTES = {"shape", "ndim", "dtype", "device", "is_cuda", "requires_grad", "layout", "is_sparse"}
_VALUE_FREE_FUNCTIONS = {torch.zeros_like, torch.ones_like, torch.empty_like}
_DUNDERS = {"__getitem__": operator.getitem, "__add__": operator.add, "__radd__": operator.add,
            "__sub__": operator.sub, "__mul__": operator.mul, "__rmul__": operator.mul,
            "__truediv__": operator.truediv, "__matmul__": operator.matmul, "__neg__": operator.neg}


class _Call(NamedTuple):
    rule: Any
    entry: Any  # the rule's tape
    sources: tuple[Optional[tuple[str, int, Optional[int]]], ...]  # per slot: ("arg", i, None) / ("call", j, pos)
    outputs: int  # 0 for one tensor, else the length of the tuple it returned


class TraceThroughTape(NamedTuple):
    calls: tuple[_Call, ...]
    output: Optional[tuple[str, int, Optional[int]]]  # where the function's result came from (None: a constant)
    slots: int  # the number of top-level arguments (one cotangent each)


def _name(func: Any) -> str:
    owner = getattr(func, "__self__", None)
    if type(owner).__name__ == "getset_descriptor":
        return owner.__name__
    return getattr(func, "__name__", repr(func))


def _rule_target(func: Any) -> Any:
    """The registry key of an intercepted call: a function itself, a tensor method's name, an operator."""
    name = getattr(func, "__name__", "")
    if getattr(func, "__objclass__", None) is _TENSOR_BASE or getattr(torch.Tensor, name, None) is func:
        return _DUNDERS.get(name, name)
    return func


def _value_free(func: Any) -> bool:
    owner = getattr(func, "__self__", None)
    if type(owner).__name__ == "getset_descriptor":
        return owner.__name__ in _VALUE_FREE_ATTRIBUTES
    return func in _VALUE_FREE_FUNCTIONS or (
        getattr(func, "__objclass__", None) is _TENSOR_BASE and func.__name__ in _VALUE_FREE_METHODS)


class _Recorder(TorchFunctionMode):
    """Runs each torch call; those that read a traced tensor go through their rule's ``trace``."""

    def __init__(self, label: str, live: dict[int, tuple[str, int, Optional[int]]], keep: list):
        super().__init__()
        self.label, self.live, self.keep, self.calls = label, live, keep, []

    def _source(self, value: Any) -> Optional[tuple[str, int, Optional[int]]]:
        return self.live.get(id(value)) if isinstance(value, Tensor) else None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        leaves, _ = tree_flatten((args, kwargs))
        if not any(self._source(t) is not None for t in leaves) or _value_free(func):
            return func(*args, **kwargs)
        target = _rule_target(func)
        rule = registry.rule_for(target)
        if rule is None:
            raise UnsupportedLayerError(
                f"{self.label} calls {_name(func)} on a value that depends on the input, which has no reverse rule "
                "in revnet; add one with revnet.register_function.")
        if _name(func).endswith("_") and not _name(func).endswith("__") or _name(func) == "__setitem__":
            raise UnsupportedLayerError(
                f"{self.label} changes a value that depends on the input in place ({_name(func)}); revnet "
                "reverses out-of-place calls only.")
        slots = rule.inputs(args, kwargs)
        sources = tuple(self._source(s) for s in slots)
        read = {id(s) for s in slots if isinstance(s, Tensor)}
        if any(self._source(t) is not None and id(t) not in read for t in leaves):
            raise UnsupportedLayerError(
                f"{self.label}: {_name(func)} reads a value that depends on the input other than through a tensor "
                "argument its rule reverses.")
        value, entry = rule.trace(func, args, kwargs, tuple(s is not None for s in sources))
        index = len(self.calls)
        if isinstance(value, Tensor):
            self.live[id(value)] = ("call", index, None)
            outputs = 0
        elif isinstance(value, (tuple, list)) and all(isinstance(v, Tensor) for v in value):
            for pos, v in enumerate(value):
                self.live[id(v)] = ("call", index, pos)
            outputs = len(value)
        else:
            raise UnsupportedLayerError(f"{self.label}: {_name(func)} gives {type(value).__name__}, not tensors.")
        self.keep.append(value)  # keeps every recorded tensor alive, so no id() is reused while recording
        self.calls.append(_Call(rule, entry, sources, outputs))
        return value


class TraceThrough:
    """The whole-function rule (see the module docstring). ``label`` names the function in refusals."""

    def __init__(self, label: str = "a traced-through function"):
        self.label = label

    def inputs(self, args, kwargs) -> list:
        return [*args, *kwargs.values()]

    def forward(self, call, args, kwargs) -> Any:
        return call(*args, **kwargs)

    def trace(self, call, args, kwargs, live) -> tuple[Tensor, TraceThroughTape]:
        slots = self.inputs(args, kwargs)
        keep: list = list(slots)
        sources = {id(s): ("arg", i, None) for i, (s, is_live) in enumerate(zip(slots, live))
                   if is_live and isinstance(s, Tensor)}
        recorder = _Recorder(self.label, sources, keep)
        with recorder:
            y = call(*args, **kwargs)
        if not isinstance(y, Tensor):
            raise UnsupportedLayerError(f"{self.label} returns {type(y).__name__}; TraceThrough needs one tensor.")
        return y, TraceThroughTape(tuple(recorder.calls), recorder.live.get(id(y)), len(slots))

    def reverse(self, v: Tensor, tape: TraceThroughTape) -> list[Optional[Tensor]]:
        grads: list[Optional[Tensor]] = [None] * tape.slots
        if tape.output is None:
            return grads
        pending: dict[int, Any] = {}
        _send(tape.output, v, pending, grads, tape.calls)
        for i in range(len(tape.calls) - 1, -1, -1):
            g = pending.pop(i, None)
            if g is None:
                continue
            call = tape.calls[i]
            for source, grad in zip(call.sources, call.rule.reverse(g, call.entry)):
                if source is not None and grad is not None:
                    _send(source, grad, pending, grads, tape.calls)
        return grads


def _send(source: tuple[str, int, Optional[int]], grad: Any, pending: dict[int, Any], grads: list,
          calls: tuple[_Call, ...]) -> None:
    """Add ``grad`` to the cotangent of ``source`` (an argument, a call's output or one element of it)."""
    kind, i, pos = source
    if kind == "arg":
        grads[i] = grad if grads[i] is None else grads[i] + grad
        return
    if pos is None and not isinstance(grad, list):
        pending[i] = grad if i not in pending else pending[i] + grad
        return
    if pos is None:  # a whole tuple's cotangent (a call that reads the tuple)
        parts = grad
    else:
        parts = [None] * calls[i].outputs
        parts[pos] = grad
    old = pending.get(i, [None] * calls[i].outputs)
    pending[i] = [b if a is None else a if b is None else a + b for a, b in zip(old, parts)]


def _timm_fx() -> Any:
    try:
        from timm.layers import _fx
    except ImportError:  # timm is optional (the test extra)
        return None
    return _fx


def hidden_functions() -> tuple:
    """timm's ``get_notrace_functions()``: functions the graph tracer keeps as one node (fx ``autowrap``)."""
    fx_helpers = _timm_fx()
    return tuple(fx_helpers.get_notrace_functions()) if fx_helpers is not None else ()


def is_hidden_module(module: Any) -> bool:
    """Whether ``module`` is of a class timm marks ``register_notrace_module`` (a leaf for the graph tracer)."""
    fx_helpers = _timm_fx()
    return fx_helpers is not None and type(module) in set(fx_helpers.get_notrace_modules())


def hidden_rule(target: Any, label: str) -> Optional[TraceThrough]:
    """The rule of a node the tracer kept whole for timm (a notrace function or module): ``TraceThrough``."""
    if isinstance(target, str):
        return None
    return TraceThrough(label) if target in hidden_functions() or is_hidden_module(target) else None


def _torchvision_wrapped() -> dict[Any, TraceThrough]:
    try:
        from torchvision.models import swin_transformer
    except ImportError:  # pragma: no cover - torchvision is a dependency; kept optional here
        return {}
    return {swin_transformer.shifted_window_attention: TraceThrough("torchvision's shifted_window_attention"),
            swin_transformer._patch_merging_pad: TraceThrough("torchvision's _patch_merging_pad")}


TRACED_THROUGH = _torchvision_wrapped()
for _function, _rule in TRACED_THROUGH.items():
    registry.register_function(_function, _rule)
