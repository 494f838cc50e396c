"""``benchmarks/gpu.sh --quick``: the GPU script's commands on the CPU with tiny budgets, so it cannot rot.

Time budget: ≤ 120 s here, 66 s measured (one LeNet reference epoch, two variants, one interleaved round; two
DeepFool engines, revnet with 3 classes per reverse and foolbox on 8 images of LeNet and the random ConvNet, with
their profile; three 1-epoch LeNet fine-tunes on 200 images: one process and torchrun with gloo, the "CPU run"
being the first, and their comparison).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _report(folder: Path) -> Path:
    """deepfool.py's report in ``folder`` (deepfool[-cuda][-amp].md, not its -profile.md)."""
    return next(f for f in sorted(folder.glob("deepfool*.md")) if not f.name.endswith("-profile.md"))


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
        deepfool = _report(out / f"deepfool-b4-{tag}").read_text()
        assert deepfool.startswith("#") and "| lenet | foolbox |" in deepfool
    fp32 = _report(out / "deepfool-b4-fp32").read_text()
    assert "| convnet-cifar | foolbox |" in fp32 and "| lenet | revnet/chunk3 |" in fp32
    assert "Name" in next((out / "deepfool-b4-fp32").glob("*-profile.md")).read_text()
    for report, policy in (("finetune-torchrun-vs-device.md", "roundoff"), ("finetune-device-vs-cpu.md", "kernels")):
        text = (out / report).read_text()
        assert f"every metric within the {policy} tolerance" in text and "OUT OF TOLERANCE" not in text, text
    config = json.loads((out / "finetune-torchrun" / "config.json").read_text())
    assert config["world_size"] == 1


def test_compare_runs_names_the_metric_out_of_tolerance(tmp_path):
    """tests/compare_runs.py on two runs whose metrics differ: exit 1 and the metric named with both values."""
    import torch

    for name, acc in (("a", 0.80), ("b", 0.70)):
        run = tmp_path / name
        run.mkdir()
        row = {"n": 50, "acc": acc, "rho2": 0.1, "fooling_rate": 1.0}
        (run / "metrics.json").write_text(json.dumps({"reference": row, "finetuned": row, "eps_ref": 0.05,
                                                      "history": [{"train_acc": 0.9, "train_loss": 1.0}]}))
        torch.save({"state_dict": {"w": torch.zeros(3)}}, run / "final.pt")
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "compare_runs.py"), str(tmp_path / "a"),
                           str(tmp_path / "b"), "--policy", "kernels"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "OUT OF TOLERANCE" in proc.stdout and "0.7" in proc.stdout, proc.stdout
