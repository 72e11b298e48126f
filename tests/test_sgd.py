"""SGD-specific checks: closed-form trajectories, and where we deliberately differ from torch."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, strategies as st

import torch_gd

from . import reference
from .helpers import pack_max_numel, tol

paths = pytest.mark.parametrize("foreach", [None, False])
floats = st.floats(-2.0, 2.0, allow_nan=False)


@paths
@given(g=floats, lr=st.sampled_from([1e-3, 0.1]), t=st.integers(1, 40))
def test_constant_gradient_closed_form(foreach, g, lr, t):
    p = torch.nn.Parameter(torch.full((3,), 0.5, dtype=torch.float64))
    opt = torch_gd.SGD([p], lr=lr, foreach=foreach)
    for _ in range(t):
        p.grad = torch.full_like(p, g)
        opt.step()
    expected = reference.sgd_constant_gradient(torch.full((3,), 0.5, dtype=torch.float64), torch.tensor(g, dtype=torch.float64), lr, t)
    torch.testing.assert_close(p.detach(), expected, rtol=1e-12, atol=1e-12)


@paths
@given(g=floats, momentum=st.sampled_from([0.5, 0.9]), dampening=st.sampled_from([0.0, 0.3]), t=st.integers(1, 40))
def test_heavy_ball_constant_gradient_closed_form(foreach, g, momentum, dampening, t):
    p0 = torch.linspace(-1, 1, 7, dtype=torch.float64)
    p = torch.nn.Parameter(p0.clone())
    opt = torch_gd.SGD([p], lr=0.01, momentum=momentum, dampening=dampening, foreach=foreach)
    for _ in range(t):
        p.grad = torch.full_like(p, g)
        opt.step()
    expected = reference.heavy_ball_constant_gradient(p0, torch.tensor(g, dtype=torch.float64), 0.01, momentum, dampening, t)
    torch.testing.assert_close(p.detach(), expected, rtol=1e-11, atol=1e-12)


@paths
@given(a=st.floats(0.1, 5.0), lr=st.sampled_from([0.01, 0.1]), t=st.integers(1, 50))
def test_quadratic_bowl_closed_form(foreach, a, lr, t):
    """On f(p) = ½·a·p², with the gradient computed by autograd each step."""
    p0 = torch.tensor([1.0, -2.0, 0.25], dtype=torch.float64)
    p = torch.nn.Parameter(p0.clone())
    opt = torch_gd.SGD([p], lr=lr, foreach=foreach)
    for _ in range(t):
        opt.zero_grad()
        (0.5 * a * p.pow(2)).sum().backward()
        opt.step()
    torch.testing.assert_close(p.detach(), reference.sgd_quadratic_bowl(p0, a, lr, t), rtol=1e-10, atol=1e-13)


@paths
def test_sparse_grads_with_weight_decay_equal_their_dense_run(foreach):
    """torch's SGD crashes here (add(sparse, dense) is not supported); the sum is dense, so we
    compute it and match the same run with the grads densified."""
    torch.manual_seed(0)
    e1 = torch.nn.Embedding(8, 3, sparse=True)
    w2 = torch.nn.Parameter(e1.weight.detach().clone())
    o1 = torch_gd.SGD(e1.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01, foreach=foreach)
    o2 = torch_gd.SGD([w2], lr=0.1, momentum=0.9, weight_decay=0.01, foreach=foreach)
    for idx in ([1, 2], [2, 5], [7]):
        o1.zero_grad()
        e1(torch.tensor(idx)).pow(2).sum().backward()
        w2.grad = e1.weight.grad.to_dense()
        o1.step(), o2.step()
        torch.testing.assert_close(e1.weight.detach(), w2.detach(), rtol=1e-6, atol=1e-7)


@paths
def test_tensor_lr_stays_the_same_object_and_is_read_each_step(foreach):
    lr = torch.tensor(0.1)
    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch_gd.SGD([p], lr=lr, foreach=foreach)
    p.grad = torch.ones(2)
    opt.step()
    lr.fill_(0.5)
    opt.step()
    assert opt.param_groups[0]["lr"] is lr
    torch.testing.assert_close(p.detach(), torch.full((2,), -0.6))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
def test_channels_last_param_with_contiguous_grad(dtype):
    """torch's CPU fused SGD is silently wrong when param and grad layouts differ; ours updates
    element for element, packed or not."""
    for threshold in (0, 1 << 15):
        with pack_max_numel(threshold):
            gen = torch.Generator().manual_seed(0)
            w = torch.randn(2, 3, 4, 5, generator=gen).to(dtype).contiguous(memory_format=torch.channels_last)
            g = torch.randn(2, 3, 4, 5, generator=gen).to(dtype)
            p = torch.nn.Parameter(w.clone(memory_format=torch.channels_last))
            q = torch.nn.Parameter(w.contiguous())
            a = torch_gd.SGD([p], lr=0.1, momentum=0.9)
            b = torch.optim.SGD([q], lr=0.1, momentum=0.9, foreach=False)
            for _ in range(3):
                p.grad, q.grad = g.clone(), g.clone()
                a.step(), b.step()
            assert p.is_contiguous(memory_format=torch.channels_last)
            torch.testing.assert_close(p.detach(), q.detach(), **tol(dtype))
