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


def adam_step(
    p: Tensor,
    g: Tensor,
    state: dict,
    *,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    amsgrad: bool = False,
    maximize: bool = False,
    decoupled_weight_decay: bool = False,
    **_: object,
) -> tuple[Tensor, dict]:
    """Adam (Kingma & Ba, Algorithm 1) with L2 or decoupled (Loshchilov & Hutter) weight decay
    and AMSGrad (Reddi et al.), as torch documents it:
    m̂ = m/(1−β₁ᵗ), v̂ = v/(1−β₂ᵗ), p ← p − η·m̂/(√v̂ + ε)."""
    beta1, beta2 = betas
    g = -g if maximize else g
    if decoupled_weight_decay:
        p = p * (1 - lr * weight_decay)
    else:
        g = g + weight_decay * p
    zero = torch.zeros_like(p)
    t = state.get("step", 0) + 1
    m = beta1 * state.get("exp_avg", zero) + (1 - beta1) * g
    v = beta2 * state.get("exp_avg_sq", zero) + (1 - beta2) * g * g
    new = {"step": t, "exp_avg": m, "exp_avg_sq": v}
    if amsgrad:
        v = torch.maximum(state.get("max_exp_avg_sq", zero), v)
        new["max_exp_avg_sq"] = v
    m_hat, v_hat = m / (1 - beta1**t), v / (1 - beta2**t)
    return p - lr * m_hat / (v_hat.sqrt() + eps), new


def adamw_step(p: Tensor, g: Tensor, state: dict, **kw) -> tuple[Tensor, dict]:
    return adam_step(p, g, state, **{"weight_decay": 1e-2, **kw, "decoupled_weight_decay": True})


def adagrad_step(
    p: Tensor,
    g: Tensor,
    state: dict,
    *,
    lr: float = 1e-2,
    lr_decay: float = 0.0,
    weight_decay: float = 0.0,
    initial_accumulator_value: float = 0.0,
    eps: float = 1e-10,
    maximize: bool = False,
    **_: object,
) -> tuple[Tensor, dict]:
    """Adagrad (Duchi et al.) with torch's decayed rate η_t = η/(1 + (t−1)·δ):
    s ← s + g², p ← p − η_t·g/(√s + ε)."""
    g = -g if maximize else g
    g = g + weight_decay * p
    t = state.get("step", 0) + 1
    s = state.get("sum", torch.full_like(p, initial_accumulator_value)) + g * g
    return p - lr / (1 + (t - 1) * lr_decay) * g / (s.sqrt() + eps), {"step": t, "sum": s}


def rmsprop_step(
    p: Tensor,
    g: Tensor,
    state: dict,
    *,
    lr: float = 1e-2,
    alpha: float = 0.99,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    centered: bool = False,
    maximize: bool = False,
    **_: object,
) -> tuple[Tensor, dict]:
    """RMSprop (Hinton, lecture 6e), centered variant (Graves 2013) and momentum as torch
    documents: v ← αv + (1−α)g², σ = √(v − ḡ²) or √v, b ← μb + g/(σ+ε), p ← p − ηb."""
    g = -g if maximize else g
    g = g + weight_decay * p
    zero = torch.zeros_like(p)
    v = alpha * state.get("square_avg", zero) + (1 - alpha) * g * g
    new = {"step": state.get("step", 0) + 1, "square_avg": v}
    if centered:
        gbar = alpha * state.get("grad_avg", zero) + (1 - alpha) * g
        new["grad_avg"] = gbar
        sigma = (v - gbar * gbar).sqrt()
    else:
        sigma = v.sqrt()
    if momentum > 0:
        b = momentum * state.get("momentum_buffer", zero) + g / (sigma + eps)
        new["momentum_buffer"] = b
        return p - lr * b, new
    return p - lr * g / (sigma + eps), new


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


def adam_constant_gradient(p0: Tensor, g: Tensor, lr: float, eps: float, t: int) -> Tensor:
    """Adam with a constant gradient: m̂ = g and v̂ = g² at every step, so each step moves each
    coordinate by exactly η·g/(|g| + ε) and p_t = p₀ − t·η·g/(|g| + ε)."""
    return p0 - t * lr * g / (g.abs() + eps)


def sgd_quadratic_bowl(p0: Tensor, curvature: float, lr: float, t: int) -> Tensor:
    """Plain SGD on f(p) = ½·a·p²: the gradient a·p gives p_t = (1 − η·a)^t · p₀."""
    return (1 - lr * curvature) ** t * p0


def adagrad_constant_gradient(
    p0: Tensor, g: Tensor, lr: float, lr_decay: float, s0: float, eps: float, t: int
) -> Tensor:
    """Adagrad with a constant gradient: after k steps s_k = s₀ + k·g², so
    p_t = p₀ − Σ_{k=1..t} η/(1 + (k−1)δ) · g/(√(s₀ + k·g²) + ε)."""
    steps = torch.arange(1, t + 1, dtype=torch.float64).reshape(-1, *([1] * g.dim()))
    rates = lr / (1 + (steps - 1) * lr_decay)
    return p0 - (rates * g / ((s0 + steps * g * g).sqrt() + eps)).sum(0)


def rmsprop_constant_gradient(p0: Tensor, g: Tensor, lr: float, alpha: float, eps: float, t: int) -> Tensor:
    """RMSprop (no momentum, not centered) with a constant gradient: v_k = (1 − α^k)·g², so
    p_t = p₀ − η·Σ_{k=1..t} g/(√(1 − α^k)·|g| + ε)."""
    steps = torch.arange(1, t + 1, dtype=torch.float64).reshape(-1, *([1] * g.dim()))
    return p0 - (lr * g / ((1 - alpha**steps).sqrt() * g.abs() + eps)).sum(0)
