"""Second pass over the refusals: the Deep Defense loss's hyper-parameters, 1-class models in every metric,
checkpoint fields of the wrong type, and a full disk during ``torch.save``. Each is one line that says what is
wrong (and, for files, names the path); nothing is accepted silently.

Time budget: ≤ 10 s
"""

from __future__ import annotations

import errno
import io
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from revnet_app import models
import revnet
from revnet import metrics
from revnet.attacks import ce_input_gradient


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text.strip(), text
    return text


def _mlp(classes: int = 3, dropout: bool = False) -> revnet.Sequential:
    torch.manual_seed(0)
    layers = [nn.Flatten(), nn.Linear(4, 8), nn.ReLU(), *([nn.Dropout(0.5)] if dropout else []), nn.Linear(8, classes)]
    return revnet.Sequential(*layers).double().eval()


X = torch.randn(5, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
Y = torch.tensor([0, 1, 2, 0, 1])


# ---------------------------------------------------------------- 1. the loss's hyper-parameters

@pytest.mark.parametrize("kwargs, message", [
    ({"lmbda": -15}, "lmbda must be a finite number >= 0, got -15."),
    ({"lmbda": float("nan")}, "lmbda must be a finite number >= 0, got nan."),
    ({"lmbda": float("inf")}, "lmbda must be a finite number >= 0, got inf."),
    ({"lmbda": "15"}, "lmbda must be a finite number >= 0, got '15'."),
    ({"c": float("nan")}, "c must be a finite number >= 0, got nan."),
    ({"c": -25.0}, "c must be a finite number >= 0, got -25.0."),
    ({"c": float("inf")}, "c must be a finite number >= 0, got inf."),
    ({"d": float("nan")}, "d must be a finite number >= 0, got nan."),
    ({"d": -5}, "d must be a finite number >= 0, got -5."),
    ({"d": float("-inf")}, "d must be a finite number >= 0, got -inf."),
    ({"ce_weight": -1.0}, "ce_weight must be a finite number >= 0, got -1.0."),
    ({"ce_weight": float("nan")}, "ce_weight must be a finite number >= 0, got nan."),
    ({"overshoot": float("nan")}, "overshoot must be a finite number >= 0, got nan."),
    ({"overshoot": -0.02}, "overshoot must be a finite number >= 0, got -0.02."),
    ({"max_iter": 0}, "max_iter must be an integer >= 1, got 0."),
    ({"max_iter": float("inf")}, "max_iter must be an integer >= 1, got inf."),
])
def test_deep_defense_loss_refuses_bad_hyperparameters_naming_them(kwargs, message):
    with pytest.raises(ValueError) as info:
        revnet.deep_defense_loss(_mlp(), X, Y, **kwargs)
    assert one_line(info.value) == message


def test_deep_defense_loss_accepts_zero_weights_and_integers():
    for kwargs in ({"lmbda": 0}, {"lmbda": 15, "c": 25, "d": 5}, {"ce_weight": 0.0}, {"lmbda": torch.tensor(2.0)}):
        loss, _ = revnet.deep_defense_loss(_mlp(), X, Y, max_iter=2, **kwargs)
        assert torch.isfinite(loss)


# ---------------------------------------------------------------- 2. a 1-class model in every metric

ONE = _mlp(classes=1)
Y1 = torch.zeros(5, dtype=torch.long)
METRICS = {
    "accuracy": lambda: metrics.accuracy(torch.zeros(5, 1), Y1),
    "network_accuracy": lambda: metrics.network_accuracy(ONE, X, Y1),
    "fgs_accuracy": lambda: metrics.fgs_accuracy(ONE, X, Y1, 0.1),
    "eps_ref": lambda: metrics.eps_ref(ONE, X, Y1, max_doublings=2),
    "accuracy_at_eps_fractions": lambda: metrics.accuracy_at_eps_fractions(ONE, X, Y1, 0.1),
    "pgd_accuracy": lambda: metrics.pgd_accuracy(ONE, X, Y1, 0.1, steps=2),
    "fgs_signs": lambda: metrics.fgs_signs(ONE, X, Y1),
    "correct_at_step": lambda: metrics.correct_at_step(ONE, X, Y1, torch.zeros_like(X), None),
    "deepfool_robustness": lambda: metrics.deepfool_robustness(ONE, X, max_iter=2),
    "deepfool_batch_sums": lambda: metrics.deepfool_batch_sums(ONE, X, max_iter=2),
}


@pytest.mark.parametrize("name", list(METRICS))
def test_every_metric_refuses_a_one_class_model_as_deepfool_does(name):
    with pytest.raises(ValueError) as deepfool_info:
        revnet.deepfool(ONE, X)
    with pytest.raises(ValueError) as info:
        METRICS[name]()
    assert one_line(info.value) == str(deepfool_info.value)
    assert "outputs 1 class" in str(info.value)


def test_the_class_check_leaves_the_random_state_alone():
    net = _mlp(dropout=True).train()  # Dropout draws its masks from the global generator
    torch.manual_seed(1)
    signs = metrics.fgs_signs(net, X, Y)
    after = torch.get_rng_state()
    torch.manual_seed(1)
    assert torch.equal(signs, ce_input_gradient(net, X, Y).sign())
    assert torch.equal(after, torch.get_rng_state())


def test_labels_outside_the_classes_are_refused_by_the_fgs_metrics_before_any_attack():
    with pytest.raises(ValueError) as info:
        metrics.fgs_accuracy(_mlp(), X, torch.tensor([0, 1, 2, 7, 0]), 0.1)
    assert one_line(info.value) == ("y holds labels in [0, 7], but the network has 3 classes (valid labels 0..2).")


# ---------------------------------------------------------------- 3. checkpoint fields of the wrong type

@pytest.fixture(scope="module")
def mlp_ckpt() -> dict:
    net = models.build("mlp")
    return {"arch": "mlp", "state_dict": net.state_dict(), "preprocess": {"mean": torch.zeros(1, 28, 28), "scale": 1.0},
            "metrics": {}, "config": {}}


ARCH_ARGS = "a dict of plain arguments (numbers, strings, booleans; e.g. {'num_classes': 1000})"
TENSORS = "a dict of parameter names to tensors"
BAD_FIELDS = [
    ({"arch": ["mlp"]}, "'arch' must be a string naming the architecture (e.g. 'lenet'), got the list ['mlp']"),
    ({"arch": 5}, "'arch' must be a string naming the architecture (e.g. 'lenet'), got the int 5"),
    ({"arch_args": [1]}, f"'arch_args' must be {ARCH_ARGS}, got the list [1]"),
    ({"arch_args": {1: 2}}, f"'arch_args' must be {ARCH_ARGS}, got the dict {{1: 2}}"),
    ({"arch_args": {"num_classes": {"a": 1}}}, "'arch_args' must be a dict of plain arguments"),
    ({"state_dict": {5: torch.zeros(1)}}, f"'state_dict' must be {TENSORS}, got the key 5 (int)"),
    ({"state_dict": {"0.weight": 1.0}}, f"'state_dict' must be {TENSORS}, got '0.weight' = the float 1.0"),
    ({"state_dict": [1]}, f"'state_dict' must be {TENSORS}, got the list [1]"),
    ({"preprocess": [1]}, "'preprocess' must be a dict with a tensor 'mean' and a number 'scale', got the list [1]"),
    ({"metrics": [1]}, "'metrics' must be a dict, got the list [1]"),
    ({"config": "x"}, "'config' must be a dict, got the str 'x'"),
    ({"input_shape": 5}, "'input_shape' must be a list of positive integers (e.g. [1, 28, 28]), got the int 5"),
    ({"input_shape": []}, "'input_shape' must be a list of positive integers (e.g. [1, 28, 28]), got the list []"),
    ({"input_shape": ["a"]}, "'input_shape' must be a list of positive integers"),
]


@pytest.mark.parametrize("change, expected", BAD_FIELDS, ids=[str(c) for c, _ in BAD_FIELDS])
def test_a_checkpoint_field_of_the_wrong_type_is_one_checkpoint_error(tmp_path, mlp_ckpt, change, expected):
    path = tmp_path / "bad.pt"
    torch.save({**mlp_ckpt, **change}, path)
    for load in (lambda: models.load(path), lambda: models.load_state(path, ("arch", "state_dict", "preprocess"))):
        with pytest.raises(models.CheckpointError) as info:
            load()
        text = one_line(info.value)
        assert text.startswith(f"{path} is not a usable checkpoint: ") and expected in text, text


def test_a_nested_state_dict_with_odd_keys_or_values_is_one_checkpoint_error(tmp_path):
    net = _mlp()
    path = tmp_path / "resume.pt"
    for model, expected in [({**net.state_dict(), 7: torch.zeros(1)}, "unexpected 7 in its state dict"),
                            ({**net.state_dict(), "1.weight": [0.0]}, "1.weight is a list, not a tensor")]:
        torch.save({"model": model}, path)
        with pytest.raises(models.CheckpointError) as info:
            models.load_state(path, ("model",), shapes={"model": net}, what="resume checkpoint")
        assert expected in one_line(info.value) and str(path) in str(info.value)


# ---------------------------------------------------------------- 4. a full disk during torch.save

class _FullDisk(io.RawIOBase):
    """An unbuffered file on ``fd`` that takes ``room`` bytes, then fails every write with ``err``."""

    def __init__(self, fd: int, room: int, err: int) -> None:
        super().__init__()
        self.fd, self.room, self.err = fd, room, err

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self.fd

    def write(self, b) -> int:
        if len(b) > self.room:
            raise OSError(self.err, os.strerror(self.err))
        self.room -= len(b)
        return os.write(self.fd, b)

    def close(self) -> None:
        if not self.closed:
            os.close(self.fd)
        super().close()


@pytest.mark.parametrize("room", [0, 1000, 5000])
@pytest.mark.parametrize("err, what", [(errno.ENOSPC, "No space left on device; free some space"),
                                       (errno.EIO, "Input/output error; check the folder")])
def test_an_oserror_inside_torch_save_is_one_write_error(tmp_path, monkeypatch, room, err, what):
    path = tmp_path / "final.pt"
    models.save_atomic({"v": 1}, path)
    with monkeypatch.context() as m:
        m.setattr(os, "fdopen", lambda fd, *args, **kwargs: _FullDisk(fd, room, err))
        with pytest.raises(models.WriteError) as info:
            models.save_atomic({"w": torch.zeros(10_000)}, path)
    assert one_line(info.value) == f"cannot write {path}: {what} (the previous file, if any, is intact)."
    assert info.value.errno == err
    assert torch.load(path, weights_only=True) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["final.pt"]


def test_an_unrelated_runtime_error_while_writing_is_not_a_write_error(tmp_path):
    path = tmp_path / "final.pt"
    models.save_atomic({"v": 1}, path)

    def fail(f):
        try:
            raise OSError(errno.ENOENT, "not the write")  # an OSError handled on the way is no write failure...
        except OSError:
            pass
        try:
            {}["key"]
        except KeyError:  # ...and this RuntimeError has only a KeyError behind it
            raise RuntimeError("unexpected pos 1 vs 0")

    with pytest.raises(RuntimeError, match="unexpected pos 1 vs 0") as info:
        models.write_atomic(path, fail)
    assert not isinstance(info.value, OSError)
    with pytest.raises(ValueError, match="boom"):
        models.write_atomic(path, lambda f: (_ for _ in ()).throw(ValueError("boom")))
    assert torch.load(path, weights_only=True) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["final.pt"]


@pytest.fixture
def tiny_disk(tmp_path):
    """A 64 KiB tmpfs (root on Linux only; skipped elsewhere)."""
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root on Linux")
    folder = tmp_path / "tiny"
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)], capture_output=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True)


def test_a_really_full_disk_is_one_write_error(tiny_disk):
    path = tiny_disk / "final.pt"
    models.save_atomic({"v": 1}, path)
    with pytest.raises(models.WriteError) as info:
        models.save_atomic({"w": torch.zeros(100_000)}, path)  # 400 kB on a 64 kB disk
    assert one_line(info.value) == (f"cannot write {path}: No space left on device; free some space (the previous "
                                    "file, if any, is intact).")
    assert torch.load(path, weights_only=True) == {"v": 1}
    assert [p.name for p in tiny_disk.iterdir()] == ["final.pt"]
