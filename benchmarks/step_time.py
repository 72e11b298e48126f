"""Optimizer step time: torch_gd against torch.optim, side by side in one process.

For each optimizer and parameter set, every implementation gets its own copy of the same params
and grads. Rounds are interleaved (each round times every implementation once, in a rotating
order) so that drift in the machine's speed hits them alike; a round is the median of a few
steps, and the reported number is the median over rounds, with the spread (IQR) over rounds.
Ratios are against torch's best implementation for that optimizer (its fused one where it has
one, else the faster of for-loop and foreach), and against torch's faster eager one.

    python benchmarks/step_time.py             # full CPU suite (~10 min), writes results/step_time_cpu.json
    python benchmarks/step_time.py --quick     # seconds
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torchvision

import torch_gd


def gpt2_small() -> list[torch.nn.Parameter]:
    """GPT-2 small's parameter shapes (148 tensors, 124M elements)."""
    d, shapes = 768, [(50257, 768), (1024, 768)]
    for _ in range(12):
        shapes += [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,), (d,), (d,), (d, 4 * d), (4 * d,), (4 * d, d), (d,)]
    shapes += [(d,), (d,)]
    return [torch.nn.Parameter(torch.randn(s) * 0.02) for s in shapes]


SETS = {
    "resnet50": lambda: list(torchvision.models.resnet50().parameters()),
    "gpt2-small": gpt2_small,
    "2000x1000": lambda: [torch.nn.Parameter(torch.randn(1000)) for _ in range(2000)],
}
QUICK_SETS = {"resnet18": lambda: list(torchvision.models.resnet18().parameters()),
              "200x1000": lambda: [torch.nn.Parameter(torch.randn(1000)) for _ in range(200)]}
OPTIMIZERS = {
    "Adam": (torch.optim.Adam, torch_gd.Adam, dict(lr=1e-3), True),
    "SGD momentum": (torch.optim.SGD, torch_gd.SGD, dict(lr=1e-2, momentum=0.9), True),
    "Adagrad": (torch.optim.Adagrad, torch_gd.Adagrad, dict(lr=1e-2), True),
    "RMSprop": (torch.optim.RMSprop, torch_gd.RMSprop, dict(lr=1e-2, momentum=0.9), False),
}


def implementations(theirs, ours, torch_has_fused: bool) -> dict:
    impls = {
        "torch for-loop": lambda ps, kw: theirs(ps, foreach=False, **kw),
        "torch foreach": lambda ps, kw: theirs(ps, foreach=True, **kw),
        "torch_gd default": lambda ps, kw: ours(ps, **kw),
        "torch_gd fused": lambda ps, kw: ours(ps, fused=True, **kw),
    }
    if torch_has_fused:
        impls["torch fused"] = lambda ps, kw: theirs(ps, fused=True, **kw)
    return impls


def measure(make_params, theirs, ours, kw, torch_has_fused, rounds, steps) -> dict:
    base = make_params()
    for p in base:
        p.grad = torch.randn_like(p)
    opts = {}
    for name, build in implementations(theirs, ours, torch_has_fused).items():
        params = [torch.nn.Parameter(p.detach().clone()) for p in base]
        for p, b in zip(params, base):
            p.grad = b.grad.clone()
        opts[name] = build(params, kw)
        opts[name].step()  # state and (fused) kernels
        opts[name].step()
    times: dict[str, list[float]] = {name: [] for name in opts}
    names = list(opts)
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            samples = []
            for _ in range(steps):
                t = time.perf_counter()
                opts[name].step()
                samples.append(time.perf_counter() - t)
            times[name].append(statistics.median(samples))
    result = {}
    for name, ts in times.items():
        q = statistics.quantiles(ts, n=4) if len(ts) > 1 else [ts[0]] * 3
        result[name] = {"median_ms": statistics.median(ts) * 1e3, "iqr_ms": (q[2] - q[0]) * 1e3}
    del opts
    gc.collect()
    return {"tensors": len(base), "elements": sum(p.numel() for p in base), "impls": result}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "step_time_cpu.json")
    args = ap.parse_args()
    sets = QUICK_SETS if args.quick else SETS
    rounds, steps = (3, 2) if args.quick else (args.rounds, 3)
    torch.manual_seed(0)
    rows = []
    for opt_name, (theirs, ours, kw, has_fused) in OPTIMIZERS.items():
        for set_name, make in sets.items():
            m = measure(make, theirs, ours, kw, has_fused, rounds, steps)
            impls = m["impls"]
            best_eager = min(impls["torch for-loop"]["median_ms"], impls["torch foreach"]["median_ms"])
            best = min(best_eager, impls.get("torch fused", {}).get("median_ms", float("inf")))
            for name, r in impls.items():
                rows.append({"optimizer": opt_name, "set": set_name, "tensors": m["tensors"], "elements": m["elements"],
                             "impl": name, **r, "vs_torch_best": r["median_ms"] / best,
                             "vs_torch_best_eager": r["median_ms"] / best_eager})
            print(f"{opt_name:>12} {set_name:>10}  " + "  ".join(f"{n}: {r['median_ms']:.2f}" for n, r in impls.items())
                  + f"   [ms]  torch_gd fused / torch best = {impls['torch_gd fused']['median_ms'] / best:.2f},"
                  f" torch_gd default / torch best eager = {impls['torch_gd default']['median_ms'] / best_eager:.2f}",
                  flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
            "rounds": rounds, "steps_per_round": steps,
            "command": "python benchmarks/step_time.py" + (" --quick" if args.quick else "")}
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
