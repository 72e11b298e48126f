"""Constructor fuzzing: every outcome is a working optimizer, or a ValueError/TypeError that
names the argument (RuntimeError only for torch's own flag-combination errors) — never a crash
deep inside a step, never a half-applied update."""

from __future__ import annotations

import copy
import inspect
import math
import pickle
import re

import pytest
import torch
from hypothesis import given, strategies as st

import torch_gd

from .registry import CASES

cases = pytest.mark.parametrize("case", CASES, ids=repr)

_VALUES = st.one_of(
    st.sampled_from([0, 1, -1, 0.5, -0.5, 2.0, 1e-3, math.nan, math.inf, -math.inf, True, False, None,
                     "0.1", "", (0.9,), (0.9, 0.999), (0.9, 0.999, 0.5), [0.9, 0.99], (0.9, "x"), (1.0, 0.5)]),
    st.builds(lambda v, shape: torch.full(shape, v), st.sampled_from([0.1, -0.1, math.nan]),
              st.sampled_from([(), (1,), (2,), (1, 1)])),
)
_TORCH_RUNTIME = ("`fused` does not support `differentiable`", "`fused` and `foreach` cannot be `True` together.")
_LEAF = "differentiable=True records the update"


@cases
@given(data=st.data())
def test_constructor_fuzz(case, data):
    names = [n for n in inspect.signature(case.ours).parameters if n != "params"]
    chosen = data.draw(st.lists(st.sampled_from(names), min_size=1, max_size=3, unique=True), label="args")
    kwargs = {n: data.draw(_VALUES, label=n) for n in chosen}
    params = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2, 2))]
    try:
        opt = case.ours(params, **kwargs)
    except (ValueError, TypeError) as exc:
        message = str(exc)
        assert any(n in message for n in chosen) or message.startswith(("Invalid", "Tensor", "betas", "Nesterov")), message
        return
    except RuntimeError as exc:
        assert str(exc) in _TORCH_RUNTIME, exc
        return
    for _ in range(2):
        for p in params:
            p.grad = torch.full_like(p, 0.5)
        before = [p.detach().clone() for p in params]
        try:
            opt.step()
        except RuntimeError as exc:
            # Leaf params under differentiable=True: refused before anything moved.
            assert str(exc).startswith(_LEAF), exc
            assert all(torch.equal(p.detach(), b) for p, b in zip(params, before))
            return
    for p in params:
        assert p.shape in ((3,), (2, 2))


def _state(opt) -> dict:
    return copy.deepcopy(opt.state_dict()["state"])


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        a[i].keys() == b[i].keys() and all(torch.equal(a[i][k], b[i][k]) for k in a[i]) for i in a)


@cases
@pytest.mark.parametrize("fused", [False, True], ids=["default", "fused"])
def test_check_finite_names_the_param_and_updates_nothing(case, fused):
    # A packed param, a per-tensor one, and the bad one alone in the second group.
    params = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(40000)),
              torch.nn.Parameter(torch.ones(2, 2))]
    opt = case.ours([{"params": params[:2]}, {"params": params[2:]}], check_finite=True, fused=fused,
                    **case.typical)
    for p in params:
        p.grad = torch.full_like(p, 0.5)
    opt.step()
    before, state = [p.detach().clone() for p in params], _state(opt)
    params[2].grad[0, 1], params[2].grad[1, 0] = math.nan, -math.inf
    with pytest.raises(RuntimeError, match=r"param 0 of param group 1 \(shape \(2, 2\)\) has 1 NaN and 1 Inf"):
        opt.step()
    assert all(torch.equal(p.detach(), b) for p, b in zip(params, before))
    assert _same_state(_state(opt), state)
    params[2].grad.fill_(0.5)
    opt.step()  # a finite step goes through
    assert not any(torch.equal(p.detach(), b) for p, b in zip(params, before))


@cases
def test_without_check_finite_nan_propagates_element_wise_as_in_torch(case):
    ours, theirs = [torch.nn.Parameter(torch.ones(2, 3)) for _ in range(2)]
    opts = [case.ours([ours], **case.typical), case.theirs([theirs], foreach=False, **case.typical)]
    for opt, p in zip(opts, (ours, theirs)):
        p.grad = torch.tensor([[0.5, math.nan, 0.5], [math.inf, 0.5, 0.5]])
        opt.step()
    torch.testing.assert_close(ours.detach(), theirs.detach(), equal_nan=True)
    assert torch.isnan(ours[0, 1]) and torch.isfinite(ours[:, 2]).all()


@cases
def test_check_finite_cannot_be_capturable_and_survives_copies(case):
    p = [torch.nn.Parameter(torch.ones(2))]
    if "capturable" in inspect.signature(case.ours).parameters:
        with pytest.raises(ValueError, match="check_finite"):
            case.ours(p, check_finite=True, capturable=True)
        opt = case.ours(p, check_finite=True)
        with pytest.raises(ValueError, match="check_finite"):
            opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(2))], "capturable": True})
        assert len(opt.param_groups) == 1
    opt = case.ours(p, check_finite=True)
    assert copy.deepcopy(opt).check_finite and pickle.loads(pickle.dumps(opt)).check_finite
    assert "check_finite" not in opt.state_dict()["param_groups"][0]
    with pytest.raises(TypeError, match="check_finite"):
        case.ours(p, check_finite=1)


def test_check_finite_leaves_inf_steps_to_gradscaler():
    import torch_gd

    p = torch.nn.Parameter(torch.ones(3))
    opt = torch_gd.SGD([p], lr=0.1, momentum=0.9, fused=True, check_finite=True)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    scaler.scale((p * math.inf).sum()).backward()
    scaler.step(opt)  # GradScaler hands found_inf to the fused kernel, which skips the update
    scaler.update()
    assert torch.equal(p.detach(), torch.ones(3)) and scaler.get_scale() == 2.0**15


@cases
@pytest.mark.parametrize("fused", [False, True], ids=["default", "fused"])
def test_integer_params_are_refused_at_construction(case, fused):
    ints = torch.ones(3, dtype=torch.int64)
    theirs_fused = fused and case.name != "RMSprop"
    if theirs_fused:  # torch checks this on purpose (SGD only at the step): its error, word for word
        with pytest.raises(RuntimeError) as theirs:
            ints.grad = torch.ones(3, dtype=torch.int64)
            case.theirs([ints], fused=True).step()
        with pytest.raises(RuntimeError, match=f"^{re.escape(str(theirs.value))}$"):
            case.ours([ints], fused=True)
    else:
        with pytest.raises((TypeError, RuntimeError), match="floating point"):
            case.ours([ints], fused=fused)
    opt = case.ours([torch.nn.Parameter(torch.ones(2))], fused=fused)
    with pytest.raises((TypeError, RuntimeError)):
        opt.add_param_group({"params": [ints]})
    assert len(opt.param_groups) == 1


@cases
def test_params_sharing_memory_are_refused_but_disjoint_views_work(case):
    base = torch.zeros(4, 6)
    with pytest.raises(ValueError, match="share memory"):
        case.ours([base[:, :4], base[:, 2:]])
    with pytest.raises(ValueError, match="share memory"):  # same storage, another group
        opt = case.ours([base[:2]])
        opt.add_param_group({"params": [base.T]})
    assert len(opt.param_groups) == 1
    # Disjoint views of one buffer, interleaved columns included, are separate params.
    ours, theirs = torch.arange(24.0).view(4, 6), torch.arange(24.0).view(4, 6)
    opts = [cls([t[:, ::2], t[:, 1::2]], **case.typical) for cls, t in ((case.ours, ours), (case.theirs, theirs))]
    for opt in opts:
        for i, p in enumerate(opt.param_groups[0]["params"]):
            p.grad = torch.full_like(p, 0.5 + i)
        opt.step()
    torch.testing.assert_close(ours, theirs)


@cases
@pytest.mark.parametrize("numel", [3, 40000], ids=["packed", "per-tensor"])
def test_a_grad_of_another_dtype_is_refused_before_anything_moves(case, numel):
    good, bad = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(numel))
    opt = case.ours([{"params": [good]}, {"params": [bad]}], **case.typical)
    good.grad, bad.grad = torch.ones(3), torch.ones(numel)
    bad.grad.data = torch.ones(numel, dtype=torch.float64)  # what autograd's own check lets through
    with pytest.raises(RuntimeError, match="float64"):
        opt.step()
    assert torch.equal(good.detach(), torch.ones(3)) and torch.equal(bad.detach(), torch.ones(numel))


def _refuses_a_grad_of_another_shape(make, numel):
    good, bad = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(numel))
    opt = make([{"params": [good]}, {"params": [bad]}])
    for _ in range(2):  # into the steady state, where per-param checks are skipped
        good.grad, bad.grad = torch.ones(3), torch.ones(numel)
        opt.step()
    before = [good.detach().clone(), bad.detach().clone()]
    good.grad, bad.grad = torch.ones(3), torch.ones(numel)
    bad.grad.data = torch.ones(numel - 1)  # what autograd's own check lets through
    with pytest.raises(RuntimeError, match="has a grad of shape"):
        opt.step()
    assert torch.equal(good.detach(), before[0]) and torch.equal(bad.detach(), before[1])


@cases
@pytest.mark.parametrize("numel", [3, 40000], ids=["packed", "per-tensor"])
def test_a_grad_of_another_shape_is_refused_before_anything_moves(case, numel):
    """torch's loops broadcast such a grad or crash half-way; the check also guards the
    steady-state paths, which gather grads chunk by chunk while updating."""
    _refuses_a_grad_of_another_shape(lambda groups: case.ours(groups, **case.typical), numel)


@pytest.mark.parametrize("numel", [3, 40000], ids=["packed", "per-tensor"])
def test_a_grad_of_another_shape_is_refused_before_anything_moves_fused(numel):
    _refuses_a_grad_of_another_shape(lambda groups: torch_gd.Adam(groups, fused=True), numel)


@cases
@pytest.mark.parametrize("fused", [False, True], ids=["default", "fused"])
def test_meta_params_step_shapes_only(case, fused):
    p = torch.nn.Parameter(torch.empty(4, 3, device="meta"))
    p.grad = torch.empty(4, 3, device="meta")
    opt = case.ours([p], fused=fused, **case.typical)
    opt.step()
    assert p.is_meta and all(t.is_meta for k, t in opt.state[p].items() if k != "step")
