"""How ``revnet.Graph`` is built from a model: the refusals checked before tracing, the ``torch.fx`` tracing (the
registered and reversible modules and timm's notrace parts are leaves) and the compilation of every node into a
step (a module, a rule, a constant or a shape-only node), with the one-line messages that name the node and its
source line. :mod:`revnet.graph` runs and reverses the steps.
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
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.prune import BasePruningMethod
from torch.nn.utils.spectral_norm import SpectralNorm
from torch.nn.utils.weight_norm import WeightNorm

from . import registry
from .errors import UnsupportedLayerError
from .layers import VALUE_FREE_FUNCTIONS, is_reversible
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


def compile_steps(graph: fx.Graph, root: nn.Module, label: str) -> tuple[_Step, ...]:
    """Every node of ``graph`` resolved once to a step: a module must be reversible, a function or method
    must have a rule; shape-only nodes and those that do not depend on the input are constants."""
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
            call = _constant_call(node)
        elif _is_shape_only(node):
            is_live, call = False, _constant_call(node)
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
            call = _rule_call(node)
            sources = tuple(index[s] if isinstance(s, fx.Node) and s in live else None for s in slots)
            if all(s is None for s in sources):
                raise _unsupported(label, node, "reads the input other than through a tensor argument")
        if is_live:
            live.add(node)
        index[node] = len(steps)
        steps.append(_Step(node, kind, is_live, rule, call, sources))
    _check_in_place(nodes, root, label)
    return tuple(steps)

def _is_shape_only(node: fx.Node) -> bool:
    if node.op == "call_method":
        return node.target in _SHAPE_METHODS
    if node.op == "call_function" and node.target is getattr:
        return len(node.args) > 1 and node.args[1] in _SHAPE_ATTRIBUTES
    if node.op == "call_function" and node.target in VALUE_FREE_FUNCTIONS:
        return True  # reads only the dtype, device or shape of its tensor arguments
    return False

def _constant_call(node: fx.Node) -> Callable:
    if node.op == "call_method":
        return lambda self_, *args, **kwargs: getattr(self_, node.target)(*args, **kwargs)
    if node.op == "call_module":
        return None  # resolved when it runs (see _run)
    return node.target

def _rule_call(node: fx.Node) -> Callable:
    if node.op == "call_method":
        name = node.target[:-1] if node.target.endswith("_") else node.target  # out of place
        return lambda self_, *args, **kwargs: getattr(self_, name)(*args, **kwargs)
    return _OUT_OF_PLACE.get(node.target, node.target)

def _check_in_place(nodes: list[fx.Node], root: nn.Module, label: str) -> None:
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


def _mode_name(training: bool) -> str:
    return "training" if training else "eval"


def _index_nodes(graph: fx.Graph) -> None:
    for i, node in enumerate(graph.nodes):
        node.meta["revnet_index"] = i
