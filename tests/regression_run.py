"""The regression runs of ``tests/app/test_regression.py`` and ``tests/kernel_matrix.py``: their commands, how they are
run (a subprocess with a fixed thread count) and what is read back from them.

* ``FLOAT32_ARGV``: the short LeNet run of ``tests/fixtures/regression-lenet-mnist.json`` (reference training from
  the seeded initialisation, two epochs of Deep Defense, evaluation), float32, 2 threads.
* ``FLOAT64_ARGV``: one Deep Defense step in float64 from the committed reference
  (``tests/fixtures/regression-lenet-reference.pt``, the reference the float32 run trains here) and the
  evaluation before and after it: the first batch's loss, its gradient and the DeepFool perturbation norms.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from helpers import strip_timings

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
HISTORIC = FIXTURES / "regression-lenet-mnist.json"  # made with the whole-tensor data path (commit b13e52c)
BIT_EXACT = FIXTURES / "regression-lenet-mnist-now.json"  # today's kernels, on the machine it names
FLOAT64 = FIXTURES / "regression-lenet-float64.json"
SAMPLE_ORDER = FIXTURES / "regression-lenet-sample-order.json"
REFERENCE = FIXTURES / "regression-lenet-reference.pt"
THREADS = 2  # fixed, whatever the number of cores: float32 sums are reduced in another order with another count

# the fixture was made when c 25, λ 15 were MNIST's defaults (before the tuned ones): they are passed
FLOAT32_ARGV = [*json.loads(HISTORIC.read_text())["argv"], "--c", "25", "--lmbda", "15", "--threads", str(THREADS)]
FLOAT64_ARGV = ["lenet", "--no-download", "--dtype", "float64", "--reference", str(REFERENCE),
                "--train-samples", "100", "--batch-size", "100", "--epochs", "1", "--lr", "1e-3",
                "--lr-drop-epochs", "0", "--c", "25", "--lmbda", "15", "--eval-samples", "100",
                "--epoch-eval-samples", "100", "--eval-max-iter", "10", "--seed", "3", "--no-progress",
                "--threads", str(THREADS)]
THREAD_ENV = {"OMP_NUM_THREADS": str(THREADS), "MKL_NUM_THREADS": str(THREADS)}

_NO_MKLDNN = ("import runpy, sys, torch; torch.backends.mkldnn.enabled = False; sys.argv = sys.argv[1:]; "
              "runpy.run_path(sys.argv[0], run_name='__main__')")


def run_finetune(argv: list[str], out: Path, env: dict[str, str] | None = None, mkldnn: bool = True,
                 timeout: int = 300) -> dict:
    """``train/finetune.py argv`` in a subprocess with its run directory in ``out/run`` and its reference cache in
    ``out/refs``, under ``env`` (added to this process's, after the fixed thread count); ``mkldnn=False`` runs it
    with ``torch.backends.mkldnn.enabled = False``. Returns ``metrics.json`` without wall times."""
    argv = [*argv, "--out", str(out / "run"), "--cache-dir", str(out / "refs")]
    script = str(ROOT / "train" / "finetune.py")
    cmd = [sys.executable, script, *argv] if mkldnn else [sys.executable, "-c", _NO_MKLDNN, script, *argv]
    proc = subprocess.run(cmd, cwd=out, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **THREAD_ENV, **(env or {})})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return strip_timings(json.loads((out / "run" / "metrics.json").read_text()))


def first_step_gradient_norm(run: Path, lr: float = 1e-3, weight_decay: float = 5e-4) -> float:
    """‖∇_w loss‖ of the float64 run's one SGD step, from its weights before (``REFERENCE``) and after
    (``run/final.pt``): the first step with momentum moves ``w`` by ``lr·(g + weight_decay·w)``."""
    before = torch.load(REFERENCE, weights_only=True)["state_dict"]
    after = torch.load(run / "final.pt", weights_only=True)["state_dict"]
    squares = 0.0
    for key, w0 in before.items():
        w0 = w0.double()
        g = (w0 - after[key].double()) / lr - weight_decay * w0
        squares += float((g * g).sum())
    return squares ** 0.5


def machine_key() -> dict[str, Any]:
    """What decides float32's last bits here: the CPU (vendor, family/model/stepping, a digest of its flags; the
    model name is generic on these machines), ATen's CPU capability, the torch build and the thread count of the
    regression runs."""
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("vendor_id", "cpu family", "model", "stepping", "flags") and key not in info:
                info[key] = value.strip()
    except OSError:
        pass
    flags = " ".join(sorted(info.get("flags", "").split()))
    return {
        "machine": platform.machine(),
        "vendor_id": info.get("vendor_id"),
        "family_model_stepping": f"{info.get('cpu family')}/{info.get('model')}/{info.get('stepping')}",
        "cpu_flags_sha1": hashlib.sha1(flags.encode()).hexdigest()[:12],
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "threads": THREADS,
    }
