"""Batch, stochastic and mini-batch gradient descent training the same MLP on the same data.

The data is made here: 8192 points in two interleaved spiral arms, one arm per class, with a
little Gaussian noise (see ``spiral``), a classic that a linear model cannot fit but a small MLP
(2-128-128-2, ReLU) can, to near-zero loss.

The same MLP, from the same initial weights, is trained with ``torch_gd.SGD`` three ways, each
for the same budget of update time on one CPU thread and with a learning rate tuned by hand for
its batch size: the full data set per update (batch GD), one sample per
update (stochastic GD), and 32 samples per update (mini-batch GD). Look at the two panels
together. Per update (left), 32 samples make about as much progress as all 8192, while one
sample is so noisy that it needs a ten times smaller lr and many more updates. Per second
(right), a full-batch update costs a whole pass over the data and a one-sample update costs
about as much as a 32-sample one, so mini-batches reach a low loss long before the others.

    python examples/gd_variants.py            # 10 s of updates per variant, about 40 s
    python examples/gd_variants.py --smoke    # 1 s per variant, seconds
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F

import torch_gd
from _common import arguments, can_plot, save, spiral

SAMPLES, HIDDEN = 8192, 128
# batch size -> (name, lr), each lr tuned by hand: full batch at 1.0 already made the loss go up,
# and a one-sample gradient is so noisy that its lr must be ten times smaller.
VARIANTS = {SAMPLES: ("batch (all 8192)", 0.3), 32: ("mini-batch (32)", 0.3), 1: ("stochastic (1)", 0.03)}


def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    with torch.no_grad():
        logits = model(x)
    return F.cross_entropy(logits, y).item(), (logits.argmax(1) == y).float().mean().item()


def train(x: torch.Tensor, y: torch.Tensor, batch_size: int, lr: float, budget: float) -> dict[str, list[float]]:
    """Trains for ``budget`` seconds of update time; shuffling and evaluations are not counted."""
    torch.manual_seed(0)  # the same initial weights for every variant
    model = torch.nn.Sequential(
        torch.nn.Linear(2, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, HIDDEN), torch.nn.ReLU(),
        torch.nn.Linear(HIDDEN, 2),
    )
    opt = torch_gd.SGD(model.parameters(), lr=lr)
    log = {"update": [0], "seconds": [0.0], "loss": [evaluate(model, x, y)[0]]}
    updates, elapsed, next_eval = 0, 0.0, budget / 300
    while elapsed < budget:
        order = torch.randperm(len(x))
        xs, ys = x[order], y[order]  # shuffled once per epoch, so a batch below is a free slice
        for start in range(0, len(x), batch_size):
            t = time.perf_counter()
            opt.zero_grad()
            F.cross_entropy(model(xs[start:start + batch_size]), ys[start:start + batch_size]).backward()
            opt.step()
            elapsed += time.perf_counter() - t
            updates += 1
            # Log-spaced in time, as both plot axes are log: early progress is fast.
            if elapsed >= next_eval or elapsed >= budget:
                loss, accuracy = evaluate(model, x, y)
                log["update"].append(updates)
                log["seconds"].append(elapsed)
                log["loss"].append(loss)
                next_eval = elapsed * 1.08
            if elapsed >= budget:
                break
    log["accuracy"] = [accuracy]
    return log


def plot(logs: dict[int, dict[str, list[float]]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_step, by_time) = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for batch_size, log in logs.items():
        name, lr = VARIANTS[batch_size]
        # From the first update on: log axes have no room for the starting point at 0.
        by_step.plot(log["update"][1:], log["loss"][1:], label=f"{name}, lr {lr}")
        by_time.plot(log["seconds"][1:], log["loss"][1:], label=f"{name}, lr {lr}")
    by_step.set(xscale="log", yscale="log", xlabel="updates (optimizer steps)",
                ylabel="training loss (cross-entropy, all samples)",
                title="Loss per update: 32 samples do about as well as all 8192")
    by_time.set(xscale="log", xlabel="seconds spent in updates (1 CPU thread)",
                title="Loss per second: mini-batches get there first")
    for ax in (by_step, by_time):
        ax.grid(alpha=0.3, which="both")
        ax.legend(loc="lower left")
    fig.suptitle(f"MLP on a 2-class spiral ({SAMPLES} samples), torch_gd.SGD, same time budget each")
    save(fig, out)


def main() -> None:
    parser = arguments(__doc__, "gd_variants.png", "1 s per variant")
    parser.add_argument("--seconds", type=float, default=10.0, help="training time per variant")
    args = parser.parse_args()
    budget = 1.0 if args.smoke else args.seconds
    # With several threads, small ops stall whenever another process holds a core, and the
    # timings would measure the machine's load rather than the batch size.
    torch.set_num_threads(1)

    x, y = spiral(SAMPLES)
    logs = {batch_size: train(x, y, batch_size, lr, budget) for batch_size, (_, lr) in VARIANTS.items()}

    print(f"{'variant':18} {'lr':>5} {'updates':>8} {'epochs':>7} {'s/epoch':>8} {'final loss':>11} {'accuracy':>9}")
    for batch_size, log in logs.items():
        name, lr = VARIANTS[batch_size]
        epochs = log["update"][-1] * batch_size / SAMPLES
        print(f"{name:18} {lr:>5} {log['update'][-1]:>8} {epochs:>7.1f} {log['seconds'][-1] / epochs:>8.3f} "
              f"{log['loss'][-1]:>11.4f} {log['accuracy'][-1]:>9.1%}")
    print(f"gd_variants: each variant trained for {budget:g} s of updates (one run: timings vary)")

    if can_plot(args.out):
        plot(logs, args.out)


if __name__ == "__main__":
    main()
