"""Step time measured side by side in one process, and the memory bandwidth a plain stream
reaches on buffers of the same size."""

from __future__ import annotations

import gc
import statistics
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch

from . import optimizers, sets
from .groups import Group, apply
from .timing import Timer, timer_for

WARMUP = 2
# The suffix of a call timed under the baseline layout (``step_times``).
BASELINE = " @baseline"
# a = b + s·c reads b and c and writes a.
TRIAD_TENSORS = 3


@dataclass(frozen=True)
class Timing:
    median_ms: float
    iqr_ms: float


def summarize(seconds: Sequence[float]) -> Timing:
    """Median and interquartile range, in ms."""
    q = statistics.quantiles(seconds, n=4) if len(seconds) > 1 else [seconds[0]] * 3
    return Timing(statistics.median(seconds) * 1e3, (q[2] - q[0]) * 1e3)


def interleaved(calls: dict[str, Callable[[], Any]], timer: Timer, rounds: int, per_round: int) -> dict[str, Timing]:
    """Each call's time: after ``WARMUP`` untimed calls each (state, compiled kernels), every
    round times each call ``per_round`` times and keeps the median; the order rotates between
    rounds, so drift in the machine's speed hits every call alike. Median and IQR over rounds."""
    for fn in calls.values():
        for _ in range(WARMUP):
            fn()
    names = list(calls)
    per_name: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        first = r % len(names)
        for name in names[first:] + names[:first]:
            per_name[name].append(statistics.median([timer.seconds(calls[name]) for _ in range(per_round)]))
    return {name: summarize(ts) for name, ts in per_name.items()}


def step_times(optimizer: str, impls: Sequence[str], params: list[torch.nn.Parameter], layout: Sequence[Group],
               timer: Timer, rounds: int, per_round: int,
               baseline: Optional[Sequence[Group]] = None) -> tuple[dict[str, Timing], dict[str, Timing]]:
    """The step time of each implementation, each on its own copy of ``params`` and grads,
    grouped as ``layout``; with ``baseline`` (another layout), also each implementation's time
    grouped as that, in the same rounds, so that the ratio of the two does not carry the
    machine's drift between cases (the second dict; empty without ``baseline``)."""
    layouts = {"": layout, **({BASELINE: baseline} if baseline is not None else {})}
    calls = {impl + tag: optimizers.build(optimizer, impl, apply(groups, sets.clone(params))).step
             for tag, groups in layouts.items() for impl in impls}
    times = interleaved(calls, timer, rounds, per_round)
    return ({impl: times[impl] for impl in impls},
            {impl: times[impl + BASELINE] for impl in impls if impl + BASELINE in times})


def triad(elements: int, device: str, dtype: torch.dtype, timer: Timer, rounds: int, per_round: int) -> Timing:
    """Time of ``a = b + s·c`` on buffers of ``elements``: the bandwidth a plain stream reaches."""
    b, c = (torch.randn(elements, device=device, dtype=dtype) for _ in range(2))
    a = torch.empty_like(b)
    return interleaved({"triad": lambda: torch.add(b, c, alpha=0.5, out=a)}, timer, rounds, per_round)["triad"]


def gb_per_s(bytes_per_step: int, median_ms: float) -> float:
    """Achieved bandwidth in GB/s (10⁹ bytes) of moving ``bytes_per_step`` in ``median_ms``."""
    return bytes_per_step / median_ms / 1e6


def variant_rows(set_names: Sequence[str], optimizer_names: Sequence[str], device: torch.device,
                 calls: Callable[[str, list[torch.nn.Parameter]], tuple[dict[str, Callable[[], Any]], Any]],
                 baseline: Callable[[dict[str, Timing]], float], rounds: int, per_round: int,
                 plan_key: str, ratio_key: str) -> list[dict[str, Any]]:
    """Per set and optimizer, the steps ``calls(optimizer, params)`` gives (with what they were
    planned as, kept under ``plan_key``) timed interleaved: each one's median and IQR, and its
    ratio to ``baseline(timings)`` under ``ratio_key``; each row printed as it is done."""
    rows = []
    for set_name in set_names:
        params = sets.parameters(sets.build(set_name), str(device), torch.float32)
        for optimizer in optimizer_names:
            steps, plans = calls(optimizer, params)
            timings = interleaved(steps, timer_for(str(device)), rounds, per_round)
            theirs = baseline(timings)
            rows.append({"set": set_name, "optimizer": optimizer, "tensors": len(params), plan_key: plans,
                         "median_ms": {k: t.median_ms for k, t in timings.items()},
                         "iqr_ms": {k: t.iqr_ms for k, t in timings.items()},
                         ratio_key: {k: t.median_ms / theirs for k, t in timings.items()}})
            print(f"{set_name:13} {optimizer:6}" + "".join(f" | {k} {v:.3f}" for k, v in rows[-1][ratio_key].items())
                  + f"   ({ratio_key}, {theirs:.3f} ms)", flush=True)
            del steps
            gc.collect()
    return rows
