"""``revnet.Sequential``: a ``torch.nn.Sequential`` that generates its own reverse network.

``trace`` runs the layers in order and collects their tapes into one :class:`SequentialTape`; ``reverse``
runs the layers' reverses in the opposite order. A ``Sequential`` is itself reversible, so it nests inside
another one or inside a :class:`revnet.Graph`. Children are converted on the way in: registered layers are
re-classed, an ``nn.Sequential`` becomes a ``Sequential``, any other model a ``Graph``.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import registry
from ._checks import fold_class_rows, layer_input_error
from .errors import RevnetError, TapeMismatchError, UnsupportedLayerError
from .graph import Graph
from .layers import is_reversible
from .layers.protocol import nested_noise, reverse_rows, trace_with


def _as_child(module: nn.Module) -> nn.Module:
    """A reversible module sharing ``module``'s tensors (see :func:`revnet.convert`)."""
    if is_reversible(module):
        return module
    if type(module) is nn.Sequential:
        return Sequential(OrderedDict(module.named_children()))
    if registry.is_registered(module) or not module._modules and type(module).__module__.startswith("torch.nn"):
        return registry.convert_leaf(module)  # a torch.nn leaf without a rule raises UnsupportedLayerError
    return Graph(module)


class SequentialTape(NamedTuple):
    network: int  # id() of the Sequential that recorded it
    layers: tuple[int, ...]  # id() of each layer at trace time, in order
    entries: tuple[Any, ...]  # one tape per layer, in forward order
    in_shape: torch.Size  # x.shape: (N, *in)
    out_shape: torch.Size  # y.shape: (N, *out)
    dtype: torch.dtype  # y.dtype
    device: torch.device  # y.device


class Sequential(nn.Sequential):
    """Like ``torch.nn.Sequential``; plain ``torch.nn`` layers are converted on the way in (sharing their
    parameters), so a plain ``nn.Sequential``'s ``state_dict`` loads into the matching ``revnet.Sequential``.

    * ``y, tape = net.trace(x)``: forward pass, ``x (N, *in) -> y (N, *out)``, plus the tape.
    * ``g = net.reverse(v, tape)``: ``v (N, *out) -> g (N, *in)``, or with a class axis
      ``v (N, K, *out) -> g (N, K, *in)`` in one batched pass (``K`` folded into the batch, no loop over K).
      ``g[n, k] = v[n, k]ᵀ · ∂y[n]/∂x[n]``.
    * ``net.reversed()``: the reverse network as a printable module sharing the forward parameters.
    """

    reverse_label = "Reversed"

    def add_module(self, name: str, module: Optional[nn.Module]) -> None:  # used by __init__ and append
        super().add_module(name, None if module is None else _as_child(module))

    def insert(self, index: int, module: nn.Module) -> "Sequential":
        return super().insert(index, _as_child(module))

    def __setitem__(self, idx: int, module: nn.Module) -> None:
        super().__setitem__(idx, _as_child(module))

    @classmethod
    def from_torch(cls, module: nn.Sequential) -> "Sequential":
        """Convert a plain ``nn.Sequential`` (recursively), sharing its parameters."""
        converted = _as_child(module)
        if not isinstance(converted, cls):
            raise TypeError(f"Sequential.from_torch expects an nn.Sequential, got {type(module).__name__}.")
        return converted

    def forward(self, x: Tensor) -> Tensor:
        """``nn.Sequential``'s forward; a layer that cannot take its input fails with one line naming it."""
        for name, layer in self.named_children():
            try:
                x = layer(x)
            except (RuntimeError, ValueError) as exc:
                if isinstance(exc, RevnetError):
                    raise
                raise layer_input_error(f"layer {name}", layer, x, exc) from None
        return x

    def trace(self, x: Tensor, noise: Optional[dict[str, Any]] = None) -> tuple[Tensor, SequentialTape]:
        """Forward pass recording a tape. ``x (N, *in) -> y (N, *out)``. ``noise``: the random draws (Dropout
        masks) of an earlier tape's samples to reuse, from :meth:`noise`."""
        if not isinstance(x, Tensor) or x.dim() == 0 or x.shape[0] == 0:
            raise ValueError("Sequential.trace expects a non-empty batch x of shape (N, *in).")
        in_shape, layers, entries = x.shape, [], []
        for name, layer in self.named_children():
            if not is_reversible(layer):  # e.g. put in place by insert(), which bypasses conversion
                raise UnsupportedLayerError(
                    f"layer {name} ({type(layer).__name__}) has no reverse. Supported torch.nn modules: "
                    f"{', '.join(registry.supported())}; add your own with revnet.register()."
                )
            try:
                x, entry = trace_with(layer, x, (noise or {}).get(name))
            except (RuntimeError, ValueError) as exc:
                if isinstance(exc, RevnetError):
                    raise
                raise layer_input_error(f"layer {name}", layer, x, exc) from None
            layers.append(id(layer))
            entries.append(entry)
        return x, SequentialTape(id(self), tuple(layers), tuple(entries), in_shape, x.shape, x.dtype, x.device)

    def _check_tape(self, tape: Any) -> None:
        if not isinstance(tape, SequentialTape):
            raise TapeMismatchError(
                f"Sequential.reverse expects the tape returned by this network's trace(), got {type(tape).__name__}."
            )
        if tape.network != id(self):
            raise TapeMismatchError(
                "this tape was recorded by another network; call trace(x) on the network you reverse "
                "(tapes do not carry over between networks, copies included)."
            )
        if tape.layers != tuple(id(layer) for layer in self.children()):
            raise TapeMismatchError(
                "the network's layers changed since this tape was recorded; trace(x) again before reverse."
            )

    def noise(self, tape: SequentialTape) -> Optional[dict[str, Any]]:
        """The random draws of ``tape`` by child name (``None`` if none were drawn)."""
        self._check_tape(tape)
        return nested_noise([(name, layer, entry) for (name, layer), entry in zip(self.named_children(), tape.entries)])

    def reverse_rows(self, v: Tensor, tape: SequentialTape) -> Tensor:
        """The VJP on folded rows ``(N·K, *out) -> (N·K, *in)`` (for containers; see ``reverse``)."""
        self._check_tape(tape)
        g = v
        for layer, entry in zip(reversed(list(self.children())), reversed(tape.entries)):
            g = reverse_rows(layer, g, entry)
        return g

    def reverse(self, v: Tensor, tape: SequentialTape) -> Tensor:
        """Input gradients ``vᵀ·∂y/∂x``: ``(N, *out) -> (N, *in)`` or ``(N, K, *out) -> (N, K, *in)``; any other
        shape of ``v`` is refused."""
        self._check_tape(tape)
        rows, k = fold_class_rows(v, tape, "Sequential")
        g = self.reverse_rows(rows, tape)
        in_rest = tuple(tape.in_shape[1:])
        return g.reshape(tape.in_shape[0], k, *in_rest) if k is not None else g

    def reverse_differences(self, toward: Tensor, away: Tensor, tape: SequentialTape) -> Tensor:
        """``reverse`` of the logit-difference rows ``e_toward − e_away`` (DeepFool's ``w_k − w_l``): toward
        ``(N, K)``, away ``(N,)`` -> ``(N, K, *in)``, or toward ``(N,)`` -> ``(N, *in)``. With a final layer that
        has ``reverse_differences`` (``Linear``) and logits ``(N, C)``, the rows start as ``W[k] − W[l]``
        instead of a product with one-hot rows; otherwise the one-hot rows go through ``reverse``."""
        self._check_tape(tape)
        children = list(self.children())
        k = toward.shape[1] if toward.dim() == 2 else None
        toward_rows = toward if k is not None else toward.unsqueeze(1)
        last = children[-1] if children else None
        if last is None or not callable(getattr(last, "reverse_differences", None)) or len(tape.out_shape) != 2:
            classes = tape.out_shape[-1]
            v = (F.one_hot(toward_rows, classes) - F.one_hot(away, classes).unsqueeze(1)).to(tape.dtype)
            g = self.reverse(v, tape)
            return g if k is not None else g.squeeze(1)
        g = last.reverse_differences(toward_rows, away).to(tape.dtype).flatten(0, 1)  # (N·K, D)
        for layer, entry in zip(reversed(children[:-1]), reversed(tape.entries[:-1])):
            g = reverse_rows(layer, g, entry)
        rest = tuple(tape.in_shape[1:])
        return g.reshape(tape.in_shape[0], k, *rest) if k is not None else g.reshape(tape.in_shape[0], *rest)

    def reversed(self) -> "Reversed":
        """The reverse network, a printable module that shares this network's parameters."""
        return Reversed(self)


class ReverseLayer(nn.Module):
    """One layer's reverse as a module (for printing and composing); shares the layer's parameters."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, v: Tensor, tape: Any) -> Tensor:
        return self.layer.reverse(v, tape)

    def __repr__(self) -> str:
        """The reverse's own view: a layer may describe its reverse (``reverse_extra_repr``: Linear's maps
        ``out_features -> in_features`` and has no bias), else its forward's ``extra_repr``."""
        label = getattr(self.layer, "reverse_label", f"Reverse{type(self.layer).__name__}")
        describe = getattr(self.layer, "reverse_extra_repr", self.layer.extra_repr)
        return f"{label}({describe()})"


class Reversed(nn.Module):
    """The reverse of a ``revnet.Sequential``: its layers' reverses in the opposite order, each listed under
    the index of the forward layer it transposes. ``reversed_net(v, tape)`` equals ``net.reverse(v, tape)``."""

    def __init__(self, net: Sequential) -> None:
        super().__init__()
        self.__dict__["_net"] = net  # not a child: the parameters are registered through the reverse layers
        for name, layer in reversed(list(net.named_children())):
            view = layer.reversed() if callable(getattr(layer, "reversed", None)) else ReverseLayer(layer)
            self.add_module(name, view)

    def forward(self, v: Tensor, tape: SequentialTape) -> Tensor:
        return self._net.reverse(v, tape)
