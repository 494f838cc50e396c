"""Attacks from the field's libraries, not ours: AutoAttack-L2 (``pyautoattack``) and FMN-L2 (``foolbox``).

They check that robustness measured with our own DeepFool is real: AutoAttack is the field's standard for a
robustness claim, and FMN is a minimal-norm attack unrelated to DeepFool. Both attack the model on [0, 1]
pixels through :class:`PixelModel`, which applies the checkpoint's preprocessing, so both stay inside the valid
[0, 1] box (unlike our DeepFool, FGS and PGD, which are unclipped unless ``--clip``). Norms are reported in the
network-input space where ρ₂ is measured: ``Δ_net = Δ_pixels · raw_max · scale / std`` per channel (MNIST:
x/255 − mean, so the two spaces have the same L2 norms).

When a package is missing the result is :data:`NOT_INSTALLED` and nothing crashes; ``pip install -e '.[test]'``
installs both.
"""

from __future__ import annotations

import importlib.util
import math
from typing import Optional, Union

import torch
from torch import Tensor, nn
from tqdm import tqdm

from revnet_app.train.engine import show_progress

NOT_INSTALLED = "not installed"
PACKAGES = {"autoattack": "pyautoattack", "fmn": "foolbox"}
DDN_INIT_STEPS = 30  # FMN starts from a DDN adversarial of this many steps (see l2_fmn_attack)


def add_flags(p, *, autoattack_samples: int, fmn_samples: int, eps: str) -> None:
    """``--autoattack-samples``, ``--fmn-samples``, ``--fmn-steps`` and ``--attack-seed`` on parser ``p``."""
    p.add_argument("--autoattack-samples", type=int, default=autoattack_samples,
                   help=f"attack the first N test images with AutoAttack-L2 (pyautoattack, standard version: "
                        f"APGD-CE, APGD-T, FAB-T, Square; in the [0, 1] pixel box) at {eps}; 0: skip. Minutes per "
                        "hundred LeNet images on 2 CPU cores; under torchrun rank 0 runs it alone")
    p.add_argument("--fmn-samples", type=int, default=fmn_samples,
                   help=f"report the median ‖Δx‖/‖x‖ of foolbox's L2 FMN (projection repaired, started from DDN; the clean predictions as labels, [0, 1] "
                        "pixel box) over the first N test images; 0: skip")
    p.add_argument("--fmn-steps", type=int, default=100, help="FMN steps")
    p.add_argument("--fmn-init-steps", type=int, default=DDN_INIT_STEPS,
                   help="FMN starts from the adversarial of foolbox's DDN attack with this many steps (0: from the "
                        "clean image, where FMN fails to cross the boundary of ReLU networks here)")
    p.add_argument("--attack-seed", type=int, default=0, help="seed of AutoAttack's random restarts")


def missing(attack: str) -> Optional[str]:
    """The pip package ``attack`` ("autoattack" or "fmn") needs if it is not installed, else ``None``."""
    package = PACKAGES[attack]
    return None if importlib.util.find_spec(package) is not None else package


def pixel_factor(preprocess: dict, raw_max: float) -> Tensor:
    """How a [0, 1]-pixel perturbation scales into network input: ``raw_max · scale / std``, shape ``()`` or
    ``(C, 1, 1)``."""
    factor = torch.as_tensor(float(raw_max) * float(preprocess["scale"]))
    std = preprocess.get("std")
    return factor if std is None else factor / std.float()


def to_pixels(x_net: Tensor, preprocess: dict, raw_max: float) -> Tensor:
    """Network inputs ``(N, C, H, W)`` back to [0, 1] pixels (clamped: float round-off only)."""
    std = preprocess.get("std")
    raw = (x_net * (1.0 if std is None else std.to(x_net)) + preprocess["mean"].to(x_net)) / preprocess["scale"]
    return (raw / raw_max).clamp(0.0, 1.0)


class PixelModel(nn.Module):
    """``net`` on [0, 1] pixels: ``forward(x01 (N, C, H, W)) = net((x01·raw_max·scale − mean) / std)``."""

    def __init__(self, net: nn.Module, preprocess: dict, raw_max: float):
        super().__init__()
        self.net = net
        self.raw_max = float(raw_max)
        self.register_buffer("scale", torch.as_tensor(float(preprocess["scale"])))
        self.register_buffer("mean", preprocess["mean"].float())
        std = preprocess.get("std")
        self.register_buffer("std", torch.ones(()) if std is None else std.float())

    def forward(self, x01: Tensor) -> Tensor:
        return self.net((x01 * self.raw_max * self.scale - self.mean) / self.std)


def first_images(test_set, k: int) -> tuple[Tensor, Tensor]:
    """The first ``k`` images ``(k, *in)`` and labels ``(k,)`` of an iterable of preprocessed ``(x, y)`` batches."""
    xs, ys, n = [], [], 0
    for x, y in test_set:
        xs.append(x)
        ys.append(y)
        n += len(y)
        if n >= k:
            break
    return torch.cat(xs)[:k], torch.cat(ys)[:k]


def metrics(net: nn.Module, test_set, preprocess: dict, raw_max: float, *, autoattack_samples: int,
            autoattack_eps: Optional[float], fmn_samples: int, fmn_steps: int, fmn_init_steps: int, seed: int,
            progress: bool = True) -> dict:
    """AutoAttack-L2 accuracy at ``autoattack_eps`` on the first ``autoattack_samples`` images of ``test_set``
    (an iterable of preprocessed ``(x, y)`` batches) and the FMN-L2 median ‖Δx‖/‖x‖ of the first ``fmn_samples``;
    keys ``aa_acc``, ``aa_n``, ``fmn_median``, ``fmn_success_rate``, ``fmn_n`` for the attacks asked for (0: not
    asked), each value :data:`NOT_INSTALLED` where its package is missing."""
    out: dict = {}
    if autoattack_samples:
        x, y = first_images(test_set, autoattack_samples)
        aa = autoattack_accuracy(net, x, y, autoattack_eps, preprocess, raw_max, seed=seed, progress=progress)
        out.update({"aa_acc": aa, "aa_n": aa} if isinstance(aa, str) else {"aa_acc": aa["acc"], "aa_n": aa["n"]})
    if fmn_samples:
        x, _ = first_images(test_set, fmn_samples)
        fmn = fmn_median(net, x, preprocess, raw_max, steps=fmn_steps, init_steps=fmn_init_steps, progress=progress)
        out.update({k: fmn for k in ("fmn_median", "fmn_success_rate", "fmn_n")} if isinstance(fmn, str) else
                   {"fmn_median": fmn["median"], "fmn_success_rate": fmn["success_rate"], "fmn_n": fmn["n"]})
    return out


def _chunks(n: int, size: int, what: str, progress: bool):
    starts = range(0, n, size)
    return tqdm(starts, desc=what, unit="chunk", total=len(starts), leave=False, disable=not show_progress(progress),
                dynamic_ncols=True)


def autoattack_accuracy(net: nn.Module, x_net: Tensor, y: Tensor, eps_net: float, preprocess: dict,
                        raw_max: float, *, seed: int = 0, chunk: int = 50, progress: bool = True
                        ) -> Union[dict, str]:
    """Robust accuracy of ``net`` on ``(x_net (N, *in), y (N,))`` under AutoAttack's standard L2 ensemble
    (APGD-CE, APGD-T, FAB-T, Square) in the [0, 1] box.

    The pixel radius is ``eps_net / max(pixel_factor)``: a pixel ball that lies inside the network-input ball
    of radius ``eps_net`` (the same ball where every channel has the same scale, as on MNIST). Returns
    ``{"acc", "n", "eps", "eps_pixels", "seed"}`` or :data:`NOT_INSTALLED`. The global RNG is left as it was."""
    if missing("autoattack"):
        return NOT_INSTALLED
    from pyautoattack import AutoAttack

    device = x_net.device
    model = PixelModel(net, preprocess, raw_max).to(device).eval()
    eps_pixels = eps_net / pixel_factor(preprocess, raw_max).max().item()
    x01 = to_pixels(x_net, preprocess, raw_max)
    robust = 0
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for start in _chunks(len(y), chunk, "AutoAttack-L2", progress):
            xs, ys = x01[start:start + chunk], y[start:start + chunk]
            attack = AutoAttack(model, norm="L2", eps=eps_pixels, version="standard", seed=seed, device=device)
            attack.logger.disabled = True  # its per-attack log lines would break the progress bar
            x_adv, _ = attack.run_standard_evaluation(xs, ys, batch_size=chunk)
            _check_inside(x_adv, xs, eps_pixels)
            with torch.no_grad():
                robust += int((model(x_adv).argmax(1) == ys).sum())
    return {"acc": robust / len(y), "n": len(y), "eps": eps_net, "eps_pixels": eps_pixels, "seed": seed}


def fmn_norms(net: nn.Module, x_net: Tensor, preprocess: dict, raw_max: float, *, steps: int = 100,
              init_steps: int = DDN_INIT_STEPS, chunk: int = 100, progress: bool = True) -> Union[Tensor, str]:
    """Per-image ‖Δ_net‖₂/‖x_net‖₂ of foolbox's L2 FMN attack (``steps`` steps, started from foolbox's DDN
    attack of ``init_steps`` steps; see :func:`l2_fmn_attack`) in the [0, 1] box, shape ``(N,)``; ``inf`` where
    no adversarial was found. The labels are ``net``'s clean predictions, as for ρ₂ (with the true labels FMN
    returns Δ = 0 for misclassified images). Or :data:`NOT_INSTALLED`."""
    if missing("fmn"):
        return NOT_INSTALLED
    import eagerpy as ep
    import foolbox

    model = PixelModel(net, preprocess, raw_max).to(x_net.device).eval()
    fmodel = foolbox.PyTorchModel(model, bounds=(0.0, 1.0))
    attack = l2_fmn_attack(steps)
    factor = pixel_factor(preprocess, raw_max).to(x_net)
    out = []
    for start in _chunks(len(x_net), chunk, "FMN-L2", progress):
        xs = x_net[start:start + chunk]
        x01 = to_pixels(xs, preprocess, raw_max)
        with torch.no_grad():
            labels = model(x01).argmax(1)
        ratio = torch.full((len(xs),), math.inf, device=xs.device)
        if init_steps:  # FMN needs adversarial starting points: DDN's, else (rarely) a blend with uniform noise
            x_start, ok = fmn_starting_points(fmodel, x01, labels, init_steps)
            idx = ok.nonzero().squeeze(1)
            if len(idx):
                _, x_adv, success = attack(fmodel, x01[idx], foolbox.criteria.Misclassification(labels[idx]),
                                           epsilons=None, starting_points=ep.astensor(x_start[idx]))
                ratio[idx] = _ratio(x_adv, x01[idx], xs[idx], factor, success)
        else:
            _, x_adv, success = attack(fmodel, x01, foolbox.criteria.Misclassification(labels), epsilons=None)
            ratio = _ratio(x_adv, x01, xs, factor, success)
        out.append(ratio)
    return torch.cat(out)


def _ratio(x_adv: Tensor, x01: Tensor, x_net: Tensor, factor: Tensor, success: Tensor) -> Tensor:
    """‖Δ_net‖/‖x_net‖ per image, ``inf`` where the attack failed."""
    delta = ((x_adv - x01) * factor).flatten(1)
    ratio = torch.linalg.vector_norm(delta, dim=1) / torch.linalg.vector_norm(x_net.flatten(1), dim=1)
    return torch.where(success, ratio, torch.full_like(ratio, math.inf))


def fmn_starting_points(fmodel, x01: Tensor, labels: Tensor, ddn_steps: int) -> tuple[Tensor, Tensor]:
    """Adversarial starting points for FMN, ``(x_start (N, *in), found (N,) bool)``: foolbox's DDN attack of
    ``ddn_steps`` steps, and for the images it does not fool, foolbox's gradient-free blend with uniform noise."""
    import foolbox

    _, x_start, ok = foolbox.attacks.DDNAttack(steps=ddn_steps)(
        fmodel, x01, foolbox.criteria.Misclassification(labels), epsilons=None)
    x_start, ok = x_start.clone(), ok.clone()
    if not ok.all():
        rest = (~ok).nonzero().squeeze(1)
        noise = foolbox.attacks.LinearSearchBlendedUniformNoiseAttack(distance=foolbox.distances.l2)
        _, x_noise, ok_noise = noise(fmodel, x01[rest], foolbox.criteria.Misclassification(labels[rest]),
                                     epsilons=None)
        x_start[rest], ok[rest] = x_noise, ok_noise
    return x_start, ok


def l2_fmn_attack(steps: int):
    """foolbox's ``L2FMNAttack(steps=steps)``, with its projection onto the L2 ball repaired if it is broken;
    :func:`fmn_norms` starts it from :func:`fmn_starting_points`.

    Two things were measured here (tests/app/test_library_attacks.py and benchmarks/fmn_calibration.py on the MLP
    reference's first 10 test images, medians in pixel units):
    * foolbox 3.3.4 (and its main branch when this was written) projects with the factor
      ``min(1, ‖x‖/‖x‖) = 1``, i.e. not at all, so its "minimal" perturbation is just the first adversarial its
      gradient steps reach (several times the exact distance on a linear model; 7.36 on the MLP against
      DeepFool's 1.24). The repair is the FMN paper's projection ``x0 + (x − x0)·min(1, ε/‖x − x0‖)``; if
      foolbox's own projection works, it is used as it is.
    * Repaired and started from the clean image, FMN approaches the decision boundary from the inside and never
      crosses it on a ReLU MLP (0 of 10 images in 1,000 steps); from a blend with uniform noise it stalls (1.57).
      From a 30-step DDN start (another minimal-norm attack, unrelated to DeepFool) its median is 1.215, equal
      to Carlini-Wagner's (1,000 steps) and 2% below DeepFool's."""
    import foolbox

    stock = foolbox.attacks.L2FMNAttack
    if not stock_l2_fmn_projection_is_broken():
        return stock(steps=steps)

    class RepairedL2FMNAttack(stock):
        def project(self, x, x0, epsilon):
            import eagerpy as ep

            norms = ep.maximum(ep.norms.l2(foolbox.devutils.flatten(x - x0), axis=-1), 1e-12)
            factor = ep.minimum(1, epsilon / norms)
            return x0 + (x - x0) * foolbox.devutils.atleast_kd(factor, x.ndim)

    return RepairedL2FMNAttack(steps=steps)


def stock_l2_fmn_projection_is_broken() -> bool:
    """Whether foolbox's L2 FMN leaves a step of norm 2 unprojected onto the ball of radius 1."""
    import eagerpy as ep
    import foolbox

    x0 = ep.astensor(torch.zeros(1, 4))
    x = ep.astensor(torch.tensor([[2.0, 0.0, 0.0, 0.0]]))
    out = foolbox.attacks.L2FMNAttack().project(x=x, x0=x0, epsilon=ep.astensor(torch.ones(1)))
    return bool(torch.linalg.vector_norm(out.raw) > 1.0 + 1e-6)


def fmn_median(net: nn.Module, x_net: Tensor, preprocess: dict, raw_max: float, *, steps: int = 100,
               init_steps: int = DDN_INIT_STEPS, progress: bool = True) -> Union[dict, str]:
    """``{"median", "success_rate", "n", "steps"}`` of :func:`fmn_norms`, or :data:`NOT_INSTALLED`."""
    norms = fmn_norms(net, x_net, preprocess, raw_max, steps=steps, init_steps=init_steps, progress=progress)
    if isinstance(norms, str):
        return norms
    return {"median": norms.median().item(), "success_rate": torch.isfinite(norms).float().mean().item(),
            "n": len(norms), "steps": steps, "init_steps": init_steps}


def _check_inside(x_adv: Tensor, x01: Tensor, eps_pixels: float) -> None:
    """AutoAttack's output must lie in the [0, 1] box and the L2 ball (a library bug must not pass silently)."""
    norms = torch.linalg.vector_norm((x_adv - x01).flatten(1), dim=1)
    if x_adv.min() < -1e-6 or x_adv.max() > 1 + 1e-6 or norms.max() > eps_pixels * (1 + 1e-4) + 1e-6:
        raise RuntimeError(f"AutoAttack returned images outside the [0, 1] box or the L2 ball of {eps_pixels:g} "
                           f"(max ‖Δ‖ {norms.max().item():g})")
