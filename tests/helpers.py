"""Small utilities the optimizer tests share."""

from __future__ import annotations

import contextlib
import copy
import importlib
import math
import sys
from pathlib import Path
from types import ModuleType
from typing import Iterator

import pytest
import torch

import torch_gd
from torch_gd import _engine

# Tests that fake a "cuda" device (FakeTensorMode) need a torch built with CUDA, GPU or not.
needs_cuda_build = pytest.mark.skipif(
    not torch.backends.cuda.is_built(), reason="faking a 'cuda' device needs a torch built with CUDA; this one is CPU-only")


@contextlib.contextmanager
def pack_max_numel(n: int) -> Iterator[None]:
    """Move the packed/per-tensor boundary so both paths and their mix get exercised: every
    rule packs its params of at most ``n`` elements, two or more of a kind (SGD as built packs
    smaller params, and only many of them)."""
    specs = [cls._spec for cls in (torch_gd.SGD, torch_gd.Adam, torch_gd.AdamW, torch_gd.Adagrad, torch_gd.RMSprop)]
    old = _engine.PACK_MAX_NUMEL, [(s.pack_max_numel, s.pack_min_params) for s in specs]
    _engine.PACK_MAX_NUMEL = n
    for s in specs:
        s.pack_max_numel, s.pack_min_params = None, 2
    try:
        yield
    finally:
        _engine.PACK_MAX_NUMEL = old[0]
        for s, (most, least) in zip(specs, old[1]):
            s.pack_max_numel, s.pack_min_params = most, least


# Per-dtype tolerances for comparing against torch. fp64/fp32 are torch's assert_close defaults
# (the fp32 bound). In fp16/bf16 an op rounds differently by one ulp *of its operands*
# depending on whether a vectorised loop (FMA) or a scalar loop handles an element — torch's own
# for-loop disagrees with itself that much across memory layouts. When the result cancels
# (p − η·d with p ≈ η·d) that ulp is large against the result, so the absolute tolerance is one
# to two ulps at the operands' scale (randn values, |x| < 4): bf16 ulp(2..4) = 2^-6 ≈ 0.0156,
# fp16 ulp(2..4) = 2^-9 ≈ 0.002. Relative: bf16's 2-ulp default 1.6e-2; fp16 torch's
# reduced-precision optimizer tolerance 5e-3 (common_optimizers.py).
TOLERANCES = {
    torch.float64: dict(rtol=1e-7, atol=1e-7),
    torch.float32: dict(rtol=1.3e-6, atol=1e-5),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2),
    torch.float16: dict(rtol=5e-3, atol=5e-3),
    torch.complex64: dict(rtol=1.3e-6, atol=1e-5),
    torch.complex128: dict(rtol=1e-7, atol=1e-7),
}


def twins(shapes, gen: torch.Generator) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
    """Params of these shapes drawn from ``gen``, and an independent copy of them."""
    params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
    return params, [torch.nn.Parameter(p.detach().clone()) for p in params]


def same_grads(params, copies, gen: torch.Generator) -> None:
    """Fresh grads drawn from ``gen`` for ``params``, and the same values for ``copies``."""
    for p, q in zip(params, copies):
        p.grad = torch.randn(p.shape, generator=gen)
        q.grad = p.grad.clone()


def tol(dtype: torch.dtype) -> dict:
    # NaN where torch has NaN is agreement (fp16 Adam: eps=1e-8 underflows, 0/0 on zero grads).
    return {**TOLERANCES[dtype], "equal_nan": True}


def clone_kwargs(kwargs: dict) -> dict:
    """Fresh copies of tensor hyperparameters, so two optimizers never share one."""
    def clone(v):
        if isinstance(v, torch.Tensor):
            return v.clone()
        if isinstance(v, tuple):
            return tuple(clone(x) for x in v)
        return copy.copy(v)
    return {k: clone(v) for k, v in kwargs.items()}


def assert_state_close(ours: torch.optim.Optimizer, theirs: torch.optim.Optimizer, **tol) -> None:
    """Same state entries, same keys in the same order, same dtypes, shapes and values."""
    a, b = ours.state_dict()["state"], theirs.state_dict()["state"]
    assert sorted(a) == sorted(b), (sorted(a), sorted(b))
    for i in a:
        assert list(a[i]) == list(b[i]), (i, list(a[i]), list(b[i]))
        for k in a[i]:
            x, y = a[i][k], b[i][k]
            if isinstance(y, torch.Tensor):
                assert x.dtype == y.dtype and x.shape == y.shape and x.device == y.device, (k, x, y)
                y = y.to_dense() if y.is_sparse else y
                torch.testing.assert_close(x, y, **at_operand_scale(tol, y))
            else:
                assert x == y, (k, x, y)


def assert_params_close(ps, qs, **tol) -> None:
    for p, q in zip(ps, qs):
        torch.testing.assert_close(p.detach(), q.detach(), **at_operand_scale(tol, q.detach()))


def at_operand_scale(tol: dict, expected: torch.Tensor) -> dict:
    """For fp16/bf16, widen ``atol`` to two ulps at the largest magnitude in ``expected``.

    TOLERANCES assumes operands below 4; state can be larger (RMSprop's momentum buffer
    approaches 1/√(1−α) = 10 for α = 0.99, where a bf16 ulp is 0.0625), and an update that
    cancels against it (0.9·10 − 9.2) inherits that ulp as absolute error."""
    if expected.dtype not in (torch.float16, torch.bfloat16) or expected.numel() == 0:
        return tol
    finite = expected[torch.isfinite(expected)].abs()
    if finite.numel() == 0 or float(finite.max()) == 0:
        return tol
    ulp = torch.finfo(expected.dtype).eps * 2.0 ** math.floor(math.log2(float(finite.max())))
    return {**tol, "atol": max(tol.get("atol", 0.0), 2 * ulp)}


def benchmark_script(name: str) -> ModuleType:
    """``benchmarks/NAME.py`` as a module."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.pop(0)
