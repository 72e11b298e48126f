"""Fill the kernel store ahead of time, so that even a process's first fused step loads its
kernels instead of compiling them (the store fills itself as fused steps run; this is for an
image or a job launcher that wants the compiling done before the workers start).

    python -m torch_gd.precompile                          # the usual configurations, fp32
    python -m torch_gd.precompile --dtype float32 bfloat16
    python -m torch_gd.precompile "SGD:momentum=0.9,nesterov=True" "Adam:amsgrad=True"

A configuration is an optimizer's name and, after a colon, keyword arguments as Python
literals; each is run for three fused steps on the CPU (the first steps have kernels of their
own) with a small packed bucket and one param above the packing threshold. A kernel differs by
the optimizer's flags and by which hyperparameters are zero, not by their values. Steps under a
GradScaler or a pending clip use kernels of their own, compiled (and stored) at their first
use. Kernels are stored per number of threads: run it with the threads the training will use.
"""

from __future__ import annotations

import argparse
import ast
import sys
from typing import Any, Optional, Sequence

import torch

import torch_gd

from . import _kernel_store, _private

USUAL = ("SGD", "SGD:momentum=0.9", "SGD:momentum=0.9,weight_decay=5e-4", "SGD:momentum=0.9,nesterov=True",
         "Adam", "Adam:weight_decay=0.01", "AdamW", "Adagrad", "RMSprop", "RMSprop:momentum=0.9")
OPTIMIZERS = ("SGD", "Adam", "AdamW", "Adagrad", "RMSprop")
_SHAPES = ((64, 3), (100,), (70000,))


def parse(config: str) -> tuple[str, dict[str, Any]]:
    """``"SGD:momentum=0.9,nesterov=True"`` -> ``("SGD", {"momentum": 0.9, "nesterov": True})``."""
    name, _, args = config.partition(":")
    name = name.strip()
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r} in {config!r}; expected one of {', '.join(OPTIMIZERS)}")
    unreadable = ValueError(f"cannot read the arguments of {config!r}: expected name=literal pairs separated by commas")
    try:
        call = ast.parse(f"f({args})", mode="eval").body
        if not isinstance(call, ast.Call) or call.args or any(kw.arg is None for kw in call.keywords):
            raise unreadable
        return name, {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}
    except (SyntaxError, ValueError):
        raise unreadable from None


def run(configs: Sequence[str], dtypes: Sequence[torch.dtype]) -> dict[str, int]:
    """Run each configuration's first fused steps; returns the kernels loaded and compiled."""
    parsed = [parse(c) for c in configs]  # every configuration read before anything is compiled
    gen = torch.Generator().manual_seed(0)
    counts = {"loaded": 0, "compiled": 0}
    for dtype in dtypes:
        for name, kwargs in parsed:
            params = [torch.nn.Parameter(torch.randn(s, generator=gen).to(dtype)) for s in _SHAPES]
            opt = getattr(torch_gd, name)(params, **{**kwargs, "fused": True})
            for _ in range(3):
                for p in params:
                    p.grad = torch.randn(p.shape, generator=gen).to(dtype)
                opt.step()
            for k in opt.describe()["kernels"]:
                counts["loaded"] += k["loaded"]
                counts["compiled"] += k["dynamo_calls"]
    return counts


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m torch_gd.precompile", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("configs", nargs="*", default=list(USUAL), help="optimizer configurations (default: %(default)s)")
    ap.add_argument("--dtype", nargs="+", default=["float32"], choices=["float32", "float64", "bfloat16", "float16"])
    args = ap.parse_args(argv)
    if not _kernel_store.usable(torch.device("cpu")):
        print(f"the kernel store is not used here ({_kernel_store.ENV}=0, the private fast paths off "
              f"({_private.ENV}), or a default place every user can write to): nothing to fill", file=sys.stderr)
        return 1
    try:
        counts = run(args.configs, [getattr(torch, d) for d in args.dtype])
    except ValueError as exc:
        ap.error(str(exc))
    print(f"{_kernel_store.root()}: {counts['compiled']} kernels compiled (and stored), {counts['loaded']} loaded from the store")
    return 0


if __name__ == "__main__":
    sys.exit(main())
