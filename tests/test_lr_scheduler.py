"""torch_gd.lr_scheduler against torch.optim.lr_scheduler.

Values over thousands of steps, resuming (state_dict and last_epoch=N), tensor hyperparameters
kept in place, composition, torch's warnings and errors, and every place we deliberately differ.
"""

from __future__ import annotations

import math
import pickle
import re
import warnings

import pytest
import torch
from hypothesis import assume, given, strategies as st
from torch.optim import lr_scheduler as T

from torch_gd import lr_scheduler as G, schedules

STEPS = 2000
LRS = (0.1, 0.02)  # two param groups, so per-group values are exercised
STEP_ORDER = re.escape("Detected call of `lr_scheduler.step()` before `optimizer.step()`")


def close(a, b) -> bool:
    """The issue's tolerance: 1e-9 relative or 1e-12 absolute."""
    a, b = float(a), float(b)
    return abs(a - b) <= max(1e-12, 1e-9 * abs(b))


def make_opt(kind: str = "sgd", tensor: bool = False) -> torch.optim.Optimizer:
    groups = [
        {"params": [torch.nn.Parameter(torch.zeros(2))], "lr": torch.tensor(lr, dtype=torch.float64) if tensor else lr}
        for lr in LRS
    ]
    if kind == "sgd":
        return torch.optim.SGD(groups, momentum=0.9)
    return torch.optim.Adam(groups, betas=(0.9, 0.999))


# Module-level callables: LambdaLR's state_dict treats them as torch does (not saved).
def inverse_linear(n):
    return 1 / (1 + n)


def slow_wave(n):
    return 0.5 * (1 + math.cos(n / 50))


def warm_100(n):
    return min(1.0, (n + 1) / 100)


def shrink(n):
    return 0.999


def wobble(n):
    return 1.002 if n % 3 else 0.995


def decaying_scale(x):
    return 0.999**x


def per_group(strategy):
    return st.lists(strategy, min_size=len(LRS), max_size=len(LRS))


unit = st.floats(0.0, 1.0)


@st.composite
def one_cycle_kwargs(draw):
    total, pct, three = draw(st.integers(20, STEPS)), draw(st.floats(0.05, 0.95)), draw(st.booleans())
    p = pct * total
    assume(p != 1 and not (three and 2 * p - 2 == total - 1))  # zero-length phase: see errors
    return dict(
        max_lr=draw(per_group(st.floats(0.01, 1.0))), total_steps=total, pct_start=pct,
        anneal_strategy=draw(st.sampled_from(["cos", "linear"])), three_phase=three,
        cycle_momentum=draw(st.booleans()), base_momentum=draw(st.floats(0.5, 0.85)),
        max_momentum=draw(st.floats(0.85, 0.99)), div_factor=draw(st.floats(1.0, 100.0)),
        final_div_factor=draw(st.floats(1.0, 1e5)),
    )  # fmt: skip


@st.composite
def cyclic_kwargs(draw):
    kw = dict(
        base_lr=draw(per_group(st.floats(1e-4, 0.01))), max_lr=draw(per_group(st.floats(0.01, 1.0))),
        step_size_up=draw(st.integers(1, 400)), step_size_down=draw(st.none() | st.integers(0, 400)),
        mode=draw(st.sampled_from(["triangular", "triangular2", "exp_range"])),
        gamma=draw(st.floats(0.99, 1.0)), cycle_momentum=draw(st.booleans()),
        base_momentum=draw(st.floats(0.5, 0.85)), max_momentum=draw(st.floats(0.85, 0.99)),
    )  # fmt: skip
    if kw["mode"] == "triangular2":  # torch overflows after 1024 cycles, see below
        down = kw["step_size_up"] if kw["step_size_down"] is None else kw["step_size_down"]
        assume(kw["step_size_up"] + down >= 2)
    if draw(st.booleans()):
        kw.update(scale_fn=decaying_scale, scale_mode=draw(st.sampled_from(["cycle", "iterations"])))
    return kw


def fixed(**strategies):
    return st.fixed_dictionaries(strategies)


# Schedulers torch has, with the parameters drawn for them.
TORCH_KWARGS = {
    "StepLR": fixed(step_size=st.integers(1, 300), gamma=st.floats(0.1, 1.0)),
    "MultiStepLR": fixed(milestones=st.lists(st.integers(0, STEPS), max_size=6), gamma=st.floats(0.1, 1.0)),
    "ConstantLR": fixed(factor=st.floats(0.01, 1.0), total_iters=st.integers(1, 500)),
    "LinearLR": fixed(start_factor=st.floats(0.01, 1.0), end_factor=unit, total_iters=st.integers(1, STEPS)),
    "ExponentialLR": fixed(gamma=st.floats(0.99, 1.0)),
    "PolynomialLR": fixed(total_iters=st.integers(1, STEPS), power=st.floats(0.0, 3.0)),
    "CosineAnnealingLR": fixed(T_max=st.integers(1, STEPS), eta_min=st.floats(0.0, 0.01)),
    "CosineAnnealingWarmRestarts": fixed(T_0=st.integers(1, 300), T_mult=st.integers(1, 3), eta_min=st.floats(0.0, 0.01)),
    "OneCycleLR": one_cycle_kwargs(),
    "CyclicLR": cyclic_kwargs(),
    "LambdaLR": fixed(lr_lambda=st.sampled_from([inverse_linear, slow_wave, warm_100])),
    "MultiplicativeLR": fixed(lr_lambda=st.sampled_from([shrink, wobble])),
}  # fmt: skip


@st.composite
def warmup_cosine_kwargs(draw):
    warmup = draw(st.integers(0, 300))
    return dict(
        warmup_steps=warmup, total_steps=draw(st.integers(warmup + 1, STEPS)),
        start_factor=draw(unit), min_factor=draw(unit),
    )  # fmt: skip


@st.composite
def wsd_kwargs(draw):
    warmup, decay = draw(st.integers(0, 300)), draw(st.integers(1, 1000))
    return dict(
        warmup_steps=warmup, total_steps=warmup + decay + draw(st.integers(0, 700)),
        decay_steps=decay, decay_type=draw(st.sampled_from(["linear", "cosine", "1-sqrt"])),
        start_factor=draw(unit), min_factor=draw(unit),
    )  # fmt: skip


NEW_KWARGS = {
    "WarmupCosineLR": warmup_cosine_kwargs(),
    "WarmupStableDecayLR": wsd_kwargs(),
    "InverseSqrtLR": fixed(warmup_steps=st.integers(1, 500), start_factor=unit),
}
KWARGS = {**TORCH_KWARGS, **NEW_KWARGS}
# Every scheduler whose lr is a function of the step (LambdaLR's too).
STEP_FUNCTIONS = [name for name in KWARGS if name != "MultiplicativeLR"]


def build(module, name, opt, kw, last_epoch=-1):
    return getattr(module, name)(opt, **kw, last_epoch=last_epoch)


def n_steps(name, kw):
    # OneCycleLR allows total_steps steps, after which it raises, as torch's does.
    return kw["total_steps"] if name == "OneCycleLR" else STEPS


def assert_same(ours_opt, theirs_opt, ours, theirs, n, exact=False):
    same = (lambda a, b: float(a) == float(b)) if exact else close
    for g, h in zip(ours_opt.param_groups, theirs_opt.param_groups, strict=True):
        assert same(g["lr"], h["lr"]), (n, g["lr"], h["lr"])
        if "momentum" in h:
            assert same(g["momentum"], h["momentum"]), (n, g["momentum"], h["momentum"])
        if "betas" in h:
            assert same(g["betas"][0], h["betas"][0]) and g["betas"][1] == h["betas"][1], n
    assert all(same(a, b) for a, b in zip(ours.get_last_lr(), theirs.get_last_lr(), strict=True))
    assert getattr(ours, "last_epoch", None) == getattr(theirs, "last_epoch", None)


kinds = st.sampled_from(["sgd", "adam"])


# ---------------------------------------------------------------------------------------------
# Values.


@pytest.mark.parametrize("name", list(TORCH_KWARGS))
@given(data=st.data())
def test_matches_torch(name, data):
    """Same lr (and cycled momentum) as torch's scheduler, step after step."""
    kw, kind = data.draw(KWARGS[name]), data.draw(kinds)
    ours_opt, theirs_opt = make_opt(kind), make_opt(kind)
    ours, theirs = build(G, name, ours_opt, kw), build(T, name, theirs_opt, kw)
    ours_opt.step(), theirs_opt.step()
    assert_same(ours_opt, theirs_opt, ours, theirs, 0)
    for n in range(1, n_steps(name, kw) + 1):
        ours.step(), theirs.step()
        assert_same(ours_opt, theirs_opt, ours, theirs, n)


CLOSED_FORM = {
    "StepLR": lambda kw, n: schedules.step_decay(n, kw["step_size"], kw["gamma"]),
    "MultiStepLR": lambda kw, n: schedules.multistep_decay(n, sorted(kw["milestones"]), kw["gamma"]),
    "ConstantLR": lambda kw, n: schedules.constant_factor(n, kw["factor"], kw["total_iters"]),
    "LinearLR": lambda kw, n: schedules.linear_ramp(n, kw["start_factor"], kw["end_factor"], kw["total_iters"]),
    "ExponentialLR": lambda kw, n: schedules.exponential_decay(n, kw["gamma"]),
    "PolynomialLR": lambda kw, n: schedules.polynomial_decay(n, kw["total_iters"], kw["power"]),
    "WarmupCosineLR": lambda kw, n: schedules.warmup_cosine(n, **kw),
    "WarmupStableDecayLR": lambda kw, n: schedules.warmup_stable_decay(n, **kw),
    "InverseSqrtLR": lambda kw, n: schedules.inverse_sqrt(n, **kw),
}  # fmt: skip


@pytest.mark.parametrize("name", list(CLOSED_FORM))
@given(data=st.data())
def test_stepping_lands_on_the_closed_form(name, data):
    """After n steps, lr = base_lr · f(n) with f from torch_gd.schedules."""
    kw = data.draw(KWARGS[name])
    opt = make_opt()
    sched = build(G, name, opt, kw)
    opt.step()
    for n in range(STEPS + 1):
        if n:
            sched.step()
        factor = CLOSED_FORM[name](kw, n)
        assert all(close(g["lr"], lr * factor) for g, lr in zip(opt.param_groups, LRS))


@pytest.mark.parametrize("name", STEP_FUNCTIONS)
@given(data=st.data())
def test_jumping_equals_stepping(name, data):
    """step(epoch=n) -- torch's deprecated closed-form path -- lands where n steps do."""
    kw = data.draw(KWARGS[name])
    n = data.draw(st.integers(0, n_steps(name, kw)))
    walked_opt, jumped_opt = make_opt(), make_opt()
    walked, jumped = build(G, name, walked_opt, kw), build(G, name, jumped_opt, kw)
    walked_opt.step(), jumped_opt.step()
    for _ in range(n):
        walked.step()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # EPOCH_DEPRECATION_WARNING
        jumped.step(n)
    assert_same(jumped_opt, walked_opt, jumped, walked, n)


# ---------------------------------------------------------------------------------------------
# Resuming.


@pytest.mark.parametrize("name", list(KWARGS))
@given(data=st.data())
def test_state_dict_roundtrip_continues_identically(name, data):
    kw, kind = data.draw(KWARGS[name]), data.draw(kinds)
    steps = n_steps(name, kw)
    k = data.draw(st.integers(0, steps - 1))
    a_opt = make_opt(kind)
    a = build(G, name, a_opt, kw)
    a_opt.step()
    for _ in range(k):
        a.step()
    state = pickle.loads(pickle.dumps(a.state_dict()))
    b_opt = make_opt(kind)
    b = build(G, name, b_opt, kw)
    b_opt.step()
    if name == "MultiplicativeLR":  # a running product: its state is the optimizer's lr
        b_opt.load_state_dict(a_opt.state_dict())
    b.load_state_dict(state)
    assert b.get_last_lr() == a.get_last_lr() and b.last_epoch == a.last_epoch
    for n in range(k + 1, min(steps, k + 200) + 1):
        a.step(), b.step()
        assert_same(b_opt, a_opt, b, a, n, exact=True)


@pytest.mark.parametrize("name", STEP_FUNCTIONS)
@given(data=st.data())
def test_last_epoch_construction_continues_identically(name, data):
    """Constructed with last_epoch=k from a checkpoint's param groups, a scheduler is in the
    state of a fresh one after k + 1 steps (torch's convention: the constructor takes a step),
    whatever lr the optimizer holds, and continues identically."""
    kw, kind = data.draw(KWARGS[name]), data.draw(kinds)
    steps = n_steps(name, kw)
    k = data.draw(st.integers(0, steps - 2))
    ref_opt = make_opt(kind)
    ref = build(G, name, ref_opt, kw)
    ref_opt.step()
    for _ in range(k + 1):
        ref.step()
    opt = make_opt(kind)
    opt.load_state_dict(ref_opt.state_dict())  # brings initial_lr (and OneCycle's keys)
    for group in opt.param_groups:
        group["lr"] = 123.0
    resumed = build(G, name, opt, kw, last_epoch=k)
    assert resumed.last_epoch == k + 1
    assert_same(opt, ref_opt, resumed, ref, k + 1)
    opt.step()
    for n in range(k + 2, min(steps, k + 200) + 1):
        resumed.step(), ref.step()
        assert_same(opt, ref_opt, resumed, ref, n)


@pytest.mark.parametrize(
    "name",
    ["StepLR", "MultiStepLR", "ConstantLR", "LambdaLR", "OneCycleLR", "CyclicLR", "CosineAnnealingWarmRestarts"],
)
@given(data=st.data())
def test_last_epoch_construction_matches_torch_where_torch_resumes(name, data):
    """Both resume from the optimizer state saved after k steps; torch needs that lr restored."""
    kw, kind = data.draw(KWARGS[name]), data.draw(kinds)
    if name == "CosineAnnealingWarmRestarts":
        kw = dict(kw, T_mult=1)  # torch wraps at most once, see the WarmRestarts test below
    k = data.draw(st.integers(0, n_steps(name, kw) - 2))
    ref_opt = make_opt(kind)
    ref = build(T, name, ref_opt, kw)
    ref_opt.step()
    for _ in range(k):
        ref.step()
    checkpoint = ref_opt.state_dict()
    ours_opt, theirs_opt = make_opt(kind), make_opt(kind)
    ours_opt.load_state_dict(checkpoint), theirs_opt.load_state_dict(checkpoint)
    ours, theirs = build(G, name, ours_opt, kw, k), build(T, name, theirs_opt, kw, k)
    assert_same(ours_opt, theirs_opt, ours, theirs, k + 1)
    ours_opt.step(), theirs_opt.step()
    for n in range(k + 2, min(n_steps(name, kw), k + 100) + 1):
        ours.step(), theirs.step()
        assert_same(ours_opt, theirs_opt, ours, theirs, n)


def test_warm_restarts_resume_in_the_right_cycle():
    """With T_mult > 1 torch's constructor wraps T_cur only once: resumed at epoch 14 with T_0=4,
    T_mult=2 (cycles [0, 4), [4, 12), [12, 28)) it uses T_cur=2, T_i=8 instead of T_i=16."""
    opt = make_opt()
    ref = G.CosineAnnealingWarmRestarts(opt, T_0=4, T_mult=2)
    opt.step()
    for _ in range(14):
        ref.step()
    assert (ref.T_cur, ref.T_i) == (2, 16)
    for module, want in [(G, (2, 16)), (T, (2, 8))]:
        resumed_opt = make_opt()
        resumed_opt.load_state_dict(opt.state_dict())
        resumed = module.CosineAnnealingWarmRestarts(resumed_opt, T_0=4, T_mult=2, last_epoch=13)
        assert (resumed.T_cur, resumed.T_i) == want
    assert resumed_opt.param_groups[0]["lr"] != opt.param_groups[0]["lr"]  # torch's is off


def test_warm_restarts_fractional_epochs_as_torch():
    """torch's interleaved-epoch targets: T_mult=3, step(epoch) with fractional epochs."""
    epochs = [0, 0.1, 0.2, 0.3, 1.3, 2.3, 17.5, 18.5, 19.5, 29.5, 30.5, 31.5, 50]
    T_curs = [0, 0.1, 0.2, 0.3, 1.3, 2.3, 7.5, 8.5, 9.5, 19.5, 20.5, 21.5, 10]
    T_is = [10] * 6 + [30] * 6 + [90]
    opt = make_opt()
    sched = G.CosineAnnealingWarmRestarts(opt, T_0=10, T_mult=3, eta_min=1e-10)
    opt.step()
    for epoch, T_cur, T_i in zip(epochs, T_curs, T_is):
        sched.step(epoch)
        want = schedules.cosine_annealing(T_cur, T_i, LRS[0], 1e-10)
        assert close(opt.param_groups[0]["lr"], want), epoch
    sched.step(2.5)
    sched.step()  # as torch: on to epoch 3.5
    assert close(sched.T_cur, 3.5) and sched.last_epoch == 3


# ---------------------------------------------------------------------------------------------
# Tensor hyperparameters stay the same objects.


@pytest.mark.parametrize("name", list(KWARGS))
@given(data=st.data())
def test_tensor_lr_is_filled_in_place(name, data):
    kw = data.draw(KWARGS[name])
    t_opt, f_opt = make_opt(tensor=True), make_opt()
    lr_objects = [g["lr"] for g in t_opt.param_groups]
    t, f = build(G, name, t_opt, kw), build(G, name, f_opt, kw)
    t_opt.step(), f_opt.step()
    for n in range(min(n_steps(name, kw), 300) + 1):
        if n:
            t.step(), f.step()
        assert all(g["lr"] is lr for g, lr in zip(t_opt.param_groups, lr_objects))
        assert_same(t_opt, f_opt, t, f, n)
    last = t.get_last_lr()
    assert all(isinstance(x, torch.Tensor) and x is not lr for x, lr in zip(last, lr_objects))


@pytest.mark.parametrize("name", ["OneCycleLR", "CyclicLR"])
@pytest.mark.parametrize("kind", ["sgd", "adam"])
@given(data=st.data())
def test_cycled_tensor_momentum_is_filled_in_place(name, kind, data):
    """torch rebinds betas/momentum to floats (pytorch#133898); a tensor is filled instead and
    a betas tuple holding tensors stays the same tuple. Values are torch's."""
    kw = dict(data.draw(KWARGS[name]), cycle_momentum=True)
    ours_opt, theirs_opt = make_opt(kind), make_opt(kind)
    f64 = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
    for group in ours_opt.param_groups:
        if kind == "adam":
            group["betas"] = (f64(0.9), f64(0.999))
        else:
            group["momentum"] = f64(0.9)
    held = [g["betas"] if kind == "adam" else g["momentum"] for g in ours_opt.param_groups]
    beta1s = [b[0] for b in held] if kind == "adam" else held
    ours, theirs = build(G, name, ours_opt, kw), build(T, name, theirs_opt, kw)
    ours_opt.step(), theirs_opt.step()
    for n in range(min(n_steps(name, kw), 500) + 1):
        if n:
            ours.step(), theirs.step()
        for group, h, b1 in zip(ours_opt.param_groups, held, beta1s):
            assert (group["betas"] if kind == "adam" else group["momentum"]) is h
            if kind == "adam":
                assert group["betas"][0] is b1
        assert_same(ours_opt, theirs_opt, ours, theirs, n)


def test_float_betas_are_replaced_as_torch_does():
    opt = make_opt("adam")
    G.OneCycleLR(opt, 0.1, total_steps=100)
    assert all(type(g["betas"][0]) is float and close(g["betas"][0], 0.95) for g in opt.param_groups)


# ---------------------------------------------------------------------------------------------
# Composition.

CHAINABLE = ["StepLR", "MultiStepLR", "ConstantLR", "LinearLR", "ExponentialLR", "PolynomialLR",
             "CosineAnnealingLR", "LambdaLR", "MultiplicativeLR", "CosineAnnealingWarmRestarts"]  # fmt: skip


@st.composite
def compositions(draw, names):
    picked = draw(st.lists(st.sampled_from(names), min_size=1, max_size=3))
    return [(name, draw(KWARGS[name])) for name in picked]


def run_pair(make, steps, kind="sgd"):
    ours_opt, theirs_opt = make_opt(kind), make_opt(kind)
    ours, theirs = make(G, ours_opt), make(T, theirs_opt)
    ours_opt.step(), theirs_opt.step()
    for n in range(steps + 1):
        if n:
            ours.step(), theirs.step()
        assert_same(ours_opt, theirs_opt, ours, theirs, n)


@given(parts=compositions(CHAINABLE), kind=kinds)
def test_chained_scheduler_matches_torch(parts, kind):
    """torch composes recursively, each scheduler rescaling the lr the previous one left; so do we,
    including the value right after construction."""

    def make(module, opt):
        return module.ChainedScheduler([build(module, n, opt, kw) for n, kw in parts], optimizer=opt)

    run_pair(make, 1000, kind)


@st.composite
def sequences(draw):
    parts = draw(compositions(CHAINABLE + ["CyclicLR"]))
    gaps = draw(st.lists(st.integers(1, 400), min_size=len(parts) - 1, max_size=len(parts) - 1))
    return parts, [sum(gaps[: i + 1]) for i in range(len(gaps))]


@given(seq=sequences(), kind=kinds)
def test_sequential_lr_matches_torch(seq, kind):
    parts, milestones = seq

    def make(module, opt):
        return module.SequentialLR(opt, [build(module, n, opt, kw) for n, kw in parts], milestones)

    run_pair(make, 1500, kind)


@pytest.mark.filterwarnings("ignore:Detected call")  # torch's SequentialLR steps a first composite
def test_nested_composites_match_torch():
    def chain_first(M, opt):
        inner = M.ChainedScheduler([M.ConstantLR(opt, 0.5, 5), M.ExponentialLR(opt, 0.95)])
        return M.SequentialLR(opt, [inner, M.CosineAnnealingLR(opt, 100, 1e-3)], milestones=[40])

    def sequence_inside(M, opt):
        warm = M.SequentialLR(opt, [M.LinearLR(opt, 0.1, 1.0, 10), M.ExponentialLR(opt, 0.99)], [10])
        return M.ChainedScheduler([warm, M.MultiStepLR(opt, [100, 200], 0.3)])

    run_pair(chain_first, 600)
    run_pair(sequence_inside, 600)


@given(seq=sequences(), n=st.integers(0, 1200))
def test_sequential_lr_last_epoch_continues_identically(seq, n):
    """SequentialLR(last_epoch=n) is a fresh SequentialLR after n + 1 steps."""
    parts, milestones = seq
    ref_opt, opt = make_opt(), make_opt()
    ref = G.SequentialLR(ref_opt, [build(G, p, ref_opt, kw) for p, kw in parts], milestones)
    ref_opt.step()
    for _ in range(n + 1):
        ref.step()
    resumed = G.SequentialLR(opt, [build(G, p, opt, kw) for p, kw in parts], milestones, last_epoch=n)
    opt.step()
    for m in range(n + 1, n + 200):
        if m > n + 1:
            ref.step(), resumed.step()
        assert_same(opt, ref_opt, resumed, ref, m)


def test_sequential_lr_last_epoch_where_torch_starts_over():
    """pytorch#162591: ConstantLR(0.1, 20) then ExponentialLR(0.9) from step 3; resumed with
    last_epoch=4 torch restarts the first scheduler (0.1); we are at step 5: 0.9² = 0.81."""

    def make(module, last_epoch=-1):
        opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        parts = [module.ConstantLR(opt, factor=0.1, total_iters=20), module.ExponentialLR(opt, gamma=0.9)]
        return opt, module.SequentialLR(opt, parts, milestones=[3], last_epoch=last_epoch)

    opt, fresh = make(G)
    opt.step()
    lrs = [fresh.get_last_lr()[0]]
    for _ in range(5):
        fresh.step()
        lrs.append(fresh.get_last_lr()[0])
    assert [round(x, 12) for x in lrs] == [0.1, 0.1, 0.1, 1.0, 0.9, 0.81]
    assert close(make(G, last_epoch=4)[1].get_last_lr()[0], 0.81)
    assert make(T, last_epoch=4)[1].get_last_lr()[0] == 0.1


def test_chained_scheduler_state_dict_with_the_optimizer():
    """A chain's lr lives in the optimizer (torch's recursion): restore both, as torch says."""

    def make(opt):
        return G.ChainedScheduler([G.ExponentialLR(opt, 0.99), G.CosineAnnealingLR(opt, 50, 1e-3)])

    a_opt, b_opt = make_opt(), make_opt()
    a, b = make(a_opt), make(b_opt)
    a_opt.step(), b_opt.step()
    for _ in range(77):
        a.step()
    b_opt.load_state_dict(a_opt.state_dict())
    b.load_state_dict(pickle.loads(pickle.dumps(a.state_dict())))
    for n in range(78, 300):
        a.step(), b.step()
        assert_same(b_opt, a_opt, b, a, n, exact=True)


# ---------------------------------------------------------------------------------------------
# ReduceLROnPlateau: torch's semantics.


@given(
    mode=st.sampled_from(["min", "max"]),
    threshold_mode=st.sampled_from(["rel", "abs"]),
    factor=st.floats(0.05, 0.9),
    patience=st.integers(0, 8),
    threshold=st.floats(0.0, 0.1),
    cooldown=st.integers(0, 5),
    min_lr=st.floats(0.0, 1e-3) | per_group(st.floats(0.0, 1e-3)),
    eps=st.sampled_from([0.0, 1e-8, 1e-4]),
    metrics=st.lists(st.floats(-10, 10) | st.sampled_from([0.0, 1.0]), min_size=1, max_size=300),
    tensor=st.booleans(),
)
def test_reduce_lr_on_plateau_matches_torch(mode, threshold_mode, factor, patience, threshold,
                                            cooldown, min_lr, eps, metrics, tensor):  # fmt: skip
    kw = dict(mode=mode, threshold_mode=threshold_mode, factor=factor, patience=patience,
              threshold=threshold, cooldown=cooldown, min_lr=min_lr, eps=eps)  # fmt: skip
    ours_opt, theirs_opt = make_opt(tensor=tensor), make_opt()
    lr_objects = [g["lr"] for g in ours_opt.param_groups]
    ours, theirs = G.ReduceLROnPlateau(ours_opt, **kw), T.ReduceLROnPlateau(theirs_opt, **kw)
    for n, metric in enumerate(metrics):
        ours.step(metric), theirs.step(torch.tensor(metric, dtype=torch.float64))
        assert_same(ours_opt, theirs_opt, ours, theirs, n)
        assert (ours.best, ours.num_bad_epochs, ours.cooldown_counter) == (
            theirs.best, theirs.num_bad_epochs, theirs.cooldown_counter)  # fmt: skip
    if tensor:
        assert all(g["lr"] is lr for g, lr in zip(ours_opt.param_groups, lr_objects))


# ---------------------------------------------------------------------------------------------
# The schedules torch lacks, at warmup end, midpoint and end.


def lrs_at(sched, opt, steps):
    opt.step()
    out = {0: [g["lr"] for g in opt.param_groups]}
    for n in range(1, max(steps) + 1):
        sched.step()
        out[n] = [g["lr"] for g in opt.param_groups]
    return out


@given(W=st.integers(1, 300), decay=st.integers(1, 500).map(lambda d: 2 * d), s=unit, m=unit)
def test_warmup_cosine_lr_formula(W, decay, s, m):
    opt = make_opt()
    T_ = W + decay
    at = lrs_at(G.WarmupCosineLR(opt, W, T_, start_factor=s, min_factor=m), opt, [T_ + 10])
    for i, base in enumerate(LRS):
        assert close(at[0][i], base * s)
        assert close(at[W // 2][i], base * (s + (1 - s) * (W // 2) / W))
        assert close(at[W][i], base)  # warmup end
        assert close(at[W + decay // 2][i], base * (1 + m) / 2)  # midpoint of the cosine
        assert close(at[T_][i], base * m) and close(at[T_ + 10][i], base * m)  # end, and after


@given(W=st.integers(1, 300), decay=st.integers(1, 500), s=st.floats(0.01, 1.0), m=unit)
def test_warmup_cosine_lr_is_torch_linear_then_cosine(W, decay, s, m):
    """For one group: torch's SequentialLR(LinearLR warmup, CosineAnnealingLR to eta_min)."""
    base, total = 0.1, W + decay
    ours_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base)
    theirs_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base)
    ours = G.WarmupCosineLR(ours_opt, W, total, start_factor=s, min_factor=m)
    parts = [T.LinearLR(theirs_opt, s, 1.0, W), T.CosineAnnealingLR(theirs_opt, decay, base * m)]
    theirs = T.SequentialLR(theirs_opt, parts, milestones=[W])
    ours_opt.step(), theirs_opt.step()
    for n in range(total + 1):
        if n:
            ours.step(), theirs.step()
        assert close(ours_opt.param_groups[0]["lr"], theirs_opt.param_groups[0]["lr"]), n


@given(
    W=st.integers(0, 200),
    stable=st.integers(0, 300),
    decay=st.integers(1, 300).map(lambda d: 2 * d),
    kind=st.sampled_from(["linear", "cosine", "1-sqrt"]),
    s=unit,
    m=unit,
)
def test_warmup_stable_decay_lr_formula(W, stable, decay, kind, s, m):
    total = W + stable + decay
    opt = make_opt()
    sched = G.WarmupStableDecayLR(opt, W, total, decay, kind, start_factor=s, min_factor=m)
    at = lrs_at(sched, opt, [total + 5])
    mid = {"linear": 0.5, "cosine": 0.5, "1-sqrt": 1 - math.sqrt(0.5)}[kind]
    for i, base in enumerate(LRS):
        if W:
            assert close(at[0][i], base * s)
        assert close(at[W][i], base)  # warmup end
        assert close(at[total - decay][i], base)  # end of the plateau
        assert close(at[total - decay // 2][i], base * (m + (1 - m) * mid))  # decay midpoint
        assert close(at[total][i], base * m) and close(at[total + 5][i], base * m)


@given(W=st.integers(1, 300), s=unit, k=st.integers(2, 5))
def test_inverse_sqrt_lr_formula(W, s, k):
    opt = make_opt()
    at = lrs_at(G.InverseSqrtLR(opt, W, start_factor=s), opt, [k * k * W])
    for i, base in enumerate(LRS):
        assert close(at[0][i], base * s)
        assert close(at[W // 2][i], base * (s + (1 - s) * (W // 2) / W))
        assert close(at[W][i], base)  # warmup end: the peak
        assert close(at[4 * W][i], base / 2) and close(at[k * k * W][i], base / k)


# ---------------------------------------------------------------------------------------------
# torch's conventions: warnings.


def every_scheduler(opt, name):
    kw = {
        "StepLR": dict(step_size=3), "MultiStepLR": dict(milestones=[2]), "ConstantLR": {},
        "LinearLR": {}, "ExponentialLR": dict(gamma=0.9), "PolynomialLR": {},
        "CosineAnnealingLR": dict(T_max=10), "CosineAnnealingWarmRestarts": dict(T_0=5),
        "OneCycleLR": dict(max_lr=0.1, total_steps=10), "CyclicLR": dict(base_lr=0.01, max_lr=0.1),
        "LambdaLR": dict(lr_lambda=inverse_linear), "MultiplicativeLR": dict(lr_lambda=shrink),
        "WarmupCosineLR": dict(warmup_steps=2, total_steps=10),
        "WarmupStableDecayLR": dict(warmup_steps=2, total_steps=10, decay_steps=3),
        "InverseSqrtLR": dict(warmup_steps=2),
    }[name]  # fmt: skip
    return getattr(G, name)(opt, **kw)


@pytest.mark.parametrize("name", list(KWARGS))
def test_step_before_optimizer_step_warns_as_torch(name):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # constructing warns about nothing
        sched = every_scheduler(make_opt(), name)
    with pytest.warns(UserWarning, match=STEP_ORDER):
        sched.step()


@pytest.mark.parametrize("name", list(KWARGS))
def test_right_order_does_not_warn(name):
    opt = make_opt()
    sched = every_scheduler(opt, name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(3):
            opt.step()
            sched.step()


def test_composites_warn_through_their_schedulers():
    opt = make_opt()
    chain = G.ChainedScheduler([G.StepLR(opt, 3), G.ExponentialLR(opt, 0.9)])
    with pytest.warns(UserWarning, match=STEP_ORDER):
        chain.step()
    opt = make_opt()
    seq = G.SequentialLR(opt, [G.LinearLR(opt), G.ExponentialLR(opt, 0.9)], milestones=[2])
    with pytest.warns(UserWarning, match=STEP_ORDER):
        seq.step()


def test_get_lr_outside_step_warns_as_torch():
    sched = G.StepLR(make_opt(), 3)
    with pytest.warns(UserWarning, match="get_last_lr"):
        sched.get_lr()


# ---------------------------------------------------------------------------------------------
# Errors: torch's where torch checks, ours where it crashes or accepts nonsense.


def sgd():
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.9)


def adagrad():
    return torch.optim.Adagrad([torch.nn.Parameter(torch.zeros(1))], lr=0.1)


TORCH_ERRORS = [
    ("StepLR", lambda: ("not an optimizer", 3), {}),
    ("StepLR", lambda: (sgd(), 3), dict(last_epoch=5)),  # no initial_lr in the groups: KeyError
    ("LinearLR", lambda: (sgd(),), dict(start_factor=0.0)),
    ("LinearLR", lambda: (sgd(),), dict(start_factor=1.1)),
    ("LinearLR", lambda: (sgd(),), dict(end_factor=-0.1)),
    ("ConstantLR", lambda: (sgd(),), dict(factor=1.5)),
    ("CosineAnnealingWarmRestarts", lambda: (sgd(), 0), {}),
    ("CosineAnnealingWarmRestarts", lambda: (sgd(), 2.5), {}),
    ("CosineAnnealingWarmRestarts", lambda: (sgd(), 5), dict(T_mult=0)),
    ("CosineAnnealingWarmRestarts", lambda: (sgd(), 5), dict(eta_min="0")),
    ("OneCycleLR", lambda: (sgd(), 0.1), dict(total_steps=0)),
    ("OneCycleLR", lambda: (sgd(), 0.1), {}),
    ("OneCycleLR", lambda: (sgd(), 0.1), dict(epochs=0, steps_per_epoch=10)),
    ("OneCycleLR", lambda: (sgd(), 0.1), dict(total_steps=10, pct_start=1.1)),
    ("OneCycleLR", lambda: (sgd(), 0.1), dict(total_steps=10, anneal_strategy="CATS")),
    ("OneCycleLR", lambda: (adagrad(), 0.1), dict(total_steps=10)),
    ("OneCycleLR", lambda: (sgd(), [0.1, 0.2]), dict(total_steps=10)),
    ("CyclicLR", lambda: (sgd(), 0.0, 0.0), dict(mode="CATS")),
    ("CyclicLR", lambda: (adagrad(), 0.01, 0.1), {}),
    ("CyclicLR", lambda: (sgd(), [0.01, 0.02], 0.1), {}),
    ("LambdaLR", lambda: (sgd(), [inverse_linear, inverse_linear]), {}),
    ("MultiplicativeLR", lambda: (sgd(), 0.9), {}),
    ("ReduceLROnPlateau", lambda: (sgd(),), dict(factor=1.0)),
    ("ReduceLROnPlateau", lambda: (sgd(),), dict(mode="CATS")),
    ("ReduceLROnPlateau", lambda: (sgd(),), dict(threshold_mode="CATS")),
    ("ReduceLROnPlateau", lambda: (sgd(),), dict(min_lr=[0.0, 0.0])),
    ("ReduceLROnPlateau", lambda: ("not an optimizer",), {}),
]


def raised(construct) -> Exception:
    with pytest.raises(Exception) as info:
        construct()
    return info.value


@pytest.mark.parametrize("name, args, kwargs", TORCH_ERRORS)
def test_torch_errors_are_torch_errors(name, args, kwargs):
    theirs = raised(lambda: getattr(T, name)(*args(), **kwargs))
    ours = raised(lambda: getattr(G, name)(*args(), **kwargs))
    assert type(ours) is type(theirs) and str(ours) == str(theirs)


def two_optimizers(module):
    a, b = sgd(), sgd()
    return a, [module.StepLR(a, 3), module.StepLR(b, 3)]


COMPOSITE_ERRORS = [
    ("SequentialLR", lambda M: (sgd(), [], [])),
    ("SequentialLR", lambda M: (lambda o: (o, [M.StepLR(o, 3), M.StepLR(o, 3)], [1, 2]))(sgd())),
    ("SequentialLR", lambda M: (lambda a, s: (a, s, [2]))(*two_optimizers(M))),
    ("SequentialLR", lambda M: (lambda o: (o, [M.StepLR(o, 3), M.ReduceLROnPlateau(o)], [2]))(sgd())),
    ("ChainedScheduler", lambda M: ([],)),
    ("ChainedScheduler", lambda M: (two_optimizers(M)[1],)),
    ("ChainedScheduler", lambda M: (lambda o: ([M.StepLR(o, 3), M.ReduceLROnPlateau(o)],))(sgd())),
]


@pytest.mark.parametrize("name, args", COMPOSITE_ERRORS)
def test_torch_composite_errors_are_torch_errors(name, args):
    theirs, ours = raised(lambda: getattr(T, name)(*args(T))), raised(lambda: getattr(G, name)(*args(G)))
    assert type(ours) is type(theirs) and str(ours) == str(theirs)


OUR_ERRORS = [
    # (scheduler, args after the optimizer, kwargs, the argument the message must name)
    ("StepLR", (0,), {}, "step_size"),  # torch: ZeroDivisionError at the first step
    ("StepLR", (2.5,), {}, "step_size"),  # torch: decays at 5, 10, ... but its closed form at 3, 5, 8
    ("StepLR", (3,), dict(gamma=-0.5), "gamma"),
    ("StepLR", (3,), dict(last_epoch=-2), "last_epoch"),
    ("MultiStepLR", ([-1, 4],), {}, "milestones"),
    ("MultiStepLR", ([2.5],), {}, "milestones"),
    ("ExponentialLR", (-0.9,), {}, "gamma"),
    ("ExponentialLR", (float("nan"),), {}, "gamma"),
    ("ConstantLR", (), dict(total_iters=0), "total_iters"),  # torch: factor forever
    ("LinearLR", (), dict(total_iters=0), "total_iters"),
    ("LinearLR", (), dict(total_iters=2.5), "total_iters"),
    ("PolynomialLR", (), dict(total_iters=0), "total_iters"),
    ("PolynomialLR", (), dict(power=-1.0), "power"),  # torch: ZeroDivisionError at total_iters
    ("CosineAnnealingLR", (0,), {}, "T_max"),  # torch: ZeroDivisionError at the first step
    ("CosineAnnealingLR", (10,), dict(eta_min=-0.1), "eta_min"),
    ("CosineAnnealingWarmRestarts", (10,), dict(eta_min=-0.1), "eta_min"),
    ("OneCycleLR", (0.1,), dict(total_steps=10, div_factor=0.0), "div_factor"),
    ("OneCycleLR", (0.1,), dict(total_steps=10, final_div_factor=-1.0), "final_div_factor"),
    ("OneCycleLR", (-0.1,), dict(total_steps=10), "max_lr"),
    ("OneCycleLR", (0.1,), dict(total_steps=10, base_momentum=-0.5), "base_momentum"),
    ("CyclicLR", (0.01, 0.1), dict(step_size_up=0), "step_size_up"),  # torch: ZeroDivisionError
    ("CyclicLR", (0.01, 0.1), dict(step_size_down=-3), "step_size_down"),
    ("CyclicLR", (-0.01, 0.1), {}, "base_lr"),
    ("CyclicLR", (0.01, 0.1), dict(mode="exp_range", gamma=0.0), "gamma"),
    ("CyclicLR", (0.01, 0.1), dict(mode="exp_range", gamma=1.5), "gamma"),  # scale above 1
    ("CyclicLR", (0.01, 0.1), dict(scale_fn=decaying_scale, scale_mode="epochs"), "scale_mode"),
    ("LambdaLR", (0.5,), {}, "lr_lambda"),  # torch: TypeError 'float' object is not callable
    ("ReduceLROnPlateau", (), dict(factor=-0.5), "factor"),
    ("ReduceLROnPlateau", (), dict(patience=-1), "patience"),
    ("ReduceLROnPlateau", (), dict(cooldown=-1), "cooldown"),
    ("ReduceLROnPlateau", (), dict(threshold=-0.1), "threshold"),
    ("ReduceLROnPlateau", (), dict(eps=-1.0), "eps"),
    ("ReduceLROnPlateau", (), dict(min_lr=-1e-3), "min_lr"),
    ("WarmupCosineLR", (10, 10), {}, "total_steps"),
    ("WarmupCosineLR", (-1, 10), {}, "warmup_steps"),
    ("WarmupCosineLR", (2, 10), dict(min_factor=1.5), "min_factor"),
    ("WarmupCosineLR", (2, 10), dict(start_factor=-0.1), "start_factor"),
    ("WarmupStableDecayLR", (2, 10, 0), {}, "decay_steps"),
    ("WarmupStableDecayLR", (5, 10, 6), {}, "total_steps"),
    ("WarmupStableDecayLR", (2, 10, 3), dict(decay_type="exp"), "decay_type"),
    ("InverseSqrtLR", (0,), {}, "warmup_steps"),
    ("InverseSqrtLR", (2.5,), {}, "warmup_steps"),
]


@pytest.mark.parametrize("name, args, kwargs, argument", OUR_ERRORS)
def test_nonsense_arguments_raise_naming_the_argument(name, args, kwargs, argument):
    opt = sgd()
    before = [dict(g) for g in opt.param_groups]
    with pytest.raises((ValueError, TypeError), match=argument):
        getattr(G, name)(opt, *args, **kwargs)
    assert [dict(g) for g in opt.param_groups] == before  # checked before touching the optimizer


def test_sequential_lr_milestones_must_increase():
    for milestones in ([5, 3], [0], [2, 2]):
        opt = sgd()
        parts = [G.StepLR(opt, 3) for _ in range(len(milestones) + 1)]
        with pytest.raises(ValueError, match="milestones"):
            G.SequentialLR(opt, parts, milestones)


def test_one_cycle_zero_length_phase_is_a_value_error():
    """pct_start · total_steps = 1 leaves the warmup empty: torch raises ZeroDivisionError."""
    with pytest.raises(ZeroDivisionError):
        T.OneCycleLR(sgd(), 0.1, total_steps=10, pct_start=0.1)
    with pytest.raises(ValueError, match="pct_start"):
        G.OneCycleLR(sgd(), 0.1, total_steps=10, pct_start=0.1)


def test_composite_after_the_first_in_sequential_lr_is_rejected():
    """torch restarts later schedulers with _update_lr(0), which a composite does not have."""
    opt = sgd()
    inner = G.ChainedScheduler([G.StepLR(opt, 3)])
    with pytest.raises(ValueError, match=r"schedulers\[1\]"):
        G.SequentialLR(opt, [G.StepLR(opt, 3), inner], milestones=[5])


# ---------------------------------------------------------------------------------------------
# Where we deliberately differ from torch.


def test_closed_form_overwrites_a_manual_lr_change():
    """torch's chainable form keeps building on a manual change; ours returns to the schedule."""
    for module, want in [(G, 0.1 * 0.9**3), (T, 0.5 * 0.9)]:
        opt = make_opt()
        sched = module.ExponentialLR(opt, 0.9)
        opt.step()
        sched.step(), sched.step()
        opt.param_groups[0]["lr"] = 0.5
        sched.step()
        assert close(opt.param_groups[0]["lr"], want)


def test_constant_lr_factor_zero():
    """factor=0 is in torch's documented range, but torch divides by it at total_iters."""
    for module in (G, T):
        opt = make_opt()
        sched = module.ConstantLR(opt, factor=0.0, total_iters=3)
        opt.step()
        sched.step(), sched.step()
        assert opt.param_groups[0]["lr"] == 0.0
        if module is T:
            with pytest.raises(ZeroDivisionError):
                sched.step()
        else:
            sched.step()
            assert opt.param_groups[0]["lr"] == LRS[0]


def test_cyclic_lr_triangular2_past_1024_cycles():
    """torch computes 1 / 2.0 ** (cycle - 1), an OverflowError from cycle 1025 on."""
    for module in (G, T):
        opt = make_opt()
        sched = module.CyclicLR(opt, 0.01, 0.1, step_size_up=1, step_size_down=0, mode="triangular2")
        opt.step()
        for _ in range(1023):
            sched.step()
        if module is T:
            with pytest.raises(OverflowError):
                sched.step()
        else:
            for _ in range(100):
                sched.step()
            assert opt.param_groups[0]["lr"] == 0.01


def test_cosine_annealing_closed_form_is_torchs_documented_one():
    """Ours is torch's documented closed form (torch's own step(epoch) path) exactly; torch's
    recursive steps drift from it by more than 1e-9 relative when eta_min is well above the
    base lr and T_max is in the thousands (here 3.5e-9 over two periods)."""
    base, eta_min, T_max = 1.0, 10.0, 3000
    ours_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base)
    theirs_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base)
    ours = G.CosineAnnealingLR(ours_opt, T_max, eta_min)
    theirs = T.CosineAnnealingLR(theirs_opt, T_max, eta_min)
    ours_opt.step(), theirs_opt.step()
    worst = 0.0
    for n in range(1, 2 * T_max + 1):
        ours.step(), theirs.step()
        documented = eta_min + (base - eta_min) * (1 + math.cos(math.pi * n / T_max)) / 2
        assert ours_opt.param_groups[0]["lr"] == documented
        worst = max(worst, abs(theirs_opt.param_groups[0]["lr"] / documented - 1))
    assert 1e-9 < worst < 1e-8
