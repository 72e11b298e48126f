"""Six torch_gd optimizers race on the Rosenbrock function and on a small MLP.

Left two panels: each optimizer starts at (-1.5, 2) on Rosenbrock's function
``f(x, y) = (1 - x)² + 100·(y - x²)²``, whose minimum (1, 1) lies at the end of a long, curved,
nearly flat valley. The left panel draws each path over the contour plot (log-spaced levels), the
middle one its distance to the minimum per step. The short spur out of the start is Adagrad's
first step: with only one squared gradient in its accumulator, that step is lr·sign(grad), the
full lr of 0.5 in both coordinates, and its second step comes back. Each lr was tuned by hand to
about the largest that behaves well here, so the picture compares methods, not lr choices. Look
at how every method drops into the valley within a few dozen steps and then the race is along its
floor: plain SGD and Adagrad (whose steps only shrink) crawl, momentum and Nesterov (nearly the
same curve here: Nesterov is dashed) and RMSprop go several times further, and Adam, with momentum
and per-coordinate scaling, reaches the minimum.

Right panel: the same optimizers, with lrs usual for a network, train an MLP with mini-batches
of 64 on a 2-class spiral made here (two interleaved arms, 2048 points, a little noise); the plot
shows the loss on all samples; here Adam and Adagrad lead. Prints each optimizer's final
distance to (1, 1) and final MLP loss.

    python examples/optimizer_race.py            # 2000 steps on each problem, about 15 s
    python examples/optimizer_race.py --smoke    # 300 steps, seconds
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

import torch_gd
from _common import arguments, can_plot, save, spiral

START, MINIMUM = (-1.5, 2.0), (1.0, 1.0)
Factory = Callable[[list[torch.Tensor], float], torch.optim.Optimizer]
# name -> (factory, lr on Rosenbrock, lr on the MLP)
OPTIMIZERS: dict[str, tuple[Factory, float, float]] = {
    "SGD": (lambda p, lr: torch_gd.SGD(p, lr=lr), 1e-3, 0.3),
    "SGD + momentum 0.9": (lambda p, lr: torch_gd.SGD(p, lr=lr, momentum=0.9), 3e-4, 0.03),
    "Nesterov 0.9": (lambda p, lr: torch_gd.SGD(p, lr=lr, momentum=0.9, nesterov=True), 3e-4, 0.03),
    "Adagrad": (lambda p, lr: torch_gd.Adagrad(p, lr=lr), 0.5, 0.05),
    "RMSprop": (lambda p, lr: torch_gd.RMSprop(p, lr=lr), 3e-3, 1e-3),
    "Adam": (lambda p, lr: torch_gd.Adam(p, lr=lr), 3e-2, 3e-3),
}


def rosenbrock(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


def race_rosenbrock(factory: Factory, lr: float, steps: int) -> torch.Tensor:
    """The path, ``steps + 1`` points."""
    point = torch.tensor(START, dtype=torch.float64, requires_grad=True)
    opt = factory([point], lr)
    path = [point.detach().clone()]
    for _ in range(steps):
        opt.zero_grad()
        rosenbrock(*point).backward()
        opt.step()
        path.append(point.detach().clone())
    return torch.stack(path)


def race_mlp(factory: Factory, lr: float, steps: int, x: torch.Tensor, y: torch.Tensor) -> list[tuple[int, float]]:
    """(step, loss on all samples) every 20 steps."""
    torch.manual_seed(0)  # same initial weights and same batches for every optimizer
    model = torch.nn.Sequential(
        torch.nn.Linear(2, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2)
    )
    opt = factory(list(model.parameters()), lr)
    curve = []
    for step in range(steps + 1):
        if step % 20 == 0 or step == steps:
            with torch.no_grad():
                curve.append((step, F.cross_entropy(model(x), y).item()))
        if step == steps:
            break
        idx = torch.randint(0, len(x), (64,))
        opt.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    return curve


def plot(paths: dict[str, torch.Tensor], curves: dict[str, list[tuple[int, float]]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (surface, distances, losses) = plt.subplots(1, 3, figsize=(17, 6), layout="constrained")
    minimum = torch.tensor(MINIMUM, dtype=torch.float64)
    distance = {name: (path - minimum).norm(dim=1) for name, path in paths.items()}
    steps = len(distance["Adam"]) - 1
    gx, gy = torch.meshgrid(torch.linspace(-2, 2, 300), torch.linspace(-1, 3, 300), indexing="xy")
    surface.contour(gx, gy, rosenbrock(gx, gy), levels=torch.logspace(-1, 3.5, 20), colors="0.75", linewidths=0.7)
    for width, (name, path) in zip(range(2 * len(paths), 0, -2), paths.items()):
        # Nesterov's curves run within a few % of plain momentum's: dashed, so the one below shows.
        ls = "--" if name == "Nesterov 0.9" else "-"
        # Widest first, so a path that runs on top of another along the valley leaves it visible.
        line, = surface.plot(path[:, 0], path[:, 1], lw=width / 2 + 0.5, ls=ls, alpha=0.8)
        color = line.get_color()
        surface.plot(*path[-1], "o", color=color, ms=8, mec="black")
        if name == "Adagrad":
            explain_adagrad_spur(surface, path, color)
        _, lr_rosen, lr_mlp = OPTIMIZERS[name]
        distances.plot(distance[name], color=color, ls=ls, lw=1.5, label=f"{name} (lr {lr_rosen:g} / {lr_mlp:g})")
        losses.plot(*zip(*curves[name]), color=color, ls=ls)
    surface.plot(*START, "ks", ms=8)
    surface.annotate("start", START, xytext=(-10, 10), textcoords="offset points")
    surface.plot(*MINIMUM, "r*", ms=16, mec="black")
    surface.annotate("minimum (1, 1)", MINIMUM, xytext=(-60, 12), textcoords="offset points")
    surface.set(xlim=(-2, 2), ylim=(-1, 3), xlabel="x", ylabel="y",
                title=f"Rosenbrock: every path falls into the valley (● = after {steps} steps)")
    momentum, nesterov = distance["SGD + momentum 0.9"], distance["Nesterov 0.9"]
    gap = ((nesterov - momentum).abs() / momentum).max()
    distances.set(yscale="log", xlabel="step", ylabel="distance ‖(x, y) − (1, 1)‖",
                  title=f"Rosenbrock: the race along the valley floor, lower is better\n"
                        f"(momentum and Nesterov within {gap:.0%} of each other: Nesterov dashed)")
    losses.set(yscale="log", xlabel="step (mini-batch of 64)", ylabel="training loss (cross-entropy, all samples)",
               title="MLP (2-64-64-2) on a 2-class spiral: lower is better")
    for ax in (distances, losses):
        ax.grid(alpha=0.3, which="both")
    fig.legend(loc="outside lower center", ncol=len(paths), fontsize=9,
               title="one colour per optimizer in all three panels (lr on Rosenbrock / lr on the MLP)")
    fig.suptitle("torch_gd optimizers: SGD, momentum, Nesterov, Adagrad, RMSprop, Adam")
    save(fig, out)


def explain_adagrad_spur(ax, path: torch.Tensor, color: str) -> None:
    """Label Adagrad's first step, the spur out of the start: its accumulator is then just grad²,
    so the step is lr·sign(grad), the full lr in each coordinate, and the next step comes back."""
    lr = OPTIMIZERS["Adagrad"][1]
    ax.annotate(f"the spur: Adagrad's first step, lr·sign(grad) = {lr:g}\nin x and in y; its second step comes back",
                tuple(path[1].tolist()), xytext=(10, 2), textcoords="offset points", fontsize=9, color=color)


def main() -> None:
    parser = arguments(__doc__, "optimizer_race.png", "300 steps")
    parser.add_argument("--steps", type=int, default=2000)
    args = parser.parse_args()
    steps = 300 if args.smoke else args.steps

    x, y = spiral(2048)
    paths, curves = {}, {}
    print(f"{'optimizer':20} {'Rosenbrock lr':>13} {'distance to (1, 1)':>19} {'MLP lr':>7} {'final MLP loss':>15}")
    for name, (factory, lr_rosen, lr_mlp) in OPTIMIZERS.items():
        paths[name] = race_rosenbrock(factory, lr_rosen, steps)
        curves[name] = race_mlp(factory, lr_mlp, steps, x, y)
        distance = (paths[name][-1] - torch.tensor(MINIMUM, dtype=torch.float64)).norm().item()
        print(f"{name:20} {lr_rosen:>13g} {distance:>19.4f} {lr_mlp:>7g} {curves[name][-1][1]:>15.4f}")

    if can_plot(args.out):
        plot(paths, curves, args.out)


if __name__ == "__main__":
    main()
