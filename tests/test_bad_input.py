"""Constructor fuzzing: every outcome is a working optimizer, or a ValueError/TypeError that
names the argument (RuntimeError only for torch's own flag-combination errors) — never a crash
deep inside a step, never a half-applied update."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
from hypothesis import given, strategies as st

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
