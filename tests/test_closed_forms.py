"""Every optimizer against a closed-form trajectory for a constant gradient, through every path.

These oracles share nothing with the step-by-step reference: they sum the whole trajectory at
once, so an error that the reference and the implementation could share (an off-by-one in the
step count, a bias correction applied twice) shows here.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, strategies as st

import torch_gd

from . import reference
from .helpers import pack_max_numel

paths = pytest.mark.parametrize("foreach,threshold", [(None, 1 << 15), (None, 0), (False, 1 << 15)])
grads = st.lists(st.floats(-3.0, 3.0, allow_nan=False).filter(lambda x: abs(x) > 1e-3), min_size=1, max_size=6)
steps = st.integers(1, 30)


def _run(opt_cls, g: list, t: int, foreach, threshold, **kw) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    p0 = torch.linspace(-1, 1, len(g), dtype=torch.float64)
    gt = torch.tensor(g, dtype=torch.float64)
    p = torch.nn.Parameter(p0.clone())
    with pack_max_numel(threshold):
        opt = opt_cls([p], foreach=foreach, **kw)
        for _ in range(t):
            p.grad = gt.clone()
            opt.step()
    return p.detach(), p0, gt


@paths
@given(g=grads, t=steps, lr=st.sampled_from([1e-3, 0.1]), eps=st.sampled_from([1e-8, 0.1]))
def test_adam_moves_each_coordinate_by_lr_g_over_abs_g_plus_eps(foreach, threshold, g, t, lr, eps):
    for cls in (torch_gd.Adam, torch_gd.AdamW):
        p, p0, gt = _run(cls, g, t, foreach, threshold, lr=lr, eps=eps, weight_decay=0.0)
        torch.testing.assert_close(p, reference.adam_constant_gradient(p0, gt, lr, eps, t), rtol=1e-10, atol=1e-12)


@paths
@given(g=grads, t=steps, lr_decay=st.sampled_from([0.0, 0.1]), s0=st.sampled_from([0.0, 0.5]))
def test_adagrad_constant_gradient(foreach, threshold, g, t, lr_decay, s0):
    p, p0, gt = _run(torch_gd.Adagrad, g, t, foreach, threshold, lr=0.1, lr_decay=lr_decay,
                     initial_accumulator_value=s0, eps=1e-10)
    expected = reference.adagrad_constant_gradient(p0, gt, 0.1, lr_decay, s0, 1e-10, t)
    torch.testing.assert_close(p, expected, rtol=1e-10, atol=1e-12)


@paths
@given(g=grads, t=steps, alpha=st.sampled_from([0.9, 0.99]))
def test_rmsprop_constant_gradient(foreach, threshold, g, t, alpha):
    p, p0, gt = _run(torch_gd.RMSprop, g, t, foreach, threshold, lr=0.01, alpha=alpha, eps=1e-8)
    expected = reference.rmsprop_constant_gradient(p0, gt, 0.01, alpha, 1e-8, t)
    torch.testing.assert_close(p, expected, rtol=1e-10, atol=1e-12)
