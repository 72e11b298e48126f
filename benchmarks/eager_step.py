"""Step time of torch_gd's eager paths against torch.optim's, side by side in one process.

For each parameter set and configuration, every implementation gets the same params and grads;
each is timed with torch.utils.benchmark (median over blocked repeats) after warm-up steps.
Ratios are torch_gd's median over torch's faster eager implementation (for-loop or foreach).

    python benchmarks/eager_step.py                     # full CPU suite, writes results/eager_step_cpu.json
    python benchmarks/eager_step.py --quick             # seconds: small sets, few repeats
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch
import torch.utils.benchmark as tb
import torchvision

import torch_gd

SETS = {
    "resnet18": lambda: list(torchvision.models.resnet18().parameters()),
    "resnet50": lambda: list(torchvision.models.resnet50().parameters()),
    "2000x1000": lambda: [torch.nn.Parameter(torch.randn(1000)) for _ in range(2000)],
}
QUICK_SETS = {"200x1000": lambda: [torch.nn.Parameter(torch.randn(1000)) for _ in range(200)]}
CONFIGS = {
    "SGD momentum": (torch.optim.SGD, torch_gd.SGD, dict(lr=0.01, momentum=0.9)),
    "SGD nesterov+wd": (torch.optim.SGD, torch_gd.SGD, dict(lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)),
}
IMPLS = {
    "torch for-loop": lambda t, g, ps, kw: t(ps, foreach=False, **kw),
    "torch foreach": lambda t, g, ps, kw: t(ps, foreach=True, **kw),
    "torch_gd default": lambda t, g, ps, kw: g(ps, **kw),
    "torch_gd per-tensor": lambda t, g, ps, kw: g(ps, foreach=False, **kw),
}


def time_step(opt: torch.optim.Optimizer, min_run_time: float) -> dict:
    for _ in range(3):
        opt.step()
    m = tb.Timer("opt.step()", globals={"opt": opt}).blocked_autorange(min_run_time=min_run_time)
    return {"median_ms": m.median * 1e3, "iqr_ms": m.iqr * 1e3, "runs": len(m.times)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "eager_step_cpu.json")
    args = ap.parse_args()
    sets = QUICK_SETS if args.quick else SETS
    min_run_time = 0.2 if args.quick else 2.0
    torch.manual_seed(0)
    rows = []
    for set_name, make in sets.items():
        params = make()
        for p in params:
            p.grad = torch.randn_like(p)
        numel = sum(p.numel() for p in params)
        for cfg_name, (theirs, ours, kw) in CONFIGS.items():
            results = {name: time_step(build(theirs, ours, params, kw), min_run_time) for name, build in IMPLS.items()}
            best_torch = min(results["torch for-loop"]["median_ms"], results["torch foreach"]["median_ms"])
            for name, r in results.items():
                rows.append({"set": set_name, "tensors": len(params), "elements": numel, "config": cfg_name,
                             "impl": name, **r, "ratio_vs_best_torch_eager": r["median_ms"] / best_torch})
            print(f"{set_name:>10} {cfg_name:<16} " + "  ".join(
                f"{n}: {r['median_ms']:.2f} ms" for n, r in results.items()) +
                f"  -> torch_gd default/best torch = {results['torch_gd default']['median_ms'] / best_torch:.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
            "processor": platform.processor(), "command": "python benchmarks/eager_step.py" + (" --quick" if args.quick else "")}
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
