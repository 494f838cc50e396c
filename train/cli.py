"""Command-line pieces the scripts share: finite float flags and device names."""

from __future__ import annotations

import argparse
import math

import torch


def finite_float(text: str) -> float:
    """argparse ``type`` of every float flag: NaN and ±inf (also overflowing literals such as 1e999) are refused
    here, so argparse names the flag in its one-line error; the ranges are checked after parsing."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def valid_devices() -> list[str]:
    """The ``--device`` values that work on this machine."""
    names = ["auto", "cpu"]
    if torch.cuda.is_available():
        names += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return names


def check_device(name: str | None, parser: argparse.ArgumentParser) -> None:
    """``parser.error`` (one line listing the valid devices) unless ``name`` is None or in :func:`valid_devices`."""
    if name is None or name in valid_devices():
        return
    hint = "" if torch.cuda.is_available() else " (CUDA is not available here)"
    parser.error(f"--device {name!r} is not a valid device; choose one of: {', '.join(valid_devices())}{hint}")


DEVICE_HELP = "cpu, cuda or cuda:N (default: cuda if available)"


def add_device_flag(parser: argparse.ArgumentParser, help: str = DEVICE_HELP) -> None:
    """``--device`` (checked with :func:`check_device` after parsing), the same flag in every script."""
    parser.add_argument("--device", default=None, help=help)
