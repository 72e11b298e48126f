"""Learning rate too small, about right, too large, and about right with a schedule.

The problem is made here: linear regression on 4096 samples of 20 features, feature j scaled by a
fixed factor from 1 down to 0.1 (an elongated quadratic bowl), with targets
``y = X @ w_true + noise`` for a fixed random ``w_true`` and Gaussian noise of std 0.5. For this
loss the Hessian is the constant matrix ``H = 2·XᵀX/N``, so its largest eigenvalue ``L`` gives the
textbook limit: gradient descent converges for ``lr < 2/L`` and diverges above it.

Each run is mini-batch SGD (``torch_gd.SGD``, batches of 32) from the same start with a learning
rate set as a fraction of ``2/L``. The plot shows the training loss minus the least-squares
minimum (log scale), which is zero only at the best fit. Look for: the too-small lr crawling
down; the too-large one shooting up within a few dozen steps; the about-right constant lr dropping
fast, then levelling off on a noise floor, where the mini-batch noise balances the progress; and
the same peak lr under ``torch_gd.lr_scheduler.WarmupCosineLR``, whose decay takes it below that
floor. The right panel shows each run's lr per step.

    python examples/learning_rate.py            # 2000 steps per run, seconds
    python examples/learning_rate.py --smoke    # 300 steps per run
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

import torch_gd
from _common import arguments, can_plot, save
from torch_gd.lr_scheduler import WarmupCosineLR

SAMPLES, FEATURES, BATCH = 4096, 20, 32
# label -> (lr as a fraction of 2/L, use the schedule)
RUNS = {
    "too small": (0.003, False),
    "about right": (0.5, False),
    "too large": (1.3, False),
    "about right + WarmupCosineLR": (0.5, True),
}


def make_data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(SAMPLES, FEATURES, generator=gen) * torch.logspace(0, -1, FEATURES)
    w_true = torch.randn(FEATURES, 1, generator=gen)
    return x, x @ w_true + 0.5 * torch.randn(SAMPLES, 1, generator=gen)


def train(x: torch.Tensor, y: torch.Tensor, lr: float, schedule: bool, steps: int) -> tuple[list[float], list[float]]:
    """Full training loss before each step and after the last, and the lr of each step."""
    torch.manual_seed(0)  # same start and same batches for every run
    model = torch.nn.Linear(FEATURES, 1, bias=False)
    opt = torch_gd.SGD(model.parameters(), lr=lr)
    sched = WarmupCosineLR(opt, warmup_steps=steps // 20, total_steps=steps) if schedule else None
    losses, lrs = [], []
    for _ in range(steps):
        with torch.no_grad():
            losses.append(F.mse_loss(model(x), y).item())
        if not math.isfinite(losses[-1]) or losses[-1] > 100 * losses[0]:
            break  # diverged: the rest would only stretch the plot's y-axis to inf
        idx = torch.randint(0, SAMPLES, (BATCH,))
        lrs.append(opt.param_groups[0]["lr"])
        opt.zero_grad()
        F.mse_loss(model(x[idx]), y[idx]).backward()
        opt.step()
        if sched is not None:
            sched.step()
    else:
        with torch.no_grad():
            losses.append(F.mse_loss(model(x), y).item())
    return losses, lrs


def verdict(losses: list[float], best: float, steps: int) -> str:
    if len(losses) <= steps or losses[-1] > losses[0]:
        return "DIVERGED"
    # "Converged" = within 1% of the way from the start to the best fit.
    return "converged" if losses[-1] - best < 0.01 * (losses[0] - best) else "too slow: not there yet"


def plot(results: dict[str, tuple[list[float], list[float]]], best: float, two_over_l: float, steps: int,
         out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss_ax, lr_ax) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    for label, (losses, lrs) in results.items():
        fraction = RUNS[label][0]
        excess = [max(loss - best, 1e-8) for loss in losses]
        line, = loss_ax.plot(excess, label=f"{label} (lr = {fraction:g}·2/L)")
        lr_ax.plot(lrs, color=line.get_color(), label=label)
        if len(lrs) < steps:  # diverged: mark where, and keep its lr visible in the lr panel
            loss_ax.plot(len(excess) - 1, excess[-1], "x", color=line.get_color(), ms=10, mew=2)
            lr_ax.hlines(lrs[-1], len(lrs), steps, color=line.get_color(), ls=":", label=f"{label}, after it diverged")
    loss_ax.set(yscale="log", xlabel="step", ylabel="training loss − least-squares minimum (MSE)",
                title="Too small crawls, too large diverges (× = stopped),\nthe schedule decays below the noise floor")
    loss_ax.legend(fontsize=8)
    lr_ax.axhline(two_over_l, color="black", ls="--", lw=1, label=f"2/L = {two_over_l:.3f}: stability limit")
    top = 1.6 * max(max(lrs) for _, lrs in results.values())  # headroom above the lines for the legend
    lr_ax.set(ylim=(-0.03, top), xlabel="step", ylabel="learning rate",
              title="Learning rate per step: only the too-large one\nis above the stability limit 2/L")
    lr_ax.legend(fontsize=7.5, loc="upper center", ncol=2)
    for ax in (loss_ax, lr_ax):
        ax.grid(alpha=0.3, which="both")
    fig.suptitle(f"Linear regression, mini-batch SGD (batch {BATCH}), torch_gd.SGD")
    save(fig, out)


def main() -> None:
    parser = arguments(__doc__, "learning_rate.png", "300 steps per run")
    parser.add_argument("--steps", type=int, default=2000)
    args = parser.parse_args()
    steps = 300 if args.smoke else args.steps

    x, y = make_data()
    xd, yd = x.double(), y.double()
    best = F.mse_loss(xd @ torch.linalg.lstsq(xd, yd).solution, yd).item()
    two_over_l = 2 / torch.linalg.eigvalsh(2 * xd.T @ xd / SAMPLES).max().item()
    print(f"largest eigenvalue of the Hessian L = {2 / two_over_l:.3f}: stable for lr < 2/L = {two_over_l:.3f}")

    results = {label: train(x, y, fraction * two_over_l, schedule, steps)
               for label, (fraction, schedule) in RUNS.items()}
    print(f"{'run':30} {'peak lr':>8} {'final loss − min':>17}  verdict")
    for label, (losses, lrs) in results.items():
        print(f"{label:30} {max(lrs):>8.4f} {losses[-1] - best:>17.3e}  {verdict(losses, best, steps)}"
              + (f" after {len(losses) - 1} steps" if len(losses) <= steps else ""))

    if can_plot(args.out):
        plot(results, best, two_over_l, steps, args.out)


if __name__ == "__main__":
    main()
