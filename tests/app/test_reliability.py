"""Reliability of the library and the main job: no silent wrong results (finite loss for every finite input,
the divergence rule, resume refusing other settings, refused inputs) and one clear line for each misuse.

Time budget: about 15 s on a 2-core CPU (two tiny MLP runs on the embedded MNIST subset).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import revnet
from revnet.losses import EXPONENT_KNEE, EXPONENT_MAX, bounded_exponent

ROOT = Path(__file__).resolve().parents[2]

from revnet_app.train import engine  # noqa: E402
from revnet_app.train import finetune  # noqa: E402

TINY = ["--no-download", "--train-samples", "200", "--ref-epochs", "3", "--lr", "0.002", "--eval-samples", "50",
        "--epoch-eval-samples", "50", "--eval-max-iter", "5", "--no-progress", "--batch-size", "50"]


def _mlp(classes: int = 3, dtype=torch.float64) -> revnet.Sequential:
    torch.manual_seed(0)
    return revnet.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, classes)).to(dtype)


# -- the loss stays finite -----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_deep_defense_loss_is_finite_for_inputs_near_zero(dtype):
    net = _mlp(dtype=dtype)
    x = torch.randn(6, 4, dtype=dtype)
    x[0] = 0  # a one-image training set minus its mean
    x[1] *= 1e-3  # an image near the training mean
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    with torch.no_grad():
        y[:2] = (net(x[:2]).argmax(1) + 1) % 3  # both misclassified: the exp(+d·ratio) term
    loss, info = revnet.deep_defense_loss(net, x, y, d=50.0)
    loss.backward()
    assert torch.isfinite(loss) and info.ratio[0] > 1e6
    for name, p in net.named_parameters():
        assert torch.isfinite(p.grad).all(), name


def test_bounded_exponent_is_eq6_below_the_knee_and_bounded_above():
    e = torch.linspace(-50, EXPONENT_KNEE, 101, dtype=torch.float64)
    assert torch.equal(bounded_exponent(e), e)
    big = torch.tensor([EXPONENT_KNEE + 1e-6, 25.0, 1e3, 1e30], dtype=torch.float64, requires_grad=True)
    out = bounded_exponent(big)
    assert (out <= EXPONENT_MAX).all() and (out.diff() >= 0).all()
    (slope,) = torch.autograd.grad(out[0], big)
    assert slope[0] == pytest.approx(1.0, abs=1e-6)  # the slope joins smoothly at the knee


# -- the divergence rule -------------------------------------------------------------------------------------


def test_collapse_rule_passes_the_committed_rows_and_catches_the_diverged_run():
    healthy = {"train_ce": 0.4}
    assert engine.collapse_reason(healthy, 0.81, 0.894, 10) is None  # worst committed epoch: 0.906 of its reference
    assert engine.collapse_reason(healthy, 0.821, 0.892, 10) is None  # Par. Train on Fashion-MNIST, −7 points
    reason = engine.collapse_reason(healthy, 0.22, 0.31, 10)  # the reported run: 31% -> 22%
    assert reason and "below 0.8 × the reference's 0.3100" in reason
    reason = engine.collapse_reason({"train_ce": 9e15}, 0.5, 0.5, 10)
    assert reason and "exceeds 10·ln(10)" in reason


def test_a_diverged_run_exits_nonzero_is_marked_failed_and_keeps_no_collapsed_state(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["mlp", "--method", "clean", "--epochs", "2", "--out", "run", "--cache-dir", "cache", *TINY]
    argv = [a if a != "0.002" else "50" for a in argv]  # lr 50: the weights blow up in the first epoch
    with pytest.raises(SystemExit, match=r"the run diverged: .*epoch 1.*Marked FAILED"):
        finetune.main(finetune.get_args_parser().parse_args(argv))
    run = tmp_path / "run"
    assert "FAILED" in (run / "summary.md").read_text()
    assert "epoch 1" in json.loads((run / "failed.json").read_text())["failed"]
    assert not (run / "metrics.json").exists()  # metrics.json marks a finished run (table1/results/studies reuse it)
    assert not (run / "resume" / "checkpoint.pt").exists() and not (run / "final.pt").exists()


# -- resume never mixes settings; the lr column is the epoch's own rate ----------------------------------------


def test_resume_refuses_other_settings_and_logs_each_epochs_rate(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["mlp", "--method", "clean", "--epochs", "2", "--out", "run", "--cache-dir", "cache", *TINY]
    finetune.main(finetune.get_args_parser().parse_args(argv))
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in rows] == [0.002, 0.001]  # epoch 2 is the halved last epoch
    changed = [a if a != "0.002" else "0.01" for a in argv]
    with pytest.raises(SystemExit, match=r"--resume with other settings .*--lr 0.002 -> 0.01"):
        finetune.main(finetune.get_args_parser().parse_args([*changed, "--resume"]))
    with pytest.raises(SystemExit, match=r"--method 'clean' -> 'deepdefense'"):
        finetune.main(finetune.get_args_parser().parse_args(
            [*[a if a != "clean" else "deepdefense" for a in argv], "--resume"]))


# -- refused inputs, one line each ---------------------------------------------------------------------------


def test_inputs_that_do_not_fit_the_network_give_one_line():
    conv = revnet.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    cases = [
        (torch.randn(2, 3, 8, 8), revnet.errors.InputMismatchError, r"layer 0 \(Conv2d.*shape \(2, 3, 8, 8\).*1 channels"),
        (torch.randn(2, 1, 9, 9), revnet.errors.InputMismatchError, r"layer 2 \(Linear.*shape \(2, 196\)"),
        (torch.zeros(2, 1, 8, 8, dtype=torch.long), ValueError, r"float32 or float64 tensor, got torch.int64"),
        (torch.zeros(2, 1, 8, 8, dtype=torch.float16), ValueError, r"float32 or float64 tensor, got torch.float16"),
        (torch.zeros(2, 1, 8, 8, dtype=torch.float64), ValueError, r"x is torch.float64 but the network's parameters"),
    ]
    for x, error, message in cases:
        for call in (lambda: revnet.deepfool(conv, x), lambda: revnet.metrics.network_accuracy(conv, x, torch.zeros(2, dtype=torch.long))):
            with pytest.raises(error, match=message) as info:
                call()
            assert "\n" not in str(info.value)


def test_half_precision_networks_are_refused_but_autocast_works():
    net, x = _mlp(dtype=torch.float32), torch.randn(4, 4)
    with pytest.raises(ValueError, match="parameters are torch.bfloat16"):
        revnet.deepfool(_mlp(dtype=torch.bfloat16), x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        delta, _ = revnet.deepfool(net, x, max_iter=3)
    assert delta.dtype == torch.float32 and torch.isfinite(delta).all()


def test_one_class_models_and_bad_labels_are_refused():
    one = _mlp(classes=1)
    x = torch.randn(3, 4, dtype=torch.float64)
    for call in (lambda: revnet.deepfool(one, x), lambda: revnet.deep_defense_loss(one, x, torch.zeros(3, dtype=torch.long)),
                 lambda: revnet.metrics.deepfool_robustness(one, x)):
        with pytest.raises(ValueError, match="outputs 1 class; .* need at least 2 classes"):
            call()
    with pytest.raises(ValueError, match=r"labels in \[0, 7\], but the network has 3 classes"):
        revnet.metrics.network_accuracy(_mlp(), x, torch.tensor([0, 7, 1]))
    with pytest.raises(ValueError, match="200 training images but 150 labels"):
        engine.tensor_batches(torch.randn(200, 4), torch.zeros(150, dtype=torch.long), 50, torch.Generator())


def test_nan_weights_are_refused_by_the_metrics():
    net = _mlp()
    with torch.no_grad():
        net[1].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"parameter '1.weight' holds NaN or infinite values"):
        revnet.metrics.network_accuracy(net, torch.randn(3, 4, dtype=torch.float64), torch.zeros(3, dtype=torch.long))


def test_train_mode_batchnorm_is_refused_before_its_statistics_change():
    net = revnet.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2 * 6 * 6, 3)).train()
    before = net[1].running_mean.clone()
    with pytest.raises(revnet.BatchNormTrainingError, match="BatchNorm layer '1' is in training mode"):
        revnet.deepfool(net, torch.randn(3, 1, 8, 8))
    assert torch.equal(net[1].running_mean, before) and int(net[1].num_batches_tracked) == 0


def test_empty_batches_and_foreign_tapes_give_clear_errors():
    net = _mlp()
    with pytest.raises(ValueError, match="non-empty batch"):
        net.trace(torch.randn(0, 4, dtype=torch.float64))
    _, conv_tape = revnet.Conv2d(1, 1, 3).double().trace(torch.randn(1, 1, 4, 4, dtype=torch.float64))
    with pytest.raises(revnet.TapeMismatchError, match="ReLU.reverse expects the ActivationTape .* got Conv2dTape"):
        revnet.ReLU().reverse(torch.ones(1, 1, 2, 2, dtype=torch.float64), conv_tape)


def test_a_checkpoint_with_nan_weights_is_refused_in_one_line(tmp_path):
    from revnet_app.train import evaluate
    from revnet_app import models

    net = models.build("mlp")
    with torch.no_grad():
        net[1].weight[0, 0] = float("nan")
    models.save(tmp_path / "nan.pt", "mlp", net, {"mean": torch.zeros(1, 28, 28), "scale": 1 / 255})
    with pytest.raises(models.CheckpointError, match=r"NaN or infinite weights \(1.weight\)"):
        models.load(tmp_path / "nan.pt")
    with pytest.raises(SystemExit, match=r"error: .*NaN or infinite weights"):
        evaluate.main(evaluate.get_args_parser().parse_args([str(tmp_path / "nan.pt"), "--no-download"]))

