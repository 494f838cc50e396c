"""Helpers for the scripts in train/: run directories, atomic JSON files, seeds, devices. Not part of revnet."""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch


from revnet_app.train import distributed  # noqa: E402
from revnet_app import models  # noqa: E402
from revnet_app.models.checkpoint import write_error  # noqa: E402


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" only where the help does not already say its default, and not for ``None``/``False``
    defaults (flags, or defaults the help text describes)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        if "default" in help_text.lower() or action.default is None or action.default is False or action.default is argparse.SUPPRESS:
            return help_text
        return super()._get_help_string(action)


def add_eval_subset_flags(p: argparse.ArgumentParser) -> None:
    """``--eval-samples``, ``--eval-subset`` and ``--eval-subset-seed`` (finetune.py and evaluate.py)."""
    p.add_argument("--eval-samples", type=int, default=0,
                   help="evaluate on N test images (0: all): the first N, or with --eval-subset balanced a fixed, "
                        "seeded, class-balanced N")
    p.add_argument("--eval-subset", default="first", choices=("first", "balanced"),
                   help="which --eval-samples images: the first N of the test set (the committed tables), or N "
                        "chosen class-balanced with --eval-subset-seed (ImageNet's 50,000 validation images)")
    p.add_argument("--eval-subset-seed", type=int, default=0, help="seed of --eval-subset balanced")


def prepare_dir(path: str | os.PathLike, flag: str) -> Path:
    """Create the output folder ``path`` (given with ``flag``, e.g. ``--out``) if needed, check that files can be
    written in it, and delete the temporary files that killed processes left there (and in its ``resume/``).
    A file in the way, a read-only folder or a full disk is a one-line ``SystemExit``."""
    path = Path(path)
    for p in [path, *path.parents]:
        if p.exists():
            if not p.is_dir():
                raise SystemExit(f"error: {flag} {path}: {p} is a file, not a folder; choose another {flag}.")
            break
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".write-test.pid{os.getpid()}.", suffix=".tmp", dir=path)
        try:
            os.write(fd, b"x")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        raise SystemExit(f"error: {flag} {path} is not writable ({exc.strerror or exc}); choose a writable folder "
                         "or free some space.") from None
    for folder in (path, path / "resume"):
        for removed in models.clean_stale_temp(folder):
            print(f"removed a temporary file of a killed process: {removed}", file=sys.stderr)
    return path


def resolve_device(name: str | None) -> torch.device:
    """``None``/``"auto"``: CUDA when available, else CPU. An unavailable CUDA is a clear error."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"error: --device {name} but CUDA is not available here; use --device cpu.")
    return device


def say(*args: Any, **kwargs: Any) -> None:
    """``print`` (flushed) on rank 0 only: under ``torchrun`` every process would print the same line."""
    if distributed.current().main:
        kwargs.setdefault("flush", True)
        print(*args, **kwargs)


def one_line(exc: BaseException) -> str:
    """An exception as one line for an ``error:`` message: its text with whitespace folded (its class name if
    it has no text)."""
    text = " ".join(str(exc).split())
    return text or exc.__class__.__name__


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` atomically (``models.write_atomic``: mode 0644 under umask 022; a failure is a one-line
    ``models.WriteError`` and leaves the previous file intact)."""
    models.write_atomic(path, lambda f: f.write(text), binary=False)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def append_jsonl(path: str | os.PathLike, obj: Any) -> None:
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(obj, sort_keys=True, default=str) + "\n")
    except OSError as exc:
        raise write_error(Path(path), exc) from exc


def git_commit(short: bool = False) -> str:
    """The checkout's commit (``short``: abbreviated), ``+dirty`` with uncommitted changes; ``unknown`` outside git."""
    try:
        root = Path(__file__).resolve().parents[1]
        out = subprocess.run(["git", "-C", str(root), "rev-parse", *(["--short"] if short else []), "HEAD"],
                             capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment() -> dict[str, Any]:
    """What a run depended on: commit, versions, machine, threads."""
    import torchvision

    return {
        "git_commit": git_commit(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "platform": platform.platform(),
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }


def format_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    """A Markdown table: ``columns`` is ``[(key, header), ...]``; floats get 4 significant digits."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(h for _, h in columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    lines += ["| " + " | ".join(cell(r.get(k)) for k, _ in columns) + " |" for r in rows]
    return "\n".join(lines)


