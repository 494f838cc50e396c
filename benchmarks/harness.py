"""The measuring half of the benchmarks: the machine and environment record, peak memory (CUDA allocator or the
process's resident set, /proc), timing summaries, autocast, a profile of one step, and atomic writes of the results.
Shared by ``step.py``, ``deepfool.py``, ``amp.py`` and ``conv_kernels.py``."""

from __future__ import annotations

import gc
import math
import os
import platform
import statistics
import sys
from pathlib import Path
from typing import Any, Optional

import torch

from revnet_app.train.utils import git_commit as _git_commit

ROOT = Path(__file__).resolve().parents[1]
MiB = 2**20


def git_commit() -> str:
    """The short commit of the checkout (``+dirty`` with uncommitted changes), as the results record it."""
    return _git_commit(short=True)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(device: torch.device, threads: int) -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": threads,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
        "cuda": torch.version.cuda,
        "git_commit": git_commit(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def quartiles(values: list[float]) -> tuple[float, float]:
    """The lower and upper quartile (inclusive method; both the value itself for one value)."""
    if len(values) == 1:
        return values[0], values[0]
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q3


def summarize(times: list[float]) -> dict[str, Any]:
    """Median, quartiles and IQR (seconds) of repeated timings."""
    q1, q3 = quartiles(times)
    return {"median_s": statistics.median(times), "q25_s": q1, "q75_s": q3, "iqr_s": q3 - q1,
            "min_s": min(times), "repeats": len(times), "times_s": times}


def _proc_status_kib(key: str) -> Optional[int]:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def release_free_memory() -> None:
    """Collect garbage and return the C heap's free pages to the OS (glibc ``malloc_trim``, where available)."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak memory above the baseline at ``start()``: CUDA allocator peak, or CPU peak RSS (VmHWM, reset via
    ``/proc/self/clear_refs``) minus the RSS at ``start()``."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.method, self.base = device, "", 0

    def start(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            self.method = "torch.cuda.max_memory_allocated - memory_allocated before the first step"
            return
        rss = _proc_status_kib("VmRSS")
        if rss is None:  # no /proc: ru_maxrss cannot be reset, so the figure includes the imports
            self.base, self.method = 0, "ru_maxrss (includes import overhead: no /proc here)"
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            self.method = "VmHWM (reset before the first step) - VmRSS before the first step"
        except OSError:
            self.method = "VmHWM - VmRSS before the first step (VmHWM could not be reset: may include imports)"
        self.base = rss * 1024

    def peak_bytes(self) -> int:
        if self.device.type == "cuda":
            synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) - self.base
        hwm = _proc_status_kib("VmHWM")
        if hwm is None:
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return max(0, hwm * 1024 - self.base)


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def amp_context(device: torch.device, amp_dtype: Optional[str]):
    """A factory of autocast contexts, or ``None`` without mixed precision."""
    if amp_dtype is None:
        return None
    dtype = getattr(torch, amp_dtype)
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def profile_step(one_step, restore, device: torch.device) -> str:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    restore()
    with profile(activities=activities, profile_memory=True) as prof:
        one_step()
        synchronize(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    memory = "self_cuda_memory_usage" if device.type == "cuda" else "self_cpu_memory_usage"
    averages = prof.key_averages()
    return (f"By time:\n\n{averages.table(sort_by=key, row_limit=15)}\n\nBy memory the operator itself allocates "
            f"and does not free (what stays alive for the reverse and the backward):\n\n"
            f"{averages.table(sort_by=memory, row_limit=15)}")

