"""The least a step over many small params can cost when Python reads the grads.

Any ``torch.optim.Optimizer`` finds its grads through ``p.grad``, one param at a time, and a
kernel over packed buffers needs them gathered. ``Floor`` does only that: read every grad,
``torch.cat`` them into one flat buffer, and run torch's own fused kernel once over flat params
and state — no check of any grad, no copy of param values in or out (it assumes the params
already live in one flat buffer, which no drop-in can assume). Timed beside torch's fused step,
it bounds from below the ratio any such design can reach.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
from torch import Tensor

from . import optimizers, sets

_grad = operator.attrgetter("grad")


class Floor:
    """The floor step for ``optimizer`` over ``params`` (all with grads, one dtype and device):
    ``read`` reads the grads, ``gather`` also concatenates them, ``__call__`` also updates, and
    ``kernel`` only updates."""

    def __init__(self, optimizer: str, params: list[torch.nn.Parameter]) -> None:
        self.params = params
        self.flat = torch.nn.Parameter(torch.cat([p.detach().reshape(-1) for p in params]))
        self.flat.grad = torch.empty_like(self.flat)
        self.sizes = [p.numel() for p in params]
        self.fused = optimizers.build(optimizer, "torch fused", [self.flat])

    def read(self) -> list[Tensor]:
        return list(map(_grad, self.params))

    def gather(self) -> None:
        torch.cat([g.reshape(-1) if g.dim() != 1 else g for g in self.read()], out=self.flat.grad)

    def kernel(self) -> None:
        self.fused.step()

    def __call__(self) -> None:
        self.gather()
        self.kernel()

    def values(self) -> list[Tensor]:
        """The params' values as the floor holds them (views of the flat buffer)."""
        return [v.view_as(p) for v, p in zip(self.flat.detach().split(self.sizes), self.params)]


def calls(optimizer: str, params: list[torch.nn.Parameter]) -> dict[str, Any]:
    """What ``benchmarks/floor.py`` times side by side: torch's fused step, ours, and the floor
    and its parts, each on its own copy of ``params`` and grads."""
    theirs = optimizers.build(optimizer, "torch fused", sets.clone(params))
    ours = optimizers.build(optimizer, "torch_gd fused", sets.clone(params))
    floor = Floor(optimizer, sets.clone(params))
    return {
        "torch fused": theirs.step,
        "torch_gd fused": ours.step,
        "floor: read + cat + kernel": floor,
        "read grads": floor.read,
        "read + cat": floor.gather,
        "kernel on flat buffers": floor.kernel,
    }
