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
  full Jacobian with one ``backward`` per class, scales each step by ``1 + overshoot`` (revnet scales the sum)
  and clamps every iterate to [0, 1]. It only accepts [0, 1] images, so it gets the network behind the
  checkpoint's preprocessing (``PixelModel``: pixels → network input, a shift and a scale) and the
  pixel images: the box is then the real pixel range [0, 1]; its perturbation is mapped back to the
  network's input space (divided by the pixel → input scale) so that all norms are in one space.
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
    """``None`` if peer ``name`` can be imported, else a one-line reason with the install command."""
    if importlib.util.find_spec(name) is None:
        return f"not installed ({INSTALL[name]})"
    return None


class PixelNet(nn.Module):
    """``net`` on [0, 1] pixels: ``net(x01 · scale − shift)`` with the per-pixel ``shift`` (the preprocessing of an
    MNIST checkpoint: x/255 − mean, on x01 = x/255)."""

    def __init__(self, net: nn.Module, scale: float, shift: Tensor):
        super().__init__()
        self.net = net
        self.scale = float(scale)
        self.register_buffer("shift", shift)

    def forward(self, x01: Tensor) -> Tensor:
        return self.net(x01 * self.scale - self.shift)


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
    torchattacks' DeepFool on the pixels ``(x + shift) / scale`` of ``PixelNet(net)``, with the clean
    predictions as labels; ``fooled`` is judged on its pixel output (it ends a hair past the boundary, so
    re-adding ``Δx`` in the other space can round back)."""
    import torchattacks

    pixel_net = PixelNet(net, scale, shift).eval()
    attack = torchattacks.DeepFool(pixel_net, steps=steps, overshoot=overshoot)

    def run(x: Tensor) -> Tensor:
        x01 = ((x + shift) / scale).clamp(0, 1)
        with torch.no_grad():
            labels = pixel_net(x01).argmax(1)
        adv = attack(x01, labels).detach()
        with torch.no_grad():
            fooled = pixel_net(adv).argmax(1) != labels
        return (adv - x01) * scale, fooled

    return run
