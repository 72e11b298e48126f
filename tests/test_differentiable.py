"""``differentiable=True``: gradients flow through steps to whatever the grads were computed
from (hyperparameter learning, meta-learning), checked against finite differences in float64
and, where torch's for-loop manages it, against torch."""

from __future__ import annotations

import pytest
import torch

import torch_gd

CONFIGS = [
    ("SGD", {"lr": 0.1, "momentum": 0.9, "dampening": 0.3, "nesterov": False, "weight_decay": 0.1}),
    ("SGD", {"lr": 0.1, "momentum": 0.9, "nesterov": True, "maximize": True}),
    ("SGD", {"lr": 0.1, "weight_decay": 0.1}),
    ("Adam", {"lr": 0.1}),
    ("Adam", {"lr": 0.1, "amsgrad": True, "weight_decay": 0.1}),
    ("AdamW", {"lr": 0.1, "amsgrad": True}),
    ("Adagrad", {"lr": 0.1, "lr_decay": 0.01, "weight_decay": 0.1}),
    ("RMSprop", {"lr": 0.01, "momentum": 0.9}),
    ("RMSprop", {"lr": 0.01, "centered": True, "momentum": 0.9, "weight_decay": 0.1}),
]
# Where torch's for-loop is wrong: it fails in backward with amsgrad and centered RMSprop
# ("modified by an inplace operation": it keeps for backward state that the next step updates
# in place), and SGD detaches its first momentum buffer, which drops that step's part of the
# gradient (42% off the finite differences here).
TORCH_WRONG = {("Adam", "amsgrad"), ("AdamW", "amsgrad"), ("RMSprop", "centered"), ("SGD", "momentum")}


def _final_params(lib, name: str, kw: dict, x: torch.Tensor, steps: int = 3) -> torch.Tensor:
    """Params after ``steps`` steps whose grads depend on ``x`` (and on the params' values)."""
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0, 0.5], dtype=torch.float64))
    p = w.clone()  # a non-leaf, as differentiable steps require
    opt = getattr(lib, name)([p], differentiable=True, **kw)
    for i in range(steps):
        p.grad = x * (i + 1.0) + 0.1 * p * x.sum()
        opt.step()
    return p


@pytest.mark.parametrize("name, kw", CONFIGS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CONFIGS)])
def test_gradients_through_steps_match_finite_differences(name, kw):
    x = torch.tensor([0.5, -1.0, 2.0, 0.3], dtype=torch.float64, requires_grad=True)
    loss = (_final_params(torch_gd, name, kw, x) ** 2).sum()
    (dx,) = torch.autograd.grad(loss, x)
    h = 1e-6
    numeric = torch.zeros_like(x)
    with torch.no_grad():
        for i in range(x.numel()):
            e = torch.zeros_like(x)
            e[i] = h
            up = (_final_params(torch_gd, name, kw, x + e) ** 2).sum()
            down = (_final_params(torch_gd, name, kw, x - e) ** 2).sum()
            numeric[i] = (up - down) / (2 * h)
    # Central differences in float64 with h = 1e-6: truncation ~h², rounding ~1e-16/h.
    torch.testing.assert_close(dx, numeric, rtol=1e-6, atol=1e-8)
    if not any((name, flag) in TORCH_WRONG for flag in kw):
        x2 = x.detach().clone().requires_grad_()
        (theirs,) = torch.autograd.grad((_final_params(torch.optim, name, kw, x2) ** 2).sum(), x2)
        # torch's differentiable Adam orders the denominator's operations differently.
        torch.testing.assert_close(dx, theirs, rtol=1e-5, atol=1e-6)
