"""What a new process pays before its first fused step, on the CPU: ``import torch_gd``, then
the first fused AdamW and SGD-momentum steps on a small CNN (the harness's ``lenet`` set), with
the caches warm (a previous process compiled the same kernels: torch_gd's kernel store and
Inductor's caches, and Inductor's alone with the store off) and cold (an empty
``TORCHINDUCTOR_CACHE_DIR``, where the store lives too), beside torch's fused first steps in the
same processes, and what importing parts of torch's compiler stack costs on its own (the floor
of any first step that goes through ``torch.compile``, AOTInductor's loader, or Inductor's
generated modules as they are). Each measurement is a fresh process with torch already
imported; the median over ``--repeats`` processes is reported.

    python benchmarks/warm_start.py                 # ~2 minutes (two cold compiles)
    python benchmarks/warm_start.py --repeats 2 --cold 0 --json /tmp/warm.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

RESULTS = Path(__file__).parent / "results"

# Run in the child: times from just after `import torch`, printed as one JSON line.
FIRST_STEPS = r"""
import json, time, torch
t0 = time.perf_counter()
import torch_gd
t1 = time.perf_counter()
from torch_gd.benchmark import sets
out = {"import torch_gd": t1 - t0}
for impl, lib in (("torch_gd fused", torch_gd), ("torch fused", torch.optim)):
    for name, kw in (("AdamW", dict(lr=1e-3)), ("SGD-momentum", dict(lr=0.01, momentum=0.9))):
        params = sets.parameters(sets.build("lenet"), "cpu", torch.float32)
        for p in params:
            p.grad = torch.randn_like(p)
        opt = getattr(lib, name.split("-")[0])(params, fused=True, **kw)
        t = time.perf_counter()
        opt.step()
        out[f"{impl} {name} first step"] = time.perf_counter() - t
        if lib is torch_gd:
            kernels = opt.describe()["kernels"]
            out[f"torch_gd {name} kernels loaded, compiled"] = [sum(k["loaded"] for k in kernels),
                                                                 sum(k["dynamo_calls"] for k in kernels)]
print(json.dumps(out))
"""
IMPORT = "import time, torch\nt = time.perf_counter()\nimport {module}\nprint(time.perf_counter() - t)\n"
# What torch.compile imports before reading any cache; what AOTInductor's loader imports; what
# Inductor's generated modules import at their top (the kernel store binds those names instead).
COMPILER_MODULES = ("torch._dynamo", "torch._inductor.compile_fx", "torch._inductor.package",
                    "torch._inductor.async_compile")


def _child(code: str, cache: str, store: bool = True) -> str:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
    env.pop("TORCH_GD_CACHE_DIR", None)  # the kernel store then lives in that cache too
    if not store:
        env["TORCH_GD_CACHE_DIR"] = "0"
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return run.stdout.strip().splitlines()[-1]


def _first_steps(cache: str, store: bool = True) -> dict[str, float]:
    times = json.loads(_child(FIRST_STEPS, cache, store))
    times["torch_gd: import + both first steps"] = (
        times["import torch_gd"] + times["torch_gd fused AdamW first step"] + times["torch_gd fused SGD-momentum first step"])
    return times


def _medians(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: round(statistics.median(r[k] for r in runs), 4) if isinstance(runs[0][k], float) else runs[0][k]
            for k in runs[0]}


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5, help="processes per warm measurement")
    ap.add_argument("--cold", type=int, default=2, help="processes with an empty compile cache")
    ap.add_argument("--json", type=Path, default=RESULTS / "warm_start_cpu.json")
    return ap


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    args = parser().parse_args(argv)
    import torch

    with tempfile.TemporaryDirectory() as warm:
        cold = [_first_steps(tempfile.mkdtemp(dir=warm)) for _ in range(args.cold)]
        _first_steps(warm)  # fills the cache the warm runs read
        runs, without = [], []
        for _ in range(args.repeats):  # interleaved, so that the machine's drift hits both
            runs.append(_first_steps(warm))
            without.append(_first_steps(warm, store=False))
        imports = {m: statistics.median(float(_child(IMPORT.format(module=m), warm)) for _ in range(args.repeats))
                   for m in COMPILER_MODULES}
    result = {
        "meta": {"torch": torch.__version__, "python": sys.version.split()[0], "threads": torch.get_num_threads(),
                 "load_average": os.getloadavg(), "repeats": args.repeats, "cold": args.cold,
                 "command": " ".join(["python", "benchmarks/warm_start.py", *map(str, argv or sys.argv[1:])])},
        "warm cache, s": _medians(runs),
        "warm Inductor caches, kernel store off, s": _medians(without),
        "cold cache, s": _medians(cold) if cold else {},
        "import after torch, s": {m: round(t, 4) for m, t in imports.items()},
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    for section in ("warm cache, s", "warm Inductor caches, kernel store off, s", "cold cache, s",
                    "import after torch, s"):
        print(section)
        for k, v in result[section].items():
            print(f"  {k:45s} {v:8.3f}" if isinstance(v, float) else f"  {k:45s} {v}")
    print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
