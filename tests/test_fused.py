"""The fused path: every optimizer's rule compiled by torch.compile, against the eager path and
torch, on every layout, with GradScaler, without recompiles, and traced for a fake "cuda".

Compiling is the expensive part (seconds per kernel with a cold cache), so these tests use one
configuration per optimizer and share the process-wide kernel cache.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import torch_gd
from torch_gd import _engine, _fused, _private

from .helpers import assert_params_close, assert_state_close, needs_cuda_build, same_grads, tol, twins
from .registry import CASES

cases = pytest.mark.parametrize("case", CASES, ids=repr)


def _layouts(dtype=torch.float32, seed=0):
    """Params of every shape class and layout, each with a grad maker of another layout."""
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64).to(dtype)  # noqa: E731
    big = _engine.PACK_MAX_NUMEL + 7
    return [
        r(3, 4), r(()), r(0), r(1), r(5, 6).t(),
        r(2, 3, 4, 5).contiguous(memory_format=torch.channels_last),
        r(big), r(2, big // 2 + 1).t(), r(2 * big)[::2],
        r(4, 8, 32, 33).contiguous(memory_format=torch.channels_last),
    ]


def _grad(p: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    g = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype)
    return g.contiguous() if p.dim() == 4 else g  # channels_last params get contiguous grads


def _pair(case, fused_kw=None, dtype=torch.float32):
    tensors = _layouts(dtype)
    ours = [torch.nn.Parameter(t.clone()) for t in tensors]
    for p, t in zip(ours, tensors):  # keep each layout (clone keeps strides only when dense)
        p.data = t.clone().detach() if not t.is_contiguous() and t.dim() < 4 else p.data
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    kw = copy.deepcopy(case.typical)
    return ours, theirs, case.ours(ours, fused=True, **(fused_kw or {}), **kw), kw


@cases
def test_fused_matches_torch_for_loop_on_every_layout(case):
    """Single steps from the same state at fp32 tolerance (compiled code rounds differently, so
    each step starts from torch's values again); one param has no grad at step 2."""
    ours, theirs, opt, kw = _pair(case)
    ref = case.theirs(theirs, foreach=False, **kw)
    gen = torch.Generator().manual_seed(1)
    for step in range(4):
        for i, (p, q) in enumerate(zip(ours, theirs)):
            p.grad = None if (step == 1 and i == 0) else _grad(p, gen)
            q.grad = None if p.grad is None else p.grad.clone()
        opt.step(), ref.step()
        assert_params_close(ours, theirs, **tol(torch.float32))
        assert_state_close(opt, ref, **tol(torch.float32))
        for p, q in zip(ours, theirs):
            p.data.copy_(q.data)
        opt.load_state_dict(copy.deepcopy(ref.state_dict()))
        opt.param_groups[0]["fused"] = True
        for group in opt.param_groups:
            group["foreach"] = None
    assert all(opt.state[p]["step"].device == p.device for p in ours if "step" in opt.state[p])


@cases
def test_fused_with_default_arguments_matches_eager(case):
    """Defaults switch terms off (zero weight decay, lr_decay, momentum): those become static
    flags of the kernel rather than tensors, a different code path from the tuned configs."""
    a = [torch.nn.Parameter(torch.randn(s, generator=torch.Generator().manual_seed(0))) for s in [(3, 4), (40000,)]]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    fused, eager = case.ours(a, fused=True), case.ours(b)
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        same_grads(a, b, gen)
        fused.step(), eager.step()
        assert_params_close(a, b, **tol(torch.float32))
        assert_state_close(fused, eager, **tol(torch.float32))


@pytest.mark.parametrize("case", [c for c in CASES if c.name in ("Adam", "SGD")], ids=repr)
def test_bf16_fused_is_fp32_maths_rounded_once(case):
    """For bf16 the reference is the eager rule run in fp32 on the same (upcast) state, rounded
    once to bf16, as torch's fused kernels compute: within one bf16 ulp (2^-7 relative)."""
    p = torch.nn.Parameter(torch.randn(1000, generator=torch.Generator().manual_seed(0)).bfloat16())
    opt = case.ours([p], fused=True, **case.typical)
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        p.grad = torch.randn(1000, generator=gen).bfloat16()
        ref_p = torch.nn.Parameter(p.detach().float())
        ref = case.ours([ref_p], **case.typical)
        if opt.state[p]:
            sd = copy.deepcopy(opt.state_dict())
            ref.load_state_dict(sd)  # casts state to fp32
        ref_p.grad = p.grad.float()
        ref.step(), opt.step()
        torch.testing.assert_close(p.detach(), ref_p.detach().bfloat16(), rtol=2**-7, atol=1e-6)


@pytest.mark.parametrize("name", ["SGD", "Adam"])
def test_gradscaler_unscales_inside_and_skips_without_touching_anything(name):
    case = next(c for c in CASES if c.name == name)
    kw = {**case.typical, **({"dampening": 0.3} if name == "SGD" else {})}
    p = torch.nn.Parameter(torch.randn(6, 5))
    q = torch.nn.Parameter(p.detach().clone())
    opt = case.ours([p], fused=True, **kw)
    ref = case.ours([q], **kw)  # eager, fed the unscaled grads of the steps that are not skipped
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    gen = torch.Generator().manual_seed(0)
    for step in range(5):
        g = torch.randn(6, 5, generator=gen)
        skip = step in (0, 3)  # the very first step too: momentum must still start from g
        opt.zero_grad()
        (scaler.scale((p * g).sum()) * (float("inf") if skip else 1.0)).backward()
        before = (p.detach().clone(), copy.deepcopy(opt.state_dict()["state"]))
        if step == 2:
            scaler.unscale_(opt)  # then the optimizer sees grad_scale=None
        scaler.step(opt)
        scaler.update()
        if skip:
            assert torch.equal(p.detach(), before[0])
            after = opt.state_dict()["state"]
            for i in after:
                for k in after[i]:
                    # State created by this step (as torch creates it) keeps its initial zeros.
                    old = before[1].get(i, {}).get(k, torch.zeros_like(after[i][k]))
                    assert torch.equal(after[i][k], old), k
        else:
            q.grad = g.clone()
            ref.step()
            torch.testing.assert_close(p.detach(), q.detach(), **tol(torch.float32))


@pytest.mark.parametrize("name", ["Adam", "SGD"])
def test_gradscaler_skips_while_some_params_have_no_grad(name):
    """Skipped steps that some params sit out (an unused expert), then steps others sit out:
    params whose host counts agree while their real step counts differ must not share a run or
    a step's numbers (Adam's bias corrections, SGD's first momentum). Small and large params,
    against torch's for-loop fed the unscaled grads of the applied steps."""
    gen = torch.Generator().manual_seed(4)
    shapes = [(5, 7)] * 6 + [(_engine.PACK_MAX_NUMEL + 5,)] * 3
    ours = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    # With dampening, a first momentum step (buf = g) differs from a later one on a zero buffer.
    kw = {"lr": 0.01, "momentum": 0.9, "dampening": 0.3} if name == "SGD" else {"lr": 0.01}
    opt = getattr(torch_gd, name)(ours, fused=True, **kw)
    ref = getattr(torch.optim, name)(theirs, foreach=False, **kw)
    scaler = torch.amp.GradScaler("cpu", init_scale=16.0)
    # Skipped: steps 0 and 1 (evens sit out step 1); the odds sit out step 2. At step 3 every
    # param has taken 2 steps by the host's count, the odds 1 really and the evens 2.
    absent = {1: range(0, 9, 2), 2: range(1, 9, 2), 5: range(0, 9, 3)}
    for step in range(7):
        scaler.scale(torch.ones(()))  # lazily creates the scale
        grads = [torch.randn(p.shape, generator=gen) for p in ours]
        skip = step in (0, 1)
        for i, (p, q, g) in enumerate(zip(ours, theirs, grads)):
            missing = i in absent.get(step, ())
            p.grad = None if missing else g * scaler.get_scale()
            if skip and i == 1:  # present at the skipped step
                p.grad.view(-1)[0] = float("inf")
            q.grad = None if missing or skip else g.clone()
        scaler.step(opt)
        scaler.update()
        if not skip:
            ref.step()
        assert_params_close(ours, theirs, **tol(torch.float32))


def test_state_of_another_dtype_than_its_param_is_refused_before_anything_moves():
    """``model.double()`` after state was created: a kernel compiled for float64 would read and
    write the float32 state out of bounds (it crashed the process); torch's fused kernels
    refuse it too. Small params re-pack their state instead."""
    big, small = (_engine.PACK_MAX_NUMEL + 5,), (4, 3)
    params = [torch.nn.Parameter(torch.randn(s)) for s in (big, small)]
    opt = torch_gd.SGD(params, lr=0.1, momentum=0.9, fused=True)
    for _ in range(3):
        for p in params:
            p.grad = torch.randn(p.shape)
        opt.step()
    for p in params:
        p.data, p.grad = p.data.double(), None
        p.grad = torch.randn(p.shape, dtype=torch.float64)
    before = [p.detach().clone() for p in params], copy.deepcopy(opt.state_dict())
    with pytest.raises(RuntimeError, match="changed dtype or device after its state was created"):
        opt.step()
    assert all(torch.equal(p.detach(), b) for p, b in zip(params, before[0]))
    after = opt.state_dict()
    for i, st in before[1]["state"].items():
        assert all(torch.equal(after["state"][i][k], v) for k, v in st.items())


_COMPILED_STEP = """
import torch, torch_gd
from torch._dynamo.utils import counters
gen = torch.Generator().manual_seed(5)
params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in [(16, 8), (16,), (4, 16), (4,)]]
opt = torch_gd.Adam(params, lr=0.01, fused=True)
step = torch.compile(opt.step, backend="eager")
for _ in range(7):
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)
    step()
    print(counters["stats"]["unique_graphs"])
"""


def test_a_compiled_fused_step_does_not_recompile_every_step():
    """The tutorial pattern ``torch.compile(opt.step)``: dynamo traces the engine, and a host
    step count used as a key of the step's shared numbers was guarded on, so every step
    compiled anew until dynamo's recompile limit. In its own process, so that dynamo's
    counters and caches start empty."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _COMPILED_STEP], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    graphs = [int(line) for line in out.stdout.split()]
    assert len(graphs) == 7 and graphs[3] == graphs[-1], graphs


def test_no_recompiles_after_the_first_step():
    """50 steps of varied shapes with lr, momentum and weight decay changing every step (as a
    scheduler would) compile nothing after step 1: the numbers enter kernels as 0-dim tensors
    and sizes are unbacked."""
    from torch._dynamo.utils import counters

    import torch_gd

    gen = torch.Generator().manual_seed(0)
    shapes = [(), (0,), (1,), (2,), (3, 4), (7, 1, 3), (_engine.PACK_MAX_NUMEL + 1,), (1, 1)]
    for cls, kw in ((torch_gd.Adam, dict(lr=1e-3, weight_decay=1e-2)), (torch_gd.SGD, dict(lr=0.1, momentum=0.9, weight_decay=1e-2))):
        params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
        opt = cls(params, fused=True, **kw)
        compiled_after_first = None
        for step in range(50):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen)
            opt.param_groups[0]["lr"] = 1e-3 * (1 + step)
            opt.param_groups[0]["weight_decay"] = 1e-2 / (1 + step)
            if cls is torch_gd.SGD:
                opt.param_groups[0]["momentum"] = 0.9 - step * 1e-3
            opt.step()
            if step == 0:
                compiled_after_first = counters["stats"]["unique_graphs"]
        assert counters["stats"]["unique_graphs"] == compiled_after_first, cls


def test_kernels_are_called_directly_once_compiled():
    """After a signature's first call, kernels skip dynamo and call Inductor's code directly;
    the results stay those of the eager rule over varied sizes, offsets and changing lr."""
    import torch_gd

    gen = torch.Generator().manual_seed(0)
    shapes = [(5,), (3, 4), (_engine.PACK_MAX_NUMEL + 1,), (2, _engine.PACK_MAX_NUMEL)]
    params, refs = twins(shapes, gen)
    opt, ref = torch_gd.Adam(params, fused=True), torch_gd.Adam(refs)
    through_dynamo = []
    for step in range(4):
        same_grads(params, refs, gen)
        for o in (opt, ref):
            o.param_groups[0]["lr"] = 1e-2 / (1 + step)
        versions = [p._version for p in params]
        opt.step()
        ref.step()
        assert_params_close(params, refs, **tol(torch.float32))
        # In-place updates bump version counters, as AOT's wrapper (which we skip) does.
        assert all(p._version > v for p, v in zip(params, versions))
        through_dynamo.append(sum(k["dynamo_calls"] for k in opt.describe()["kernels"]))
    kernels, group = opt.describe()["kernels"], opt.describe()["groups"][0]
    if _private.enabled():
        # Compiled at the first step; from then on dynamo is never entered, the calls are the
        # generated modules' own ``call`` (not AOT's runtime wrapper), and the large params'
        # calls were prepared once.
        assert through_dynamo[1:] == [through_dynamo[0]] * 3
        assert kernels and all(k["direct"] and set(k["direct"]) == {"call"} for k in kernels)
        assert group["prepared"]
    else:  # the public path: every call through torch.compile's wrapper
        assert through_dynamo == sorted(set(through_dynamo)) and all(not k["direct"] for k in kernels)
        assert not group["prepared"]


def test_prepared_calls_follow_changed_flags_and_numbers():
    """Steady steps run the large params' prepared calls; switching a term on (weight decay
    from 0, which changes the kernel), changing lr and betas, or adding GradScaler's inputs
    must leave them for the per-call path and stay exact."""
    import torch_gd

    gen = torch.Generator().manual_seed(1)
    shapes = [(_engine.PACK_MAX_NUMEL + 3,), (3, _engine.PACK_MAX_NUMEL // 2 + 1), (7,)]
    params, refs = twins(shapes, gen)
    opt, ref = torch_gd.Adam(params, fused=True), torch_gd.Adam(refs)
    prepared_steps = []
    for step in range(8):
        same_grads(params, refs, gen)
        for o in (opt, ref):
            group = o.param_groups[0]
            group["lr"] = 1e-2 / (1 + step)
            group["betas"] = (0.9 - 0.01 * step, 0.999)
            group["weight_decay"] = 0.1 if step >= 4 else 0.0
        if step == 5:
            opt.grad_scale, opt.found_inf = torch.tensor(1.0), torch.tensor(0.0)
        prepared = opt.describe()["steps"]["prepared"]
        opt.step()
        if opt.describe()["steps"]["prepared"] > prepared:
            prepared_steps.append(step)
        if step == 5:
            del opt.grad_scale, opt.found_inf
        ref.step()
        assert_params_close(params, refs, **tol(torch.float32))
        assert_state_close(opt, ref, **tol(torch.float32))
    # Prepared after step 0; after the kernel changed at step 4, prepared again, dropped for
    # GradScaler's step 5 and prepared again at step 6. Without the private APIs kernels are not
    # called directly, and nothing is prepared.
    assert prepared_steps == ([1, 2, 3, 7] if _private.enabled() else [])


@pytest.mark.parametrize("name, switch", [("Adam", {"betas": (0.0, 0.999)}), ("RMSprop", {"alpha": 0.0})])
def test_a_coefficient_switched_to_zero_gets_its_own_kernel_called_directly(name, switch):
    """A float 0.0 that switches a term off (beta1, alpha) between steady steps: a new
    kernel, compiled with the 0 as a constant (dynamo would lift a float into an input no call
    passes, so every call went through dynamo, and the prepared large param's view made it
    fail), matching the eager rule."""
    import torch_gd

    gen = torch.Generator().manual_seed(2)
    shapes = [(_engine.PACK_MAX_NUMEL + 3,), (7,), (3, 4)]
    params, refs = twins(shapes, gen)
    kw = {"lr": 1e-2}
    opt, ref = getattr(torch_gd, name)(params, fused=True, **kw), getattr(torch_gd, name)(refs, **kw)
    for step in range(5):
        same_grads(params, refs, gen)
        if step == 3:
            for o in (opt, ref):
                o.param_groups[0].update(switch)
        opt.step()
        ref.step()
        assert_params_close(params, refs, **tol(torch.float32))
    (key, value), = switch.items()
    zero = value[0] if key == "betas" else value
    switched = [k for k in opt.describe()["kernels"] if k["statics"].get("beta1" if key == "betas" else key) == zero]
    assert switched and all(bool(k["direct"]) == _private.enabled() for k in switched)


@needs_cuda_build
@cases
def test_fused_traces_for_a_fake_cuda_device(case):
    """Inductor cannot build CUDA kernels without a driver; dynamo with aot_eager can trace the
    same kernels under FakeTensorMode on "cuda" with fullgraph=True, which proves they hold no
    graph break, no .item() and no host tensor mixed into device ops; state stays on "cuda"."""
    old = _fused.BACKEND
    _fused.BACKEND = "aot_eager"
    try:
        with FakeTensorMode():
            params = [torch.nn.Parameter(torch.randn(s, device="cuda")) for s in [(3, 4), (5,), (_engine.PACK_MAX_NUMEL + 1,)]]
            opt = case.ours(params, fused=True, **{**case.typical, "lr": torch.tensor(0.01, device="cuda")})
            for _ in range(2):
                for p in params:
                    p.grad = torch.randn_like(p)
                opt.step()
            for p in params:
                for k, v in opt.state[p].items():
                    assert v.device == p.device, (k, v.device)
    finally:
        _fused.BACKEND = old


def test_a_compiler_failure_names_the_fix_and_touches_nothing():
    import torch_gd

    def broken(gm, example_inputs):
        raise RuntimeError("no C++ compiler here")

    old = _fused.BACKEND
    _fused.BACKEND = broken
    try:
        p = torch.nn.Parameter(torch.ones(3))
        opt = torch_gd.Adam([p], fused=True)
        p.grad = torch.ones(3)
        with pytest.raises(RuntimeError, match="fused=False"):
            opt.step()
        assert torch.equal(p.detach(), torch.ones(3))
        assert all(float(s["step"]) == 0 for s in opt.state.values())
    finally:
        _fused.BACKEND = old


@cases
def test_fused_params_whose_first_grad_comes_late(case):
    """torch's fused SGD raises when a param first gets a grad after step 1; ours starts that
    param's state then, inside a bucket whose other params are further along."""
    ours = [torch.nn.Parameter(torch.randn(4, generator=torch.Generator().manual_seed(i))) for i in range(4)]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    opt = case.ours(ours, fused=True, **case.typical)
    ref = case.theirs(theirs, foreach=False, **case.typical)
    gen = torch.Generator().manual_seed(5)
    for step in range(5):
        for i, (p, q) in enumerate(zip(ours, theirs)):
            p.grad = torch.randn(4, generator=gen) if i <= step else None
            q.grad = None if p.grad is None else p.grad.clone()
        opt.step(), ref.step()
        assert_params_close(ours, theirs, **tol(torch.float32))
        assert_state_close(opt, ref, **tol(torch.float32))


def test_gradscaler_refuses_a_non_fused_group_of_a_fused_optimizer():
    import torch_gd

    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    opt = torch_gd.Adam([{"params": [a]}, {"params": [b], "fused": False}], fused=True)
    scaler = torch.amp.GradScaler("cpu")
    scaler.scale((a + b).sum()).backward()
    with pytest.raises(RuntimeError, match="fused=False"):
        scaler.step(opt)
    assert torch.equal(a.detach(), torch.ones(2)) and torch.equal(b.detach(), torch.ones(2))


@pytest.mark.parametrize("name", ["SGD", "AdamW"])
def test_without_numpy(name, monkeypatch):
    """torch does not require NumPy, and neither does torch_gd: where it is missing, prepared
    fused calls refresh their numbers with torch ops, with the same results."""
    def unavailable(self):
        raise RuntimeError("Numpy is not available")

    monkeypatch.setattr(torch.Tensor, "numpy", unavailable)
    case = next(c for c in CASES if c.name == name)
    gen = torch.Generator().manual_seed(0)
    ours, theirs = twins([(3, 4)] * 20 + [(_engine.PACK_MAX_NUMEL + 3,)], gen)
    opt = case.ours(ours, fused=True, **case.typical)
    ref = case.theirs(theirs, foreach=False, **case.typical)
    for _ in range(4):
        same_grads(ours, theirs, gen)
        opt.step(), ref.step()
        assert_params_close(ours, theirs, **tol(torch.float32))
    # Prepared calls (whose numbers NumPy would write) exist where the private fast paths are on.
    assert (opt.describe()["steps"]["prepared"] > 0) == _private.enabled()


def test_kernel_calls_run_the_update_kernels_alone():
    """``kernel_calls()`` calls the last steady step's update kernels once more and nothing
    else: a large param (updated in place) moves by another −lr·g, a packed one (whose kernel
    updates the bucket's buffer, copied back by the step) stays, and no step is counted."""
    params = [torch.nn.Parameter(torch.randn(10)) for _ in range(_engine.FUSED_PACK_MIN_PARAMS + 4)]
    large = torch.nn.Parameter(torch.randn(_engine.PACK_MAX_NUMEL + 3))
    opt = torch_gd.Adam([*params, large], lr=0.1, fused=True)
    with pytest.raises(RuntimeError, match="kernel_calls"):
        opt.kernel_calls()
    for _ in range(3):
        for p in (*params, large):
            p.grad = torch.ones_like(p)
        opt.step()
    if not _private.enabled():  # no prepared calls without the private fast paths
        with pytest.raises(RuntimeError, match="kernel_calls"):
            opt.kernel_calls()
        return
    before = [p.detach().clone() for p in (*params, large)]
    state_before = copy.deepcopy(opt.state_dict()["state"])
    opt.kernel_calls()()
    assert all(torch.equal(p, b) for p, b in zip(params, before))
    # Adam at step 3 with constant grads: m and v took the step's values again, so the update
    # is the step's own size, lr·m̂/(√v̂ + ε) (the same for every element).
    moved = before[-1] - large.detach()
    assert moved.min() > 0.09 and torch.allclose(moved, moved[0].expand_as(moved))
    assert opt.state_dict()["state"][len(params)]["step"] == state_before[len(params)]["step"]


def test_a_kernel_called_with_numbers_of_another_dtype_is_compiled_for_them():
    """A step's numbers follow the default dtype (stochastic rounding's step count): after
    ``torch.set_default_dtype(torch.float64)`` the kernel compiled for float32 numbers is not
    called with float64 ones; the step gives the bits of a process that never used float32."""
    code = ("import sys, torch, torch_gd\n"
            "def run():\n"
            "    gen = torch.Generator().manual_seed(0)\n"
            "    p = torch.nn.Parameter(torch.randn(70000, generator=gen).to(torch.bfloat16))\n"
            "    opt = torch_gd.SGD([p], lr=0.1, momentum=0.9, fused=True, param_update='stochastic_rounding',\n"
            "                       generator=torch.Generator().manual_seed(1))\n"
            "    for _ in range(3):\n"
            "        p.grad = torch.randn(p.shape, generator=gen).to(torch.bfloat16)\n"
            "        opt.step()\n"
            "    return p.detach().view(torch.int16).tolist()[:64]\n"
            "if sys.argv[1] == 'both':\n"
            "    run()\n"
            "torch.set_default_dtype(torch.float64)\n"
            "print(run())\n")
    env = {**os.environ, "TORCH_GD_CACHE_DIR": "0"}
    outs = [subprocess.run([sys.executable, "-c", code, which], env=env, capture_output=True, text=True, check=True).stdout
            for which in ("both", "float64")]
    assert outs[0] == outs[1]
