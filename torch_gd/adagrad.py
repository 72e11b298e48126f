"""Adagrad (Duchi, Hazan & Singer 2011), with torch's learning-rate decay."""

from __future__ import annotations

from typing import Any, Optional, Union

import torch
from torch import Tensor

from . import _checks
from ._engine import Spec, scalar_dtype
from ._precision import BUFFERS, state_dtypes
from ._ops import Scalar, add_ratio_, addcmul_, enabled, l2_gradient, real_view, sqrt, sub_scaled_
from .optimizer import Optimizer


def adagrad(
    p: Tensor,
    g: Tensor,
    *,
    sum: Tensor,
    first: bool,
    step: Scalar,
    clr: Scalar,
    lr: Scalar,
    lr_decay: Scalar,
    weight_decay: Scalar,
    eps: Scalar,
    maximize: bool,
    scratch: Optional[Tensor] = None,
) -> None:
    """One Adagrad step at step count t, in place on ``p`` and the accumulator s (``sum``)::

        g ← −g                       if maximize
        g ← g + λ·p                  if λ ≠ 0
        s ← s + g²
        p ← p − η_t · g / (√s + ε)

    with η_t (``clr``) from :func:`adagrad_coefficients`.

    A sparse g updates only the entries it touches (its indices coalesced first).
    """
    s = sum
    g = l2_gradient(g, p, weight_decay, maximize, out=scratch)
    if g.is_sparse:
        _sparse_adagrad(p, g, s, clr, eps)
        return
    addcmul_(s, g, g, 1)
    add_ratio_(p, g, sqrt(s).add_(eps), -clr)


def adagrad_coefficients(step: Scalar, lr: Scalar, lr_decay: Scalar, **_: Any) -> dict[str, Scalar]:
    """The step's decayed rate: η_t = η / (1 + (t − 1)·δ)."""
    return {"clr": lr / (1 + (step - 1) * lr_decay)}


def _sparse_adagrad(p: Tensor, g: Tensor, s: Tensor, clr: Scalar, eps: Scalar) -> None:
    # The update is not linear in g, so repeated indices must be summed first.
    g = g.coalesce()
    indices, values = g._indices(), g._values()
    s.add_(torch.sparse_coo_tensor(indices, values.pow(2), g.shape, check_invariants=False))
    std = s.sparse_mask(g)._values().sqrt_().add_(eps)
    sub_scaled_(p, torch.sparse_coo_tensor(indices, values / std, g.shape, check_invariants=False), clr)


class Adagrad(Optimizer):
    __doc__ = """Adagrad, a drop-in for ``torch.optim.Adagrad`` (torch 2.14.1's signature,
    defaults, errors and state: ``step`` and ``sum``, created at construction as torch does).
    Unlike torch, a param group's own ``initial_accumulator_value`` is honoured, and
    ``capturable=True`` (keyword-only, after torch's arguments) keeps ``step`` on the device.
    """ + (adagrad.__doc__ or "")

    _spec = Spec(rule=adagrad, uses_step=True, coefficients=adagrad_coefficients,
                 init=lambda key, t, group: t.fill_(group["initial_accumulator_value"]))
    _flag_defaults = {"foreach": None, "maximize": False, "differentiable": False, "fused": None,
                      "capturable": False}

    def __init__(
        self,
        params: Any,
        lr: Union[float, Tensor] = 1e-2,
        lr_decay: float = 0,
        weight_decay: float = 0,
        initial_accumulator_value: float = 0,
        eps: float = 1e-10,
        foreach: Optional[bool] = None,
        *,
        maximize: bool = False,
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
            "lr_decay": lr_decay,
            "eps": eps,
            "weight_decay": weight_decay,
            "initial_accumulator_value": initial_accumulator_value,
            "foreach": foreach,
            "maximize": maximize,
            "differentiable": differentiable,
            "fused": fused,
            "capturable": capturable,
        }
        super().__init__(params, defaults, check_finite=check_finite, param_update=param_update,
                         state_dtype=state_dtype, generator=generator)
        for gi, group in enumerate(self.param_groups):
            self._init_state(gi, group)

    def _init_state(self, gi: int, group: dict[str, Any]) -> None:
        """torch creates Adagrad's state at construction (params added later get theirs at their
        first step); the accumulator starts at the group's ``initial_accumulator_value``
        (torch reads only the constructor's). Packed params get theirs straight in the engine's
        flat buffers: made per param and packed at the first step, both copies would exist at
        once (2000 params of 1000 elements: +21.7 MB peak against torch's +10 MB)."""
        on_device = bool(group["fused"] or group["capturable"])
        kw = self._rule_kw(group)
        packed = self._engine.packed_state(gi, group, self._state_keys(group), on_device, self.state, kw)
        for p in group["params"]:
            state = self.state[p]
            if id(p) in packed:
                state["step"], state["sum"] = packed[id(p)]
            else:
                state["step"] = torch.zeros((), dtype=scalar_dtype(), device=p.device if on_device else "cpu")
                dtype = state_dtypes(("sum",), kw, p.dtype)["sum"]
                state["sum"] = torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format)
            self._spec.init("sum", real_view(state["sum"]), group)
            self._engine.counts.host[id(p)] = 0  # known: no need to read the (device) step back

    def share_memory(self) -> None:
        """Calls ``tensor.share_memory_()`` on the state sum tensors (as torch's Adagrad), and on
        a precision policy's buffers."""
        for group in self.param_groups:
            for p in group["params"]:
                for k, t in self.state[p].items():
                    if k == "sum" or k in BUFFERS:
                        t.share_memory_()

    def _check_group(self, group: dict[str, Any]) -> None:
        _checks.torch_nonnegative(group, {
            "lr": "learning rate",
            "lr_decay": "lr_decay value",
            "weight_decay": "weight_decay value",
            "initial_accumulator_value": "initial_accumulator_value value",
            "eps": "epsilon value",
        }, numbers_only=("initial_accumulator_value",))
        super()._check_group(group)

    def _sparse_error(self, group: dict[str, Any]) -> Optional[str]:
        if group.get("fused"):
            return super()._sparse_error(group)
        if enabled(group["weight_decay"]):
            return "weight_decay option is not compatible with sparse gradients"
        return None

    def _state_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("sum",)

    def _hyper(self, group: dict[str, Any]) -> dict[str, Any]:
        return {
            "lr": group["lr"],
            "lr_decay": group["lr_decay"],
            "weight_decay": group["weight_decay"],
            "eps": group["eps"],
            "maximize": group["maximize"],
        }
