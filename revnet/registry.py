"""The conversion registry: two tables, data only.

* ``MODULES``: an exact ``torch.nn`` class → its reversible class (a subclass sharing the attributes and
  ``state_dict`` keys). Lookup is by exact type: a subclass of ``nn.ReLU`` with its own ``forward`` is not
  silently treated as a ReLU; register it explicitly.
* ``FUNCTIONS``: a function (``torch.flatten``, ``operator.add``, ``F.relu``, …) or a tensor method name
  (``"view"``, ``"mean"``) → its reverse rule (the protocol is in :mod:`revnet.layers.functional`).

:func:`convert_leaf` re-classes a registered module, sharing its tensors. This module imports the layers
only; :mod:`revnet.convert` (the entry point) sits above it.

Example: a user's own activation::

    import torch
    from torch import nn
    import revnet

    class Square(nn.Module):
        def forward(self, x):
            return x * x

    class ReversibleSquare(Square):
        reverse_label = "TimesTwoX"

        def trace(self, x):
            return x * x, (x,)          # the tape: what reverse needs

        def reverse(self, v, tape):     # v: (N·K, *s) folded rows, sample-major; x: (N, *s)
            (x,) = tape
            n = x.shape[0]
            return (v.reshape(n, -1, *x.shape[1:]) * 2 * x.unsqueeze(1)).reshape(v.shape)

    revnet.register(Square, ReversibleSquare)
    net = revnet.convert(nn.Sequential(nn.Linear(4, 3), Square(), nn.Linear(3, 2)))
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Optional, Union

from torch import nn

from .errors import UnsupportedLayerError
from .layers import FUNCTION_RULES, METHOD_RULES, TORCH_COUNTERPARTS, is_reversible

MODULES: dict[type[nn.Module], type[nn.Module]] = {torch_cls: rev for rev, torch_cls in TORCH_COUNTERPARTS.items()}
FUNCTIONS: dict[Union[Callable, str], Any] = {**FUNCTION_RULES, **METHOD_RULES}
RULE_METHODS = ("inputs", "forward", "trace", "reverse")


def register(torch_cls: type[nn.Module], reversible_cls: type[nn.Module]) -> None:
    """Make :func:`revnet.convert` turn ``torch_cls`` instances into ``reversible_cls`` (in chains and graphs).

    ``reversible_cls`` must subclass ``torch_cls`` (so it shares its attributes and ``state_dict`` keys) and
    define ``trace(x) -> (y, tape)`` and ``reverse(v, tape) -> g`` on folded rows (see
    :mod:`revnet.layers.protocol`). Registering a class again replaces the earlier entry.
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
    MODULES[torch_cls] = reversible_cls


def register_function(target: Union[Callable, str], rule: Any) -> None:
    """Give a function (e.g. ``torch.clamp``) or a tensor method name (e.g. ``"clamp"``) a reverse rule in traced
    graphs. ``rule`` implements ``inputs``, ``forward``, ``trace`` and ``reverse`` as described in
    :mod:`revnet.layers.functional`. Registering a target again replaces the earlier rule.

    Example: ``F.hardswish`` is registered this way (:mod:`revnet.layers.hard`), as a call that amounts to the
    stateless ``Hardswish`` layer; ``LayerRule`` names the arguments, and ``inplace=True`` is computed out of
    place so the tape keeps the input::

        from revnet.layers.functional import LayerRule
        revnet.register_function(F.hardswish, LayerRule(("input", "inplace"), {"inplace": False},
                                                        lambda bound: revnet.Hardswish()))

    Check a rule of your own with :func:`revnet.check` (forward, first and second order against autograd, and
    the first node that disagrees)."""
    if not (callable(target) or isinstance(target, str)):
        raise TypeError(f"register_function() needs a function or a method name, got {target!r}.")
    missing = [name for name in RULE_METHODS if not callable(getattr(rule, name, None))]
    if missing:
        raise TypeError(f"register_function({target!r}, ...): the rule lacks {', '.join(missing)}.")
    FUNCTIONS[target] = rule


def rule_for(target: Union[Callable, str]) -> Optional[Any]:
    """The reverse rule of a function or method name, or ``None``."""
    try:
        return FUNCTIONS.get(target)
    except TypeError:  # an unhashable target
        return None


def is_registered(module: nn.Module) -> bool:
    return type(module) in MODULES


def supported() -> list[str]:
    """Names of the ``torch.nn`` classes that convert as leaves (``nn.Sequential`` and any traceable model too)."""
    return sorted(cls.__name__ for cls in [*MODULES, nn.Sequential])


def supported_functions() -> list[str]:
    """Names of the functions and tensor methods that traced graphs may use."""
    names = {t if isinstance(t, str) else f"{getattr(t, '__module__', '') or ''}.{t.__name__}".lstrip(".")
             for t in FUNCTIONS}
    return sorted(n.replace("torch._C._nn.", "torch.nn.functional.").replace("_operator.", "operator.") for n in names)


def unsupported_module_message(module: nn.Module) -> str:
    name = type(module).__name__
    return (f"{name} has no reverse in revnet. Supported torch.nn modules: {', '.join(supported())}. "
            f"Add your own with revnet.register({name}, Reversible{name}).")


def convert_leaf(module: nn.Module) -> nn.Module:
    """Re-class a registered module to its reversible class, sharing its parameters and buffers (the same
    tensor objects); a reversible module comes back as it is."""
    if is_reversible(module):
        return module
    reversible_cls = MODULES.get(type(module))
    if reversible_cls is None:
        raise UnsupportedLayerError(unsupported_module_message(module))
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
