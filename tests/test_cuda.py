"""The GPU suite: ``python -m pytest -m cuda`` on a machine with a CUDA GPU.

Each test runs torch_gd on real CUDA tensors against torch.optim (or against its own eager
step where torch has no counterpart) and skips with a reason where there is no GPU. Configs are
few and small on purpose: every fused kernel is a cold Triton compile, and the whole run,
benchmark included, is meant to take minutes on one GPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import torch_gd
from torch_gd import _engine, _private

from .helpers import assert_params_close, assert_state_close, benchmark_script, tol
from .registry import CASES

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"),
]

cases = pytest.mark.parametrize("case", CASES, ids=repr)
PATHS = {"per-tensor": dict(foreach=False), "default": {}, "fused": dict(fused=True)}
# Small and packed, non-contiguous, 0-dim, and one above the packing threshold (its own kernel call).
SHAPES = [(3, 4), (5,), (), (_engine.PACK_MAX_NUMEL + 5,)]


def _params(device="cuda", dtype=torch.float32, seed=0) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen).to(device, dtype)) for s in SHAPES]
    params.append(torch.nn.Parameter(torch.randn(6, 5, generator=gen).to(device, dtype).t()))
    return params


def _copies(params) -> list[torch.nn.Parameter]:
    copies = [torch.nn.Parameter(torch.empty_like(p)) for p in params]
    for c, p in zip(copies, params):
        c.data.copy_(p.detach())  # empty_like keeps the strides of the transposed param
    return copies


def _grads(params, gen: torch.Generator) -> list[torch.Tensor]:
    return [torch.randn(p.shape, generator=gen).to(p.device, p.dtype) for p in params]


def _against_torch(case, path: dict, dtype=torch.float32, steps: int = 3, ours=None) -> torch_gd.Adam:
    """Run ours on ``path`` (over ``ours``, by default ``_params``) and torch's for-loop side by
    side; compare params and every state after each step."""
    ours = _params(dtype=dtype) if ours is None else ours
    theirs = _copies(ours)
    opt = case.ours(ours, **path, **case.typical)
    ref = case.theirs(theirs, foreach=False, **case.typical)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for p, q, g in zip(ours, theirs, _grads(ours, gen)):
            p.grad, q.grad = g, g.clone()
        opt.step(), ref.step()
        assert_params_close(ours, theirs, **tol(dtype))
        assert_state_close(opt, ref, **tol(dtype))
    return opt


@cases
@pytest.mark.parametrize("path", PATHS, ids=str)
def test_every_path_matches_torch_on_cuda(case, path):
    """Params and all state after each of three steps, at torch's fp32 tolerances."""
    opt = _against_torch(case, PATHS[path])
    assert all(v.device.type == "cuda" for s in opt.state.values() for k, v in s.items() if k != "step")


@cases
def test_runs_of_large_params_match_torch_on_cuda(case):
    """Steady default steps update large params of one dtype in one run through torch's CUDA
    multi-tensor kernels: the same values as torch's for-loop at torch's fp32 tolerances."""
    gen = torch.Generator().manual_seed(0)
    n = _engine.PACK_MAX_NUMEL + 3
    ours = [torch.nn.Parameter(torch.randn(s, generator=gen).cuda()) for s in [(n,), (3, n // 3 + 1), (n + 7,)]]
    opt = _against_torch(case, {}, steps=4, ours=ours)
    assert [id(p) for p in ours] in opt.describe()["groups"][0]["runs"]


@cases
@pytest.mark.parametrize("private", [True, False], ids=["private-on", "private-off"])
def test_fused_with_the_private_fast_path_on_and_off(case, private):
    """The same comparison with the fast calls into Inductor's generated code on, and with the
    public torch.compile path every untested torch takes (TORCH_GD_PRIVATE_APIS=0)."""
    with _private.switched(private):
        opt = _against_torch(case, PATHS["fused"], steps=4)
        kernels = opt.describe()["kernels"]
    assert kernels and all(k["device"].type == "cuda" for k in kernels)
    assert any(bool(k["direct"]) for k in kernels) == private


@cases
@pytest.mark.parametrize("path", PATHS, ids=str)
def test_bf16_params(case, path):
    """bf16 params and state against torch's for-loop at bf16 tolerances (tests/helpers.py)."""
    _against_torch(case, PATHS[path], dtype=torch.bfloat16)


@cases
@pytest.mark.parametrize("path", ["default", "fused"])
def test_capturable_step_replayed_in_a_cuda_graph(case, path):
    """A capturable step captured once in a CUDAGraph and replayed on fresh grads gives what
    the same optimizer gives stepping eagerly (step counts included: they live on the device)."""
    kw = {**case.typical, **PATHS[path], "capturable": True}
    graphed, eager = _params(), _params()
    for p in graphed:
        p.grad = torch.zeros_like(p)  # static grads the graph reads
    opt, ref = case.ours(graphed, **kw), case.ours(eager, **kw)
    gen = torch.Generator().manual_seed(1)

    def feed():
        grads = _grads(graphed, gen)
        for p, q, g in zip(graphed, eager, grads):
            p.grad.copy_(g)
            q.grad = g.clone()

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up (and compile) off the capturing stream, as torch's docs do
        for _ in range(3):
            feed()
            opt.step(), ref.step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        opt.step()
    for _ in range(4):
        feed()
        graph.replay()
        ref.step()
        torch.cuda.synchronize()
        assert_params_close(graphed, eager, **tol(torch.float32))
        assert_state_close(opt, ref, **tol(torch.float32))


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW"])
def test_gradscaler_with_fp16_autocast(name):
    """A model under fp16 autocast with GradScaler: ours fused (which unscales and skips inside
    the kernel) against torch fused, including a step whose grads hold an inf and an explicit
    unscale_ before the step."""
    case = next(c for c in CASES if c.name == name)

    def model() -> torch.nn.Module:
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8)).cuda()

    a, b = model(), model()
    opts = case.ours(a.parameters(), fused=True, **case.typical), case.theirs(b.parameters(), fused=True, **case.typical)
    scalers = torch.amp.GradScaler("cuda", init_scale=2.0**10), torch.amp.GradScaler("cuda", init_scale=2.0**10)
    gen = torch.Generator().manual_seed(2)
    for step in range(5):
        x = torch.randn(16, 32, generator=gen).cuda()
        for m, opt, scaler in zip((a, b), opts, scalers):
            opt.zero_grad()
            with torch.autocast("cuda", dtype=torch.float16):
                loss = m(x).float().pow(2).mean()
            scaler.scale(loss * (float("inf") if step == 1 else 1.0)).backward()
            if step == 3:
                scaler.unscale_(opt)
            before = [p.detach().clone() for p in m.parameters()]
            scaler.step(opt)
            scaler.update()
            if step == 1:  # skipped: nothing moved
                assert all(torch.equal(p.detach(), q) for p, q in zip(m.parameters(), before))
        assert scalers[0].get_scale() == scalers[1].get_scale()
        assert_params_close(list(a.parameters()), list(b.parameters()), **tol(torch.float32))
        assert_state_close(opts[0], opts[1], **tol(torch.float32))


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
@cases
@pytest.mark.parametrize("path", PATHS, ids=str)
def test_params_on_two_devices(case, path):
    """Half the params on cuda:0, half on cuda:1: buckets and kernels per device."""
    ours = [p if i % 2 else torch.nn.Parameter(p.detach().to("cuda:1")) for i, p in enumerate(_params())]
    opt = _against_torch(case, PATHS[path], ours=ours)
    for p in ours:
        assert all(v.device == p.device for k, v in opt.state[p].items() if k != "step")


def test_quick_benchmark_on_cuda(tmp_path):
    """``python -m torch_gd.benchmark --quick`` on CUDA writes its JSON with CUDA rows."""
    out = tmp_path / "results"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))}
    subprocess.run([sys.executable, "-m", "torch_gd.benchmark", "--quick", "--device", "cuda", "--out", str(out)],
                   check=True, env=env, timeout=300)
    result = json.loads((out / "cuda_fp32.json").read_text())
    assert result["meta"]["device"] == "cuda" and result["rows"]
    assert all(row["device"] == "cuda" for row in result["rows"])
    assert {row["impl"] for row in result["rows"]} >= {"torch_gd fused"}


def test_the_bucket_studies_run_on_cuda(tmp_path):
    """``benchmarks/segments.py``, ``benchmarks/fused_packing.py`` and ``benchmarks/eager_runs.py``
    with ``--device cuda``: the measurements that decide, on a GPU, buckets across param groups
    and the packing thresholds. Every way of handing a bucket its groups' numbers updates what the per-group
    calls update (compiled fp32 kernels of the same maths may contract an operation differently:
    2 ulps)."""
    segments = benchmark_script("segments")
    out = tmp_path / "segments.json"
    rows = segments.main(["--device", "cuda", "--sets", "lenet", "--rounds", "1", "--steps-per-round", "1",
                          "--json", str(out)])
    assert json.loads(out.read_text())["device"] == "cuda"
    for r in rows:
        assert r["agreement_ulps"]["per group"] == 0
        assert all(r["agreement_ulps"][name] <= 2 for name in ("table int32", "table int16", "per element")), r
    packing = benchmark_script("fused_packing")
    record = packing.main(["--device", "cuda", "--sets", "40x100", "--optimizers", "SGD", "--rounds", "1",
                           "--steps-per-round", "1", "--json", str(tmp_path / "packing.json")])
    assert record["device"] == "cuda"
    (row,) = record["rows"]
    assert row["buckets"]["current"] == [[40, 4000]]
    assert row["buckets"]["never"] == ([] if record["private_apis"] else [[40, 4000]])
    runs = benchmark_script("eager_runs")
    record = runs.main(["--device", "cuda", "--sets", "3x40000", "--optimizers", "SGD", "AdamW", "--rounds", "1",
                        "--steps-per-round", "1", "--json", str(tmp_path / "runs.json")])
    assert record["device"] == "cuda"
    for row in record["rows"]:
        assert row["plans"]["as built"] == {"buckets": [], "runs": [3]}
