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

from typing import Any, NamedTuple, Optional

import torch
import torch.fx as fx
from torch import Tensor, nn

from ._checks import fold_class_rows, layer_input_error
from .errors import ReverseShapeError, RevnetError, TapeMismatchError, UnsupportedLayerError
from .graph_build import (_MISSING, _TABLES, _LeafTracer, _Step, _Traced, _convert_tree, _fixed_defaults,
                          _index_nodes, _mode_name, _model_parts, _target_name, _traced_through, _untraceable, _where,
                          compile_steps, refuse_unconvertible)
from .layers import is_reversible
from .layers.protocol import nested_noise, reverse_rows, trace_with


class GraphTape(NamedTuple):
    network: int  # id() of the Graph that recorded it
    modules: tuple[int, ...]  # id() of the module of every call_module node, in node order
    entries: tuple[Any, ...]  # one tape per node (None for constants)
    in_shape: torch.Size  # x.shape
    out_shape: torch.Size  # y.shape
    dtype: torch.dtype  # y.dtype
    device: torch.device  # y.device
    training: bool  # the mode whose traced graph recorded it (reverse walks that graph)


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
        return _Traced(graph, compile_steps(graph, root, label))

    def _keep_tensor_constants(self, graph: fx.Graph, root: nn.Module) -> None:
        """Tensors the forward closes over (fx stores them on the traced root as ``_tensor_constantN``) become
        non-persistent buffers of the network, so its ``get_attr`` nodes find them."""
        for node in graph.nodes:
            if node.op == "get_attr" and "." not in node.target and node.target not in self._buffers \
                    and node.target not in self._parameters and node.target not in self._modules:
                value = getattr(root, node.target, None)
                if isinstance(value, Tensor):
                    self.register_buffer(node.target, value, persistent=False)

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
