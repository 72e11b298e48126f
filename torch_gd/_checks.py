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
from torch._subclasses.fake_tensor import is_fake


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


def _range_text(low: float, high: float, low_open: bool, high_open: bool) -> str:
    left = "(" if low_open else "["
    right = ")" if high_open or math.isinf(high) else "]"
    return f"{left}{low:g}, {high:g}{right}"
