"""Today's defenses as methods (``train/methods/``: ``pgd-at``, ``trades``, ``gradnorm``): their examples, losses
and weight gradients equal an autograd reference in float64, and each makes one short ``finetune.py`` run.

The attacks of PGD-AT and TRADES and the gradient-norm penalty use revnet's explicit reverse; the references
here use ``torch.autograd`` (double backprop for the penalty). Time budget: ≤ 40 s.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

import revnet
from revnet_app.train import finetune, methods
from revnet_app.train.methods import pixel_pgd
from revnet_app.train.methods.grad_norm import input_gradient_penalty

FACTOR = torch.tensor(2.0, dtype=torch.float64)  # pixels → network input (scale/std), not the identity
MEAN = 0.3


def small_net() -> revnet.Sequential:
    torch.manual_seed(0)
    return revnet.Sequential(revnet.Conv2d(1, 3, 3), revnet.Tanh(), revnet.Flatten(), revnet.Linear(3 * 4 * 4, 4)
                             ).double().eval()


def batch(n: int = 5):
    torch.manual_seed(1)
    pixels = torch.rand(n, 1, 6, 6, dtype=torch.float64)
    return (pixels - MEAN) * FACTOR, torch.randint(0, 4, (n,))


BOX = ((0 - MEAN) * FACTOR * torch.ones(1, 6, 6, dtype=torch.float64),
       (1 - MEAN) * FACTOR * torch.ones(1, 6, 6, dtype=torch.float64))


def autograd_pgd(net, x, loss_of_logits, start, eps, steps, step):
    """The same PGD with autograd's input gradient, in pixel space."""
    pix, x_pix = (start / FACTOR + MEAN).detach(), (x / FACTOR + MEAN).detach()
    pix = pix.clamp(0, 1)
    for _ in range(steps):
        pix.requires_grad_(True)
        (g,) = torch.autograd.grad(loss_of_logits(net((pix - MEAN) * FACTOR)).sum(), pix)
        n = g.flatten(1).norm(dim=1).clamp_min(torch.finfo(g.dtype).eps ** 2).view(-1, 1, 1, 1)
        d = (pix.detach() - x_pix) + step * g / n
        d = d * (eps / d.flatten(1).norm(dim=1).clamp_min(torch.finfo(g.dtype).eps ** 2)).clamp(max=1).view(-1, 1, 1, 1)
        pix = (x_pix + d).clamp(0, 1)
    return ((pix - MEAN) * FACTOR).detach()


def weight_grads(net, loss):
    return torch.autograd.grad(loss, list(net.parameters()))


def test_gradnorm_penalty_and_its_weight_gradients_equal_double_backprop():
    net, (x, y) = small_net(), batch()
    logits, sq = input_gradient_penalty(net, x, y)
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(net(xr), y, reduction="sum"), xr, create_graph=True)
    ref = g.flatten(1).pow(2).sum(1)
    torch.testing.assert_close(sq, ref, rtol=1e-10, atol=1e-12)
    step = methods.build("gradnorm", gradnorm_lambda=3.0).loss(net, x, y)
    ref_loss = F.cross_entropy(net(x), y) + 3.0 * ref.mean()
    torch.testing.assert_close(step.loss, ref_loss, rtol=1e-10, atol=1e-12)
    for a, b in zip(weight_grads(net, step.loss), weight_grads(net, ref_loss)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_pgd_at_examples_loss_and_gradients_equal_an_autograd_pgd():
    net, (x, y) = small_net(), batch()
    method = methods.build("pgd-at", pgd_eps=0.8, pgd_steps=6, box=BOX, pixel_factor=FACTOR)
    gen = torch.Generator().manual_seed(3)
    x_adv = method.examples(net, x, y, gen)
    start = pixel_pgd.ball_start(x, 0.8, FACTOR, torch.Generator().manual_seed(3))
    ref = autograd_pgd(net, x, lambda z: F.cross_entropy(z, y, reduction="none"), start, 0.8, 6, 2.5 * 0.8 / 6)
    torch.testing.assert_close(x_adv, ref, rtol=1e-9, atol=1e-11)
    pix = x_adv / FACTOR + MEAN
    assert ((pix - (x / FACTOR + MEAN)).flatten(1).norm(dim=1) <= 0.8 + 1e-9).all()
    assert pix.min() >= -1e-12 and pix.max() <= 1 + 1e-12  # inside the pixel box
    assert F.cross_entropy(net(x_adv), y) > F.cross_entropy(net(x), y)
    step = method.loss(net, x, y, torch.Generator().manual_seed(3))
    ref_loss = F.cross_entropy(net(ref), y)
    torch.testing.assert_close(step.loss, ref_loss, rtol=1e-9, atol=1e-11)
    for a, b in zip(weight_grads(net, step.loss), weight_grads(net, ref_loss)):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def test_trades_examples_loss_and_gradients_equal_autograd():
    net, (x, y) = small_net(), batch()
    method = methods.build("trades", pgd_eps=0.8, pgd_steps=5, trades_beta=6.0, box=BOX, pixel_factor=FACTOR)
    p_clean = net(x).softmax(1).detach()
    x_adv = method.examples(net, x, p_clean, torch.Generator().manual_seed(4))
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(4), dtype=x.dtype)

    def kl(z):  # KL(p_clean ‖ softmax(z)) per sample
        return (p_clean * (p_clean.log() - z.log_softmax(1))).sum(1)

    ref = autograd_pgd(net, x, kl, x + 0.001 * noise * FACTOR, 0.8, 5, 2.5 * 0.8 / 5)
    torch.testing.assert_close(x_adv, ref, rtol=1e-9, atol=1e-11)
    assert kl(net(x_adv)).sum() > kl(net(x)).sum()
    step = method.loss(net, x, y, torch.Generator().manual_seed(4))
    ref_loss = F.cross_entropy(net(x), y) + 6.0 * F.kl_div(net(ref).log_softmax(1), net(x).softmax(1),
                                                           reduction="batchmean")
    torch.testing.assert_close(step.loss, ref_loss, rtol=1e-9, atol=1e-11)
    for a, b in zip(weight_grads(net, step.loss), weight_grads(net, ref_loss)):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def test_bad_pgd_flags_are_one_line():
    with pytest.raises(ValueError, match="--pgd-eps and --pgd-step-size must be positive"):
        methods.build("pgd-at", pgd_eps=-1.0)


@pytest.mark.parametrize("method", ["pgd-at", "trades", "gradnorm", "deepdefense --deepfool-box"])
def test_one_short_finetune_run(method, tmp_path):
    out = tmp_path / method.split()[0]
    argv = ["mlp", "--method", *method.split(), "--no-download", "--train-samples", "100", "--ref-epochs", "1", "--epochs", "1",
            "--batch-size", "50", "--eval-samples", "30", "--epoch-eval-samples", "30", "--eval-max-iter", "3",
            "--pgd-steps", "3", "--min-acc-ratio", "0", "--out", str(out), "--cache-dir", str(tmp_path / "cache"),
            "--no-progress"]
    result = finetune.main(finetune.get_args_parser().parse_args(argv))
    assert result["method"] == method.split()[0] and math.isfinite(result["history"][0]["train_loss"])
    assert json.loads((out / "metrics.json").read_text())["finetuned"]["n"] == 30


def test_the_gradnorm_benchmark_checks_float64_first_and_writes_its_table(tmp_path):
    from revnet_app.benchmarks import gradnorm

    args = gradnorm.get_args_parser().parse_args(["--models", "mlp", "--batch-size", "4", "--rounds", "1",
                                                  "--budget", "0", "--output", str(tmp_path)])
    (row,) = gradnorm.main(args)
    assert row["float64_max_rel_error"] <= 1e-9 and row["revnet_ms"] > 0 and row["autograd_ms"] > 0
    assert "revnet / autograd" in (tmp_path / "gradnorm.md").read_text()
