"""A list of tensors that an update rule runs over as if it were one tensor.

The eager rules are written against a handful of tensor methods and ``torch`` functions
(``_ops``). ``Many`` gives those a list: each becomes one of torch's multi-tensor (``_foreach_``)
ops, so a rule called once over ``Many`` params makes as many ops as it would for one tensor,
where a loop over the params makes that many per param. On the CPU a ``_foreach_`` op is torch's
own loop over the same per-tensor op, so for ``EXACT_DTYPES`` the results are bitwise those of the
per-tensor rule (the engine runs params of other dtypes alone); on CUDA it is
one kernel launch for the list.

Only what an eager steady step needs is here: plain Python numbers as coefficients, dense
tensors, no autograd. ``Engine._run_loose`` runs the rule over ``Many`` only then.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Union

import torch
from torch import Tensor

Number = Union[int, float]
# The dtypes whose lists ``Many`` updates bitwise as the per-tensor ops would: on the CPU, torch's
# multi-tensor ``mul_`` by a number rounds the number to the tensors' dtype first (0.999 becomes
# 1.0 in bfloat16), where ``Tensor.mul_`` and torch's for-loop do not.
EXACT_DTYPES = (torch.float32, torch.float64)


class Many:
    """Tensors of one device and dtype, updated together; ``ts`` must not alias each other."""

    __slots__ = ("ts",)
    is_sparse = False

    def __init__(self, ts: list[Tensor]) -> None:
        self.ts = ts

    @property
    def device(self) -> torch.device:
        return self.ts[0].device

    @property
    def shape(self) -> tuple[torch.Size, ...]:
        """Each tensor's shape: two lists laid out alike have equal ones."""
        return tuple(t.shape for t in self.ts)

    # In place, as the rules' methods.
    def mul_(self, a: Number) -> Many:
        torch._foreach_mul_(self.ts, a)
        return self

    def add_(self, y: Union[Many, Number], alpha: Number = 1) -> Many:
        if isinstance(y, Many):
            torch._foreach_add_(self.ts, y.ts, alpha=alpha)
        elif alpha == 1:
            torch._foreach_add_(self.ts, y)
        else:
            raise TypeError("torch_gd: a number added to a list of tensors takes no alpha")
        return self

    def div_(self, d: Number) -> Many:
        torch._foreach_div_(self.ts, d)
        return self

    def addcmul_(self, y: Many, z: Many, value: Number = 1) -> Many:
        torch._foreach_addcmul_(self.ts, y.ts, z.ts, value=value)
        return self

    def addcdiv_(self, y: Many, z: Many, value: Number = 1) -> Many:
        torch._foreach_addcdiv_(self.ts, y.ts, z.ts, value=value)
        return self

    def lerp_(self, y: Many, w: Number) -> Many:
        torch._foreach_lerp_(self.ts, y.ts, w)
        return self

    def copy_(self, src: Many) -> Many:
        torch._foreach_copy_(self.ts, src.ts)
        return self

    # Out of place: new tensors, as ``_ops`` makes when it has no scratch.
    def __neg__(self) -> Many:
        return Many(torch._foreach_neg(self.ts))

    def add(self, y: Many, alpha: Number = 1) -> Many:
        return Many(torch._foreach_add(self.ts, y.ts, alpha=alpha))

    def mul(self, a: Number) -> Many:
        return Many(torch._foreach_mul(self.ts, a))

    def addcmul(self, y: Many, z: Many, value: Number = 1) -> Many:
        return Many(torch._foreach_addcmul(self.ts, y.ts, z.ts, value=value))

    def sqrt(self) -> Many:
        return Many(torch._foreach_sqrt(self.ts))

    # ``torch.f(x, ..., out=out)`` as ``_ops`` calls it: into ``out`` (a copy of ``x`` updated in
    # place: the same arithmetic), or a new list without ``out``.
    @classmethod
    def __torch_function__(cls, func: Callable, types: Any, args: tuple = (), kwargs: Optional[dict] = None) -> Any:
        kwargs = dict(kwargs or {})
        out = kwargs.pop("out", None)
        in_place = _IN_PLACE.get(func)
        if in_place is None:
            raise TypeError(f"torch_gd: {getattr(func, '__name__', func)} is not defined on a list of tensors")
        x, *rest = args
        if out is None:
            out = Many([t.clone() for t in x.ts])
        elif out is not x:
            if any(isinstance(r, Many) and r is out for r in rest):
                raise ValueError("torch_gd: out= may alias only the first input of a list op")
            out.copy_(x)
        in_place(out, *rest, **kwargs)
        return out


_IN_PLACE: dict[Callable, Callable[..., Any]] = {
    torch.neg: lambda out: torch._foreach_neg_(out.ts),
    torch.add: Many.add_,
    torch.mul: Many.mul_,
    torch.sqrt: lambda out: torch._foreach_sqrt_(out.ts),
    torch.maximum: lambda out, y: torch._foreach_maximum_(out.ts, y.ts),
}
