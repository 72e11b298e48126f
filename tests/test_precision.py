"""The precision policy: ``param_update`` and ``state_dtype``, on every optimizer and path.

Properties of the rounding itself (unbiased stochastic rounding that never passes a neighbour,
rounding to nearest equal to torch's cast, Kahan sums within an ulp of fp32), the fp32 master
against the same path on fp32 params and against torch.optim, bf16 state, reproducibility,
checkpoints both ways, bad input, and a regression task where plain bf16 stalls.
"""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch

import torch_gd
from torch_gd import _precision

from .helpers import assert_params_close, at_operand_scale, pack_max_numel, tol
from .registry import CASES

cases = pytest.mark.parametrize("case", CASES, ids=repr)
PATHS = {"per-tensor": dict(foreach=False), "default": {}, "capturable": dict(capturable=True),
         "fused": dict(fused=True)}
paths = pytest.mark.parametrize("path", PATHS)
UPDATES = ["fp32_master", "kahan", "stochastic_rounding"]
# Small params are packed, the large ones (above the boundary set below) updated one by one.
SHAPES = [(3, 4), (5,), (7, 6), (300,), (20, 30)]
BOUNDARY = 100


def _kwargs(case, path):
    if path == "capturable" and case.name == "SGD":
        pytest.skip("SGD has no capturable path")
    return {**case.typical, **PATHS[path]}


def _params(dtype, seed=0, shapes=SHAPES):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter((1 + torch.rand(s, generator=gen)).to(dtype)) for s in shapes]


def _grads(params, gen, dtype=None):
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen).to(dtype or p.dtype)


def _step_together(opt, ref, ours, theirs, gen, steps):
    """``steps`` steps of ``opt`` on ``ours`` and ``ref`` on ``theirs``, with the same grads
    (drawn for ``ours``, cast to each of ``theirs``' dtype)."""
    for _ in range(steps):
        _grads(ours, gen)
        for p, q in zip(ours, theirs):
            q.grad = p.grad.to(q.dtype, copy=True)
        opt.step()
        ref.step()


# ---------------------------------------------------------------- the rounding itself


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("split", [True, False], ids=["veltkamp", "integer"])
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_nearest_rounding_is_torchs_cast(dtype, split, compiled):
    """Both ways of rounding to nearest (the CPU's and the other devices'), eagerly and inside
    a compiled kernel, give torch's cast, on values from 1e-9 to 1e4 and at ties."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1 << 16, generator=gen) * torch.logspace(-9, 4, 1 << 16)
    x = torch.cat([x, torch.tensor([0.0, -0.0, 1e-8, 2**-25, 3 * 2**-25, 1.0 + 2**-8, 1.0 + 3 * 2**-8,
                                    1.0 + 2**-11, 1.0 + 3 * 2**-11, 2**-24 * 2.5, -(2**-24) * 3.5])])
    fn = lambda v: _precision.nearest(v, dtype, split)  # noqa: E731
    if compiled:
        fn = torch.compile(fn, fullgraph=True, dynamic=True)
    expected = x.to(dtype).float()
    in_range = x.abs() < torch.finfo(dtype).max
    torch.testing.assert_close(fn(x)[in_range], expected[in_range], rtol=0, atol=0)


@pytest.mark.parametrize("dtype,low", [(torch.bfloat16, 1.0), (torch.bfloat16, -3.5), (torch.bfloat16, 1e-30),
                                       (torch.float16, 1.0), (torch.float16, -2.0**-20)])
@pytest.mark.parametrize("fraction", [0.0, 1 / 16, 0.25, 0.5, 0.7, 15 / 16])
def test_stochastic_rounding_is_unbiased_and_stays_between_neighbours(dtype, low, fraction):
    lo = torch.tensor(low, dtype=dtype)
    hi = torch.nextafter(lo.float(), torch.tensor(math.copysign(math.inf, low))).to(dtype)
    if hi == lo:  # the fp32 neighbour rounds back: step a whole ulp of dtype instead
        hi = (lo.view(torch.int16) + 1).view(dtype)
    x = lo.float() + fraction * (hi.float() - lo.float())
    n = 40_000
    xs = x.expand(n).contiguous()
    r = _precision._noise(12345, 7, 0, xs)
    out = _precision.stochastic_round(xs, dtype, r)
    assert bool(((out == lo) | (out == hi)).all())
    p_up = float((out == hi).double().mean())
    se = math.sqrt(max(fraction * (1 - fraction), 1 / n) / n)
    assert abs(p_up - fraction) <= 4 * se, (p_up, fraction)


def test_stochastic_rounding_keeps_non_finite_values():
    x = torch.tensor([math.inf, -math.inf, math.nan, 0.0])
    out = _precision.stochastic_round(x, torch.bfloat16, torch.full((4,), 0xFFFF, dtype=torch.int32))
    assert out[0] == math.inf and out[1] == -math.inf and out[2].isnan() and out[3] == 0


def test_random_bits_are_the_same_compiled():
    def f(x, seed, count):
        return _precision.stochastic_round(x, torch.bfloat16, _precision._noise(seed, count, 1, x))

    x = torch.randn(4096) * 3
    seed, count = torch.tensor(99.0, dtype=torch.float64), torch.tensor(5.0)
    compiled = torch.compile(f, fullgraph=True, dynamic=True)
    assert torch.equal(compiled(x, seed, count), f(x, 99, 5))
    assert not torch.equal(f(x, 99, 5), f(x, 99, 6))  # each step draws other bits


@pytest.mark.parametrize("path", ["per-tensor", "default", "fused"])
def test_kahan_sum_of_tiny_updates_is_the_fp32_sum(path):
    """N updates far below half an ulp of the weight: Kahan summation ends within one bf16 ulp
    of the fp32 sum, where rounding each update to nearest never moves the weight. (Compiled,
    the compensation reads back a rounding: a cast round trip there is dropped by Inductor.)"""
    n, lr = 200, 1e-3
    start = torch.linspace(1.0, 1.9, 64)
    with pack_max_numel(BOUNDARY):
        p = torch.nn.Parameter(start.to(torch.bfloat16))
        plain = torch.nn.Parameter(start.to(torch.bfloat16))
        opt = torch_gd.SGD([p], lr=lr, param_update="kahan", **PATHS[path])
        ref = torch_gd.SGD([plain], lr=lr, **PATHS[path])
        for _ in range(n):
            p.grad = torch.full_like(p, -1.0)
            plain.grad = p.grad.clone()
            opt.step()
            ref.step()
    exact = start.to(torch.bfloat16).float() + n * lr
    ulp = torch.finfo(torch.bfloat16).eps * 2.0 ** torch.floor(torch.log2(exact))
    assert bool(((p.float() - exact).abs() <= ulp).all())
    # The compensation itself is bf16: each step rounds it by up to half its own ulp, at most
    # 2⁻⁹ of half the weight's ulp, so param + compensation may drift n·2⁻¹⁰ ulps in n steps.
    total = p.float() + opt.state[p]["compensation"].float()
    assert bool(((total - exact).abs() <= n * ulp * 2.0**-10).all())
    assert torch.equal(plain, start.to(torch.bfloat16))  # to nearest: stalled


# ---------------------------------------------------------------- every optimizer and path


@cases
@paths
def test_fp32_master_runs_the_fp32_update(case, path):
    """A bf16 param's master (with fp32 state) is, bit for bit, the same path on an fp32 param
    given the same (upcast) grads, and the param is the master's rounding."""
    kw = _kwargs(case, path)
    with pack_max_numel(BOUNDARY):
        ours = _params(torch.bfloat16)
        full = [torch.nn.Parameter(p.detach().float()) for p in ours]
        opt = case.ours(ours, param_update="fp32_master", state_dtype=torch.float32, **kw)
        ref = case.ours(full, **kw)
        gen = torch.Generator().manual_seed(1)
        _step_together(opt, ref, ours, full, gen, 4)
    for p, q in zip(ours, full):
        master = opt.state[p]["master"]
        assert master.dtype == torch.float32
        assert torch.equal(master, q.detach())
        assert torch.equal(p.detach(), q.detach().to(torch.bfloat16))
        for k, v in ref.state[q].items():
            assert torch.equal(opt.state[p][k], v), k


@cases
def test_fp32_master_tracks_torch_optim(case):
    """Within fp32 tolerance of torch.optim on an fp32 model given the same grads, with state
    kept in fp32."""
    with pack_max_numel(BOUNDARY):
        ours = _params(torch.bfloat16)
        theirs = [torch.nn.Parameter(p.detach().float()) for p in ours]
        opt = case.ours(ours, param_update="fp32_master", state_dtype=torch.float32, foreach=False, **case.typical)
        ref = case.theirs(theirs, foreach=False, **case.typical)
        gen = torch.Generator().manual_seed(2)
        _step_together(opt, ref, ours, theirs, gen, 4)
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(opt.state[p]["master"], q.detach(), **tol(torch.float32))
        for k, v in ref.state[q].items():
            assert opt.state[p][k].dtype == v.dtype
            torch.testing.assert_close(opt.state[p][k], v, **tol(torch.float32))


@cases
@paths
@pytest.mark.parametrize("update", UPDATES)
def test_every_policy_steps_and_keeps_its_state(case, path, update):
    kw = _kwargs(case, path)
    with pack_max_numel(BOUNDARY):
        ours = _params(torch.bfloat16)
        opt = case.ours(ours, param_update=update, state_dtype=torch.bfloat16, **kw)
        before = [p.detach().clone() for p in ours]
        gen = torch.Generator().manual_seed(3)
        for _ in range(3):
            _grads(ours, gen)
            opt.step()
    extra = {"fp32_master": {"master": torch.float32}, "kahan": {"compensation": torch.bfloat16}}.get(update, {})
    for p, old in zip(ours, before):
        st = opt.state[p]
        assert p.dtype == torch.bfloat16 and not torch.equal(p, old)
        for k, dtype in extra.items():
            assert st[k].dtype == dtype and st[k].shape == p.shape
        for k, v in st.items():
            if k not in extra and k != "step":
                assert v.dtype == torch.bfloat16
        assert all(torch.isfinite(v).all() for v in st.values())


@cases
@paths
@pytest.mark.parametrize("update", [*UPDATES, None])
def test_a_policy_leaves_fp32_params_as_they_are(case, path, update):
    """``param_update`` is a no-op for fp32 params: bit for bit the run without it."""
    kw = _kwargs(case, path)
    with pack_max_numel(BOUNDARY):
        ours, plain = _params(torch.float32), _params(torch.float32)
        opt = case.ours(ours, param_update=update, **kw)
        ref = case.ours(plain, **kw)
        gen = torch.Generator().manual_seed(4)
        _step_together(opt, ref, ours, plain, gen, 3)
    for p, q in zip(ours, plain):
        assert torch.equal(p, q)
        assert sorted(opt.state[p]) == sorted(ref.state[q])


@cases
@pytest.mark.parametrize("path", ["per-tensor", "default", "fused"])
def test_bf16_state_on_an_fp32_model(case, path):
    kw = _kwargs(case, path)
    with pack_max_numel(BOUNDARY):
        ours, full = _params(torch.float32), _params(torch.float32)
        opt = case.ours(ours, state_dtype=torch.bfloat16, **kw)
        ref = case.ours(full, **kw)
        gen = torch.Generator().manual_seed(5)
        _step_together(opt, ref, ours, full, gen, 3)
    # Stochastic rounding lands on either neighbour: up to one ulp off per rounding, against
    # half an ulp to nearest; two ulps at the operands' scale covers three steps.
    for p, q in zip(ours, full):
        for k, v in ref.state[q].items():
            if k != "step":
                assert opt.state[p][k].dtype == torch.bfloat16
                torch.testing.assert_close(opt.state[p][k].float(), v, **at_operand_scale(tol(torch.bfloat16), v.bfloat16()))
        torch.testing.assert_close(p, q, **at_operand_scale(tol(torch.bfloat16), q.detach().bfloat16()))


@pytest.mark.parametrize("update", [*UPDATES, None])
def test_fp16_params(update):
    """Adam at lr 1e-4 with grads of one sign on fp16 weights in [1, 2) (ulp 2⁻¹⁰ ≈ 9.8e-4): 40
    steps move the fp32 weights 4e-3, each step less than half an ulp. To nearest, the fp16
    weights never move; the master and Kahan keep every weight within an ulp of fp32;
    stochastic rounding's error is a random walk (~√40/2 ulps per weight) whose mean over
    the weights stays within a few standard errors of 0."""
    shapes, steps = [(64, 64), (300,), (20, 30)], 40
    with pack_max_numel(BOUNDARY):
        ours = _params(torch.float16, shapes=shapes)
        full = [torch.nn.Parameter(p.detach().float()) for p in ours]
        opt = torch_gd.Adam(ours, lr=1e-4, param_update=update, state_dtype=torch.float32)
        ref = torch_gd.Adam(full, lr=1e-4)
        gen = torch.Generator().manual_seed(6)
        for _ in range(steps):
            _grads(ours, gen)
            for p, q in zip(ours, full):
                p.grad.abs_()
                q.grad = p.grad.float()
            opt.step()
            ref.step()
    error = torch.cat([(p.detach().float() - q.detach()).flatten() for p, q in zip(ours, full)])
    ulp = 2.0**-10
    if update is None:
        assert float(error.mean()) > 3 * ulp
    elif update == "stochastic_rounding":
        se = math.sqrt(steps) / 2 * ulp / math.sqrt(error.numel())
        assert abs(float(error.mean())) < 4 * se
    else:
        assert float(error.abs().max()) <= ulp


# ---------------------------------------------------------------- randomness


def _sr_run(seed=None, generator=None, path="default"):
    if seed is not None:
        torch.manual_seed(seed)
    ps = _params(torch.bfloat16)
    opt = torch_gd.AdamW(ps, lr=1e-3, param_update="stochastic_rounding", state_dtype=torch.bfloat16,
                         generator=generator, **PATHS[path])
    gen = torch.Generator().manual_seed(7)
    for _ in range(3):
        _grads(ps, gen)
        opt.step()
    return ps


@pytest.mark.parametrize("path", ["per-tensor", "default", "fused"])
def test_stochastic_rounding_is_reproducible_under_manual_seed(path):
    with pack_max_numel(BOUNDARY):
        a, b, c = _sr_run(1, path=path), _sr_run(1, path=path), _sr_run(2, path=path)
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert not all(torch.equal(p, q) for p, q in zip(a, c))


def test_stochastic_rounding_leaves_the_users_random_stream_alone():
    torch.manual_seed(3)
    _sr_run()
    with_it = torch.rand(8)
    torch.manual_seed(3)
    ps = _params(torch.bfloat16)
    opt = torch_gd.AdamW(ps, lr=1e-3)
    gen = torch.Generator().manual_seed(7)
    for _ in range(3):
        _grads(ps, gen)
        opt.step()
    assert torch.equal(torch.rand(8), with_it)


def test_generator_gives_the_seed():
    a = _sr_run(generator=torch.Generator().manual_seed(5))
    b = _sr_run(generator=torch.Generator().manual_seed(5))
    c = _sr_run(generator=torch.Generator().manual_seed(6))
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert not all(torch.equal(p, q) for p, q in zip(a, c))


# ---------------------------------------------------------------- checkpoints


def _trained(case, update, state_dtype, steps=3, seed=8, **path):
    ps = _params(torch.bfloat16)
    opt = case.ours(ps, param_update=update, state_dtype=state_dtype, **case.typical, **path)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        _grads(ps, gen)
        opt.step()
    return ps, opt


def _save_load(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@cases
@pytest.mark.parametrize("update", UPDATES)
@pytest.mark.parametrize("path", ["default", "fused"])
def test_checkpoint_round_trip_continues_the_run(case, update, path):
    """Bit for bit, except where SGD draws random bits: it has no step in its state, so a
    resumed run counts its draws anew (other bits, the same distribution)."""
    with pack_max_numel(BOUNDARY):
        ps, opt = _trained(case, update, torch.bfloat16, **PATHS[path])
        saved = _save_load(opt.state_dict())
        qs = [torch.nn.Parameter(p.detach().clone()) for p in ps]
        other = case.ours(qs, **case.typical, **PATHS[path])  # no policy given: the checkpoint's
        other._noise_seed = opt._noise_seed
        other.load_state_dict(saved)
        for group in other.param_groups:
            assert group["param_update"] == update and group["state_dtype"] == torch.bfloat16
        for p, q in zip(ps, qs):
            for k, v in opt.state[p].items():
                assert other.state[q][k].dtype == v.dtype and torch.equal(other.state[q][k], v), k
        gen = torch.Generator().manual_seed(9)
        for _ in range(2):
            _grads(ps, gen)
            for p, q in zip(ps, qs):
                q.grad = p.grad.clone()
            opt.step()
            other.step()
    if case.name == "SGD":
        assert_params_close(ps, qs, **at_operand_scale(tol(torch.bfloat16), ps[0].detach()))
    else:
        assert all(torch.equal(p, q) for p, q in zip(ps, qs))


@cases
def test_a_torch_checkpoint_keeps_the_constructors_policy(case):
    """torch.optim's checkpoint has no policy: the constructor's stays, and the master is
    rebuilt from the param (torch cast it to bf16: what it held beyond is lost)."""
    with pack_max_numel(BOUNDARY):
        ps, opt = _trained(case, "fp32_master", torch.bfloat16)
        theirs = case.theirs([torch.nn.Parameter(p.detach().clone()) for p in ps], **case.typical)
        theirs.load_state_dict(opt.state_dict())  # torch casts the master to bf16, keeps it
        assert theirs.state[theirs.param_groups[0]["params"][0]]["master"].dtype == torch.bfloat16
        ours = case.ours(theirs.param_groups[0]["params"], param_update="kahan", state_dtype=torch.bfloat16,
                         **case.typical)
        plain = copy.deepcopy(theirs.state_dict())
        for group in plain["param_groups"]:
            group.pop("param_update", None), group.pop("state_dtype", None)
        ours.load_state_dict(plain)
        assert [g["param_update"] for g in ours.param_groups] == ["kahan"]
        assert [g["state_dtype"] for g in ours.param_groups] == [torch.bfloat16]
        for p in ours.param_groups[0]["params"]:
            for k, v in ours.state[p].items():
                if k not in ("step", "master"):
                    assert v.dtype == torch.bfloat16, k
        gen = torch.Generator().manual_seed(10)
        _grads(ours.param_groups[0]["params"], gen)
        ours.step()
        for p in ours.param_groups[0]["params"]:
            assert ours.state[p]["compensation"].dtype == torch.bfloat16


def test_a_master_that_is_not_the_params_is_rebuilt():
    case = CASES[2]  # Adam
    ps, opt = _trained(case, "fp32_master", None)
    sd = opt.state_dict()
    sd["state"][0]["master"] = sd["state"][0]["master"] + 1.0  # rounds to another value
    sd["state"][1]["master"] = sd["state"][1]["master"].to(torch.bfloat16)  # not fp32
    del sd["state"][2]["master"]  # missing
    kept = sd["state"][3]["master"].clone()
    other = case.ours(ps, param_update="fp32_master", **case.typical)
    other.load_state_dict(sd)
    for p in ps:
        p.grad = None
    other.step()  # updates nothing; checks the masters against the params as they are now
    for i in range(3):
        master = other.state[ps[i]]["master"]
        assert master.dtype == torch.float32 and torch.equal(master, ps[i].detach().float())
    assert torch.equal(other.state[ps[3]]["master"], kept)  # fp32 and rounds to the param: kept


def test_masters_survive_a_torch_round_trip_only_to_bf16():
    """Loading torch_gd's checkpoint into torch.optim and back loses the master's low bits:
    the master restarts from the bf16 param (what the README says)."""
    case = CASES[2]
    ps, opt = _trained(case, "fp32_master", None, steps=5)
    theirs = case.theirs(ps, **case.typical)
    theirs.load_state_dict(opt.state_dict())
    back = case.ours(ps, param_update="fp32_master", **case.typical)
    back.load_state_dict(theirs.state_dict())
    for p in ps:
        assert torch.equal(back.state[p]["master"], p.detach().float())


# ---------------------------------------------------------------- changes and bad input


@pytest.mark.parametrize("path", ["per-tensor", "default", "fused"])
def test_a_policy_switched_on_mid_training(path):
    with pack_max_numel(BOUNDARY):
        ps = _params(torch.bfloat16)
        opt = torch_gd.Adam(ps, lr=1e-2, **PATHS[path])
        gen = torch.Generator().manual_seed(11)
        for step in range(4):
            if step == 2:
                opt.param_groups[0]["param_update"] = "fp32_master"
                opt.param_groups[0]["state_dtype"] = torch.float32
            _grads(ps, gen)
            opt.step()
    for p in ps:
        st = opt.state[p]
        assert st["master"].dtype == torch.float32 and st["exp_avg"].dtype == torch.float32
        assert torch.equal(p.detach(), st["master"].to(torch.bfloat16))


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(param_update="fp32"), ValueError, "param_update"),
    (dict(param_update=True), ValueError, "param_update"),
    (dict(state_dtype=torch.float16), ValueError, "underflow"),
    (dict(state_dtype=torch.int8), ValueError, "state_dtype"),
    (dict(state_dtype="bf16"), ValueError, "state_dtype"),
    (dict(param_update="kahan", differentiable=True), ValueError, "differentiable"),
    (dict(generator=0), TypeError, "generator"),
])
def test_bad_policy_is_refused(kwargs, error, match):
    with pytest.raises(error, match=match):
        torch_gd.Adam(_params(torch.bfloat16), **kwargs)
    opt = torch_gd.Adam(_params(torch.bfloat16))
    if "generator" not in kwargs:
        with pytest.raises(error, match=match):
            opt.add_param_group({"params": _params(torch.bfloat16, shapes=[(2,)]), **kwargs})


def test_sparse_grads_with_a_policy_are_refused_before_anything_moves():
    ps = [torch.nn.Parameter(torch.ones(4, 3, dtype=torch.bfloat16)), torch.nn.Parameter(torch.ones(5, dtype=torch.bfloat16))]
    opt = torch_gd.Adagrad(ps, param_update="kahan")
    ps[0].grad = torch.ones(4, 3, dtype=torch.bfloat16)
    ps[1].grad = torch.ones(5, dtype=torch.bfloat16).to_sparse()
    before = copy.deepcopy(opt.state_dict())
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()
    assert torch.equal(ps[0], torch.ones(4, 3, dtype=torch.bfloat16))
    # What the param had is as it was (the policy's zero buffer may already exist: no value moved).
    after = opt.state_dict()["state"][0]
    assert all(torch.equal(after[k], v) for k, v in before["state"][0].items())


@pytest.mark.parametrize("update", UPDATES)
def test_a_skipped_fused_step_keeps_every_buffer(update):
    with pack_max_numel(BOUNDARY):
        ps = _params(torch.bfloat16)
        opt = torch_gd.AdamW(ps, lr=1e-2, param_update=update, state_dtype=torch.bfloat16, fused=True)
        gen = torch.Generator().manual_seed(12)
        _grads(ps, gen)
        opt.step()
        before = copy.deepcopy(opt.state_dict()["state"])
        values = [p.detach().clone() for p in ps]
        _grads(ps, gen)
        ps[0].grad[0] = math.inf
        opt.clip_grad_norm(1.0, skip_nonfinite=True)
        opt.step()
    assert all(torch.equal(p, v) for p, v in zip(ps, values))
    after = opt.state_dict()["state"]
    for i, st in before.items():
        for k, v in st.items():
            assert torch.equal(after[i][k], v), (i, k)


# ---------------------------------------------------------------- training


def _regression(update, state_dtype=None, dtype=torch.bfloat16, steps=300, path="default"):
    """Weights near 1 (a bf16 ulp of 2⁻⁷) moved by AdamW at lr 1e-3: each update is below half
    an ulp, so rounding to nearest keeps the initial weights."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(512, 64, generator=gen)
    w0 = 1.0 + 0.25 * torch.rand(64, 8, generator=gen)
    y = x @ (w0 + 0.05 * torch.randn(64, 8, generator=gen))
    w = torch.nn.Parameter(w0.to(dtype))
    opt = torch_gd.AdamW([w], lr=1e-3, weight_decay=0.0, param_update=update, state_dtype=state_dtype, **PATHS[path])
    xl, yl = x.to(dtype), y.to(dtype)
    for _ in range(steps):
        loss = ((xl @ w - yl).float() ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float(((x @ w.float() - y) ** 2).mean())


@pytest.mark.parametrize("path", ["default", "fused"])
def test_training_in_bf16_without_stalling(path):
    master = _regression("fp32_master", path=path)
    plain = _regression(None, path=path)
    assert plain > 50 * master  # the stall
    assert _regression("kahan", path=path) <= 1.1 * master
    assert _regression("kahan", torch.bfloat16, path=path) <= 1.25 * master
    sr = _regression("stochastic_rounding", path=path)
    assert sr <= 3 * master and sr < plain / 20


# ---------------------------------------------------------------- found by review


@pytest.mark.parametrize("path", ["per-tensor", "default", "fused"])
@pytest.mark.parametrize("update", ["fp32_master", "kahan"])
def test_a_rule_without_state_still_gets_the_policys_buffer(path, update):
    """SGD without momentum keeps no state of its own: the master (or compensation) is still
    made from the param at the first step, packed or not."""
    with pack_max_numel(BOUNDARY):
        ours = _params(torch.bfloat16)
        full = [torch.nn.Parameter(p.detach().float()) for p in ours]
        opt = torch_gd.SGD(ours, lr=1e-3, param_update=update, **PATHS[path])
        ref = torch_gd.SGD(full, lr=1e-3, **PATHS[path])
        gen = torch.Generator().manual_seed(13)
        _step_together(opt, ref, ours, full, gen, 3)
    for p, q in zip(ours, full):
        assert list(opt.state[p]) == [{"fp32_master": "master", "kahan": "compensation"}[update]]
        torch.testing.assert_close(p.detach().float(), q.detach(), rtol=0, atol=2.0**-7)  # an ulp at [1, 2)
        if update == "fp32_master":
            assert torch.equal(opt.state[p]["master"], q.detach())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16])
def test_state_wider_than_the_param_survives_a_checkpoint(dtype, state_dtype):
    """torch's load casts state to the param's dtype (fp16 would flush exp_avg_sq to zero): the
    policy's state is loaded as saved, and the run continues bit for bit."""
    ps = _params(dtype)
    opt = torch_gd.Adam(ps, lr=1e-3, param_update="fp32_master", state_dtype=state_dtype, foreach=False)
    gen = torch.Generator().manual_seed(14)
    for _ in range(3):
        for p in ps:
            p.grad = (torch.randn(p.shape, generator=gen) * 1e-5).to(dtype)
        opt.step()
    qs = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    other = torch_gd.Adam(qs, lr=1e-3, foreach=False)
    other.load_state_dict(_save_load(opt.state_dict()))
    for p, q in zip(ps, qs):
        for k, v in opt.state[p].items():
            assert other.state[q][k].dtype == v.dtype and torch.equal(other.state[q][k], v), k
    for p, q in zip(ps, qs):
        p.grad = (torch.randn(p.shape, generator=gen) * 1e-5).to(dtype)
        q.grad = p.grad.clone()
    opt.step()
    other.step()
    assert all(torch.equal(p, q) for p, q in zip(ps, qs))


def test_the_optimizer_may_be_loaded_before_the_model():
    """The master is checked against its param at the next step, not at the load: loading the
    optimizer first and the weights second keeps the checkpoint's master."""
    ps, opt = _trained(CASES[2], "fp32_master", None, steps=5)
    saved, weights = _save_load(opt.state_dict()), [p.detach().clone() for p in ps]
    fresh = _params(torch.bfloat16, seed=99)
    other = CASES[2].ours(fresh, param_update="fp32_master", **CASES[2].typical)
    other.load_state_dict(saved)
    with torch.no_grad():
        for p, w in zip(fresh, weights):
            p.copy_(w)
    gen = torch.Generator().manual_seed(15)
    _grads(ps, gen)
    for p, q in zip(ps, fresh):
        q.grad = p.grad.clone()
    opt.step()
    other.step()
    assert all(torch.equal(p, q) for p, q in zip(ps, fresh))


@pytest.mark.parametrize("path", ["per-tensor", "default", "fused"])
def test_fp64_params_keep_fp64_state(path):
    with pack_max_numel(BOUNDARY):
        ps = _params(torch.float64) + _params(torch.float32, seed=1)
        plain = [torch.nn.Parameter(p.detach().clone()) for p in ps]
        opt = torch_gd.Adam(ps, lr=1e-2, state_dtype=torch.bfloat16, param_update="kahan", **PATHS[path])
        ref = torch_gd.Adam(plain, lr=1e-2, **PATHS[path])
        gen = torch.Generator().manual_seed(16)
        _step_together(opt, ref, ps, plain, gen, 2)
    for p, q in zip(ps, plain):
        if p.dtype == torch.float64:
            assert opt.state[p]["exp_avg"].dtype == torch.float64
            assert torch.equal(p, q)
        else:
            assert opt.state[p]["exp_avg"].dtype == torch.bfloat16


@pytest.mark.parametrize("path", ["default", "fused"])
def test_adagrad_takes_the_weights_set_after_construction(path):
    with pack_max_numel(BOUNDARY):
        ps = _params(torch.bfloat16)
        opt = torch_gd.Adagrad(ps, lr=1e-3, param_update="fp32_master", **PATHS[path])
        with torch.no_grad():
            for p in ps:
                p.fill_(5.0)  # e.g. pretrained weights loaded into the model after the optimizer
        _grads(ps, torch.Generator().manual_seed(17))
        opt.step()
    for p in ps:
        assert bool(((p.float() - 5.0).abs() <= 0.04).all())
        torch.testing.assert_close(opt.state[p]["master"].to(torch.bfloat16), p.detach(), rtol=0, atol=0)


@pytest.mark.parametrize("path", ["per-tensor", "default"])
def test_a_master_set_aside_is_not_brought_back_stale(path):
    with pack_max_numel(BOUNDARY):
        ps = _params(torch.bfloat16)
        opt = torch_gd.Adam(ps, lr=1e-2, param_update="fp32_master", **PATHS[path])
        gen = torch.Generator().manual_seed(18)
        for policy in ["fp32_master"] * 2 + ["kahan"] * 10 + ["fp32_master"]:
            opt.param_groups[0]["param_update"] = policy
            before = [p.detach().clone() for p in ps]
            _grads(ps, gen)
            opt.step()
    for p, b in zip(ps, before):  # the last step moved each weight by about lr, not back
        assert bool(((p.float() - b.float()).abs() <= 0.02).all())
        assert "compensation" not in opt.state[p]


def test_a_policy_set_by_hand_is_checked_before_anything_moves():
    ps = _params(torch.bfloat16)
    opt = torch_gd.AdamW(ps, lr=1e-2)
    _grads(ps, torch.Generator().manual_seed(19))
    opt.step()
    before = [p.detach().clone() for p in ps]
    opt.param_groups[0]["param_update"] = "fp32-master"
    with pytest.raises(ValueError, match="param_update"):
        opt.step()
    opt.param_groups[0]["param_update"], opt.param_groups[0]["state_dtype"] = None, torch.float16
    with pytest.raises(ValueError, match="state_dtype"):
        opt.step()
    assert all(torch.equal(p, b) for p, b in zip(ps, before))
