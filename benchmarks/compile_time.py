"""Cold first-step time of the fused path: a new process, a fresh TORCHINDUCTOR_CACHE_DIR.

The first fused step compiles the kernels it needs; with dynamic sizes their number does not
grow with the number of params. Each case runs in its own subprocess so nothing is cached.

    python benchmarks/compile_time.py      # writes results/compile_time_cpu.json
"""

from __future__ import annotations

import tempfile

import _child

CHILD = r"""
import sys, time, torch, torch_gd
n, name = int(sys.argv[1]), sys.argv[2]
params = [torch.nn.Parameter(torch.randn(1000)) for _ in range(n)]
for p in params:
    p.grad = torch.randn_like(p)
opt = getattr(torch_gd, name)(params, lr=1e-3, fused=True)
t = time.perf_counter()
opt.step()
first = time.perf_counter() - t
t = time.perf_counter()
opt.step()
print(first, time.perf_counter() - t)
"""


def cold_first_step(n: int, name: str) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as cache:
        first, second = _child.run(CHILD, n, name, TORCHINDUCTOR_CACHE_DIR=cache)
    return float(first), float(second)


def main() -> None:
    rows = []
    for name in ("Adam", "SGD"):
        for n in (200, 2000):
            first, second = cold_first_step(n, name)
            rows.append({"optimizer": name, "params": n, "first_step_s": first, "second_step_s": second})
            print(f"{name:5} {n:5} params: first fused step {first:.1f} s (cold cache), second {second * 1e3:.1f} ms")
    _child.record("compile_time", rows)


if __name__ == "__main__":
    main()
