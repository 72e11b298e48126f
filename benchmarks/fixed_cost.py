"""What a step's fixed cost (per call, per group, per tensor) decides, on the CPU, with the
harness (``torch_gd.benchmark``) timing every case interleaved with torch's:

- the small sets (mlp-policy, lenet, mlp-layernorm: under 0.11M elements, so a step is nearly
  all fixed cost), every implementation, one param group;
- resnet50 and vit_b_16 under each param-group layout (one, two, block, tensor; see
  ``torch_gd.benchmark.groups``): torch foreach and torch fused against torch_gd default and
  torch_gd fused, so each extra group's cost shows against one group and against torch's.

AdamW and SGD, 15 rounds, no peak-memory or compile-time subprocesses. Writes
results/fixed_cost_cpu.json (the harness's rows, each with its ``groups``) and prints our step
time over torch's on the small sets, and per layout each path's time over its own one-group
time (both timed in the same rounds: the machine's drift between cases would otherwise decide
the ratio) and ours over torch's counterpart with the same groups.

    python benchmarks/fixed_cost.py        # long: resnet50 and vit_b_16 under four layouts
    python benchmarks/fixed_cost.py --rounds 2 --small-sets lenet --group-sets lenet --groups two \\
        --json /tmp/fixed_cost.json        # seconds (plus compiling the fused kernels)
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from torch_gd.benchmark import groups, sets
from torch_gd.benchmark.optimizers import IMPLS, OPTIMIZERS, TORCH
from torch_gd.benchmark.run import Config, run
from torch_gd.benchmark.timing import TIMERS

RESULTS = Path(__file__).parent / "results"
GROUP_SETS = ("resnet50", "vit_b_16")
GROUP_IMPLS = ("torch foreach", "torch fused", "torch_gd default", "torch_gd fused")
OURS = tuple(i for i, how in IMPLS.items() if how.library == "torch_gd")
# The torch path each of ours is compared with under the same groups: fused with fused, our
# default (eager, packed) with torch's eager multi-tensor path.
COUNTERPART = {"torch_gd default": "torch foreach", "torch_gd fused": "torch fused"}


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--optimizers", nargs="+", choices=OPTIMIZERS, default=["AdamW", "SGD"])
    ap.add_argument("--small-sets", nargs="*", type=sets.check, default=list(sets.SMALL), metavar="SET",
                    help="sets timed with every implementation and one group (none: skip)")
    ap.add_argument("--group-sets", nargs="*", type=sets.check, default=list(GROUP_SETS), metavar="SET",
                    help="sets timed under each layout (none: skip)")
    ap.add_argument("--groups", nargs="+", choices=groups.LAYOUTS, default=list(groups.LAYOUTS),
                    help="layouts of the group sets; one, the baseline of the ratios, is always timed")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--timer", choices=TIMERS, default="wall",
                    help="wall time, or the process's CPU time (robust to other processes' load)")
    ap.add_argument("--steps-per-round", type=int, default=Config.steps_per_round)
    ap.add_argument("--json", type=Path, default=RESULTS / "fixed_cost_cpu.json")
    return ap


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """Run both parts, write the JSON, print the tables; return the results."""
    argv = sys.argv[1:] if argv is None else list(argv)
    ap = parser()
    args = ap.parse_args(argv)
    if not args.small_sets and not args.group_sets:
        ap.error("no sets: give --small-sets or --group-sets")
    command = shlex.join(["python", "benchmarks/fixed_cost.py", *map(str, argv)])
    layouts = list(dict.fromkeys(["one", *args.groups]))
    small = _part(args, args.small_sets, tuple(IMPLS), ["one"], command)
    grouped = _part(args, args.group_sets, GROUP_IMPLS, layouts, command)
    result = _merged([part for part in (small, grouped) if part])
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    if small:
        print(small_table(small["rows"]))
    if grouped:
        print(groups_table(grouped["rows"]))
    print(f"wrote {args.json}")
    return result


def _part(args: argparse.Namespace, set_names: Sequence[str], impls: Sequence[str], layouts: Sequence[str],
          command: str) -> Optional[dict[str, Any]]:
    """One harness run over ``set_names``, or None if there are none."""
    if not set_names:
        return None
    config = Config(optimizers=args.optimizers, sets=set_names, impls=impls, groups=layouts, device="cpu",
                    rounds=args.rounds, steps_per_round=args.steps_per_round, memory=False, compile_time=False,
                    timer=args.timer, paired_one=True)
    return run(config, command)


def _merged(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One result of both runs: the first's meta with every note, all rows, a triad per set."""
    triads = {t["set"]: t for part in parts for t in part["triad"]}
    return {"meta": {**parts[0]["meta"], "notes": [n for part in parts for n in part["meta"]["notes"]]},
            "rows": [r for part in parts for r in part["rows"]], "triad": list(triads.values())}


def _ratio(row: dict[str, Any], medians: dict[tuple, float], layout: str, impl: str) -> str:
    """``row``'s time over ``impl``'s on the same optimizer and set under ``layout``."""
    other = medians.get((row["optimizer"], row["set"], layout, impl))
    return "—" if other is None else f"{row['median_ms'] / other:.2f}"


def _medians(rows: list[dict[str, Any]]) -> dict[tuple, float]:
    return {(r["optimizer"], r["set"], r["groups"], r["impl"]): r["median_ms"] for r in rows}


def small_table(rows: list[dict[str, Any]]) -> str:
    """Each of our paths' step time over each of torch's, one group."""
    medians = _medians(rows)
    body = [[r["optimizer"], r["set"], r["impl"], f"{r['median_ms']:.3g}",
             *(_ratio(r, medians, r["groups"], theirs) for theirs in TORCH)] for r in rows if r["impl"] in OURS]
    return _text("Small sets, one param group: our step time over torch's (below 1: faster)",
                 ["optimizer", "set", "impl", "ms", *(f"/{theirs}" for theirs in TORCH)], body, 3)


def groups_table(rows: list[dict[str, Any]]) -> str:
    """Each path's step time over its own with one group (timed in the same rounds where the
    row has ``one_group_ms``), and ours over torch's counterpart with the same groups."""
    medians = _medians(rows)
    body = [[r["optimizer"], r["set"], r["groups"], str(r["param_groups"]), r["impl"], f"{r['median_ms']:.3g}",
             f"{r['median_ms'] / r['one_group_ms']:.2f}" if r.get("one_group_ms") else _ratio(r, medians, "one", r["impl"]),
             _ratio(r, medians, r["groups"], COUNTERPART[r["impl"]]) if r["impl"] in COUNTERPART else ""]
            for r in rows]
    return _text("Param-group layouts: step time over the same path's with one group, and ours over torch's "
                 "with the same groups (fused over torch fused, default over torch foreach)",
                 ["optimizer", "set", "groups", "n", "impl", "ms", "/one group", "/torch"], body, 5)


def _text(title: str, header: list[str], body: list[list[str]], text_columns: int) -> str:
    """An aligned table: the first ``text_columns`` left-aligned, numbers right-aligned."""
    lines = [header, *body]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join([title] + ["  ".join(c.ljust(w) if i < text_columns else c.rjust(w)
                                          for i, (c, w) in enumerate(zip(line, widths))) for line in lines])


if __name__ == "__main__":
    main()
