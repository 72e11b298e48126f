r"""Learning-rate schedules as pure closed-form functions of the step.

Each function maps a step index ``n`` (a scheduler's ``last_epoch``) either to a factor on the
base learning rate, ``lr = base_lr · f(n)``, or, where a schedule is defined by absolute learning
rates (cosine annealing to ``eta_min``, 1cycle, cyclic), to the learning rate itself. The
schedulers in :mod:`torch_gd.lr_scheduler` set ``group["lr"]`` to these values, so a schedule can
be evaluated, plotted or resumed at any step without replaying the steps before it.

Learning-rate arguments only go through ``+ - * /``, so a 0-dim tensor works in place of a float:
the schedulers pass tensor learning rates straight through and never force a host sync.
Arguments are not validated here; the scheduler classes do that.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable, Sequence
from typing import Literal

__all__ = [
    "step_decay",
    "multistep_decay",
    "exponential_decay",
    "constant_factor",
    "linear_ramp",
    "polynomial_decay",
    "cosine_annealing",
    "warm_restart_position",
    "one_cycle",
    "cyclic_position",
    "cyclic",
    "linear_warmup",
    "warmup_cosine",
    "warmup_stable_decay",
    "inverse_sqrt",
]


def step_decay(step: int, step_size: int, gamma: float) -> float:
    r"""StepLR factor: :math:`f(n) = \gamma^{\lfloor n / \text{step\_size} \rfloor}`."""
    return gamma ** (step // step_size)


def multistep_decay(step: int, milestones: Sequence[int], gamma: float) -> float:
    r"""MultiStepLR factor: :math:`f(n) = \gamma^{|\{m \in M : m \le n\}|}`.

    ``milestones`` must be sorted; a milestone listed twice decays twice.
    """
    return gamma ** bisect_right(milestones, step)


def exponential_decay(step: int, gamma: float) -> float:
    r"""ExponentialLR factor: :math:`f(n) = \gamma^n`."""
    return gamma**step


def constant_factor(step: int, factor: float, total_iters: int) -> float:
    r"""ConstantLR factor: :math:`f(n) = \text{factor}` for :math:`n < T`, else 1."""
    return factor if step < total_iters else 1.0


def linear_ramp(step: int, start_factor: float, end_factor: float, total_iters: int) -> float:
    r"""LinearLR factor: :math:`f(n) = s + (e - s)\,\min(n, T) / T`."""
    return start_factor + (end_factor - start_factor) * min(total_iters, step) / total_iters


def polynomial_decay(step: int, total_iters: int, power: float) -> float:
    r"""PolynomialLR factor: :math:`f(n) = (1 - \min(n, T) / T)^p`."""
    return (1.0 - min(total_iters, step) / total_iters) ** power


def cosine_annealing(step: float, T_max: float, base_lr: float, eta_min: float) -> float:
    r"""CosineAnnealingLR learning rate, the closed form torch documents (SGDR without restarts):

    .. math:: \eta_n = \eta_{\min} + \tfrac12(\eta_{\text{base}} - \eta_{\min})
              \bigl(1 + \cos(\pi n / T_{\max})\bigr)

    It is periodic: past ``T_max`` the rate climbs back to ``base_lr``, as torch's does.
    """
    return eta_min + (base_lr - eta_min) * (1 + math.cos(math.pi * step / T_max)) / 2


def warm_restart_position(epoch: float, T_0: int, T_mult: int) -> tuple[float, int]:
    r"""Position in SGDR's restart cycles: ``(T_cur, T_i)`` at ``epoch``.

    Cycle :math:`k` lasts :math:`T_i = T_0 T_{\text{mult}}^k` epochs and starts at
    :math:`\sum_{j<k} T_0 T_{\text{mult}}^j`; ``T_cur`` is the time since that start. The learning
    rate is then ``cosine_annealing(T_cur, T_i, base_lr, eta_min)``.
    """
    if T_mult == 1:
        return epoch % T_0, T_0
    # Integer walk over the cycle starts: torch's int(log(...)) lands one cycle short at some
    # exact restart epochs, where T_cur == T_i gives eta_min instead of base_lr.
    start, T_i = 0, T_0
    while epoch >= start + T_i:
        start += T_i
        T_i *= T_mult
    return epoch - start, T_i


def _anneal(start: float, end: float, pct: float, strategy: Literal["cos", "linear"]) -> float:
    if strategy == "cos":
        return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
    return (end - start) * pct + start


def one_cycle(
    step: int,
    total_steps: int,
    start: float,
    peak: float,
    end: float,
    pct_start: float = 0.3,
    anneal_strategy: Literal["cos", "linear"] = "cos",
    three_phase: bool = False,
) -> float:
    r"""1cycle value (learning rate or momentum) at ``step``, as torch's OneCycleLR computes it.

    Two phases anneal ``start → peak`` over steps :math:`[0, pT - 1]` and ``peak → end`` up to
    :math:`T - 1`; with ``three_phase`` they are ``start → peak → start`` over
    :math:`[0, pT - 1, 2pT - 2]` and ``start → end`` up to :math:`T - 1`. Within a phase from
    :math:`a` to :math:`b`, with progress :math:`q \in [0, 1]`, the value is
    :math:`b + \tfrac12 (a - b)(1 + \cos \pi q)` (``"cos"``) or :math:`a + (b - a) q` (``"linear"``).
    For the learning rate ``start, peak, end = initial_lr, max_lr, min_lr``; for momentum
    ``max_momentum, base_momentum, max_momentum``.
    """
    if three_phase:
        phases = [
            (float(pct_start * total_steps) - 1, start, peak),
            (float(2 * pct_start * total_steps) - 2, peak, start),
            (total_steps - 1, start, end),
        ]
    else:
        phases = [(float(pct_start * total_steps) - 1, start, peak), (total_steps - 1, peak, end)]
    phase_start = 0.0
    for phase, (phase_end, a, b) in enumerate(phases, start=1):
        # The last phase also takes the one step past it that torch allows (step == total_steps).
        if step <= phase_end or phase == len(phases):
            break
        phase_start = phase_end
    if phase_end == phase_start:
        raise ValueError(
            f"pct_start={pct_start} with total_steps={total_steps} leaves 1cycle phase {phase} "
            f"zero steps long; pct_start * total_steps must not be 1 and each phase needs a step"
        )
    return _anneal(a, b, (step - phase_start) / (phase_end - phase_start), anneal_strategy)


def cyclic_position(step: float, total_size: float, step_ratio: float) -> tuple[int, float]:
    r"""Where CyclicLR's triangle wave is at ``step``: ``(cycle, height)``.

    ``total_size = step_size_up + step_size_down`` and ``step_ratio = step_size_up / total_size``.
    ``cycle = ⌊1 + n / total_size⌋`` counts from 1; with :math:`x` the fraction of the current
    cycle done, ``height`` is :math:`x / r` on the way up and :math:`(x - 1)/(r - 1)` on the way
    down, so 0 at the cycle's ends and 1 at its peak.
    """
    cycle = math.floor(1 + step / total_size)
    x = 1.0 + step / total_size - cycle
    if x <= step_ratio:
        return cycle, x / step_ratio
    return cycle, (x - 1) / (step_ratio - 1)


def cyclic(
    step: int,
    low: float,
    high: float,
    total_size: float,
    step_ratio: float,
    scale_fn: Callable[[float], float] | None = None,
    scale_mode: Literal["cycle", "iterations"] = "cycle",
) -> float:
    r"""CyclicLR value: :math:`\text{low} + (\text{high} - \text{low}) \cdot h \cdot s`.

    :math:`h` is :func:`cyclic_position`'s height and :math:`s` is ``scale_fn`` applied to the
    cycle number or the step (``scale_mode``); no ``scale_fn`` means :math:`s = 1`. Momentum
    cycles inversely: ``low, high = max_momentum, base_momentum``.
    """
    cycle, height = cyclic_position(step, total_size, step_ratio)
    if scale_fn is None:
        scale = 1.0
    else:
        scale = scale_fn(cycle if scale_mode == "cycle" else step)
    return low + (high - low) * height * scale


def linear_warmup(step: int, warmup_steps: int, start_factor: float = 0.0) -> float:
    r"""Warmup factor for :math:`n < W`: :math:`f(n) = s + (1 - s)\, n / W`, reaching 1 at :math:`n = W`."""
    return start_factor + (1.0 - start_factor) * step / warmup_steps


def warmup_cosine(
    step: int,
    warmup_steps: int,
    total_steps: int,
    start_factor: float = 0.0,
    min_factor: float = 0.0,
) -> float:
    r"""Linear warmup, then cosine decay to a floor.

    .. math::
        f(n) = \begin{cases}
            s + (1 - s)\, n / W & n < W \\
            m + \tfrac12 (1 - m)\bigl(1 + \cos(\pi \tfrac{\min(n, T) - W}{T - W})\bigr) & n \ge W
        \end{cases}

    so :math:`f(W) = 1`, :math:`f((W + T)/2) = (1 + m)/2` and :math:`f(n) = m` for :math:`n \ge T`.
    """
    if step < warmup_steps:
        return linear_warmup(step, warmup_steps, start_factor)
    progress = (min(step, total_steps) - warmup_steps) / (total_steps - warmup_steps)
    return min_factor + (1.0 - min_factor) * (1 + math.cos(math.pi * progress)) / 2


def _decay_shape(progress: float, decay_type: Literal["linear", "cosine", "1-sqrt"]) -> float:
    if decay_type == "linear":
        return 1.0 - progress
    if decay_type == "cosine":
        return (1 + math.cos(math.pi * progress)) / 2
    return 1.0 - math.sqrt(progress)


def warmup_stable_decay(
    step: int,
    warmup_steps: int,
    total_steps: int,
    decay_steps: int,
    decay_type: Literal["linear", "cosine", "1-sqrt"] = "linear",
    start_factor: float = 0.0,
    min_factor: float = 0.0,
) -> float:
    r"""Warmup-stable-decay (WSD): linear warmup, a constant plateau, then a decay tail.

    With :math:`D` decay steps starting at :math:`S = T - D` and progress
    :math:`q = (\min(n, T) - S) / D`:

    .. math::
        f(n) = \begin{cases}
            s + (1 - s)\, n / W & n < W \\
            1 & W \le n < S \\
            m + (1 - m)\, g(q) & n \ge S
        \end{cases}

    with :math:`g(q) = 1 - q` (``"linear"``), :math:`\tfrac12(1 + \cos \pi q)` (``"cosine"``) or
    :math:`1 - \sqrt{q}` (``"1-sqrt"``, Hägele et al. 2024). :math:`f(n) = m` for :math:`n \ge T`.
    """
    if step < warmup_steps:
        return linear_warmup(step, warmup_steps, start_factor)
    decay_start = total_steps - decay_steps
    if step < decay_start:
        return 1.0
    progress = (min(step, total_steps) - decay_start) / decay_steps
    return min_factor + (1.0 - min_factor) * _decay_shape(progress, decay_type)


def inverse_sqrt(step: int, warmup_steps: int, start_factor: float = 0.0) -> float:
    r"""Linear warmup, then decay proportional to :math:`1/\sqrt{n}`, continuous at :math:`W`.

    .. math::
        f(n) = \begin{cases} s + (1 - s)\, n / W & n < W \\ \sqrt{W / n} & n \ge W \end{cases}
    """
    if step < warmup_steps:
        return linear_warmup(step, warmup_steps, start_factor)
    return math.sqrt(warmup_steps / step)
