"""AutoAttack-L2 (pyautoattack) and FMN-L2 (foolbox) through ``train/library_attacks.py``: the pixel wrapper,
both attacks on a tiny model against the known minimal distance, "not installed" without the packages, and
the opt-in columns of ``evaluate.py``.

Time budget: ≤ 30 s here (a linear model, a handful of images, few steps).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]

from revnet_app.train import library_attacks as lib  # noqa: E402

needs_foolbox = pytest.mark.skipif(lib.missing("fmn") is not None, reason="foolbox is in the test extra")
needs_autoattack = pytest.mark.skipif(lib.missing("autoattack") is not None, reason="pyautoattack is in the test extra")

IDENTITY = {"scale": 1 / 255, "mean": torch.zeros(1, 8, 8)}  # network input = [0, 1] pixels


def linear_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with torch.no_grad():
        net[1].weight.mul_(3.0)
    return net.eval()


def images(n: int, seed: int = 1) -> torch.Tensor:
    """``(n, 1, 8, 8)`` pixels (Square needs ≥ 5 px a side) in [0.4, 0.6]: far enough from the box that the minimal perturbation does not touch it."""
    g = torch.Generator().manual_seed(seed)
    return 0.4 + 0.2 * torch.rand(n, 1, 8, 8, generator=g)


def exact_distance(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The minimal L2 distance to another label of a linear classifier: min_l |f_k − f_l| / ‖w_k − w_l‖."""
    w, b = net[1].weight, net[1].bias
    with torch.no_grad():
        logits = net(x)
        k = logits.argmax(1)
        gap = logits.gather(1, k[:, None]) - logits  # (N, 10)
        dw = torch.linalg.vector_norm(w[k][:, None, :] - w[None], dim=2)  # (N, 10)
        d = gap / dw.clamp_min(1e-12)
        d[torch.arange(len(x)), k] = float("inf")
    return d.min(1).values


def test_the_pixel_wrapper_undoes_the_checkpoint_preprocessing():
    pre = {"scale": 1 / 255, "mean": torch.tensor([0.4, 0.5, 0.6]).view(3, 1, 1),
           "std": torch.tensor([0.2, 0.25, 0.5]).view(3, 1, 1)}
    raw = torch.randint(0, 256, (2, 3, 4, 4)).float()
    x_net = (raw / 255 - pre["mean"]) / pre["std"]
    torch.testing.assert_close(lib.to_pixels(x_net, pre, 255.0), raw / 255)
    net = nn.Sequential(nn.Flatten(), nn.Linear(48, 5))
    torch.testing.assert_close(lib.PixelModel(net, pre, 255.0)(raw / 255), net(x_net))
    # a pixel step of δ moves the network input by δ/std per channel
    torch.testing.assert_close(lib.pixel_factor(pre, 255.0), 1 / pre["std"])
    assert lib.pixel_factor(IDENTITY, 255.0).item() == pytest.approx(1.0)


@needs_foolbox
def test_fmn_finds_the_minimal_perturbation_of_a_linear_model():
    net, x = linear_model(), images(6)
    ratios = lib.fmn_norms(net, x, IDENTITY, 255.0, steps=100, progress=False)
    exact = exact_distance(net, x) / torch.linalg.vector_norm(x.flatten(1), dim=1)
    assert torch.isfinite(ratios).all()
    assert (ratios >= exact * (1 - 1e-3)).all()  # a real adversarial can never be closer than the exact one
    torch.testing.assert_close(ratios, exact, rtol=0.01, atol=0.0)
    summary = lib.fmn_median(net, x, IDENTITY, 255.0, steps=100, progress=False)
    assert summary["success_rate"] == 1.0 and summary["n"] == 6
    assert summary["median"] == pytest.approx(ratios.median().item())


@needs_foolbox
def test_foolbox_l2_fmn_as_shipped_does_not_project_which_is_why_it_is_repaired():
    import foolbox

    if not lib.stock_l2_fmn_projection_is_broken():
        pytest.skip("this foolbox projects correctly: library_attacks uses it as it is")
    net, x = linear_model(), images(6)
    fmodel = foolbox.PyTorchModel(net, bounds=(0.0, 1.0))
    _, adv, ok = foolbox.attacks.L2FMNAttack(steps=100)(fmodel, x, foolbox.criteria.Misclassification(
        net(x).argmax(1)), epsilons=None)
    stock = torch.linalg.vector_norm((adv - x).flatten(1), dim=1)
    assert ok.all() and (stock > 1.2 * exact_distance(net, x)).all()  # the first adversarial step, not the minimum


@needs_autoattack
def test_autoattack_fools_every_image_outside_the_margin_and_none_inside():
    net, x = linear_model(), images(4)
    y = net(x).argmax(1)
    dist = exact_distance(net, x)
    inside = lib.autoattack_accuracy(net, x, y, 0.5 * dist.min().item(), IDENTITY, 255.0, progress=False)
    assert inside["acc"] == 1.0 and inside["n"] == 4  # no adversarial exists within the margin
    outside = lib.autoattack_accuracy(net, x, y, 1.5 * dist.max().item(), IDENTITY, 255.0, progress=False)
    assert outside["acc"] == 0.0 and outside["eps_pixels"] == pytest.approx(1.5 * dist.max().item())
    before = torch.random.get_rng_state()
    lib.autoattack_accuracy(net, x[:1], y[:1], 0.1, IDENTITY, 255.0, progress=False)
    assert torch.equal(torch.random.get_rng_state(), before)  # the caller's RNG is left as it was


def test_without_the_packages_the_columns_say_not_installed(monkeypatch):
    from revnet_app.train import table1

    monkeypatch.setattr(lib, "missing", lambda attack: lib.PACKAGES[attack])
    net, x = linear_model(), images(2)
    assert lib.autoattack_accuracy(net, x, net(x).argmax(1), 0.1, IDENTITY, 255.0) == lib.NOT_INSTALLED
    assert lib.fmn_median(net, x, IDENTITY, 255.0) == lib.NOT_INSTALLED
    assert table1.fmt([lib.NOT_INSTALLED], percent=True) == "not installed"


@needs_foolbox
@needs_autoattack
def test_evaluate_reports_autoattack_and_fmn_only_when_asked(tmp_path):
    from revnet_app.train import evaluate
    from revnet_app import models

    torch.manual_seed(0)
    net = models.build("mlp")
    models.save(tmp_path / "mlp.pt", "mlp", net, {"mean": torch.zeros(1, 28, 28), "scale": 1 / 255})
    flags = [str(tmp_path / "mlp.pt"), "--no-download", "--eval-samples", "8", "--eval-max-iter", "5",
             "--eps-ref", "0.1", "--no-progress"]
    plain = evaluate.main(evaluate.get_args_parser().parse_args([*flags, "--output", str(tmp_path / "a.json")]))
    assert "aa_acc" not in plain and "fmn_median" not in plain
    out = evaluate.main(evaluate.get_args_parser().parse_args(
        [*flags, "--autoattack-samples", "2", "--autoattack-eps", "0.5", "--fmn-samples", "3", "--fmn-steps", "10",
         "--output", str(tmp_path / "b.json")]))
    assert 0.0 <= out["aa_acc"] <= 1.0 and out["aa_n"] == 2 and out["fmn_n"] == 3 and out["fmn_median"] > 0
    assert out["rho2"] == plain["rho2"]  # the library attacks leave the other metrics alone
    with pytest.raises(SystemExit):  # AutoAttack without a radius is a one-line usage error
        evaluate.main(evaluate.get_args_parser().parse_args([*flags, "--autoattack-samples", "2"]))
