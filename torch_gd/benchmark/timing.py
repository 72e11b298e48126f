"""Timers: how long one call takes on a device, behind one interface so the loops that use them
are the same on the CPU and on CUDA."""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Protocol

import torch


class Timer(Protocol):
    def seconds(self, fn: Callable[[], Any]) -> float:
        """Seconds ``fn()`` takes."""


class WallTimer:
    """Host wall time: on the CPU every op has finished when the call returns."""

    def seconds(self, fn: Callable[[], Any]) -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start


class CpuTimer:
    """CPU time of this process (all its threads): on a shared machine another process's load
    does not count against the call, as it does in wall time (descheduled time). It still
    counts what OpenMP's worker threads spend, spinning included, and cache and bandwidth
    contention still slow the call."""

    def seconds(self, fn: Callable[[], Any]) -> float:
        start = time.process_time()
        fn()
        return time.process_time() - start


class EventTimer:
    """Device time between two CUDA events around the call.

    ``event`` and ``synchronize`` default to torch.cuda's; tests substitute fakes, which is why
    they are parameters.
    """

    def __init__(self, event: Callable[..., Any] = torch.cuda.Event,
                 synchronize: Callable[[], None] = torch.cuda.synchronize) -> None:
        self.event = event
        self.synchronize = synchronize

    def seconds(self, fn: Callable[[], Any]) -> float:
        start, end = self.event(enable_timing=True), self.event(enable_timing=True)
        # Start from an idle device, so earlier queued work does not count against this call.
        self.synchronize()
        start.record()
        fn()
        end.record()
        self.synchronize()
        return start.elapsed_time(end) / 1e3


TIMERS = ("wall", "cpu")


def timer_for(device: str, kind: str = "wall") -> Timer:
    """The timer that measures work on ``device`` ("cpu" or "cuda[:n]"): CUDA events there; on
    the CPU wall time, or with ``kind="cpu"`` the process's CPU time."""
    if torch.device(device).type == "cuda":
        return EventTimer()
    return CpuTimer() if kind == "cpu" else WallTimer()


def interleaved_medians(fns: dict[str, Callable[[], Any]], rounds: int, steps: int, timer: Timer) -> dict[str, float]:
    """Each function's median time in seconds over ``rounds`` rounds, the functions taking turns
    within each round (so that drift on a shared machine hits them alike), each round's time
    the fastest of ``steps`` calls. Every function is called twice first: compiling,
    allocating state and faulting pages in are not timed."""
    for fn in fns.values():
        fn(), fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for key, fn in fns.items():
            times[key].append(min(timer.seconds(fn) for _ in range(steps)))
    return {k: statistics.median(v) for k, v in times.items()}
