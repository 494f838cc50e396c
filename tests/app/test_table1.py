"""``train/table1.py`` and ``train/figures.py`` end to end on a tiny configuration (embedded MNIST, offline)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

from revnet_app.train import figures  # noqa: E402
from revnet_app.train import table1  # noqa: E402
from revnet_app.train.table1_report import NORM_COLUMNS  # noqa: E402
from revnet_app.train.methods import EXTRA_ROWS, METHODS, PAPER_ROWS  # noqa: E402

TINY = ["--no-download", "--train-samples", "200", "--ref-epochs", "8", "--lr", "0.002", "--eval-samples", "60",
        "--epoch-eval-samples", "30", "--eval-max-iter", "8", "--batch-size", "50", "--epochs", "2",
        "--advtrain-max-iter", "8", "--min-acc-ratio", "0", "--lmbda", "1"]  # λ 1: the tuned c 5 diverges here; 30 epoch-eval images: the divergence rule is tested elsewhere


def run_table1(extra: list[str], *flags: str) -> dict:
    argv = ["--models", "mlp", "--out", "t1", "--cache-dir", "cache", "--pgd-samples", "20", "--pgd-steps", "3",
            "--autoattack-samples", "3", "--fmn-samples", "6", "--fmn-steps", "100", "--minimal-norm-samples", "6",
            "--ddn-steps", "20", "--cw-binary-steps", "2", "--cw-steps", "20", "--saturation-samples", "20",
            "--saturation-steps", "3", *flags, "--extra", *extra]
    return table1.main(table1.get_args_parser().parse_args(argv))


def test_table1_and_figure2_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    table = run_table1(TINY)
    rows = table["mlp"]["rows"]
    # the paper's order, Ours at the paper's c and λ (the defaults are tuned on MNIST), the rows it does not have
    assert list(rows) == [*PAPER_ROWS, table1.PAPER_OURS, *EXTRA_ROWS]
    for method, row in rows.items():
        assert set(row) == set(table1.COLUMNS) | {"wall_seconds"}
        for col in table1.COLUMNS:
            top = float("inf") if col in NORM_COLUMNS else 1.0  # a failed minimal-norm attack counts as ∞
            low = -float("inf") if col == "margin_q50" else 0.0  # a weak tiny model: margins of either sign
            assert len(row[col]) == 1 and low <= row[col][0] <= top, (method, col)
    assert set(table["mlp"]["saturation"]) == set(rows)
    for verdict in table["mlp"]["saturation"].values():  # a verdict per seed, a warning line per saturated one
        assert len(verdict["saturated"]) == 1 and len(verdict["warnings"]) == sum(verdict["saturated"])
    assert rows["deepdefense"]["fgs_acc@1.0"] == [pytest.approx(0.5, abs=1 / 60)]  # ε_ref is Deep Defense's
    drawn = json.loads((tmp_path / "t1" / "figure2-mnist.json").read_text())  # Figure 2 of the same runs
    assert (tmp_path / "t1" / "figure2-mnist.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(drawn["models"]["mlp"]) == set(METHODS) and drawn["runs"] == ["t1"]
    md = (tmp_path / "t1" / "table1.md").read_text()
    header = [line for line in md.splitlines() if line.startswith("| method")][0]
    for col in ["Acc. (%)", "ρ₂", "Acc. @0.2 ε_ref", "Acc. @0.5 ε_ref", "Acc. @1.0 ε_ref", "PGD-L2 acc. (%)",
                "AutoAttack-L2 acc. (%)", "FMN-L2 median ‖Δx‖/‖x‖", "DDN-L2 median (box)", "C&W-L2 median (box)",
                "zero CE gradients (%)", "median logit margin", "margin-PGD acc. (%) (box)", "paper: Acc.", "wall time"]:
        assert col in header
    body = [line.split("|")[1].strip() for line in md.splitlines() if line.startswith("| ") and "---" not in line]
    assert body[1:] == ["Reference", "Par. Train", "Adv. Train I", "Ours (tuned)", "Ours (paper's c, λ)", "Clean *",
                        "Adv. Train II *", "Ours+FGS *"]
    assert "98.31 / 0.111" in md  # the paper's MLP reference row stands beside ours
    assert "Ours (tuned) / Reference: ρ₂ ×" in md and "DDN ×" in md
    saved = json.loads((tmp_path / "t1" / "table1.json").read_text())
    assert saved["table"]["mlp"]["rows"]["parseval"]["acc"] == rows["parseval"]["acc"]
    for method in METHODS:
        config = json.loads((tmp_path / "t1" / f"mlp-{method}-s0" / "config.json").read_text())
        assert config["args"]["method"] == method
    paper_run = json.loads((tmp_path / "t1" / "mlp-deepdefense-paper-s0" / "config.json").read_text())["args"]
    assert (paper_run["method"], paper_run["c"], paper_run["lmbda"]) == ("deepdefense", 25.0, 15.0)

    # a second call reuses every run and the cached attack columns
    capsys.readouterr()
    again = run_table1(TINY)
    out = capsys.readouterr().out
    assert out.count("reused") == len(METHODS) + 1 and "final evaluation" not in out
    assert again["mlp"]["rows"] == rows

    # a finished run with other settings is refused, not silently reused
    with pytest.raises(SystemExit, match="other settings"):
        run_table1([*TINY, "--c", "10"])

    result = figures.main(figures.get_args_parser().parse_args(
        ["figure2", "--runs", "t1", "--models", "mlp", "--out", "figs", "--dpi", "40"]))
    assert Path(result["png"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    curves = result["data"]["mlp"]
    assert set(curves) == set(METHODS)
    assert all(c["epochs"] == [0, 1, 2] for c in curves.values())


def test_a_failing_baseline_is_reported_in_its_row_and_the_table_goes_on(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    real = table1.run_method

    def run_method(model, method, seed, args):
        if method == "parseval":
            raise SystemExit("error: the training loss is inf at a batch of epoch 1/2")
        return real(model, method, seed, args)

    monkeypatch.setattr(table1, "run_method", run_method)
    table = run_table1(TINY, "--methods", "deepdefense", "parseval")
    assert table["mlp"]["rows"]["parseval"]["failed"] == ["error: the training loss is inf at a batch of epoch 1/2"]
    assert table["mlp"]["rows"]["deepdefense"]["acc"][0] > 0
    drawn = json.loads((tmp_path / "t1" / "figure2-mnist.json").read_text())  # the failed run has no curve
    assert list(drawn["models"]["mlp"]) == ["deepdefense"] and drawn["missing"]["mlp"] == ["parseval"]
    md = (tmp_path / "t1" / "table1.md").read_text()
    assert "| Par. Train | failed (1 of 1 seeds" in md


def test_markdown_has_the_paper_column_only_for_the_paper_dataset():
    row = {c: [0.5] for c in table1.COLUMNS} | {"wall_seconds": [12.0]}
    table = {"lenet": {"rows": {"reference": row, "deepdefense": row}, "eps_ref": [0.1], "pgd_eps": [1.0],
                       "n_test": 100}}
    for dataset, cells in (("mnist", 16), ("fashion-mnist", 15)):
        args = table1.get_args_parser().parse_args(["--dataset", dataset])
        lines = [line for line in table1.markdown(table, args).splitlines() if line.startswith("|")]
        assert all(line.count("|") == cells + 1 for line in lines), (dataset, lines)
        assert ("paper: Acc." in lines[0]) == (dataset == "mnist")
    assert ("| Ours | 50.00 | 0.5000 | 50.00 | 50.00 | 50.00 | 50.00 | 50.00 | 0.5000 | 0.5000 | 0.5000 | 50.00 | 0.5000 "
            "| 50.00 | 12 |") in table1.markdown(table, args)
    # a saturated row: FMN dropped, PGD and DDN marked, the warning line under the table
    table["lenet"]["saturation"] = {"reference": {"saturated": [False], "warnings": []},
                                    "deepdefense": {"saturated": [True], "warnings": ["warning: lenet looks saturated"]}}
    md = table1.markdown(table, args)
    assert "| Ours | 50.00 | 0.5000 | 50.00 | 50.00 | 50.00 | 50.00 † | 50.00 | dropped (saturated) | 0.5000 † |" in md
    assert "- warning: lenet looks saturated" in md and "Ours / Reference: ρ₂ ×1.00, DDN ×1.00" in md


def test_method_flags_reach_only_their_method_and_are_written_in_the_table(tmp_path):
    # issue 32: the modern rows take the setting their validation sweep chose; the other rows keep the defaults
    args = table1.get_args_parser().parse_args(
        ["--method-flags", "trades=--trades-beta 1 --lr 0.01", "gradnorm=--gradnorm-lambda 0.1", "--extra", "--epochs", "3"])
    trades = table1.run_argv("mlp", "trades", 0, tmp_path / "r", args)
    assert trades[-6:] == ["--epochs", "3", "--trades-beta", "1", "--lr", "0.01"]  # after --extra: they win
    assert "--trades-beta" not in table1.run_argv("mlp", "pgd-at", 0, tmp_path / "r", args)
    assert table1.run_argv("mlp", "gradnorm", 0, tmp_path / "r", args)[-2:] == ["--gradnorm-lambda", "0.1"]
    row = {c: [0.5] for c in table1.COLUMNS} | {"wall_seconds": [1.0]}
    md = table1.markdown({"mlp": {"rows": {"reference": row, "deepdefense": row}, "eps_ref": [0.1], "pgd_eps": [1.0],
                                  "n_test": 10}}, args)
    assert "Flags of the TRADES rows: `--trades-beta 1 --lr 0.01`." in md
    for bad in ("trades", "nope=--lr 1", "trades=--lr 1|trades=--lr 2"):
        args = table1.get_args_parser().parse_args(["--method-flags", *bad.split("|")])
        with pytest.raises(SystemExit, match="--method-flags .*expected METHOD=FLAGS"):
            table1.run_argv("mlp", "trades", 0, tmp_path / "r", args)


def test_the_box_aware_row_is_ours_with_the_box_and_is_marked_as_not_in_the_paper(tmp_path):
    args = table1.get_args_parser().parse_args(["--box-ours"])
    assert args.box_ours
    argv = table1.run_argv("lenet", table1.BOX_OURS, 0, tmp_path / "r", args)
    assert argv[argv.index("--method") + 1] == "deepdefense" and argv[-1] == "--deepfool-box"
    row = {c: [0.5] for c in table1.COLUMNS} | {"wall_seconds": [1.0]}
    md = table1.markdown({"lenet": {"rows": {"reference": row, "deepdefense": row, table1.BOX_OURS: row},
                                    "eps_ref": [0.1], "pgd_eps": [1.0], "n_test": 10}}, args)
    assert "| Ours (box-aware) * | 50.00 | 0.5000 |" in md and md.count("| — |") == 1  # the paper has no such row
