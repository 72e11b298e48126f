"""Peak memory of an optimizer step, each variant in its own process.

The CPU allocator keeps no counters, so each variant runs in a fresh subprocess that builds the
params and grads, records its peak RSS, then builds the optimizer and takes 3 steps; the number
is the growth of the peak RSS over that baseline (state + temporaries + scratch buffers).

    python benchmarks/peak_memory.py     # writes results/peak_memory_cpu.json
"""

from __future__ import annotations

import _child

CHILD = r"""
import resource, sys, torch, torchvision, torch_gd
which, impl = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
params = list(torchvision.models.resnet50().parameters())
for p in params:
    p.grad = torch.randn_like(p)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
cls = {"torch": torch.optim, "torch_gd": torch_gd}[which].Adam
kw = {"fused": {"fused": True}, "default": {}, "for-loop": {"foreach": False}, "foreach": {"foreach": True}}[impl]
opt = cls(params, lr=1e-3, **kw)
for _ in range(3):
    opt.step()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((peak - base) * 1024, sum(p.numel() * p.element_size() for p in params))
"""

VARIANTS = [("torch", "for-loop"), ("torch", "foreach"), ("torch", "fused"), ("torch_gd", "default"), ("torch_gd", "fused")]


def main() -> None:
    rows = []
    for which, impl in VARIANTS:
        growth, param_bytes = map(int, _child.run(CHILD, which, impl))
        rows.append({"impl": f"{which} {impl}", "peak_growth_mb": growth / 2**20, "param_mb": param_bytes / 2**20})
        print(f"Adam resnet50 {which:8} {impl:8}: peak RSS +{growth / 2**20:.0f} MB (params {param_bytes / 2**20:.0f} MB)")
    _child.record("peak_memory", rows)


if __name__ == "__main__":
    main()
