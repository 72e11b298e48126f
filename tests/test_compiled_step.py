"""``torch.compile(opt.step)``, torch's tutorial pattern, against torch's own compiled step.

Every optimizer, on the default and the fused path, with small (packed) params only and with a
param above the packing threshold, and a tensor lr. Dynamo traces our step in full: the update
is one graph (the fused path runs its kernel's body inline instead of calling our own compiled
kernels), no host step count is guarded on, so nothing compiles after step 2; and the graphs
hold no inputs that alias each other, so a second optimizer's graphs (dynamic after dynamo's
automatic-dynamic recompile) go through Inductor too.

The graphs run through dynamo's "eager" backend, which traces exactly what Inductor is given;
one test goes through Inductor after another optimizer's compiled step in the same process (the
setting of a compiled training step after a compiled fused step).
"""

from __future__ import annotations


import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

import torch_gd
from torch_gd import _engine, _private

# Each optimizer with the options that exercise its whole rule (momentum, weight decay, the step
# count through bias corrections or Adagrad's lr decay).
OPTIMIZERS = {
    "SGD": (torch_gd.SGD, torch.optim.SGD, dict(momentum=0.9, nesterov=True, weight_decay=1e-2)),
    "Adam": (torch_gd.Adam, torch.optim.Adam, dict(weight_decay=1e-2, amsgrad=True)),
    "AdamW": (torch_gd.AdamW, torch.optim.AdamW, dict()),
    "Adagrad": (torch_gd.Adagrad, torch.optim.Adagrad, dict(lr_decay=0.05, weight_decay=1e-2)),
    "RMSprop": (torch_gd.RMSprop, torch.optim.RMSprop, dict(momentum=0.9, centered=True, weight_decay=1e-2)),
}
LARGE = (200, 200)
assert LARGE[0] * LARGE[1] > _engine.PACK_MAX_NUMEL
SHAPES = {
    "small": [(16, 8), (16,), (2, 3, 3, 3), (4,)],
    "large": [(16, 8), LARGE, (16,), (4,)],
}
COMPILED, EAGER = 4, 2  # compiled steps, then eager steps on the state they left

# fp32 as torch.testing.assert_close compares it (the bound torch's own tests hold its
# for-loop, foreach, fused and compiled steps to). Both compiled steps compute every update in
# fp32 and differ only in rounding: torch takes the step's scalars from its fp32 step tensors,
# we compute them in fp64, and the two order a few products differently. Over 6 steps of
# lr=0.01 from randn params the largest difference measured is ~5e-7 absolute (a few ulps of
# the O(1) params), torch's compiled step is that far from torch's eager step too, and an
# error in a step's numbers (a step count off by one, a half-applied step) is >= 1e-4.
TOL = dict(rtol=1.3e-6, atol=1e-5)

_reference: dict = {}


def _snapshot(params, opt) -> list:
    return [(p.detach().clone(), {k: v.clone() for k, v in opt.state[p].items() if torch.is_tensor(v)})
            for p in params]


def _run(cls, kw, shapes, backend="eager", grads_for=None, order="C" * COMPILED + "E" * EAGER, lr=None, **extra):
    """Steps through ``torch.compile(opt.step)`` ("C" in ``order``) and plain steps ("E"),
    by default COMPILED then EAGER: the params and state after each, and how many frames dynamo
    had compiled after each compiled step."""
    torch._dynamo.reset()  # each optimizer starts as in a fresh process (recompile limits)
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
    opt = cls(params, lr=torch.tensor(0.01) if lr is None else lr, **kw, **extra)
    counter = CompileCounterWithBackend(backend)
    step = torch.compile(opt.step, backend=counter)
    history, frames = [], []
    for i, how in enumerate(order):
        for j, p in enumerate(params):
            given = grads_for is None or j in grads_for(i)
            p.grad = torch.randn(p.shape, generator=gen) if given else None
        (step if how == "C" else opt.step)()
        history.append(_snapshot(params, opt))
        if how == "C":
            frames.append((counter.frame_count, counter.op_count))
    return history, frames


def _torch_reference(name: str, size: str, grads_for=None):
    key = (name, size, grads_for)
    if key not in _reference:
        _, cls, kw = OPTIMIZERS[name]
        _reference[key] = _run(cls, kw, SHAPES[size], grads_for=grads_for)[0]
    return _reference[key]


def _assert_same(ours, theirs) -> None:
    for i, (a, b) in enumerate(zip(ours, theirs)):
        for (p, st), (q, sq) in zip(a, b):
            torch.testing.assert_close(p, q, **TOL, msg=lambda m: f"step {i + 1}, param: {m}")
            assert st.keys() == sq.keys(), (i, st.keys(), sq.keys())
            for k in sq:
                torch.testing.assert_close(st[k], sq[k], **TOL, msg=lambda m: f"step {i + 1}, {k}: {m}")


@pytest.mark.parametrize("size", ["large", "small"])
@pytest.mark.parametrize("fused", [False, True], ids=["default", "fused"])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_compiled_step_equals_torchs_compiled_step(name, fused, size):
    """Every compiled step updates every param as torch's compiled step does (with a large
    param on the fused path too: no step stops half-way in dynamo), steps 3 and 4 compile
    nothing, and eager steps continue from what the compiled steps left (the host's step
    counts, which traced steps do not keep, are read back). On a torch whose dynamo the suite
    does not cover the step runs eagerly under torch.compile: same values, nothing compiled."""
    ours_cls, _, kw = OPTIMIZERS[name]
    ours, frames = _run(ours_cls, kw, SHAPES[size], fused=fused)
    _assert_same(ours, _torch_reference(name, size))
    if not _private.step_traced():
        assert frames[-1][0] == 0, frames
        return
    assert frames[0][0] >= 1 and frames[0][1] > 0, frames  # traced, not skipped
    assert frames[1] == frames[-1], f"compiled after step 2: {frames}"


@pytest.mark.parametrize("fused", [False, True], ids=["default", "fused"])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_eager_steps_around_compiled_steps_count_every_step(name, fused):
    """With a float lr, eager steps record a steady step to replay; the compiled steps after
    them advance only the step tensors, and the eager steps after those must count them (a
    replay on the host counts it was recorded with is off by three steps in Adam's bias
    corrections)."""
    ours_cls, torch_cls, kw = OPTIMIZERS[name]
    order = "EEECCCEEE"
    ours, _ = _run(ours_cls, kw, SHAPES["large"], order=order, lr=0.01, fused=fused)
    _assert_same(ours, _run(torch_cls, kw, SHAPES["large"], order=order, lr=0.01)[0])


def _late_and_missing(i: int) -> tuple[int, ...]:
    """The large param's first grad comes at step 2, the bias has none at step 3."""
    return {0: (0, 2, 3), 2: (0, 1, 3)}.get(i, (0, 1, 2, 3))


def test_params_at_different_step_counts():
    """Compiled steps where params differ in step count (a late first grad, a skipped step):
    each param's numbers come from its own step, as in torch."""
    ours, _ = _run(torch_gd.Adam, OPTIMIZERS["Adam"][2], SHAPES["large"], grads_for=_late_and_missing, fused=True)
    _assert_same(ours, _torch_reference("Adam", "large", _late_and_missing))


@pytest.mark.parametrize("fused", [False, True], ids=["default", "fused"])
def test_inductor_after_another_optimizers_compiled_step(fused):
    """Inductor, in one process after another optimizer's compiled step (the setting of a
    compiled training step after a compiled fused step): the engine's code was compiled for
    other sizes, so dynamo's automatic dynamic shapes make this optimizer's graph dynamic. Its
    bucket gathers went through views made outside the trace, graph inputs aliasing the chunk
    buffers, and Inductor failed on them with a RecursionError."""
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(5)
    # Two optimizers whose buckets differ only in sizes: the second's graph is the first's with
    # the sizes (and chunk offsets) made dynamic.
    params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in [(16, 8), (16,), (4, 16), (4,)]]
    first = torch_gd.Adam(params, lr=0.01, fused=fused)
    first_step = torch.compile(first.step, backend="eager")
    for _ in range(2):  # the steady step's code compiled too
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        first_step()

    shapes = [(16, 8), (16,), (2, 16), (2,)]
    grads = [[torch.randn(s, generator=gen) for s in shapes] for _ in range(3)]
    results = []
    # Ours through Inductor, torch's through the backend that runs its graph as traced.
    for cls, backend in ((torch_gd.Adam, "inductor"), (torch.optim.Adam, "eager")):
        params = [torch.nn.Parameter(torch.randn(s, generator=torch.Generator().manual_seed(i))) for i, s in enumerate(shapes)]
        opt = cls(params, lr=torch.tensor(0.01), weight_decay=1e-2)
        step = torch.compile(opt.step, backend=backend)
        history = []
        for gs in grads:
            for p, g in zip(params, gs):
                p.grad = g.clone()
            step()
            history.append(_snapshot(params, opt))
        results.append(history)
    _assert_same(*results)
