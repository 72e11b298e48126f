"""Argument checks shared by every optimizer.

torch.optim raises on purpose for a few cases (negative lr, ...) and we raise the same type with
the same message there. Where torch crashes by accident (``lr="0.1"`` gives a raw comparison
TypeError) or accepts nonsense (``lr=nan``, negative ``dampening``), we raise a ValueError or
TypeError that names the argument and its allowed range. Every check runs before any state or
parameter is touched.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from ._private import fused_devices, is_fake


def real(
    name: str,
    value: Any,
    *,
    low: float = 0.0,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = False,
    tensor_ok: bool = True,
    torch_message: Optional[str] = None,
    torch_rejects: Callable[[float], bool] = lambda x: x < 0,
) -> None:
    """Check a real hyperparameter lies in its range.

    Where ``torch_rejects(value)`` (torch's own comparison, e.g. ``not 0 <= x``, which also
    catches NaN) we raise torch's ``torch_message``; the other failures get a message naming
    the allowed range.
    """
    allowed = _range_text(low, high, low_open, high_open)
    if isinstance(value, Tensor):
        if not tensor_ok:
            raise TypeError(f"{name} must be a float, not a Tensor")
        if value.numel() != 1:
            raise ValueError(f"Tensor {name} must be 1-element")
        if value.is_complex() or value.dtype == torch.bool:
            raise TypeError(f"{name} must be a real number, got a {value.dtype} tensor")
        if value.is_meta or is_fake(value):
            return  # no data to check: tracing, or faking a device this machine lacks
        number = float(value.detach().cpu())
    elif isinstance(value, numbers.Real) and not isinstance(value, bool):
        number = float(value)
    else:
        raise TypeError(
            f"{name} must be a real number{' or a 1-element Tensor' if tensor_ok else ''}, "
            f"got {type(value).__name__}: {value!r}"
        )
    if torch_message is not None and torch_rejects(number):
        raise ValueError(torch_message)
    below = number <= low if low_open else number < low
    above = number >= high if high_open else number > high
    if math.isnan(number) or math.isinf(number) or below or above:
        raise ValueError(f"Invalid {name} value: {value} ({name} must be in {allowed})")


def torch_nonnegative(group: dict, labels: dict[str, str], numbers_only: tuple[str, ...] = ()) -> None:
    """torch's ``if not 0.0 <= x: raise ValueError(f"Invalid {label}: {x}")`` for each of
    ``labels`` (name → label), which NaN fails too; above that, finite values only. Names in
    ``numbers_only`` may not be tensors."""
    for name, label in labels.items():
        value = group[name]
        real(name, value, torch_message=f"Invalid {label}: {value}", torch_rejects=lambda x: not 0.0 <= x,
             tensor_ok=name not in numbers_only)


def flag(name: str, value: Any, *, optional: bool = False) -> None:
    """Check a switch is a bool (or None where torch lets the implementation choose)."""
    if optional and value is None:
        return
    if not isinstance(value, bool):
        expected = "a bool or None" if optional else "a bool"
        raise TypeError(f"{name} must be {expected}, got {type(value).__name__}: {value!r}")


def pair(name: str, value: Any) -> None:
    """Check ``value`` is a 2-sequence (torch indexes it blindly: ``betas=(0.9,)`` IndexErrors)."""
    if isinstance(value, (str, bytes, Tensor)) or not hasattr(value, "__len__") or len(value) != 2:
        raise TypeError(f"{name} must be a pair (tuple of 2 numbers), got {value!r}")


def implementation(defaults: dict) -> None:
    """torch's errors for incompatible implementation switches, in torch's order."""
    if defaults.get("fused"):
        if defaults.get("differentiable"):
            raise RuntimeError("`fused` does not support `differentiable`")
        if defaults.get("foreach"):
            raise RuntimeError("`fused` and `foreach` cannot be `True` together.")


def finite_check_allowed(check_finite: bool, group: dict) -> None:
    """``check_finite`` reads a flag on the host each step, which a captured graph cannot do."""
    if check_finite and group.get("capturable"):
        raise ValueError("check_finite=True reads the grads' finiteness on the host every step, "
                         "which capturable=True (CUDA graph capture) forbids: use one or the other")


def max_norm(value: Any) -> float:
    """``clip_grad_norm``'s ``max_norm`` as a float: torch takes ``float(max_norm)`` and scales
    by a negative or NaN one without a word; we refuse them."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, Tensor)):
        raise TypeError(f"max_norm must be a real number, got {type(value).__name__}: {value!r}")
    number = float(value)
    if not number >= 0:
        raise ValueError(f"Invalid max_norm value: {value} (max_norm must be in [0, inf])")
    return number


def skip_allowed(group: dict) -> None:
    """``skip_nonfinite`` reads a flag on the host where a group is not fused."""
    if group.get("capturable") and not group.get("fused"):
        raise ValueError("skip_nonfinite=True reads the norm's finiteness on the host for a group "
                         "with fused=False, which capturable=True (CUDA graph capture) forbids: "
                         "use fused=True, which skips on the device")


def finite_grads(groups: list[dict], collected: list[tuple[list[Tensor], list[Tensor]]]) -> None:
    """Raise naming the first param whose grad holds NaN or Inf (``check_finite=True``).

    One inf-norm per grad (a max of |g|, which cannot overflow) and one host read per device.
    """
    norms: dict[torch.device, list[Tensor]] = {}
    for _, grads in collected:
        for g in grads:
            local = _local(g)
            norms.setdefault(local.device, []).append(
                torch.linalg.vector_norm(local, math.inf) if local.numel() else local.new_zeros((), dtype=torch.float32))
    if all(bool(torch.stack([n.float() for n in ns]).isfinite().all()) for ns in norms.values()):
        return
    for gi, (group, (params, grads)) in enumerate(zip(groups, collected)):
        for p, g in zip(params, grads):
            values = _local(g)
            bad = ~torch.isfinite(values)
            if bool(bad.any()):
                index = next(i for i, q in enumerate(group["params"]) if q is p)
                nans = int(torch.isnan(values).sum())
                raise RuntimeError(
                    f"check_finite=True: the grad of param {index} of param group {gi} (shape "
                    f"{tuple(p.shape)}) has {nans} NaN and {int(bad.sum()) - nans} Inf values; "
                    "nothing was updated"
                )


def grad_like_param(p: Tensor, g: Tensor) -> None:
    """A grad must have its param's dtype, device and shape (autograd insists, but
    ``p.grad.data = x`` gets past it; torch's optimizers then crash mid-step, silently promote
    or broadcast)."""
    if g.dtype != p.dtype or g.device != p.device:
        raise RuntimeError(
            f"a param of shape {tuple(p.shape)} ({p.dtype} on {p.device}) has a grad of {g.dtype} on "
            f"{g.device}; grads must match their param's dtype and device (p.grad = p.grad.to(p)); "
            "nothing was updated"
        )
    if g.shape != p.shape:
        raise RuntimeError(
            f"a param of shape {tuple(p.shape)} has a grad of shape {tuple(g.shape)}; grads must have "
            "their param's shape; nothing was updated"
        )


def precision_policy(group: dict) -> None:
    """A group's ``param_update`` and ``state_dtype`` (``_precision``)."""
    from ._precision import PARAM_UPDATES, STATE_DTYPES

    update, state_dtype = group.get("param_update"), group.get("state_dtype")
    if update not in PARAM_UPDATES:
        raise ValueError(
            "param_update must be None, 'fp32_master', 'kahan' or 'stochastic_rounding', got " + repr(update))
    if state_dtype == torch.float16:
        raise ValueError(
            "state_dtype=torch.float16 is not supported: squared grads (exp_avg_sq, square_avg, sum) "
            "underflow in fp16; use torch.bfloat16 (same range as fp32) or torch.float32")
    if state_dtype not in STATE_DTYPES:
        raise ValueError(f"state_dtype must be None, torch.bfloat16 or torch.float32, got {state_dtype!r}")
    if (update is not None or state_dtype is not None) and group.get("differentiable"):
        raise ValueError("param_update and state_dtype cannot be used with differentiable=True")


def state_shaped_like_param(p: Tensor, state: dict, keys: tuple[str, ...]) -> None:
    """A param's state tensors must have its shape: a param rebound to another shape
    (``p.data = ...``) beside state made for the old one would fail in the middle of a step."""
    for k in keys:
        t = state.get(k)
        if t is not None and t.shape != p.shape:
            raise RuntimeError(
                f"a param of shape {tuple(p.shape)} has its {k!r} state of shape {tuple(t.shape)} (the param "
                "changed shape after its state was created); delete or replace its state "
                "(del optimizer.state[param]); nothing was updated"
            )


def state_like_param(p: Tensor, state: dict, dtypes: dict[str, torch.dtype]) -> None:
    """A fused kernel is compiled for one dtype per tensor and one device: a param's state must
    be in the dtypes it keeps (``dtypes``: the param's, or its precision policy's) and on its
    device (``model.double()`` after state was created leaves float32 state beside float64
    params, which torch's fused kernels refuse too: "expected scalar type Double but found Float")."""
    for k, dtype in dtypes.items():
        t = state.get(k)
        if t is not None and (t.dtype != dtype or t.device != p.device):
            raise RuntimeError(
                f"fused=True: a param of shape {tuple(p.shape)} ({p.dtype} on {p.device}) has its "
                f"{k!r} state in {t.dtype} on {t.device} (the param changed dtype or device after its "
                "state was created, e.g. model.double()); move the state too (load the optimizer's "
                "state_dict again after the change, which casts it) or use fused=False; nothing was updated"
            )


def _local(g: Tensor) -> Tensor:
    """The values a grad holds on this process: a sparse grad's values, a DTensor's shard."""
    if g.is_sparse:
        return g.coalesce().values()
    return g.to_local() if hasattr(g, "to_local") else g


def params(group: dict, spans: dict[int, list[tuple[int, int, Tensor]]]) -> None:
    """Check a new group's params: floating point or complex, and no memory shared with another
    param (whose update would overwrite theirs). ``spans`` holds the byte ranges of the params
    already checked, per storage; it gains this group's only if every check passes."""
    for p in group["params"]:
        if not (p.is_floating_point() or p.is_complex()):
            if group.get("fused"):  # torch's own check, made for the fused path only
                raise RuntimeError(
                    "`fused=True` requires all the params to be floating point Tensors of supported "
                    f"devices: {fused_devices()} but {p.dtype} and {p.device.type}"
                )
            raise TypeError(f"optimizer can only update floating point or complex params, got a {p.dtype} "
                            f"tensor of shape {tuple(p.shape)}")
    new: dict[int, list[tuple[int, int, Tensor]]] = {}
    for p in group["params"]:
        if p.numel() == 0 or p.is_meta or is_fake(p) or hasattr(p, "to_local"):
            continue  # no memory of its own here (DTensor: its local shard is its own)
        size = p.element_size()
        start = p.storage_offset() * size
        end = start + (sum((n - 1) * st for n, st in zip(p.shape, p.stride())) + 1) * size
        ptr = p.untyped_storage().data_ptr()
        for s, e, q in spans.get(ptr, []) + new.get(ptr, []):
            if q is not p and s < end and start < e and _overlap(p, q):
                raise ValueError(
                    f"two params share memory (shapes {tuple(q.shape)} and {tuple(p.shape)}); an "
                    "optimizer applies one update per element: tie weights by using one Parameter "
                    "object in both places, or pass only one of them"
                )
        new.setdefault(ptr, []).append((start, end, p))
    for ptr, items in new.items():
        spans.setdefault(ptr, []).extend(items)


def _overlap(a: Tensor, b: Tensor) -> bool:
    """Whether two views of one storage whose byte ranges intersect share an element.

    Rare (interleaved views of one buffer), so it marks a's elements in a scratch tensor
    covering both and reads b's."""
    if a.dtype != b.dtype:
        return True
    lo = min(a.storage_offset(), b.storage_offset())
    hi = max(t.storage_offset() + sum((n - 1) * st for n, st in zip(t.shape, t.stride())) + 1 for t in (a, b))
    marks = torch.zeros(hi - lo, dtype=torch.int8, device=a.device)
    marks.as_strided(a.shape, a.stride(), a.storage_offset() - lo).fill_(1)
    return bool(marks.as_strided(b.shape, b.stride(), b.storage_offset() - lo).any())


def _range_text(low: float, high: float, low_open: bool, high_open: bool) -> str:
    left = "(" if low_open else "["
    right = ")" if high_open or math.isinf(high) else "]"
    return f"{left}{low:g}, {high:g}{right}"
