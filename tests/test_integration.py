"""torch_gd where people already train: a whole training step under torch.compile, and AMP
(autocast + GradScaler) driving the fused path."""

from __future__ import annotations

import copy

import pytest
import torch

import torch_gd


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))


def _batches(n: int):
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(4, 8, generator=gen), torch.randint(0, 2, (4,), generator=gen)) for _ in range(n)]


@pytest.mark.parametrize("cls,kw", [(torch_gd.Adam, dict(lr=1e-2, weight_decay=1e-2)),
                                    (torch_gd.SGD, dict(lr=0.1, momentum=0.9))])
def test_compiled_training_step_equals_eager(cls, kw):
    """torch.compile over zero_grad/forward/backward/step: dynamo breaks the graph around our
    step and the results equal the eager loop's (fp32 tolerance: the compiled forward and
    backward round differently)."""
    m1, m2 = _model(), _model()
    o1, o2 = cls(m1.parameters(), **kw), cls(m2.parameters(), **kw)

    def train_step(model, opt, x, y):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    compiled = torch.compile(train_step)
    for x, y in _batches(5):
        train_step(m1, o1, x, y)
        compiled(m2, o2, x, y)
    for p, q in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(p, q, rtol=1.3e-6, atol=1e-5)


def test_autocast_and_gradscaler_drive_the_fused_path():
    """bf16 autocast on the CPU with GradScaler: the fused step unscales inside the kernel and a
    step with an inf grad leaves params and state as they were; otherwise it equals the eager
    optimizer fed the unscaled grads (fp32 tolerance)."""
    m1 = _model()
    m2 = copy.deepcopy(m1)
    # SGD, not Adam: Adam's update barely depends on the grad's scale, so it could not show a
    # missing unscale.
    fused = torch_gd.SGD(m1.parameters(), lr=0.05, momentum=0.9, fused=True)
    eager = torch_gd.SGD(m2.parameters(), lr=0.05, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=128.0)
    for step, (x, y) in enumerate(_batches(4)):
        fused.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(m1(x), y)
        (scaler.scale(loss) * (float("inf") if step == 2 else 1.0)).backward()
        scale = scaler.get_scale()
        unscaled = [p.grad / scale for p in m1.parameters()]
        before = [p.detach().clone() for p in m1.parameters()]
        state_before = copy.deepcopy(fused.state_dict()["state"])
        scaler.step(fused)
        scaler.update()
        if step == 2:
            assert all(torch.equal(p.detach(), b) for p, b in zip(m1.parameters(), before))
            after = fused.state_dict()["state"]
            assert all(torch.equal(after[i][k], state_before[i][k]) for i in after for k in after[i])
            continue
        for q, g in zip(m2.parameters(), unscaled):
            q.grad = g
        eager.step()
        for p, q in zip(m1.parameters(), m2.parameters()):
            torch.testing.assert_close(p, q, rtol=1.3e-6, atol=1e-5)
