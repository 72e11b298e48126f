"""Which small params a fused group should pack: torch's fused step beside ours
with each packing threshold, timed side by side in one process, interleaved (the order rotating
between rounds), median over rounds.

A fused group packs its params of at most ``FUSED_PACK_MAX_NUMEL`` elements into a bucket when
at least ``FUSED_PACK_MIN_PARAMS`` of one kind qualify; the others are updated in place, one
prepared kernel call each. A bucket makes one kernel call for its params, but copies their grads
in and their values in and back out every step. Each variant here is an optimizer planned with
other thresholds (the module constants, set while it plans its first step and restored after).
The thresholds apply where the fused kernels are called directly: with the private APIs off
(``TORCH_GD_PRIVATE_APIS=0``) fused groups pack as eager ones do, and the variants are alike.

    python benchmarks/fused_packing.py       # the small sets, resnet50, vit_b_16, gpt2-small, 2000x1000, 500x4000
    python benchmarks/fused_packing.py --sets lenet --optimizers SGD --rounds 3 --json /tmp/packing.json
    python benchmarks/fused_packing.py --device cuda     # on a GPU (results/fused_packing_cuda.json)
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from torch_gd import _engine, _private
from torch_gd.benchmark import measure, optimizers, report, sets

RESULTS = Path(__file__).parent / "results"
SETS = ("mlp-policy", "lenet", "mlp-layernorm", "resnet50", "vit_b_16", "gpt2-small", "2000x1000", "500x4000")
# (max elements, min params) of each variant; "never" packs nothing.
VARIANTS = {"current": (_engine.FUSED_PACK_MAX_NUMEL, _engine.FUSED_PACK_MIN_PARAMS),
            "min 256": (_engine.FUSED_PACK_MAX_NUMEL, 256), "never": (0, 1 << 62)}


def calls(optimizer: str, params: list[torch.nn.Parameter]) -> tuple[dict[str, Any], dict[str, list]]:
    """Each step to time, and each variant's buckets as ``describe()`` gives them: (params, numel)."""
    steps = {"torch fused": optimizers.build(optimizer, "torch fused", sets.clone(params)).step}
    buckets = {}
    for name, (max_numel, min_params) in VARIANTS.items():
        opt = optimizers.build(optimizer, "torch_gd fused", sets.clone(params))
        optimizers.planned_with(opt, [(_engine, {"FUSED_PACK_MAX_NUMEL": max_numel, "FUSED_PACK_MIN_PARAMS": min_params})],
                                steps=1)
        steps[name] = opt.step
        buckets[name] = [[b["params"], b["numel"]] for g in opt.describe()["groups"].values() for b in g["buckets"]]
    return steps, buckets


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", nargs="+", default=list(SETS), type=sets.check)
    ap.add_argument("--optimizers", nargs="+", default=["AdamW", "SGD"], choices=["Adam", "AdamW", "SGD", "Adagrad"])
    ap.add_argument("--rounds", type=int, default=21)
    ap.add_argument("--steps-per-round", type=int, default=3)
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:n]")
    ap.add_argument("--json", type=Path, default=None, help="default: results/fused_packing_<device type>.json")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    rows = measure.variant_rows(args.sets, args.optimizers, device, calls, lambda t: t["torch fused"].median_ms,
                                args.rounds, args.steps_per_round, plan_key="buckets", ratio_key="vs_torch_fused")
    return report.write_record(args.json or RESULTS / f"fused_packing_{device.type}.json", "fused_packing.py", argv,
                               rows, device=str(device), private_apis=_private.enabled(),
                               variants={k: list(v) for k, v in VARIANTS.items()})


if __name__ == "__main__":
    main()
