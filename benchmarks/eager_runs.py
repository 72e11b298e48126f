"""How the default (eager) path should update params: packed into a bucket, in runs through
torch's multi-tensor ops, or one by one. torch's two eager steps beside ours planned several
ways, timed side by side in one process, interleaved (the order rotating between rounds), median
over rounds:

- ``as built``;
- ``one by one``: packed as built, the other params one rule call each (no runs);
- ``runs ≤ 2^26``: packed as built, runs of up to 2^26 elements (on a GPU, where a run is one
  launch per op, longer runs may pay; on the CPU they leave the cache between ops);
- ``no packing``: every param in runs of at most ``_engine.RUN_MAX_NUMEL`` elements, one rule
  call over ``Many`` each;
- ``pack ≤ N, ≥ M``: params of at most N elements packed where at least M of one kind qualify
  (the rule's ``Spec.pack_max_numel`` and ``pack_min_params``), the others in runs. One of
  them is the optimizer as built: its two columns time the same work, a measure of the noise.

Each variant is an optimizer whose first steps run with the constants set (they plan what later
steps keep), restored after.

    python benchmarks/eager_runs.py       # the small sets, NxM sets, resnet50, vit_b_16, gpt2-small; SGD and AdamW
    python benchmarks/eager_runs.py --sets lenet --optimizers SGD --rounds 3 --json /tmp/runs.json
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from torch_gd import _engine
from torch_gd.benchmark import measure, optimizers, report, sets

RESULTS = Path(__file__).parent / "results"
SETS = ("mlp-policy", "lenet", "mlp-layernorm", "8x1000", "16x1000", "8x10000", "32x10000", "2000x1000",
        "500x4000", "500x8000", "resnet50", "vit_b_16", "gpt2-small")
# What each variant sets: the engine's constants, and the rule's packing thresholds ("spec").
VARIANTS: dict[str, dict[str, dict[str, Any]]] = {
    "as built": {},
    "one by one": {"engine": {"RUN_MAX_NUMEL": 0}},
    "runs ≤ 2^26": {"engine": {"RUN_MAX_NUMEL": 1 << 26}},
    "no packing": {"engine": {"PACK_MAX_NUMEL": 0}},
    "pack ≤ 4096, ≥ 16": {"spec": {"pack_max_numel": 1 << 12, "pack_min_params": 16}},
    "pack ≤ 16384, ≥ 2": {"spec": {"pack_max_numel": 1 << 14, "pack_min_params": 2}},
    "pack ≤ 32768, ≥ 2": {"spec": {"pack_max_numel": None, "pack_min_params": 2}},
}


def calls(optimizer: str, params: list[torch.nn.Parameter]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Each step to time, and each variant's plan from ``describe()``: the number of params of
    each bucket and of each run."""
    steps = {impl: optimizers.build(optimizer, impl, sets.clone(params)).step
             for impl in ("torch for-loop", "torch foreach")}
    plans = {}
    for name, patches in VARIANTS.items():
        opt = optimizers.build(optimizer, "torch_gd default", sets.clone(params))
        targets = {"engine": _engine, "spec": type(opt)._spec}
        optimizers.planned_with(opt, [(targets[k], values) for k, values in patches.items()])
        steps[name] = opt.step
        groups = opt.describe()["groups"].values()
        plans[name] = {"buckets": [b["params"] for g in groups for b in g["buckets"]],
                       "runs": [len(r) for g in groups for r in g["runs"]]}
    return steps, plans


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", nargs="+", default=list(SETS), type=sets.check)
    ap.add_argument("--optimizers", nargs="+", default=["SGD", "AdamW"], choices=list(optimizers.OPTIMIZERS))
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--steps-per-round", type=int, default=3)
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:n]")
    ap.add_argument("--json", type=Path, default=None, help="default: results/eager_runs_<device type>.json")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    rows = measure.variant_rows(args.sets, args.optimizers, device, calls,
                                lambda t: min(t["torch for-loop"].median_ms, t["torch foreach"].median_ms),
                                args.rounds, args.steps_per_round, plan_key="plans", ratio_key="vs_torch_eager")
    return report.write_record(args.json or RESULTS / f"eager_runs_{device.type}.json", "eager_runs.py", argv,
                               rows, device=str(device), run_max_numel=_engine.RUN_MAX_NUMEL, variants=VARIANTS)


if __name__ == "__main__":
    main()
