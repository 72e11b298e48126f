"""Adam and AdamW (Kingma & Ba 2015; Loshchilov & Hutter 2019), with AMSGrad."""

from __future__ import annotations

from typing import Any, Optional, Union

import torch
from torch import Tensor

from . import _checks
from ._engine import Spec
from ._ops import (
    Scalar,
    add_ratio_,
    div_,
    lerp_,
    addcmul_,
    bias_correction,
    complement,
    enabled,
    maximum_,
    l2_gradient,
    sqrt,
)
from .optimizer import Optimizer


def adam(
    p: Tensor,
    g: Tensor,
    *,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    max_exp_avg_sq: Optional[Tensor] = None,
    first: bool,
    step: Scalar,
    step_size: Scalar,
    bias_correction2_sqrt: Scalar,
    lr: Scalar,
    beta1: Scalar,
    beta2: Scalar,
    eps: Scalar,
    weight_decay: Scalar,
    decoupled: bool,
    amsgrad: bool,
    maximize: bool,
    scratch: Optional[Tensor] = None,
) -> None:
    """One Adam step at step count t, in place on ``p`` and the moments m (``exp_avg``),
    v (``exp_avg_sq``) and v_max (``max_exp_avg_sq``)::

        g ← −g                          if maximize
        p ← p·(1 − η·λ)                 if decoupled weight decay (AdamW)
        g ← g + λ·p                     if L2 weight decay
        m ← m + (1 − β₁)·(g − m)
        v ← β₂·v + (1 − β₂)·g²
        v_max ← max(v_max, v)           if amsgrad, and v_max replaces v below
        p ← p − η_t · m / (√v / √(1 − β₂ᵗ) + ε)

    with η_t (``step_size``) and √(1 − β₂ᵗ) (``bias_correction2_sqrt``) from
    :func:`adam_coefficients`. Temporaries go to ``scratch`` when the engine gives one.
    """
    m, v = exp_avg, exp_avg_sq
    if decoupled and enabled(weight_decay):
        p.mul_(1 - lr * weight_decay)
    g = l2_gradient(g, p, 0 if decoupled else weight_decay, maximize, out=scratch)
    lerp_(m, g, complement(beta1, m))
    addcmul_(v.mul_(beta2), g, g, 1 - beta2)
    if amsgrad:
        v = maximum_(max_exp_avg_sq, v)
    denom = div_(sqrt(v, out=scratch), bias_correction2_sqrt).add_(eps)
    add_ratio_(p, m, denom, -step_size)


def adam_coefficients(step: Scalar, lr: Scalar, beta1: Scalar, beta2: Scalar, **_: Any) -> dict[str, Scalar]:
    """The step's scalars, in float64: η_t = η/(1 − β₁ᵗ) and √(1 − β₂ᵗ)."""
    return {
        "step_size": lr / bias_correction(beta1, step),
        "bias_correction2_sqrt": bias_correction(beta2, step) ** 0.5,
    }


class Adam(Optimizer):
    __doc__ = """Adam, a drop-in for ``torch.optim.Adam`` (torch 2.14.1's signature, defaults,
    errors and state: ``step``, ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``).
    ``capturable=True`` also works on the CPU, and tensor ``lr``/``betas`` work on every path.
    """ + (adam.__doc__ or "")

    _spec = Spec(rule=adam, uses_step=True, coefficients=adam_coefficients)
    _flag_defaults = {"amsgrad": False, "maximize": False, "foreach": None, "capturable": False,
                      "differentiable": False, "decoupled_weight_decay": False, "fused": None}

    def __init__(
        self,
        params: Any,
        lr: Union[float, Tensor] = 1e-3,
        betas: tuple[Union[float, Tensor], Union[float, Tensor]] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsgrad: bool = False,
        *,
        foreach: Optional[bool] = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: Optional[bool] = None,
        decoupled_weight_decay: bool = False,
        check_finite: bool = False,
        param_update: Optional[str] = None,
        state_dtype: Optional[torch.dtype] = None,
        generator: Optional[torch.Generator] = None,
    ) -> None:
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "amsgrad": amsgrad,
            "maximize": maximize,
            "foreach": foreach,
            "capturable": capturable,
            "differentiable": differentiable,
            "fused": fused,
            "decoupled_weight_decay": decoupled_weight_decay,
        }
        super().__init__(params, defaults, check_finite=check_finite, param_update=param_update,
                         state_dtype=state_dtype, generator=generator)

    def _normalize(self, defaults: dict[str, Any]) -> dict[str, Any]:
        # torch stores 1-element tensor betas as 0-dim tensors.
        betas = tuple(b.squeeze() if isinstance(b, Tensor) and b.dim() != 0 else b for b in defaults["betas"])
        return {**defaults, "betas": betas}

    def _check_group(self, group: dict[str, Any]) -> None:
        betas = group["betas"]
        _checks.torch_nonnegative(group, {"lr": "learning rate", "eps": "epsilon value"})
        _checks.pair("betas", betas)
        for i, beta in enumerate(betas):
            _checks.real(
                f"betas[{i}]", beta, high=1.0, high_open=True,
                torch_message=f"Invalid beta parameter at index {i}: {beta}",
                torch_rejects=lambda x: not 0.0 <= x < 1.0,
            )
        _checks.torch_nonnegative(group, {"weight_decay": "weight_decay value"})
        if not (all(isinstance(b, float) for b in betas) or all(isinstance(b, Tensor) for b in betas)):
            raise ValueError("betas must be either both floats or both Tensors")
        super()._check_group(group)

    def _sparse_error(self, group: dict[str, Any]) -> Optional[str]:
        return "Adam does not support sparse gradients, please consider SparseAdam instead"

    def _state_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq", "max_exp_avg_sq") if group["amsgrad"] else ("exp_avg", "exp_avg_sq")

    def _hyper(self, group: dict[str, Any]) -> dict[str, Any]:
        beta1, beta2 = group["betas"]
        return {
            "lr": group["lr"],
            "beta1": beta1,
            "beta2": beta2,
            "eps": group["eps"],
            "weight_decay": group["weight_decay"],
            "decoupled": group["decoupled_weight_decay"],
            "amsgrad": group["amsgrad"],
            "maximize": group["maximize"],
        }


class AdamW(Adam):
    __doc__ = """AdamW, a drop-in for ``torch.optim.AdamW``: Adam with decoupled weight decay,
    always on (also after ``load_state_dict``). See :class:`Adam` for the update."""

    def __init__(
        self,
        params: Any,
        lr: Union[float, Tensor] = 1e-3,
        betas: tuple[Union[float, Tensor], Union[float, Tensor]] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: Optional[bool] = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: Optional[bool] = None,
        check_finite: bool = False,
        param_update: Optional[str] = None,
        state_dtype: Optional[torch.dtype] = None,
        generator: Optional[torch.Generator] = None,
    ) -> None:
        super().__init__(
            params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach, maximize=maximize,
            capturable=capturable, differentiable=differentiable, fused=fused,
            decoupled_weight_decay=True, check_finite=check_finite, param_update=param_update,
            state_dtype=state_dtype, generator=generator,
        )

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group["decoupled_weight_decay"] = True

