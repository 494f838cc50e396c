"""The command-line contract of train/finetune.py and train/evaluate.py: non-finite or out-of-range flags and
unknown devices are one-line argparse errors naming the flag; the console explains rho2, eps_ref and fgs@1.0
once; progress bars stay out of logs that are not a terminal. Offline, a few seconds."""

from __future__ import annotations

import io
import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]

from revnet_app.train import methods  # noqa: E402
from revnet_app.train.sources import mnist as mnist_source  # noqa: E402
from revnet_app.train import engine  # noqa: E402
from revnet_app.train import evaluate  # noqa: E402
from revnet_app.train import finetune  # noqa: E402


def _error_line(capsys, parse, argv) -> str:
    """Run ``parse(argv)``, expect an argparse error (exit 2) and return its single 'error:' line."""
    with pytest.raises(SystemExit) as info:
        parse(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and "Traceback" not in "\n".join(err)
    return err[-1]


def _finetune(argv):
    args = finetune.get_args_parser().parse_args(argv)
    finetune.check_args(args, finetune.get_args_parser())


def _evaluate(argv):
    evaluate.main(evaluate.get_args_parser().parse_args(argv))


# 1. non-finite floats: refused at parsing, naming the flag


@pytest.mark.parametrize("flag, value", [
    ("--overshoot", "nan"), ("--fgs-eps", "nan"), ("--fgs-eps", "inf"), ("--d", "nan"), ("--c", "nan"),
    ("--lmbda", "nan"), ("--lr", "nan"), ("--lr", "1e999"), ("--momentum=-inf", None), ("--alpha", "nan"),
    ("--ref-lr", "inf"), ("--parseval-beta", "nan"), ("--weight-decay", "nan"), ("--parseval-fraction", "nan"),
    ("--min-acc-ratio", "nan"),
])
def test_finetune_refuses_non_finite_floats_naming_the_flag(flag, value, capsys):
    if value is None:  # "-inf" must be attached with "=", else argparse takes it for an option
        flag, value = flag.split("=")
        argv = ["lenet", f"{flag}={value}"]
    else:
        argv = ["lenet", flag, value]
    line = _error_line(capsys, _finetune, argv)
    assert line.endswith(f": error: argument {flag}: must be a finite number, got {value!r}")


@pytest.mark.parametrize("flag, value", [("--eps-ref", "inf"), ("--eps-ref", "nan"), ("--overshoot", "nan")])
def test_evaluate_refuses_non_finite_floats_naming_the_flag(flag, value, capsys):
    line = _error_line(capsys, _evaluate, ["missing.pt", flag, value])
    assert line.endswith(f": error: argument {flag}: must be a finite number, got {value!r}")


def test_range_checks_also_refuse_nan_in_a_namespace_built_in_code(capsys):
    # the parser's type refuses NaN; check_args must too when a caller sets the Namespace itself
    args = finetune.get_args_parser().parse_args(["lenet"])
    args.overshoot = math.nan
    line = _error_line(capsys, lambda _: finetune.check_args(args, finetune.get_args_parser()), None)
    assert line.endswith("error: --overshoot must be a finite number, got nan")


@pytest.mark.parametrize("argv, expected", [
    (["--momentum", "1"], "error: --momentum must lie in [0, 1), got 1.0"),
    (["--overshoot", "-0.1"], "error: --overshoot must not be negative, got -0.1"),
    (["--min-acc-ratio", "1.5"], "error: --min-acc-ratio must lie in [0, 1], got 1.5"),
])
def test_out_of_range_floats_are_one_line_errors(argv, expected, capsys):
    assert _error_line(capsys, _finetune, ["lenet", *argv]).endswith(expected)


def test_evaluate_range_checks(capsys):
    assert _error_line(capsys, _evaluate, ["missing.pt", "--eps-ref", "0"]).endswith(
        "error: --eps-ref must be a positive finite number, got 0.0")
    assert _error_line(capsys, _evaluate, ["missing.pt", "--overshoot", "-1"]).endswith(
        "error: --overshoot must be a non-negative finite number, got -1.0")


@pytest.mark.parametrize("script", [_finetune, _evaluate])
def test_an_unknown_device_lists_the_valid_ones(script, capsys):
    argv = ["lenet" if script is _finetune else "missing.pt", "--device", "foo"]
    line = _error_line(capsys, script, argv)
    valid = ", ".join(finetune.valid_devices())
    assert line.endswith(f"error: --device 'foo' is not a valid device; choose one of: {valid}"
                         f"{'' if torch.cuda.is_available() else ' (CUDA is not available here)'}")
    assert "cpu" in valid
    finetune.check_device("cpu", finetune.get_args_parser())  # valid ones pass
    finetune.check_device(None, finetune.get_args_parser())


# 2. the console says what its numbers mean, once, where they first appear

TINY = ["--no-download", "--train-samples", "200", "--ref-epochs", "1", "--epochs", "1", "--lr", "0.002",
        "--eval-samples", "40", "--epoch-eval-samples", "40", "--eval-max-iter", "3", "--batch-size", "50",
        "--eval-batch-size", "40", "--max-iter", "2"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One tiny mlp run (stdout captured) and the evaluation of its final.pt."""
    tmp = tmp_path_factory.mktemp("tiny")
    old = sys.stdout
    sys.stdout = buf = io.StringIO()
    # the embedded subset without importing torchvision, and no git/torchvision probing: seconds, not tens
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mnist_source, "load", lambda *a, **k: mnist_source.embedded_mnist())
        mp.setattr(finetune.utils, "environment", lambda: {})
        try:
            result = finetune.main(finetune.get_args_parser().parse_args(
                ["mlp", "--out", str(tmp / "run"), "--cache-dir", str(tmp / "cache"), *TINY]))
            finetune_out = buf.getvalue()
            buf.seek(0)
            buf.truncate()
            evaluate.main(evaluate.get_args_parser().parse_args(
                [str(tmp / "run" / "final.pt"), "--no-download", "--eval-samples", "40", "--eval-max-iter", "3"]))
            evaluate_out = buf.getvalue()
        finally:
            sys.stdout = old
    return result, finetune_out, evaluate_out


def test_finetune_prints_each_legend_once_where_the_numbers_first_appear(tiny_run):
    result, out, _ = tiny_run
    lines = out.splitlines()

    def index(prefix: str) -> int:
        hits = [i for i, line in enumerate(lines) if line.strip().startswith(prefix)]
        assert len(hits) == 1, (prefix, hits, out)
        return hits[0]

    eps_epoch = result["reference_epoch_eval"]["own_eps_ref"]
    ref_line, epoch_line = index("reference: acc"), index("epoch 1/1:")
    rho2 = index("rho2 = mean ‖Δx‖/‖x‖ of DeepFool over the evaluated images (higher = more robust)")
    eps = index("eps_ref = the smallest FGS step ε that misclassifies 50% of the evaluated images")
    fgs = index(f"fgs@1.0 = test accuracy under FGS at 1.0·ε_ref, with the reference's ε_ref = {eps_epoch:.4g} "
                "fixed for every epoch")
    assert ref_line < rho2 < eps < fgs < epoch_line
    final = index(f"ε_ref in the table = {result['eps_ref']:.4g} is the fine-tuned model's own (the epochs above "
                  f"used the reference's, {eps_epoch:.4g})")
    assert final > index("| Reference |")


def test_evaluate_labels_every_metric(tiny_run):
    _, _, out = tiny_run
    lines = {line.split(":", 1)[0]: line for line in out.splitlines() if ": " in line and not line.startswith(" ")}
    assert lines["rho2"].endswith(" — mean ‖Δx‖/‖x‖ of DeepFool over the evaluated images (higher = more robust)")
    assert lines["acc"].endswith(" — test accuracy (fraction correct)")
    assert lines["own_eps_ref"].endswith(" — this model's ε_ref: the smallest FGS step that misclassifies 50% of the images")
    for frac in engine.FRACTIONS:
        assert lines[f"fgs_acc@{frac}"].endswith(
            f" — test accuracy under FGS at {frac}·eps_ref_used (higher = more robust)")
    metric_keys = ["n", "acc", "rho2", "fooling_rate", "mean_iterations", "own_eps_ref", "eps_ref_used",
                   "eval_seconds"]
    assert all(" — " in lines[k] for k in metric_keys)


# 3. progress bars only on a terminal


class _Stderr(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize("tty, progress, drawn", [(False, True, False), (True, True, True), (True, False, False)])
def test_progress_bars_only_when_stderr_is_a_terminal(tty, progress, drawn, monkeypatch):
    fake = _Stderr(tty)
    monkeypatch.setattr(sys, "stderr", fake)
    assert engine.show_progress(progress) is drawn
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x, y = torch.randn(20, 1, 2, 2), torch.randint(0, 3, (20,))
    gen = torch.Generator().manual_seed(0)
    engine.train_one_epoch(net, methods.build("clean"), opt, engine.tensor_batches(x, y, 5, gen), generator=gen,
                           progress=engine.EpochProgress(desc="bar-test", bar=progress))
    assert ("bar-test" in fake.getvalue()) is drawn


def test_no_progress_help_says_bars_are_off_without_a_terminal():
    text = " ".join(finetune.get_args_parser().format_help().split())
    assert "no progress bars (they are off anyway when stderr is not a terminal, e.g. sent to a file)" in text
