"""The Hugging Face Trainer runs torch_gd optimizers and schedulers, saves them in its checkpoints
(torch.save of state_dict, read back with ``torch.load(weights_only=True)``) and resumes from
them exactly (transformers is the `integration`
extra)."""

from __future__ import annotations

import pytest
import torch

import torch_gd
from torch_gd.lr_scheduler import WarmupCosineLR

transformers = pytest.importorskip("transformers")

HALF = 4  # optimizer steps per epoch; the checkpoint falls on the epoch boundary


class Tokens(torch.utils.data.Dataset):
    def __init__(self) -> None:
        gen = torch.Generator().manual_seed(1)
        self.ids = torch.randint(0, 32, (HALF * 4, 8), generator=gen)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=32, n_positions=8, bos_token_id=0, eos_token_id=0, n_embd=16, n_layer=1, n_head=2,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return transformers.GPT2LMHeadModel(config)


def _trainer(out, model, fused: bool) -> "transformers.Trainer":
    args = transformers.TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=4, max_steps=2 * HALF, save_strategy="steps",
        save_steps=HALF, use_cpu=True, report_to="none", disable_tqdm=True, seed=0, logging_strategy="no")
    opt = torch_gd.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-2, fused=fused)
    sched = WarmupCosineLR(opt, warmup_steps=2, total_steps=2 * HALF)
    return transformers.Trainer(model=model, args=args, train_dataset=Tokens(), optimizers=(opt, sched))


@pytest.mark.parametrize("fused", [False, True], ids=["default", "fused"])
def test_trainer_trains_checkpoints_and_resumes(tmp_path, fused):
    straight = _model()
    before = [p.detach().clone() for p in straight.parameters()]
    trainer = _trainer(tmp_path, straight, fused)
    trainer.train()
    assert isinstance(trainer.optimizer.optimizer, torch_gd.AdamW)  # inside accelerate's wrapper
    assert any(not torch.equal(p, b) for p, b in zip(straight.parameters(), before))

    resumed = _model()
    again = _trainer(tmp_path / "again", resumed, fused)
    again.train(resume_from_checkpoint=str(tmp_path / f"checkpoint-{HALF}"))
    for p, q in zip(resumed.parameters(), straight.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    assert again.lr_scheduler.last_epoch == 2 * HALF
