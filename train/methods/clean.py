"""``clean``: the cross-entropy alone, with the same recipe as the other methods (the control)."""

from __future__ import annotations

from .base import Method, cross_entropy_step


class Clean(Method):
    name, label = "clean", "Clean"
    summary = "clean: CE only, same recipe"

    def loss(self, net, x, y, generator=None):
        return cross_entropy_step(net, x, y)
