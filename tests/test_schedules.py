"""torch_gd.schedules: the pure closed forms, against torch's schedulers and their own formulas."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from hypothesis import given, strategies as st
from torch.optim import lr_scheduler as T

from torch_gd import schedules

STEPS = 1500


def close(a: float, b: float) -> bool:
    """The issue's tolerance: 1e-9 relative or 1e-12 absolute."""
    return abs(a - b) <= max(1e-12, 1e-9 * abs(b))


def torch_factors(make, steps: int = STEPS) -> list[float]:
    """``lr / base_lr`` of a torch scheduler over ``steps`` steps, base lr 1."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = make(opt)
    out = [opt.param_groups[0]["lr"]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scheduler.step() without optimizer.step()
        for _ in range(steps):
            sched.step()
            out.append(opt.param_groups[0]["lr"])
    return out


gammas = st.floats(0.5, 1.0)


@given(step_size=st.integers(1, 200), gamma=gammas)
def test_step_decay_is_torch_steplr(step_size, gamma):
    ref = torch_factors(lambda o: T.StepLR(o, step_size, gamma))
    assert all(close(schedules.step_decay(n, step_size, gamma), r) for n, r in enumerate(ref))


@given(milestones=st.lists(st.integers(0, STEPS), max_size=6), gamma=gammas)
def test_multistep_decay_is_torch_multisteplr(milestones, gamma):
    ref = torch_factors(lambda o: T.MultiStepLR(o, milestones, gamma))
    m = sorted(milestones)
    assert all(close(schedules.multistep_decay(n, m, gamma), r) for n, r in enumerate(ref))


@given(gamma=st.floats(0.99, 1.0))
def test_exponential_decay_is_torch_exponentiallr(gamma):
    ref = torch_factors(lambda o: T.ExponentialLR(o, gamma))
    assert all(close(schedules.exponential_decay(n, gamma), r) for n, r in enumerate(ref))


@given(factor=st.floats(0.01, 1.0), total_iters=st.integers(1, 300))
def test_constant_factor_is_torch_constantlr(factor, total_iters):
    ref = torch_factors(lambda o: T.ConstantLR(o, factor, total_iters))
    assert all(
        close(schedules.constant_factor(n, factor, total_iters), r) for n, r in enumerate(ref)
    )


@given(start=st.floats(0.01, 1.0), end=st.floats(0.0, 1.0), total_iters=st.integers(1, 1000))
def test_linear_ramp_is_torch_linearlr(start, end, total_iters):
    ref = torch_factors(lambda o: T.LinearLR(o, start, end, total_iters))
    assert all(
        close(schedules.linear_ramp(n, start, end, total_iters), r) for n, r in enumerate(ref)
    )


@given(total_iters=st.integers(1, 1000), power=st.floats(0.0, 4.0))
def test_polynomial_decay_is_torch_polynomiallr(total_iters, power):
    ref = torch_factors(lambda o: T.PolynomialLR(o, total_iters, power))
    assert all(
        close(schedules.polynomial_decay(n, total_iters, power), r) for n, r in enumerate(ref)
    )


@given(T_max=st.integers(1, 1000), eta_min=st.floats(0.0, 0.5))
def test_cosine_annealing_is_torch_cosineannealinglr(T_max, eta_min):
    """torch's recursive form tracks its documented closed form over several periods here."""
    ref = torch_factors(lambda o: T.CosineAnnealingLR(o, T_max, eta_min))
    assert all(
        close(schedules.cosine_annealing(n, T_max, 1.0, eta_min), r) for n, r in enumerate(ref)
    )


def test_cosine_annealing_periodic_and_endpoints():
    assert schedules.cosine_annealing(0, 10, 0.5, 0.1) == 0.5
    assert close(schedules.cosine_annealing(10, 10, 0.5, 0.1), 0.1)
    assert close(schedules.cosine_annealing(5, 10, 0.5, 0.1), 0.3)
    assert close(schedules.cosine_annealing(20, 10, 0.5, 0.1), 0.5)  # back up, as torch


@given(T_0=st.integers(1, 50), T_mult=st.integers(1, 4), epochs=st.integers(1, 3000))
def test_warm_restart_position_matches_stepping(T_0, T_mult, epochs):
    """Stepping one epoch at a time (torch's step()) visits exactly the closed-form positions."""
    T_cur, T_i = 0, T_0
    for epoch in range(1, epochs + 1):
        T_cur += 1
        if T_cur >= T_i:
            T_cur, T_i = T_cur - T_i, T_i * T_mult
    assert schedules.warm_restart_position(epoch, T_0, T_mult) == (T_cur, T_i)


def test_warm_restart_position_exact_at_restarts_where_torch_is_not():
    """At epoch 121 with T_0=1, T_mult=3 a new cycle starts (1+3+9+27+81 = 121), so lr = base.

    torch's step(epoch) takes the cycle from int(log(...)), which rounds down to the previous
    cycle here and puts T_cur == T_i: eta_min instead of base_lr.
    """
    assert schedules.warm_restart_position(121, 1, 3) == (0, 243)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = T.CosineAnnealingWarmRestarts(opt, T_0=1, T_mult=3, eta_min=0.0)
    sched.step(121)
    assert (sched.T_cur, sched.T_i) == (81, 81)
    assert opt.param_groups[0]["lr"] == 0.0


def test_warm_restart_position_fractional():
    assert schedules.warm_restart_position(17.5, 10, 3) == (7.5, 30)
    assert schedules.warm_restart_position(2.5, 10, 1) == (2.5, 10)
    assert schedules.warm_restart_position(12.5, 10, 1) == (2.5, 10)


@given(
    total_steps=st.integers(10, STEPS),
    pct_start=st.floats(0.05, 0.95),
    strategy=st.sampled_from(["cos", "linear"]),
    three_phase=st.booleans(),
)
def test_one_cycle_is_torch_onecycle(total_steps, pct_start, strategy, three_phase):
    p = pct_start * total_steps
    if p == 1 or (three_phase and 2 * p - 2 == total_steps - 1):
        return  # a zero-length phase: torch divides by zero, see the next test
    make = lambda o: T.OneCycleLR(  # noqa: E731
        o, 1.0, total_steps, pct_start=pct_start, anneal_strategy=strategy,
        three_phase=three_phase, cycle_momentum=False,
    )  # fmt: skip
    ref = torch_factors(make, total_steps)
    start, end = 1.0 / 25, 1.0 / 25 / 1e4
    for n, r in enumerate(ref):
        value = schedules.one_cycle(n, total_steps, start, 1.0, end, pct_start, strategy, three_phase)
        assert close(value, r)


def test_one_cycle_endpoints():
    args = dict(total_steps=100, start=0.1, peak=1.0, end=0.001, pct_start=0.3)
    assert close(schedules.one_cycle(0, **args), 0.1)
    assert close(schedules.one_cycle(29, **args), 1.0)
    assert close(schedules.one_cycle(99, **args), 0.001)
    three = dict(args, three_phase=True)
    assert close(schedules.one_cycle(29, **three), 1.0)
    assert close(schedules.one_cycle(58, **three), 0.1)
    assert close(schedules.one_cycle(99, **three), 0.001)


@pytest.mark.parametrize(
    "total_steps, pct_start, three_phase, step",
    [(10, 0.1, False, 0), (4, 0.25, True, 0), (100, 1.0, False, 100)],
)
def test_one_cycle_zero_length_phase_names_pct_start(total_steps, pct_start, three_phase, step):
    """torch raises ZeroDivisionError here; we say which argument is at fault."""
    with pytest.raises(ValueError, match="pct_start"):
        schedules.one_cycle(step, total_steps, 0.1, 1.0, 0.0, pct_start, "cos", three_phase)


def test_cyclic_triangle_values():
    """torch's own test targets: base 1, max 5, four steps up, four down."""
    lrs = [schedules.cyclic(n, 1.0, 5.0, 8.0, 0.5) for n in range(11)]
    assert lrs == [1, 2, 3, 4, 5, 4, 3, 2, 1, 2, 3]
    momenta = [schedules.cyclic(n, 5.0, 1.0, 8.0, 0.5) for n in range(11)]
    assert momenta == [5, 4, 3, 2, 1, 2, 3, 4, 5, 4, 3]


def test_cyclic_position_uneven_and_scaled():
    positions = [schedules.cyclic_position(n, 10.0, 0.4) for n in (0, 4, 7, 10, 14)]
    assert [cycle for cycle, _ in positions] == [1, 1, 1, 2, 2]
    assert all(close(h, want) for (_, h), want in zip(positions, [0.0, 1.0, 0.5, 0.0, 1.0]))
    half = lambda cycle: 1 / 2.0 ** (cycle - 1)  # noqa: E731  triangular2
    assert close(schedules.cyclic(14, 1.0, 5.0, 10.0, 0.4, half), 3.0)


warmups = st.integers(0, 200)
factors = st.floats(0.0, 1.0)


@given(W=warmups, decay=st.integers(1, 2000), s=factors, m=factors)
def test_warmup_cosine_formula(W, decay, s, m):
    total = W + decay
    f = lambda n: schedules.warmup_cosine(n, W, total, s, m)  # noqa: E731
    assert close(f(0), s if W else 1.0)
    assert close(f(W), 1.0)
    if decay % 2 == 0:
        assert close(f(W + decay // 2), (1 + m) / 2)  # cosine midpoint
    assert close(f(total), m) and close(f(total + 7), m)
    if W:
        assert close(f(W // 2), s + (1 - s) * (W // 2) / W)
    decay_part = [f(n) for n in range(W, total + 1)]
    assert all(a >= b - 1e-15 for a, b in zip(decay_part, decay_part[1:]))


@given(
    W=warmups,
    stable=st.integers(0, 500),
    decay=st.integers(1, 1000),
    kind=st.sampled_from(["linear", "cosine", "1-sqrt"]),
    s=factors,
    m=factors,
)
def test_warmup_stable_decay_formula(W, stable, decay, kind, s, m):
    total = W + stable + decay
    f = lambda n: schedules.warmup_stable_decay(n, W, total, decay, kind, s, m)  # noqa: E731
    assert close(f(W), 1.0)
    assert close(f(total - decay), 1.0) and close(f(W + stable // 2), 1.0)
    if decay % 2 == 0:
        q = 0.5
        mid = {"linear": 1 - q, "cosine": (1 + math.cos(math.pi * q)) / 2, "1-sqrt": 1 - q**0.5}
        assert close(f(total - decay // 2), m + (1 - m) * mid[kind])
    assert close(f(total), m) and close(f(total + 3), m)
    tail = [f(n) for n in range(total - decay, total + 1)]
    assert all(a >= b - 1e-15 for a, b in zip(tail, tail[1:]))


@given(W=st.integers(1, 500), s=factors, k=st.integers(1, 50))
def test_inverse_sqrt_formula(W, s, k):
    f = lambda n: schedules.inverse_sqrt(n, W, s)  # noqa: E731
    assert f(0) == s
    assert f(W) == 1.0
    assert close(f(4 * W), 0.5)
    assert close(f(k * k * W), 1 / k)
    assert close(f(W // 2), s + (1 - s) * (W // 2) / W)


def test_learning_rate_tensors_pass_through():
    """A 0-dim tensor lr goes through the arithmetic, so schedulers need no .item() sync."""
    base = torch.tensor(0.5, dtype=torch.float64)
    lr = schedules.cosine_annealing(3, 10, base, 0.01)
    assert isinstance(lr, torch.Tensor) and close(float(lr), schedules.cosine_annealing(3, 10, 0.5, 0.01))
    lr = schedules.one_cycle(7, 100, base / 25, base, base / 25e4)
    assert isinstance(lr, torch.Tensor)
    lr = schedules.cyclic(3, base / 10, base, 8.0, 0.5)
    assert isinstance(lr, torch.Tensor) and close(float(lr), 0.05 + 0.45 * 0.75)
