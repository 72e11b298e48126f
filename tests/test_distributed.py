"""torch.distributed with torch_gd: 2 processes, gloo on loopback. DistributedDataParallel and
ZeroRedundancyOptimizer(optimizer_class=torch_gd.X) train to the same parameters as one process
using torch.optim on the full batch."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import torch_gd

STEPS = 5
CONFIGS = {"Adam": (torch_gd.Adam, torch.optim.Adam, dict(lr=1e-2, weight_decay=1e-2)),
           "SGD": (torch_gd.SGD, torch.optim.SGD, dict(lr=0.1, momentum=0.9))}


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))


def _data():
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 8, generator=gen), torch.randint(0, 2, (8,), generator=gen)) for _ in range(STEPS)]


def _worker(rank: int, world: int, port: int, name: str, mode: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        ours, _, kw = CONFIGS[name]
        model = torch.nn.parallel.DistributedDataParallel(_model())
        if mode == "zero":
            from torch.distributed.optim import ZeroRedundancyOptimizer

            opt = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=ours, **kw)
        else:
            opt = ours(model.parameters(), **kw)
        for x, y in _data():
            half = slice(rank * 4, rank * 4 + 4)  # each rank its half; DDP averages the grads
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[half]), y[half]).backward()
            opt.step()
        if rank == 0:
            torch.save([p.detach() for p in model.module.parameters()], out)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("mode", ["ddp", "zero"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_two_processes_match_one_full_batch_process(name, mode, tmp_path):
    out = str(tmp_path / "params.pt")
    mp.spawn(_worker, args=(2, _free_port(), name, mode, out), nprocs=2, join=True)
    _, theirs, kw = CONFIGS[name]
    model = _model()
    opt = theirs(model.parameters(), **kw)
    for x, y in _data():
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    for p, q in zip(torch.load(out, weights_only=True), model.parameters()):
        torch.testing.assert_close(p, q.detach(), rtol=1e-5, atol=1e-6)
