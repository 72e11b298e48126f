"""Adam/AdamW/Adagrad/RMSprop specifics: capturable, construction-time state, group options."""

from __future__ import annotations

import copy

import pytest
import torch

import torch_gd

from .helpers import assert_params_close, assert_state_close, pack_max_numel


def _params(dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=dtype)) for s in [(4, 3), (5,), (), (40000,)]]


def _feed(params, gen):
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)


@pytest.mark.parametrize("cls,kw", [
    (torch_gd.Adam, dict(lr=1e-2, amsgrad=True, weight_decay=1e-2)),
    (torch_gd.AdamW, dict(lr=torch.tensor(1e-2), betas=(torch.tensor(0.9), torch.tensor(0.99)))),
    (torch_gd.RMSprop, dict(lr=1e-2, momentum=0.9, centered=True)),
])
@pytest.mark.parametrize("foreach", [None, False])
def test_capturable_matches_our_non_capturable_path(cls, kw, foreach):
    """Capturable computes bias corrections from the step *tensor* on the param's device, with
    no host read; it must give the non-capturable results (fp32: rtol 1.3e-6, atol 1e-5)."""
    a, b = _params(), _params()
    oa = cls(a, foreach=foreach, capturable=True, **copy.deepcopy(kw))
    ob = cls(b, foreach=foreach, **copy.deepcopy(kw))
    ga, gb = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    for _ in range(20):
        _feed(a, ga), _feed(b, gb)
        oa.step(), ob.step()
    assert_params_close(a, b, rtol=1.3e-6, atol=1e-5)
    assert_state_close(oa, ob, rtol=1.3e-6, atol=1e-5)
    assert all(oa.state[p]["step"].device == p.device for p in a)


def test_adagrad_state_exists_at_construction_like_torch():
    ours, theirs = _params(), _params()
    a = torch_gd.Adagrad(ours, initial_accumulator_value=0.3)
    b = torch.optim.Adagrad(theirs, initial_accumulator_value=0.3)
    assert_state_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("foreach", [None, False])
def test_adagrad_honours_a_groups_own_initial_accumulator_value(foreach):
    """torch reads only the constructor's value; a group's own value is what a user meant."""
    p, q = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    late = torch.nn.Parameter(torch.ones(3))
    opt = torch_gd.Adagrad([{"params": [p]}, {"params": [q], "initial_accumulator_value": 2.0}],
                           initial_accumulator_value=0.5, foreach=foreach)
    opt.add_param_group({"params": [late], "initial_accumulator_value": 4.0})
    assert torch.equal(opt.state[p]["sum"], torch.full((3,), 0.5))
    assert torch.equal(opt.state[q]["sum"], torch.full((3,), 2.0))
    for t in (p, q, late):
        t.grad = torch.ones(3)
    opt.step()
    assert torch.equal(opt.state[late]["sum"], torch.full((3,), 5.0))
    assert float(opt.state[late]["step"]) == 1.0


@pytest.mark.parametrize("foreach", [None, False])
def test_adamw_keeps_decoupled_decay_after_loading_an_adam_checkpoint(foreach):
    p, q = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    adam = torch.optim.Adam([p], lr=0.1, weight_decay=0.1)
    p.grad = torch.ones(3)
    adam.step()
    opt = torch_gd.AdamW([q], lr=0.1, weight_decay=0.1, foreach=foreach)
    # Copies: loading shares the source's state tensors (in torch too), and both steps below
    # would update them.
    opt.load_state_dict(copy.deepcopy(adam.state_dict()))
    assert opt.param_groups[0]["decoupled_weight_decay"] is True
    ref = torch.optim.AdamW([torch.nn.Parameter(q.detach().clone())], lr=0.1, weight_decay=0.1)
    ref.load_state_dict(copy.deepcopy(adam.state_dict()))
    q.grad = ref.param_groups[0]["params"][0].grad = torch.ones(3)
    opt.step(), ref.step()
    assert_params_close([q], ref.param_groups[0]["params"], rtol=0, atol=0)


def test_a_step_stored_as_a_number_is_read_like_torch():
    """Old checkpoints store ``step`` as a Python number; torch converts it, and so do we."""
    p, q = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    src = torch.optim.Adam([p], lr=0.1)
    p.grad = torch.ones(3)
    src.step(), src.step()
    sd = copy.deepcopy(src.state_dict())
    sd["state"][0]["step"] = 2
    for cls in (torch_gd.Adam, torch.optim.Adam):
        opt = cls([q], lr=0.1)
        opt.load_state_dict(copy.deepcopy(sd))
        assert torch.is_tensor(opt.state[q]["step"]) and float(opt.state[q]["step"]) == 2.0


@pytest.mark.parametrize("cls", [torch_gd.Adam, torch_gd.RMSprop, torch_gd.Adagrad])
def test_packed_and_per_tensor_state_agree_after_late_first_grads(cls):
    """Per-param step counts inside one packed bucket: params whose first grad arrives at
    different steps get their own bias corrections, as with torch's per-tensor loop."""
    ours, theirs = _params(), _params()
    with pack_max_numel(1 << 15):
        a = cls(ours, lr=1e-2)
        b = getattr(torch.optim, cls.__name__)(theirs, lr=1e-2, foreach=False)
        gen_a, gen_b = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
        for step in range(len(ours) + 2):
            for i, (p, q) in enumerate(zip(ours, theirs)):
                g = torch.randn(p.shape, generator=gen_a)
                torch.randn(q.shape, generator=gen_b)
                p.grad = g if i <= step else None
                q.grad = None if p.grad is None else g.clone()
            a.step(), b.step()
            assert_params_close(ours, theirs)
            assert_state_close(a, b)
