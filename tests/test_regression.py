"""A small LeNet run reproduces its committed metrics bit for bit (time budget: ~35 s).

Two fixtures, one command (reference training, Deep Defense fine-tuning, per-epoch and final evaluation with
ε_ref bisection and a validation split):

* ``tests/fixtures/regression-lenet-mnist.json``: the metrics made with the whole-tensor data path (commit
  b13e52c), before MNIST moved to ``torch.utils.data``;
* ``tests/fixtures/regression-lenet-mnist-now.json``: the same run with today's CPU kernels (issue 17: the
  one-channel convolution's reverse on ATen's im2col kernel, DeepFool's last-layer rows as ``W[k] − W[l]``).

The run must give every number of the second again, exactly: same sample order, same batches, same arithmetic,
whatever else the machine is doing. The two fixtures must agree on every count, accuracy and flag exactly and on
every float to ``FLOAT_REL``: the kernels add the same terms in another order, which moves the float32 DeepFool
norms and losses by up to 8.6e-6 relative (``history[1].test.rho2``) after two epochs of training.

When the arithmetic changes on purpose, rewrite the second fixture with ``python tests/test_regression.py
--write`` and say why in the commit.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers import strip_timings  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "regression-lenet-mnist.json"
NOW = ROOT / "tests" / "fixtures" / "regression-lenet-mnist-now.json"
FLOAT_REL = 1e-5  # the historic fixture against today's kernels (see the module docstring)


def run_metrics(out: Path) -> dict:
    """The fixture's command, run in ``out``: its metrics without wall times, for the fixture's keys."""
    fixture = json.loads(FIXTURE.read_text())
    # the fixture was made when c 25, λ 15 were MNIST's defaults (before the tuned ones): pass them
    argv = [*fixture["argv"], "--c", "25", "--lmbda", "15", "--out", str(out / "run"), "--cache-dir", str(out / "refs")]
    proc = subprocess.run([sys.executable, str(ROOT / "train" / "finetune.py"), *argv], cwd=out,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((out / "run" / "metrics.json").read_text())
    return {key: strip_timings(metrics[key]) for key in fixture["metrics"]}


def test_the_lenet_run_reproduces_the_committed_metrics_exactly(tmp_path):
    now = json.loads(NOW.read_text())
    metrics = run_metrics(tmp_path)
    for key, expected in now["metrics"].items():
        assert metrics[key] == expected, key


def test_todays_kernels_agree_with_the_whole_tensor_path_metrics():
    assert_close_metrics(json.loads(NOW.read_text())["metrics"], json.loads(FIXTURE.read_text())["metrics"], "")


def assert_close_metrics(actual, expected, where: str) -> None:
    """Equal: integers, booleans, strings and structure exactly; floats to ``FLOAT_REL`` relative."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and actual.keys() == expected.keys(), where
        for k in expected:
            assert_close_metrics(actual[k], expected[k], f"{where}.{k}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), where
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_close_metrics(a, e, f"{where}[{i}]")
    elif isinstance(expected, float) and not isinstance(actual, bool):
        assert actual == pytest.approx(expected, rel=FLOAT_REL, abs=1e-12), where
    else:
        assert actual == expected, where


def main() -> None:
    parser = argparse.ArgumentParser(description="Rewrite tests/fixtures/regression-lenet-mnist-now.json from a "
                                                 "fresh run of the fixture's command (when the arithmetic changes "
                                                 "on purpose).")
    parser.add_argument("--write", action="store_true", required=True,
                        help="run the command (about 30 s on 2 cores) and overwrite the fixture")
    parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        metrics = run_metrics(Path(tmp))
    fixture = json.loads(FIXTURE.read_text())
    NOW.write_text(json.dumps({
        "argv": fixture["argv"],
        "what": "metrics.json of the run of regression-lenet-mnist.json with today's CPU kernels; "
                "tests/test_regression.py reruns it and compares every number exactly. Written by "
                "python tests/test_regression.py --write",
        "metrics": metrics}, indent=1) + "\n")
    print(f"wrote {NOW.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
