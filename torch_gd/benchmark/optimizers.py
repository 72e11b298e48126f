"""The optimizers and implementations compared, and the memory traffic of one step."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Optional

import torch

import torch_gd


@dataclass(frozen=True)
class OptimizerSpec:
    """One optimizer in torch and in torch_gd, the hyperparameters it is benchmarked with, and
    how many param-sized state tensors its step reads and writes."""

    theirs: type[torch.optim.Optimizer]
    ours: type[torch.optim.Optimizer]
    kwargs: dict[str, Any]
    state_tensors: int


OPTIMIZERS = {
    "Adam": OptimizerSpec(torch.optim.Adam, torch_gd.Adam, {"lr": 1e-3}, 2),
    "AdamW": OptimizerSpec(torch.optim.AdamW, torch_gd.AdamW, {"lr": 1e-3, "weight_decay": 1e-2}, 2),
    "SGD": OptimizerSpec(torch.optim.SGD, torch_gd.SGD, {"lr": 1e-2, "momentum": 0.9}, 1),
    "Adagrad": OptimizerSpec(torch.optim.Adagrad, torch_gd.Adagrad, {"lr": 1e-2}, 1),
    "RMSprop": OptimizerSpec(torch.optim.RMSprop, torch_gd.RMSprop, {"lr": 1e-2, "momentum": 0.9}, 2),
}


@dataclass(frozen=True)
class Impl:
    library: str
    flags: dict[str, Any]


IMPLS = {
    "torch for-loop": Impl("torch", {"foreach": False}),
    "torch foreach": Impl("torch", {"foreach": True}),
    "torch fused": Impl("torch", {"fused": True}),
    "torch_gd default": Impl("torch_gd", {}),
    "torch_gd fused": Impl("torch_gd", {"fused": True}),
}
TORCH_EAGER = ("torch for-loop", "torch foreach")
TORCH = (*TORCH_EAGER, "torch fused")
# Implementations whose first step compiles kernels (torch's fused ones are prebuilt).
COMPILED = ("torch_gd fused",)


def build(optimizer: str, impl: str,
          params: list[torch.nn.Parameter] | list[dict[str, Any]]) -> torch.optim.Optimizer:
    """``optimizer`` over ``params`` (or param-group dicts) as implementation ``impl`` would run
    it. The benchmark hyperparameters and the implementation's flags are defaults, so every
    group inherits them: torch's fused step needs every group fused."""
    spec, how = OPTIMIZERS[optimizer], IMPLS[impl]
    cls = spec.theirs if how.library == "torch" else spec.ours
    return cls(params, **spec.kwargs, **how.flags)


def planned_with(opt: torch.optim.Optimizer, patches: list[tuple[Any, dict[str, Any]]], steps: int = 3) -> None:
    """Take ``steps`` steps of ``opt`` (grads already set) with the attributes of each object of
    ``patches`` (a module's constants, an optimizer's ``Spec``) set to these values, restored
    after: what the engine plans in its first steps (buckets, runs) then follows them, and is
    kept while nothing changes."""
    saved = [(obj, name, getattr(obj, name)) for obj, values in patches for name in values]
    for obj, values in patches:
        for name, value in values.items():
            setattr(obj, name, value)
    try:
        for _ in range(steps):
            opt.step()
    finally:
        for obj, name, value in saved:
            setattr(obj, name, value)


def rehearse(optimizer: str, impl: str, device: str, dtype: torch.dtype) -> None:
    """Two steps on a tiny param: what a first step initialises or compiles once per process
    is then done."""
    p = torch.nn.Parameter(torch.zeros(8, device=device, dtype=dtype))
    p.grad = torch.ones_like(p)
    opt = build(optimizer, impl, [p])
    opt.step()
    opt.step()


def unavailable(optimizer: str, impl: str, device: str, dtype: torch.dtype) -> Optional[str]:
    """Why torch cannot run ``impl`` of ``optimizer`` here, or None. torch_gd's implementations
    are never skipped: their failures are bugs to see."""
    if IMPLS[impl].library != "torch":
        return None
    spec = OPTIMIZERS[optimizer]
    missing = [f for f in IMPLS[impl].flags if f not in inspect.signature(spec.theirs).parameters]
    if missing:
        return f"torch.optim.{optimizer} has no {'/'.join(missing)} implementation"
    try:
        rehearse(optimizer, impl, device, dtype)
    except (RuntimeError, TypeError, ValueError) as e:
        return f"torch.optim.{optimizer} {impl}: {str(e).splitlines()[0]}"
    return None


def bytes_per_element(optimizer: str, dtype: torch.dtype) -> int:
    """Bytes one step moves per param element: it reads the param, the grad and each state
    tensor, and writes the param and each state tensor (fp32 Adam: 7 × 4 = 28)."""
    return (3 + 2 * OPTIMIZERS[optimizer].state_tensors) * dtype.itemsize
