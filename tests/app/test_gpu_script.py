"""``benchmarks/gpu.sh --quick``: the GPU script's commands on the CPU with tiny budgets, so it cannot rot.

Time budget: ≤ 60 s here (one LeNet reference epoch, two variants, one interleaved round, two DeepFool engines
and foolbox on 20 images).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_gpu_script_runs_quick_on_the_cpu_and_writes_every_result(tmp_path):
    env = {**os.environ, "RESULTS": str(tmp_path / "gpu"), "CACHE": str(tmp_path / "refs"), "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--quick"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    out = tmp_path / "gpu"
    assert "0 command(s) failed" in (out / "gpu.log").read_text()
    for tag in ("fp32", "bf16"):
        step = json.loads(next((out / f"step-{tag}").glob("step*.json")).read_text())
        assert step, tag
        deepfool = next((out / f"deepfool-b10-{tag}").glob("deepfool*.md")).read_text()
        assert deepfool.startswith("#") and "| lenet | foolbox |" in deepfool
