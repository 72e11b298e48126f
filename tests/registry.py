"""The optimizer table every shared test runs over (like torch's optim_db).

Adding an optimizer to the package means adding one ``Case`` here: its classes, its float64
reference, a strategy of constructor kwargs torch accepts, and its argument-error cases.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from hypothesis import strategies as st

import torch_gd

from . import reference


@dataclass
class Case:
    name: str
    ours: type
    theirs: type
    reference: Callable
    kwargs: st.SearchStrategy
    sparse: bool
    # Bad kwargs torch rejects on purpose: ours must raise the same type and message.
    torch_errors: list[dict] = field(default_factory=list)
    # Bad kwargs torch crashes on or accepts: ours raises (type, name of the argument).
    our_errors: list[tuple[dict, type, str]] = field(default_factory=list)
    # A representative configuration for the non-property tests.
    typical: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        return self.name


_lr = st.sampled_from([1e-3, 0.01, 0.1, 0.5])


@st.composite
def _sgd_kwargs(draw) -> dict:
    momentum = draw(st.sampled_from([0.0, 0.5, 0.9, 0.99]))
    nesterov = momentum > 0 and draw(st.booleans())
    dampening = 0.0 if nesterov else draw(st.sampled_from([0.0, 0.1, 0.5]))
    kw = dict(
        lr=draw(_lr),
        momentum=momentum,
        dampening=dampening,
        weight_decay=draw(st.sampled_from([0.0, 1e-4, 0.1])),
        nesterov=nesterov,
        maximize=draw(st.booleans()),
    )
    if draw(st.booleans()):
        kw["lr"] = torch.tensor(kw["lr"])
    return kw


CASES = [
    Case(
        name="SGD",
        ours=torch_gd.SGD,
        theirs=torch.optim.SGD,
        reference=reference.sgd_step,
        kwargs=_sgd_kwargs(),
        sparse=True,
        torch_errors=[
            dict(lr=-0.1),
            dict(lr=torch.tensor([0.1, 0.2])),
            dict(lr=torch.tensor(-1.0)),
            dict(momentum=-0.5),
            dict(weight_decay=-1e-3),
            dict(nesterov=True),
            dict(nesterov=True, momentum=0.9, dampening=0.1),
            dict(fused=True, differentiable=True),
            dict(fused=True, foreach=True),
        ],
        our_errors=[
            (dict(lr="0.1"), TypeError, "lr"),
            (dict(lr=None), TypeError, "lr"),
            (dict(lr=float("nan")), ValueError, "lr"),
            (dict(lr=float("inf")), ValueError, "lr"),
            (dict(momentum=float("nan")), ValueError, "momentum"),
            (dict(momentum="0.9"), TypeError, "momentum"),
            (dict(dampening=-0.1), ValueError, "dampening"),
            (dict(dampening=1.5), ValueError, "dampening"),
            (dict(dampening=torch.tensor(0.1)), TypeError, "dampening"),
            (dict(weight_decay=torch.tensor([0.1, 0.2])), ValueError, "weight_decay"),
            (dict(weight_decay=float("nan")), ValueError, "weight_decay"),
            (dict(nesterov="yes", momentum=0.9), TypeError, "nesterov"),
            (dict(maximize=None), TypeError, "maximize"),
            (dict(foreach="no"), TypeError, "foreach"),
        ],
        typical=dict(lr=0.05, momentum=0.9, weight_decay=1e-3),
    ),
]
