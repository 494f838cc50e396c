"""End-to-end smoke tests of the scripts in train/ on the embedded MNIST subset (offline, seconds each)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]

from revnet_app.train import evaluate  # noqa: E402
from revnet_app.train import finetune  # noqa: E402
from revnet_app.train import sweep  # noqa: E402

from revnet_app import models  # noqa: E402

TINY = ["--no-download", "--train-samples", "300", "--ref-epochs", "10", "--lr", "0.002", "--eval-samples", "100",
        "--epoch-eval-samples", "50", "--eval-max-iter", "10", "--no-progress", "--batch-size", "50",
        "--min-acc-ratio", "0"]  # 300 training images, 50 test images: the divergence rule has its own tests


def run_main(argv: list[str]) -> dict:
    return finetune.main(finetune.get_args_parser().parse_args(argv))


def test_finetune_runs_end_to_end_and_writes_its_run_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run_main(["mlp", "--epochs", "2", "--out", "run", "--cache-dir", "cache", *TINY])
    run = tmp_path / "run"
    for name in ["config.json", "log.jsonl", "metrics.json", "summary.md", "final.pt", "resume/checkpoint.pt"]:
        assert (run / name).is_file(), name
    config = json.loads((run / "config.json").read_text())
    assert config["args"]["lmbda"] == 25.0 and "git_commit" in config and "torch" in config  # MNIST's tuned λ
    assert "EMBEDDED" in config["data"]
    assert len((run / "log.jsonl").read_text().splitlines()) == 2
    summary = (run / "summary.md").read_text()
    assert "| Reference |" in summary and "| Fine-tuned: Ours (deepdefense) |" in summary
    net, ckpt = models.load(run / "final.pt", arch="mlp")
    assert ckpt["metrics"]["finetuned"]["n"] == 100 and 0 <= result["finetuned"]["acc"] <= 1
    assert result["rho2_ratio"] > 0 and len(list((tmp_path / "cache").glob("*.pt"))) == 1

    out = evaluate.main(evaluate.get_args_parser().parse_args(
        [str(run / "final.pt"), "--no-download", "--eval-samples", "100", "--eval-max-iter", "10",
         "--eps-ref", str(result["eps_ref"])]))
    assert out["acc"] == pytest.approx(result["finetuned"]["acc"])
    assert out["rho2"] == pytest.approx(result["finetuned"]["rho2"])
    assert (run / "final.pt.eval.json").is_file()

    # a second run reuses the cached reference and refuses to overwrite the first without --resume
    with pytest.raises(SystemExit, match="--resume"):
        run_main(["mlp", "--epochs", "2", "--out", "run", "--cache-dir", "cache", *TINY])


def _script(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, str(ROOT / "train" / "finetune.py"), *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_resume_after_sigkill_ends_with_the_same_metrics(tmp_path):
    common = ["lenet", "--epochs", "4", "--cache-dir", "cache", *TINY]
    straight = _script([*common, "--out", "straight"], tmp_path)
    assert straight.wait(timeout=600) == 0, straight.stdout.read()

    killed = _script([*common, "--out", "killed"], tmp_path)
    checkpoint = tmp_path / "killed" / "resume" / "checkpoint.pt"
    deadline = time.time() + 600
    while not checkpoint.exists() and killed.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait(timeout=60) == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (tmp_path / "killed" / "final.pt").exists()
    done = torch.load(checkpoint, weights_only=True)["epoch"]
    assert 1 <= done < 4

    resumed = _script([*common, "--out", "killed", "--resume"], tmp_path)
    output = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, output
    assert f"resuming killed after epoch {done}" in output
    a = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    b = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    for key in ["acc", "rho2", "own_eps_ref", "fgs_acc@0.5"]:
        assert a["finetuned"][key] == b["finetuned"][key], key
    assert [r["train_loss"] for r in a["history"]] == [r["train_loss"] for r in b["history"]]


def test_resume_on_an_empty_directory_starts_fresh(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run_main(["mlp", "--method", "clean", "--epochs", "1", "--out", "fresh", "--resume", "--cache-dir", "c", *TINY])
    assert len(result["history"]) == 1


def test_a_diverging_run_stops_with_a_clear_message_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        run_main(["mlp", "--epochs", "3", "--out", "nan", "--cache-dir", "c", *TINY, "--lr", "1e6"])
    message = str(info.value)
    assert "nan" in message.lower() or "inf" in message.lower()
    assert "--lr" in message


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["resnet"], "unknown model"),
        (["mlp", "--lmbda", "-1"], "--lmbda must not be negative"),
        (["mlp", "--batch-size", "0"], "--batch-size must be at least 1"),
        (["mlp", "--lr", "0"], "--lr must be positive"),
    ],
)
def test_nonsense_flags_give_a_one_line_error(argv, expected, capsys):
    with pytest.raises(SystemExit) as info:
        run_main(argv)
    assert info.value.code == 2
    assert expected in capsys.readouterr().err


def _defaults(argv: list[str]) -> dict:
    args = finetune.get_args_parser().parse_args(argv)
    finetune.check_args(args, finetune.get_args_parser())
    return {k: getattr(args, k) for k in ("epochs", "lr", "fgs_eps", "parseval_beta")}


def test_defaults_depend_on_model_method_and_dataset_and_explicit_flags_win():
    assert _defaults(["mlp"]) == {"epochs": 60, "lr": 4e-2, "fgs_eps": 0.2, "parseval_beta": 0.1}
    assert _defaults(["mlp", "--method", "advtrain-deepfool"])["lr"] == 2e-2  # the MNIST method default
    assert _defaults(["lenet", "--method", "deepdefense+fgs"])["fgs_eps"] == 0.1
    # Fashion-MNIST: the settings of the committed tables, for every method (the MNIST lr diverges there)
    for method in ("deepdefense", "advtrain-deepfool", "parseval"):
        assert _defaults(["mlp", "--dataset", "fashion-mnist", "--method", method]) == {
            "epochs": 5, "lr": 5e-3, "fgs_eps": 0.2, "parseval_beta": 0.1}
        assert _defaults(["lenet", "--dataset", "fashion-mnist", "--method", method])["lr"] == 2e-3
    assert _defaults(["lenet", "--dataset", "fashion-mnist", "--method", "advtrain-deepfool"]) == {
        "epochs": 3, "lr": 2e-3, "fgs_eps": 0.2, "parseval_beta": 0.1}
    assert _defaults(["lenet", "--dataset", "fashion-mnist", "--method", "deepdefense+fgs"])["fgs_eps"] == 0.1
    explicit = _defaults(["mlp", "--dataset", "fashion-mnist", "--epochs", "2", "--lr", "0.1", "--fgs-eps", "0.3"])
    assert explicit == {"epochs": 2, "lr": 0.1, "fgs_eps": 0.3, "parseval_beta": 0.1}


def test_deep_defense_takes_the_tuned_c_and_lambda_on_mnist_only():
    def c_lmbda(argv: list[str]) -> tuple:
        args = finetune.get_args_parser().parse_args(argv)
        finetune.check_args(args, finetune.get_args_parser())
        return args.c, args.lmbda

    assert c_lmbda(["mlp"]) == c_lmbda(["lenet"]) == (5.0, 25.0)  # results/sweeps/sweep-*-deepdefense.md
    assert c_lmbda(["lenet", "--dataset", "fashion-mnist"]) == (25.0, 15.0)  # the paper's
    assert c_lmbda(["lenet", "--method", "deepdefense+fgs"]) == (25.0, 15.0)
    assert c_lmbda(["mlp", "--c", "25", "--lmbda", "15"]) == (25.0, 15.0)
    assert "tuned on validation here" in finetune.get_args_parser().format_help()


def test_missing_data_dir_and_wrong_reference_are_clear_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="does not exist"):
        run_main(["mlp", "--data-dir", "nowhere", "--out", "x", *TINY])
    models.save(tmp_path / "mlp.pt", "mlp", models.mlp(), {"scale": 1 / 255, "mean": torch.zeros(1, 28, 28)})
    with pytest.raises(SystemExit, match="'mlp' model, not 'lenet'"):
        run_main(["lenet", "--reference", "mlp.pt", "--out", "y", *TINY])


def test_sweep_chooses_on_validation_and_reuses_finished_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["mlp", "--lrs", "0.01", "--epochs", "2", "--val-size", "100", "--out", "sw", "--cache-dir", "c",
            "--extra", *TINY]
    result = sweep.main(sweep.get_args_parser().parse_args(argv))
    assert len(result["candidates"]) == 2 and result["best"]["value"] == 0.01
    assert (tmp_path / "sw" / "sweep.md").is_file()
    mtime = (tmp_path / "sw" / "lr0.01" / "final.pt").stat().st_mtime
    sweep.main(sweep.get_args_parser().parse_args(argv))
    assert (tmp_path / "sw" / "lr0.01" / "final.pt").stat().st_mtime == mtime


def test_sweep_grid_runs_every_combination_and_names_the_chosen_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["mlp", "--grid", "c=5,25", "lmbda=15", "--epochs", "1", "--val-size", "100", "--out", "sw",
            "--cache-dir", "c", "--extra", *TINY]
    result = sweep.main(sweep.get_args_parser().parse_args(argv))
    assert sorted(p.name for p in (tmp_path / "sw").iterdir() if p.is_dir()) == ["c25-lmbda15", "c5-lmbda15"]
    assert {(c["c"], c["lmbda"]) for c in result["candidates"]} == {(5.0, 15.0), (25.0, 15.0)}
    stored = json.loads((tmp_path / "sw" / "c5-lmbda15" / "config.json").read_text())["args"]
    assert (stored["c"], stored["lmbda"]) == (5.0, 15.0)
    text = (tmp_path / "sw" / "sweep.md").read_text()
    assert f"Chosen: c {result['best']['c']:g}, lmbda 15" in text and "| c | lmbda | epoch |" in text
    with pytest.raises(SystemExit, match="PARAM=V1,V2"):
        sweep.main(sweep.get_args_parser().parse_args(["mlp", "--grid", "c=five", "--epochs", "1", "--out", "x"]))
    with pytest.raises(SystemExit, match="exactly one of"):
        sweep.main(sweep.get_args_parser().parse_args(["mlp", "--grid", "c=5", "--lrs", "0.1", "--epochs", "1",
                                                       "--out", "x"]))
