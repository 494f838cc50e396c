"""Conversion of plain ``torch.nn`` modules into reversible ones, through one explicit registry.

The registry maps an exact ``torch.nn`` class to a reversible class. Conversion keeps the module's
parameters, buffers and settings (the *same* tensor objects, so the two modules share weights) and only
changes the class. Lookup is by exact type: a subclass of ``nn.ReLU`` with its own ``forward`` is not
silently treated as a ReLU; register it explicitly.

Example: a user's own activation::

    class Square(nn.Module):
        def forward(self, x):
            return x * x

    class ReversibleSquare(Square):
        reverse_label = "TimesTwoX"

        def trace(self, x):
            return x * x, (x,)          # the tape: what reverse needs

        def reverse(self, v, tape):
            (x,) = tape                 # v: (N·K, *s) rows, sample-major; x: (N, *s)
            n = x.shape[0]
            return (v.reshape(n, -1, *x.shape[1:]) * 2 * x.unsqueeze(1)).reshape(v.shape)

    revnet.register(Square, ReversibleSquare)
    net = revnet.Sequential(nn.Linear(4, 3), Square(), nn.Linear(3, 2))
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from .errors import UnsupportedLayerError
from .layers import TORCH_COUNTERPARTS, is_reversible

_REGISTRY: dict[type[nn.Module], type[nn.Module]] = {torch_cls: rev for rev, torch_cls in TORCH_COUNTERPARTS.items()}
_CONTAINERS: set[type[nn.Module]] = {nn.Sequential}


def register(torch_cls: type[nn.Module], reversible_cls: type[nn.Module]) -> None:
    """Make :func:`convert` (and so ``revnet.Sequential``) turn ``torch_cls`` instances into ``reversible_cls``.

    ``reversible_cls`` must subclass ``torch_cls`` (so it shares its attributes and ``state_dict`` keys) and
    define ``trace(x) -> (y, tape)`` and ``reverse(v, tape) -> g`` (see :mod:`revnet.layers.protocol`).
    Registering a class again replaces the earlier entry.
    """
    if not (isinstance(torch_cls, type) and issubclass(torch_cls, nn.Module)):
        raise TypeError(f"register() needs an nn.Module subclass as its first argument, got {torch_cls!r}.")
    if not (isinstance(reversible_cls, type) and issubclass(reversible_cls, torch_cls)):
        raise TypeError(
            f"register({torch_cls.__name__}, {getattr(reversible_cls, '__name__', reversible_cls)!r}): the reversible "
            f"class must subclass {torch_cls.__name__} so that it shares its attributes and state_dict keys."
        )
    if not is_reversible(reversible_cls):
        raise TypeError(
            f"register({torch_cls.__name__}, {reversible_cls.__name__}): the reversible class must define "
            "trace(x) -> (y, tape) and reverse(v, tape) -> g."
        )
    _REGISTRY[torch_cls] = reversible_cls


def supported() -> list[str]:
    """Names of the ``torch.nn`` classes that :func:`convert` accepts."""
    return sorted(cls.__name__ for cls in [*_REGISTRY, *_CONTAINERS])


def convert(module: nn.Module) -> nn.Module:
    """Return a reversible module computing what ``module`` computes, sharing its parameters.

    Reversible modules are returned unchanged; ``nn.Sequential`` becomes ``revnet.Sequential`` (converted
    recursively); registered classes are re-classed. Anything else raises :class:`UnsupportedLayerError`.
    """
    if is_reversible(module):
        return module
    if type(module) in _CONTAINERS:
        from .sequential import Sequential

        return Sequential(OrderedDict(module.named_children()))
    reversible_cls = _REGISTRY.get(type(module))
    if reversible_cls is None:
        raise UnsupportedLayerError(
            f"{type(module).__name__} has no reverse in revnet. Supported torch.nn modules: {', '.join(supported())}. "
            f"Add your own with revnet.register({type(module).__name__}, Reversible{type(module).__name__})."
        )
    converted = reversible_cls.__new__(reversible_cls)
    state = dict(module.__dict__)
    for key, value in state.items():  # own dicts (same tensors inside) so later re-assignments stay separate
        if isinstance(value, (dict, OrderedDict)):
            state[key] = type(value)(value)
    converted.__dict__.update(state)
    check = getattr(converted, "_check_supported", None)
    if check is not None:  # the options the constructor would have rejected
        check()
    return converted
