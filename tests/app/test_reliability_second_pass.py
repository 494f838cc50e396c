"""Issue 28's second reliability pass, the parts in ``finetune.py`` (time budget: ~25 s): a refused ``--resume``
leaves ``config.json`` alone; a user's builder that cannot give a classifier is one ``error:`` line naming it; an
ImageNet ``val/`` without one readable image is one line, not a worker's traceback; a Deep Defense run from a weak
reference says why it diverged and what to do. (The uneven torchrun batch is in ``test_distributed.py``, the CIFAR
pickles in ``test_untrusted_data.py``, convert's refusals in ``test_convert_refusals.py``, the library and disk
refusals in ``test_refusals_second_pass.py``, sweep.py in ``test_sweep.py``.)
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

from revnet_app.train import finetune  # noqa: E402

TINY = ["--no-download", "--train-samples", "200", "--ref-epochs", "2", "--epochs", "1", "--eval-samples", "50",
        "--epoch-eval-samples", "50", "--eval-max-iter", "5", "--no-progress", "--batch-size", "50",
        "--min-acc-ratio", "0", "--device", "cpu"]


def run(argv: list[str]) -> dict:
    return finetune.main(finetune.get_args_parser().parse_args(argv))


def test_a_refused_resume_leaves_config_json_as_the_run_made_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run(["mlp", *TINY, "--method", "clean", "--lr", "0.01", "--out", "r", "--cache-dir", "refs"])
    before = (tmp_path / "r" / "config.json").read_text()
    with pytest.raises(SystemExit, match=r"--resume with other settings .*--lr 0\.01 -> 0\.05"):
        run(["mlp", *TINY, "--method", "clean", "--lr", "0.05", "--out", "r", "--cache-dir", "refs", "--resume"])
    assert (tmp_path / "r" / "config.json").read_text() == before
    assert json.loads(before)["args"]["lr"] == 0.01


BUILDERS = textwrap.dedent('''
    import torch
    from torch import nn

    def needs_arg(width):
        return nn.Sequential(nn.Flatten(), nn.Linear(784, width))

    def raises():
        raise RuntimeError("the weights file is missing")

    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(784, 10)

        def forward(self, x):
            y = self.fc(x.flatten(1))
            return y, y

    def tuple_output():
        return Pair()

    def seven_logits():
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 7))

    def not_a_module():
        return (nn.Linear(784, 10),)
''')


@pytest.mark.parametrize("builder, message", [
    ("usermods:needs_arg", r"needs_arg\(\) cannot be called without arguments .*width.*--model-args width=VALUE"),
    ("usermods:raises", r"raises\(\) raised RuntimeError: the weights file is missing"),
    ("usermods:tuple_output", r"--model 'usermods:tuple_output': Pair.forward must return one tensor .*returns \(fc, fc\)"),
    ("usermods:seven_logits", r"returns shape \(1, 7\) for one image; it must return one tensor of \(N, 10\) logits"),
    ("usermods:not_a_module", r"returned a tuple, not an nn.Module"),
    ("exiting:model", r"importing 'exiting' called sys.exit\(0\)"),
])
def test_a_builder_that_gives_no_classifier_is_one_error_line(tmp_path, monkeypatch, builder, message):
    (tmp_path / "usermods.py").write_text(BUILDERS)
    (tmp_path / "exiting.py").write_text("import sys\nsys.exit(0)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(SystemExit) as info:
        run(["--model", builder, *TINY, "--out", "u", "--cache-dir", "refs"])
    text = str(info.value.code)
    assert text.startswith("error: ") and "\n" not in text
    assert re.search(message, text), text
    assert not (tmp_path / "refs").exists() or not list((tmp_path / "refs").iterdir())  # refused before training


def test_an_imagenet_val_without_a_readable_image_is_one_error_line(tmp_path):
    from PIL import Image
    import numpy as np

    rng = np.random.default_rng(0)
    for c in ("n01", "n02"):
        (tmp_path / "data" / "train" / c).mkdir(parents=True)
        (tmp_path / "data" / "val" / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(
                tmp_path / "data" / "train" / c / f"{i}.JPEG")
            (tmp_path / "data" / "val" / c / f"{i}.JPEG").write_bytes(b"not a JPEG")
    (tmp_path / "tiny.py").write_text("from torch import nn\n\ndef net():\n"
                                      "    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 2))\n")
    proc = subprocess.run([sys.executable, str(ROOT / "train" / "finetune.py"), "--model", "tiny:net", "--dataset",
                           "imagenet", "--data-dir", str(tmp_path / "data"), "--crop-size", "16", "--workers", "1",
                           "--ref-epochs", "1", "--epochs", "1", "--batch-size", "3", "--eval-max-iter", "2",
                           "--no-progress", "--device", "cpu", "--out", str(tmp_path / "o"), "--cache-dir",
                           str(tmp_path / "refs")], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("warning:")]
    assert len(errors) == 1 and errors[0].startswith("error: no image in") and "is readable" in errors[0], \
        proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_a_divergence_from_a_weak_reference_says_why_and_what_to_do(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:  # a reference of one tiny step: about one image in ten is right
        run(["mlp", *TINY, "--ref-epochs", "1", "--ref-lr", "1e-6", "--lr", "0.05", "--lmbda", "25",
             "--out", "w", "--cache-dir", "refs", "--max-train-ce", "5"])
    text = str(info.value.code)
    assert "the run diverged" in text and "the reference is weak: test accuracy" in text
    assert "Fine-tune a trained reference (more --ref-epochs, or --reference PATH)" in text


def test_model_args_reach_the_builder_and_the_checkpoint(tmp_path, monkeypatch, capsys):
    """``--model module:function --model-args KEY=VALUE``: the builder gets the arguments (Python literals), and
    ``final.pt`` records them so that ``models.load`` rebuilds the same model."""
    from revnet_app import models

    (tmp_path / "usermods.py").write_text(BUILDERS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    run(["--model", "usermods:needs_arg", "--model-args", "width=10", *TINY, "--method", "clean",
         "--out", "a", "--cache-dir", "refs"])
    net, ckpt = models.load(tmp_path / "a" / "final.pt", arch="usermods:needs_arg")  # never imports unasked
    assert ckpt["arch_args"] == {"width": 10} and net(__import__("torch").zeros(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(SystemExit):
        run(["mlp", "--model-args", "width=10", *TINY, "--out", "b"])
    assert "--model-args is for a builder of one's own" in capsys.readouterr().err
    with pytest.raises(SystemExit, match=r"--model-args 'width': write KEY=VALUE"):
        run(["--model", "usermods:needs_arg", "--model-args", "width", *TINY, "--out", "c"])
