"""Interleaved timing: every candidate runs once per round, in alternating order (A B C, C B A, ...), in one
process, so the ratios between them compare runs seconds apart on the same machine state (the other load on a
shared CPU, the allocator, the thread pool), and drift and the position within a round cancel. On this 2-core
CPU separate runs of one configuration move its median by 10-25%; per-round ratios move much less.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable, Optional

import torch

MIN_ROUNDS = 3


def _sync(device: Optional[torch.device]) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(fns: dict[str, Callable[[], object]], *, rounds: int, budget_s: float, warmup: int = 1,
                device: Optional[torch.device] = None,
                setup: Optional[dict[str, Callable[[], object]]] = None,
                min_rounds: int = MIN_ROUNDS) -> dict[str, list[float]]:
    """Seconds per call of every function in ``fns``: ``warmup`` untimed calls each, then up to ``rounds``
    rounds (fewer once ``budget_s`` seconds have passed, but at least ``min(min_rounds, rounds)``); round ``i``
    calls them in the given order for even ``i``, reversed for odd ``i``. ``setup[name]`` (e.g. restoring the
    weights) runs before each call of ``fns[name]``, outside the timed region; CUDA is synchronised around it."""
    setup = setup or {}
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            setup.get(name, lambda: None)()
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    start = time.perf_counter()
    for i in range(rounds):
        for name in (names if i % 2 == 0 else names[::-1]):
            setup.get(name, lambda: None)()
            _sync(device)
            t0 = time.perf_counter()
            fns[name]()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
        if i + 1 >= min(min_rounds, rounds) and time.perf_counter() - start > budget_s:
            break
    return times


def spread(values: list[float]) -> dict[str, float]:
    """Median, quartiles, min and max of per-round values (e.g. ratios)."""
    if len(values) == 1:
        q1 = q3 = values[0]
    else:
        q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return {"median": statistics.median(values), "q25": q1, "q75": q3, "min": min(values), "max": max(values),
            "n": len(values)}


def round_ratios(times: dict[str, list[float]], numerator: str, denominator: str) -> dict[str, float]:
    """:func:`spread` of ``times[numerator][i] / times[denominator][i]`` over the rounds."""
    return spread([a / b for a, b in zip(times[numerator], times[denominator])])
