"""Every torch_gd.lr_scheduler schedule, lr against step, in one picture.

Each panel steps a torch_gd scheduler on a one-parameter SGD with base lr 0.1 (solid line) and,
where torch has the scheduler, torch.optim.lr_scheduler's with the same arguments (dashed line on
top: the two coincide). Prints a summary with the largest relative difference from torch, and
saves examples/runs/schedules.png when matplotlib is installed.

    python examples/plot_schedules.py            # 1000 steps
    python examples/plot_schedules.py --smoke    # 150 steps, about a second
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch
from torch.optim import lr_scheduler as torch_sched

from torch_gd import lr_scheduler as gd_sched

from _common import arguments, can_plot, save

BASE_LR = 0.1

# name -> builder(module, optimizer, steps); the new schedules are only built from torch_gd.
Builder = Callable[[ModuleType, torch.optim.Optimizer, int], object]


def plateau_loss(step: int, steps: int) -> float:
    """A loss that improves quickly, then flattens: ReduceLROnPlateau's input."""
    return 1.0 / (1.0 + 20.0 * min(step, steps // 3) / steps) + 0.01 * math.sin(step)


SCHEDULES: dict[str, Builder] = {
    "StepLR": lambda m, o, n: m.StepLR(o, step_size=n // 4, gamma=0.5),
    "MultiStepLR": lambda m, o, n: m.MultiStepLR(o, [3 * n // 10, 6 * n // 10, 85 * n // 100], 0.3),
    "ExponentialLR": lambda m, o, n: m.ExponentialLR(o, gamma=0.01 ** (1 / n)),
    "ConstantLR": lambda m, o, n: m.ConstantLR(o, factor=0.3, total_iters=n // 5),
    "LinearLR": lambda m, o, n: m.LinearLR(o, start_factor=0.1, total_iters=n // 5),
    "PolynomialLR": lambda m, o, n: m.PolynomialLR(o, total_iters=4 * n // 5, power=2.0),
    "CosineAnnealingLR": lambda m, o, n: m.CosineAnnealingLR(o, T_max=n // 2, eta_min=0.01),
    "CosineAnnealingWarmRestarts": lambda m, o, n: m.CosineAnnealingWarmRestarts(
        o, T_0=max(1, n // 15), T_mult=2, eta_min=0.005
    ),
    "OneCycleLR": lambda m, o, n: m.OneCycleLR(o, max_lr=BASE_LR, total_steps=n),
    "CyclicLR": lambda m, o, n: m.CyclicLR(
        o, base_lr=0.01, max_lr=BASE_LR, step_size_up=max(1, n // 8), mode="triangular2"
    ),
    "LambdaLR": lambda m, o, n: m.LambdaLR(o, lambda k: 1 / (1 + 10 * k / n)),
    "MultiplicativeLR": lambda m, o, n: m.MultiplicativeLR(
        o, lambda k: 0.01 ** (1 / n) * (1.02 if k % (n // 10 or 1) == 0 else 1.0)
    ),
    "ReduceLROnPlateau": lambda m, o, n: m.ReduceLROnPlateau(o, factor=0.5, patience=n // 20),
    "SequentialLR": lambda m, o, n: m.SequentialLR(
        o, [m.LinearLR(o, 0.05, total_iters=n // 10), m.ExponentialLR(o, 0.02 ** (1 / n))], [n // 10]
    ),
    "ChainedScheduler": lambda m, o, n: m.ChainedScheduler(
        [m.CosineAnnealingLR(o, T_max=n), m.MultiStepLR(o, [n // 3, 2 * n // 3], 0.5)]
    ),
    "WarmupCosineLR": lambda m, o, n: m.WarmupCosineLR(o, n // 10, n, min_factor=0.1),
    "WarmupStableDecayLR": lambda m, o, n: m.WarmupStableDecayLR(o, n // 10, n, n // 5),
    "InverseSqrtLR": lambda m, o, n: m.InverseSqrtLR(o, n // 10),
}
NEW = {"WarmupCosineLR", "WarmupStableDecayLR", "InverseSqrtLR"}
WSD_TAILS = ["linear", "cosine", "1-sqrt"]


def trace(build: Callable[[torch.optim.Optimizer], object], steps: int) -> list[float]:
    """lr after construction and after each of ``steps`` steps."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=BASE_LR, momentum=0.9)
    sched = build(opt)
    opt.step()  # the order torch expects, so no step-order warning
    lrs = [opt.param_groups[0]["lr"]]
    for step in range(steps):
        if isinstance(sched, torch_sched.ReduceLROnPlateau):
            sched.step(plateau_loss(step, steps))
        else:
            sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    return lrs


def curves(steps: int) -> dict[str, dict[str, list[float]]]:
    """name -> {label: lrs}: ours, torch's where it has the scheduler, WSD's three tails."""
    out: dict[str, dict[str, list[float]]] = {}
    for name, build in SCHEDULES.items():
        if name == "WarmupStableDecayLR":
            out[name] = {
                tail: trace(lambda o, t=tail: gd_sched.WarmupStableDecayLR(o, steps // 10, steps, steps // 5, t), steps)
                for tail in WSD_TAILS
            }  # fmt: skip
            continue
        out[name] = {"torch_gd": trace(lambda o: build(gd_sched, o, steps), steps)}
        if name not in NEW:
            out[name]["torch"] = trace(lambda o: build(torch_sched, o, steps), steps)
    return out


def summarize(data: dict[str, dict[str, list[float]]]) -> None:
    print(f"{'schedule':28} {'lr[0]':>9} {'min':>9} {'max':>9} {'lr[end]':>9}  max rel. diff vs torch")
    for name, lines in data.items():
        for label, lrs in lines.items():
            if label == "torch":
                continue
            shown = name if label == "torch_gd" else f"{name} ({label})"
            diff = "new in torch_gd"
            if "torch" in lines:
                worst = max(abs(a - b) / max(abs(b), 1e-300) for a, b in zip(lrs, lines["torch"]))
                diff = f"{worst:.1e}"
            print(f"{shown:28} {lrs[0]:9.2e} {min(lrs):9.2e} {max(lrs):9.2e} {lrs[-1]:9.2e}  {diff}")


def plot(data: dict[str, dict[str, list[float]]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 3
    rows = math.ceil(len(data) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.3 * rows + 0.4), sharex=True, layout="constrained")
    for ax, (name, lines) in zip(axes.flat, data.items()):
        for label, lrs in lines.items():
            style = dict(lw=1.0, ls="--", color="black", label=label) if label == "torch" else dict(lw=2.0, label=label)
            ax.plot(range(len(lrs)), lrs, **style)
        ax.set_title(name + ("  (new)" if name in NEW else ""), fontsize=10,
                     color="tab:red" if name in NEW else "black")  # fmt: skip
        ax.set_ylim(bottom=0)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        if name == "WarmupStableDecayLR":
            ax.legend(title="decay_type (same until the decay)", fontsize=7, title_fontsize=7, loc="lower center")
    for ax in axes.flat[len(data):]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("step", fontsize=9)
    for ax in axes[:, 0]:
        ax.set_ylabel("learning rate", fontsize=9)
    # One legend for all panels, from the first, which has both lines.
    ours, torchs = axes.flat[0].get_lines()
    fig.legend([ours, torchs], ["torch_gd.lr_scheduler", "torch.optim.lr_scheduler, same arguments (drawn on top)"],
               loc="outside lower center", ncol=2, fontsize=10)
    fig.suptitle(
        f"Every torch_gd schedule, base lr {BASE_LR}: where torch has one, its dashed curve lies on ours; "
        "red = new in torch_gd",
        fontsize=12,
    )
    save(fig, out)


def main() -> None:
    parser = arguments(__doc__, "schedules.png", "150 steps")
    parser.add_argument("--steps", type=int, default=1000)
    args = parser.parse_args()
    steps = 150 if args.smoke else args.steps

    data = curves(steps)
    summarize(data)
    if can_plot(args.out):
        plot(data, args.out)


if __name__ == "__main__":
    main()
