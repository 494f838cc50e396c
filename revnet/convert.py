"""``revnet.convert(model)``: the one entry point from a ``torch.nn`` model to its reversible twin.

* A reversible module (a revnet layer, ``Sequential``, ``Graph``, or anything with ``trace``/``reverse``)
  comes back as it is.
* A registered leaf class (``nn.Conv2d``, ``nn.ReLU``, … and what :func:`revnet.register` added) is re-classed
  to its reversible class.
* An ``nn.Sequential`` becomes a ``revnet.Sequential`` (its children converted the same way).
* Anything else becomes a :class:`revnet.Graph`, built from a ``torch.fx`` trace (one graph per mode when the
  forward branches on ``self.training``; ``forward``'s optional arguments traced at their defaults).

The result shares the model's parameters and buffers (the same tensor objects), so training one trains the
other, and the ``state_dict`` keys are unchanged. A module or function without a reverse raises
:class:`revnet.UnsupportedLayerError` naming it and saying how to register one; so does what the converted
network would silently not reproduce: module hooks (forward, forward pre-, backward; on any module, or global),
TorchScript modules and parametrized modules (see :func:`revnet.graph_build.refuse_unconvertible`).
"""

from __future__ import annotations

from torch import nn

from .graph_build import refuse_unconvertible
from .sequential import _as_child


def convert(model: nn.Module) -> nn.Module:
    """A reversible module computing what ``model`` computes, sharing its parameters and buffers."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"revnet.convert expects a torch.nn.Module, got {type(model).__name__}.")
    refuse_unconvertible(model)
    return _as_child(model)
