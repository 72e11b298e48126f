"""Where a steady fused step's host time goes, on the CPU: the step as it runs, the step with
its kernels replaced by no-ops (the host work alone), and the time spent in each phase of the
replayed step, both ways.

``host_time.py`` takes host time as a step minus its kernels called alone; on resnet50 that is
the difference of two ~6-10 ms medians. This script looks inside instead. It wraps the
engine's private functions by name (``Program.grads`` and ``Lane.grads``: the checks;
``Engine._run_whole``: a packed bucket's copies, checks and kernel; ``Lane.run``: the large
params' kernels; ``_gather``: the bucket's grad gather; ``Scatter.valid``: its address checks),
so it follows the engine's internals and fails loudly where they change. A phase's time is
its median over rounds of one step each.

    python benchmarks/host_phases.py                       # resnet50; AdamW and SGD; 31 rounds
    python benchmarks/host_phases.py --sets lenet --rounds 3 --json /tmp/phases.json
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import torch

from torch_gd import _engine, _fused, _lane, _scatter, _steady
from torch_gd.benchmark import report, sets
from torch_gd.benchmark.optimizers import build

RESULTS = Path(__file__).parent / "results"
# (owner, name, phase): each phase's functions, timed inclusively.
PHASES = [
    (_steady.Program, "grads", "checks"),
    (_lane.Lane, "grads", "checks"),
    (_engine.Engine, "_run_whole", "buckets"),
    (_engine, "_gather", "bucket grad gather"),
    (_scatter.Scatter, "valid", "bucket address checks"),
    (_lane.Lane, "run", "lane"),
]


@contextlib.contextmanager
def _timed(spent: collections.Counter) -> Iterator[None]:
    """Every phase's functions wrapped to add their time to ``spent``."""
    saved = [(owner, name, owner.__dict__[name]) for owner, name, _ in PHASES]

    def wrap(fn: Callable[..., Any], phase: str) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[phase] += time.perf_counter() - start
        return timed

    try:
        for (owner, name, phase), (_, _, fn) in zip(PHASES, saved):
            setattr(owner, name, wrap(fn, phase))
        yield
    finally:
        for owner, name, fn in saved:
            setattr(owner, name, fn)


@contextlib.contextmanager
def _no_kernels() -> Iterator[None]:
    """Prepared kernel calls that do nothing (``run_call``: the lane's and the buckets')."""
    real = _fused.run_call
    _fused.run_call = _lane.run_call = lambda call, g: None
    try:
        yield
    finally:
        _fused.run_call = _lane.run_call = real


def one(set_name: str, optimizer: str, rounds: int) -> dict[str, Any]:
    params = sets.parameters(sets.build(set_name), "cpu", torch.float32)
    opt = build(optimizer, "torch_gd fused", sets.clone(params))
    for _ in range(3):  # the steady state: recorded, prepared, the lane built
        opt.step()
    times: dict[str, dict[str, list[float]]] = {"kernels run": collections.defaultdict(list),
                                                 "kernels stubbed": collections.defaultdict(list)}
    for _ in range(rounds):
        for mode, kernels in (("kernels run", contextlib.nullcontext()), ("kernels stubbed", _no_kernels())):
            spent: collections.Counter = collections.Counter()
            with kernels, _timed(spent):
                start = time.perf_counter()
                opt.step()
                spent["step"] = time.perf_counter() - start
            for phase in ("step", *dict.fromkeys(p for _, _, p in PHASES)):
                times[mode][phase].append(spent[phase])
    return {"set": set_name, "optimizer": optimizer, "tensors": len(params), "rounds": rounds,
            **{mode: {phase: statistics.median(v) * 1e6 for phase, v in by.items()} for mode, by in times.items()}}


def main(argv: Optional[Sequence[str]] = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", nargs="+", type=sets.check, default=["resnet50"])
    ap.add_argument("--optimizers", nargs="+", choices=["Adam", "AdamW", "SGD", "Adagrad", "RMSprop"],
                    default=["AdamW", "SGD"])
    ap.add_argument("--rounds", type=int, default=31)
    ap.add_argument("--json", type=Path, default=RESULTS / "host_phases_cpu.json")
    args = ap.parse_args(argv)
    rows = []
    for set_name in args.sets:
        for optimizer in args.optimizers:
            row = one(set_name, optimizer, args.rounds)
            rows.append(row)
            for mode in ("kernels run", "kernels stubbed"):
                print(f"{set_name:12} {optimizer:8} {mode:16}"
                      + "".join(f"  {phase} {us:9.1f}" for phase, us in row[mode].items()) + "   (µs)", flush=True)
    report.write_record(args.json, "host_phases.py", argv, rows)
    return rows


if __name__ == "__main__":
    main()
