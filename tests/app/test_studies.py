"""``train/studies.py`` (Figures 3 and 4) and ``figures.py figure3/figure4`` end to end on a tiny grid (embedded
MNIST, offline): six one-epoch LeNet runs on 200 training images from one cached reference."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

ROOT = Path(__file__).resolve().parents[2]

from revnet_app.train import figures  # noqa: E402
from revnet_app.train import studies  # noqa: E402

# --eval-samples/--epoch-eval-samples here win over the study's own (1000), as they come last
TINY = ["--no-download", "--train-samples", "200", "--ref-epochs", "8", "--ref-lr", "0.05", "--lr", "0.002",
        "--eval-samples", "40", "--epoch-eval-samples", "30", "--eval-max-iter", "5", "--batch-size", "50"]
CL = ["cl", "--cs", "5", "25", "--lmbdas", "15"]
LAYERS = ["layers", "--layers", "conv1=0", "fc1", "--cs", "5", "25"]


def run_study(grid: list[str], *flags: str, extra: list[str] = TINY) -> dict:
    argv = [*grid, "--epochs", "1", "--out", "st", "--cache-dir", "cache", *flags, "--extra", *extra]
    return studies.main(studies.get_args_parser().parse_args(argv))


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """Both studies run once in a fresh folder (the working directory, so ./data is not the real MNIST)."""
    root = tmp_path_factory.mktemp("studies")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        cl = run_study(CL)
        layers = run_study(LAYERS)
    return root, cl, layers


@pytest.fixture
def in_root(done, monkeypatch):
    monkeypatch.chdir(done[0])
    return done


def _metrics(run: str) -> dict:
    return json.loads((Path(run) / "metrics.json").read_text())


def test_cl_summary_json_and_markdown(in_root):
    root, cl, _ = in_root
    assert [(p["lmbda"], p["c"], p["d"]) for p in cl["points"]] == [(15.0, 5.0, 5.0), (15.0, 25.0, 5.0)]
    assert cl["grid"] == {"lmbda": [15.0], "c": [5.0, 25.0], "d": 5.0}
    assert cl["epochs"] == 1 and cl["eval_samples"] == 40 and cl["n_test"] == 40  # --extra won over 1000
    for p, name in zip(cl["points"], ["lmbda15-c5", "lmbda15-c25"]):
        assert p["run"] == str(Path("st") / "cl" / name) and not p["reused"]
        m = _metrics(p["run"])
        assert p["acc"] == m["finetuned"]["acc"] and p["rho2"] == m["finetuned"]["rho2"] and p["n"] == 40
        assert 0.0 <= p["acc"] <= 1.0 and p["rho2"] >= 0.0 and p["wall_seconds"] > 0
        args = json.loads((Path(p["run"]) / "config.json").read_text())["args"]
        assert (args["c"], args["lmbda"], args["d"], args["epochs"], args["reg_layers"], args["eval_samples"]) == (
            p["c"], 15.0, 5.0, 1, None, 40)
    ref = _metrics(cl["points"][0]["run"])["reference"]
    assert cl["reference"]["acc"] == ref["acc"] and cl["reference"]["rho2"] == ref["rho2"]
    assert cl["reference"]["consistent"] and cl["reference"]["checkpoint"].startswith("cache/lenet-")
    stored = json.loads((root / "st" / "cl.json").read_text())
    assert stored["points"] == cl["points"] and stored["reference"] == cl["reference"]
    assert stored["config"]["extra"] == TINY and "git_commit" in stored["environment"]
    md = (root / "st" / "cl.md").read_text()
    assert md.startswith("# Figure 3 study: LeNet, d = 5, varying c and λ")
    assert "| λ | c | test acc. (%) | ρ₂ |" in md and "1 epoch per run" in md and "on 40 test images" in md
    rows = [line.split("|")[1:3] for line in md.splitlines() if line.startswith("| ") and "---" not in line]
    assert [[c.strip() for c in r] for r in rows[1:]] == [["reference", "—"], ["15", "5"], ["15", "25"]]


def test_layers_summary(in_root):
    root, _, layers = in_root
    assert [(p["layer"], p["child"], p["c"]) for p in layers["points"]] == [
        ("conv1", "0", 5.0), ("conv1", "0", 25.0), ("fc1", "5", 5.0), ("fc1", "5", 25.0)]
    assert layers["grid"] == {"layers": ["conv1", "fc1"], "children": {"conv1": "0", "fc1": "5"}, "c": [5.0, 25.0],
                              "lmbda": 15.0, "d": 5.0}
    for p in layers["points"]:
        assert p["run"] == str(Path("st") / "layers" / f"{p['layer']}-c{p['c']:g}") and p["lmbda"] == 15.0
        assert json.loads((Path(p["run"]) / "config.json").read_text())["args"]["reg_layers"] == [p["child"]]
    assert json.loads((root / "st" / "layers.json").read_text())["points"] == layers["points"]
    md = (root / "st" / "layers.md").read_text()
    assert "Figure 4 study: LeNet, λ = 15, d = 5" in md and "| layer | c |" in md and "| fc1 (5) | 25 |" in md


def test_a_second_call_reuses_every_run_and_an_unfinished_one_is_resumed(in_root, capsys):
    _, cl, layers = in_root
    mtimes = {p["run"]: (Path(p["run"]) / "metrics.json").stat().st_mtime_ns for p in cl["points"] + layers["points"]}
    capsys.readouterr()
    again = run_study(CL)
    again_layers = run_study(LAYERS)
    out = capsys.readouterr().out
    assert out.count("  reused ") == 6 and "final evaluation on" not in out and "training the reference" not in out
    assert "[1/2] lambda 15, c 5 (elapsed" in out and "[4/4] fc1 (child 5), c 25 (elapsed" in out
    assert all(p["reused"] for p in again["points"] + again_layers["points"])
    strip = lambda pts: [{k: v for k, v in p.items() if k != "reused"} for p in pts]  # noqa: E731
    assert strip(again["points"]) == strip(cl["points"]) and strip(again_layers["points"]) == strip(layers["points"])
    assert {r: (Path(r) / "metrics.json").stat().st_mtime_ns for r in mtimes} == mtimes

    # without metrics.json the run counts as unfinished: resumed from its checkpoint (here: final evaluation only)
    run = Path(cl["points"][1]["run"])
    (run / "metrics.json").unlink()
    resumed = run_study(CL)
    out = capsys.readouterr().out
    assert f"resuming {run} after epoch 1" in out and out.count("final evaluation on") == 1
    assert [p["reused"] for p in resumed["points"]] == [True, False]
    assert resumed["points"][1]["acc"] == cl["points"][1]["acc"]


def test_mismatched_or_invalid_settings_are_refused_before_training(in_root, capsys):
    _, cl, _ = in_root
    before = sorted(str(p) for p in Path("st").rglob("*"))
    with pytest.raises(SystemExit, match=r"lmbda15-c5 was run with other settings \(epochs: stored 1, wanted 2\)"):
        run_study(CL, "--epochs", "2")
    with pytest.raises(SystemExit, match=r"conv1-c5 was run with other settings \(eval_samples: stored 40, wanted 30"):
        run_study(LAYERS, extra=[*TINY, "--eval-samples", "30"])
    with pytest.raises(SystemExit, match=r"--extra changes --c, --reg-layers"):
        run_study(LAYERS, extra=[*TINY, "--c", "10", "--reg-layers", "2"])
    with pytest.raises(SystemExit, match="no default layers for model 'mlp'.*NAME=CHILD"):
        run_study(["layers", "--model", "mlp"])
    with pytest.raises(SystemExit, match=r"--layers fc9=9: lenet's children are"):
        run_study(["layers", "--layers", "fc9=9"])
    with pytest.raises(SystemExit, match="--cs repeats a value"):
        run_study(["cl", "--cs", "5", "5"])
    assert sorted(str(p) for p in Path("st").rglob("*")) == before  # nothing was trained or written
    assert "final evaluation on" not in capsys.readouterr().out


def test_figure3_and_figure4_from_the_studies(in_root):
    root, cl, layers = in_root
    import matplotlib.image

    r3 = figures.main(figures.get_args_parser().parse_args(["figure3", "--runs", "st", "--out", "figs",
                                                            "--dpi", "50"]))
    r4 = figures.main(figures.get_args_parser().parse_args(["figure4", "--runs", "st", "--out", "figs",
                                                            "--dpi", "50"]))
    for r, name in [(r3, "figure3"), (r4, "figure4")]:
        png = root / "figs" / f"{name}.png"
        assert r["png"] == str(Path("figs") / f"{name}.png") and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        image = matplotlib.image.imread(png)
        assert image.ndim == 3 and image.shape[1] == 375  # 7.5 inches at 50 dpi
    f3 = json.loads((root / "figs" / "figure3.json").read_text())
    assert f3["title"] == "Figure 3: LeNet, d = 5, varying c and λ (1 epoch, 40 test images)"
    assert [(c["label"], c["lmbda"], c["c"]) for c in f3["curves"]] == [("λ = 15", 15.0, [5.0, 25.0])]
    assert f3["curves"][0]["acc"] == [p["acc"] for p in cl["points"]]
    assert f3["curves"][0]["rho2"] == [p["rho2"] for p in cl["points"]]
    assert f3["reference"]["acc"] == cl["reference"]["acc"] and f3["reference"]["rho2"] == cl["reference"]["rho2"]

    f4 = json.loads((root / "figs" / "figure4.json").read_text())
    assert f4["title"].startswith("Figure 4: LeNet, λ = 15, d = 5, one layer regularized")
    assert [(c["layer"], c["child"], c["c"]) for c in f4["curves"]] == [("conv1", "0", [5.0, 25.0]),
                                                                       ("fc1", "5", [5.0, 25.0])]
    kept = [p for p in layers["points"] if p["acc"] >= layers["reference"]["acc"]] or layers["points"]
    top = max(kept, key=lambda p: p["rho2"])
    assert (f4["best"]["layer"], f4["best"]["c"], f4["best"]["rho2"]) == (top["layer"], top["c"], top["rho2"])
    assert set(f4["best_per_layer"]) == {"conv1", "fc1"} and f4["paper_best"] == "fc1"
    assert f4["agrees_with_paper"] == (top["layer"] == "fc1")


def _fake_layers(runs: Path, points: list[tuple[str, float, float, float]], ref_acc: float) -> None:
    runs.mkdir(parents=True, exist_ok=True)
    pts = [{"layer": layer, "child": "0", "lmbda": 15.0, "c": c, "d": 5.0, "acc": acc, "rho2": rho2, "n": 100}
           for layer, c, acc, rho2 in points]
    (runs / "layers.json").write_text(json.dumps({
        "study": "layers", "model": "lenet", "grid": {"lmbda": 15.0, "d": 5.0}, "epochs": 3, "n_test": 100,
        "points": pts, "reference": {"acc": ref_acc, "rho2": 0.1}}))


def test_figure4_best_layer_keeps_the_reference_accuracy(tmp_path):
    pts = [("conv1", 5.0, 0.99, 0.30), ("conv1", 25.0, 0.97, 0.40), ("fc1", 5.0, 0.98, 0.25),
           ("fc1", 25.0, 0.985, 0.28), ("fc2", 5.0, 0.90, 0.90)]
    _fake_layers(tmp_path / "a", pts, ref_acc=0.98)
    result = figures.main(figures.get_args_parser().parse_args(
        ["figure4", "--runs", str(tmp_path / "a"), "--out", str(tmp_path / "figs"), "--dpi", "30"]))
    assert result["best"]["layer"] == "conv1" and result["best"]["c"] == 5.0
    assert "accuracy >=" in result["best"]["criterion"]
    assert result["best_per_layer"]["fc2"]["accuracy_kept"] is False and result["agrees_with_paper"] is False
    assert result["title"] == ("Figure 4: LeNet, λ = 15, d = 5, one layer regularized, varying c "
                               "(3 epochs, 100 test images)")
    _fake_layers(tmp_path / "b", pts, ref_acc=0.999)  # no point keeps the accuracy: the highest ρ₂ overall
    result = figures.main(figures.get_args_parser().parse_args(
        ["figure4", "--runs", str(tmp_path / "b"), "--out", str(tmp_path / "figs"), "--dpi", "30"]))
    assert result["best"]["layer"] == "fc2" and "no point reaches" in result["best"]["criterion"]
    with pytest.raises(SystemExit, match=r"no .*cl\.json; run `python train/studies.py cl"):
        figures.main(figures.get_args_parser().parse_args(["figure3", "--runs", str(tmp_path / "a")]))
    with pytest.raises(SystemExit, match="is not a studies.py cl summary"):
        (tmp_path / "a" / "cl.json").write_text((tmp_path / "a" / "layers.json").read_text())
        figures.main(figures.get_args_parser().parse_args(["figure3", "--runs", str(tmp_path / "a")]))


def test_help_exits_zero(capsys):
    for argv in (["--help"], ["cl", "--help"], ["layers", "--help"]):
        with pytest.raises(SystemExit) as exc:
            studies.get_args_parser().parse_args(argv)
        assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--lmbdas" in out and "--layers" in out and "--full" in out and "--extra" in out
    for script, argv in [("studies.py", ["cl", "--help"]), ("figures.py", ["figure4", "--help"])]:
        proc = subprocess.run([sys.executable, str(ROOT / "train" / script), *argv], capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert "--out" in proc.stdout
