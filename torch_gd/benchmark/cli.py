"""``python -m torch_gd.benchmark``: step time, bandwidth, peak memory and cold compile time of
torch_gd's optimizers against torch.optim's, side by side on one device.

    python -m torch_gd.benchmark --quick     # seconds (the first run compiles the fused kernels)
    python -m torch_gd.benchmark             # every set, optimizer and implementation: long
    python -m torch_gd.benchmark --sets resnet50 my.models:build --optimizers Adam --dtype bf16
    python -m torch_gd.benchmark --sets lenet mlp-policy --groups one two block tensor

Prints a table and writes JSON, CSV and (with matplotlib) a PNG into --out.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from . import groups, report, sets
from .optimizers import IMPLS, OPTIMIZERS
from .run import Config, run
from .timing import TIMERS

QUICK = {"sets": sets.QUICK, "rounds": 3, "steps_per_round": 2, "memory": False, "compile_time": False}
FULL = {key: getattr(Config(), key) for key in QUICK}


def _checked(check: Callable[[str], str]) -> Callable[[str], str]:
    """``check`` as an argparse type: its ValueError becomes a usage error with its message."""
    def parse(value: str) -> str:
        try:
            return check(value)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return parse


def _impl(name: str) -> str:
    """An implementation's name, spaces optionally written as hyphens (torch-for-loop)."""
    by_cli_name = {i.replace(" ", "-"): i for i in IMPLS}
    if name.replace(" ", "-") not in by_cli_name:
        raise ValueError(f"unknown implementation {name!r}: one of {', '.join(by_cli_name)}")
    return by_cli_name[name.replace(" ", "-")]


def parser() -> argparse.ArgumentParser:
    """The options; --quick and the full run differ only in the defaults of what is not given."""
    ap = argparse.ArgumentParser(prog="python -m torch_gd.benchmark", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                    help="cpu or cuda (default: cuda if available)")
    ap.add_argument("--dtype", choices=sets.DTYPES, default="fp32", help="of params and grads")
    ap.add_argument("--optimizers", nargs="+", choices=OPTIMIZERS, default=list(OPTIMIZERS))
    ap.add_argument("--sets", "--set", nargs="+", type=_checked(sets.check), metavar="SET",
                    help=f"{', '.join(sets.NAMED)}, NxM (N tensors of M elements) or package.module:function "
                         f"returning an nn.Module or an iterable of params (default: {', '.join(sets.DEFAULT)})")
    ap.add_argument("--impls", nargs="+", type=_checked(_impl), default=list(IMPLS), metavar="IMPL",
                    help=", ".join(i.replace(" ", "-") for i in IMPLS))
    ap.add_argument("--groups", nargs="+", choices=groups.LAYOUTS, default=["one"],
                    help="param-group layouts, each timed for every implementation: one group; two (weight decay "
                         "on params with ndim >= 2 only); block (a group per block, lr*0.8^depth); tensor (a group "
                         "per tensor) (default: one)")
    ap.add_argument("--rounds", type=int, help="interleaved rounds; the median over them is reported (default 7)")
    ap.add_argument("--steps-per-round", type=int, help="steps a round takes the median of (default 3)")
    ap.add_argument("--timer", choices=TIMERS, default="wall",
                    help="CPU step times as wall time, or as the process's CPU time, which another "
                         "process's load does not inflate (default: wall)")
    ap.add_argument("--quick", action="store_true",
                    help="seconds: set 200x1000, 3 rounds of 2 steps, no memory or compile-time measurements")
    ap.add_argument("--memory", action=argparse.BooleanOptionalAction,
                    help="peak memory of each case, on the CPU in a subprocess (default: on unless --quick)")
    ap.add_argument("--compile-time", action=argparse.BooleanOptionalAction,
                    help="cold first step of torch_gd fused in a subprocess (default: on unless --quick)")
    ap.add_argument("--out", type=Path, default=Path("benchmark_results"), help="directory for the default outputs (default ./benchmark_results)")
    for ext in ("json", "csv", "png"):
        ap.add_argument(f"--{ext}", type=Path, help=f"{ext.upper()} output (default: OUT/DEVICE_DTYPE.{ext})")
    return ap


def config(args: argparse.Namespace) -> Config:
    """The run ``args`` ask for, --quick or full defaults filling what they leave out."""
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available here")
    given = {k: getattr(args, k) for k in FULL if getattr(args, k) is not None}
    chosen = {**(QUICK if args.quick else FULL), **given}
    return Config(optimizers=args.optimizers, impls=args.impls, groups=args.groups, device=args.device,
                  dtype=args.dtype, timer=args.timer, **chosen)


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """Run the benchmark ``argv`` (default: the command line) asks for, print the table, write
    the files; return the results."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser().parse_args(argv)
    result = run(config(args), command=shlex.join(["python", "-m", "torch_gd.benchmark", *map(str, argv)]))
    print(report.table(result))
    stem = args.out / f"{torch.device(args.device).type}_{args.dtype}"
    paths = {ext: getattr(args, ext) or stem.with_suffix(f".{ext}") for ext in ("json", "csv", "png")}
    for path in paths.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    report.write_json(paths["json"], result)
    report.write_csv(paths["csv"], result["rows"])
    skipped = report.write_png(paths["png"], result)
    print(*(f"wrote {paths[ext]}" for ext in ("json", "csv") + (() if skipped else ("png",))), sep="\n")
    if skipped:
        print(skipped)
    return result
