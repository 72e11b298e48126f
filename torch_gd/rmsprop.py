"""RMSprop (Hinton's lecture 6e; centered form of Graves 2013), with momentum."""

from __future__ import annotations

from typing import Any, Optional, Union

import torch
from torch import Tensor

from . import _checks
from ._engine import Spec
from ._ops import Scalar, add_ratio_, addcmul_, complement, l2_gradient, lerp_, saved, sqrt, sub_scaled_
from .optimizer import Optimizer


def rmsprop(
    p: Tensor,
    g: Tensor,
    *,
    square_avg: Tensor,
    momentum_buffer: Optional[Tensor] = None,
    grad_avg: Optional[Tensor] = None,
    first: bool,
    step: Scalar,
    lr: Scalar,
    alpha: Scalar,
    eps: Scalar,
    weight_decay: Scalar,
    momentum: Scalar,
    centered: bool,
    maximize: bool,
    scratch: Optional[Tensor] = None,
) -> None:
    """One RMSprop step, in place on ``p``, v (``square_avg``), b (``momentum_buffer``) and
    ḡ (``grad_avg``)::

        g ← −g                          if maximize
        g ← g + λ·p                     if λ ≠ 0
        v ← α·v + (1 − α)·g²
        ḡ ← ḡ + (1 − α)·(g − ḡ)          if centered
        σ ← √(v − ḡ²) if centered, else √v
        b ← μ·b + g/(σ + ε),  p ← p − η·b     if μ > 0
        p ← p − η·g/(σ + ε)                    otherwise
    """
    v, b = square_avg, momentum_buffer
    g = l2_gradient(g, p, weight_decay, maximize, out=scratch)
    addcmul_(v.mul_(alpha), g, g, complement(alpha, v))
    if centered:
        lerp_(grad_avg, g, complement(alpha, grad_avg))
        mean = saved(grad_avg)
        spread = v.addcmul(mean, mean, value=-1)
        sigma = sqrt(spread, out=spread)
    else:
        sigma = sqrt(v)
    sigma.add_(eps)
    if b is not None:
        add_ratio_(b.mul_(momentum), g, sigma, 1)
        sub_scaled_(p, b, lr)
    else:
        add_ratio_(p, g, sigma, -lr)


class RMSprop(Optimizer):
    __doc__ = """RMSprop, a drop-in for ``torch.optim.RMSprop`` (torch 2.14.1's signature,
    defaults, errors and state: ``step``, ``square_avg``, ``momentum_buffer``, ``grad_avg``).
    ``capturable=True`` also works on the CPU. ``fused=True`` (keyword-only, after torch's
    arguments; torch has no fused RMSprop) runs the update as one compiled kernel.
    """ + (rmsprop.__doc__ or "")

    _spec = Spec(rule=rmsprop, uses_step=True)
    _flag_defaults = {"centered": False, "foreach": None, "maximize": False, "differentiable": False,
                      "capturable": False, "fused": None}

    def __init__(
        self,
        params: Any,
        lr: Union[float, Tensor] = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0,
        momentum: float = 0,
        centered: bool = False,
        capturable: bool = False,
        foreach: Optional[bool] = None,
        maximize: bool = False,
        differentiable: bool = False,
        *,
        fused: Optional[bool] = None,
        check_finite: bool = False,
        param_update: Optional[str] = None,
        state_dtype: Optional[torch.dtype] = None,
        generator: Optional[torch.Generator] = None,
    ) -> None:
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "alpha": alpha,
            "eps": eps,
            "centered": centered,
            "weight_decay": weight_decay,
            "capturable": capturable,
            "foreach": foreach,
            "maximize": maximize,
            "differentiable": differentiable,
            "fused": fused,
        }
        super().__init__(params, defaults, check_finite=check_finite, param_update=param_update,
                         state_dtype=state_dtype, generator=generator)

    def __setstate__(self, state: dict[str, Any]) -> None:
        for group in state.get("param_groups", []):
            group.setdefault("momentum", 0)
        super().__setstate__(state)

    def _check_group(self, group: dict[str, Any]) -> None:
        _checks.torch_nonnegative(group, {
            "lr": "learning rate",
            "eps": "epsilon value",
            "momentum": "momentum value",
            "weight_decay": "weight_decay value",
        })
        alpha = group["alpha"]
        _checks.real("alpha", alpha, high=1.0, torch_message=f"Invalid alpha value: {alpha}",
                     torch_rejects=lambda x: not 0.0 <= x)
        super()._check_group(group)

    def _sparse_error(self, group: dict[str, Any]) -> Optional[str]:
        return "RMSprop does not support sparse gradients"

    def _state_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        keys = ("square_avg",)
        if isinstance(group["momentum"], Tensor) or group["momentum"] > 0:
            keys += ("momentum_buffer",)
        if group["centered"]:
            keys += ("grad_avg",)
        return keys

    def _hyper(self, group: dict[str, Any]) -> dict[str, Any]:
        return {
            "lr": group["lr"],
            "alpha": group["alpha"],
            "eps": group["eps"],
            "weight_decay": group["weight_decay"],
            "momentum": group["momentum"],
            "centered": group["centered"],
            "maximize": group["maximize"],
        }
