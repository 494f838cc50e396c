"""Box-constrained minimal-norm L2 attacks from foolbox, DDN and Carlini-Wagner, reported like ρ₂ (issue 31).

Our DeepFool ρ₂ (median ‖Δx‖/‖x‖) is unconstrained: its adversarials may leave the valid images, and a model
whose gradients mislead DeepFool looks robust. The two attacks here look for the smallest L2 perturbation that
stays a valid image. Both run on [0, 1] pixels through :class:`~revnet_app.train.library_attacks.PixelModel`, and
the [0, 1] pixel box is exactly the box of valid network inputs, per pixel
``[(0 − mean)/std, (raw_max·scale − mean)/std]``. Norms are reported in the network-input space where ρ₂ is
measured: ``‖Δ_net‖₂ / ‖x_net‖₂`` per image (``library_attacks._ratio``), ``inf`` where no adversarial was found.
As for ρ₂ and FMN, the labels are the clean predictions, so every image starts correctly classified.

* **DDN** (Rony et al., 2019): normalised cross-entropy gradient steps inside an L2 ball whose radius shrinks by
  5% after an adversarial step and grows by 5% otherwise; the smallest adversarial seen is kept. It needs a
  non-zero CE gradient: where the model saturates (the CE input gradient is exactly 0, see ``saturation.py``)
  its first projection scales a zero step by ``ε/0`` and the attack runs on NaN, which makes its result erratic:
  the LeNet regression reference with its last layer ×30 (the same decisions and distances, 64% zero gradients)
  moved DDN's median on 20 MNIST images from 0.187 to 0.22 and 0.27 in two runs, while C&W's stayed at 0.207.
* **C&W** (Carlini & Wagner, 2017): Adam on ``w = atanh(2·pixel − 1)`` minimising ``‖Δ‖² + c·max(0, z_y − max_{j≠y}
  z_j + confidence)``, with a binary search over ``c``. It uses the logit margin, not the CE, so it works on a
  saturated model. Step size: see :func:`cw_norms`.

When foolbox is missing every result is :data:`~revnet_app.train.library_attacks.NOT_INSTALLED`.
"""

from __future__ import annotations

import math
from typing import Union

import torch
from torch import Tensor, nn

from revnet_app.train import library_attacks as lib
from revnet_app.train.library_attacks import NOT_INSTALLED

CW_STEPSIZE = 0.1  # Adam's step on C&W's tanh-space variable (foolbox's default 0.01 cannot move 0 pixels; see cw_norms)
CW_INITIAL_CONST = 1e-3  # foolbox's default; larger constants overshoot on models with huge logits (see cw_norms)


def ddn_attack(net: nn.Module, x_net: Tensor, preprocess: dict, raw_max: float, *, steps: int = 200,
               batch_size: int = 100, progress: bool = False) -> Union[tuple[Tensor, Tensor, Tensor], str]:
    """foolbox's DDN attack of ``steps`` steps on the [0, 1] pixels of ``x_net (N, C, H, W)``.

    Returns ``(x01 (N, C, H, W), x_adv01 (N, C, H, W), found (N,) bool)``: the clean and adversarial pixels
    and whether ``x_adv01`` is misclassified (where not, ``x_adv01`` is the clean image), or :data:`NOT_INSTALLED`."""
    _check_attack_input(x_net, raw_max, batch_size, steps=steps)
    if lib.missing("fmn"):
        return NOT_INSTALLED
    import foolbox

    return _run(foolbox.attacks.DDNAttack(steps=steps), net, x_net, preprocess, raw_max, batch_size, "DDN-L2",
                progress, fallback_is_zero=False)


def cw_attack(net: nn.Module, x_net: Tensor, preprocess: dict, raw_max: float, *, binary_steps: int = 6,
              steps: int = 200, stepsize: float = CW_STEPSIZE, confidence: float = 0.0,
              initial_const: float = CW_INITIAL_CONST, abort_early: bool = False, batch_size: int = 100,
              progress: bool = False) -> Union[tuple[Tensor, Tensor, Tensor], str]:
    """foolbox's ``L2CarliniWagnerAttack`` on the [0, 1] pixels of ``x_net (N, C, H, W)``; the options are
    :func:`cw_norms`'s. Returns ``(x01, x_adv01, found)`` as :func:`ddn_attack` does, or :data:`NOT_INSTALLED`.

    Where C&W finds nothing foolbox returns the all-zero image, which may happen to be misclassified; such an
    image counts as not found here (the attack did not find it)."""
    _check_attack_input(x_net, raw_max, batch_size, steps=steps, binary_steps=binary_steps)
    if not (0 < float(stepsize) < math.inf) or not (0 < float(initial_const) < math.inf):
        raise ValueError(f"cw_attack: stepsize and initial_const must be finite numbers > 0, got {stepsize!r} and "
                         f"{initial_const!r}.")
    if not (0 <= float(confidence) < math.inf):
        raise ValueError(f"cw_attack: confidence must be a finite number >= 0, got {confidence!r}.")
    if lib.missing("fmn"):
        return NOT_INSTALLED
    import foolbox

    attack = foolbox.attacks.L2CarliniWagnerAttack(binary_search_steps=binary_steps, steps=steps,
                                                   stepsize=float(stepsize), confidence=float(confidence),
                                                   initial_const=float(initial_const), abort_early=abort_early)
    return _run(attack, net, x_net, preprocess, raw_max, batch_size, "C&W-L2", progress, fallback_is_zero=True)


def ddn_norms(net: nn.Module, x_net: Tensor, preprocess: dict, raw_max: float, *, steps: int = 200,
              batch_size: int = 100, progress: bool = False) -> Union[Tensor, str]:
    """Per-image ‖Δ_net‖₂/‖x_net‖₂ of foolbox's DDN attack (``steps`` steps) in the valid-pixel box, shape ``(N,)``
    for ``x_net (N, C, H, W)``; ``inf`` where no adversarial was found. Or :data:`NOT_INSTALLED`.

    DDN steps along the CE gradient, which mixes every class by its softmax weight: where a third class keeps some
    weight at the boundary it stops short of the nearest point (a 3-class linear model with logit margins about 1:
    1.8% above the exact distance, with 200 or 500 steps; with margins about 3: 0.05%)."""
    out = ddn_attack(net, x_net, preprocess, raw_max, steps=steps, batch_size=batch_size, progress=progress)
    return out if isinstance(out, str) else _norms(out, x_net, preprocess, raw_max)


def cw_norms(net: nn.Module, x_net: Tensor, preprocess: dict, raw_max: float, *, binary_steps: int = 6,
             steps: int = 200, stepsize: float = CW_STEPSIZE, confidence: float = 0.0,
             initial_const: float = CW_INITIAL_CONST, abort_early: bool = False, batch_size: int = 100,
             progress: bool = False) -> Union[Tensor, str]:
    """Per-image ‖Δ_net‖₂/‖x_net‖₂ of foolbox's L2 Carlini-Wagner attack in the valid-pixel box, shape ``(N,)`` for
    ``x_net (N, C, H, W)``; ``inf`` where no adversarial was found. Or :data:`NOT_INSTALLED`.

    ``binary_steps`` values of the constant ``c`` (from ``initial_const``: ×10 until an adversarial is found, then
    bisection), each with ``steps`` Adam steps of ``stepsize``; an adversarial must beat the best other logit by
    ``confidence``.

    Step size 0.1, not foolbox's 0.01: foolbox optimises ``w = atanh(0.999999·(2p − 1))``, so a pixel ``p`` at
    exactly 0 (most of an MNIST image) starts at ``w = −7.25`` where tanh is flat, and Adam moves ``w`` by about
    ``stepsize`` per step: 200 steps of 0.01 move it by at most 2, leaving the pixel below 1e-4, while 0 → 0.5
    needs 7.25 (73 steps of 0.1). Measured on the LeNet regression reference
    (``tests/fixtures/regression-lenet-reference.pt``) and 20 MNIST test images with 79% zero pixels, 6 × 200
    steps: with 0.01 every image was fooled but the median ‖Δ‖/‖x‖ was 44% above DDN's and no zero pixel moved by
    more than 0.01 (one image not fooled); with 0.05 and 0.1, 20 of 20 fooled, per image within 0.3% of DDN
    (median of the ratios), about 145 zero pixels moved per image. ``abort_early`` (foolbox's default: stop a constant's Adam run when a
    tenth of the steps lowered the loss by less than 0.01%) is off by default: while the pixels crawl off the flat
    end of tanh the loss hardly moves: on 8 images of exact 0s and 1s (a linear model) it made 0.05 find none
    (without it: all 8, median within 0.1% of the exact distance; 0.01 finds none either way); without it LeNet
    took the same time. ``tests/app/test_minimal_norm.py``
    checks these defaults against the exact box-constrained distance of a linear model on such images.

    ``initial_const`` 1e-3 (foolbox's default): a constant far above the smallest one that fools makes the hinge
    dwarf ``‖Δ‖²`` and Adam overshoots; on a 3-class linear model with logit margins about 1e4 (a saturated
    model) 0.1 left the median 5.5% above the exact distance, 1e-3 0.04%. On LeNet both gave the same median.

    foolbox's untargeted C&W pushes towards the class with the largest other logit, which is not always the
    nearest class inside the box: on 2 of those 8 images it stopped at a boundary 1.3 and 1.8 times farther than
    the nearest one (DDN: 1.07 and 1.02 times). Compare medians, not single images."""
    out = cw_attack(net, x_net, preprocess, raw_max, binary_steps=binary_steps, steps=steps, stepsize=stepsize,
                    confidence=confidence, initial_const=initial_const, abort_early=abort_early,
                    batch_size=batch_size, progress=progress)
    return out if isinstance(out, str) else _norms(out, x_net, preprocess, raw_max)


def median_columns(net: nn.Module, x_net: Tensor, preprocess: dict, raw_max: float, *, ddn_steps: int = 200,
                   cw_binary_steps: int = 6, cw_steps: int = 200, cw_stepsize: float = CW_STEPSIZE,
                   batch_size: int = 100, progress: bool = False) -> dict:
    """``{"ddn_median", "cw_median", "ddn_success", "cw_success"}`` over the images ``x_net (N, C, H, W)``.

    The medians are of the per-image ‖Δ_net‖/‖x_net‖ with failures counted as ``+inf``, so images an attack
    could not fool raise the median instead of leaving it (a median above the fraction found is ``inf``); the
    success values are the fractions fooled. Every value is :data:`NOT_INSTALLED` when foolbox is missing."""
    if lib.missing("fmn"):
        return {k: NOT_INSTALLED for k in ("ddn_median", "cw_median", "ddn_success", "cw_success")}
    ddn = ddn_norms(net, x_net, preprocess, raw_max, steps=ddn_steps, batch_size=batch_size, progress=progress)
    cw = cw_norms(net, x_net, preprocess, raw_max, binary_steps=cw_binary_steps, steps=cw_steps,
                  stepsize=cw_stepsize, batch_size=batch_size, progress=progress)
    return {"ddn_median": ddn.median().item(), "cw_median": cw.median().item(),
            "ddn_success": torch.isfinite(ddn).float().mean().item(),
            "cw_success": torch.isfinite(cw).float().mean().item()}


def _run(attack, net: nn.Module, x_net: Tensor, preprocess: dict, raw_max: float, batch_size: int, what: str,
         progress: bool, *, fallback_is_zero: bool) -> tuple[Tensor, Tensor, Tensor]:
    """``attack`` (a foolbox minimisation attack) on chunks of ``batch_size`` images; ``(x01, x_adv01, found)``."""
    import foolbox

    model = lib.PixelModel(net, preprocess, raw_max).to(x_net.device).eval()
    fmodel = foolbox.PyTorchModel(model, bounds=(0.0, 1.0))
    x01 = lib.to_pixels(x_net, preprocess, raw_max)
    advs, found = [], []
    for start in lib._chunks(len(x01), batch_size, what, progress):
        xs = x01[start:start + batch_size]
        with torch.no_grad():
            labels = model(xs).argmax(1)
        _, x_adv, success = attack(fmodel, xs, foolbox.criteria.Misclassification(labels), epsilons=None)
        if fallback_is_zero:  # C&W's "nothing found": the all-zero image
            success = success & ~((x_adv.flatten(1) == 0).all(1) & (xs.flatten(1) != 0).any(1))
        advs.append(torch.where(success.view(-1, *[1] * (xs.dim() - 1)), x_adv, xs))
        found.append(success)
    return x01, torch.cat(advs), torch.cat(found)


def _norms(result: tuple[Tensor, Tensor, Tensor], x_net: Tensor, preprocess: dict, raw_max: float) -> Tensor:
    x01, x_adv, found = result
    return lib._ratio(x_adv, x01, x_net, lib.pixel_factor(preprocess, raw_max).to(x_net), found)


def _check_attack_input(x_net: Tensor, raw_max: float, batch_size: int, **counts: int) -> None:
    if not isinstance(x_net, Tensor) or x_net.dim() != 4 or len(x_net) == 0 or not x_net.is_floating_point():
        shape = tuple(x_net.shape) if isinstance(x_net, Tensor) else type(x_net).__name__
        raise ValueError(f"minimal-norm attacks need a non-empty float batch of images (N, C, H, W), got {shape}.")
    if not (0 < float(raw_max) < math.inf):
        raise ValueError(f"minimal-norm attacks: raw_max must be a finite number > 0, got {raw_max!r}.")
    for name, value in {"batch_size": batch_size, **counts}.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"minimal-norm attacks: {name} must be an integer >= 1, got {value!r}.")
