"""``Optimizer.clip_grad_norm``: torch's clip, applied inside the next step.

Every optimizer and path against ``torch.nn.utils.clip_grad_norm_`` followed by torch's
for-loop step (params and all state); the factor's lifetime; skipping a non-finite step; the
GradScaler recipe; several dtypes in one optimizer; bad input.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

import torch_gd
from torch_gd import _clip

from .helpers import assert_params_close, assert_state_close, pack_max_numel, tol
from .registry import CASES

cases = pytest.mark.parametrize("case", CASES, ids=repr)
# Per-tensor and default are torch's own ops on the same values: equal to torch bit for bit.
# Capturable computes its coefficients from the step tensors and fused is compiled: both round
# differently by an ulp or so (fp32 tolerance, from torch's state at each step).
EXACT = {"per-tensor": dict(foreach=False), "default": {}}
CLOSE = {"capturable": dict(capturable=True), "fused": dict(fused=True)}
PATHS = pytest.mark.parametrize("path", [*EXACT, *CLOSE])
# Small params are packed, the large ones (above the boundary set below) updated one by one.
SHAPES = [(3, 4), (5,), (), (7, 6), (300,), (20, 30)]
BOUNDARY = 100


def _params(dtype=torch.float64, seed=0, shapes=SHAPES):
    gen = torch.Generator().manual_seed(seed)
    ours = [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=dtype)) for s in shapes]
    return ours, [torch.nn.Parameter(p.detach().clone()) for p in ours]


def _grads(ours, theirs, gen, scale=3.0):
    for p, q in zip(ours, theirs):
        p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale
        q.grad = p.grad.clone()


def _pair(case, path, dtype=torch.float32, extra=None, ours_only=None):
    ours, theirs = _params(dtype)
    kw = {**case.typical, **(extra or {})}
    opt = case.ours(ours, **{**EXACT, **CLOSE}[path], **(ours_only or {}), **kw)
    return ours, theirs, opt, case.theirs(theirs, foreach=False, **kw)


def _check(path, ours, theirs, opt, ref):
    if path in EXACT:
        assert all(torch.equal(p, q) for p, q in zip(ours, theirs))
        assert_state_close(opt, ref, rtol=0, atol=0)
    else:
        assert_params_close(ours, theirs, **tol(torch.float32))
        assert_state_close(opt, ref, **tol(torch.float32))
        for p, q in zip(ours, theirs):  # from torch's values again: compiled code rounds otherwise
            p.data.copy_(q.data)
        opt.load_state_dict(copy.deepcopy(ref.state_dict()))


@cases
@PATHS
def test_clip_then_step_matches_torch_clip_grad_norm_then_step(case, path):
    """The returned norm is torch's, exactly; the grads stay as they were; the step is
    torch's step on clipped grads. Step 2 clips nothing (factor 1), step 3 has no clip."""
    ours, theirs, opt, ref = _pair(case, path)
    gen = torch.Generator().manual_seed(1)
    with pack_max_numel(BOUNDARY):
        for step, max_norm in enumerate([1.0, 0.5, 1e6, None]):
            _grads(ours, theirs, gen)
            raw = [p.grad.clone() for p in ours]
            if max_norm is not None:
                expected = torch.nn.utils.clip_grad_norm_(theirs, max_norm)
                got = opt.clip_grad_norm(max_norm)
                assert torch.equal(got, expected) and got.dtype == expected.dtype
            opt.step(), ref.step()
            assert all(torch.equal(p.grad, g) for p, g in zip(ours, raw))
            _check(path, ours, theirs, opt, ref)


@cases
@pytest.mark.parametrize("path", ["default", "fused"])
def test_clip_over_param_groups_with_missing_grads(case, path):
    """The norm spans every group; a param without a grad is left out of it and not updated."""
    ours, theirs = _params(torch.float32)
    kw = {**{**EXACT, **CLOSE}[path], **case.typical}
    opt = case.ours([{"params": ours[:3]}, {"params": ours[3:], "lr": 0.02}], **kw)
    ref = case.theirs([{"params": theirs[:3]}, {"params": theirs[3:], "lr": 0.02}], foreach=False, **case.typical)
    gen = torch.Generator().manual_seed(2)
    with pack_max_numel(BOUNDARY):
        for step in range(3):
            _grads(ours, theirs, gen)
            if step == 1:
                ours[1].grad = theirs[1].grad = ours[4].grad = theirs[4].grad = None
            assert torch.equal(opt.clip_grad_norm(2.0), torch.nn.utils.clip_grad_norm_(theirs, 2.0))
            opt.step(), ref.step()
            _check(path, ours, theirs, opt, ref)


@pytest.mark.parametrize("path", ["default", "fused"])
def test_factor_lifetime(path):
    """Used by the next step only; a second clip replaces it; ``zero_grad`` discards it."""
    ours, theirs = _params(torch.float32)
    opt = torch_gd.SGD(ours, lr=0.1, **{**EXACT, **CLOSE}[path])
    ref = torch.optim.SGD(theirs, lr=0.1, foreach=False)
    gen = torch.Generator().manual_seed(3)
    with pack_max_numel(BOUNDARY):
        _grads(ours, theirs, gen)
        opt.clip_grad_norm(0.1)
        opt.clip_grad_norm(1.0)  # replaces the first
        torch.nn.utils.clip_grad_norm_(theirs, 1.0)
        opt.step(), ref.step()
        for p, q in zip(ours, theirs):  # torch's clip scaled its grads; ours are still raw
            q.grad.copy_(p.grad)
        opt.step(), ref.step()  # no clip: the factor was used
        opt.clip_grad_norm(0.1)
        opt.zero_grad(), ref.zero_grad()
        _grads(ours, theirs, gen)
        opt.step(), ref.step()  # unclipped: zero_grad discarded the factor
    assert_params_close(ours, theirs, **tol(torch.float32))


@cases
@PATHS
def test_skip_nonfinite_leaves_everything_as_it_was(case, path):
    """A grad with inf (then NaN) makes the norm non-finite: the step leaves params, state and
    step counts untouched, including at the very first step (SGD's momentum must still start
    from the grad of the first applied step, dampening or not). Later steps match torch that
    never saw the skipped ones."""
    extra = {"dampening": 0.3} if case.name == "SGD" else {}
    # An eager capturable group refuses it (see below): capturable and fused together here.
    ours, theirs, opt, ref = _pair(case, path, extra=extra, ours_only={"fused": True} if path == "capturable" else None)
    gen = torch.Generator().manual_seed(4)
    with pack_max_numel(BOUNDARY):
        for step in range(5):
            _grads(ours, theirs, gen)
            bad = {0: math.inf, 3: math.nan}.get(step)
            if bad is not None:
                ours[step % len(ours)].grad.view(-1)[0] = bad
                before = [p.detach().clone() for p in ours], copy.deepcopy(opt.state_dict()["state"])
                norm = opt.clip_grad_norm(1.0, skip_nonfinite=True)
                assert not norm.isfinite()
                opt.step()
                assert all(torch.equal(p, b) for p, b in zip(ours, before[0]))
                after = opt.state_dict()["state"]
                for i in after:  # state this step made, as torch's fused steps make it, is initial
                    for k, v in after[i].items():
                        old = before[1].get(i, {}).get(k)
                        assert torch.equal(v, old) if old is not None else not v.any() or k == "sum", (i, k)
                continue
            torch.nn.utils.clip_grad_norm_(theirs, 1.0)
            opt.clip_grad_norm(1.0, skip_nonfinite=True)
            opt.step(), ref.step()
            _check(path, ours, theirs, opt, ref)


def test_fused_skip_is_decided_on_the_device(monkeypatch):
    """Fused groups never read the norm's finiteness on the host."""
    def sync(self):
        raise AssertionError("host read")
    monkeypatch.setattr(_clip.PendingClip, "nonfinite", sync)
    ours, _ = _params(torch.float32)
    opt = torch_gd.AdamW(ours, fused=True)
    for p in ours:
        p.grad = torch.full_like(p, math.inf)
    opt.clip_grad_norm(1.0, skip_nonfinite=True)
    before = [p.detach().clone() for p in ours]
    opt.step()
    assert all(torch.equal(p, b) for p, b in zip(ours, before))
    assert all(float(opt.state[p]["step"]) == 0 for p in ours)


@pytest.mark.parametrize("path", ["default", "fused"])
def test_nonfinite_norm_without_skip_writes_nan_as_torch_does(path):
    ours, theirs = _params(torch.float32)
    opt = torch_gd.Adam(ours, **{**EXACT, **CLOSE}[path])
    ref = torch.optim.Adam(theirs, foreach=False)
    gen = torch.Generator().manual_seed(5)
    _grads(ours, theirs, gen)
    ours[0].grad[0, 0] = theirs[0].grad[0, 0] = math.nan
    opt.clip_grad_norm(1.0), torch.nn.utils.clip_grad_norm_(theirs, 1.0)
    opt.step(), ref.step()
    assert all(p.isnan().all() for p in ours) and all(q.isnan().all() for q in theirs)


def test_error_if_nonfinite_raises_torchs_error_and_keeps_the_pending_factor():
    ours, theirs = _params(torch.float32)
    opt = torch_gd.SGD(ours, lr=0.1)
    ref = torch.optim.SGD(theirs, lr=0.1, foreach=False)
    gen = torch.Generator().manual_seed(6)
    _grads(ours, theirs, gen)
    opt.clip_grad_norm(0.5)
    torch.nn.utils.clip_grad_norm_(theirs, 0.5)
    grad = ours[2].grad.clone()
    ours[2].grad.fill_(math.inf)
    with pytest.raises(RuntimeError) as ours_error:
        opt.clip_grad_norm(1.0, error_if_nonfinite=True)
    theirs_grad = theirs[2].grad.clone()
    theirs[2].grad.fill_(math.inf)
    with pytest.raises(RuntimeError) as torch_error:
        torch.nn.utils.clip_grad_norm_(theirs, 1.0, error_if_nonfinite=True)
    assert str(ours_error.value) == str(torch_error.value)
    ours[2].grad.copy_(grad), theirs[2].grad.copy_(theirs_grad)
    opt.step(), ref.step()
    assert all(torch.equal(p, q) for p, q in zip(ours, theirs))


@pytest.mark.parametrize("norm_type", [1.0, 3.0, math.inf])
@pytest.mark.parametrize("path", ["default", "fused"])
def test_other_norm_types_and_two_dtypes_in_one_optimizer(norm_type, path):
    """float32 and float64 params in one optimizer: the norm comes back in float64, as torch's."""
    a32, b32 = _params(torch.float32, seed=7, shapes=[(4, 5), (300,)])
    a64, b64 = _params(torch.float64, seed=8, shapes=[(6,), (2, 3), (200,)])
    kw = {**EXACT, **CLOSE}[path]
    opt = torch_gd.AdamW(a32 + a64, lr=0.01, **kw)
    ref = torch.optim.AdamW(b32 + b64, lr=0.01, foreach=False)
    gen = torch.Generator().manual_seed(9)
    with pack_max_numel(BOUNDARY):
        for _ in range(2):
            _grads(a32 + a64, b32 + b64, gen)
            got = opt.clip_grad_norm(0.7, norm_type=norm_type)
            expected = torch.nn.utils.clip_grad_norm_(b32 + b64, 0.7, norm_type=norm_type)
            assert torch.equal(got, expected) and got.dtype == torch.float64
            opt.step(), ref.step()
    assert_params_close(a32, b32, **tol(torch.float32))
    assert_params_close(a64, b64, **tol(torch.float64 if path in EXACT else torch.float32))


def _recipe_step(ours, theirs, opt, ref, scalers, gen, overflow: bool, unscale: bool) -> None:
    """One iteration of the GradScaler recipe on both sides, ours with ``opt.clip_grad_norm``
    and torch's with ``clip_grad_norm_``, on the same loss (inf where ``overflow``)."""
    xs = [torch.randn(p.shape, generator=gen) for p in ours]
    for params, o, scaler, clip in ((ours, opt, scalers[0], opt.clip_grad_norm),
                                    (theirs, ref, scalers[1], lambda m: torch.nn.utils.clip_grad_norm_(theirs, m))):
        o.zero_grad()
        loss = sum((p * x).sum() for p, x in zip(params, xs)) * (math.inf if overflow else 1.0)
        scaler.scale(loss).backward()
        if unscale:
            scaler.unscale_(o)
        clip(1.0)
        scaler.step(o)
        scaler.update()


@pytest.mark.parametrize("unscale", [True, False])
@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW"])
def test_gradscaler_recipe(name, unscale):
    """``scaler.scale(loss).backward(); scaler.unscale_(opt); opt.clip_grad_norm(...);
    scaler.step(opt); scaler.update()`` with a fused optimizer, against the same recipe with
    torch's fused optimizer and ``clip_grad_norm_``; step 2 overflows and is skipped by both.
    Without ``unscale_`` the norm is of the scaled grads, as torch's clip would compute it."""
    ours, theirs = _params(torch.float32, seed=10)
    kw = dict(lr=0.01, momentum=0.9) if name == "SGD" else dict(lr=0.01)
    opt = getattr(torch_gd, name)(ours, fused=True, **kw)
    ref = getattr(torch.optim, name)(theirs, fused=True, **kw)
    scalers = [torch.amp.GradScaler("cpu", init_scale=64.0) for _ in range(2)]
    gen = torch.Generator().manual_seed(11)
    with pack_max_numel(BOUNDARY):
        for step in range(4):
            _recipe_step(ours, theirs, opt, ref, scalers, gen, overflow=step == 2, unscale=unscale)
            assert scalers[0].get_scale() == scalers[1].get_scale()
            assert_params_close(ours, theirs, **tol(torch.float32))
            assert_state_close(opt, ref, **tol(torch.float32))


def test_gradscaler_recipe_with_an_eager_optimizer():
    """Non-fused: GradScaler unscales the grads, reads its inf flag and skips ``step()`` itself."""
    ours, theirs = _params(torch.float32, seed=12)
    opt, ref = torch_gd.Adam(ours, lr=0.01), torch.optim.Adam(theirs, lr=0.01, foreach=False)
    scalers = [torch.amp.GradScaler("cpu", init_scale=64.0) for _ in range(2)]
    gen = torch.Generator().manual_seed(13)
    for step in range(3):
        _recipe_step(ours, theirs, opt, ref, scalers, gen, overflow=step == 1, unscale=True)
        assert all(torch.equal(p, q) for p, q in zip(ours, theirs))


def test_clip_with_no_grads_returns_torchs_zero():
    opt = torch_gd.SGD(_params()[0], lr=0.1)
    assert torch.equal(opt.clip_grad_norm(1.0), torch.nn.utils.clip_grad_norm_([], 1.0))


@pytest.mark.parametrize("kwargs, error, text", [
    (dict(max_norm=-1.0), ValueError, "max_norm"),
    (dict(max_norm=math.nan), ValueError, "max_norm"),
    (dict(max_norm="1"), TypeError, "max_norm"),
    (dict(max_norm=True), TypeError, "max_norm"),
    (dict(max_norm=1.0, skip_nonfinite=1), TypeError, "skip_nonfinite"),
    (dict(max_norm=1.0, error_if_nonfinite=None), TypeError, "error_if_nonfinite"),
])
def test_bad_arguments_are_refused_naming_them(kwargs, error, text):
    ours, _ = _params()
    opt = torch_gd.SGD(ours, lr=0.1)
    for p in ours:
        p.grad = torch.ones_like(p)
    with pytest.raises(error, match=text):
        opt.clip_grad_norm(**kwargs)
    opt.step()  # no pending factor was left behind
    assert all(torch.equal(p, q.detach() - 0.1) for p, q in zip(ours, _params()[0]))


def test_skip_nonfinite_on_a_capturable_eager_group_is_refused():
    """That group reads the flag on the host, which a captured graph cannot."""
    ours, _ = _params()
    opt = torch_gd.Adam(ours, capturable=True)
    for p in ours:
        p.grad = torch.ones_like(p)
    with pytest.raises(ValueError, match="skip_nonfinite=True.*capturable=True"):
        opt.clip_grad_norm(1.0, skip_nonfinite=True)
    assert torch.isfinite(opt.clip_grad_norm(1.0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_norm_of_large_grads_is_closer_to_the_exact_norm_than_torchs(dtype):
    """Large CPU grads are summed in rows: within float32 rounding of the exact (float64)
    norm, channels_last and strided grads included, in the dtype torch returns."""
    gen = torch.Generator().manual_seed(14)
    shapes = [(1100000,), (300, 4000), (256, 128, 9, 9), (5, 5), (1200, 1000)]
    params = [torch.nn.Parameter(torch.zeros(s, dtype=dtype)) for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen, dtype=dtype) * 10
    params[2].grad = params[2].grad.contiguous(memory_format=torch.channels_last)
    params[4].grad = torch.randn(1000, 1200, generator=gen, dtype=dtype).t()  # transposed
    opt = torch_gd.SGD(params, lr=0.1)
    exact = torch.cat([p.grad.double().reshape(-1) for p in params]).norm()
    got = opt.clip_grad_norm(1.0)
    theirs = torch.nn.utils.get_total_norm([p.grad for p in params])
    assert got.dtype == theirs.dtype == dtype
    torch.testing.assert_close(got.double(), exact, **tol(dtype))
    if dtype == torch.float32:  # torch's one running sum per thread is ~3e-5 off here, rows ~4e-8
        assert abs(float(got) - float(exact)) < abs(float(theirs) - float(exact)) / 10
    for p in params:
        p.grad[(0,) * p.dim()] = math.inf
    assert torch.equal(opt.clip_grad_norm(1.0), torch.nn.utils.get_total_norm([p.grad for p in params]))


@pytest.mark.parametrize("path", ["default", "fused"])
def test_compiled_step_applies_the_clip(path):
    """``torch.compile(opt.step)`` after ``clip_grad_norm``: the eager step's results."""
    ours, theirs = _params(torch.float32, shapes=[(30, 40), (5,), (20000,)])
    kw = {**{**EXACT, **CLOSE}[path], "lr": torch.tensor(0.01)}
    opt, ref = torch_gd.Adam(ours, **kw), torch_gd.Adam(theirs, **{**kw, "lr": torch.tensor(0.01)})
    step = torch.compile(opt.step)
    gen = torch.Generator().manual_seed(15)
    for _ in range(3):
        _grads(ours, theirs, gen, scale=5.0)
        opt.clip_grad_norm(1.0), ref.clip_grad_norm(1.0)
        step(), ref.step()
    assert_params_close(ours, theirs, **tol(torch.float32))


@pytest.mark.parametrize("path", ["default", "fused"])
def test_clip_every_step_is_replayed_and_exact(path):
    """A loop that clips every step runs the recorded steady step with each step's factor
    (``describe``), and a step without a clip after them is planned anew, unclipped."""
    ours, theirs = _params(torch.float32, seed=16)
    opt = torch_gd.AdamW(ours, lr=0.01, **{**EXACT, **CLOSE}[path])
    ref = torch.optim.AdamW(theirs, lr=0.01, foreach=False)
    gen = torch.Generator().manual_seed(17)
    with pack_max_numel(BOUNDARY):
        for step in range(7):
            _grads(ours, theirs, gen)
            if step < 6:
                opt.clip_grad_norm(1.0), torch.nn.utils.clip_grad_norm_(theirs, 1.0)
            opt.step(), ref.step()
            if path in EXACT:
                _check(path, ours, theirs, opt, ref)
            else:  # no reload from torch's state: that would re-plan every step
                assert_params_close(ours, theirs, **tol(torch.float32))
    assert opt.describe()["steps"]["replayed"] >= 3


@pytest.mark.parametrize("lagging", [0, 5])
def test_fused_sgd_first_momentum_after_a_skip_and_a_step_some_params_sat_out(lagging):
    """A skipped first step (every counter back to 0), then a step without a skip that one
    param sits out: at the next step that param takes its first applied step (buf = g) and
    the others their second, whichever comes first in the packed bucket."""
    gen = torch.Generator().manual_seed(18)
    ours = [torch.nn.Parameter(torch.randn(3, generator=gen)) for _ in range(20)]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    kw = dict(lr=0.1, momentum=0.9, dampening=0.5)
    opt, ref = torch_gd.SGD(ours, fused=True, **kw), torch.optim.SGD(theirs, foreach=False, **kw)
    for step in range(4):
        for i, (p, q) in enumerate(zip(ours, theirs)):
            p.grad = None if (step == 1 and i == lagging) else torch.randn(3, generator=gen)
            q.grad = None if p.grad is None else p.grad.clone()
        if step == 0:
            ours[1 - lagging // 5].grad[0] = math.inf
            opt.clip_grad_norm(1.0, skip_nonfinite=True)  # skipped: torch does not step
        else:
            opt.clip_grad_norm(1e3), torch.nn.utils.clip_grad_norm_(theirs, 1e3)
            ref.step()
        opt.step()
    assert_params_close(ours, theirs, **tol(torch.float32))
    assert_state_close(opt, ref, **tol(torch.float32))


@pytest.mark.parametrize("path", ["default", "fused"])
@pytest.mark.parametrize("clear", ["model.zero_grad", "grad = None"])
def test_a_clip_whose_step_never_ran_does_not_scale_new_grads(path, clear):
    """A loop that skips ``step()`` on a non-finite norm (or GradScaler skipping an eager
    optimizer's step), then clears grads without ``opt.zero_grad()``: the next step's grads are
    new tensors, which torch's in-place clip never touched."""
    gen = torch.Generator().manual_seed(19)
    model = torch.nn.Linear(3, 4, bias=False)
    twin = copy.deepcopy(model)
    opt = torch_gd.SGD(model.parameters(), lr=0.1, **{**EXACT, **CLOSE}[path])
    ref = torch.optim.SGD(twin.parameters(), lr=0.1, foreach=False)
    for step in range(2):
        x = torch.randn(4, 3, generator=gen) * 10
        if step == 0:
            x[0, 0] = math.inf
        for m in (model, twin):
            if clear == "model.zero_grad":
                m.zero_grad()
            else:
                m.weight.grad = None
            (m.weight * x).sum().backward()
        if step == 0:
            assert not opt.clip_grad_norm(1.0).isfinite()
            continue
        opt.step(), ref.step()
    assert_params_close([model.weight], [twin.weight], **(dict(rtol=0, atol=0) if path in EXACT else tol(torch.float32)))


def test_grads_changed_in_place_after_the_clip_are_clipped():
    """GradScaler's ``unscale_`` after the clip (an eager optimizer's ``scaler.step`` without an
    earlier ``unscale_``) scales the grads in place: the factor still applies, as torch's clip
    applied it before the unscaling."""
    ours, theirs = _params(torch.float32, seed=20)
    opt, ref = torch_gd.SGD(ours, lr=0.1), torch.optim.SGD(theirs, lr=0.1, foreach=False)
    _grads(ours, theirs, torch.Generator().manual_seed(21))
    opt.clip_grad_norm(1.0), torch.nn.utils.clip_grad_norm_(theirs, 1.0)
    for p, q in zip(ours, theirs):
        p.grad.mul_(0.25), q.grad.mul_(0.25)
    opt.step(), ref.step()
    assert_params_close(ours, theirs, **tol(torch.float32))


def test_clip_every_step_with_a_group_per_param_follows_torch():
    """Fused groups replayed together (one lane of prepared calls across groups) read each
    step's clip factor, not the one of the step that prepared them; a param of one element,
    whose calls are not prepared, runs beside them."""
    ours, theirs = _params(torch.float32, seed=18, shapes=[*SHAPES, (5000,)])
    opt = torch_gd.AdamW([{"params": [p]} for p in ours], lr=0.01, fused=True)
    ref = torch.optim.AdamW([{"params": [p]} for p in theirs], lr=0.01, foreach=False)
    gen = torch.Generator().manual_seed(19)
    for step in range(7):
        _grads(ours, theirs, gen, scale=3.0 + step)
        opt.clip_grad_norm(1.0), torch.nn.utils.clip_grad_norm_(theirs, 1.0)
        opt.step(), ref.step()
        assert_params_close(ours, theirs, **tol(torch.float32))
    assert opt.describe()["steps"]["replayed"] >= 3
