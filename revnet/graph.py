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

Shapes as for ``Sequential``: ``x (N, *in) -> y (N, *out)``; ``reverse``: ``(N, *out) -> (N, *in)`` or
``(N, K, *out) -> (N, K, *in)``.
"""

from __future__ import annotations

import copy
import operator
import os
import traceback
from typing import Any, Callable, NamedTuple, Optional

import torch
import torch.fx as fx
from torch import Tensor, nn

from . import registry
from ._checks import fold_class_rows, layer_input_error
from .errors import ReverseShapeError, RevnetError, TapeMismatchError, UnsupportedLayerError
from .layers import is_reversible
from .layers.protocol import nested_noise, reverse_rows, trace_with

_TORCH_DIR = os.path.dirname(torch.__file__)
_SHAPE_METHODS = {"size", "dim", "numel", "nelement", "ndimension"}
_SHAPE_ATTRIBUTES = {"shape", "ndim", "dtype", "device", "is_cuda", "requires_grad"}
_IN_PLACE_FUNCTIONS = {operator.iadd, operator.isub, operator.imul, operator.itruediv}
_OUT_OF_PLACE = {operator.iadd: operator.add, operator.isub: operator.sub, operator.imul: operator.mul,
                 operator.itruediv: operator.truediv}
_HOW_TO_ADD = ("add a rule with revnet.register_function(fn_or_method_name, rule) for functions and tensor methods, "
               "or revnet.register(ModuleClass, ReversibleClass) for modules")


class GraphTape(NamedTuple):
    network: int  # id() of the Graph that recorded it
    modules: tuple[int, ...]  # id() of the module of every call_module node, in node order
    entries: tuple[Any, ...]  # one tape per node (None for constants)
    in_shape: torch.Size  # x.shape
    out_shape: torch.Size  # y.shape
    dtype: torch.dtype  # y.dtype
    device: torch.device  # y.device


class _Step(NamedTuple):
    """One fx node, resolved at conversion: what to run and where its inputs' cotangents go."""

    node: fx.Node
    kind: str  # "input", "default", "attr", "const", "module", "rule", "output"
    live: bool  # depends on the network input
    rule: Any  # the reverse rule ("rule" steps)
    call: Optional[Callable]  # runs the node's function out of place ("rule" and "const" steps)
    sources: tuple[Optional[int], ...]  # step index of each rule/module input that is live, else None


class _LeafTracer(fx.Tracer):
    """fx tracing in which reversible and registered modules are leaves (plus fx's default torch.nn leaves,
    which conversion then reports as unsupported)."""

    def __init__(self) -> None:
        super().__init__()
        self.record_stack_traces = True

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return is_reversible(m) or registry.is_registered(m) or super().is_leaf_module(m, module_qualified_name)


def _user_frame(stack: Optional[str]) -> str:
    """``file:line: code`` of the last frame outside torch in an fx stack trace ('' if none)."""
    if not stack:
        return ""
    frames = [line.strip() for line in stack.splitlines()]
    best = ""
    for i, line in enumerate(frames):
        if line.startswith('File "'):
            path = line.split('"')[1]
            if not os.path.abspath(path).startswith(_TORCH_DIR):
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
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not os.path.abspath(f.filename).startswith(_TORCH_DIR)]
    where = f" at {frames[-1].filename}:{frames[-1].lineno}: {frames[-1].line}" if frames else ""
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return UnsupportedLayerError(
        f"torch.fx cannot trace {model}.forward{where}: {reason}. revnet reverses forwards without data-dependent "
        "control flow; move such code into a module and register it with revnet.register(ModuleClass, ReversibleClass)."
    )


class Graph(nn.Module):
    """Any fx-traceable classifier, reversible. Build it with :func:`revnet.convert` (or ``Graph(model)``).

    * ``y, tape = net.trace(x)``: forward pass ``x (N, *in) -> y (N, *out)`` plus a tape with one entry per node.
    * ``g = net.reverse(v, tape)``: ``v (N, *out) -> g (N, *in)`` or ``v (N, K, *out) -> g (N, K, *in)``.
    * ``net(x)`` is the forward pass alone (no tape); ``net.graph`` is the fx graph.

    The children, parameters and buffers are the model's own (converted leaves share their tensors), under the
    same names, so ``model.state_dict()`` loads into the ``Graph`` and back.
    """

    reverse_label = "ReversedGraph"

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
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
        try:
            graph = _LeafTracer().trace(root)
        except UnsupportedLayerError:
            raise
        except Exception as exc:  # noqa: BLE001 - fx reports untraceable code with many exception types
            raise _untraceable(self.source_name, exc) from None
        _index_nodes(graph)
        self.__dict__["graph"] = graph  # not an attribute nn.Module tracks
        self.__dict__["_steps"] = self._compile(graph, root)

    # -- conversion -------------------------------------------------------------------------------------------

    def _unsupported(self, node: fx.Node, what: str) -> UnsupportedLayerError:
        return UnsupportedLayerError(
            f"{self.source_name}: node '{node.name}' ({node.op} {_target_name(node)}){_where(node)} {what}; "
            f"{_HOW_TO_ADD}."
        )

    def _compile(self, graph: fx.Graph, root: nn.Module) -> tuple[_Step, ...]:
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
                        f"{self.source_name}.forward takes more than one required input ('{node.target}'); revnet "
                        "reverses models of one input x (N, *in).")
                placeholders += 1
            elif node.op == "get_attr":
                kind = "attr"
            elif node.op == "output":
                if not isinstance(node.args[0], fx.Node) or node.args[0] not in live:
                    raise UnsupportedLayerError(
                        f"{self.source_name}.forward must return one tensor that depends on its input (the logits); "
                        f"it returns {node.args[0]!r}.")
                kind, is_live, sources = "output", True, (index[node.args[0]],)
            elif not is_live:
                call = self._constant_call(node)
            elif self._is_shape_only(node):
                is_live, call = False, self._constant_call(node)
            elif node.op == "call_module":
                module = root.get_submodule(node.target)
                if not is_reversible(module):
                    raise self._unsupported(node, f"calls {type(module).__name__}, which has no reverse in revnet "
                                                  f"(supported modules: {', '.join(registry.supported())})")
                if len(node.args) != 1 or node.kwargs or not isinstance(node.args[0], fx.Node):
                    raise self._unsupported(node, "calls a module with other than one tensor argument")
                kind, sources = "module", (index[node.args[0]] if node.args[0] in live else None,)
            else:  # call_function / call_method that depends on the input
                target = node.target
                rule = registry.rule_for(target)
                if rule is None:
                    raise self._unsupported(node, "has no reverse rule in revnet")
                try:
                    slots = rule.inputs(node.args, node.kwargs)
                except UnsupportedLayerError as exc:
                    raise self._unsupported(node, f"cannot be reversed: {exc}") from None
                kind = "rule"
                call = self._rule_call(node)
                sources = tuple(index[s] if isinstance(s, fx.Node) and s in live else None for s in slots)
                if all(s is None for s in sources):
                    raise self._unsupported(node, "reads the input other than through a tensor argument")
            if is_live:
                live.add(node)
            index[node] = len(steps)
            steps.append(_Step(node, kind, is_live, rule, call, sources))
        self._check_in_place(nodes, root)
        return tuple(steps)

    @staticmethod
    def _is_shape_only(node: fx.Node) -> bool:
        if node.op == "call_method":
            return node.target in _SHAPE_METHODS
        if node.op == "call_function" and node.target is getattr:
            return len(node.args) > 1 and node.args[1] in _SHAPE_ATTRIBUTES
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

    def _check_in_place(self, nodes: list[fx.Node], root: nn.Module) -> None:
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
                raise self._unsupported(
                    node, f"overwrites '{node.args[0].name}' in place, which '{later[0].name}' reads afterwards; "
                          "revnet runs in-place calls out of place, so make this call out of place (inplace=False)")

    # -- forward and tape -------------------------------------------------------------------------------------

    def _run(self, x: Tensor, record: bool, noise: Optional[dict[str, Any]] = None):
        try:
            return self._run_nodes(x, record, noise)
        except (RuntimeError, ValueError, TypeError) as exc:
            if isinstance(exc, RevnetError) or not hasattr(exc, "revnet_node"):
                raise
            node, value = exc.revnet_node
            target = self.get_submodule(node.target) if node.op == "call_module" else _target_name(node)
            raise layer_input_error(f"{self.source_name}: node '{node.name}'{_where(node)}", target, value,
                                    exc) from None

    def _run_nodes(self, x: Tensor, record: bool, noise: Optional[dict[str, Any]] = None):
        env: list[Any] = [None] * len(self._steps)
        entries: list[Any] = [None] * len(self._steps)
        modules: list[int] = []
        load = lambda arg: fx.node.map_arg(arg, lambda n: env[n.meta["revnet_index"]])  # noqa: E731
        for i, step in enumerate(self._steps):
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
                return value, entries, modules
            if record and step.live and (not isinstance(value, Tensor) or value.dim() == 0
                                         or value.shape[0] != x.shape[0]):
                shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise UnsupportedLayerError(
                    f"{self.source_name}: node '{node.name}' ({_target_name(node)}){_where(node)} gives {shape}, which "
                    f"does not keep the batch dimension (N = {x.shape[0]}) first; revnet needs each sample in its own row.")
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
        if not record:
            return step.rule.forward(step.call, args, kwargs)
        live = tuple(s is not None for s in step.sources)
        value, entries[i] = step.rule.trace(step.call, args, kwargs, live)
        return value

    def forward(self, x: Tensor) -> Tensor:
        return self._run(x, record=False)[0]

    def trace(self, x: Tensor, noise: Optional[dict[str, Any]] = None) -> tuple[Tensor, GraphTape]:
        """Forward pass recording one tape entry per node. ``x (N, *in) -> y (N, *out)``. ``noise``: the random
        draws (Dropout masks) of an earlier tape's samples to reuse, from :meth:`noise`."""
        if not isinstance(x, Tensor) or x.dim() == 0 or x.shape[0] == 0:
            raise ValueError("Graph.trace expects a non-empty batch x of shape (N, *in).")
        y, entries, modules = self._run(x, record=True, noise=noise)
        return y, GraphTape(id(self), tuple(modules), tuple(entries), x.shape, y.shape, y.dtype, y.device)

    def noise(self, tape: GraphTape) -> Optional[dict[str, Any]]:
        """The random draws of ``tape`` by node name (``None`` if none were drawn)."""
        self._check_tape(tape)
        return nested_noise([(step.node.name, self.get_submodule(step.node.target), entry)
                             for step, entry in zip(self._steps, tape.entries) if step.kind == "module"])

    # -- reverse ----------------------------------------------------------------------------------------------

    def _check_tape(self, tape: Any) -> None:
        if not isinstance(tape, GraphTape):
            raise TapeMismatchError(
                f"Graph.reverse expects the tape returned by this network's trace(), got {type(tape).__name__}.")
        if tape.network != id(self):
            raise TapeMismatchError(
                "this tape was recorded by another network; call trace(x) on the network you reverse "
                "(tapes do not carry over between networks, copies included).")
        now = tuple(id(self.get_submodule(s.node.target)) for s in self._steps if s.kind == "module")
        if tape.modules != now:
            raise TapeMismatchError("the network's modules changed since this tape was recorded; trace(x) again.")

    def reverse_rows(self, v: Tensor, tape: GraphTape) -> Tensor:
        """The VJP on folded rows ``(N·K, *out) -> (N·K, *in)`` (for containers; see ``reverse``)."""
        self._check_tape(tape)
        n = tape.in_shape[0]
        if n == 0 or v.shape[0] % n:
            raise ReverseShapeError(f"v has {v.shape[0]} rows, not a multiple of the {n} traced samples.")
        steps = self._steps
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
                cotangents[source] = grad if source not in cotangents else cotangents[source] + grad
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
        return f"from {self.source_name}, {len(self._steps)} nodes"


def _fetch(module: nn.Module, target: str) -> Any:
    *path, name = target.split(".")
    owner = module.get_submodule(".".join(path)) if path else module
    return getattr(owner, name)


def _index_nodes(graph: fx.Graph) -> None:
    for i, node in enumerate(graph.nodes):
        node.meta["revnet_index"] = i
