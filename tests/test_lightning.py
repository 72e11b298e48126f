"""A PyTorch Lightning module whose configure_optimizers returns torch_gd optimizers and
schedulers trains, checkpoints and resumes exactly (Lightning is the `integration` extra)."""

from __future__ import annotations

import pytest
import torch

import torch_gd
from torch_gd.lr_scheduler import WarmupCosineLR

L = pytest.importorskip("lightning")

STEPS = 12


class Module(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        opt = torch_gd.AdamW(self.parameters(), lr=1e-2, weight_decay=1e-2)
        sched = WarmupCosineLR(opt, warmup_steps=3, total_steps=STEPS)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _loader():
    # Two epochs of STEPS // 2 batches: the checkpoint falls on the epoch boundary, where a
    # plain DataLoader resumes exactly.
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(2 * STEPS, 8, generator=gen), torch.randint(0, 2, (2 * STEPS,), generator=gen)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4, shuffle=False)


def _trainer(root, epochs: int) -> "L.Trainer":
    return L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, enable_checkpointing=False, default_root_dir=root)


def test_lightning_trains_checkpoints_and_resumes(tmp_path):
    straight = Module()
    _trainer(tmp_path, 2).fit(straight, _loader())

    first = Module()
    trainer = _trainer(tmp_path, 1)
    trainer.fit(first, _loader())
    ckpt = tmp_path / "half.ckpt"
    trainer.save_checkpoint(ckpt)
    resumed = Module()
    trainer = _trainer(tmp_path, 2)
    trainer.fit(resumed, _loader(), ckpt_path=ckpt)

    assert isinstance(trainer.optimizers[0], torch_gd.AdamW)
    for p, q in zip(resumed.parameters(), straight.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == STEPS
