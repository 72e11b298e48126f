"""Float64 oracles: the published update equations written plainly, one function per optimizer,
and closed-form trajectories where they exist.

Each ``*_step`` takes float64 tensors (params, grads and state as plain dicts) and returns the new
param and state; it never mutates its inputs and shares no code with torch_gd.
"""

from __future__ import annotations

import torch
from torch import Tensor


def sgd_step(
    p: Tensor,
    g: Tensor,
    state: dict,
    *,
    lr: float,
    momentum: float = 0.0,
    dampening: float = 0.0,
    weight_decay: float = 0.0,
    nesterov: bool = False,
    maximize: bool = False,
) -> tuple[Tensor, dict]:
    """SGD as torch documents it (Sutskever et al. with torch's first-step buffer b₁ = g₁)."""
    g = -g if maximize else g
    g = g + weight_decay * p
    state = dict(state)
    if momentum != 0:
        b = state.get("momentum_buffer")
        b = g.clone() if b is None else momentum * b + (1 - dampening) * g
        state["momentum_buffer"] = b
        g = g + momentum * b if nesterov else b
    return p - lr * g, state


# ---------------------------------------------------------------- closed forms


def sgd_constant_gradient(p0: Tensor, g: Tensor, lr: float, t: int) -> Tensor:
    """Plain SGD with a constant gradient: p_t = p₀ − t·η·g."""
    return p0 - t * lr * g


def heavy_ball_constant_gradient(
    p0: Tensor, g: Tensor, lr: float, momentum: float, dampening: float, t: int
) -> Tensor:
    """Momentum SGD with a constant gradient g.

    b₁ = g and b_k = μ·b_{k−1} + (1−τ)·g give b_k = g·(μ^{k−1} + (1−τ)·(1−μ^{k−1})/(1−μ)),
    so p_t = p₀ − η·g·Σ_{k=1..t} [μ^{k−1} + (1−τ)(1−μ^{k−1})/(1−μ)]
           = p₀ − η·g·[S + (1−τ)(t − S)/(1−μ)]   with S = (1−μ^t)/(1−μ).
    """
    s = (1 - momentum**t) / (1 - momentum)
    return p0 - lr * g * (s + (1 - dampening) * (t - s) / (1 - momentum))


def sgd_quadratic_bowl(p0: Tensor, curvature: float, lr: float, t: int) -> Tensor:
    """Plain SGD on f(p) = ½·a·p²: the gradient a·p gives p_t = (1 − η·a)^t · p₀."""
    return (1 - lr * curvature) ** t * p0
