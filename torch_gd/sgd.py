"""Stochastic gradient descent with momentum, dampening, Nesterov and weight decay."""

from __future__ import annotations

from typing import Any, Optional, Union

import torch
from torch import Tensor

from . import _checks
from ._engine import Spec
from ._ops import Scalar, add_scaled, add_scaled_, assign_, enabled, l2_gradient, sub_scaled_
from .optimizer import Optimizer


def sgd(
    p: Tensor,
    g: Tensor,
    *,
    momentum_buffer: Optional[Tensor] = None,
    first: Union[bool, Tensor],
    lr: Scalar,
    momentum: Scalar,
    dampening: Scalar,
    weight_decay: Scalar,
    nesterov: bool,
    maximize: bool,
    scratch: Optional[Tensor] = None,
) -> None:
    """One SGD step, in place on ``p`` and the momentum buffer ``b`` (``momentum_buffer``)::

        g ← −g                      if maximize
        g ← g + λ·p                 if λ ≠ 0
        b ← g          at the first step,  else  b ← μ·b + (1 − τ)·g      (when μ ≠ 0)
        d ← g + μ·b    if nesterov,        else  d ← b                    (when μ ≠ 0)
        p ← p − η·d

    Temporaries go to ``scratch`` (p-shaped, may be ``g`` itself) when the engine gives one.
    """
    g = l2_gradient(g, p, weight_decay, maximize, out=scratch)
    d, b = g, momentum_buffer
    if b is not None:
        if isinstance(first, Tensor):
            # Fused: whether this is the first applied step is known only on the device.
            b.copy_(torch.where(first, g, add_scaled(b * momentum, g, 1 - dampening)))
        elif first:
            # torch detaches here (clone(grad).detach()), which cuts differentiable=True's
            # gradient through the first step; we keep it.
            assign_(b, g)
        else:
            add_scaled_(b.mul_(momentum), g, 1 - dampening)
        d = add_scaled(g, b, momentum, out=scratch) if nesterov else b
    sub_scaled_(p, d, lr)


class SGD(Optimizer):
    __doc__ = """Stochastic gradient descent, a drop-in for ``torch.optim.SGD``.

    Same signature, defaults, state (``momentum_buffer``) and results as torch 2.14.1's SGD;
    see docs/differences.md for where torch_gd deliberately differs. ``capturable`` (keyword-only, after
    torch's arguments) is accepted for symmetry: SGD keeps no step and never reads the device.
    """ + (sgd.__doc__ or "")

    # Three ops a step (momentum), which torch's multi-tensor ops make for a run of params about
    # as cheaply as for a flat buffer: packing's copies and a bucket's own cost are repaid only by
    # many small params (``benchmarks/eager_runs.py``: 10000-element params packed took 1.5× torch's
    # step, in runs 0.85–0.9×; 2000 of 1000 elements in runs 1.13×, packed 0.83×).
    _spec = Spec(rule=sgd, uses_first=True, pack_max_numel=1 << 12, pack_min_params=16)
    _flag_defaults = {"nesterov": False, "maximize": False, "foreach": None, "differentiable": False,
                      "fused": False, "capturable": False}

    def __init__(
        self,
        params: Any,
        lr: Union[float, Tensor] = 1e-3,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: Union[float, Tensor] = 0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: Optional[bool] = None,
        differentiable: bool = False,
        fused: Optional[bool] = None,
        capturable: bool = False,
        check_finite: bool = False,
        param_update: Optional[str] = None,
        state_dtype: Optional[torch.dtype] = None,
        generator: Optional[torch.Generator] = None,
    ) -> None:
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "dampening": dampening,
            "weight_decay": weight_decay,
            "nesterov": nesterov,
            "maximize": maximize,
            "foreach": foreach,
            "differentiable": differentiable,
            "fused": fused,
            "capturable": capturable,
        }
        super().__init__(params, defaults, check_finite=check_finite, param_update=param_update,
                         state_dtype=state_dtype, generator=generator)

    def _check_group(self, group: dict[str, Any]) -> None:
        lr, momentum, wd = group["lr"], group["momentum"], group["weight_decay"]
        _checks.real("lr", lr, torch_message=f"Invalid learning rate: {lr}")
        _checks.real("momentum", momentum, torch_message=f"Invalid momentum value: {momentum}")
        _checks.real("dampening", group["dampening"], high=1.0, tensor_ok=False)
        _checks.real("weight_decay", wd, torch_message=f"Invalid weight_decay value: {wd}")
        super()._check_group(group)
        if group["nesterov"] and (_not_positive(momentum) or group["dampening"] != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")

    def _state_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("momentum_buffer",) if enabled(group["momentum"]) else ()

    def _hyper(self, group: dict[str, Any]) -> dict[str, Any]:
        return {
            "lr": group["lr"],
            "momentum": group["momentum"],
            "dampening": group["dampening"],
            "weight_decay": group["weight_decay"],
            "nesterov": group["nesterov"],
            "maximize": group["maximize"],
        }


def _not_positive(x: Scalar) -> bool:
    return float(x) <= 0
