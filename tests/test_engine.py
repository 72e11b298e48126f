"""The engine's own promises: packing, per-param semantics inside a bucket, re-packing after
state changes, and the layout of the state it exposes."""

from __future__ import annotations

import copy
import gc
import weakref

import pytest
import torch
from hypothesis import given, settings, strategies as st

import torch_gd
from torch_gd import _engine, _lane, _private

from .helpers import assert_params_close, assert_state_close, pack_max_numel


def _params(n=6, size=5, dtype=torch.float32):
    gen = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter(torch.randn(size, generator=gen, dtype=dtype)) for _ in range(n)]


def _grads(params, seed):
    gen = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)


@pytest.mark.parametrize("cls, limit, least", [(torch_gd.SGD, 1 << 12, 16), (torch_gd.AdamW, _engine.PACK_MAX_NUMEL, 2)])
def test_a_rule_of_few_ops_packs_fewer_params(cls, limit, least):
    # SGD's three ops a step repay packing's copies and a bucket's own cost only for smaller
    # and more params than Adam's: the others go in runs through torch's multi-tensor ops.
    for small in (least - 1, least - 2):
        params = [torch.nn.Parameter(torch.randn(n)) for n in [5] * small + [limit, limit + 1]]
        opt = cls(params, lr=0.1, momentum=0.9) if cls is torch_gd.SGD else cls(params, lr=0.1)
        _grads(params, 1)
        opt.step()
        group = opt.describe()["groups"][0]
        packed = small + 1 >= least
        assert [b["numel"] for b in group["buckets"]] == ([5 * small + limit] if packed else [])
        assert group["per_tensor"] == (1 if packed else small + 2)


def test_small_params_share_one_flat_state_buffer():
    params = _params(16)
    opt = torch_gd.SGD(params, lr=0.1, momentum=0.9)
    _grads(params, 1)
    opt.step()
    storages = {opt.state[p]["momentum_buffer"].untyped_storage().data_ptr() for p in params}
    assert len(storages) == 1
    for p in params:
        buf = opt.state[p]["momentum_buffer"]
        assert buf.shape == p.shape and buf.stride() == p.stride() and buf.dtype == p.dtype


def test_large_params_and_per_tensor_path_own_their_state():
    big = torch.nn.Parameter(torch.randn(_engine.PACK_MAX_NUMEL + 1))
    small = _params(16)
    for foreach, expected in ((None, 2), (False, 17)):
        opt = torch_gd.SGD([big] + small, lr=0.1, momentum=0.9, foreach=foreach)
        _grads([big] + small, 1)
        opt.step()
        storages = {opt.state[p]["momentum_buffer"].untyped_storage().data_ptr() for p in [big] + small}
        assert len(storages) == expected


def test_late_first_grads_keep_per_param_first_step_semantics():
    """Params of one bucket that get their first grad at different steps each start their
    momentum buffer from their own first grad, as torch does."""
    ours, theirs = _params(), _params()
    a = torch_gd.SGD(ours, lr=0.1, momentum=0.9, dampening=0.5)
    b = torch.optim.SGD(theirs, lr=0.1, momentum=0.9, dampening=0.5, foreach=False)
    for step in range(len(ours)):
        for i, (p, q) in enumerate(zip(ours, theirs)):
            p.grad = torch.full_like(p, float(step + i)) if i <= step else None
            q.grad = None if p.grad is None else p.grad.clone()
        a.step(), b.step()
        assert_params_close(ours, theirs, rtol=0, atol=0)
        assert_state_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("foreach", [None, False])
def test_replacing_or_deleting_state_is_honoured_like_torch(foreach):
    ours, theirs = _params(), _params()
    a = torch_gd.SGD(ours, lr=0.1, momentum=0.9, dampening=0.2, foreach=foreach)
    b = torch.optim.SGD(theirs, lr=0.1, momentum=0.9, dampening=0.2, foreach=False)
    for step in range(4):
        _grads(ours, step), _grads(theirs, step)
        if step == 2:
            for o, ps in ((a, ours), (b, theirs)):
                o.state[ps[0]]["momentum_buffer"] = torch.full_like(ps[0], 3.0)
                del o.state[ps[1]]
                o.state[ps[2]]["momentum_buffer"].zero_()
        a.step(), b.step()
        assert_params_close(ours, theirs, rtol=0, atol=0)
        assert_state_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("name,kw,key", [("Adam", dict(lr=0.1), "exp_avg"),
                                         ("SGD", dict(lr=0.1, momentum=0.9), "momentum_buffer")])
def test_steady_eager_steps_read_a_large_params_state_again_once_it_changes(name, kw, key):
    # Steady eager steps keep each large param's state tensors between steps: a replaced
    # tensor, a reset step and a deleted state must each be read again, as torch reads them.
    # Only the last large param's are changed: the two then step at different counts, each with
    # its own step's coefficients.
    big = torch.randn(_engine.PACK_MAX_NUMEL + 1, generator=torch.Generator().manual_seed(1))
    ours, theirs = ([*_params(), torch.nn.Parameter(big.flip(0)), torch.nn.Parameter(big.clone())] for _ in range(2))
    a, b = getattr(torch_gd, name)(ours, **kw), getattr(torch.optim, name)(theirs, foreach=False, **kw)
    for step in range(12):
        _grads(ours, step), _grads(theirs, step)
        for o, ps in ((a, ours), (b, theirs)):
            if step == 4:
                o.state[ps[-1]][key] = torch.full_like(ps[-1], 0.5)
            elif step == 7 and "step" in o.state[ps[-1]]:
                o.state[ps[-1]]["step"] = torch.tensor(2.0)
            elif step == 9:
                del o.state[ps[-1]]
        a.step(), b.step()
        assert_params_close(ours, theirs, rtol=0, atol=0)
        assert_state_close(a, b, rtol=0, atol=0)
    assert a.describe()["steps"]["replayed"] >= 4


@pytest.mark.parametrize("path", [dict(), dict(foreach=False), dict(fused=True)], ids=["default", "for-loop", "fused"])
@pytest.mark.parametrize("name,kw", [("Adam", dict(lr=0.1)), ("AdamW", dict(lr=0.1, amsgrad=True)),
                                     ("Adagrad", dict(lr=0.1, lr_decay=0.05))])
def test_a_step_count_written_in_place_is_read_like_torch(name, kw, path):
    # The host mirrors each param's step count so that steady steps read no tensor; a count
    # written in place between steps (``state[p]["step"].fill_(1)``) leaves the ``step`` tensor
    # where it was, and must still be read. A packed param's ``step`` is a view of its bucket's
    # counts, a large one's of its group's shared counters once steps are prepared.
    big = torch.randn(_engine.PACK_MAX_NUMEL + 1, generator=torch.Generator().manual_seed(1))
    ours, theirs = ([*_params(16), torch.nn.Parameter(big.flip(0)), torch.nn.Parameter(big.clone())] for _ in range(2))
    a, b = getattr(torch_gd, name)(ours, **kw, **path), getattr(torch.optim, name)(theirs, **kw, **path)
    # fp32 as torch.testing.assert_close compares it: the fused steps compute their numbers in
    # fp64 where torch's take fp32 ones (a few ulps); a count off by even one step moves a
    # param by >= 1e-3 here.
    tol = dict(rtol=1.3e-6, atol=1e-5) if path.get("fused") else dict(rtol=0, atol=0)
    for step in range(10):
        _grads(ours, step), _grads(theirs, step)
        for o, ps in ((a, ours), (b, theirs)):
            if step == 4:
                o.state[ps[0]]["step"].fill_(1)
                o.state[ps[-1]]["step"].sub_(2)
            elif step == 7:
                for p in ps:
                    o.state[p]["step"].copy_(torch.tensor(20.0))
        a.step(), b.step()
        assert_params_close(ours, theirs, **tol)
        assert_state_close(a, b, **tol)
    # Steps 3 and 4 replay the steady step, and step 10 (once every count is equal again; a
    # bucket whose params are at different counts is not steady): the edits before steps 5 and
    # 8 are found where a replay would have run.
    assert a.describe()["steps"]["replayed"] >= 3


@pytest.mark.parametrize("name,kw", [("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
                                     ("Adam", dict(lr=0.1, amsgrad=True, maximize=True)),
                                     ("AdamW", dict(lr=0.1)),
                                     ("Adagrad", dict(lr=0.1, lr_decay=0.01, weight_decay=0.1)),
                                     ("RMSprop", dict(lr=0.01, momentum=0.9, centered=True))])
def test_steady_eager_steps_update_per_tensor_params_in_runs_like_torchs_for_loop(name, kw):
    # Large params of one dtype share one rule call over torch's multi-tensor ops; a param of
    # another dtype runs apart. On the CPU those ops are torch's per-tensor ops: bitwise equal.
    n = _engine.PACK_MAX_NUMEL + 1
    gen = torch.Generator().manual_seed(2)
    values = [torch.randn(n, generator=gen), torch.randn(3, n // 3 + 1, generator=gen), torch.randn(n + 5, generator=gen),
              torch.randn(n, generator=gen, dtype=torch.float64)]
    ours, theirs = ([torch.nn.Parameter(v.clone()) for v in values] + _params(2) for _ in range(2))
    a, b = getattr(torch_gd, name)(ours, **kw), getattr(torch.optim, name)(theirs, foreach=False, **kw)
    for step in range(5):
        _grads(ours, step), _grads(theirs, step)
        a.step(), b.step()
        assert_params_close(ours, theirs, rtol=0, atol=0)
        assert_state_close(a, b, rtol=0, atol=0)
    runs = a.describe()["groups"][0]["runs"]
    assert [id(ours[3])] in runs
    assert any({id(p) for p in ours[:3]} <= set(run) for run in runs)


@pytest.mark.parametrize("name,kw", [("SGD", dict(lr=0.1, momentum=0.9)), ("Adam", dict(lr=0.1)),
                                     ("RMSprop", dict(lr=0.01, momentum=0.9))])
@pytest.mark.parametrize("dtype,foreach", [(torch.bfloat16, None), (torch.float16, None), (torch.float32, False)])
def test_half_precision_and_for_loop_params_run_alone_bitwise_like_torch(name, kw, dtype, foreach):
    # torch's CPU multi-tensor mul_ by a number rounds the number to bf16/fp16 first (momentum
    # 0.9 becomes 0.8984375) and Tensor.mul_ does not; foreach=False asks for the for-loop.
    n = _engine.PACK_MAX_NUMEL + 1
    gen = torch.Generator().manual_seed(4)
    values = [torch.randn(n, generator=gen).to(dtype) for _ in range(3)]
    ours, theirs = ([torch.nn.Parameter(v.clone()) for v in values] for _ in range(2))
    a = getattr(torch_gd, name)(ours, foreach=foreach, **kw)
    b = getattr(torch.optim, name)(theirs, foreach=False, **kw)
    for step in range(4):
        _grads(ours, step), _grads(theirs, step)
        a.step(), b.step()
        assert_params_close(ours, theirs, rtol=0, atol=0)
        assert_state_close(a, b, rtol=0, atol=0)
    assert sorted(a.describe()["groups"][0]["runs"]) == sorted([id(p)] for p in ours)


def test_a_param_rebound_to_another_dtype_leaves_its_run_like_torch():
    # ``p.data = p.data.double()`` between steady steps: the param's run is read again, and its
    # updates follow torch's for-loop (float32 momentum beside a float64 param and grad).
    n = _engine.PACK_MAX_NUMEL + 1
    gen = torch.Generator().manual_seed(5)
    values = [torch.randn(n, generator=gen) for _ in range(3)]
    ours, theirs = ([torch.nn.Parameter(v.clone()) for v in values] for _ in range(2))
    kw = dict(lr=0.1, momentum=0.9, maximize=True, weight_decay=0.01)
    a, b = torch_gd.SGD(ours, **kw), torch.optim.SGD(theirs, foreach=False, **kw)
    for step in range(6):
        if step == 3:
            for ps in (ours, theirs):
                ps[1].data = ps[1].data.double()
        _grads(ours, step), _grads(theirs, step)
        a.step(), b.step()
        assert_params_close(ours, theirs, rtol=0, atol=0)
        assert_state_close(a, b, rtol=0, atol=0)
    runs = a.describe()["groups"][0]["runs"]
    assert [id(ours[1])] in runs and sorted([id(ours[0]), id(ours[2])]) in map(sorted, runs)


def test_a_run_falls_back_to_one_call_a_param_where_it_cannot_run_as_one():
    # A tensor lr, a sparse grad among dense ones and a param that skipped a step each send a
    # run's params through one rule call each, with the same results as torch's for-loop.
    n = _engine.PACK_MAX_NUMEL + 1
    gen = torch.Generator().manual_seed(3)
    values = [torch.randn(n, generator=gen) for _ in range(3)]
    for name, kw in (("SGD", dict(lr=torch.tensor(0.1), momentum=0.9)), ("Adagrad", dict(lr=0.1)), ("AdamW", dict(lr=0.1))):
        ours, theirs = ([torch.nn.Parameter(v.clone()) for v in values] for _ in range(2))
        a, b = getattr(torch_gd, name)(ours, **kw), getattr(torch.optim, name)(theirs, foreach=False, **kw)
        for step in range(6):
            _grads(ours, step), _grads(theirs, step)
            for ps in (ours, theirs):
                if name == "Adagrad" and step >= 3:  # a sparse grad from now on
                    ps[1].grad = ps[1].grad.to_sparse()
                if name == "AdamW" and step == 2:  # one param sits a step out: counts differ after
                    ps[0].grad = None
            a.step(), b.step()
            assert_params_close(ours, theirs, rtol=0, atol=0)
            assert_state_close(a, b, rtol=0, atol=0)
        assert any(len(run) > 1 for run in a.describe()["groups"][0]["runs"]), name


def test_load_state_dict_repacks_and_continues():
    ours, theirs = _params(16), _params(16)
    a = torch_gd.SGD(ours, lr=0.1, momentum=0.9)
    # foreach=None: a checkpoint's group flags are loaded too, and foreach=False means per-tensor.
    b = torch.optim.SGD(theirs, lr=0.1, momentum=0.9)
    _grads(ours, 0), _grads(theirs, 0)
    a.step(), b.step()
    a.load_state_dict(copy.deepcopy(b.state_dict()))
    for step in range(1, 4):
        _grads(ours, step), _grads(theirs, step)
        a.step(), b.step()
    storages = {a.state[p]["momentum_buffer"].untyped_storage().data_ptr() for p in ours}
    assert len(storages) == 1, "state was not re-packed after load_state_dict"
    assert_params_close(ours, theirs, rtol=0, atol=0)


def test_a_param_moved_to_another_dtype_after_a_step_is_repacked():
    params = _params(16)
    opt = torch_gd.SGD(params, lr=0.1, momentum=0.9)
    _grads(params, 0)
    opt.step()
    for p in params:
        p.data = p.data.double()
    _grads(params, 1)
    before = [p.detach().clone() for p in params]
    opt.step()
    for p, b in zip(params, before):
        assert p.dtype == torch.float64
        assert opt.state[p]["momentum_buffer"].dtype == torch.float64
        assert not torch.equal(p.detach(), b)


def test_zero_size_and_zero_dim_params_share_a_bucket():
    with pack_max_numel(1 << 15):
        params = [torch.nn.Parameter(torch.randn(())), torch.nn.Parameter(torch.randn(0, 3)), torch.nn.Parameter(torch.randn(2))]
        refs = [torch.nn.Parameter(p.detach().clone()) for p in params]
        a = torch_gd.SGD(params, lr=0.1, momentum=0.9)
        b = torch.optim.SGD(refs, lr=0.1, momentum=0.9, foreach=False)
        for step in range(3):
            _grads(params, step), _grads(refs, step)
            a.step(), b.step()
        assert_params_close(params, refs, rtol=0, atol=0)
        assert opt_state_shapes(a) == opt_state_shapes(b)


def opt_state_shapes(opt):
    return {i: {k: tuple(v.shape) for k, v in s.items()} for i, s in opt.state_dict()["state"].items()}


def test_momentum_toggled_by_a_group_edit_follows_torch():
    ours, theirs = _params(), _params()
    a = torch_gd.SGD(ours, lr=0.1, momentum=0.0, dampening=0.5)
    b = torch.optim.SGD(theirs, lr=0.1, momentum=0.0, dampening=0.5, foreach=False)
    for step, momentum in enumerate([0.0, 0.9, 0.9, 0.0, 0.5]):
        for o in (a, b):
            o.param_groups[0]["momentum"] = momentum
        _grads(ours, step), _grads(theirs, step)
        a.step(), b.step()
        assert_params_close(ours, theirs, rtol=0, atol=0)


_EVENTS = ["step", "step", "step", "no grad", "edit param", "edit param data", "rebind param", "swap param data",
           "replace state", "delete state", "plain dict state", "edit state in place", "reset step", "halve last lr"]


@pytest.mark.parametrize("name,kw", [("SGD", dict(lr=0.1, momentum=0.9)), ("Adam", dict(lr=0.1))])
@pytest.mark.parametrize("fused", [False, True], ids=["default", "fused"])
@pytest.mark.parametrize("grouping", ["one group", "group per param"])
@settings(max_examples=15)
@given(events=st.lists(st.sampled_from(_EVENTS), min_size=3, max_size=12))
def test_the_steady_state_path_sees_every_change_between_steps(name, kw, fused, grouping, events):
    """Steps that find nothing changed skip the per-param checks (and for fused groups reuse
    the large params' prepared kernel calls, across groups as one lane); whatever a user does
    between steps (edit a param, also through ``p.data``, rebind or swap params' data, replace,
    delete or reset state, take a grad away, change one group's lr) must still land exactly as
    in torch. The last param is large (per-tensor path)."""
    big = torch.randn(_engine.PACK_MAX_NUMEL + 1, generator=torch.Generator().manual_seed(1))
    ours, theirs = ([*_params(), torch.nn.Parameter(big.clone())] for _ in range(2))
    grouped = (lambda ps: [{"params": [p]} for p in ps]) if grouping == "group per param" else list
    a = getattr(torch_gd, name)(grouped(ours), fused=fused, **kw)
    b = getattr(torch.optim, name)(grouped(theirs), foreach=False, **kw)
    key = "momentum_buffer" if name == "SGD" else "exp_avg"
    for i, event in enumerate(["step", "step"] + events):
        _grads(ours, i), _grads(theirs, i)
        for o, ps in ((a, ours), (b, theirs)):
            if not o.state:
                continue
            if event == "no grad":
                ps[1].grad = None
            elif event == "edit param":
                with torch.no_grad():
                    ps[2].mul_(0.5)
            elif event == "edit param data":  # leaves the version counter as it was
                ps[2].data.clamp_(-0.5, 0.5)
                ps[6].data.clamp_(-0.5, 0.5)
            elif event == "rebind param":
                ps[3].data = ps[3].detach() + 1.0
                ps[6].data = ps[6].detach() - 1.0
            elif event == "swap param data":
                ps[3].data, ps[4].data = ps[4].data, ps[3].data
            elif event == "replace state":
                o.state[ps[0]][key] = torch.full_like(ps[0], 0.25)
            elif event == "delete state":
                del o.state[ps[4]]
            elif event == "plain dict state":
                o.state[ps[5]] = {k: v.clone() for k, v in o.state[ps[5]].items()}
            elif event == "edit state in place":
                o.state[ps[0]][key].add_(1.0)
            elif event == "reset step" and "step" in o.state[ps[2]]:
                o.state[ps[2]]["step"] = torch.tensor(1.0, device=o.state[ps[2]]["step"].device)
            elif event == "halve last lr":
                o.param_groups[-1]["lr"] *= 0.5
        a.step(), b.step()
        tol = dict(rtol=1.3e-6, atol=1e-6) if fused else dict(rtol=0, atol=0)
        assert_params_close(ours, theirs, **tol)
        assert_state_close(a, b, **tol)


@pytest.mark.parametrize("threads", [1, 3])
def test_a_replayed_fused_step_leaves_the_thread_count_as_the_user_set_it(threads):
    """The lane runs small params' kernels on one thread (``_lane.SERIAL_MAX_NUMEL``) and
    large ones on torch's threads: the user's setting holds for both and after the step."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ours = [torch.nn.Parameter(torch.randn(n)) for n in (3, 100, _lane.SERIAL_MAX_NUMEL + 1)]
        theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
        a = torch_gd.SGD(ours, lr=0.1, momentum=0.9, fused=True)
        b = torch.optim.SGD(theirs, lr=0.1, momentum=0.9, fused=True)
        for step in range(4):
            _grads(ours, step), _grads(theirs, step)
            a.step(), b.step()
            assert torch.get_num_threads() == threads
        assert a.describe()["steps"]["replayed"] == 2
        # With the fast paths off, no call is prepared, and the lane is empty.
        lane = ({"groups": 1, "calls": 3, "one_thread": 2, "loading": 1} if _private.enabled()
                else {"groups": 0, "calls": 0, "one_thread": 0, "loading": 0})
        assert a.describe()["lane"] == lane
        assert_params_close(ours, theirs, rtol=1.3e-6, atol=1e-6)
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("name,kw", [("SGD", dict(lr=0.1, momentum=0.9)), ("Adam", dict(lr=0.1))])
def test_replayed_groups_with_equal_settings_load_their_numbers_once_until_one_changes(name, kw):
    """Fused groups with the same settings and step count read the numbers of the first of
    them, loaded once a step; a group whose lr changes (by hand or by a scheduler) gets its
    own numbers again, and every step stays torch's."""
    ours, theirs = ([torch.nn.Parameter(torch.randn(40, generator=torch.Generator().manual_seed(i))) for i in range(4)]
                    for _ in range(2))
    a = getattr(torch_gd, name)([{"params": [p]} for p in ours], fused=True, **kw)
    b = getattr(torch.optim, name)([{"params": [p]} for p in theirs], fused=True, **kw)
    loading = []
    for step in range(10):
        if step == 5:
            for o in (a, b):
                o.param_groups[2]["lr"] = 0.05
        _grads(ours, step), _grads(theirs, step)
        a.step(), b.step()
        assert_params_close(ours, theirs, rtol=1.3e-6, atol=1e-6)
        loading.append((a.describe()["lane"] or {}).get("loading"))
    if _private.enabled():
        assert loading[3] == 1 and loading[-1] == 2, loading
        assert a.describe()["lane"]["groups"] == 4
    else:
        assert loading[-1] == 0


def test_params_reordered_in_their_group_keep_their_own_grads():
    """The steady-state path picks each bucket's grads by position: a group whose params list
    is reordered in place must not hand one param another's grad."""
    ours, theirs = _params(), _params()
    a = torch_gd.SGD(ours, lr=0.1, momentum=0.9)
    b = torch.optim.SGD(theirs, lr=0.1, momentum=0.9, foreach=False)
    for step in range(4):
        if step == 2:
            for o in (a, b):
                ps = o.param_groups[0]["params"]
                ps[1], ps[2] = ps[2], ps[1]
        _grads(ours, step), _grads(theirs, step)
        a.step(), b.step()
        assert_params_close(ours, theirs, rtol=0, atol=0)


def _mixed(n=40, seed=0):
    """Small params of varied sizes and ranks, the last one transposed (not contiguous)."""
    gen = torch.Generator().manual_seed(seed)
    shapes = [(1 + (7 * i) % 23,) if i % 3 else (1 + i % 5, 3) for i in range(n - 1)]
    params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
    params.append(torch.nn.Parameter(torch.randn(3, 4, generator=gen).t()))
    return params


@pytest.mark.parametrize("contiguous", [True, False], ids=["contiguous", "with-transposed"])
@pytest.mark.parametrize("fused", [False, True], ids=["default", "fused"])
def test_chunked_buckets_and_address_copies_follow_torch(fused, contiguous, monkeypatch):
    """A bucket's param values pass through its buffer a chunk at a time (here 6-7 chunks), and
    fused CPU buckets copy them through the params' addresses; rebinding a param, editing it
    through ``.data`` and taking a grad away between steps land as in torch, and each step bumps
    the version counters of the params it wrote, as ``copy_`` would, and only theirs."""
    monkeypatch.setattr(_engine, "CHUNK_NUMEL", 64)
    ours, theirs = _mixed(), _mixed()
    if contiguous:
        ours, theirs = ours[:-1], theirs[:-1]
    a = torch_gd.Adam(ours, lr=0.05, fused=fused)
    b = torch.optim.Adam(theirs, lr=0.05, foreach=False)
    for step in range(7):
        _grads(ours, step), _grads(theirs, step)
        for ps in (ours, theirs):
            if step == 3:
                ps[5].data = ps[5].detach() * 2.0
            elif step == 4:
                ps[7].data.mul_(0.5)
            elif step == 5:
                ps[9].grad = None
        versions = [p._version for p in ours]
        a.step(), b.step()
        tol = dict(rtol=1.3e-6, atol=1e-6) if fused else dict(rtol=0, atol=0)
        assert_params_close(ours, theirs, **tol)
        assert_state_close(a, b, **tol)
        assert all((p._version > v) == (p.grad is not None) for p, v in zip(ours, versions))
    bucket = a.describe()["groups"][0]["buckets"][0]
    assert bucket["chunks"] >= 5
    uses_addresses = fused and contiguous and _private.enabled()
    assert (bucket["copies"] == "addresses") == uses_addresses


def test_without_a_compiler_for_the_copy_loop_buckets_copy_per_tensor(monkeypatch):
    monkeypatch.setattr(torch_gd._scatter, "_compiled", lambda enabled: None)
    ours, theirs = _mixed()[:-1], _mixed()[:-1]
    a = torch_gd.SGD(ours, lr=0.1, momentum=0.9, fused=True)
    b = torch.optim.SGD(theirs, lr=0.1, momentum=0.9, foreach=False)
    for step in range(3):
        _grads(ours, step), _grads(theirs, step)
        a.step(), b.step()
        assert_params_close(ours, theirs, rtol=1.3e-6, atol=1e-6)
    assert a.describe()["groups"][0]["buckets"][0]["copies"] == "foreach"


def test_adagrad_state_made_at_construction_is_already_packed():
    """torch's Adagrad creates its state at construction; ours creates the packed params'
    state in the flat buffer then, so that the first step has nothing to re-pack (made per param,
    both copies would exist at once), and the run still follows torch."""
    ours, theirs = _params(), _params()
    a = torch_gd.Adagrad(ours, lr=0.1, initial_accumulator_value=0.5)
    b = torch.optim.Adagrad(theirs, lr=0.1, initial_accumulator_value=0.5, foreach=False)
    assert len({a.state[p]["sum"].untyped_storage().data_ptr() for p in ours}) == 1
    assert_state_close(a, b, rtol=0, atol=0)
    sums = [a.state[p]["sum"] for p in ours]
    for step in range(3):
        _grads(ours, step), _grads(theirs, step)
        a.step(), b.step()
        assert_params_close(ours, theirs, rtol=0, atol=0)
        assert_state_close(a, b, rtol=0, atol=0)
    assert all(a.state[p]["sum"] is s for p, s in zip(ours, sums))


_RELAYOUTS = {
    "channels_last": lambda p: p.data.contiguous(memory_format=torch.channels_last) if p.dim() == 4 else p.data,
    "transposed at the same address": lambda p: p.data.t() if p.dim() == 2 else p.data,
    "float64": lambda p: p.data.double(),
}


@pytest.mark.parametrize("relayout", _RELAYOUTS, ids=list(_RELAYOUTS))
@pytest.mark.parametrize("fused", [None, True], ids=["default", "fused"])
def test_packed_params_that_change_layout_or_dtype_between_steps_follow_torch(fused, relayout):
    """``p.data = ...`` with another layout (``model.to(memory_format=...)``, a transpose of a
    square param that keeps its address) or dtype, between steady steps and before a step with
    a missing grad: packed segments keep the layout they were packed with and copies convert
    (they were laid out by the param's new strides, and the fused copy loop went by address
    alone: off by up to 2.8 in these params)."""
    gen = torch.Generator().manual_seed(3)
    shapes = [(2, 3, 4, 4)] * 20 + [(6, 6)] * 20
    ours = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    a = torch_gd.SGD(ours, lr=0.1, momentum=0.9, fused=fused)
    b = torch.optim.SGD(theirs, lr=0.1, momentum=0.9, foreach=False)
    for step in range(7):
        gen = torch.Generator().manual_seed(100 + step)
        grads = [torch.randn(p.shape, generator=gen) for p in ours]
        for ps in (ours, theirs):
            for p, g in zip(ps, grads):
                p.grad = g.to(p.dtype)
            if step == 3:  # after the grads: a float64 param keeps its float32 grad this step
                for p in ps[::3]:
                    p.data = _RELAYOUTS[relayout](p)
            if step == 5:
                ps[0].grad = None
        a.step()
        b.step()
        for p, q in zip(ours, theirs):
            torch.testing.assert_close(p.detach().double(), q.detach().double(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fused", [False, True], ids=["default", "fused"])
def test_a_step_keeps_no_grad_alive(fused):
    """torch's optimizers hold no grad between steps, so ``zero_grad()`` frees the old grads
    before the next backward allocates new ones; a recorded steady step must not keep them
    either (it would add a grad's worth of memory at the peak of every step)."""
    model = torch.nn.Sequential(torch.nn.Linear(300, 300), torch.nn.Linear(300, 10), torch.nn.LayerNorm(10))
    opt = torch_gd.AdamW(model.parameters(), lr=1e-3, fused=fused)
    for _ in range(4):
        model(torch.randn(8, 300)).sum().backward()
        opt.step()
        refs = [weakref.ref(p.grad) for p in model.parameters()]
        opt.zero_grad()
        gc.collect()
        assert [r() for r in refs] == [None] * len(refs)
    assert opt.describe()["steps"]["replayed"] >= 2


@pytest.mark.parametrize("fused", [False, True], ids=["default", "fused"])
@pytest.mark.parametrize("groups", ["one", "per param"])
def test_the_second_step_is_recorded_and_the_third_replayed_whatever_the_groups(groups, fused):
    """The first step makes every param's state, which changes ``optimizer.state`` for all
    groups; a group's plan is known to hold from the state every group left, so that with a
    group per param too the second step is steady and recorded, and the third replays it."""
    params = [torch.nn.Parameter(torch.randn(n)) for n in (5, 7, 9, _engine.PACK_MAX_NUMEL + 1)]
    split = [{"params": params}] if groups == "one" else [{"params": [p]} for p in params]
    opt = torch_gd.AdamW(split, lr=0.1, fused=fused)
    seen = []
    for i in range(4):
        _grads(params, i)
        opt.step()
        seen.append(dict(opt.describe()["steps"]))
    assert [(s["checked"], s["replayed"]) for s in seen] == [(1, 0), (2, 0), (2, 1), (2, 2)]


@pytest.mark.parametrize("name,kw", [("SGD", dict(momentum=0.9)), ("AdamW", {})])
def test_groups_replayed_together_follow_torch_and_round_trip_a_checkpoint(name, kw):
    """Fused groups' large params run across groups in a steady step (one counter tensor for
    them all): every group keeps its own lr, ``state`` its own per-param ``step``, and a
    checkpoint taken then loads into torch and back, continuing as torch does."""
    gen = torch.Generator().manual_seed(3)
    make = lambda: [torch.nn.Parameter(torch.randn(5000 + 7 * i, generator=gen)) for i in range(4)]  # noqa: E731
    ours = make()
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    grouped = lambda ps: [{"params": [p], "lr": 0.1 / (i + 1)} for i, p in enumerate(ps)]  # noqa: E731
    a = getattr(torch_gd, name)(grouped(ours), fused=True, **kw)
    b = getattr(torch.optim, name)(grouped(theirs), foreach=False, **kw)
    tol = dict(rtol=1.3e-6, atol=1e-6)  # the fused kernel's fp32 against torch's for-loop
    for i in range(5):
        _grads(ours, i), _grads(theirs, i)
        a.step(), b.step()
        assert_params_close(ours, theirs, **tol)
        assert_state_close(a, b, **tol)
    assert a.describe()["steps"]["replayed"] >= 2
    c = getattr(torch_gd, name)(grouped(ours), fused=True, **kw)
    c.load_state_dict(b.state_dict())
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    for i in range(5, 9):
        _grads(ours, i), _grads(theirs, i)
        c.step(), b.step()
        assert_params_close(ours, theirs, **tol)
        assert_state_close(c, b, **tol)
    assert c.describe()["steps"]["replayed"] >= 2
