"""The peers' DeepFool, for ``benchmarks/deepfool.py``: foolbox's ``L2DeepFoolAttack`` and torchattacks'
``DeepFool``, run on the same plain ``torch.nn`` network, images and iteration budget as revnet's.

Both solve the same problem as ``revnet.attacks.deepfool`` (untargeted L2 DeepFool away from the clean
prediction, all classes as candidates, ``steps`` iterations at most, overshoot 0.02), with these stated
differences:

* **foolbox** (``fb.attacks.L2DeepFoolAttack(steps, candidates=C, overshoot, loss="logits")``) gets the
  network's own input space and bounds ``(−inf, inf)``, so its clipping never acts; labels are the clean
  predictions (``fb.criteria.Misclassification``). It adds ``1e-4`` to each step's distance (its "numerical
  stability" term), so its steps are slightly longer than revnet's, and it runs the whole batch every
  iteration until every sample is adversarial (finished samples masked). Perturbation: its output minus the
  input.
* **torchattacks** (``torchattacks.DeepFool(model, steps, overshoot)``) attacks one image at a time, builds the
  full Jacobian with one ``backward`` per class, and scales each step by ``1 + overshoot`` (revnet scales the
  sum). It only takes [0, 1] inputs and clamps every iterate to [0, 1], so it gets the network behind an affine
  map ``t ↦ x`` that puts the whole pixel range and every perturbation it reaches into the middle of [0, 1]
  (``t = 0.5 + (pixels − 0.5) / BOX_SHRINK``, then the checkpoint's preprocessing): DeepFool is equivariant to
  this isotropic scaling, so its clamp never acts and it solves the unbounded problem; its perturbation is
  mapped back to the network's input space (times ``BOX_SHRINK`` and the preprocessing's scale). (With the
  real [0, 1] pixel box its clamp stalls it: 9 of 20 LeNet images were not adversarial after 50 steps.)
  torchattacks pins an old ``requests`` and would downgrade several packages, so it is only in the optional
  ``bench`` extra; when it is missing the benchmark reports it as "not installed".
"""

from __future__ import annotations

import importlib.util
from typing import Callable, Optional

import torch
from torch import Tensor, nn

PEERS = ("foolbox", "torchattacks")
INSTALL = {
    "foolbox": "pip install 'foolbox>=3.3' (in the test extra: pip install -e '.[test]')",
    "torchattacks": "pip install -e '.[bench]' (downgrades requests), or pip install --no-deps torchattacks",
}


def missing(name: str) -> Optional[str]:
    """``None`` if peer ``name`` imports, else a one-line reason: not installed (with the install command), or
    installed but failing to import (a dependency of its own missing, e.g. foolbox carried as a wheel without
    GitPython), with the import's error."""
    if importlib.util.find_spec(name) is None:
        return f"not installed ({INSTALL[name]})"
    try:
        importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 - any import-time failure makes the peer's row a reason, not a crash
        first = (str(exc).strip().splitlines() or [""])[0]
        return f"installed but does not import ({type(exc).__name__}: {first})"
    return None


BOX_SHRINK = 100.0  # pixels in [0, 1] -> t in [0.495, 0.505]; a DeepFool step would need |Δpixel| > 49 to clamp


class PixelNet(nn.Module):
    """``net`` on shrunk pixels ``t``: ``net(pixels · scale − shift)`` with ``pixels = 0.5 + (t − 0.5) · shrink``
    and the per-pixel ``shift`` (an MNIST checkpoint's preprocessing: x/255 − mean, on pixels = x/255)."""

    def __init__(self, net: nn.Module, scale: float, shift: Tensor, shrink: float = BOX_SHRINK):
        super().__init__()
        self.net = net
        self.scale = float(scale)
        self.shrink = float(shrink)
        self.register_buffer("shift", shift)

    def to_t(self, x: Tensor) -> Tensor:
        """The network input ``x`` as ``t`` (the inverse of the map in ``forward``)."""
        return 0.5 + ((x + self.shift) / self.scale - 0.5) / self.shrink

    def forward(self, t: Tensor) -> Tensor:
        return self.net((0.5 + (t - 0.5) * self.shrink) * self.scale - self.shift)


def foolbox_attack(net: nn.Module, steps: int, overshoot: float,
                   num_classes: int) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
    """A function ``x (N, *in) -> (Δx (N, *in), fooled (N,) bool)``: foolbox's L2 DeepFool on ``net`` (eval
    mode, frozen weights), unbounded, with the clean predictions as labels."""
    import foolbox as fb

    model = fb.PyTorchModel(net, bounds=(-float("inf"), float("inf")))
    attack = fb.attacks.L2DeepFoolAttack(steps=steps, candidates=num_classes, overshoot=overshoot, loss="logits")

    def run(x: Tensor) -> Tensor:
        with torch.no_grad():
            labels = net(x).argmax(1)
        adv = attack.run(model, x, fb.criteria.Misclassification(labels)).detach()
        with torch.no_grad():
            fooled = net(adv).argmax(1) != labels
        return adv - x, fooled

    return run


def torchattacks_attack(net: nn.Module, steps: int, overshoot: float, scale: float,
                        shift: Tensor) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
    """A function ``x (N, *in) -> (Δx (N, *in), fooled (N,) bool)``, ``Δx`` in the network's input space:
    torchattacks' DeepFool on ``t`` of ``PixelNet(net)`` (unbounded in effect, see the module docstring), with
    the clean predictions as labels; ``fooled`` is judged on its own output."""
    import torchattacks

    pixel_net = PixelNet(net, scale, shift).eval()
    attack = torchattacks.DeepFool(pixel_net, steps=steps, overshoot=overshoot)

    def run(x: Tensor) -> Tensor:
        t = pixel_net.to_t(x)
        with torch.no_grad():
            labels = pixel_net(t).argmax(1)
        adv = attack(t, labels).detach()
        with torch.no_grad():
            fooled = pixel_net(adv).argmax(1) != labels
        return (adv - t) * pixel_net.shrink * pixel_net.scale, fooled

    return run
