"""How per-group numbers could reach one fused kernel over params of many groups, measured.

A bucket holding the small params of several param groups (packed by device, dtype and the
rule's flags, not by group) needs each group's numbers (lr, weight decay, the step's
coefficients) on its segment. This script times the ways they could get there, on the small
params of a set (those the fused path packs, at most ``FUSED_PACK_MAX_NUMEL`` elements), laid
out flat as a bucket holds them, each group's lr distinct:

- ``per group``: one kernel call per group's segment, its numbers 0-dim tensors: what the
  engine does today, where a group's params are planned on their own. Calls of at most
  ``SERIAL_MAX_NUMEL`` elements run on one thread, as the lane runs them;
- ``table int32`` / ``table int16``: one call over the whole bucket; an index per element says
  which segment it is in, and each number that differs between groups is a per-segment fp32
  table the kernel reads at that index (2 or 4 B/element more), its length compiled in;
- ``per element``: one call; each number that differs between groups is expanded every step
  into a per-element fp32 tensor (4 B/element more per such number, plus the expanding op);
- ``one number``: one call with 0-dim numbers, the floor: what the bucket costs when every
  group has the same numbers.

Every variant reads the step's numbers of every group from one table per number, written with
NumPy as the lane writes its boxes; writing them is timed on its own (``numbers``: Python
computing each group's numbers here, where the engine shares them between groups with equal
settings) and left out of the variants' times. The kernels are torch_gd's own (``_fused.kernel``, called
directly as a steady step calls them), so the script follows the engine's internals. Before
timing, each variant runs one step from the same start and its result is compared with the
per-group one's (``agreement``: the largest difference in ulps of the param's dtype).

A bucket also copies what per-group calls on the params in place do not: each step its grads
are gathered into its flat buffer and its params' values copied in and back out. ``copies``
times those with ``torch.cat`` and ``torch._foreach_copy_`` (the engine's fused CPU buckets move
values with their own copy loop and check each param's address, see ``host_phases.py``).

    python benchmarks/segments.py                          # resnet50, tensor and block layouts
    python benchmarks/segments.py --device cuda            # the same on a GPU (results/segments_cuda.json)
    python benchmarks/segments.py --sets lenet --rounds 3 --json /tmp/segments.json
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from torch import Tensor

from torch_gd import _engine, _fused, _lane, _private
from torch_gd.adam import adam, adam_coefficients
from torch_gd.benchmark import groups, report, sets
from torch_gd.benchmark.timing import timer_for
from torch_gd.sgd import sgd

RESULTS = Path(__file__).parent / "results"
VARIANTS = ("per group", "table int32", "table int16", "per element", "one number")
_INDEX = {"table int32": torch.int32, "table int16": torch.int16}


def by_segment(rule: Callable[..., None], tables: tuple[str, ...]) -> Callable[..., None]:
    """``rule`` reading each number named in ``tables`` (a per-segment table) at the segment
    index ``seg`` of every element."""
    def segmented(p: Tensor, g: Tensor, *, seg: Tensor, **kw: Any) -> None:
        rule(p, g, **{k: v[seg.long()] if k in tables else v for k, v in kw.items()})
    segmented.__name__ = f"{rule.__name__}_by_segment"
    return segmented


def per_element(rule: Callable[..., None]) -> Callable[..., None]:
    """``rule`` itself, as its own kernel: its numbers come as per-element tensors."""
    def elementwise(p: Tensor, g: Tensor, **kw: Any) -> None:
        rule(p, g, **kw)
    elementwise.__name__ = f"{rule.__name__}_per_element"
    return elementwise


class Rule:
    """An optimizer's rule as the benchmark drives it: its flags, state keys and numbers."""

    def __init__(self, optimizer: str) -> None:
        if optimizer == "AdamW":
            self.rule, self.keys = adam, ("exp_avg", "exp_avg_sq")
            self.statics = {"decoupled": True, "amsgrad": False, "maximize": False, "first": False}
            self.fixed = {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 1e-2}
        elif optimizer == "SGD":
            self.rule, self.keys = sgd, ("momentum_buffer",)
            self.statics = {"nesterov": False, "maximize": False, "dampening": 0, "weight_decay": 0}
            self.fixed = {"momentum": 0.9}
        else:
            raise ValueError(f"segments.py times AdamW and SGD, not {optimizer!r}")
        # Made once: a kernel is compiled per rule function.
        self.segmented, self.elementwise = by_segment(self.rule, self.varying()), per_element(self.rule)

    def numbers(self, lr: float, step: int) -> dict[str, Any]:
        """One group's numbers at ``step``: (value, dtype) by name, as the engine hands them."""
        f64, f32 = torch.float64, torch.float32
        out = {"lr": (lr, f64), **{k: (v, f64) for k, v in self.fixed.items()}}
        if self.rule is adam:
            out["step"] = (float(step), f32)
            out.update((k, (v, f32)) for k, v in adam_coefficients(step, lr, self.fixed["beta1"], self.fixed["beta2"]).items())
        else:
            out["first"] = (False, torch.bool)
        return out

    def varying(self) -> tuple[str, ...]:
        """The numbers that differ between groups whose lr differs."""
        return ("lr", "step_size") if self.rule is adam else ("lr",)


class Tables:
    """Every segment's numbers, one tensor per number on ``device``, written each step with
    NumPy (on another device than the CPU, into host tensors copied over)."""

    def __init__(self, rule: Rule, lrs: list[float], device: torch.device) -> None:
        self.rule, self.lrs = rule, lrs
        first = rule.numbers(lrs[0], 1)
        host = {k: torch.zeros(len(lrs), dtype=dtype) for k, (_, dtype) in first.items()}
        # fp32 copies of the float64 numbers: what the tables and the per-element numbers hold.
        host_f32 = {k: torch.zeros(len(lrs)) for k, t in host.items() if t.dtype == torch.float64}
        self.arrays = [(k, t.numpy()) for k, t in (*host.items(), *host_f32.items())]
        self.tensors = {k: t.to(device) for k, t in host.items()}
        self.f32 = {k: t.to(device) for k, t in host_f32.items()}
        self.copies = [] if device.type == "cpu" else [
            (self.tensors[k], t) for k, t in host.items()] + [(self.f32[k], t) for k, t in host_f32.items()]
        self.views = [{k: t[i] for k, t in self.tensors.items()} for i in range(len(lrs))]

    def write(self, step: int) -> None:
        rows = [self.rule.numbers(lr, step) for lr in self.lrs]
        for k, array in self.arrays:
            array[:] = [row[k][0] for row in rows]
        for dst, src in self.copies:
            dst.copy_(src, non_blocking=True)


class Bucket:
    """A set's small params laid out flat, with one segment per group."""

    def __init__(self, sizes: list[int], segment_of: list[int], rule: Rule, device: torch.device) -> None:
        total = sum(sizes)
        torch.manual_seed(0)  # the same values on every device
        self.p, self.g = torch.randn(total).to(device), torch.randn(total).to(device)
        self.states = {k: torch.rand(total).to(device) for k in rule.keys}
        bounds, lo = [], 0
        for n in sizes:
            bounds.append((lo, lo + n))
            lo += n
        self.segments: list[tuple[int, int]] = []  # each group's contiguous range
        for s in sorted(set(segment_of)):
            members = [bounds[i] for i, seg in enumerate(segment_of) if seg == s]
            self.segments.append((members[0][0], members[-1][1]))
        seg = torch.empty(total, dtype=torch.int64)
        for i, (a, z) in enumerate(self.segments):
            seg[a:z] = i
        self.seg = seg.to(device)

    def copies(self, shapes: list[torch.Size]) -> Callable[[], None]:
        """What a bucket copies each step for params of these shapes, kept apart from it."""
        torch.manual_seed(1)
        device = self.p.device
        params, grads = [torch.randn(s).to(device) for s in shapes], [torch.randn(s).to(device) for s in shapes]
        flat_grads = [g.view(-1) for g in grads]
        views, lo = [], 0
        for s in shapes:
            views.append(self.p[lo:lo + s.numel()].view(s))
            lo += s.numel()

        def run() -> None:
            torch.cat(flat_grads, out=self.g)
            torch._foreach_copy_(views, params)
            torch._foreach_copy_(params, views)
        return run

    def copy(self) -> "Bucket":
        other = object.__new__(Bucket)
        other.p, other.g = self.p.clone(), self.g.clone()
        other.states = {k: t.clone() for k, t in self.states.items()}
        other.segments, other.seg = self.segments, self.seg
        return other


def prepared(rule: Callable[..., None], statics: dict[str, Any], p: Tensor, g: Tensor, states: dict[str, Tensor],
             numbers: dict[str, Tensor], bare: bool = True) -> Callable[[], None]:
    """The kernel call of ``rule`` on these tensors as a steady step makes it (``Call.prepare``):
    the C++ function itself with its inputs laid out once where ``_Kernel.bare`` finds it, else
    the generated ``call`` (~1.2 µs more a call); compiled by a first call through ``_Kernel``.
    ``bare=False`` for kernels that index: ``_Kernel.bare`` checks the function on drawn
    inputs, and a drawn index out of bounds aborts the process."""
    k = _fused.kernel(rule, statics, torch.float32, p.device)
    args = (p, g, states, numbers, None, None)
    k(*args)
    signature = _fused._signature(states, numbers, None, None)
    if signature not in k.direct:  # the private APIs off: through torch.compile's wrapper
        return lambda: k(*args)
    call, slots = k.direct[signature]
    inputs = _fused._inputs(slots, args)
    found = k.bare(signature, inputs) if bare else None
    if found is not None:
        function, order = found
        laid = [inputs[i] for i in order]
        return lambda: function(*laid)
    return lambda: call(list(inputs))


def variant(name: str, rule: Rule, bucket: Bucket, tables: Tables) -> Callable[[], None]:
    """One step of ``bucket`` by variant ``name`` (the tables already written); building it
    runs one step."""
    p, g, states = bucket.p, bucket.g, bucket.states
    if name == "per group":
        calls = [(prepared(rule.rule, rule.statics, p[a:z], g[a:z], {k: t[a:z] for k, t in states.items()},
                           tables.views[i]), p.device.type == "cpu" and z - a <= _lane.SERIAL_MAX_NUMEL)
                 for i, (a, z) in enumerate(bucket.segments)]
        serial = [call for call, small in calls if small]
        parallel = [call for call, small in calls if not small]

        def run() -> None:
            threads = _private.one_thread() if serial else 0
            try:
                for call in serial:
                    call()
            finally:
                _private.restore_threads(threads)
            for call in parallel:
                call()
        return run
    if name in _INDEX:
        # fp32 tables: a 0-dim float64 number enters fp32 maths as fp32, a float64 one per element
        # would make it float64.
        numbers = {key: tables.f32.get(key, t) if key in rule.varying() else tables.views[0][key]
                   for key, t in tables.tensors.items()}
        for key in rule.varying():
            # The number of segments compiled in: a size the kernel took as an input would not
            # be the param's, and every call would go through dynamo.
            torch._dynamo.mark_static(numbers[key], 0)
        numbers["seg"] = bucket.seg.to(_INDEX[name])
        return prepared(rule.segmented, rule.statics, p, g, states, numbers, bare=False)
    if name == "per element":
        expanded = {key: torch.empty(p.numel(), dtype=torch.float32, device=p.device) for key in rule.varying()}

        def expand() -> None:
            for key, out in expanded.items():
                torch.index_select(tables.f32.get(key, tables.tensors[key]), 0, bucket.seg, out=out)
        expand()
        call = prepared(rule.elementwise, rule.statics, p, g, states,
                        {key: expanded.get(key, tables.views[0][key]) for key in tables.tensors})

        def run() -> None:
            expand()
            call()
        return run
    if name == "one number":
        return prepared(rule.rule, rule.statics, p, g, states, tables.views[0])
    raise ValueError(f"unknown variant {name!r}")


def _ulps(a: Tensor, b: Tensor) -> float:
    """The largest difference between ``a`` and ``b`` in units of ``a``'s last place."""
    spacing = torch.finfo(a.dtype).eps * a.abs().clamp_min(torch.finfo(a.dtype).tiny)
    return float(((a - b).abs() / spacing).max())


def one(set_name: str, optimizer: str, layout: str, rounds: int, steps: int, device: torch.device) -> dict[str, Any]:
    names, params = zip(*sets.named(set_name))
    small = [i for i, t in enumerate(params) if t.numel() <= _engine.FUSED_PACK_MAX_NUMEL]
    if layout == "tensor":
        segment_of = list(range(len(small)))
    elif layout == "block":
        depth = groups.depths(list(names))
        segment_of = [depth[i] for i in small]
    else:
        raise ValueError(f"segments.py lays groups out by 'tensor' or 'block', not {layout!r}")
    # Params of one group next to each other, as a bucket packs them.
    order = sorted(range(len(small)), key=lambda j: segment_of[j])
    rule = Rule(optimizer)
    sizes = [params[small[j]].numel() for j in order]
    start = Bucket(sizes, [segment_of[j] for j in order], rule, device)
    lrs = [1e-3 * groups.DECAY ** (i % 20) * (1 + i / 1000) for i in range(len(start.segments))]
    buckets = {name: start.copy() for name in VARIANTS}
    tables = Tables(rule, lrs, device)
    tables.write(1)
    # Compiled first at the size the engine warms its kernels at, which Inductor tunes for.
    warm = Bucket([_fused._WARM_NUMEL], [0], rule, device)
    for name in VARIANTS:
        variant(name, rule, warm, tables)
    # Each built (one step) from the same start, and checked.
    runs = {name: variant(name, rule, buckets[name], tables) for name in VARIANTS}
    runs["copies"] = start.copies([params[small[j]].shape for j in order])
    agreement = {name: max(_ulps(buckets["per group"].p, buckets[name].p),
                           *(_ulps(buckets["per group"].states[k], buckets[name].states[k]) for k in rule.keys))
                 for name in VARIANTS if name != "one number"}
    times: dict[str, list[float]] = {name: [] for name in (*runs, "numbers")}
    timer = timer_for(str(device))

    def repeat(run: Callable[[], None]) -> None:
        for _ in range(steps):
            run()
    for step in range(2, rounds + 2):
        times["numbers"].append(timer.seconds(lambda: tables.write(step)))
        for name, run in runs.items():
            times[name].append(timer.seconds(lambda: repeat(run)) / steps)
    return {"set": set_name, "optimizer": optimizer, "layout": layout, "segments": len(start.segments),
            "params": len(small), "numel": start.p.numel(), "rounds": rounds, "steps_per_round": steps,
            "agreement_ulps": agreement, "us": {name: statistics.median(v) * 1e6 for name, v in times.items()}}


def main(argv: Optional[Sequence[str]] = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", nargs="+", type=sets.check, default=["resnet50"])
    ap.add_argument("--optimizers", nargs="+", choices=["AdamW", "SGD"], default=["AdamW", "SGD"])
    ap.add_argument("--layouts", nargs="+", choices=["tensor", "block"], default=["tensor", "block"])
    ap.add_argument("--rounds", type=int, default=31)
    ap.add_argument("--steps-per-round", type=int, default=5)
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:n]")
    ap.add_argument("--json", type=Path, default=None, help="default: results/segments_<device type>.json")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    rows = []
    for set_name in args.sets:
        for optimizer in args.optimizers:
            for layout in args.layouts:
                row = one(set_name, optimizer, layout, args.rounds, args.steps_per_round, device)
                rows.append(row)
                print(f"{set_name:10} {optimizer:6} {layout:7} {row['segments']:4} segments {row['numel']:6} elements"
                      + "".join(f"  {name} {us:8.1f}" for name, us in row["us"].items()) + "   (µs)", flush=True)
    report.write_record(args.json or RESULTS / f"segments_{device.type}.json", "segments.py", argv, rows,
                        device=str(device), private_apis=_private.enabled())
    return rows


if __name__ == "__main__":
    main()
