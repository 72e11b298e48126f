"""hypothesis strategies: param sets (shapes, dtypes, layouts) and per-step grad patterns."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from hypothesis import strategies as st

SHAPES = [(), (0,), (1,), (5,), (3, 4), (2, 3, 4, 5), (1, 3, 2, 2), (0, 3)]
LAYOUTS = ["contiguous", "channels_last", "transposed", "strided"]
DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]


@dataclass(frozen=True)
class ParamSpec:
    shape: tuple
    layout: str
    grad_layout: str


def make(shape: tuple, layout: str, dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    """A tensor of ``shape`` with values from ``gen`` laid out as ``layout``."""
    if layout == "channels_last" and len(shape) == 4:
        t = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
        return t.contiguous(memory_format=torch.channels_last)
    if layout == "transposed" and len(shape) >= 2:
        t = torch.randn(shape[::-1], generator=gen, dtype=torch.float64).to(dtype)
        return t.permute(*reversed(range(len(shape))))
    if layout == "strided" and len(shape) >= 1:
        big = torch.randn((2 * shape[0],) + shape[1:], generator=gen, dtype=torch.float64)
        return big.to(dtype)[::2]
    return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)


def make_param(spec: ParamSpec, dtype: torch.dtype, gen: torch.Generator) -> torch.nn.Parameter:
    return torch.nn.Parameter(make(spec.shape, spec.layout, dtype, gen))


@st.composite
def param_specs(draw, max_params: int = 4) -> list[ParamSpec]:
    n = draw(st.integers(1, max_params))
    return [
        ParamSpec(draw(st.sampled_from(SHAPES)), draw(st.sampled_from(LAYOUTS)),
                  draw(st.sampled_from(LAYOUTS)))
        for _ in range(n)
    ]


# Per step and param: a fresh random grad, no grad (None), or an all-zero grad.
GRAD_KINDS = ["dense", "dense", "dense", "none", "zero"]


@st.composite
def grad_patterns(draw, n_params: int, max_steps: int = 5) -> list[list[str]]:
    steps = draw(st.integers(1, max_steps))
    return [[draw(st.sampled_from(GRAD_KINDS)) for _ in range(n_params)] for _ in range(steps)]


def make_grad(p: torch.Tensor, spec: ParamSpec, kind: str, gen: torch.Generator):
    if kind == "none":
        return None
    g = make(tuple(p.shape), spec.grad_layout, p.dtype, gen)
    return g.zero_() if kind == "zero" else g
