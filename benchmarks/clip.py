"""Gradient clipping plus a step: ``opt.clip_grad_norm(max_norm); opt.step()`` against
``torch.nn.utils.clip_grad_norm_(params, max_norm); opt.step()`` with torch's optimizers, on the
CPU, side by side in one process and interleaved round by round.

torch's side is timed with its clip both ways (``foreach=True`` and ``False``) and its step both
ways (fused and foreach); its best combination is the baseline. Each row is the median time of
one clip + step over ``--rounds`` rounds; the ratio is ours over torch's best. The norm alone
(torch's ``get_total_norm`` and ours) and torch's best step alone are timed too: the faster
norm plus the best step is the floor of any clip that reads the grads once before the step.

    python benchmarks/clip.py                          # small models, resnet50, GPT-2 small; AdamW; ~7 min
    python benchmarks/clip.py --sets lenet --rounds 3 --json /tmp/clip.json   # seconds
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

import torch_gd
from torch_gd._clip import total_norm
from torch_gd.benchmark import report, sets
from torch_gd.benchmark.timing import TIMERS, interleaved_medians, timer_for

RESULTS = Path(__file__).parent / "results"
MAX_NORM = 1.0
OPTIMIZERS = {"AdamW": dict(lr=1e-3, weight_decay=0.01), "Adam": dict(lr=1e-3),
              "SGD": dict(lr=0.01, momentum=0.9)}


def contenders(name: str, tensors: list[torch.Tensor]) -> dict[str, Callable[[], Any]]:
    """One clip + step per contender, each on its own copy of the params and grads."""
    kw = OPTIMIZERS[name]
    out: dict[str, Callable[[], Any]] = {}
    for clip_foreach in (True, False):
        for step in ("fused", "foreach"):
            params = sets.parameters(tensors, "cpu", torch.float32)
            opt = getattr(torch.optim, name)(params, **{step: True}, **kw)
            out[f"torch clip_grad_norm_(foreach={clip_foreach}) + {step} step"] = (
                lambda ps=params, o=opt, f=clip_foreach: (torch.nn.utils.clip_grad_norm_(ps, MAX_NORM, foreach=f), o.step()))
    for path in ("fused", "default"):
        params = sets.parameters(tensors, "cpu", torch.float32)
        opt = getattr(torch_gd, name)(params, **({"fused": True} if path == "fused" else {}), **kw)
        out[f"torch_gd clip_grad_norm + {path} step"] = lambda o=opt: (o.clip_grad_norm(MAX_NORM), o.step())
    params = sets.parameters(tensors, "cpu", torch.float32)
    out["norm alone (get_total_norm)"] = lambda ps=params: torch.nn.utils.get_total_norm([p.grad for p in ps], 2.0)
    out["norm alone (torch_gd)"] = lambda ps=params: total_norm([p.grad for p in ps], 2.0, False)
    for step in ("fused", "foreach"):
        params = sets.parameters(tensors, "cpu", torch.float32)
        out[f"torch {step} step alone"] = getattr(torch.optim, name)(params, **{step: True}, **kw).step
    return out


def measure(set_name: str, name: str, rounds: int, steps: int, timer_kind: str) -> dict[str, Any]:
    fns = contenders(name, sets.build(set_name))
    median = interleaved_medians(fns, rounds, steps, timer_for("cpu", timer_kind))
    torch_best = min((k for k in median if k.startswith("torch clip")), key=median.get)
    best_step = min(median["torch fused step alone"], median["torch foreach step alone"])
    floor = min(median["norm alone (get_total_norm)"], median["norm alone (torch_gd)"]) + best_step
    return {
        "set": set_name, "optimizer": name, "max_norm": MAX_NORM,
        "median_ms": {k: round(v * 1e3, 3) for k, v in median.items()},
        "torch_best": torch_best,
        "ratio_vs_torch_best": {k: round(median[k] / median[torch_best], 3) for k in median if k.startswith("torch_gd")},
        "floor_ratio": round(floor / median[torch_best], 3),
    }


def main(argv: Optional[Sequence[str]] = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", nargs="+", type=sets.check, default=[*sets.SMALL, "resnet50", "gpt2-small"])
    ap.add_argument("--optimizers", nargs="+", choices=OPTIMIZERS, default=["AdamW"])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--steps", type=int, default=None,
                    help="calls per contender per round, the fastest counting (default: 20 on the small sets, else 3)")
    ap.add_argument("--timer", choices=TIMERS, default="wall")
    ap.add_argument("--json", type=Path, default=RESULTS / "clip_cpu.json")
    args = ap.parse_args(argv)
    rows = []
    for set_name in args.sets:
        for name in args.optimizers:
            steps = args.steps or (20 if set_name in sets.SMALL else 3)
            row = measure(set_name, name, args.rounds, steps, args.timer)
            rows.append(row)
            print(f"{set_name} {name}: torch's best is {row['torch_best']} "
                  f"({row['median_ms'][row['torch_best']]} ms); ours over it: {row['ratio_vs_torch_best']}; "
                  f"floor (norm + best step alone) {row['floor_ratio']}", flush=True)
    report.write_record(args.json, "clip.py", argv, rows, rounds=args.rounds)
    return rows


if __name__ == "__main__":
    main()
