"""The experiment code is the namespaced package ``revnet_app`` (``train/``, ``models/`` and ``benchmarks/``
mapped by ``setup.py``): it imports from any folder without ``sys.path`` edits, and a user's own ``models.py`` or
``train.py`` in the current folder changes nothing (time budget: ≤ 30 s)."""

from __future__ import annotations

import importlib.util
import io
import subprocess
import sys
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BOOBY_TRAP = "raise RuntimeError('the user module {name} was imported instead of revnet_app')\n"


def _user_folder(tmp_path: Path) -> Path:
    for name in ("models", "train", "data", "utils", "engine", "benchmarks"):
        (tmp_path / f"{name}.py").write_text(BOOBY_TRAP.format(name=name))
    return tmp_path


def test_the_experiment_package_imports_from_a_folder_with_users_own_models_and_train(tmp_path):
    folder = _user_folder(tmp_path)
    code = ("import revnet_app.train.finetune, revnet_app.train.evaluate, revnet_app.models, "
            "revnet_app.benchmarks.step, revnet_app.benchmarks.timm_coverage; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], cwd=folder, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_the_first_command_runs_from_any_folder(tmp_path):
    folder = _user_folder(tmp_path)
    out = subprocess.run([sys.executable, str(ROOT / "train" / "finetune.py"), "--help"], cwd=folder,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "--method" in out.stdout, out.stderr[-2000:]


def test_the_distribution_claims_no_generic_top_level_names(tmp_path):
    code = ("import importlib.util as u; print([n for n in ('models', 'train', 'benchmarks', 'data') "
            "if u.find_spec(n) is not None])")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
    assert importlib.util.find_spec("revnet_app.train") is not None


def test_no_python_file_edits_sys_path():
    tracked = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    offenders = []
    for name in tracked:
        source = (ROOT / name).read_text()
        tokens = tokenize.generate_tokens(io.StringIO(source).readline)
        code = " ".join(t.string for t in tokens if t.type not in (tokenize.COMMENT, tokenize.STRING))
        if "sys . path" in code.replace(".", " . ") or "sys.path" in code:
            offenders.append(name)
    assert offenders == []
