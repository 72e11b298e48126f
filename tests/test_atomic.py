"""No step is ever half-applied: a failure in the last param's preparation (a bad grad, an
allocation that fails) or in compiling a fused kernel leaves params, state and step counts
exactly as they were, on every path, at the first step and in the steady state."""

from __future__ import annotations

import pytest
import torch

from torch_gd import _engine, _fused

from .registry import CASES

cases = pytest.mark.parametrize("case", CASES, ids=repr)
paths = pytest.mark.parametrize("flags", [{"foreach": False}, {}, {"fused": True}],
                                ids=["per-tensor", "default", "fused"])
# Small params share a bucket; the last one is large and so updated per tensor on the default
# and fused paths, or small and packed (``large_last=False``).
SMALL, LARGE = [(3, 4), (5,), (2, 3)], (_engine.PACK_MAX_NUMEL + 3,)


def _params(large_last: bool) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(0)
    shapes = SMALL + [LARGE if large_last else (4,)]
    return [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]


def _grads(params, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)


def _snapshot(params, opt) -> tuple:
    values = [p.detach().clone() for p in params]
    state = {i: {k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()}
             for i, s in opt.state_dict()["state"].items()}
    return values, state


def _assert_unchanged(params, opt, before) -> None:
    values, state = before
    for p, v in zip(params, values):
        assert torch.equal(p.detach(), v)
    now = opt.state_dict()["state"]
    assert sorted(now) == sorted(state)
    for i, entries in state.items():
        assert list(now[i]) == list(entries)
        for k, v in entries.items():
            assert torch.equal(now[i][k], v) if torch.is_tensor(v) else now[i][k] == v, (i, k)


@cases
@paths
@pytest.mark.parametrize("steps_before", [0, 3], ids=["first-step", "steady"])
@pytest.mark.parametrize("large_last", [True, False], ids=["large-last", "small-last"])
def test_a_bad_last_grad_leaves_everything_as_it_was(case, flags, steps_before, large_last):
    params = _params(large_last)
    opt = case.ours(params, **case.typical, **flags)
    for step in range(steps_before):
        _grads(params, step)
        opt.step()
    _grads(params, 10)
    last, shape = params[-1], params[-1].shape
    last.data = torch.randn(last.numel() + 1)  # its grad no longer fits it
    before = _snapshot(params, opt)
    with pytest.raises(RuntimeError):
        opt.step()
    _assert_unchanged(params, opt, before)
    # And the next good step is taken from there.
    last.data = torch.randn(shape)
    before = _snapshot(params, opt)
    opt.step()
    assert not all(torch.equal(p.detach(), v) for p, v in zip(params, before[0]))


# Adagrad is left out: its state is made in the constructor, as torch's.
@pytest.mark.parametrize("case", [c for c in CASES if c.name != "Adagrad"], ids=repr)
@paths
@pytest.mark.parametrize("large_last", [True, False], ids=["large-last", "small-last"])
def test_an_allocation_failing_for_the_last_param_leaves_everything_as_it_was(case, flags, large_last, monkeypatch):
    """State is allocated before anything is written: the first step of a param whose state
    cannot be allocated (out of memory) changes nothing, also for the params before it."""
    params = _params(large_last)
    opt = case.ours(params, **case.typical, **flags)
    _grads(params, 0)
    before = _snapshot(params, opt)
    last = params[-1]
    real = {name: getattr(torch, name) for name in ("zeros_like", "zeros", "empty_like", "empty", "full")}

    def failing(name):
        def make(*args, **kwargs):
            shape = args[0].shape if args and torch.is_tensor(args[0]) else torch.Size(
                args[0] if args and isinstance(args[0], (tuple, list, torch.Size)) else args)
            if shape == last.shape or (not large_last and sum(p.numel() for p in params) in (shape.numel(),)):
                raise torch.OutOfMemoryError("injected: no memory for the last param's state")
            return real[name](*args, **kwargs)
        return make

    for name in real:
        monkeypatch.setattr(torch, name, failing(name))
    with pytest.raises(torch.OutOfMemoryError):
        opt.step()
    monkeypatch.undo()
    _assert_unchanged(params, opt, before)


@cases
@pytest.mark.parametrize("steps_before", [0, 3], ids=["first-step", "new-dtype-after-steady"])
def test_a_kernel_that_cannot_be_compiled_leaves_everything_as_it_was(case, steps_before):
    """The fused kernels a step needs are compiled before anything is written: a compiler
    failure at the first step, or for a param of a new dtype added after steady steps."""
    params = _params(large_last=True)
    opt = case.ours(params, **case.typical, fused=True)
    for step in range(steps_before):
        _grads(params, step)
        opt.step()
    if steps_before:
        extra = [torch.nn.Parameter(torch.randn(3, dtype=torch.float64)),
                 torch.nn.Parameter(torch.randn(LARGE, dtype=torch.float64))]
        opt.add_param_group({"params": extra})
        params = params + extra
    _grads(params, 10)
    before = _snapshot(params, opt)

    def broken(gm, example_inputs):
        raise RuntimeError("no C++ compiler here")

    old, _fused.BACKEND = _fused.BACKEND, broken
    try:
        with pytest.raises(RuntimeError, match="fused=False"):
            opt.step()
    finally:
        _fused.BACKEND = old
    _assert_unchanged(params, opt, before)


@cases
@pytest.mark.parametrize("flags", [{"foreach": False}, {}], ids=["per-tensor", "default"])
def test_a_param_rebound_to_a_shape_its_state_does_not_have_is_refused_before_anything(case, flags):
    # ``p.data = ...`` with a grad that fits the new shape, and state made for the old one: the
    # step would fail at that param, after the others; it is refused before the first write.
    params = _params(large_last=True) + [torch.nn.Parameter(torch.randn(LARGE))]
    opt = case.ours(params, **case.typical, **flags)
    for step in range(3):
        _grads(params, step)
        opt.step()
    if not any(torch.is_tensor(v) and v.dim() for v in opt.state[params[-1]].values()):
        pytest.skip(f"{case!r} keeps no param-shaped state with these options")
    params[-1].data = torch.randn(LARGE[0] + 1)
    _grads(params, 3)
    before = _snapshot(params, opt)
    with pytest.raises(RuntimeError, match="changed shape"):
        opt.step()
    _assert_unchanged(params, opt, before)
