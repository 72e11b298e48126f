"""Where the default (eager, packed) path's cost of a group per tensor goes, on the CPU.

Each optimizer runs a set's params as one group and as a group per tensor, with its rule as
it is and with the rule replaced by a no-op: with the no-op, a step is the engine's host work
alone (checks, bookkeeping, the buckets' copies), so the difference between the layouts
splits into host work per group and the rule's own ops. All four are timed in the same
rounds, interleaved, the order rotating; medians over rounds.

    python benchmarks/eager_groups.py                      # resnet50 and vit_b_16; AdamW and SGD; 21 rounds
    python benchmarks/eager_groups.py --sets lenet --optimizers SGD --rounds 3 --json /tmp/eager_groups.json
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from torch_gd.benchmark import measure, optimizers, report, sets
from torch_gd.benchmark.timing import WallTimer

RESULTS = Path(__file__).parent / "results"
LAYOUTS = ("one", "tensor")


def no_op(p: torch.Tensor, g: torch.Tensor, **kw: Any) -> None:
    """A rule that updates nothing."""


def stubbed(cls: type) -> type:
    """``cls`` with its rule replaced by ``no_op``."""
    return type(f"{cls.__name__}NoOp", (cls,), {"_spec": dataclasses.replace(cls._spec, rule=no_op)})


def one(set_name: str, optimizer: str, rounds: int, steps: int) -> dict[str, Any]:
    params = sets.parameters(sets.build(set_name), "cpu", torch.float32)
    spec = optimizers.OPTIMIZERS[optimizer]
    calls = {}
    for rule, cls in (("rule", spec.ours), ("no-op rule", stubbed(spec.ours))):
        for layout in LAYOUTS:
            copies = sets.clone(params)
            groups = [{"params": [p]} for p in copies] if layout == "tensor" else [{"params": copies}]
            calls[f"{layout}, {rule}"] = cls(groups, **spec.kwargs).step
    timings = measure.interleaved(calls, WallTimer(), rounds, steps)
    us = {k: t.median_ms * 1e3 for k, t in timings.items()}
    extra_groups = len(params) - 1
    return {"set": set_name, "optimizer": optimizer, "tensors": len(params), "rounds": rounds, "us": us,
            "tensor / one": us["tensor, rule"] / us["one, rule"],
            "host us per extra group": (us["tensor, no-op rule"] - us["one, no-op rule"]) / extra_groups,
            "rule ops us added": (us["tensor, rule"] - us["tensor, no-op rule"]) - (us["one, rule"] - us["one, no-op rule"])}


def main(argv: Optional[Sequence[str]] = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", nargs="+", type=sets.check, default=["resnet50", "vit_b_16"])
    ap.add_argument("--optimizers", nargs="+", choices=list(optimizers.OPTIMIZERS), default=["AdamW", "SGD"])
    ap.add_argument("--rounds", type=int, default=21)
    ap.add_argument("--steps-per-round", type=int, default=3)
    ap.add_argument("--json", type=Path, default=RESULTS / "eager_groups_cpu.json")
    args = ap.parse_args(argv)
    rows = []
    for set_name in args.sets:
        for optimizer in args.optimizers:
            row = one(set_name, optimizer, args.rounds, args.steps_per_round)
            rows.append(row)
            print(f"{set_name:10} {optimizer:6} tensor/one {row['tensor / one']:.3f}  host per extra group "
                  f"{row['host us per extra group']:.2f} µs  rule ops added {row['rule ops us added']:.0f} µs  "
                  + "  ".join(f"{k} {v:.0f}" for k, v in row["us"].items()) + " (µs)", flush=True)
    report.write_record(args.json, "eager_groups.py", argv, rows)
    return rows


if __name__ == "__main__":
    main()
