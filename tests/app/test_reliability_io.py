"""Reliability of the scripts' inputs and outputs: corrupt data files, bad checkpoints, unwritable output folders,
results that must not be lost, and small script fixes. Each refusal is one line that names the path (fast: the
training and evaluation are faked where a script has to run end to end)."""

from __future__ import annotations

import argparse
import errno
import json
import os
import stat
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]

from revnet_app.train import methods  # noqa: E402
from revnet_app.train.sources import mnist as mnist_source  # noqa: E402
from revnet_app.train import sources  # noqa: E402
from revnet_app.train import engine  # noqa: E402
from revnet_app.train import evaluate  # noqa: E402
from revnet_app.train import finetune  # noqa: E402
from revnet_app.train import pipeline  # noqa: E402
from revnet_app.train import utils  # noqa: E402
from revnet_app.train import finetune_setup, run_state  # noqa: E402

from revnet_app import models  # noqa: E402


def one_line(exc: BaseException) -> str:
    text = str(exc.code if isinstance(exc, SystemExit) else exc)
    assert "\n" not in text.strip(), text
    return text


# ---------------------------------------------------------------- 1. data files

def _idx(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack(">HBB", 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
                     + array.astype(np.uint8).tobytes())


def _mnist(root: Path) -> Path:
    raw = root / "MNIST" / "raw"
    rng = np.random.default_rng(0)
    for split, n in [("train", 12), ("t10k", 6)]:
        _idx(raw / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _idx(raw / f"{split}-labels-idx1-ubyte", rng.integers(0, 10, n))
    return raw


def _truncate(p: Path, n: int) -> None:
    p.write_bytes(p.read_bytes()[:n])


def _poke(p: Path, offset: int, value: int) -> None:
    b = bytearray(p.read_bytes())
    b[offset] = value
    p.write_bytes(bytes(b))


@pytest.mark.parametrize("damage, name, expected", [
    (lambda p: _truncate(p, 5000), "train-images-idx3-ubyte", "is truncated: its header announces 9408 bytes"),
    (lambda p: _poke(p, 2, 0x55), "t10k-images-idx3-ubyte", "is corrupt or not an IDX file"),
    (lambda p: _truncate(p, 6), "train-labels-idx1-ubyte", "is truncated (6 bytes, its IDX header needs 8)"),
    (lambda p: _poke(p, 10, 200), "train-labels-idx1-ubyte", "holds label 200 (labels must be 0..9)"),
])
def test_a_damaged_idx_file_is_named_as_truncated_or_corrupt_not_missing(tmp_path, damage, name, expected):
    raw = _mnist(tmp_path)
    assert mnist_source.load("mnist", str(tmp_path), download=False).train_x.shape == (12, 1, 28, 28)  # intact: loads
    damage(raw / name)
    with pytest.raises(sources.DataError) as info:
        mnist_source.load("mnist", str(tmp_path), download=True)  # not "not downloaded", and no download attempt
    msg = one_line(info.value)
    assert msg.startswith(str(raw / name)) and expected in msg


def test_data_dir_that_is_a_file_and_an_empty_one_that_stays_empty(tmp_path, monkeypatch):
    f = tmp_path / "notes.txt"
    f.write_text("x")
    with pytest.raises(sources.DataError, match="is a file, not a folder"):
        mnist_source.load("mnist", str(f))

    def offline(dataset, root, download):  # torchvision creates DIR/MNIST/raw/, then the network fails
        if download:
            (Path(root) / "MNIST" / "raw").mkdir(parents=True, exist_ok=True)
            raise OSError("network unreachable")
        raise RuntimeError("Dataset not found")

    monkeypatch.setattr(mnist_source, "_from_torchvision", offline)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(sources.DataError, match="is not in .* and could not be downloaded"):
        mnist_source.load("mnist", str(empty), download=True)
    assert list(empty.iterdir()) == []  # the failed download's folders are gone
    with pytest.raises(sources.DataError, match="downloads are switched off"):
        mnist_source.load("mnist", str(empty), download=False)
    assert list(empty.iterdir()) == []


# ---------------------------------------------------------------- 2. checkpoints

@pytest.fixture(scope="module")
def lenet_ckpt(tmp_path_factory) -> tuple[Path, dict]:
    path = tmp_path_factory.mktemp("ck") / "lenet.pt"
    models.save(path, "lenet", models.build("lenet"), {"scale": 1 / 255, "mean": torch.zeros(1, 28, 28)})
    return path, torch.load(path, weights_only=True)


def _variant(tmp_path: Path, ckpt: dict, change) -> Path:
    c = {k: (dict(v) if isinstance(v, dict) else v) for k, v in ckpt.items()}
    change(c)
    torch.save(c, tmp_path / "bad.pt")
    return tmp_path / "bad.pt"


@pytest.mark.parametrize("change, expected", [
    (lambda c: c["state_dict"].update({"0.weight": torch.zeros(3, 1, 5, 5)}),
     "does not fit a 'lenet' model: 0.weight has shape (3, 1, 5, 5), expected (20, 1, 5, 5)"),
    (lambda c: c.update(arch="vgg99"), "holds an unknown architecture 'vgg99'; known:"),
    (lambda c: c["state_dict"].pop("2.bias"), "does not fit a 'lenet' model: missing 2.bias in its state dict"),
    (lambda c: c.pop("state_dict"), "lacks 'state_dict'"),
    (lambda c: c["preprocess"].pop("mean"), "has no preprocessing (preprocess needs a tensor 'mean'"),
    (lambda c: c["preprocess"].update(mean=torch.zeros(3, 32, 32)), "preprocess mean has shape (3, 32, 32)"),
])
def test_a_bad_checkpoint_is_one_checkpoint_error(tmp_path, lenet_ckpt, change, expected):
    path = _variant(tmp_path, lenet_ckpt[1], change)
    with pytest.raises(models.CheckpointError) as info:
        models.load(path)
    assert expected in one_line(info.value) and str(path) in str(info.value)


def test_a_non_checkpoint_and_the_script_sites_refuse_in_one_line(tmp_path, lenet_ckpt):
    with pytest.raises(models.CheckpointError) as info:
        models.load(ROOT / "README.md")
    assert "README.md: it is not a checkpoint (not a file written by torch.save" in one_line(info.value)
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(lenet_ckpt[0].read_bytes()[:3000])
    with pytest.raises(models.CheckpointError, match="trunc.pt: it is not a checkpoint"):
        models.load(trunc)

    bad = _variant(tmp_path, lenet_ckpt[1], lambda c: c["state_dict"].pop("2.bias"))
    args = argparse.Namespace(reference=str(bad), model="lenet", reference_format="revnet")
    with pytest.raises(SystemExit) as info:  # --reference
        finetune.get_reference(args, None, "cpu")
    assert one_line(info.value).startswith("error: ") and "missing 2.bias" in str(info.value.code)

    # the reference cache: a damaged cached file is named, with what to do
    splits = mnist_source.Splits(torch.zeros(4, 1, 28, 28, dtype=torch.uint8), torch.arange(4), None, None, "t")
    pipe = pipeline.Pipeline("mnist", None, None, None, None, {}, (1, 28, 28), 10, "t",
                             [splits.train_x, splits.train_y])
    cache_args = argparse.Namespace(reference=None, model="lenet", dataset="mnist", ref_epochs=1, ref_lr=0.1,
                                    batch_size=2, seed=0, cache_dir=str(tmp_path / "cache"), pretrained=False)
    key = (f"lenet-mnist-{finetune.fingerprint(splits.train_x, splits.train_y)}-e1-lr0.1-b2-s0")
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / f"{key}.pt").write_bytes(b"garbage")
    with pytest.raises(SystemExit) as info:
        finetune.get_reference(cache_args, pipe, "cpu")
    assert "cached reference:" in one_line(info.value) and "Delete" in str(info.value.code)

    # the advtrain set of a run with other training images
    out = tmp_path / "run"
    out.mkdir()
    torch.save({"x_adv": torch.zeros(3, 1, 28, 28), "fooled": torch.ones(3, dtype=torch.bool)}, out / "advtrain_set.pt")
    with pytest.raises(SystemExit) as info:
        methods.build("advtrain-deepfool").prepare(torch.zeros(5, 1, 28, 28), torch.zeros(5), ref_net=None, out=out,
                                                   batch_size=5)
    assert "'x_adv' has shape (3, 1, 28, 28), expected (5, 1, 28, 28)" in one_line(info.value)

    # --resume: run_state.load_resume checks the keys and the model's shapes
    torch.save({"model": models.build("mlp").state_dict(), "optimizer": {}, "lr_scheduler": {}, "epoch": 1,
                "rng": {"torch": torch.get_rng_state()}, "history": [], "reference_metrics": {}}, out / "resume.pt")
    with pytest.raises(SystemExit) as info:
        run_state.load_resume(out / "resume.pt", models.build("lenet"), "cpu")
    assert one_line(info.value).startswith("error: --resume: ") and "does not fit resume checkpoint 'model'" in str(
        info.value.code)
    torch.save({"model": {}}, out / "resume.pt")
    with pytest.raises(SystemExit, match="lacks 'optimizer', 'lr_scheduler'"):
        run_state.load_resume(out / "resume.pt", models.build("lenet"), "cpu")


# ---------------------------------------------------------------- 3. output folders

def test_output_folder_that_is_a_file_or_unwritable_is_refused_at_start(tmp_path, monkeypatch):
    f = tmp_path / "file"
    f.write_text("keep")
    with pytest.raises(SystemExit) as info:
        utils.prepare_dir(f, "--out")
    assert one_line(info.value) == f"error: --out {f}: {f} is a file, not a folder; choose another --out."
    with pytest.raises(SystemExit, match="is a file, not a folder; choose another --cache-dir"):
        utils.prepare_dir(f / "sub", "--cache-dir")

    def read_only(*a, **k):  # root ignores chmod, so a read-only folder is simulated
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(utils.tempfile, "mkstemp", read_only)
    with pytest.raises(SystemExit) as info:
        utils.prepare_dir(tmp_path / "ro", "--out")
    assert one_line(info.value).startswith(f"error: --out {tmp_path / 'ro'} is not writable (Permission denied)")


def test_a_full_disk_is_one_line_and_keeps_the_previous_file_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "final.pt"
    models.save_atomic({"v": 1}, target)
    utils.write_json(tmp_path / "metrics.json", {"v": 1})
    umask = os.umask(0o022)
    try:
        utils.write_json(tmp_path / "m2.json", {})
        models.save_atomic({}, tmp_path / "f2.pt")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "m2.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "f2.pt").stat().st_mode) == 0o644

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    for write, path in [(lambda: models.save_atomic({"v": 2}, target), target),
                        (lambda: utils.write_json(tmp_path / "metrics.json", {"v": 2}), tmp_path / "metrics.json")]:
        with pytest.raises(models.WriteError) as info:
            write()
        assert one_line(info.value) == (f"cannot write {path}: No space left on device; free some space (the "
                                        "previous file, if any, is intact).")
    assert torch.load(target, weights_only=True) == {"v": 1}
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"v": 1}
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_temp_files_of_dead_processes_are_removed_at_start_and_live_ones_kept(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "resume").mkdir()
    stale = [tmp_path / f".final.pt.pid{dead.pid}.ab12cd.tmp", tmp_path / "resume" / f".checkpoint.pt.pid{dead.pid}.x.tmp"]
    live = [tmp_path / f".metrics.json.pid{os.getpid()}.zz.tmp", tmp_path / f".ref.pt.pid{os.getppid()}.yy.tmp"]
    other = [tmp_path / ".old-style.tmp", tmp_path / "final.pt"]
    for p in stale + live + other:
        p.write_text("x")
    utils.prepare_dir(tmp_path, "--out")
    assert [p.exists() for p in stale] == [False, False]
    assert all(p.exists() for p in live + other)


# ---------------------------------------------------------------- 4. lost results, 5. small ones

def _fake_evaluate(zero_rho2_for):
    def evaluate_(net, x, y=None, *, eps_ref=None, find_eps_ref=False, **kw):
        out = {"n": len(x), "acc": 0.9, "rho2": 0.0 if net in zero_rho2_for else 0.2, "fooling_rate": 1.0,
               "mean_iterations": 2.0, "eval_seconds": 0.0}
        if find_eps_ref:
            out["own_eps_ref"] = 0.1
        out["eps_ref_used"] = eps_ref or 0.1
        out.update({f"fgs_acc@{f}": 0.5 for f in engine.FRACTIONS})
        return out
    return evaluate_


def test_evaluate_prints_the_results_before_a_failed_write(tmp_path, lenet_ckpt, monkeypatch, capsys):
    monkeypatch.setattr(engine, "evaluate", _fake_evaluate([]))

    def fail(path, obj):
        raise models.checkpoint.write_error(Path(path), OSError(errno.EROFS, "Read-only file system"))

    monkeypatch.setattr(utils, "write_json", fail)
    argv = [str(lenet_ckpt[0]), "--no-download", "--eval-samples", "10", "--output", str(tmp_path / "e.json")]
    with pytest.raises(SystemExit) as info:
        evaluate.main(evaluate.get_args_parser().parse_args(argv))
    assert one_line(info.value) == (f"error: cannot write {tmp_path / 'e.json'}: Read-only file system; choose a "
                                    "writable folder (the previous file, if any, is intact). The results are printed above.")
    printed = capsys.readouterr().out
    assert "acc: 0.9" in printed and "rho2: 0.2" in printed


@pytest.mark.filterwarnings("ignore:Detected call of")
def test_zero_reference_rho2_still_writes_final_pt_and_resume_keeps_the_wall_time(tmp_path, monkeypatch):
    ref = tmp_path / "ref.pt"
    models.save(ref, "mlp", models.build("mlp"), {"scale": 1 / 255, "mean": torch.zeros(1, 28, 28)})
    ref_nets = []  # the reference network: the fake evaluation gives it ρ₂ = 0
    get_reference = finetune.get_reference

    def capture(*a):
        r = get_reference(*a)
        ref_nets.append(r[0])
        return r

    monkeypatch.setattr(finetune_setup, "get_reference", capture)
    monkeypatch.setattr(engine, "evaluate", _fake_evaluate(ref_nets))
    monkeypatch.setattr(engine, "train_one_epoch",
                        lambda *a, **k: {"train_loss": 0.1, "train_acc": 0.9, "train_ce": 0.1})
    out = tmp_path / "run"
    argv = ["mlp", "--method", "clean", "--epochs", "1", "--reference", str(ref), "--out", str(out), "--no-download",
            "--no-progress", "--eval-samples", "20"]
    result = finetune.main(finetune.get_args_parser().parse_args(argv))
    assert result["rho2_ratio"] is None and "reference's rho2 is 0" in result["rho2_ratio_note"]
    assert models.load(out / "final.pt")[1]["metrics"]["rho2_ratio"] is None
    assert json.loads((out / "metrics.json").read_text())["rho2_ratio"] is None

    metrics = json.loads((out / "metrics.json").read_text())
    metrics["wall_seconds"] = 1234.5  # the original run's wall time
    (out / "metrics.json").write_text(json.dumps(metrics))
    again = finetune.main(finetune.get_args_parser().parse_args([*argv, "--resume"]))
    assert again["wall_seconds"] == 1234.5 and 0 <= again["reevaluation_seconds"] < 1234.5
    assert json.loads((out / "metrics.json").read_text())["wall_seconds"] == 1234.5


def test_help_prints_each_default_once():
    text = evaluate.get_args_parser().format_help()
    assert "(default: None)" not in text and "(default: False)" not in text
    assert "(default: 50)" in text and "default: this model's own" in text
    p = argparse.ArgumentParser(formatter_class=utils.HelpFormatter)
    p.add_argument("--a", default=3, help="says its default: 3 (not repeated)")
    p.add_argument("--b", default=0, help="zero")
    assert "(default: 3)" not in p.format_help() and "(default: 0)" in p.format_help()
