"""The precision policy's cost: memory per param and step time, beside torch.optim.

``memory``: each variant in its own process: a warm-up on a tiny model (so that compiled kernels
and the allocator's pools exist before measuring), then the resident memory a model's params,
grads and optimizer state add after three steps, and the peak during them (``ru_maxrss``),
in bytes per param.

``speed``: fused AdamW on bf16 params with ``param_update="kahan"`` beside torch's fused AdamW
on the same model in fp32 and in bf16, side by side in one process, interleaved round by round:
median step time, the ratio to torch fp32, and the bytes each step moves per second (each
tensor the step reads or writes, counted once per read and once per write).

    python benchmarks/precision.py memory               # resnet50's params; ~1 min
    python benchmarks/precision.py speed                # resnet50, GPT-2 small; ~3 min
    python benchmarks/precision.py speed --sets lenet --rounds 3 --json /tmp/p.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

import torch_gd
from torch_gd.benchmark import report, sets
from torch_gd.benchmark.timing import TIMERS, interleaved_medians, timer_for

RESULTS = Path(__file__).parent / "results"
KW = dict(lr=1e-3, weight_decay=0.01)
# name: (library, param dtype, constructor options)
VARIANTS = {
    "torch.optim, fp32 model": ("torch", torch.float32, {}),
    "torch.optim, bf16 model": ("torch", torch.bfloat16, {}),
    "torch_gd, fp32 model": ("torch_gd", torch.float32, {}),
    "torch_gd, fp32 model + bf16 state": ("torch_gd", torch.float32, dict(state_dtype=torch.bfloat16)),
    "torch_gd, bf16 model": ("torch_gd", torch.bfloat16, {}),
    "torch_gd, bf16 + fp32_master": ("torch_gd", torch.bfloat16, dict(param_update="fp32_master")),
    "torch_gd, bf16 + kahan": ("torch_gd", torch.bfloat16, dict(param_update="kahan")),
    "torch_gd, bf16 + kahan + bf16 state": ("torch_gd", torch.bfloat16, dict(param_update="kahan", state_dtype=torch.bfloat16)),
    "torch_gd, bf16 + stochastic_rounding": ("torch_gd", torch.bfloat16, dict(param_update="stochastic_rounding")),
}


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _optimizer(variant: str, params: list[torch.nn.Parameter], path: str) -> torch.optim.Optimizer:
    library, _, options = VARIANTS[variant]
    flags = {"fused": True} if path == "fused" else {"foreach": True}
    if library == "torch":
        return torch.optim.AdamW(params, **flags, **KW)
    return torch_gd.AdamW(params, **({"fused": True} if path == "fused" else {}), **options, **KW)


def _model(tensors: list[torch.Tensor], dtype: torch.dtype) -> list[torch.nn.Parameter]:
    params = [torch.nn.Parameter(t.to(dtype)) for t in tensors]
    for p in params:
        p.grad = torch.randn_like(p)
    return params


def one_memory(variant: str, set_name: str, path: str) -> dict[str, float]:
    """Run in a process of its own: bytes per param after three steps, and at the peak."""
    dtype = VARIANTS[variant][1]
    warm = _model(sets.build("lenet"), dtype)
    opt = _optimizer(variant, warm, path)
    for _ in range(3):
        opt.step()
    del warm, opt
    base = _rss()
    tensors = sets.build(set_name)
    numel = sum(t.numel() for t in tensors)
    params = []
    for i, t in enumerate(tensors):  # one fp32 tensor at a time beside the model
        params.append(torch.nn.Parameter(t.to(dtype)))
        params[-1].grad = torch.randn_like(params[-1])
        tensors[i] = t = None
    opt = _optimizer(variant, params, path)
    for _ in range(3):
        opt.step()
    # The model dwarfs the warm-up: the process's peak is this phase's.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"bytes_per_param": round((_rss() - base) / numel, 2), "peak_bytes_per_param": round((peak - base) / numel, 2)}


def memory(set_name: str, paths: list[str]) -> list[dict[str, Any]]:
    rows = []
    for variant in VARIANTS:
        for path in paths:
            code = ("import json, sys; sys.path.insert(0, 'benchmarks'); from precision import one_memory; "
                    f"print(json.dumps(one_memory({variant!r}, {set_name!r}, {path!r})))")
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                 cwd=Path(__file__).parent.parent)
            row = {"variant": variant, "path": path, "set": set_name, **json.loads(out.stdout.strip().splitlines()[-1])}
            rows.append(row)
            print(row, flush=True)
    return rows


# Bytes one AdamW step reads and writes per element: param, grad, exp_avg, exp_avg_sq read; param
# and the moments written; Kahan adds its buffer (read and written).
def _traffic(dtype: torch.dtype, kahan: bool) -> int:
    size = torch.finfo(dtype).bits // 8
    return size * (4 + 3) + (2 * size if kahan else 0)


def speed(set_name: str, rounds: int, steps: int, timer_kind: str) -> dict[str, Any]:
    tensors = sets.build(set_name)
    numel = sum(t.numel() for t in tensors)
    fns, traffic = {}, {}
    for label, dtype, make in [
        ("torch fused, fp32 model", torch.float32, lambda ps: torch.optim.AdamW(ps, fused=True, **KW)),
        ("torch fused, bf16 model", torch.bfloat16, lambda ps: torch.optim.AdamW(ps, fused=True, **KW)),
        ("torch_gd fused, bf16 + kahan", torch.bfloat16,
         lambda ps: torch_gd.AdamW(ps, fused=True, param_update="kahan", **KW)),
        ("torch_gd fused, bf16 + kahan + bf16 state", torch.bfloat16,
         lambda ps: torch_gd.AdamW(ps, fused=True, param_update="kahan", state_dtype=torch.bfloat16, **KW)),
        ("torch_gd fused, bf16 + stochastic_rounding", torch.bfloat16,
         lambda ps: torch_gd.AdamW(ps, fused=True, param_update="stochastic_rounding", **KW)),
        ("torch_gd fused, bf16 + fp32_master", torch.bfloat16,
         lambda ps: torch_gd.AdamW(ps, fused=True, param_update="fp32_master", **KW)),
    ]:
        fns[label] = make(sets.parameters(tensors, "cpu", dtype)).step
        traffic[label] = _traffic(dtype, "kahan" in label) + (8 if "fp32_master" in label else 0)
    median = interleaved_medians(fns, rounds, steps, timer_for("cpu", timer_kind))
    base = median["torch fused, fp32 model"]
    return {
        "set": set_name, "numel": numel,
        "median_ms": {k: round(v * 1e3, 3) for k, v in median.items()},
        "ratio_vs_torch_fp32": {k: round(v / base, 3) for k, v in median.items()},
        "ratio_vs_torch_bf16": {k: round(v / median["torch fused, bf16 model"], 3) for k, v in median.items()},
        "bytes_per_element": traffic,
        "GB_per_s": {k: round(traffic[k] * numel / v / 1e9, 1) for k, v in median.items()},
    }


def main(argv: Optional[Sequence[str]] = None) -> Any:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["memory", "speed"])
    ap.add_argument("--sets", nargs="+", type=sets.check, default=None)
    ap.add_argument("--paths", nargs="+", choices=["fused", "default"], default=["fused", "default"])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--timer", choices=TIMERS, default="wall")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.what == "memory":
        rows = [r for s in args.sets or ["resnet50"] for r in memory(s, args.paths)]
    else:
        rows = []
        for s in args.sets or ["resnet50", "gpt2-small"]:
            rows.append(speed(s, args.rounds, args.steps, args.timer))
            print(json.dumps(rows[-1], indent=1), flush=True)
    report.write_record(args.json or RESULTS / f"precision_{args.what}_cpu.json", "precision.py", argv, rows)
    return rows


if __name__ == "__main__":
    main()
