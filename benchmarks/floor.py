"""How far below torch's fused step a step over many small params can go here: torch's fused
step, ours, and the floor (``torch_gd.benchmark.floor``: read every ``p.grad``, concatenate
them, one torch fused kernel over flat buffers) with its parts, timed side by side in one
process, interleaved, median over rounds. Writes results/floor_cpu.json.

    python benchmarks/floor.py                         # 2000x1000; Adam, SGD, Adagrad; 31 rounds of 1 step
    python benchmarks/floor.py --sets 200x1000 --rounds 3 --json /tmp/floor.json
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from torch_gd.benchmark import floor, measure, run, sets
from torch_gd.benchmark.timing import WallTimer

RESULTS = Path(__file__).parent / "results"


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", nargs="+", default=["2000x1000"], type=sets.check)
    ap.add_argument("--optimizers", nargs="+", default=["Adam", "SGD", "Adagrad"], choices=["Adam", "AdamW", "SGD", "Adagrad"])
    ap.add_argument("--rounds", type=int, default=31)
    ap.add_argument("--steps-per-round", type=int, default=1)
    ap.add_argument("--json", type=Path, default=RESULTS / "floor_cpu.json")
    args = ap.parse_args(argv)
    config = run.Config(optimizers=args.optimizers, sets=args.sets, impls=("torch fused", "torch_gd fused"),
                        rounds=args.rounds, steps_per_round=args.steps_per_round, memory=False, compile_time=False)
    rows = []
    for set_name in args.sets:
        params = sets.parameters(sets.build(set_name), "cpu", torch.float32)
        for optimizer in args.optimizers:
            timings = measure.interleaved(floor.calls(optimizer, params), WallTimer(), args.rounds, args.steps_per_round)
            theirs = timings["torch fused"].median_ms
            for what, t in timings.items():
                rows.append({"optimizer": optimizer, "set": set_name, "tensors": len(params), "what": what,
                             "median_ms": t.median_ms, "iqr_ms": t.iqr_ms, "vs_torch_fused": t.median_ms / theirs})
                print(f"{optimizer:8s} {set_name:10s} {what:28s} {t.median_ms:8.3f} ms  "
                      f"IQR {t.iqr_ms:6.3f}  {t.median_ms / theirs:5.3f}x torch fused", flush=True)
            gc.collect()
    result = {"meta": run.meta(config, " ".join(["python benchmarks/floor.py", *(argv or sys.argv[1:])]), []),
              "rows": rows}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
