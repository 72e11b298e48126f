"""torch.distributed with torch_gd: 2 processes, gloo on loopback. DistributedDataParallel,
ZeroRedundancyOptimizer(optimizer_class=torch_gd.X) and FSDP2's fully_shard (DTensor params, the
default and the fused path) train to the same parameters as one process using torch.optim on
the full batch; with ``opt.clip_grad_norm`` too, against ``torch.nn.utils.clip_grad_norm_``
there (under FSDP2 the norm is the global one, across ranks)."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import torch_gd

STEPS = 5
# Small enough that every step clips (the grads' norm is ~0.5).
MAX_NORM = 0.05
CONFIGS = {"Adam": (torch_gd.Adam, torch.optim.Adam, dict(lr=1e-2, weight_decay=1e-2)),
           "SGD": (torch_gd.SGD, torch.optim.SGD, dict(lr=0.1, momentum=0.9))}


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))


def _data():
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 8, generator=gen), torch.randint(0, 2, (8,), generator=gen)) for _ in range(STEPS)]


def _worker(rank: int, world: int, port: int, name: str, mode: str, out: str, clip: bool = False) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        ours, _, kw = CONFIGS[name]
        if mode.startswith("fsdp2"):
            from torch.distributed.fsdp import fully_shard

            model = _model()
            for layer in model:
                if isinstance(layer, torch.nn.Linear):
                    fully_shard(layer)
            fully_shard(model)
            opt = ours(model.parameters(), fused=mode == "fsdp2-fused", **kw)
        else:
            model = torch.nn.parallel.DistributedDataParallel(_model())
        if mode == "zero":
            from torch.distributed.optim import ZeroRedundancyOptimizer

            opt = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=ours, **kw)
        elif mode == "ddp":
            opt = ours(model.parameters(), **kw)
        for x, y in _data():
            half = slice(rank * 4, rank * 4 + 4)  # each rank its half; DDP averages the grads
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[half]), y[half]).backward()
            if clip:
                opt.clip_grad_norm(MAX_NORM)
            opt.step()
        if mode.startswith("fsdp2"):
            from torch.distributed.tensor import DTensor

            # State stays sharded like its param, as distributed checkpointing expects.
            assert all(isinstance(v, DTensor) for s in opt.state.values() for k, v in s.items() if k != "step")
        module = model.module if mode in ("ddp", "zero") else model
        full = [p.full_tensor() if hasattr(p, "full_tensor") else p for p in module.parameters()]
        if rank == 0:
            torch.save([p.detach() for p in full], out)
        dist.barrier()  # both ranks done with every collective before teardown
    finally:
        dist.destroy_process_group()
    # Skip interpreter finalization: gloo's worker threads may still hold tensors then, and
    # releasing them at exit aborts the process ("terminate called without an active
    # exception", pytorch#179291), which happened here about once per full test run.
    os._exit(0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("mode", ["ddp", "zero", "fsdp2", "fsdp2-fused"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_two_processes_match_one_full_batch_process(name, mode, tmp_path):
    _check_against_one_process(name, mode, tmp_path, clip=False)


@pytest.mark.parametrize("mode", ["ddp", "fsdp2", "fsdp2-fused"])
def test_clip_grad_norm_over_ranks(mode, tmp_path):
    _check_against_one_process("Adam", mode, tmp_path, clip=True)


def _check_against_one_process(name: str, mode: str, tmp_path, clip: bool) -> None:
    out = str(tmp_path / "params.pt")
    mp.spawn(_worker, args=(2, _free_port(), name, mode, out, clip), nprocs=2, join=True)
    _, theirs, kw = CONFIGS[name]
    model = _model()
    opt = theirs(model.parameters(), **kw)
    for x, y in _data():
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        if clip:
            assert torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_NORM) > 2 * MAX_NORM
        opt.step()
    for p, q in zip(torch.load(out, weights_only=True), model.parameters()):
        torch.testing.assert_close(p, q.detach(), rtol=1e-5, atol=1e-6)
