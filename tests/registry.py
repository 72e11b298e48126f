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
    # Options only torch_gd has (e.g. capturable on the CPU), drawn on top of ``kwargs``.
    ours_only: st.SearchStrategy = st.just({})

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


def _betas(draw, pairs, as_tensors: bool) -> tuple:
    b1, b2 = draw(st.sampled_from(pairs))
    return (torch.tensor(b1), torch.tensor(b2)) if as_tensors else (b1, b2)


@st.composite
def _adam_kwargs(draw, decoupled: bool) -> dict:
    tensor_lr, tensor_betas = draw(st.booleans()), draw(st.booleans())
    pairs = [(0.9, 0.999), (0.5, 0.9), (0.0, 0.99)]
    if not (tensor_lr or tensor_betas):
        # β₂ = 0 makes the denominator |g_t|, which can be tiny: the update then amplifies any
        # difference in g. torch computes a tensor lr's or tensor betas' coefficients in fp32,
        # we in fp64, so that pair is compared only with float hyperparameters, where both are
        # bit-identical.
        pairs.append((0.95, 0.0))
    kw = dict(
        lr=draw(_lr),
        betas=_betas(draw, pairs, tensor_betas),
        eps=draw(st.sampled_from([1e-8, 1e-3])),
        weight_decay=draw(st.sampled_from([0.0, 1e-2, 0.1])),
        amsgrad=draw(st.booleans()),
        maximize=draw(st.booleans()),
    )
    if not decoupled:
        kw["decoupled_weight_decay"] = draw(st.booleans())
    if tensor_lr:
        kw["lr"] = torch.tensor(kw["lr"])
    return kw


_capturable = st.sampled_from([{}, {"capturable": True}])

_ADAM_TORCH_ERRORS = [
    dict(lr=-1e-3),
    dict(lr=float("nan")),
    dict(lr=torch.tensor([0.1, 0.2])),
    dict(eps=-1.0),
    dict(betas=(1.0, 0.999)),
    dict(betas=(0.9, -0.1)),
    dict(betas=(0.9, float("nan"))),
    dict(weight_decay=-0.1),
    dict(betas=(torch.tensor(0.9), 0.999)),
    dict(betas=(0, 0.999)),
    dict(fused=True, differentiable=True),
]
_ADAM_OUR_ERRORS = [
    (dict(lr="1e-3"), TypeError, "lr"),
    (dict(lr=float("inf")), ValueError, "lr"),
    (dict(betas=(0.9,)), TypeError, "betas"),
    (dict(betas=0.9), TypeError, "betas"),
    (dict(betas=("0.9", 0.999)), TypeError, "betas"),
    (dict(betas=(torch.tensor([0.9, 0.8]), torch.tensor(0.9))), ValueError, "betas"),
    (dict(eps=float("nan")), ValueError, "eps"),
    (dict(eps=float("inf")), ValueError, "eps"),
    (dict(weight_decay=float("inf")), ValueError, "weight_decay"),
    (dict(amsgrad="yes"), TypeError, "amsgrad"),
    (dict(capturable=1), TypeError, "capturable"),
]

@st.composite
def _adagrad_kwargs(draw) -> dict:
    kw = dict(
        lr=draw(_lr),
        lr_decay=draw(st.sampled_from([0.0, 0.01, 0.5])),
        weight_decay=draw(st.sampled_from([0.0, 1e-2])),
        initial_accumulator_value=draw(st.sampled_from([0.0, 0.1, 1.0])),
        eps=draw(st.sampled_from([1e-10, 1e-3])),
        maximize=draw(st.booleans()),
    )
    if draw(st.booleans()):
        kw["lr"] = torch.tensor(kw["lr"])
    return kw


@st.composite
def _rmsprop_kwargs(draw) -> dict:
    centered = draw(st.booleans())
    kw = dict(
        lr=draw(st.sampled_from([1e-3, 0.01])),
        # Centered with α = 0 makes v − ḡ² = g² − g², zero up to rounding, whose sign then
        # decides NaN or not: no meaningful result to compare.
        alpha=draw(st.sampled_from([0.99, 0.9] if centered else [0.99, 0.9, 0.0])),
        eps=draw(st.sampled_from([1e-8, 1e-3])),
        weight_decay=draw(st.sampled_from([0.0, 1e-2])),
        momentum=draw(st.sampled_from([0.0, 0.9])),
        centered=centered,
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
    Case(
        name="Adam",
        ours=torch_gd.Adam,
        theirs=torch.optim.Adam,
        reference=reference.adam_step,
        kwargs=_adam_kwargs(decoupled=False),
        sparse=False,
        torch_errors=_ADAM_TORCH_ERRORS,
        our_errors=_ADAM_OUR_ERRORS,
        typical=dict(lr=1e-2, weight_decay=1e-3, amsgrad=True),
        ours_only=_capturable,
    ),
    Case(
        name="AdamW",
        ours=torch_gd.AdamW,
        theirs=torch.optim.AdamW,
        reference=reference.adamw_step,
        kwargs=_adam_kwargs(decoupled=True),
        sparse=False,
        torch_errors=_ADAM_TORCH_ERRORS,
        our_errors=_ADAM_OUR_ERRORS,
        typical=dict(lr=1e-2),
        ours_only=_capturable,
    ),
    Case(
        name="Adagrad",
        ours=torch_gd.Adagrad,
        theirs=torch.optim.Adagrad,
        reference=reference.adagrad_step,
        kwargs=_adagrad_kwargs(),
        sparse=True,
        torch_errors=[
            dict(lr=-1.0),
            dict(lr=float("nan")),
            dict(lr=torch.tensor([0.1, 0.2])),
            dict(lr_decay=-1.0),
            dict(weight_decay=-1.0),
            dict(initial_accumulator_value=-1.0),
            dict(eps=-1.0),
            dict(fused=True, differentiable=True),
            dict(fused=True, foreach=True),
        ],
        our_errors=[
            (dict(lr="0.1"), TypeError, "lr"),
            (dict(lr=float("inf")), ValueError, "lr"),
            (dict(lr_decay=float("inf")), ValueError, "lr_decay"),
            (dict(eps=float("inf")), ValueError, "eps"),
            (dict(initial_accumulator_value=None), TypeError, "initial_accumulator_value"),
            (dict(maximize="no"), TypeError, "maximize"),
        ],
        typical=dict(lr=0.05, lr_decay=0.01, initial_accumulator_value=0.1),
    ),
    Case(
        name="RMSprop",
        ours=torch_gd.RMSprop,
        theirs=torch.optim.RMSprop,
        reference=reference.rmsprop_step,
        kwargs=_rmsprop_kwargs(),
        sparse=False,
        torch_errors=[
            dict(lr=-1.0),
            dict(lr=float("nan")),
            dict(lr=torch.tensor([0.1, 0.2])),
            dict(eps=-1.0),
            dict(momentum=-0.5),
            dict(weight_decay=-1.0),
            dict(alpha=-0.1),
        ],
        our_errors=[
            (dict(lr="0.1"), TypeError, "lr"),
            (dict(alpha=1.5), ValueError, "alpha"),
            (dict(alpha=float("inf")), ValueError, "alpha"),
            (dict(momentum=float("nan")), ValueError, "momentum"),
            (dict(centered=1), TypeError, "centered"),
        ],
        typical=dict(lr=0.01, momentum=0.9, centered=True, weight_decay=1e-3),
        ours_only=_capturable,
    ),
]
