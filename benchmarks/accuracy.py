"""Worst-case differences between torch_gd and torch.optim's for-loop, per optimizer and dtype.

Two measurements per optimizer, configuration and torch_gd path (default packed, per-tensor,
fused):
- one step from the same state: params and state are first driven 5 steps by torch, copied
  into torch_gd through load_state_dict, then both take one step on the same grads; the number
  is max |ours − torch| / (|torch| + 1) over params and state (a relative error that stays
  finite at zero);
- 100 steps of a small CNN from the same weights and data: ‖ours − torch‖ / ‖torch‖ over all
  params (fp64 and fp32).

    python benchmarks/accuracy.py        # writes benchmarks/results/accuracy_cpu.json
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

import torch_gd

CONFIGS = {
    "SGD": (torch.optim.SGD, torch_gd.SGD, [
        dict(lr=0.1), dict(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=1e-2),
        dict(lr=0.1, momentum=0.9, nesterov=True, maximize=True)]),
    "Adam": (torch.optim.Adam, torch_gd.Adam, [
        dict(lr=1e-2), dict(lr=1e-2, amsgrad=True, weight_decay=1e-2),
        dict(lr=1e-2, weight_decay=1e-2, decoupled_weight_decay=True, maximize=True)]),
    "AdamW": (torch.optim.AdamW, torch_gd.AdamW, [dict(lr=1e-2), dict(lr=1e-2, amsgrad=True)]),
    "Adagrad": (torch.optim.Adagrad, torch_gd.Adagrad, [
        dict(lr=0.05), dict(lr=0.05, lr_decay=0.01, weight_decay=1e-2, initial_accumulator_value=0.1)]),
    "RMSprop": (torch.optim.RMSprop, torch_gd.RMSprop, [
        dict(lr=1e-2), dict(lr=1e-2, momentum=0.9, centered=True, weight_decay=1e-2)]),
}
DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
PATHS = {"default": {}, "per-tensor": {"foreach": False}, "fused": {"fused": True}}


def _params(dtype, gen):
    shapes = [(64, 32), (32,), (8, 4, 3, 3), (10,), ()]
    return [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=torch.float64).to(dtype)) for s in shapes]


def _grads(params, gen):
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype)


def one_step_error(theirs_cls, ours_cls, kw, dtype, path) -> float:
    gen = torch.Generator().manual_seed(0)
    ref = _params(dtype, gen)
    t = theirs_cls(ref, foreach=False, **kw)
    for _ in range(5):
        _grads(ref, gen)
        t.step()
    ours = [torch.nn.Parameter(p.detach().clone()) for p in ref]
    o = ours_cls(ours, **kw, **path)
    o.load_state_dict(copy.deepcopy(t.state_dict()))
    # The loaded group carries torch's flags.
    o.param_groups[0].update(foreach=path.get("foreach"), fused=path.get("fused", False))
    _grads(ref, gen)
    for p, q in zip(ours, ref):
        p.grad = q.grad.clone()
    t.step(), o.step()
    worst = 0.0
    pairs = list(zip(ours, ref))
    for p, q in zip(ours, ref):
        pairs += [(o.state[p][k], t.state[q][k]) for k in t.state[q] if k != "step"]
    for a, b in pairs:
        a, b = a.detach().double(), b.detach().double()
        finite = torch.isfinite(b)
        if finite.any():
            worst = max(worst, float(((a - b).abs() / (b.abs() + 1))[finite].max()))
    return worst


def _model(dtype):
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(),
        torch.nn.Linear(32, 10)).to(dtype)


def trajectory_error(theirs_cls, ours_cls, kw, dtype, path) -> float:
    models = [_model(dtype), _model(dtype)]
    opts = [theirs_cls(models[0].parameters(), foreach=False, **kw), ours_cls(models[1].parameters(), **kw, **path)]
    gen = torch.Generator().manual_seed(1)
    for _ in range(100):
        x = torch.randn(8, 3, 8, 8, generator=gen, dtype=dtype)
        y = torch.randint(0, 10, (8,), generator=gen)
        for m, opt in zip(models, opts):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(m(x), y).backward()
            opt.step()
    a = torch.cat([p.detach().double().flatten() for p in models[1].parameters()])
    b = torch.cat([p.detach().double().flatten() for p in models[0].parameters()])
    return float((a - b).norm() / b.norm())


def main() -> None:
    rows = []
    for name, (theirs, ours, configs) in CONFIGS.items():
        for dtype in DTYPES:
            for path_name, path in PATHS.items():
                step = max(one_step_error(theirs, ours, kw, dtype, path) for kw in configs)
                traj = None
                if dtype in (torch.float64, torch.float32):
                    traj = max(trajectory_error(theirs, ours, kw, dtype, path) for kw in configs)
                rows.append({"optimizer": name, "dtype": str(dtype).replace("torch.", ""), "path": path_name,
                             "one_step_max_rel": step, "trajectory_100_rel_norm": traj})
                print(f"{name:8} {rows[-1]['dtype']:9} {path_name:10} one step {step:.2e}"
                      + (f"   100 steps {traj:.2e}" if traj is not None else ""))
    out = Path(__file__).parent / "results" / "accuracy_cpu.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"torch": torch.__version__, "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
