"""Host time per step: what a fused step spends around its kernels, ours beside torch fused's.

On a GPU the update of even a large model is short, so the host work around the kernels decides
the step time. Here it is measured as a step's time minus the time of the same update kernels
called alone on the same tensors:

- torch: ``torch._fused_adamw_`` (``_fused_sgd_``, ...) called once on the lists its step
  hands it (one call per group);
- ours: ``Optimizer.kernel_calls()``, the last steady step's compiled kernel calls with their
  inputs prepared.

What is left is the host's share: torch's ``_init_group`` walk over every param, its step
counter increment; our steady-step checks, numbers, step counters, and (for packed buckets) the
gather and write-back copies, which this counts against us. On the CPU both terms are wall time
(the difference of two medians, so small hosts on large sets are within noise: read the small
sets). On CUDA the host time is the wall time of issuing ``step()`` (the device queue is never
waited on) and the kernels' time is device time.

Beside them, the floor of our design's step: the ``step`` wrapper torch_gd's optimizers get
(the profiler's range, the step hooks, grad mode; timed on an optimizer whose step does nothing) plus our kernels alone plus
reading every grad and making it the 1-D view a kernel takes. Where the floor is below torch's
step, what our step spends above it is the engine's own work, not a limit of calling one
compiled kernel per large param.

    python benchmarks/host_time.py                  # ~2 minutes: small sets and resnet50
    python benchmarks/host_time.py --sets lenet --rounds 3 --json /tmp/host.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

import torch_gd
from torch_gd.benchmark import groups, report, sets
from torch_gd.benchmark.optimizers import build
from torch_gd.benchmark.timing import TIMERS, interleaved_medians, timer_for

RESULTS = Path(__file__).parent / "results"
DEFAULT_SETS = (*sets.SMALL, "resnet50")
# The fused op of each torch optimizer with a fused step, and the state it reads per param.
_TORCH_OPS = {
    "Adam": (torch._fused_adam_, ("exp_avg", "exp_avg_sq")),
    "AdamW": (torch._fused_adamw_, ("exp_avg", "exp_avg_sq")),
    "SGD": (torch._fused_sgd_, ("momentum_buffer",)),
    "Adagrad": (torch._fused_adagrad_, ("sum",)),
}


def torch_kernels(optimizer: str, opt: torch.optim.Optimizer) -> Callable[[], None]:
    """torch's fused op called alone, once per group, on the lists its step passes it."""
    op, keys = _TORCH_OPS[optimizer]
    calls = []
    for g in opt.param_groups:
        params = [p for p in g["params"] if p.grad is not None]
        lists = [params, [p.grad for p in params], *([opt.state[p][k] for p in params] for k in keys)]
        if optimizer == "SGD":
            kw = dict(weight_decay=g["weight_decay"], momentum=g["momentum"], lr=g["lr"], dampening=g["dampening"],
                      nesterov=g["nesterov"], maximize=g["maximize"], is_first_step=False)
        elif optimizer == "Adagrad":
            lists.append([opt.state[p]["step"] for p in params])
            kw = dict(lr=g["lr"], lr_decay=g["lr_decay"], weight_decay=g["weight_decay"], eps=g["eps"],
                      maximize=g["maximize"])
        else:
            lists += [[], [opt.state[p]["step"] for p in params]]
            kw = dict(amsgrad=False, lr=g["lr"], beta1=g["betas"][0], beta2=g["betas"][1],
                      weight_decay=g["weight_decay"], eps=g["eps"], maximize=g["maximize"])
        calls.append((lists, kw))

    def run() -> None:
        for lists, kw in calls:
            op(*lists, **kw, grad_scale=None, found_inf=None)
    return run


class _Empty(torch.optim.Optimizer):
    """An optimizer whose step does nothing: what our ``step`` wrapper (torch's, made lean:
    the profiler's range, the step hooks) and grad mode cost on their own."""

    profile_hook_step = staticmethod(torch_gd.Optimizer.profile_hook_step)

    def __init__(self, params: list[torch.Tensor]) -> None:
        super().__init__(params, {})

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Any]] = None) -> None:
        return None


def grads_read(params: list[torch.Tensor]) -> Callable[[], list[torch.Tensor]]:
    """Every param's grad as the 1-D view a compiled kernel takes."""
    return lambda: [p.grad.view(-1) for p in params]


class IssueTimer:
    """Host wall time of a call that queues device work, without waiting for the device
    (after waiting once before it, so earlier work does not hold the queue)."""

    def seconds(self, fn: Callable[[], Any]) -> float:
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start


def one(set_name: str, optimizer: str, layout: str, device: str, rounds: int, steps: int,
        timer_kind: str) -> dict[str, Any]:
    names, params = sets.named_parameters(set_name, device, torch.float32)
    split = groups.layout(layout, optimizer, names, params)
    opts = {impl: build(optimizer, impl, groups.apply(split, sets.clone(params)))
            for impl in ("torch fused", "torch_gd fused")}
    for opt in opts.values():  # the steady state: ours has recorded and prepared its step
        for _ in range(3):
            opt.step()
    kernels = {"torch fused": torch_kernels(optimizer, opts["torch fused"]),
               "torch_gd fused": opts["torch_gd fused"].kernel_calls()}
    ours = [p for g in opts["torch_gd fused"].param_groups for p in g["params"]]
    kernels |= {"wrapper": _Empty(ours).step, "grads": grads_read(ours)}
    kernel_timer = timer_for(device, timer_kind)
    cuda = torch.device(device).type == "cuda"
    if cuda:
        step = interleaved_medians({impl: opt.step for impl, opt in opts.items()}, rounds, steps, IssueTimer())
        alone = interleaved_medians(kernels, rounds, steps, kernel_timer)
    else:
        # Steps and kernels alone take turns in the same rounds: timed in two loops, the
        # machine's drift between the loops entered the difference (resnet50 SGD's host time
        # read 0.99 ms in one run, from two ~6 ms medians).
        timed = interleaved_medians({**{f"step: {impl}": opt.step for impl, opt in opts.items()}, **kernels},
                                    rounds, steps, kernel_timer)
        step = {impl: timed[f"step: {impl}"] for impl in opts}
        alone = timed
    row: dict[str, Any] = {"set": set_name, "optimizer": optimizer, "groups": len(split), "device": device,
                           "params": len(params), "elements": sum(p.numel() for p in params)}
    for impl in opts:
        host = step[impl] if cuda else step[impl] - alone[impl]
        row[impl] = {"step_us": step[impl] * 1e6, "kernels_us": alone[impl] * 1e6, "host_us": host * 1e6}
    row["host ours/torch"] = row["torch_gd fused"]["host_us"] / row["torch fused"]["host_us"]
    row["floor"] = {"wrapper_us": alone["wrapper"] * 1e6, "grads_us": alone["grads"] * 1e6,
                    "step_us": (alone["wrapper"] + alone["torch_gd fused"] + alone["grads"]) * 1e6}
    row["floor/torch step"] = row["floor"]["step_us"] / row["torch fused"]["step_us"]
    return row


def main(argv: Optional[Sequence[str]] = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", nargs="+", type=sets.check, default=list(DEFAULT_SETS))
    ap.add_argument("--optimizers", nargs="+", choices=sorted(_TORCH_OPS), default=["AdamW", "SGD"])
    ap.add_argument("--groups", nargs="+", choices=groups.LAYOUTS, default=["one"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--steps", type=int, default=5, help="calls per round; a round's time is their fastest")
    ap.add_argument("--timer", choices=TIMERS, default="wall")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    rows = []
    print(f"{'set':14} {'optimizer':8} {'groups':>6} {'torch step':>11} {'kernels':>8} {'host':>8} "
          f"{'ours step':>10} {'kernels':>8} {'host':>8} {'host ours/torch':>16} {'floor':>8} {'floor/torch':>12}   (µs)")
    for set_name in args.sets:
        for optimizer in args.optimizers:
            for layout in args.groups:
                r = one(set_name, optimizer, layout, args.device, args.rounds, args.steps, args.timer)
                rows.append(r)
                t, o = r["torch fused"], r["torch_gd fused"]
                print(f"{set_name:14} {optimizer:8} {r['groups']:>6} {t['step_us']:>11.1f} {t['kernels_us']:>8.1f} "
                      f"{t['host_us']:>8.1f} {o['step_us']:>10.1f} {o['kernels_us']:>8.1f} {o['host_us']:>8.1f} "
                      f"{r['host ours/torch']:>16.2f} {r['floor']['step_us']:>8.1f} {r['floor/torch step']:>12.2f}",
                      flush=True)
    report.write_record(args.json or RESULTS / f"host_time_{torch.device(args.device).type}.json", "host_time.py",
                        argv, rows)
    return rows


if __name__ == "__main__":
    main()
