"""train/sweep.py: the grid it runs, the flags it passes to finetune.py and the setting it chooses (issue 28, item 5).

No training: finished runs are fabricated as ``OUT/<label>/metrics.json`` (which sweep.py reuses, shaped as
finetune.py writes it), or ``finetune.main`` is replaced by a stand-in that records the parsed flags.
Time budget: ≤ 5 s for the module (each test well under a second).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

from revnet_app.train import finetune  # noqa: E402
from revnet_app.train import sweep  # noqa: E402

REF_VAL = {"acc": 0.9, "rho2": 0.2}


def result(rows: list[tuple[float, float]]) -> dict:
    """A finished finetune.py run's metrics.json (the keys sweep.py reads); ``rows``: (val acc., val ρ₂) per
    epoch."""
    return {"model": "mlp", "method": "deepdefense", "reference_val": dict(REF_VAL),
            "history": [{"epoch": e, "lr": 0.01, "train_seconds": 0.0, "train_loss": 0.1,
                         "test": {"acc": acc, "rho2": rho2}, "val": {"acc": acc, "rho2": rho2}}
                        for e, (acc, rho2) in enumerate(rows, 1)]}


def sweep_main(argv: list[str]) -> dict:
    return sweep.main(sweep.get_args_parser().parse_args(argv))


def record_finetune(monkeypatch) -> list[tuple[list[str], object]]:
    """Replace finetune.py's parsing and run by a recorder: each call's argv and parsed args; the run's history has
    one row per epoch it was given, val ρ₂ growing with the epoch and with --seed."""
    calls, make_parser = [], finetune.get_args_parser

    def parser(*a, **kw):
        p = make_parser(*a, **kw)
        parse = p.parse_args

        def parse_args(argv):
            args = parse(argv)
            calls.append((list(argv), args))
            return args

        p.parse_args = parse_args
        return p

    def main(args):
        return result([(0.95, 0.3 + 0.01 * e + 0.001 * args.seed) for e in range(1, args.epochs + 1)])

    monkeypatch.setattr(sweep.finetune, "get_args_parser", parser)
    monkeypatch.setattr(sweep.finetune, "main", main)
    return calls


def test_a_repeated_grid_axis_is_refused_naming_the_axis(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    calls = record_finetune(monkeypatch)
    with pytest.raises(SystemExit, match=r"names 'lr' twice.*lr=0\.1,0\.2"):
        sweep_main(["mlp", "--grid", "lr=0.1", "lr=0.2", "--epochs", "1", "--out", "sw"])
    with pytest.raises(SystemExit, match=r"names 'c' twice.*c=5,15,25"):
        sweep_main(["mlp", "--grid", "c=5", "lmbda=15", "c=15,25", "--epochs", "1", "--out", "sw"])
    assert calls == [] and not (tmp_path / "sw").exists()  # refused before any run


def test_the_choice_uses_the_last_epoch_actually_run_not_the_sweep_epochs(tmp_path, monkeypatch):
    # --extra --epochs 2 overrides --epochs 1: each run has 2 epochs, and only epoch 2 follows the 2-epoch recipe
    monkeypatch.chdir(tmp_path)
    for label, rows in {"lr0.01": [(0.95, 0.40), (0.95, 0.30)], "lr0.02": [(0.95, 0.25), (0.95, 0.35)]}.items():
        (tmp_path / "sw" / label).mkdir(parents=True)
        (tmp_path / "sw" / label / "metrics.json").write_text(json.dumps(result(rows)))
    out = sweep_main(["mlp", "--lrs", "0.01", "0.02", "--epochs", "1", "--out", "sw", "--extra", "--epochs", "2"])
    assert (out["best"]["value"], out["best"]["epoch"], out["best"]["val_rho2"]) == (0.02, 2, 0.35)
    assert len(out["candidates"]) == 4  # every epoch still listed
    text = (tmp_path / "sw" / "sweep.md").read_text()
    assert "Chosen: lr 0.02, 2 epochs" in text
    assert json.loads((tmp_path / "sw" / "sweep.json").read_text())["best"]["epoch"] == 2
    # an epochs axis: each run is judged at its own last epoch (1 → epoch 1, 3 → epoch 3), not at --epochs
    calls = record_finetune(monkeypatch)
    out = sweep_main(["mlp", "--grid", "epochs=1,3", "--epochs", "2", "--out", "ep"])
    assert [args.epochs for _, args in calls] == [1, 3]
    assert (out["best"]["epochs"], out["best"]["epoch"]) == (3, 3)


def test_integer_flags_can_be_swept_and_values_keep_the_text_typed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    calls = record_finetune(monkeypatch)
    out = sweep_main(["mlp", "--grid", "batch-size=50", "lr=1e-3", "--epochs", "1", "--out", "sw"])
    (argv, args), = calls
    assert (args.batch_size, args.lr) == (50, 0.001)
    assert argv[argv.index("--batch-size") + 1] == "50" and argv[argv.index("--lr") + 1] == "1e-3"
    assert argv[argv.index("--out") + 1] == str(Path("sw", "batch-size50-lr0.001"))
    assert out["best"]["batch-size"] == 50 and isinstance(out["best"]["batch-size"], int)
    text = (tmp_path / "sw" / "sweep.md").read_text()
    assert "Chosen: batch-size 50, lr 0.001, 1 epochs" in text and "| 50 | 0.001 | 1 |" in text
    assert json.loads((tmp_path / "sw" / "sweep.json").read_text())["best"]["batch-size"] == 50
    # --seed is an integer too, and a swept seed is the run's seed (not the sweep's --seed 0)
    calls.clear()
    out = sweep_main(["mlp", "--param", "seed", "--values", "1", "2", "--epochs", "1", "--out", "seeds"])
    assert [args.seed for _, args in calls] == [1, 2]
    assert [argv[argv.index("--out") + 1] for argv, _ in calls] == [str(Path("seeds", "seed1")),
                                                                     str(Path("seeds", "seed2"))]
    assert out["best"]["value"] == 2
    # a value that the flag's type refuses is one line, before any run
    calls.clear()
    with pytest.raises(SystemExit, match=r"batch-size.*'fifty'.*PARAM=V1,V2"):
        sweep_main(["mlp", "--grid", "batch-size=fifty", "--epochs", "1", "--out", "bad"])
    with pytest.raises(SystemExit, match=r"finetune\.py has no flag --nope"):
        sweep_main(["mlp", "--grid", "nope=1", "--epochs", "1", "--out", "bad"])
    assert calls == []


def test_a_diverged_run_is_a_failed_row_and_the_sweep_goes_on(tmp_path, monkeypatch):
    # issue 32's TRADES/gradient-norm sweeps: a strong setting diverges; the sweep records it and chooses among the rest
    monkeypatch.chdir(tmp_path)
    record_finetune(monkeypatch)

    def main(args):
        if args.lr > 0.05:  # fail the way finetune_report.fail_run does: failed.json, then SystemExit
            Path(args.out).mkdir(parents=True)
            (Path(args.out) / "failed.json").write_text(json.dumps({"failed": "loss inf at epoch 2", "history": []}))
            raise SystemExit("error: the run diverged: loss inf at epoch 2. ...")
        return result([(0.95, 0.3 + args.lr)])

    monkeypatch.setattr(sweep.finetune, "main", main)
    out = sweep_main(["mlp", "--lrs", "0.01", "0.1", "0.02", "--epochs", "1", "--out", "sw"])
    assert out["best"]["value"] == 0.02 and [f["value"] for f in out["failed"]] == [0.1]
    text = (tmp_path / "sw" / "sweep.md").read_text()
    assert "| 0.1 | failed: loss inf at epoch 2 |" in text and "Chosen: lr 0.02, 1 epochs" in text
    # a rerun reuses the failed run instead of training it again
    monkeypatch.setattr(sweep.finetune, "main", lambda args: pytest.fail(f"retrained {args.out}"))
    (tmp_path / "sw" / "lr0.01").mkdir(exist_ok=True)
    (tmp_path / "sw" / "lr0.01" / "metrics.json").write_text(json.dumps(result([(0.95, 0.31)])))
    (tmp_path / "sw" / "lr0.02").mkdir(exist_ok=True)
    (tmp_path / "sw" / "lr0.02" / "metrics.json").write_text(json.dumps(result([(0.95, 0.32)])))
    assert sweep_main(["mlp", "--lrs", "0.01", "0.1", "0.02", "--epochs", "1", "--out", "sw"])["failed"][0]["value"] == 0.1
    # every run failing is one clear error, not a choice among nothing
    (tmp_path / "sw" / "lr0.01" / "metrics.json").unlink()
    (tmp_path / "sw" / "lr0.01" / "failed.json").write_text(json.dumps({"failed": "acc collapsed", "history": []}))
    (tmp_path / "sw" / "lr0.02" / "metrics.json").unlink()
    (tmp_path / "sw" / "lr0.02" / "failed.json").write_text(json.dumps({"failed": "acc collapsed", "history": []}))
    with pytest.raises(SystemExit, match="every run of the sweep failed"):
        sweep_main(["mlp", "--lrs", "0.01", "0.1", "0.02", "--epochs", "1", "--out", "sw"])


def test_a_bad_flag_still_stops_the_whole_sweep(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    record_finetune(monkeypatch)
    monkeypatch.setattr(sweep.finetune, "main", lambda args: (_ for _ in ()).throw(SystemExit("error: no data")))
    with pytest.raises(SystemExit, match="no data"):
        sweep_main(["mlp", "--lrs", "0.01", "0.02", "--epochs", "1", "--out", "sw"])
