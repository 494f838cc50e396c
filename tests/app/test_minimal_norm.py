"""Box-constrained minimal-norm attacks (``train/minimal_norm.py``: foolbox's DDN and C&W) against the exact
distances of linear models, and the saturation check (``train/saturation.py``) on a model made to saturate.

A linear model's distance to the nearest other label is known in closed form: without a box
``min_j m_j/‖w_j − w_k‖``; inside the [0, 1] box, for each ``j`` the smallest ``δ`` with ``a·δ ≥ m`` is
``clamp(λ·a, −x, 1 − x)`` for the ``λ`` where ``a·δ = m`` (found by bisection).

Time budget: ≤ 40 s on one core (tiny linear models on 1×4×4 images, a few images each).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from revnet_app.train import library_attacks as lib
from revnet_app.train import minimal_norm as mn
from revnet_app.train import saturation as sat

needs_foolbox = pytest.mark.skipif(lib.missing("fmn") is not None, reason="foolbox is in the test extra")

IDENTITY = {"scale": 1 / 255, "mean": torch.zeros(1, 4, 4)}  # network input = [0, 1] pixels
COLUMNS = ("PGD-L2 acc.", "FMN-L2 median", "AutoAttack's APGD-CE part")


def linear_model(classes: int = 3, *, gain: float = 10.0, seed: int = 0) -> nn.Module:
    """``f(x) = gain·(Wx + b)`` on ``(N, 1, 4, 4)`` inputs, float32, in eval mode."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, classes))
    with torch.no_grad():
        net[1].weight.mul_(gain)
        net[1].bias.mul_(gain)
    return net.eval()


def inside_images(n: int, seed: int = 1) -> torch.Tensor:
    """``(n, 1, 4, 4)`` pixels in [0.4, 0.6]: the minimal perturbation of :func:`linear_model` stays in the box."""
    g = torch.Generator().manual_seed(seed)
    return 0.4 + 0.2 * torch.rand(n, 1, 4, 4, generator=g)


def binary_images(n: int, seed: int = 2) -> torch.Tensor:
    """``(n, 1, 4, 4)`` MNIST-like pixels, exactly 0 (about 70%) or 1: each pixel can move one way only."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 1, 4, 4, generator=g) < 0.3).float()


def exact_distances(model: nn.Module, x01: torch.Tensor, *, box: bool) -> torch.Tensor:
    """The minimal L2 distance ``(N,)`` in pixels from each image to another label of the linear ``model``
    (pixels → logits), without or within the [0, 1] box; float64."""
    w = model_weight(model).double()
    x = x01.flatten(1).double()
    with torch.no_grad():
        logits = model(x01).double()
    k = logits.argmax(1)
    out = torch.full((len(x),), math.inf, dtype=torch.float64)
    for i in range(len(x)):
        for j in range(w.shape[0]):
            if j != k[i]:
                a, m = w[j] - w[k[i]], logits[i, k[i]] - logits[i, j]
                d = box_distance(a, m, x[i]) if box else m / torch.linalg.vector_norm(a)
                out[i] = min(out[i], float(d))
    return out


def box_distance(a: torch.Tensor, m: torch.Tensor, x: torch.Tensor) -> float:
    """``min ‖δ‖ s.t. a·δ ≥ m, 0 ≤ x + δ ≤ 1`` (KKT: ``δ = clamp(λa, −x, 1 − x)``, ``λ`` by bisection)."""
    def step(lam: float) -> torch.Tensor:
        return torch.minimum(torch.maximum(lam * a, -x), 1 - x)

    if float(a @ step(1e12)) < m:
        return math.inf
    lo, hi = 0.0, 1.0
    while float(a @ step(hi)) < m:
        hi *= 2
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if float(a @ step(mid)) < m else (lo, mid)
    return float(torch.linalg.vector_norm(step(hi)))


def model_weight(model: nn.Module) -> torch.Tensor:
    """The pixel-space weight ``(C, 16)`` of a linear network or of its :class:`PixelModel` (factor 1 here)."""
    net = model.net if isinstance(model, lib.PixelModel) else model
    return net[1].weight.detach()


def ratios(distances: torch.Tensor, x_net: torch.Tensor) -> torch.Tensor:
    return distances / torch.linalg.vector_norm(x_net.flatten(1).double(), dim=1)


@needs_foolbox
def test_ddn_and_cw_find_the_closed_form_distance_of_a_linear_model_inside_the_box():
    net, x = linear_model(), inside_images(8)
    exact = exact_distances(net, x, box=False)
    assert torch.allclose(exact_distances(net, x, box=True), exact)  # the box does not bind here
    exact_ratio = ratios(exact, x)
    ddn = mn.ddn_norms(net, x, IDENTITY, 255.0, steps=200)
    cw = mn.cw_norms(net, x, IDENTITY, 255.0)
    for found in (ddn, cw):
        assert torch.isfinite(found).all()
        assert (found.double() >= exact_ratio * (1 - 1e-4)).all()  # a real adversarial is never closer
        assert found.median().item() == pytest.approx(exact_ratio.median().item(), rel=0.02)
    cols = mn.median_columns(net, x, IDENTITY, 255.0)
    assert cols["ddn_success"] == cols["cw_success"] == 1.0
    assert cols["cw_median"] == pytest.approx(exact_ratio.median().item(), rel=0.02)


@needs_foolbox
def test_in_a_binding_box_the_attacks_stay_inside_and_find_the_box_constrained_distance():
    pre = {"scale": 1 / 255, "mean": 0.1 * torch.rand(1, 4, 4, generator=torch.Generator().manual_seed(3))}
    net, x01 = linear_model(), binary_images(8)
    x_net = x01 - pre["mean"]  # MNIST-style preprocessing: x/255 − per-pixel mean
    model = lib.PixelModel(net, pre, 255.0)
    free, boxed = exact_distances(model, x01, box=False), exact_distances(model, x01, box=True)
    assert torch.isfinite(boxed).all() and (boxed > 1.1 * free).all()  # the unconstrained minimum leaves the box
    for attack in (mn.ddn_attack, mn.cw_attack):
        x01_back, adv, found = attack(net, x_net, pre, 255.0)
        torch.testing.assert_close(x01_back, x01)
        assert found.all() and adv.min() >= 0.0 and adv.max() <= 1.0  # inside the box, every one
        assert (model(adv).argmax(1) != model(x01).argmax(1)).all()
        dist = torch.linalg.vector_norm((adv - x01).flatten(1), dim=1).double()
        assert (dist >= boxed * (1 - 1e-4)).all() and (dist > 1.1 * free).all()
        assert dist.median().item() == pytest.approx(boxed.median().item(), rel=0.02)
    cw = mn.cw_norms(net, x_net, pre, 255.0)
    assert cw.median().item() == pytest.approx(ratios(boxed, x_net).median().item(), rel=0.02)


@needs_foolbox
def test_foolboxs_default_cw_step_cannot_move_exact_zero_pixels_which_is_why_it_is_raised():
    net, x01 = linear_model(), binary_images(8)
    boxed = ratios(exact_distances(net, x01, box=True), x01)
    default = mn.cw_norms(net, x01, IDENTITY, 255.0, stepsize=0.01)
    assert default.median().item() > 1.1 * boxed.median().item()  # here it finds none: 0 pixels start at −7.25


def test_the_pixel_box_in_network_input_space():
    pre = {"scale": 1 / 255, "mean": torch.tensor([0.4, 0.5]).view(2, 1, 1), "std": torch.tensor([0.2, 0.5]).view(2, 1, 1)}
    lo, hi = sat.pixel_box(pre, 255.0)
    torch.testing.assert_close(lo.flatten(), torch.tensor([-2.0, -1.0]))
    torch.testing.assert_close(hi.flatten(), torch.tensor([3.0, 1.0]))


def saturated_model() -> nn.Module:
    return linear_model(gain=3e4)  # logit margins in the thousands: float32 softmax is exactly one-hot


def test_the_saturation_check_flags_a_saturated_model_and_names_the_columns():
    net, x = saturated_model(), inside_images(16)
    y = net(x).argmax(1)
    eps = 1.5 * exact_distances(net, x, box=False).median().item()
    assert sat.zero_gradient_fraction(net, x, y) > 0.9
    result = sat.check(net, x, y, eps=eps, steps=20, box=sat.pixel_box(IDENTITY, 255.0))
    assert result["saturated"] and result["zero_grad_fraction"] > 0.9 and result["margin_q10"] > 1000
    line = sat.warning_line("lenet", result, unreliable=COLUMNS)
    assert line.startswith("warning: lenet looks saturated (") and "\n" not in line
    assert "PGD-L2 acc., FMN-L2 median and AutoAttack's APGD-CE part are unreliable" in line
    assert "DDN-L2 median" in sat.warning_line("lenet", result)  # the default columns


def test_margin_pgd_finds_adversarials_where_ce_pgd_is_blind():
    import revnet

    net, x = saturated_model(), inside_images(16)
    y = net(x).argmax(1)
    eps = 1.5 * exact_distances(net, x, box=False).median().item()
    lo, hi = sat.pixel_box(IDENTITY, 255.0)
    assert sat.pgd_accuracy(net, x, y, eps, loss="ce", box=(lo, hi)) == 1.0  # a zero gradient: no move
    assert sat.pgd_accuracy(revnet.convert(net), x, y, eps, loss="ce") == 1.0  # revnet's own pgd_l2 as well
    adv = sat.pgd_examples(net, x, y, eps, loss="cw", box=(lo, hi))
    assert (net(adv).argmax(1) != y).float().mean() >= 0.5
    assert adv.min() >= 0 and adv.max() <= 1
    assert (torch.linalg.vector_norm((adv - x).flatten(1), dim=1) <= eps * (1 + 1e-5)).all()


@needs_foolbox
def test_cw_is_not_blind_on_the_saturated_model():
    net, x = saturated_model(), inside_images(8)
    exact = ratios(exact_distances(net, x, box=False), x)
    cw = mn.cw_norms(net, x, IDENTITY, 255.0)
    assert torch.isfinite(cw).all() and (cw.double() >= exact * (1 - 1e-4)).all()
    assert cw.median().item() == pytest.approx(exact.median().item(), rel=0.02)


def test_a_healthy_model_is_not_flagged():
    import revnet

    net, x = linear_model(), inside_images(16)
    y = net(x).argmax(1)
    eps = 1.2 * exact_distances(net, x, box=False).median().item()  # 2 of 16 images are farther than eps
    result = sat.check(net, x, y, eps=eps, steps=20)
    assert result["zero_grad_fraction"] == 0.0 and not result["saturated"]
    assert abs(result["pgd_ce_acc"] - result["pgd_cw_acc"]) <= sat.PGD_GAP_LIMIT
    assert result["pgd_ce_acc"] == result["pgd_cw_acc"] == 2 / 16 and result["margin_q50"] > 0
    assert sat.warning_line("lenet", result) is None
    # the CE loop here and revnet's pgd_l2 (used for revnet networks without a per-pixel box) agree
    ours = sat.pgd_examples(net, x, y, eps, loss="ce")
    torch.testing.assert_close(sat.pgd_examples(revnet.convert(net), x, y, eps, loss="ce"), ours)


def test_bad_input_is_a_one_line_error():
    net, x = linear_model(), inside_images(2)
    y = net(x).argmax(1)
    for call, match in [
        (lambda: sat.check(net, x[:0], y[:0], eps=0.1), "non-empty"),
        (lambda: sat.check(net, x, y, eps=0.0), "eps must be a finite number > 0"),
        (lambda: sat.pgd_accuracy(net, x, y, -1.0), "eps must be"),
        (lambda: sat.pgd_accuracy(net, x, y, 0.1, loss="dlr"), "loss must be one of"),
        (lambda: sat.margin_quantiles(net, x, y[:1]), "labels y of shape"),
        (lambda: mn.ddn_norms(net, x[:0], IDENTITY, 255.0), "non-empty"),
        (lambda: mn.cw_norms(net, x, IDENTITY, 255.0, steps=0), "steps must be an integer"),
        (lambda: mn.cw_norms(net, x, IDENTITY, 255.0, stepsize=0.0), "stepsize"),
    ]:
        with pytest.raises(ValueError, match=match) as info:
            call()
        assert "\n" not in str(info.value)


def test_without_foolbox_the_columns_say_not_installed(monkeypatch):
    monkeypatch.setattr(lib, "missing", lambda attack: lib.PACKAGES[attack])
    net, x = linear_model(), inside_images(2)
    assert mn.median_columns(net, x, IDENTITY, 255.0) == dict.fromkeys(
        ("ddn_median", "cw_median", "ddn_success", "cw_success"), lib.NOT_INSTALLED)
    assert mn.ddn_norms(net, x, IDENTITY, 255.0) == mn.cw_norms(net, x, IDENTITY, 255.0) == lib.NOT_INSTALLED


@needs_foolbox
def test_evaluate_py_prints_the_warning_line_and_marks_the_columns_of_a_saturated_checkpoint(tmp_path, capsys):
    """``evaluate.py`` end to end on an MLP whose logits are scaled by 1e4 (saturated) and on the same MLP unscaled."""
    from revnet_app import models
    from revnet_app.train import evaluate

    torch.manual_seed(0)
    net = models.build("mlp")
    pre = {"scale": 1 / 255, "mean": torch.zeros(1, 28, 28)}
    plain = tmp_path / "plain.pt"
    models.save(plain, "mlp", net, pre)
    last = [m for m in net.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        last.weight.mul_(1e4)
        last.bias.mul_(1e4)
    hot = tmp_path / "saturated.pt"
    models.save(hot, "mlp", net, pre)
    flags = ["--no-download", "--eval-samples", "40", "--eval-max-iter", "5", "--minimal-norm-samples", "4",
             "--ddn-steps", "10", "--cw-binary-steps", "1", "--cw-steps", "10", "--saturation-samples", "40",
             "--saturation-steps", "3", "--saturation-eps", "2.0", "--no-progress"]
    got = evaluate.main(evaluate.get_args_parser().parse_args([str(hot), *flags, "--output", str(tmp_path / "h.json")]))
    out = capsys.readouterr().out
    assert got["saturated"] and got["zero_grad_fraction"] > 0.05  # the images it gets right, with huge margins
    assert got["unreliable_columns"] == ["ddn_median"]
    assert "warning: mlp looks saturated" in out and "FMN-L2 median" in got["saturation_warning"]
    cool = evaluate.main(evaluate.get_args_parser().parse_args([str(plain), *flags, "--output", str(tmp_path / "p.json")]))
    assert cool["zero_grad_fraction"] == 0.0 and "unreliable_columns" not in cool
