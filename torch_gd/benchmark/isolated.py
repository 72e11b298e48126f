"""Measurements that need a process of their own: the peak memory of a step on the CPU, and
the cold first step of a compiled implementation.

A case is a dict of ``optimizer``, ``set``, ``groups`` (a param-group layout, built here as in
the timed run), ``impl``, ``device`` and ``dtype`` (a key of ``sets.DTYPES``). The parent runs
``python -m torch_gd.benchmark._child TASK CASE`` with its own ``sys.path``, so the child
imports the same torch_gd and finds a user's set; the child prints its result as one JSON
line.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Protocol

import torch

from . import groups, optimizers, sets
from .timing import timer_for

STEPS = 3


class PeakMemory(Protocol):
    def reset(self) -> None:
        """Make the current memory the baseline."""

    def growth(self) -> int:
        """Bytes the peak has grown over the baseline."""


def _peak_rss() -> int:
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        # Not Linux: ru_maxrss is in bytes on macOS, in KiB elsewhere.
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss if sys.platform == "darwin" else rss * 1024
    return int(re.search(r"VmHWM:\s*(\d+) kB", status)[1]) * 1024


class RssPeak:
    """Peak resident memory of this process (the CPU allocator keeps no counters). On Linux the
    high-water mark is reset first, so what imports and compiles allocated and freed before does
    not hide the growth; elsewhere the baseline is the peak since the process started."""

    def reset(self) -> None:
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")
        self.base = _peak_rss()

    def growth(self) -> int:
        return _peak_rss() - self.base


class CudaPeak:
    """Peak of the CUDA caching allocator's allocated bytes."""

    def reset(self) -> None:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        self.base = torch.cuda.memory_allocated()

    def growth(self) -> int:
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - self.base


def param_groups(case: dict[str, Any]) -> list[dict[str, Any]]:
    """The case's params on its device and dtype, in its param groups, as the timed run builds
    them."""
    names, params = sets.named_parameters(case["set"], case["device"], sets.DTYPES[case["dtype"]])
    return groups.apply(groups.layout(case["groups"], case["optimizer"], names, params), params)


def measure_peak(case: dict[str, Any], probe: PeakMemory) -> dict[str, float]:
    """Growth of the peak memory over params and grads while building the optimizer and taking
    3 steps (state, temporaries, scratch), in MB."""
    optimizers.rehearse(case["optimizer"], case["impl"], case["device"], sets.DTYPES[case["dtype"]])
    grouped = param_groups(case)
    probe.reset()
    opt = optimizers.build(case["optimizer"], case["impl"], grouped)
    for _ in range(STEPS):
        opt.step()
    return {"peak_growth_mb": probe.growth() / 2**20}


def first_steps(case: dict[str, Any]) -> dict[str, float]:
    """The first step's seconds (compiles, if the implementation does) and the second's ms."""
    opt = optimizers.build(case["optimizer"], case["impl"], param_groups(case))
    timer = timer_for(case["device"])
    first = timer.seconds(opt.step)
    return {"first_step_s": first, "second_step_ms": timer.seconds(opt.step) * 1e3}


TASKS: dict[str, Callable[[dict[str, Any]], dict[str, float]]] = {
    "peak_memory": lambda case: measure_peak(case, RssPeak()),
    "first_steps": first_steps,
}


def _spawn(task: str, case: dict[str, Any], **env: str) -> dict[str, float]:
    path = os.pathsep.join(p or os.getcwd() for p in sys.path)
    done = subprocess.run([sys.executable, "-m", "torch_gd.benchmark._child", task, json.dumps(case)],
                          env={**os.environ, **env, "PYTHONPATH": path}, capture_output=True, text=True)
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"{task} of {case} failed: {last}")
    return json.loads(done.stdout.splitlines()[-1])


def peak_memory(case: dict[str, Any]) -> dict[str, float]:
    """:func:`measure_peak` for ``case``: on the CPU in a fresh process, on CUDA in this one."""
    if torch.device(case["device"]).type == "cuda":
        return measure_peak(case, CudaPeak())
    return _spawn("peak_memory", case)


def cold_first_step(case: dict[str, Any]) -> dict[str, float]:
    """:func:`first_steps` for ``case`` in a fresh process with empty compile caches."""
    with tempfile.TemporaryDirectory() as cache:
        return _spawn("first_steps", case, TORCHINDUCTOR_CACHE_DIR=cache,
                      TRITON_CACHE_DIR=os.path.join(cache, "triton"))
