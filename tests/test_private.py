"""The fence around private torch APIs: on for the torch releases the suite covers, off
elsewhere or when asked, and a private API that fails gives way to the public path with the
same results."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
import torch

import torch_gd
from torch_gd import _fused, _private

from .helpers import assert_params_close, assert_state_close, same_grads, tol, twins


def test_the_setting_decides_as_documented(caplog):
    tested = _private.TESTED[0] + ".1"
    with caplog.at_level(logging.WARNING, logger="torch_gd"):
        assert _private.decide(None, tested) is True
        assert not caplog.records
        assert _private.decide(None, "9.99.0+cpu") is False
        assert "not among the releases" in caplog.text and _private.ENV in caplog.text
    assert _private.decide("0", tested) is False
    with pytest.warns(UserWarning, match="tests do not cover"):
        assert _private.decide("1", "9.99.0") is True
    with pytest.warns(UserWarning, match="neither 0 nor 1"):
        assert _private.decide("yes", tested) is True


def test_the_environment_variable_is_read_at_import():
    code = "import torch_gd, torch_gd._private as p; print(p.enabled())"
    for value, expected in (("0", "False"), ("1", "True")):
        env = {**os.environ, _private.ENV: value}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == expected


@pytest.mark.parametrize("on", [True, False], ids=["private", "public"])
def test_both_settings_give_the_eager_results(on):
    gen = torch.Generator().manual_seed(0)
    shapes = [(3, 4), (5,), (7, 2), (40000,)] + [(6,)] * 40
    params, refs = twins(shapes, gen)
    with _private.switched(on):
        opt = torch_gd.AdamW(params, lr=1e-2, fused=True)
        ref = torch_gd.AdamW(refs, lr=1e-2)
        for step in range(4):
            same_grads(params, refs, gen)
            opt.step(), ref.step()
            assert_params_close(params, refs, **tol(torch.float32))
            assert_state_close(opt, ref, **tol(torch.float32))
        described = opt.describe()
    assert described["private_apis"] is on
    assert all(bool(k["direct"]) is on for k in described["kernels"])
    copies = {b["copies"] for g in described["groups"].values() for b in g["buckets"]}
    assert copies == ({"addresses"} if on else {"foreach"})


def test_a_private_api_that_fails_gives_way_to_the_public_path(monkeypatch, caplog):
    """Inductor's hook raising (as a changed internal would) while a kernel compiles: the kernel
    is compiled again through the public torch.compile path, the step is taken, and the log says
    so once."""
    def changed(gm, example_inputs):
        raise _private.PrivateAPIError("compile_fx(inner_compile=...): unexpected keyword")

    # A kernel not compiled yet in this process nor kept on disk, so that the failing hook is reached.
    monkeypatch.setenv("TORCH_GD_CACHE_DIR", "0")
    monkeypatch.setattr(_fused, "_KERNELS", {})
    monkeypatch.setattr(_fused, "_WARM", set())
    monkeypatch.setattr(_private, "inductor_with_call", changed)
    monkeypatch.setattr(_private, "_reported", set())
    gen = torch.Generator().manual_seed(1)
    params, refs = twins([(3, 4), (5,), (40000,)], gen)
    with _private.switched(True), caplog.at_level(logging.WARNING, logger="torch_gd"):
        opt, ref = torch_gd.SGD(params, lr=0.1, momentum=0.9, fused=True), torch_gd.SGD(refs, lr=0.1, momentum=0.9)
        for _ in range(3):
            same_grads(params, refs, gen)
            opt.step(), ref.step()
            assert_params_close(params, refs, **tol(torch.float32))
    assert caplog.text.count("using the public path instead") == 1
    assert all(not k["direct"] for k in opt.describe()["kernels"])


def test_a_first_fused_step_prints_nothing():
    """The first kernel build of a process imports torch.utils.cpp_extension, which on a CUDA
    build of torch without a GPU logs a CUDA_HOME notice (where nvcc or /usr/local/cuda exists);
    a fused step, like torch's, prints nothing. Both the kernel compile and the C++ copy loop."""
    code = ("import torch, torch_gd\n"
            "ps = [torch.nn.Parameter(torch.randn(3, 4)) for _ in range(20)]\n"
            "opt = torch_gd.AdamW(ps, fused=True)\n"
            "for p in ps: p.grad = torch.randn_like(p)\n"
            "opt.step(); opt.step()\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    # On a torch the suite does not cover, the one line saying the fast paths are off.
    notices = [line for line in out.stderr.splitlines() if not line.startswith("torch_gd: torch ")]
    assert out.stdout == "" and notices == [], out.stderr


def test_the_quiet_builder_drops_only_the_cuda_home_notice(caplog):
    logger = logging.getLogger("torch.utils.cpp_extension")
    with caplog.at_level(logging.WARNING, logger=logger.name), _private.quiet_cpp_builder():
        logger.warning("No CUDA runtime is found, using CUDA_HOME='%s'", "/usr/local")
        logger.warning("another notice")
    assert [r.getMessage() for r in caplog.records] == ["another notice"]
    assert not logger.filters


def test_prepared_calls_go_straight_to_the_cpp_function_with_the_public_paths_bits():
    """Steady fused steps call the compiled C++ function itself, grads of any shape as they are
    (conv, linear and norm params here); the params and state come out bit for bit as through
    the public torch.compile path."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Flatten(), torch.nn.Linear(8 * 6 * 6, 10),
                                torch.nn.LayerNorm(10))
    gen = torch.Generator().manual_seed(2)
    params, refs = twins([tuple(p.shape) for p in model.parameters()], gen)
    opt = torch_gd.SGD(params, lr=0.1, momentum=0.9, fused=True)
    with _private.switched(False):
        ref = torch_gd.SGD(refs, lr=0.1, momentum=0.9, fused=True)
    for _ in range(5):
        same_grads(params, refs, gen)
        opt.step()
        with _private.switched(False):
            ref.step()
        assert_params_close(params, refs, rtol=0, atol=0)
        assert_state_close(opt, ref, rtol=0, atol=0)
    described = opt.describe()
    assert described["steps"]["replayed"] >= 3
    assert [k["bare"] >= 1 for k in described["kernels"]] == [True]  # signatures of the process


def test_a_cpp_function_taking_its_inputs_in_another_order_is_not_called(monkeypatch):
    """What ``bare_kernel`` reads from the generated source is checked against the generated
    ``call`` before use: a wrong reading (here, two inputs swapped) keeps the ``call``."""
    found = _private.bare_kernel

    def misread(call):
        function, order = found(call)
        return function, (order[1], order[0], *order[2:])

    monkeypatch.setattr(_private, "bare_kernel", misread)
    monkeypatch.setattr(_fused, "_KERNELS", {})
    gen = torch.Generator().manual_seed(3)
    params, refs = twins([(50, 40), (40,)], gen)
    with _private.switched(True):
        opt = torch_gd.SGD(params, lr=0.1, momentum=0.9, fused=True)
        ref = torch_gd.SGD(refs, lr=0.1, momentum=0.9)
        for _ in range(4):
            same_grads(params, refs, gen)
            opt.step(), ref.step()
            assert_params_close(params, refs, **tol(torch.float32))
        assert [k["bare"] for k in opt.describe()["kernels"]] == [0]


@pytest.mark.parametrize("backend_is_openmp,private,switches", [(True, True, True), (False, True, False),
                                                                (True, False, False)])
def test_small_kernels_take_one_thread_only_where_openmp_allows_it(monkeypatch, backend_is_openmp, private, switches):
    """``one_thread`` switches torch to one thread only on the OpenMP backend Inductor's C++
    uses (other backends refuse a change once parallel work has started) and with the fast
    paths on; ``restore_threads`` gives the user's count back."""
    monkeypatch.setattr(_private, "_openmp_backend", lambda: backend_is_openmp)
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with _private.switched(private):
            taken = _private.one_thread()
            assert torch.get_num_threads() == (1 if switches else 2)
            _private.restore_threads(taken)
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(old)
