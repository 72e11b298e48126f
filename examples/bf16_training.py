"""Training a bf16 model: torch_gd's precision policies against plain bf16 and an fp32 model.

A small transformer learns a synthetic language (each token is followed by one of two tokens
picked for it at random, so the best loss is ln 2 ≈ 0.69) with AdamW at a small learning rate.
With bf16 weights most of AdamW's updates (~lr) are below half a bf16 ulp of the weight they
change (LayerNorm's weights of 1 have an ulp of 2⁻⁷): rounded to nearest they are lost, and plain
bf16 learns slower. ``param_update="fp32_master"`` (+4 B/param), ``"kahan"`` (+2 B/param) and
``"stochastic_rounding"`` (+0) keep them. Prints each run's final loss and saves
examples/runs/bf16_training.png when matplotlib is installed.

    python examples/bf16_training.py            # 300 steps per run, ~2 minutes on 2 cores
    python examples/bf16_training.py --smoke    # 5 steps, seconds
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

import torch_gd
from _common import arguments, can_plot, save

VOCAB, LENGTH, WIDTH = 32, 32, 64
RUNS = {  # label: (param dtype, policy)
    "fp32 model": (torch.float32, {}),
    "bf16, rounded to nearest (torch.optim's way)": (torch.bfloat16, {}),
    'bf16 + param_update="fp32_master"': (torch.bfloat16, dict(param_update="fp32_master")),
    'bf16 + "kahan"': (torch.bfloat16, dict(param_update="kahan")),
    'bf16 + "kahan", bf16 state': (torch.bfloat16, dict(param_update="kahan", state_dtype=torch.bfloat16)),
    'bf16 + "stochastic_rounding"': (torch.bfloat16, dict(param_update="stochastic_rounding")),
}


class TinyLM(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, WIDTH)
        self.position = torch.nn.Parameter(0.02 * torch.randn(LENGTH, WIDTH))
        layer = torch.nn.TransformerEncoderLayer(WIDTH, 4, 4 * WIDTH, dropout=0.0, batch_first=True, norm_first=True)
        self.body = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = torch.nn.Linear(WIDTH, VOCAB)
        self.mask = torch.nn.Transformer.generate_square_subsequent_mask(LENGTH)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens) + self.position
        return self.head(self.body(x, mask=self.mask.to(x.dtype), is_causal=True))


def batches(steps: int, batch_size: int) -> list[torch.Tensor]:
    """Sequences of a Markov chain where each token has two equally likely successors."""
    gen = torch.Generator().manual_seed(0)
    successors = torch.randint(0, VOCAB, (VOCAB, 2), generator=gen)
    out = []
    for _ in range(steps):
        seq = [torch.randint(0, VOCAB, (batch_size,), generator=gen)]
        for _ in range(LENGTH):
            pick = torch.randint(0, 2, (batch_size,), generator=gen)
            seq.append(successors[seq[-1], pick])
        out.append(torch.stack(seq, 1))
    return out


def train(dtype: torch.dtype, policy: dict, data: list[torch.Tensor], lr: float) -> list[float]:
    torch.manual_seed(0)
    model = TinyLM().to(dtype)
    opt = torch_gd.AdamW(model.parameters(), lr=lr, weight_decay=0.0, **policy)
    losses = []
    for tokens in data:
        logits = model(tokens[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, VOCAB), tokens[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def smooth(xs: list[float], k: int = 20) -> list[float]:
    return [sum(xs[max(0, i - k + 1):i + 1]) / len(xs[max(0, i - k + 1):i + 1]) for i in range(len(xs))]


def plot(curves: dict[str, list[float]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    styles = ["k-", "C3-", "C0--", "C2-", "C2:", "C1-."]
    for (label, losses), style in zip(curves.items(), styles):
        ax.plot(range(1, len(losses) + 1), [x - math.log(2) for x in smooth(losses)], style, lw=1.5, label=label)
    ax.set_yscale("log")
    ax.set(xlabel="step", ylabel="loss above the best possible\n(cross-entropy − ln 2, 20-step mean)",
           title="AdamW on a bf16 transformer: rounding to nearest drops small updates\n"
                 "(red stays high); the policies train like the fp32 model (black)")
    ax.legend(fontsize=8)
    save(fig, out)


def main() -> None:
    parser = arguments(__doc__, "bf16_training.png", "5 steps per run")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=3e-4)
    args = parser.parse_args()
    data = batches(5 if args.smoke else args.steps, 32)
    curves = {label: train(dtype, policy, data, args.lr) for label, (dtype, policy) in RUNS.items()}
    last = min(50, len(data))
    print(f"final loss above ln 2 (mean of the last {last} steps):")
    for label, losses in curves.items():
        print(f"  {label:<46} {sum(losses[-last:]) / last - math.log(2):.5f}")
    if can_plot(args.out):
        plot(curves, args.out)


if __name__ == "__main__":
    main()
