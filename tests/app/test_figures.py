"""train/figures.py on fake run directories: no training, no data, a few seconds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("matplotlib")

ROOT = Path(__file__).resolve().parents[2]

from revnet_app.train import figures  # noqa: E402

N = 50  # test images per epoch evaluation in the fake runs


def _metrics(acc: float, rho2: float) -> dict:
    return {"acc": acc, "rho2": rho2, "n": N, "fgs_acc@1.0": 0.5}


def _fake_run(runs: Path, model: str, method: str, epochs: int, reference: str | None) -> None:
    """A finetune.py run directory; ``reference``: "metrics" (new style), "checkpoint" (old style) or None."""
    run = runs / f"{model}-{method}-s0"
    run.mkdir(parents=True)
    history = [{"epoch": e, "lr": 0.01, "train_loss": 0.1, "test": _metrics(0.9 + e / 100, 0.1 + e / 50)}
               for e in range(1, epochs + 1)]
    metrics = {"model": model, "method": method, "history": history}
    if reference == "metrics":
        metrics["reference_epoch_eval"] = _metrics(0.9, 0.1)
    elif reference == "checkpoint":
        (run / "resume").mkdir()
        torch.save({"epoch": epochs, "history": history, "reference_metrics": _metrics(0.88, 0.09)},
                   run / "resume" / "checkpoint.pt")
    (run / "metrics.json").write_text(json.dumps(metrics))


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    runs = tmp_path / "runs"
    _fake_run(runs, "mlp", "deepdefense", 3, "metrics")
    _fake_run(runs, "mlp", "clean", 2, "checkpoint")
    _fake_run(runs, "mlp", "parseval", 4, None)
    _fake_run(runs, "lenet", "deepdefense", 2, "metrics")
    _fake_run(runs, "lenet", "clean", 3, "metrics")
    _fake_run(runs, "lenet", "parseval", 1, "checkpoint")
    _fake_run(runs, "mlp", "advtrain-fgs", 2, "metrics")
    (runs / "mlp-advtrain-fgs-s0" / "metrics.json").rename(runs / "mlp-advtrain-fgs-s0" / "other.json")  # unfinished
    return runs


def _main(argv: list[str]) -> dict:
    return figures.main(figures.get_args_parser().parse_args(argv))


def test_figure2_writes_a_png_and_the_plotted_numbers(runs, tmp_path, capsys):
    out = tmp_path / "figs"
    result = _main(["figure2", "--runs", str(runs), "--models", "mlp", "lenet", "--seed", "0", "--out", str(out),
                    "--dpi", "60"])
    png, js = out / "figure2-mnist.png", out / "figure2-mnist.json"
    assert result["png"] == str(png) and result["json"] == str(js)
    raw = png.read_bytes()
    assert len(raw) > 1000 and raw[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    image = matplotlib.image.imread(png)
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    assert image.shape[1] == 600 and image.shape[0] > 300  # 10 inches wide at 60 dpi; two rows

    stored = json.loads(js.read_text())
    assert stored["models"] == result["data"]
    data = stored["models"]
    assert set(data) == {"mlp", "lenet"}
    assert set(data["mlp"]) == {"deepdefense", "clean", "parseval"}
    assert set(data["lenet"]) == {"deepdefense", "clean", "parseval"}
    expected_epochs = {("mlp", "deepdefense"): [0, 1, 2, 3], ("mlp", "clean"): [0, 1, 2],
                       ("mlp", "parseval"): [1, 2, 3, 4], ("lenet", "deepdefense"): [0, 1, 2],
                       ("lenet", "clean"): [0, 1, 2, 3], ("lenet", "parseval"): [0, 1]}
    for (model, method), epochs in expected_epochs.items():
        curve = data[model][method]
        assert curve["epochs"] == epochs, (model, method)
        assert len(curve["acc"]) == len(curve["rho2"]) == len(curve["n"]) == len(epochs)
        assert curve["n"] == [N] * len(epochs)
    assert data["mlp"]["deepdefense"]["acc"][0] == pytest.approx(0.9)  # from metrics.json
    assert data["mlp"]["clean"]["acc"][0] == pytest.approx(0.88)  # from resume/checkpoint.pt
    assert data["mlp"]["clean"]["rho2"] == pytest.approx([0.09, 0.12, 0.14])
    assert data["mlp"]["clean"]["reference"] == "resume/checkpoint.pt:reference_metrics"
    assert data["mlp"]["parseval"]["reference"] is None
    assert stored["missing"]["mlp"] == ["advtrain-deepfool", "advtrain-fgs", "deepdefense+fgs"]

    printed = capsys.readouterr().out
    assert "skipping mlp/advtrain-fgs" in printed and "mlp-parseval-s0" in printed


def test_figure2_reads_several_folders_first_one_wins(runs, tmp_path):
    other = tmp_path / "other"
    _fake_run(other, "lenet", "advtrain-fgs", 2, "metrics")  # only here
    _fake_run(other, "lenet", "deepdefense", 5, "metrics")  # also in runs, which comes first
    result = _main(["figure2", "--runs", str(runs), str(other), "--models", "lenet", "--dataset", "fashion-mnist",
                    "--out", str(tmp_path / "figs"), "--dpi", "40"])
    lenet = result["data"]["lenet"]
    assert set(lenet) == {"deepdefense", "clean", "parseval", "advtrain-fgs"}
    assert lenet["advtrain-fgs"]["run"] == str(other / "lenet-advtrain-fgs-s0")
    assert lenet["deepdefense"]["run"] == str(runs / "lenet-deepdefense-s0")
    assert lenet["deepdefense"]["epochs"] == [0, 1, 2]
    stored = json.loads((tmp_path / "figs" / "figure2-fashion-mnist.json").read_text())
    assert stored["runs"] == [str(runs), str(other)]
    with pytest.raises(SystemExit, match="nowhere.*not a folder"):
        _main(["figure2", "--runs", str(runs), str(tmp_path / "nowhere"), "--out", str(tmp_path / "figs2")])


def test_figure2_errors_name_the_folder_searched(runs, tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(SystemExit, match="nowhere.*not a folder"):
        _main(["figure2", "--runs", str(missing), "--out", str(tmp_path / "figs")])
    with pytest.raises(SystemExit, match=r"no runs for model 'alexnet' with seed 0 in .*runs"):
        _main(["figure2", "--runs", str(runs), "--models", "mlp", "alexnet", "--out", str(tmp_path / "figs")])
    with pytest.raises(SystemExit, match="no runs for model 'mlp' with seed 7"):
        _main(["figure2", "--runs", str(runs), "--models", "mlp", "--seed", "7", "--out", str(tmp_path / "figs")])
    assert not (tmp_path / "figs").exists()


def test_help_exits_zero(capsys):
    with pytest.raises(SystemExit) as exc:
        figures.get_args_parser().parse_args(["--help"])
    assert exc.value.code == 0 and "figure2" in capsys.readouterr().out
    proc = subprocess.run([sys.executable, str(ROOT / "train" / "figures.py"), "figure2", "--help"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--runs" in proc.stdout and "--models" in proc.stdout


def test_figure2_redraws_from_its_own_json_when_the_runs_are_gone(runs, tmp_path, capsys):
    first = _main(["figure2", "--runs", str(runs), "--models", "lenet", "mlp", "--dataset", "fashion-mnist",
                   "--out", str(tmp_path / "a"), "--dpi", "40"])
    stored = tmp_path / "a" / "figure2-fashion-mnist.json"
    import shutil

    shutil.rmtree(runs)
    again = _main(["figure2", "--from-json", str(stored), "--out", str(tmp_path / "b"), "--dpi", "40"])
    assert again["data"] == first["data"]
    assert list(again["data"]) == ["lenet", "mlp"]  # the rows keep the order of --models
    redrawn = json.loads((tmp_path / "b" / "figure2-fashion-mnist.json").read_text())  # dataset from the file
    assert redrawn["redrawn_from"] == str(stored) and redrawn["runs"] == [str(runs)]
    assert redrawn["missing"]["mlp"] == ["advtrain-deepfool", "advtrain-fgs", "deepdefense+fgs"]
    assert "redrawing from the plotted numbers" in capsys.readouterr().out
    only = _main(["figure2", "--from-json", str(stored), "--models", "mlp", "--methods", "clean", "--out",
                  str(tmp_path / "c"), "--dpi", "40"])
    assert list(only["data"]) == ["mlp"] and list(only["data"]["mlp"]) == ["clean"]
    with pytest.raises(SystemExit, match="no curves for --models alexnet"):
        _main(["figure2", "--from-json", str(stored), "--models", "alexnet", "--out", str(tmp_path / "d")])
    with pytest.raises(SystemExit, match="not a figure2 JSON"):
        _main(["figure2", "--from-json", _write(tmp_path / "x.json", {"figure": "figure3"}),
               "--out", str(tmp_path / "d")])
    with pytest.raises(SystemExit, match="not a figure2 JSON"):
        _main(["figure2", "--from-json", _write(tmp_path / "list.json", [1, 2]), "--out", str(tmp_path / "d")])
    with pytest.raises(SystemExit) as exc:  # one source only
        figures.get_args_parser().parse_args(["figure2", "--runs", str(runs), "--from-json", str(stored)])
    assert exc.value.code == 2


def _write(path: Path, obj: dict) -> str:
    path.write_text(json.dumps(obj))
    return str(path)


def test_all_takes_figure2_from_the_runs_while_they_exist(runs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no runs/studies here
    results = tmp_path / "results"
    _main(["figure2", "--runs", str(runs), "--out", str(results / "figures"), "--dpi", "40"])
    capsys.readouterr()
    done = _main(["all", "--results", str(results), "--out", str(tmp_path / "out"), "--dpi", "40"])
    assert list(done) == ["figure2-mnist"]  # no study summaries: figures 3 and 4 are skipped with a note
    printed = capsys.readouterr().out
    assert "figure2 (mnist) from the run directories" in printed and "skipping figure3" in printed
    (runs / "mlp-clean-s0" / "metrics.json").unlink()
    done_again = _main(["all", "--results", str(results), "--out", str(tmp_path / "out2"), "--dpi", "40"])
    assert "run directories gone" in capsys.readouterr().out
    assert done_again["figure2-mnist"]["data"] == done["figure2-mnist"]["data"]  # clean's curve kept
    with pytest.raises(SystemExit, match="nothing to draw"):
        _main(["all", "--results", str(tmp_path / "empty"), "--out", str(tmp_path / "out3")])


def test_all_redraws_every_committed_figure_from_the_committed_results(tmp_path, monkeypatch):
    """A fresh checkout has no run directories: every figure of the README comes back from results/."""
    monkeypatch.chdir(tmp_path)
    committed = ROOT / "results" / "figures"
    done = _main(["all", "--results", str(ROOT / "results"), "--out", str(tmp_path / "out"), "--dpi", "30"])
    assert set(done) == {"figure2-mnist", "figure2-fashion-mnist", "figure3", "figure4"}
    for name in done:
        assert (tmp_path / "out" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        new = json.loads((tmp_path / "out" / f"{name}.json").read_text())
        old = json.loads((committed / f"{name}.json").read_text())
        key = "models" if name.startswith("figure2") else "curves"
        assert new[key] == old[key], name  # the same numbers as the committed figure
    assert list(done["figure2-mnist"]["data"]) == ["mlp", "lenet"]
    assert done["figure4"]["best"]["layer"] == "fc1"
