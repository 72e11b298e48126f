"""One benchmark run: every optimizer × parameter set × param-group layout × implementation on
one device and dtype, as rows with ratios against torch and achieved bandwidth, plus one triad
per set."""

from __future__ import annotations

import contextlib
import gc
import os
import platform
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

import torch_gd

from . import groups, isolated, measure, optimizers, sets
from .optimizers import COMPILED, IMPLS, OPTIMIZERS, TORCH, TORCH_EAGER
from .progress import Progress, progress
from .timing import timer_for

CASE_KEYS = ("optimizer", "set", "groups", "impl", "device", "dtype")


@dataclass(frozen=True)
class Config:
    """What a run measures, where, and how many times."""

    optimizers: Sequence[str] = tuple(OPTIMIZERS)
    sets: Sequence[str] = sets.DEFAULT
    impls: Sequence[str] = tuple(IMPLS)
    groups: Sequence[str] = ("one",)
    device: str = "cpu"
    dtype: str = "fp32"
    rounds: int = 7
    steps_per_round: int = 3
    memory: bool = True
    compile_time: bool = True
    # Time each layout other than ``one`` beside the same implementations with one group, in
    # the same rounds (``one_group_ms``): twice the optimizers in memory, a drift-free ratio.
    paired_one: bool = False
    # CPU step times as wall time, or as the process's CPU time ("cpu": for a shared machine).
    timer: str = "wall"


def run(config: Config, command: str = "", make_progress: Callable[[int], Progress] = progress) -> dict[str, Any]:
    """Measure ``config``. Returns ``meta`` (versions, machine, ``command``, what was skipped),
    ``rows`` (one per optimizer × set × param-group layout × implementation) and ``triad`` (one
    per set)."""
    missing = {opt: _missing(opt, config) for opt in config.optimizers}
    notes = [f"skipped {impl} for {opt}: {why}" for opt, m in missing.items() for impl, why in m.items()
             if impl in config.impls]
    notes += _busy()
    print(*notes, sep="\n", end="\n" if notes else "")
    impls = {opt: [i for i in config.impls if i not in missing[opt]] for opt in config.optimizers}
    per_set = 1 + len(config.groups) * (len(config.optimizers) + sum(
        config.memory + (config.compile_time and i in COMPILED) for v in impls.values() for i in v))
    bar = make_progress(len(config.sets) * per_set)
    try:
        rows, triads = _timed(config, impls, bar)
        _isolated(rows, config, bar, notes)
    finally:
        bar.close()
    _add_ratios(rows, {opt: [i for i in TORCH if i not in missing[opt]] for opt in config.optimizers})
    _add_bandwidth_fractions([*rows, *triads])
    return {"meta": meta(config, command, notes), "rows": rows, "triad": triads}


def _load() -> Optional[float]:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def _busy() -> list[str]:
    """A warning if other work loads the machine: threads that wait for a core make every
    parallel op slow, and the ratios mean little."""
    load, cpus = _load(), os.cpu_count() or 1
    return [] if load is None or load <= cpus / 2 else [
        f"machine busy: load average {load:.1f} on {cpus} CPUs; timings unreliable"]


def _missing(optimizer: str, config: Config) -> dict[str, str]:
    """torch's implementations of ``optimizer`` that cannot run on this device and dtype, and why."""
    dtype = sets.DTYPES[config.dtype]
    why = {impl: optimizers.unavailable(optimizer, impl, config.device, dtype) for impl in TORCH}
    return {impl: reason for impl, reason in why.items() if reason is not None}


def _timed(config: Config, impls: dict[str, list[str]], bar: Progress) -> tuple[list[dict], list[dict]]:
    """Step times of every case and a triad per set, building each set once."""
    timer, dtype = timer_for(config.device, config.timer), sets.DTYPES[config.dtype]
    rows, triads = [], []
    for set_name in config.sets:
        names, params = sets.named_parameters(set_name, config.device, dtype)
        size = {"set": set_name, "tensors": len(params), "elements": sum(p.numel() for p in params),
                "param_mb": sum(p.numel() * p.element_size() for p in params) / 2**20}
        with bar.case(f"{set_name} triad"):
            t = measure.triad(size["elements"], config.device, dtype, timer, config.rounds, config.steps_per_round)
        triads.append(_with_bandwidth({**size, "median_ms": t.median_ms, "iqr_ms": t.iqr_ms},
                                      measure.TRIAD_TENSORS * dtype.itemsize))
        for optimizer in config.optimizers:
            for kind in config.groups:
                layout = groups.layout(kind, optimizer, names, params)
                baseline = groups.layout("one", optimizer, names, params) if config.paired_one and kind != "one" else None
                with bar.case(f"{optimizer} {set_name} groups={kind} step time"):
                    timings, ones = measure.step_times(optimizer, impls[optimizer], params, layout, timer,
                                                       config.rounds, config.steps_per_round, baseline)
                grouped = {**size, "groups": kind, "param_groups": len(layout)}
                rows += [_row(optimizer, impl, grouped, t, config, ones.get(impl)) for impl, t in timings.items()]
                # The case's optimizers, torch's and ours, sit in reference cycles (torch's step
                # wrappers): free them now, not whenever the cycle collector next runs, or five
                # copies of GPT-2's state pile up on the previous set's (24 GB here, OOM-killed).
                gc.collect()
        del params
    rows.sort(key=lambda r: config.optimizers.index(r["optimizer"]))
    return rows, triads


def _with_bandwidth(row: dict[str, Any], bytes_per_element: int) -> dict[str, Any]:
    bytes_per_step = row["elements"] * bytes_per_element
    return {**row, "bytes_per_step": bytes_per_step, "gb_per_s": measure.gb_per_s(bytes_per_step, row["median_ms"]),
            "bandwidth_fraction": None}


def _row(optimizer: str, impl: str, case: dict[str, Any], t: measure.Timing, config: Config,
         one_group: Optional[measure.Timing] = None) -> dict[str, Any]:
    row = {"optimizer": optimizer, **case, "impl": impl, "device": config.device, "dtype": config.dtype,
           "median_ms": t.median_ms, "iqr_ms": t.iqr_ms, "vs_torch_best": None, "vs_torch_best_eager": None,
           "one_group_ms": None if one_group is None else one_group.median_ms}
    row = _with_bandwidth(row, optimizers.bytes_per_element(optimizer, sets.DTYPES[config.dtype]))
    return {**row, "peak_growth_mb": None, "first_step_s": None, "second_step_ms": None}


def _isolated(rows: list[dict], config: Config, bar: Progress, notes: list[str]) -> None:
    """Peak memory of every row and the cold first step of compiled ones, each in a fresh process
    (peak memory on CUDA in this one)."""
    for row in rows:
        if config.memory:
            _isolated_case(row, "peak memory", isolated.peak_memory, bar, notes)
        if config.compile_time and row["impl"] in COMPILED:
            _isolated_case(row, "cold first step", isolated.cold_first_step, bar, notes)


def _isolated_case(row: dict[str, Any], what: str, fn: Callable[[dict], dict], bar: Progress, notes: list[str]) -> None:
    # A failed child becomes a note rather than the end of a long run.
    with bar.case(f"{row['optimizer']} {row['set']} groups={row['groups']} {row['impl']} {what}"):
        try:
            row.update(fn({k: row[k] for k in CASE_KEYS}))
        except RuntimeError as e:
            notes.append(str(e))
            bar.note(notes[-1])


def _best(medians: dict[tuple, float], case: tuple, impls: Sequence[str]) -> Optional[float]:
    found = [medians.get((*case, i)) for i in impls]
    return min(found) if found and None not in found else None


def _add_ratios(rows: list[dict], torch_has: dict[str, list[str]]) -> None:
    """Each row's median over the median of torch's best implementation and of its faster eager
    one with the same param groups, from the same rows; None where the run did not measure all
    of those."""
    medians = {(r["optimizer"], r["set"], r["groups"], r["impl"]): r["median_ms"] for r in rows}
    for r in rows:
        case = (r["optimizer"], r["set"], r["groups"])
        for key, impls in (("vs_torch_best", torch_has[r["optimizer"]]), ("vs_torch_best_eager", TORCH_EAGER)):
            best = _best(medians, case, impls)
            r[key] = None if best is None else r["median_ms"] / best


def _add_bandwidth_fractions(rows: list[dict]) -> None:
    """Each row's bandwidth as a fraction of the best the run saw (a triad or any step)."""
    best = max(r["gb_per_s"] for r in rows)
    for r in rows:
        r["bandwidth_fraction"] = r["gb_per_s"] / best


def meta(config: Config, command: str, notes: list[str]) -> dict[str, Any]:
    """Where and how a run was measured, and how to reproduce it."""
    cuda = torch.device(config.device).type == "cuda"
    return {
        "torch_gd": torch_gd.__version__, "torch": torch.__version__, "python": platform.python_version(),
        "device": config.device, "device_name": torch.cuda.get_device_name(config.device) if cuda else _cpu_name(),
        "dtype": config.dtype, "threads": torch.get_num_threads(), "machine": platform.machine(),
        "platform": platform.platform(), "command": command, "rounds": config.rounds,
        "steps_per_round": config.steps_per_round, "timer": config.timer,
        "hyperparameters": {opt: OPTIMIZERS[opt].kwargs for opt in config.optimizers},
        "load_average": _load(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "notes": notes,
    }


def _cpu_name() -> str:
    # platform.processor() is empty on most Linux systems.
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor()
