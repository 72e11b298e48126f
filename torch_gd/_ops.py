"""The handful of ops update rules are written against.

A hyperparameter reaches a rule either as a Python number or as a 0-dim tensor (a tensor
``lr``, or a value a scheduler updates in place; the engine makes any 1-element tensor 0-dim). Numbers go through the ``alpha=`` forms, which
compute the scalar in the op's accumulation type exactly as torch.optim does; tensors go through
``addcmul``-style forms, which never call ``.item()`` and so never wait for the device.

Out-of-place ops take an optional ``out``: the engine hands each rule a scratch tensor to write
its temporaries into, because allocating a fresh param-sized tensor per op costs more than the
op itself on the CPU (page faults on every step). ``out`` may alias an input.

Traced for a fused kernel (``torch.compiler.is_compiling()``), a few ops take another form of
the same maths: Inductor evaluates every op of the graph per element, a vector divide costs
about ten multiplies, and ``lerp`` lowers to both of its branches and a select. Adam's kernel
did three divides per element (√v / √(1 − β₂ᵗ), then by −η_t, then m by that) and ran 2.7×
slower than torch's fused kernel on tensors that fit in cache; with one divide it runs within
1.4×. Eagerly the ops stay torch's own, so the eager paths stay bitwise equal to torch's
for-loop; compiled code rounds differently anyway (an ulp or two, as torch's fused kernels do).
"""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor

Scalar = Union[float, Tensor]


def enabled(x: Scalar) -> bool:
    """Whether a coefficient switches its term on. A tensor always does: we never read it."""
    return isinstance(x, Tensor) or x != 0


def neg(x: Tensor, out: Optional[Tensor] = None) -> Tensor:
    """``−x``."""
    if out is None or x.is_sparse:
        return -x
    return torch.neg(x, out=out)


def add_scaled(x: Tensor, y: Tensor, a: Scalar, out: Optional[Tensor] = None) -> Tensor:
    """``x + a·y``."""
    if x.is_sparse:
        # torch has no add(sparse, dense); the sum is dense anyway.
        return scale(y, a, out=out).add_(x)
    if out is None:
        return x.addcmul(y, a) if isinstance(a, Tensor) else x.add(y, alpha=a)
    if isinstance(a, Tensor):
        return torch.addcmul(x, y, a, out=out)
    return torch.add(x, y, alpha=a, out=out)


def l2_gradient(g: Tensor, p: Tensor, weight_decay: Scalar, maximize: bool, out: Optional[Tensor] = None) -> Tensor:
    """The gradient every rule starts from: ``g ← −g`` if maximize, then ``g ← g + λ·p``."""
    if maximize:
        g = neg(g, out=out)
    if enabled(weight_decay):
        g = add_scaled(g, p, weight_decay, out=out)
    return g


def add_scaled_(x: Tensor, y: Tensor, a: Scalar) -> Tensor:
    """``x ← x + a·y`` in place."""
    if isinstance(a, Tensor):
        return x.addcmul_(y, a)
    return x.add_(y, alpha=a)


def sub_scaled_(x: Tensor, y: Tensor, a: Scalar) -> Tensor:
    """``x ← x − a·y`` in place."""
    if y.is_sparse and isinstance(a, Tensor):
        # Sparse tensors have no addcmul_.
        return x.sub_(y * a)
    if isinstance(a, Tensor):
        return x.addcmul_(y, a, value=-1)
    return x.add_(y, alpha=-a)


def scale(x: Tensor, a: Scalar, out: Optional[Tensor] = None) -> Tensor:
    """``a·x``."""
    return x.mul(a) if out is None else torch.mul(x, a, out=out)


def assign_(dst: Tensor, src: Tensor) -> Tensor:
    """``dst ← src``, also from a sparse ``src`` (dense ``copy_`` refuses those)."""
    if src.is_sparse:
        return dst.zero_().add_(src)
    return dst.copy_(src)


def real_view(t: Optional[Tensor]) -> Optional[Tensor]:
    """Complex tensors are updated as their real pairs: every rule is elementwise over reals."""
    return torch.view_as_real(t) if t is not None and t.is_complex() else t


def complement(beta: Scalar, like: Tensor) -> Scalar:
    """``1 − β``. Eagerly, a tensor β is first cast to ``like``'s dtype, as torch's for-loop
    Adam does for its moment weights (in bf16 that moves 1 − 0.95 by 1.5%, and we match torch).
    A compiled (fused) kernel computes in fp32 and rounds once, like torch's fused kernels."""
    if isinstance(beta, Tensor) and not torch.compiler.is_compiling():
        beta = beta.to(like.dtype)
    return 1 - beta


def addcmul_(x: Tensor, y: Tensor, z: Tensor, a: Scalar) -> Tensor:
    """``x ← x + a·y·z`` in place."""
    if isinstance(a, Tensor):
        return x.addcmul_(y, z * a)
    return x.addcmul_(y, z, value=a)


def add_ratio_(x: Tensor, num: Tensor, den: Tensor, a: Scalar) -> Tensor:
    """``x ← x + a·num/den`` in place; ``den`` is a temporary and may be overwritten."""
    if torch.compiler.is_compiling():
        return x.add_(num * a / den)
    if isinstance(a, Tensor):
        return x.addcdiv_(saved(num), den.div_(a))
    return x.addcdiv_(saved(num), den, value=a)


def saved(t: Tensor) -> Tensor:
    """``t`` as an op that keeps its inputs for backward should read it: under autograd
    (``differentiable=True``) a copy, since ``t`` may be state that the next step updates in
    place (torch's for-loop Adam clones ``exp_avg`` for its ``addcdiv_`` the same way)."""
    return t.clone() if torch.is_grad_enabled() else t


def lerp_(x: Tensor, y: Tensor, w: Scalar) -> Tensor:
    """``x ← x + w·(y − x)`` in place."""
    if torch.compiler.is_compiling():
        return x.add_((y - x) * w)
    return x.lerp_(y, w)


def div_(x: Tensor, d: Scalar) -> Tensor:
    """``x ← x / d`` in place."""
    if torch.compiler.is_compiling():
        return x.mul_(1 / d)
    return x.div_(d)


def maximum_(acc: Tensor, x: Tensor) -> Tensor:
    """``acc ← max(acc, x)`` elementwise, in place (NaN propagates, as in torch)."""
    if torch.is_grad_enabled():  # differentiable=True: autograd refuses out=
        return acc.copy_(torch.maximum(saved(acc), saved(x)))
    return torch.maximum(acc, x, out=acc)


def sqrt(x: Tensor, out: Optional[Tensor] = None) -> Tensor:
    """``√x``, into ``out`` when given (``x`` itself: in place). Callers go on to update the
    result in place, and autograd's sqrt keeps its output for backward: under autograd
    (``differentiable=True``) the result is a copy."""
    if torch.is_grad_enabled():
        return x.sqrt().clone()
    return x.sqrt() if out is None else torch.sqrt(x, out=out)


def bias_correction(beta: Scalar, step: Scalar) -> Scalar:
    """``1 − βᵗ`` in float64: a Python float, or a float64 0-dim tensor when β or t is a tensor
    (capturable steps, tensor betas), so that no path reads a device value."""
    if isinstance(beta, Tensor) or isinstance(step, Tensor):
        return 1 - torch.pow(_f64(beta), _f64(step))
    return 1 - beta**step


def _f64(x: Scalar) -> Scalar:
    return x.to(torch.float64) if isinstance(x, Tensor) else x
