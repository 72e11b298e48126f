"""Gradient clipping deferred into the next step (``Optimizer.clip_grad_norm``).

``torch.nn.utils.clip_grad_norm_`` reads every grad for the norm, then reads and writes every
grad to scale it, before the step reads them once more. Here the norm is read once
(``total_norm``), and the factor ``clamp(max_norm / (norm + 1e-6), max=1)`` is kept on the
device and applied by the next step to the raw grad as it enters the update: the scaling pass
over the grads is gone and nothing waits for the device.

The fused kernels already divide the grad by GradScaler's scale and keep the old values where
GradScaler found infs, decided on the device; a pending clip is folded into those two inputs
(``fold``). The eager paths multiply the grad (their own copy of it) by the factor.
"""

from __future__ import annotations

import weakref
from typing import Optional

import torch
from torch import Tensor

from . import _ops
from ._fused import storage_order

# On the CPU, torch reduces a whole tensor's 2-norm at about half the memory bandwidth of a
# reduction along rows (a 25.6M-element tensor: 5.2 ms against 2.7 ms with 16-64 rows), and
# with one running fp32 sum per thread: that norm comes out 1.5e-3 off. Grads of at least
# ``_ROWS_FROM`` elements are reduced in rows of ``_ROW`` elements instead (3e-6 off), the rest
# as torch does it, so a model of smaller tensors gets torch's value bit for bit (below ~1M
# elements the Python around the rows costs more than they save: 65536 made the small MLPs'
# norm 1.5x torch's).
_ROW = 1 << 14
_ROWS_FROM = 1 << 20


def total_norm(grads: list[Tensor], norm_type: float, error_if_nonfinite: bool) -> Tensor:
    """``torch.nn.utils.get_total_norm(grads, norm_type, error_if_nonfinite)``: its value (up
    to the order of summation on large CPU grads), dtype, device and errors."""
    norm_type = float(norm_type)
    if norm_type != 2.0 or not any(g.numel() >= _ROWS_FROM for g in grads) or not all(map(_rows_apply, grads)):
        return torch.nn.utils.get_total_norm(grads, norm_type, error_if_nonfinite)
    # torch's order: grouped by (device, dtype) in order of appearance.
    groups: dict[tuple, list[Tensor]] = {}
    for g in grads:
        groups.setdefault((g.device, g.dtype), []).append(g)
    norms: list[Tensor] = []
    for group in groups.values():
        whole, rows = [], []
        for g in group:
            flat = storage_order(g) if g.numel() >= _ROWS_FROM else None
            if flat is None:
                whole.append(g)
            else:
                n = flat.numel() // _ROW * _ROW
                rows += [torch.linalg.vector_norm(flat[:n].view(-1, _ROW), dim=1), torch.linalg.vector_norm(flat[n:])]
        norms += [*(torch._foreach_norm(whole, 2.0) if whole else ()), *rows]
    first = grads[0].device
    norm = torch.linalg.vector_norm(torch.cat([n.reshape(-1).to(first) for n in norms]))
    if error_if_nonfinite and not bool(norm.isfinite()):
        raise RuntimeError(
            f"The total norm of order {norm_type} for gradients from `parameters` is non-finite, so it "
            "cannot be clipped. To disable this error and scale the gradients by the non-finite norm "
            "anyway, set `error_if_nonfinite=False`")
    return norm


def _rows_apply(g: Tensor) -> bool:
    """Whether ``g`` is a plain dense fp32/fp64 CPU tensor (not a DTensor: its norm is global)."""
    return (type(g) is Tensor and g.layout == torch.strided and g.device.type == "cpu"
            and g.dtype in (torch.float32, torch.float64))


class PendingClip:
    """The factor of one ``clip_grad_norm`` call, waiting for the next step, on each device it
    is needed on; with ``skip_nonfinite``, whether that step is to be skipped, as a flag of
    GradScaler's shape and dtype (1.0: skip)."""

    def __init__(self, total_norm: Tensor, max_norm: float, skip_nonfinite: bool, grads: list[Tensor]) -> None:
        if hasattr(total_norm, "full_tensor"):  # a DTensor norm (FSDP2): every rank's value
            total_norm = total_norm.full_tensor()
        # torch's arithmetic, so the eager paths scale grads exactly as torch's clip does.
        self.factor = torch.clamp(max_norm / (total_norm + 1e-6), max=1.0)
        self.skip: Optional[Tensor] = None
        if skip_nonfinite:
            self.skip = total_norm.isfinite().logical_not().to(torch.float32)
        self._on: dict[torch.device, Tensor] = {}
        # The grads the norm was taken of, weakly: a step whose grads are others (a new
        # backward after ``model.zero_grad()`` or ``p.grad = None``, a param added since) is
        # not scaled, as torch's in-place clip would not have scaled them.
        self._grads = [weakref.ref(g) for g in grads]

    def of(self, grads: list[Tensor]) -> bool:
        """Whether ``grads`` are the tensors this clip's norm was taken of."""
        return len(grads) == len(self._grads) and all(r() is g for r, g in zip(self._grads, grads))

    def factor_on(self, device: torch.device) -> Tensor:
        found = self._on.get(device)
        if found is None:
            found = self._on[device] = self.factor.to(device)
        return found

    def scaled(self, g: Tensor, scratch: Optional[Tensor]) -> Tensor:
        """``g`` (a grad, or a run's grads as ``Many``) times the factor, into ``scratch`` where
        it can hold it: the user's grads stay as they are."""
        fits = scratch is not None and not g.is_sparse and scratch.shape == g.shape
        return _ops.scale(g, self.factor_on(g.device), out=scratch if fits else None)

    def fold(self, grad_scale: Optional[Tensor], found_inf: Optional[Tensor], *,
             skip: bool) -> tuple[Tensor, Optional[Tensor]]:
        """GradScaler's (grad_scale, found_inf) for a fused step with this clip as well: the
        kernel divides the grad by ``grad_scale`` and keeps the old values where ``found_inf``
        (with ``skip``, also where the norm was not finite)."""
        # The kernels compute low-precision grads in float32: so does the reciprocal.
        factor = self.factor.float() if self.factor.dtype in (torch.float16, torch.bfloat16) else self.factor
        if grad_scale is None:
            grad_scale = factor.reciprocal()
        else:
            grad_scale = grad_scale / factor.to(grad_scale.device)
        if skip and self.skip is not None:
            found_inf = self.skip if found_inf is None else torch.maximum(found_inf, self.skip.to(found_inf.device))
        return grad_scale, found_inf

    def nonfinite(self) -> bool:
        """Whether the norm was inf or NaN, read on the host (the eager paths' skip)."""
        return self.skip is not None and bool(self.skip)
