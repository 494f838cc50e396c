"""``revnet.Graph``: the reverse network of any model that ``torch.fx`` can trace (residual adds, ``torch.cat``,
modules called twice, ``torch.flatten`` in Python code).

Conversion copies the model's module tree, re-classing every registered leaf to its reversible class (the
*same* parameter and buffer tensors, so the two share weights and the ``state_dict`` keys are unchanged), and
traces the copy with ``torch.fx.symbolic_trace``-style tracing in which reversible and registered modules are
leaves. Every node is then checked once: a module must be reversible, a function or tensor method must have a
rule in :mod:`revnet.registry`; shape-only nodes (``x.size()``, ``x.shape``, indexing a size) and anything that
does not depend on the input are plain constants.

* ``trace(x)`` runs the nodes in order and keeps **one tape entry per node**, so a module called twice (ResNet's
  ReLU) has two entries.
* ``reverse(v, tape)`` walks the nodes backwards. Each node's reverse returns one cotangent per input; a value
  used by several nodes **sums** the cotangents it receives (``add`` fans a cotangent out, ``cat`` splits it).
* In-place calls (``nn.ReLU(inplace=True)``, ``out += identity``, ``relu_``) run out of place. Where torch's
  in-place semantics would differ (the overwritten value is read again later), conversion refuses the model.

* **One graph per mode.** A forward that branches on ``self.training`` (or passes it on, as torchvision's
  stochastic depth does) is traced twice at conversion, once with every traced-through module in training mode
  and once in eval mode; ``net.train()`` / ``net.eval()`` pick the graph that runs. Both run the same modules,
  parameters and buffers. A tape is reversed by the graph that recorded it.
* **Refused, not silently changed:** module hooks (forward, forward pre-, backward; on any module or global), which
  the tape-based trace would not run; TorchScript and parametrized modules; and, at every ``trace``/``forward``, a
  submodule, parameter or buffer of the *model* replaced after conversion (an identity check per part, no tensor
  work), since the network keeps what it converted. ``load_state_dict``, optimizer steps and ``.to()`` on the
  network keep the same parameter objects and keep working.
* ``forward``'s optional arguments after ``x`` with a ``None``, bool, number or string default are traced at that
  default (fx ``concrete_args``): ``net(x)`` computes ``model(x)``; another required argument is refused.

Shapes as for ``Sequential``: ``x (N, *in) -> y (N, *out)``; ``reverse``: ``(N, *out) -> (N, *in)`` or
``(N, K, *out) -> (N, K, *in)``.
"""

from __future__ import annotations

import copy
import inspect
import operator
import os
import traceback
from typing import Any, Callable, NamedTuple, Optional

import torch
import torch.fx as fx
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.prune import BasePruningMethod
from torch.nn.utils.spectral_norm import SpectralNorm
from torch.nn.utils.weight_norm import WeightNorm

from . import registry
from ._checks import fold_class_rows, layer_input_error
from .errors import ReverseShapeError, RevnetError, TapeMismatchError, UnsupportedLayerError
from .layers import VALUE_FREE_FUNCTIONS, is_reversible
from .layers.protocol import nested_noise, reverse_rows, trace_with
from .trace_through import hidden_functions, hidden_rule, is_hidden_module

_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep  # the separator: torchvision/ is not torch/
_SHAPE_METHODS = {"size", "dim", "numel", "nelement", "ndimension"}
_SHAPE_ATTRIBUTES = {"shape", "ndim", "dtype", "device", "is_cuda", "requires_grad"}
_IN_PLACE_FUNCTIONS = {operator.iadd, operator.isub, operator.imul, operator.itruediv}
_OUT_OF_PLACE = {operator.iadd: operator.add, operator.isub: operator.sub, operator.imul: operator.mul,
                 operator.itruediv: operator.truediv}
_HOW_TO_ADD = ("add a rule with revnet.register_function(fn_or_method_name, rule) for functions and tensor methods, "
               "or revnet.register(ModuleClass, ReversibleClass) for modules")
_HOOKS = (("_forward_pre_hooks", "forward pre-hook"), ("_forward_hooks", "forward hook"),
          ("_backward_pre_hooks", "backward pre-hook"), ("_backward_hooks", "backward hook"))
_GLOBAL_HOOKS = (("_global_forward_pre_hooks", "forward pre-hook", "register_module_forward_pre_hook"),
                 ("_global_forward_hooks", "forward hook", "register_module_forward_hook"),
                 ("_global_backward_pre_hooks", "backward pre-hook", "register_module_full_backward_pre_hook"),
                 ("_global_backward_hooks", "backward hook", "register_module_full_backward_hook"))
_TABLES = {"_modules": "submodule", "_parameters": "parameter", "_buffers": "buffer"}
_FIXED_DEFAULTS = (type(None), bool, int, float, str)  # what fx's concrete_args can fix in a traced forward
_MISSING = object()


class GraphTape(NamedTuple):
    network: int  # id() of the Graph that recorded it
    modules: tuple[int, ...]  # id() of the module of every call_module node, in node order
    entries: tuple[Any, ...]  # one tape per node (None for constants)
    in_shape: torch.Size  # x.shape
    out_shape: torch.Size  # y.shape
    dtype: torch.dtype  # y.dtype
    device: torch.device  # y.device
    training: bool  # the mode whose traced graph recorded it (reverse walks that graph)


class _Step(NamedTuple):
    """One fx node, resolved at conversion: what to run and where its inputs' cotangents go."""

    node: fx.Node
    kind: str  # "input", "default", "attr", "const", "module", "rule", "output"
    live: bool  # depends on the network input
    rule: Any  # the reverse rule ("rule" steps)
    call: Optional[Callable]  # runs the node's function out of place ("rule" and "const" steps)
    sources: tuple[Optional[int], ...]  # step index of each rule/module input that is live, else None


class _Traced(NamedTuple):
    """The forward traced in one mode: the fx graph and its nodes resolved to steps."""

    graph: fx.Graph
    steps: tuple[_Step, ...]


class _LeafTracer(fx.Tracer):
    """fx tracing in which reversible and registered modules are leaves (plus fx's default torch.nn leaves,
    which conversion then reports as unsupported)."""

    def __init__(self) -> None:
        super().__init__(autowrap_functions=hidden_functions())
        self.record_stack_traces = True

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return is_reversible(m) or registry.is_registered(m) or is_hidden_module(m) or \
            super().is_leaf_module(m, module_qualified_name)


def _in_torch(path: str) -> bool:
    """True for a file of the torch package itself (``…/torch/…``, not ``…/torchvision/…``)."""
    return os.path.abspath(path).startswith(_TORCH_DIR)


def _user_frame(stack: Optional[str]) -> str:
    """``file:line: code`` of the last frame outside torch in an fx stack trace ('' if none)."""
    if not stack:
        return ""
    frames = [line.strip() for line in stack.splitlines()]
    best = ""
    for i, line in enumerate(frames):
        if line.startswith('File "'):
            path = line.split('"')[1]
            if not _in_torch(path):
                lineno = line.split(", line ")[1].split(",")[0] if ", line " in line else "?"
                code = frames[i + 1] if i + 1 < len(frames) and not frames[i + 1].startswith("File ") else ""
                best = f"{path}:{lineno}: {code}".rstrip(": ")
    return best


def _target_name(node: fx.Node) -> str:
    target = node.target
    if node.op == "call_method":
        return f"Tensor.{target}"
    if isinstance(target, str):
        return target
    module = getattr(target, "__module__", None) or ""
    module = {"_operator": "operator", "torch._C._nn": "torch.nn.functional", "torch._C._VariableFunctions": "torch"}.get(
        module, module)
    return f"{module}.{getattr(target, '__name__', repr(target))}".lstrip(".")


def _where(node: fx.Node) -> str:
    frame = _user_frame(node.stack_trace)
    return f" (at {frame})" if frame else ""


def _convert_tree(module: nn.Module) -> nn.Module:
    """A copy of ``module``'s tree with registered leaves re-classed; every tensor shared with the original."""
    if is_reversible(module):
        return module
    if registry.is_registered(module):
        return registry.convert_leaf(module)
    twin = copy.copy(module)  # the same class and attributes; own dicts below
    twin._modules = type(module._modules)((name, None if child is None else _convert_tree(child))
                                          for name, child in module._modules.items())
    twin._parameters = type(module._parameters)(module._parameters)
    twin._buffers = type(module._buffers)(module._buffers)
    twin._non_persistent_buffers_set = set(module._non_persistent_buffers_set)
    return twin


def _untraceable(model: str, exc: Exception) -> UnsupportedLayerError:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not _in_torch(f.filename)]
    where = f" at {frames[-1].filename}:{frames[-1].lineno}: {frames[-1].line}" if frames else ""
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return UnsupportedLayerError(
        f"torch.fx cannot trace {model}.forward{where}: {reason}. revnet reverses forwards without data-dependent "
        "control flow; move such code into a module and register it with revnet.register(ModuleClass, ReversibleClass)."
    )


def _describe_hook(kind: str, hook: Callable) -> tuple[str, str]:
    """How a module hook is named in the refusal, and what to do about it."""
    for cls, name in ((WeightNorm, "weight_norm"), (SpectralNorm, "spectral_norm")):
        if isinstance(hook, cls):
            return (f"{kind} of torch.nn.utils.{name}",
                    f"use torch.nn.utils.parametrizations.{name} instead of the hook-based torch.nn.utils.{name} "
                    f"(revnet does not convert parametrized modules yet either, so to convert the current weights "
                    f"call torch.nn.utils.remove_{name}(module) first)")
    if isinstance(hook, BasePruningMethod):
        return (f"{kind} of torch.nn.utils.prune",
                "make the pruning permanent with torch.nn.utils.prune.remove(module, name)")
    name = getattr(hook, "__name__", type(hook).__name__)
    return f"{kind} {name}", "remove the hooks (handle.remove()) before revnet.convert(model)"


def refuse_unconvertible(model: nn.Module) -> None:
    """Raise :class:`UnsupportedLayerError` (one line) if ``model`` holds what its converted network would silently
    not reproduce: a TorchScript module, a parametrized module, or module hooks (forward pre-, forward, backward
    pre- and backward hooks on any of its modules, or registered globally with
    ``torch.nn.modules.module.register_module_*_hook``), which revnet's tape-based ``trace`` does not run."""
    label = type(model).__name__
    if isinstance(model, torch.jit.ScriptModule):
        raise UnsupportedLayerError(
            f"revnet.convert cannot convert a TorchScript module ({label}, made by torch.jit.script or "
            "torch.jit.trace), which torch.fx cannot trace; convert the nn.Module before scripting it.")
    for table, kind, register in _GLOBAL_HOOKS:
        for hook in getattr(torch.nn.modules.module, table, {}).values():
            raise UnsupportedLayerError(
                f"a global module {_describe_hook(kind, hook)[0]} (torch.nn.modules.module.{register}) is registered, "
                "which the converted network would not run; remove it (handle.remove()) before revnet.convert(model).")
    hooked: list[str] = []
    advice: list[str] = []
    for name, module in model.named_modules():
        where = f"'{name}'" if name else "the model itself"
        if isinstance(module, torch.jit.ScriptModule):
            raise UnsupportedLayerError(
                f"{label}: module {where} is a TorchScript module (torch.jit.script or torch.jit.trace), which "
                "torch.fx cannot trace; convert the nn.Module before scripting it.")
        if parametrize.is_parametrized(module):
            raise UnsupportedLayerError(
                f"{label}: module {where} ({type(module).__name__}) is parametrized (torch.nn.utils.parametrize, "
                "e.g. parametrizations.weight_norm), which revnet does not convert yet; to convert the current "
                "weights, bake them in with torch.nn.utils.parametrize.remove_parametrizations(module, name) first.")
        for table, kind in _HOOKS:
            for hook in getattr(module, table, {}).values():
                what, tip = _describe_hook(kind, hook)
                hooked.append(f"{where} ({what})")
                if tip not in advice:
                    advice.append(tip)
    if hooked:
        raise UnsupportedLayerError(f"{label} has module hooks, which the converted network would not run: "
                                    f"{', '.join(hooked)}; {'; '.join(advice)}.")


def _fixed_defaults(root: nn.Module) -> Optional[dict[str, Any]]:
    """``forward``'s optional arguments after ``x`` whose defaults fx can fix (``None``, bool, number, string), for
    fx's ``concrete_args``: traced at their defaults, as ``model(x)`` runs them. ``None`` if there are none."""
    try:
        params = list(inspect.signature(type(root).forward).parameters.values())[1:]  # after self
    except (TypeError, ValueError):
        return None
    if not params or params[0].kind not in (params[0].POSITIONAL_ONLY, params[0].POSITIONAL_OR_KEYWORD):
        return None
    fixed = {p.name: p.default for p in params[1:] if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
             and p.default is not p.empty and isinstance(p.default, _FIXED_DEFAULTS)}
    return fixed or None


def _traced_through(root: nn.Module) -> tuple[tuple[str, nn.Module], ...]:
    """``(qualified name, module)`` of ``root`` and every module below it that fx traces into (not a leaf)."""
    tracer = _LeafTracer()
    found, seen, stack = [], set(), [("", root)]
    while stack:
        name, module = stack.pop()
        if id(module) in seen:
            continue
        seen.add(id(module))
        found.append((name, module))
        for child_name, child in module._modules.items():
            qualified = f"{name}.{child_name}" if name else child_name
            if child is not None and not tracer.is_leaf_module(child, qualified):
                stack.append((qualified, child))
    return tuple(found)


def _model_parts(model: nn.Module) -> tuple[tuple[Any, ...], ...]:
    """``(owner module, table, name, value, qualified name)`` of every submodule, parameter and buffer of ``model``
    that the Graph holds a reference of its own to (reversible modules, shared as they are, are not entered)."""
    parts, seen, stack = [], set(), [("", model)]
    while stack:
        prefix, module = stack.pop()
        if id(module) in seen:
            continue
        seen.add(id(module))
        for table in _TABLES:
            for name, value in getattr(module, table).items():
                parts.append((module, table, name, value, prefix + name))
                if table == "_modules" and value is not None and not is_reversible(value):
                    stack.append((f"{prefix}{name}.", value))
    return tuple(parts)


def _unsupported(label: str, node: fx.Node, what: str) -> UnsupportedLayerError:
    return UnsupportedLayerError(f"{label}: node '{node.name}' ({node.op} {_target_name(node)}){_where(node)} {what}; "
                                 f"{_HOW_TO_ADD}.")


class Graph(nn.Module):
    """Any fx-traceable classifier, reversible. Build it with :func:`revnet.convert` (or ``Graph(model)``).

    * ``y, tape = net.trace(x)``: forward pass ``x (N, *in) -> y (N, *out)`` plus a tape with one entry per node.
    * ``g = net.reverse(v, tape)``: ``v (N, *out) -> g (N, *in)`` or ``v (N, K, *out) -> g (N, K, *in)``.
    * ``net(x)`` is the forward pass alone (no tape); ``net.graph`` is the fx graph of the current mode
      (``net.training``; see the module docstring: one graph per mode).

    The children, parameters and buffers are the model's own (converted leaves share their tensors), under the
    same names, so ``model.state_dict()`` loads into the ``Graph`` and back. ``forward``'s optional arguments
    after ``x`` are traced at their defaults. Conversion refuses hooks, TorchScript and parametrized modules
    (:func:`refuse_unconvertible`); ``trace``/``forward`` refuse to run once a part of the model was swapped.
    """

    reverse_label = "ReversedGraph"

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        refuse_unconvertible(model)
        root = _convert_tree(model)
        for name, child in root._modules.items():
            self._modules[name] = child
        for name, param in root._parameters.items():
            self._parameters[name] = param
        for name, buf in root._buffers.items():
            self._buffers[name] = buf
        self._non_persistent_buffers_set = set(root._non_persistent_buffers_set)
        self.training = model.training
        self.source_name = type(model).__name__
        inner = _traced_through(root)
        traced: dict[bool, Any] = {}
        for mode in (model.training, not model.training):  # the model's own mode first: its refusals raise here
            label = self.source_name if mode == model.training else f"{self.source_name} in {_mode_name(mode)} mode"
            try:
                traced[mode] = self._trace_in_mode(root, inner, mode, label)
            except UnsupportedLayerError as exc:
                if mode == model.training:
                    raise
                traced[mode] = str(exc)  # raised when the network first runs in that mode
        other = traced[not model.training]
        if isinstance(other, _Traced) and str(other.graph) == str(traced[model.training].graph):
            traced[not model.training] = traced[model.training]  # the forward does not depend on the mode
        # not attributes nn.Module tracks:
        self.__dict__["_traced"] = traced  # mode -> _Traced, or the refusal of that mode
        self.__dict__["_inner"] = inner[1:]  # the traced-through modules below the root (the network's own)
        self.__dict__["_parts"] = _model_parts(model)  # the model's parts at conversion, checked at each run

    # -- conversion -------------------------------------------------------------------------------------------

    def _trace_in_mode(self, root: nn.Module, inner: tuple[tuple[str, nn.Module], ...], mode: bool,
                       label: str) -> _Traced:
        """fx-trace ``root`` with every traced-through module's ``training`` set to ``mode`` (restored after)."""
        flags = [module.training for _, module in inner]
        try:
            for _, module in inner:
                module.training = mode
            graph = _LeafTracer().trace(root, concrete_args=_fixed_defaults(root))
            self._keep_tensor_constants(graph, root)
        except UnsupportedLayerError:
            raise
        except Exception as exc:  # noqa: BLE001 - fx reports untraceable code with many exception types
            raise _untraceable(label, exc) from None
        finally:
            for (_, module), flag in zip(inner, flags):
                module.training = flag
        _index_nodes(graph)
        return _Traced(graph, self._compile(graph, root, label))

    def _keep_tensor_constants(self, graph: fx.Graph, root: nn.Module) -> None:
        """Tensors the forward closes over (fx stores them on the traced root as ``_tensor_constantN``) become
        non-persistent buffers of the network, so its ``get_attr`` nodes find them."""
        for node in graph.nodes:
            if node.op == "get_attr" and "." not in node.target and node.target not in self._buffers \
                    and node.target not in self._parameters and node.target not in self._modules:
                value = getattr(root, node.target, None)
                if isinstance(value, Tensor):
                    self.register_buffer(node.target, value, persistent=False)

    def _compile(self, graph: fx.Graph, root: nn.Module, label: str) -> tuple[_Step, ...]:
        index: dict[fx.Node, int] = {}
        live: set[fx.Node] = set()
        steps: list[_Step] = []
        placeholders = 0
        nodes = list(graph.nodes)
        for node in nodes:
            inputs = node.all_input_nodes
            is_live = any(n in live for n in inputs)
            kind, rule, call, sources = "const", None, None, ()
            if node.op == "placeholder":
                if placeholders == 0:
                    kind, is_live = "input", True
                elif node.args:
                    kind, is_live = "default", False  # an optional argument: its default value
                else:
                    raise UnsupportedLayerError(
                        f"{label}.forward takes more than one required input ('{node.target}'); revnet "
                        "reverses models of one input x (N, *in).")
                placeholders += 1
            elif node.op == "get_attr":
                kind = "attr"
            elif node.op == "output":
                if not isinstance(node.args[0], fx.Node) or node.args[0] not in live:
                    raise UnsupportedLayerError(
                        f"{label}.forward must return one tensor that depends on its input (the logits); "
                        f"it returns {node.args[0]!r}.")
                kind, is_live, sources = "output", True, (index[node.args[0]],)
            elif not is_live:
                call = self._constant_call(node)
            elif self._is_shape_only(node):
                is_live, call = False, self._constant_call(node)
            elif node.op == "call_module" and not is_reversible(root.get_submodule(node.target)) and \
                    is_hidden_module(root.get_submodule(node.target)):  # a module timm keeps whole: traced through
                module = root.get_submodule(node.target)
                rule = hidden_rule(module, f"{type(module).__name__} '{node.target}'")
                kind = "rule"
                sources = tuple(index[s] if isinstance(s, fx.Node) and s in live else None
                                for s in rule.inputs(node.args, node.kwargs))
            elif node.op == "call_module":
                module = root.get_submodule(node.target)
                if not is_reversible(module):
                    raise _unsupported(label, node, f"calls {type(module).__name__}, which has no reverse in revnet "
                                                    f"(supported modules: {', '.join(registry.supported())})")
                if len(node.args) != 1 or node.kwargs or not isinstance(node.args[0], fx.Node):
                    raise _unsupported(label, node, "calls a module with other than one tensor argument")
                kind, sources = "module", (index[node.args[0]] if node.args[0] in live else None,)
            else:  # call_function / call_method that depends on the input
                target = node.target
                rule = registry.rule_for(target) or hidden_rule(target, _target_name(node))
                if rule is None:
                    raise _unsupported(label, node, "has no reverse rule in revnet")
                try:
                    slots = rule.inputs(node.args, node.kwargs)
                except UnsupportedLayerError as exc:
                    raise _unsupported(label, node, f"cannot be reversed: {exc}") from None
                kind = "rule"
                call = self._rule_call(node)
                sources = tuple(index[s] if isinstance(s, fx.Node) and s in live else None for s in slots)
                if all(s is None for s in sources):
                    raise _unsupported(label, node, "reads the input other than through a tensor argument")
            if is_live:
                live.add(node)
            index[node] = len(steps)
            steps.append(_Step(node, kind, is_live, rule, call, sources))
        self._check_in_place(nodes, root, label)
        return tuple(steps)

    @staticmethod
    def _is_shape_only(node: fx.Node) -> bool:
        if node.op == "call_method":
            return node.target in _SHAPE_METHODS
        if node.op == "call_function" and node.target is getattr:
            return len(node.args) > 1 and node.args[1] in _SHAPE_ATTRIBUTES
        if node.op == "call_function" and node.target in VALUE_FREE_FUNCTIONS:
            return True  # reads only the dtype, device or shape of its tensor arguments
        return False

    def _constant_call(self, node: fx.Node) -> Callable:
        if node.op == "call_method":
            return lambda self_, *args, **kwargs: getattr(self_, node.target)(*args, **kwargs)
        if node.op == "call_module":
            return None  # resolved when it runs (see _run)
        return node.target

    @staticmethod
    def _rule_call(node: fx.Node) -> Callable:
        if node.op == "call_method":
            name = node.target[:-1] if node.target.endswith("_") else node.target  # out of place
            return lambda self_, *args, **kwargs: getattr(self_, name)(*args, **kwargs)
        return _OUT_OF_PLACE.get(node.target, node.target)

    def _check_in_place(self, nodes: list[fx.Node], root: nn.Module, label: str) -> None:
        """Refuse in-place calls whose overwritten input is read again later (running them out of place, as
        revnet does, would then change the result)."""
        order = {node: i for i, node in enumerate(nodes)}
        for node in nodes:
            if node.op == "call_module":
                in_place = bool(getattr(root.get_submodule(node.target), "inplace", False))
            elif node.op == "call_method":
                in_place = node.target.endswith("_")
            elif node.op == "call_function":
                rule = registry.rule_for(node.target)
                in_place = node.target in _IN_PLACE_FUNCTIONS or bool(node.kwargs.get("inplace", False)) or (
                    callable(getattr(rule, "inplace", None)) and rule.inplace(node.args, node.kwargs))
            else:
                in_place = False
            if not in_place or not node.args or not isinstance(node.args[0], fx.Node):
                continue
            later = [u for u in node.args[0].users if u is not node and order[u] > order[node]]
            if later:
                raise _unsupported(
                    label, node, f"overwrites '{node.args[0].name}' in place, which '{later[0].name}' reads "
                                 "afterwards; revnet runs in-place calls out of place, so make this call out of place "
                                 "(inplace=False)")

    # -- the graph of the current mode -----------------------------------------------------------------------

    def _mode(self) -> tuple[bool, _Traced]:
        """``self.training`` and its traced graph. Refuses a mode whose trace was refused, and traced-through
        submodules in the other mode when the forward depends on the mode (one graph per mode of the whole)."""
        mode = self.training
        traced = self._traced[mode]
        if isinstance(traced, str):
            raise UnsupportedLayerError(traced)
        if self._traced[not mode] is not traced:
            for name, module in self._inner:
                if module.training != mode:
                    raise UnsupportedLayerError(
                        f"{self.source_name}: submodule '{name}' is in {_mode_name(module.training)} mode while the "
                        f"network is in {_mode_name(mode)} mode; the forward depends on the mode, and revnet traced it "
                        "once with every traced-through module in training mode and once in eval mode: call "
                        "net.train() or net.eval() (leaf layers such as BatchNorm or Dropout may keep their own mode).")
        return mode, traced

    @property
    def graph(self) -> fx.Graph:
        """The fx graph of the current mode."""
        return self._mode()[1].graph

    @property
    def _steps(self) -> tuple[_Step, ...]:
        return self._mode()[1].steps

    def _check_model(self) -> None:
        """Refuse to run once a submodule, parameter or buffer of the converted model is another object than at
        conversion (identity checks only: in-place changes such as load_state_dict or optimizer steps pass)."""
        for owner, table, name, value, where in self._parts:
            if owner.__dict__[table].get(name, _MISSING) is not value:
                hint = (" (model.to(), .double() and .float() replace buffers: move the model before converting it, "
                        "or move the converted network instead)" if table == "_buffers" else "")
                raise UnsupportedLayerError(
                    f"{self.source_name}: the model changed after conversion: its {_TABLES[table]} '{where}' was "
                    f"replaced or removed{hint}, and this network still runs the one it converted; call "
                    "revnet.convert(model) again.")

    # -- forward and tape -------------------------------------------------------------------------------------

    def _run(self, x: Tensor, record: bool, noise: Optional[dict[str, Any]] = None):
        """``(y, tape entries, module ids, mode)`` of the current mode's graph."""
        self._check_model()
        mode, traced = self._mode()
        try:
            return (*self._run_nodes(traced.steps, x, record, noise), mode)
        except (RuntimeError, ValueError, TypeError) as exc:
            if isinstance(exc, RevnetError) or not hasattr(exc, "revnet_node"):
                raise
            node, value = exc.revnet_node
            target = self.get_submodule(node.target) if node.op == "call_module" else _target_name(node)
            raise layer_input_error(f"{self.source_name}: node '{node.name}'{_where(node)}", target, value,
                                    exc) from None

    def _run_nodes(self, steps: tuple[_Step, ...], x: Tensor, record: bool,
                   noise: Optional[dict[str, Any]] = None, values: Optional[list] = None):
        """Run the steps on ``x``: ``(y, tape entries, module ids)``; ``values``, if given, receives every node's
        value (for :func:`revnet.check`'s node-by-node comparison)."""
        env: list[Any] = [None] * len(steps) if values is None else values
        env.extend([None] * (len(steps) - len(env)))
        entries: list[Any] = [None] * len(steps)
        modules: list[int] = []
        load = lambda arg: fx.node.map_arg(arg, lambda n: env[n.meta["revnet_index"]])  # noqa: E731
        for i, step in enumerate(steps):
            node = step.node
            try:
                value = self._run_step(i, step, x, env, entries, modules, record, noise, load)
            except (RuntimeError, ValueError, TypeError) as exc:
                if not isinstance(exc, RevnetError):
                    first = next((env[n.meta["revnet_index"]] for n in node.all_input_nodes
                                  if isinstance(env[n.meta["revnet_index"]], Tensor)), x)
                    exc.revnet_node = (node, first)
                raise
            if step.kind == "output":
                if record and (not isinstance(value, Tensor) or value.dim() == 0 or value.shape[0] != x.shape[0]):
                    shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                    raise UnsupportedLayerError(
                        f"{self.source_name} returns {shape}, which does not keep the batch dimension (N = "
                        f"{x.shape[0]}) first; the output must be (N, *out), e.g. logits (N, classes).")
                return value, entries, modules
            if record and step.live and not _rows_value(value):
                shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise UnsupportedLayerError(
                    f"{self.source_name}: node '{node.name}' ({_target_name(node)}){_where(node)} gives {shape}; revnet "
                    "needs every value that depends on x to be a tensor with at least one dimension (or a tuple of "
                    "them), its rows the samples or parts of them.")
            env[i] = value
        raise RuntimeError("the graph has no output node")  # pragma: no cover - fx graphs always end in one

    def _run_step(self, i, step, x, env, entries, modules, record, noise, load) -> Any:
        """The value of node ``i`` (and its tape entry in ``entries[i]`` when ``record``)."""
        node = step.node
        if step.kind == "input":
            return x
        if step.kind == "default":
            return node.args[0]
        if step.kind == "attr":
            return _fetch(self, node.target)
        if step.kind == "output":
            return env[step.sources[0]]
        if step.kind == "const":
            call = step.call if step.call is not None else self.get_submodule(node.target)
            return call(*load(node.args), **load(node.kwargs))
        if step.kind == "module":
            module = self.get_submodule(node.target)
            if not is_reversible(module):
                raise UnsupportedLayerError(
                    f"{self.source_name}: module '{node.target}' ({type(module).__name__}) was replaced by a module "
                    "without a reverse; call revnet.convert(model) again after changing its modules.")
            modules.append(id(module))
            arg = env[step.sources[0]]
            if not record:
                return module(arg)
            value, entries[i] = trace_with(module, arg, (noise or {}).get(node.name))
            return value
        args, kwargs = load(node.args), load(node.kwargs)
        call = step.call if node.op != "call_module" else self.get_submodule(node.target)  # a module traced through
        if not record:
            return step.rule.forward(call, args, kwargs)
        live = tuple(s is not None for s in step.sources)
        value, entries[i] = step.rule.trace(call, args, kwargs, live)
        return value

    def forward(self, x: Tensor) -> Tensor:
        return self._run(x, record=False)[0]

    def trace(self, x: Tensor, noise: Optional[dict[str, Any]] = None) -> tuple[Tensor, GraphTape]:
        """Forward pass recording one tape entry per node. ``x (N, *in) -> y (N, *out)``. ``noise``: the random
        draws (Dropout masks) of an earlier tape's samples to reuse, from :meth:`noise`."""
        if not isinstance(x, Tensor) or x.dim() == 0 or x.shape[0] == 0:
            raise ValueError("Graph.trace expects a non-empty batch x of shape (N, *in).")
        y, entries, modules, mode = self._run(x, record=True, noise=noise)
        return y, GraphTape(id(self), tuple(modules), tuple(entries), x.shape, y.shape, y.dtype, y.device, mode)

    def noise(self, tape: GraphTape) -> Optional[dict[str, Any]]:
        """The random draws of ``tape`` by node name (``None`` if none were drawn)."""
        steps = self._check_tape(tape)
        return nested_noise([(step.node.name, self.get_submodule(step.node.target), entry)
                             for step, entry in zip(steps, tape.entries) if step.kind == "module"])

    # -- reverse ----------------------------------------------------------------------------------------------

    def _check_tape(self, tape: Any) -> tuple[_Step, ...]:
        """The steps of the graph that recorded ``tape``; refuses a tape of another network or of changed modules."""
        if not isinstance(tape, GraphTape):
            raise TapeMismatchError(
                f"Graph.reverse expects the tape returned by this network's trace(), got {type(tape).__name__}.")
        if tape.network != id(self):
            raise TapeMismatchError(
                "this tape was recorded by another network; call trace(x) on the network you reverse "
                "(tapes do not carry over between networks, copies included).")
        steps = self._traced[tape.training].steps
        now = tuple(id(self.get_submodule(s.node.target)) for s in steps if s.kind == "module")
        if tape.modules != now:
            raise TapeMismatchError("the network's modules changed since this tape was recorded; trace(x) again.")
        return steps

    def reverse_rows(self, v: Tensor, tape: GraphTape) -> Tensor:
        """The VJP on folded rows ``(N·K, *out) -> (N·K, *in)`` (for containers; see ``reverse``)."""
        steps = self._check_tape(tape)
        n = tape.in_shape[0]
        if n == 0 or v.shape[0] % n:
            raise ReverseShapeError(f"v has {v.shape[0]} rows, not a multiple of the {n} traced samples.")
        cotangents: dict[int, Tensor] = {steps[-1].sources[0]: v}
        for i in range(len(steps) - 2, 0, -1):
            g = cotangents.pop(i, None)
            if g is None:
                continue
            step = steps[i]
            if step.kind == "module":
                grads = [reverse_rows(self.get_submodule(step.node.target), g, tape.entries[i])]
            else:
                grads = step.rule.reverse(g, tape.entries[i])
            for source, grad in zip(step.sources, grads):
                if source is None or grad is None:
                    continue
                cotangents[source] = grad if source not in cotangents else _accumulate(cotangents[source], grad)
        g = cotangents.get(0)
        if g is None:  # the output does not depend on x
            g = v.new_zeros(v.shape[0], *tape.in_shape[1:])
        return g

    def reverse(self, v: Tensor, tape: GraphTape) -> Tensor:
        """Input gradients ``vᵀ·∂y/∂x``: ``(N, *out) -> (N, *in)`` or ``(N, K, *out) -> (N, K, *in)``."""
        self._check_tape(tape)
        rows, k = fold_class_rows(v, tape, "Graph")
        g = self.reverse_rows(rows, tape)
        return g.reshape(tape.in_shape[0], k, *tape.in_shape[1:]) if k is not None else g

    def extra_repr(self) -> str:
        traced = self._traced[self.training]
        size = f"{len(traced.steps)} nodes" if isinstance(traced, _Traced) else "not convertible in this mode"
        return f"from {self.source_name}, {size}"


def _rows_value(value: Any) -> bool:
    """Whether a traced value has rows: a tensor of at least one dimension, or a tuple/list of them (a split's
    outputs). Its first dimension need not be the batch (see :mod:`revnet.layers._rows`)."""
    if isinstance(value, Tensor):
        return value.dim() > 0
    return isinstance(value, (tuple, list)) and bool(value) and all(
        isinstance(t, Tensor) and t.dim() > 0 for t in value)


def _accumulate(a: Any, b: Any) -> Any:
    """The sum of two cotangents of one value: tensors add; for a tuple value, element by element (``None`` for
    an element without a cotangent yet)."""
    if isinstance(a, Tensor):
        return a + b
    return [y if x is None else x if y is None else x + y for x, y in zip(a, b)]


def _fetch(module: nn.Module, target: str) -> Any:
    *path, name = target.split(".")
    owner = module.get_submodule(".".join(path)) if path else module
    return getattr(owner, name)


def _mode_name(training: bool) -> str:
    return "training" if training else "eval"


def _index_nodes(graph: fx.Graph) -> None:
    for i, node in enumerate(graph.nodes):
        node.meta["revnet_index"] = i
