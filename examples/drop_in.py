"""Drop-in: train a torchvision ResNet-18 with torch.optim.SGD and with torch_gd.SGD.

The only difference between the two runs is the optimizer class. Both start from the same
weights and see the same batches, so their losses should agree step for step. The data is made
here, no download needed: each of 10 classes is a fixed random 32x32 image, and a sample is its
class image plus noise, so the model has something to learn. Prints both loss columns and the
largest parameter difference, and saves examples/runs/drop_in.png when matplotlib is installed.

    python examples/drop_in.py            # 30 steps, about a minute on 2 cores
    python examples/drop_in.py --smoke    # 3 steps, seconds
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import torch
import torchvision

import torch_gd
from _common import arguments, can_plot, save


def batches(steps: int, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    templates = torch.randn(10, 3, 32, 32, generator=gen)
    labels = torch.randint(0, 10, (steps, batch_size), generator=gen)
    return [(templates[y] + torch.randn(batch_size, 3, 32, 32, generator=gen), y) for y in labels]


def train(model: torch.nn.Module, opt: torch.optim.Optimizer, data) -> tuple[list[float], float]:
    losses, step_time = [], 0.0
    for x, y in data:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        t = time.perf_counter()
        opt.step()
        step_time += time.perf_counter() - t
        losses.append(loss.item())
    return losses, step_time / len(data)


def plot(torch_losses: list[float], gd_losses: list[float], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = range(1, len(torch_losses) + 1)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, torch_losses, lw=3, alpha=0.5, label="torch.optim.SGD")
    ax.plot(steps, gd_losses, "k--", lw=1, label="torch_gd.SGD")
    ax.set(xlabel="step (optimizer step, one batch each)", ylabel="training loss (cross-entropy)",
           title="ResNet-18, same weights and batches:\ntorch_gd.SGD's loss (dashed) lies on torch.optim.SGD's (wide)")
    ax.legend()
    save(fig, out)


def main() -> None:
    parser = arguments(__doc__, "drop_in.png", "3 steps")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    steps = 3 if args.smoke else args.steps

    torch.manual_seed(0)
    reference = torchvision.models.resnet18(num_classes=10)
    candidate = copy.deepcopy(reference)
    data = batches(steps, args.batch_size)
    hyper = dict(lr=0.01, momentum=0.9, weight_decay=5e-4, nesterov=True)

    torch_losses, torch_time = train(reference, torch.optim.SGD(reference.parameters(), **hyper), data)
    gd_losses, gd_time = train(candidate, torch_gd.SGD(candidate.parameters(), **hyper), data)

    print(f"{'step':>4}  {'torch.optim.SGD':>16}  {'torch_gd.SGD':>13}")
    for i, (a, b) in enumerate(zip(torch_losses, gd_losses), 1):
        print(f"{i:>4}  {a:>16.6f}  {b:>13.6f}")
    diff = max((p - q).abs().max().item() for p, q in zip(reference.parameters(), candidate.parameters()))
    print(f"largest parameter difference after {steps} steps: {diff:.3g}")
    print(f"mean optimizer step: torch.optim {torch_time * 1e3:.2f} ms, torch_gd {gd_time * 1e3:.2f} ms "
          "(one run, not a benchmark: see benchmarks/)")

    if can_plot(args.out):
        plot(torch_losses, gd_losses, args.out)


if __name__ == "__main__":
    main()
