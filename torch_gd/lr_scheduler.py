r"""Learning-rate schedulers: torch's set, closed-form and resume-exact, plus warmup schedules.

Every class is a :class:`torch.optim.lr_scheduler.LRScheduler` (most subclass torch's own class of
the same name and take its constructor arguments), so ``get_last_lr()``, ``last_epoch``,
``initial_lr``, ``state_dict()`` and the warning for calling ``scheduler.step()`` before
``optimizer.step()`` behave as in torch, on any :class:`torch.optim.Optimizer`.

Where the schedule is a function of the step, ``step()`` sets ``group["lr"]`` to the closed form of
:mod:`torch_gd.schedules` at ``last_epoch`` instead of updating the previous value the way torch's
chainable form does. The values agree with torch's to rounding, and the schedule continues exactly
after ``load_state_dict`` or when constructed with ``last_epoch=N`` -- which, as in torch, gives the
state of a fresh scheduler after ``N + 1`` calls to ``step()``. A manual change of ``group["lr"]``
is overwritten at the next step. Inside :class:`ChainedScheduler` the schedulers compose exactly as
torch's do.

Tensor hyperparameters are written in place: a tensor ``lr``, and with ``cycle_momentum`` a tensor
``momentum`` or ``betas[0]``, stays the same object.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import re
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Literal

from torch import Tensor
from torch.optim import Optimizer
from torch.optim import lr_scheduler as _torch
from torch.optim.lr_scheduler import (
    LRScheduler,
    _format_param,
    _warn_get_lr_called_within_step,
)

from . import schedules

__all__ = [
    "LRScheduler",
    "LambdaLR",
    "MultiplicativeLR",
    "StepLR",
    "MultiStepLR",
    "ConstantLR",
    "LinearLR",
    "ExponentialLR",
    "PolynomialLR",
    "CosineAnnealingLR",
    "CosineAnnealingWarmRestarts",
    "OneCycleLR",
    "CyclicLR",
    "ReduceLROnPlateau",
    "SequentialLR",
    "ChainedScheduler",
    "WarmupCosineLR",
    "WarmupStableDecayLR",
    "InverseSqrtLR",
]


# ---------------------------------------------------------------------------------------------
# Argument checks. torch's own checks (and messages) run inside torch's constructors; these cover
# what torch lets through and then crashes on (step_size=0: ZeroDivisionError at step 1) or
# silently turns into nonsense (a negative gamma, a fractional step_size), and run before the
# optimizer is touched.


def _check_optimizer(optimizer: Any) -> None:
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"{type(optimizer).__name__} is not an Optimizer")


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_int(name: str, value: Any, low: int) -> None:
    if not _is_int(value) or value < low:
        raise ValueError(f"Invalid {name} value: {value!r} ({name} must be an integer >= {low})")


def _check_real(
    name: str, value: Any, low: float = 0.0, high: float = math.inf, low_open: bool = False
) -> None:
    if isinstance(value, Tensor) and value.numel() == 1:
        number = float(value)
    elif isinstance(value, numbers.Real) and not isinstance(value, bool):
        number = float(value)
    else:
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}: {value!r}")
    above_low = number > low if low_open else number >= low
    if not (above_low and number <= high):  # also rejects nan
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high == math.inf else ']'}"
        raise ValueError(f"Invalid {name} value: {value!r} ({name} must be in {interval})")


def _check_reals(name: str, value: Any) -> None:
    """A real >= 0, or one per param group."""
    for v in value if isinstance(value, (list, tuple)) else [value]:
        _check_real(name, v)


def _check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"Invalid {name} value: {value!r} ({name} must be one of {list(choices)})")


def _check_momentum_support(optimizer: Optimizer) -> None:
    if "momentum" not in optimizer.defaults and "betas" not in optimizer.defaults:
        raise ValueError(
            "optimizer must support momentum or beta1 with `cycle_momentum` option enabled"
        )


def _set_momentum(group: dict[str, Any], use_beta1: bool, value: float | Tensor) -> None:
    """Write a cycled momentum into ``group``, in place where the group holds a tensor.

    torch rebinds ``betas``/``momentum`` to a new float every step, which makes a compiled
    optimizer step recompile (pytorch#133898); a tensor is filled instead.
    """
    if use_beta1:
        beta1 = group["betas"][0]
        if isinstance(beta1, Tensor):
            beta1.fill_(value)
        else:
            group["betas"] = (value, *group["betas"][1:])
    elif isinstance(group["momentum"], Tensor):
        group["momentum"].fill_(value)
    else:
        group["momentum"] = value


# ---------------------------------------------------------------------------------------------
# Closed-form bases.


class _ClosedFormLR(LRScheduler):
    """``lr = closed form at last_epoch``; subclasses provide ``_get_closed_form_lr``.

    torch's ``step(epoch)`` and SequentialLR's milestone restarts already call
    ``_get_closed_form_lr``, so every path lands on the same values.
    """

    def get_lr(self) -> list[float | Tensor]:
        _warn_get_lr_called_within_step(self)
        return self._get_closed_form_lr()

    def _get_closed_form_lr(self) -> list[float | Tensor]:
        raise NotImplementedError

    def _scaled(self, factor: float) -> list[float | Tensor]:
        return [base_lr * factor for base_lr in self.base_lrs]


class _TorchChainable(_ClosedFormLR):
    """A schedule torch computes recursively, ``lr_n`` from ``lr_{n-1}``.

    Two places keep torch's recursion because it is the composition rule there: a fresh
    constructor's first step (so schedulers built one after another on one optimizer start from
    the same stacked value as torch's) and steps taken by :class:`ChainedScheduler`. Concrete
    classes list torch's class right after this one, so ``super(_ClosedFormLR, self)`` is it.
    """

    _in_chain = False

    def get_lr(self) -> list[float | Tensor]:
        if self._in_chain or (self._is_initial and self.last_epoch == 0):
            return super(_ClosedFormLR, self).get_lr()
        return super().get_lr()


# ---------------------------------------------------------------------------------------------
# torch's schedules, closed-form.


class StepLR(_TorchChainable, _torch.StepLR):
    r"""Decay by ``gamma`` every ``step_size`` steps: :func:`~torch_gd.schedules.step_decay`."""

    def __init__(
        self, optimizer: Optimizer, step_size: int, gamma: float = 0.1, last_epoch: int = -1
    ) -> None:
        _check_optimizer(optimizer)
        _check_int("step_size", step_size, 1)
        _check_real("gamma", gamma)
        _check_int("last_epoch", last_epoch, -1)
        super().__init__(optimizer, step_size, gamma, last_epoch)

    def _get_closed_form_lr(self) -> list[float | Tensor]:
        return self._scaled(schedules.step_decay(self.last_epoch, self.step_size, self.gamma))


class MultiStepLR(_TorchChainable, _torch.MultiStepLR):
    r"""Decay by ``gamma`` at each milestone: :func:`~torch_gd.schedules.multistep_decay`."""

    def __init__(
        self,
        optimizer: Optimizer,
        milestones: Iterable[int],
        gamma: float = 0.1,
        last_epoch: int = -1,
    ) -> None:
        _check_optimizer(optimizer)
        milestones = list(milestones)
        # A fractional or negative milestone is never reached by torch's recursion but is counted
        # by its closed form, so the two would disagree.
        if not all(_is_int(m) and m >= 0 for m in milestones):
            raise ValueError(
                f"Invalid milestones value: {milestones!r} (milestones must be integers >= 0)"
            )
        _check_real("gamma", gamma)
        _check_int("last_epoch", last_epoch, -1)
        super().__init__(optimizer, milestones, gamma, last_epoch)

    def _get_closed_form_lr(self) -> list[float | Tensor]:
        milestones = sorted(self.milestones.elements())
        return self._scaled(schedules.multistep_decay(self.last_epoch, milestones, self.gamma))


class ConstantLR(_TorchChainable, _torch.ConstantLR):
    r"""``factor`` for ``total_iters`` steps, then 1: :func:`~torch_gd.schedules.constant_factor`.

    ``factor=0`` works (torch's recursion divides by it at ``total_iters``).
    """

    def __init__(
        self,
        optimizer: Optimizer,
        factor: float = 1.0 / 3,
        total_iters: int = 5,
        last_epoch: int = -1,
    ) -> None:
        _check_optimizer(optimizer)
        _check_int("total_iters", total_iters, 1)
        _check_int("last_epoch", last_epoch, -1)
        super().__init__(optimizer, factor, total_iters, last_epoch)

    def _get_closed_form_lr(self) -> list[float | Tensor]:
        return self._scaled(
            schedules.constant_factor(self.last_epoch, self.factor, self.total_iters)
        )


class LinearLR(_TorchChainable, _torch.LinearLR):
    r"""Factor from ``start_factor`` to ``end_factor`` linearly: :func:`~torch_gd.schedules.linear_ramp`."""

    def __init__(
        self,
        optimizer: Optimizer,
        start_factor: float = 1.0 / 3,
        end_factor: float = 1.0,
        total_iters: int = 5,
        last_epoch: int = -1,
    ) -> None:
        _check_optimizer(optimizer)
        _check_int("total_iters", total_iters, 1)
        _check_int("last_epoch", last_epoch, -1)
        super().__init__(optimizer, start_factor, end_factor, total_iters, last_epoch)

    def _get_closed_form_lr(self) -> list[float | Tensor]:
        return self._scaled(
            schedules.linear_ramp(
                self.last_epoch, self.start_factor, self.end_factor, self.total_iters
            )
        )


class ExponentialLR(_TorchChainable, _torch.ExponentialLR):
    r"""Decay by ``gamma`` every step: :func:`~torch_gd.schedules.exponential_decay`."""

    def __init__(self, optimizer: Optimizer, gamma: float, last_epoch: int = -1) -> None:
        _check_optimizer(optimizer)
        _check_real("gamma", gamma)
        _check_int("last_epoch", last_epoch, -1)
        super().__init__(optimizer, gamma, last_epoch)

    def _get_closed_form_lr(self) -> list[float | Tensor]:
        return self._scaled(schedules.exponential_decay(self.last_epoch, self.gamma))


class PolynomialLR(_TorchChainable, _torch.PolynomialLR):
    r"""Polynomial decay to 0 over ``total_iters`` steps: :func:`~torch_gd.schedules.polynomial_decay`."""

    def __init__(
        self,
        optimizer: Optimizer,
        total_iters: int = 5,
        power: float = 1.0,
        last_epoch: int = -1,
    ) -> None:
        _check_optimizer(optimizer)
        _check_int("total_iters", total_iters, 1)
        _check_real("power", power)
        _check_int("last_epoch", last_epoch, -1)
        super().__init__(optimizer, total_iters, power, last_epoch)

    def _get_closed_form_lr(self) -> list[float | Tensor]:
        return self._scaled(
            schedules.polynomial_decay(self.last_epoch, self.total_iters, self.power)
        )


class CosineAnnealingLR(_TorchChainable, _torch.CosineAnnealingLR):
    r"""Cosine from the base lr to ``eta_min`` over ``T_max`` steps, the closed form torch documents:
    :func:`~torch_gd.schedules.cosine_annealing`.

    torch steps a recursive approximation of it; the two agree to about 1e-12 relative for
    typical settings but drift apart by a few 1e-9 when ``eta_min`` is near or above the base lr
    and ``T_max`` is in the thousands, after the first minimum.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        T_max: int,
        eta_min: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        _check_optimizer(optimizer)
        _check_real("T_max", T_max, low_open=True)
        _check_real("eta_min", eta_min)
        _check_int("last_epoch", last_epoch, -1)
        super().__init__(optimizer, T_max, eta_min, last_epoch)

    def _get_closed_form_lr(self) -> list[float | Tensor]:
        return [
            schedules.cosine_annealing(self.last_epoch, self.T_max, base_lr, self.eta_min)
            for base_lr in self.base_lrs
        ]


class CosineAnnealingWarmRestarts(_torch.CosineAnnealingWarmRestarts):
    r"""SGDR: cosine annealing restarted every ``T_i`` epochs, ``T_i = T_0 · T_mult^k``.

    The position ``(T_cur, T_i)`` comes from :func:`~torch_gd.schedules.warm_restart_position`,
    so ``step(epoch)`` lands on the right cycle at exact restart epochs and constructing with
    ``last_epoch=N`` resumes in the right cycle for any ``T_mult`` (torch wraps only once).
    Fractional epochs work as in torch: after ``step(2.5)``, ``step()`` goes to 3.5.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        T_0: int,
        T_mult: int = 1,
        eta_min: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        _check_optimizer(optimizer)
        if isinstance(eta_min, (float, int)):  # other types get torch's error
            _check_real("eta_min", eta_min)
        _check_int("last_epoch", last_epoch, -1)
        super().__init__(optimizer, T_0, T_mult, eta_min, last_epoch)

    def get_lr(self) -> list[float | Tensor]:
        _warn_get_lr_called_within_step(self)
        return [
            schedules.cosine_annealing(self.T_cur, self.T_i, base_lr, self.eta_min)
            for base_lr in self.base_lrs
        ]

    def step(self, epoch: float | None = None) -> None:
        """Advance one epoch, or jump to ``epoch`` (which may be fractional)."""
        if epoch is None:
            # T_cur's fractional part is the epoch's: restarts fall on whole epochs.
            epoch = self.last_epoch + 1 + (self.T_cur - math.floor(self.T_cur))
        elif epoch < 0:
            raise ValueError(f"Expected non-negative epoch, but got {epoch}")
        self.T_cur, self.T_i = schedules.warm_restart_position(epoch, self.T_0, self.T_mult)
        # LRScheduler.step adds the 1 back; going through it keeps torch's step-order warning
        # and its in-place lr update.
        self.last_epoch = math.floor(epoch) - 1
        LRScheduler.step(self)


class OneCycleLR(_torch.OneCycleLR):
    r"""The 1cycle policy, torch's arguments and values: :func:`~torch_gd.schedules.one_cycle`.

    With ``cycle_momentum``, a tensor ``momentum`` or ``betas[0]`` is filled in place.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        max_lr: float | list[float],
        total_steps: int | None = None,
        epochs: int | None = None,
        steps_per_epoch: int | None = None,
        pct_start: float = 0.3,
        anneal_strategy: Literal["cos", "linear"] = "cos",
        cycle_momentum: bool = True,
        base_momentum: float | list[float] = 0.85,
        max_momentum: float | list[float] = 0.95,
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
        three_phase: bool = False,
        last_epoch: int = -1,
    ) -> None:
        _check_optimizer(optimizer)
        _check_reals("max_lr", max_lr)
        _check_real("div_factor", div_factor, low_open=True)
        _check_real("final_div_factor", final_div_factor, low_open=True)
        _check_int("last_epoch", last_epoch, -1)
        if cycle_momentum:
            _check_momentum_support(optimizer)
            _check_reals("base_momentum", base_momentum)
            _check_reals("max_momentum", max_momentum)
        self.pct_start = pct_start
        self.three_phase = three_phase
        # torch's constructor would rebind betas/momentum to floats; it gets cycle_momentum=False
        # and the momentum is set up in place below.
        super().__init__(
            optimizer, max_lr, total_steps, epochs, steps_per_epoch, pct_start, anneal_strategy,
            False, base_momentum, max_momentum, div_factor, final_div_factor, three_phase,
            last_epoch,
        )  # fmt: skip
        if cycle_momentum:
            self.cycle_momentum = True
            self.use_beta1 = "betas" in optimizer.defaults
            if last_epoch == -1:
                for group, m_max, m_base in zip(
                    optimizer.param_groups,
                    _format_param("max_momentum", optimizer, max_momentum),
                    _format_param("base_momentum", optimizer, base_momentum),
                    strict=True,
                ):
                    group["max_momentum"] = m_max
                    group["base_momentum"] = m_base
            self._cycle_momentum()

    def _at_step(self, start: float | Tensor, peak: float | Tensor, end: float | Tensor) -> Any:
        return schedules.one_cycle(
            self.last_epoch, self.total_steps, start, peak, end, self.pct_start,
            self._anneal_func_type, self.three_phase,
        )  # fmt: skip

    def _cycle_momentum(self) -> None:
        for group in self.optimizer.param_groups:
            m = self._at_step(group["max_momentum"], group["base_momentum"], group["max_momentum"])
            _set_momentum(group, self.use_beta1, m)

    def get_lr(self) -> list[float | Tensor]:
        _warn_get_lr_called_within_step(self)
        if self.last_epoch > self.total_steps:
            raise ValueError(
                f"Tried to step {self.last_epoch} times. "
                f"The specified number of total steps is {self.total_steps}"
            )
        if self.cycle_momentum:
            self._cycle_momentum()
        return [
            self._at_step(group["initial_lr"], group["max_lr"], group["min_lr"])
            for group in self.optimizer.param_groups
        ]


class CyclicLR(_torch.CyclicLR):
    r"""Cyclical learning rates, torch's arguments and values: :func:`~torch_gd.schedules.cyclic`.

    With ``cycle_momentum``, a tensor ``momentum`` or ``betas[0]`` is filled in place.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        base_lr: float | list[float],
        max_lr: float | list[float],
        step_size_up: int = 2000,
        step_size_down: int | None = None,
        mode: Literal["triangular", "triangular2", "exp_range"] = "triangular",
        gamma: float = 1.0,
        scale_fn: Callable[[float], float] | None = None,
        scale_mode: Literal["cycle", "iterations"] = "cycle",
        cycle_momentum: bool = True,
        base_momentum: float = 0.8,
        max_momentum: float = 0.9,
        last_epoch: int = -1,
    ) -> None:
        _check_optimizer(optimizer)
        _check_reals("base_lr", base_lr)
        _check_reals("max_lr", max_lr)
        _check_real("step_size_up", step_size_up, low_open=True)
        if step_size_down is not None:
            _check_real("step_size_down", step_size_down)
        _check_real("gamma", gamma, low_open=True, high=1.0)  # exp_range's scale stays in (0, 1]
        _check_choice("scale_mode", scale_mode, ["cycle", "iterations"])
        _check_int("last_epoch", last_epoch, -1)
        if cycle_momentum:
            _check_momentum_support(optimizer)
            _check_reals("base_momentum", base_momentum)
            _check_reals("max_momentum", max_momentum)
        # As in OneCycleLR: torch's constructor would rebind betas/momentum to floats.
        super().__init__(
            optimizer, base_lr, max_lr, step_size_up, step_size_down, mode, gamma, scale_fn,
            scale_mode, False, base_momentum, max_momentum, last_epoch,
        )  # fmt: skip
        if cycle_momentum:
            self.cycle_momentum = True
            self.use_beta1 = "betas" in optimizer.defaults
            self.base_momentums = _format_param("base_momentum", optimizer, base_momentum)
            self.max_momentums = _format_param("max_momentum", optimizer, max_momentum)
            if last_epoch == -1:
                for group, m_max, m_base in zip(
                    optimizer.param_groups, self.max_momentums, self.base_momentums, strict=True
                ):
                    group["max_momentum"] = m_max
                    group["base_momentum"] = m_base
            self._cycle_momentum()

    @staticmethod
    def _triangular2_scale_fn(x: float) -> float:
        # Same powers of two as torch's 1 / 2.0 ** (x - 1), which overflows after 1024 cycles.
        return 0.5 ** (x - 1)

    def _at_step(self, low: float | Tensor, high: float | Tensor) -> Any:
        return schedules.cyclic(
            self.last_epoch, low, high, self.total_size, self.step_ratio, self.scale_fn,
            self.scale_mode,
        )  # fmt: skip

    def _cycle_momentum(self) -> None:
        for group, m_base, m_max in zip(
            self.optimizer.param_groups, self.base_momentums, self.max_momentums, strict=True
        ):
            # Momentum runs opposite to the lr: max_momentum at the cycle's ends.
            _set_momentum(group, self.use_beta1, self._at_step(m_max, m_base))

    def get_lr(self) -> list[float | Tensor]:
        _warn_get_lr_called_within_step(self)
        if self.cycle_momentum:
            self._cycle_momentum()
        return [
            self._at_step(base_lr, max_lr)
            for base_lr, max_lr in zip(self.base_lrs, self.max_lrs, strict=True)
        ]


# ---------------------------------------------------------------------------------------------
# torch's schedulers that are not a function of the step: torch's semantics, stricter arguments.


class LambdaLR(_torch.LambdaLR):
    r"""``lr = base_lr · lr_lambda(step)``, torch's class with its argument errors tightened."""

    def __init__(
        self,
        optimizer: Optimizer,
        lr_lambda: Callable[[int], float] | list[Callable[[int], float]],
        last_epoch: int = -1,
    ) -> None:
        _check_optimizer(optimizer)
        _check_int("last_epoch", last_epoch, -1)
        lambdas = lr_lambda if isinstance(lr_lambda, (list, tuple)) else [lr_lambda]
        # A list of the wrong length gets torch's error instead.
        if lambdas is not lr_lambda or len(lambdas) == len(optimizer.param_groups):
            for fn in lambdas:
                if not callable(fn):
                    raise TypeError(
                        f"lr_lambda should be a function, but got {type(fn).__name__}"
                    )
        super().__init__(optimizer, lr_lambda, last_epoch)


class MultiplicativeLR(_torch.MultiplicativeLR):
    r"""``lr_n = lr_{n-1} · lr_lambda(n)``: torch's running product, a manual lr change carries on."""

    def __init__(
        self,
        optimizer: Optimizer,
        lr_lambda: Callable[[int], float] | list[Callable[[int], float]],
        last_epoch: int = -1,
    ) -> None:
        _check_optimizer(optimizer)
        _check_int("last_epoch", last_epoch, -1)
        super().__init__(optimizer, lr_lambda, last_epoch)


class ReduceLROnPlateau(_torch.ReduceLROnPlateau):
    r"""Reduce the lr by ``factor`` when a metric stops improving: torch's semantics and values."""

    def __init__(
        self,
        optimizer: Optimizer,
        mode: Literal["min", "max"] = "min",
        factor: float = 0.1,
        patience: int = 10,
        threshold: float = 1e-4,
        threshold_mode: Literal["rel", "abs"] = "rel",
        cooldown: int = 0,
        min_lr: list[float] | float = 0,
        eps: float = 1e-8,
    ) -> None:
        if isinstance(factor, numbers.Real) and factor < 1.0:  # torch rejects factor >= 1
            _check_real("factor", factor)
        _check_int("patience", patience, 0)
        _check_real("threshold", threshold)
        _check_int("cooldown", cooldown, 0)
        _check_reals("min_lr", min_lr)
        _check_real("eps", eps)
        super().__init__(
            optimizer, mode, factor, patience, threshold, threshold_mode, cooldown, min_lr, eps
        )


# ---------------------------------------------------------------------------------------------
# Composition.


def _leaves(schedulers: Iterable[LRScheduler]) -> Iterator[LRScheduler]:
    for scheduler in schedulers:
        inner = getattr(scheduler, "_schedulers", None)
        if inner is None:
            yield scheduler
        else:
            yield from _leaves(inner)


@contextlib.contextmanager
def _torch_composition(schedulers: Iterable[LRScheduler]) -> Iterator[None]:
    """Let our closed-form schedulers step with torch's recursion, torch's composition rule."""
    switched = [
        s for s in _leaves(schedulers) if isinstance(s, _TorchChainable) and not s._in_chain
    ]
    for s in switched:
        s._in_chain = True
    try:
        yield
    finally:
        for s in switched:
            del s._in_chain


class ChainedScheduler(_torch.ChainedScheduler):
    r"""Step several schedulers together, each applied to the lr the one before it produced.

    torch composes by recursion -- each scheduler rescales the current ``group["lr"]`` -- and
    that is what happens here, so the values are torch's. Resume a chain with
    ``load_state_dict`` on both the optimizer and the chain: the chained lr lives in the optimizer.
    """

    def step(self) -> None:  # type: ignore[override]
        """Step every scheduler, in order."""
        with _torch_composition(self._schedulers):
            super().step()


_STEP_ORDER_WARNING = re.escape("Detected call of `lr_scheduler.step()` before `optimizer.step()`")


class SequentialLR(_torch.SequentialLR):
    r"""Run schedulers one after another, switching at ``milestones``: torch's semantics.

    Constructing with ``last_epoch=N`` gives the state of a fresh SequentialLR after ``N + 1``
    steps, as for every other scheduler; torch's starts over at the first scheduler
    (pytorch#162591). The sub-schedulers must be freshly constructed, as in torch.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        schedulers: list[LRScheduler],
        milestones: list[int],
        last_epoch: int = -1,
    ) -> None:
        _check_int("last_epoch", last_epoch, -1)
        milestones = list(milestones)
        # A milestone at 0, or one not after the previous, would leave a scheduler that never runs.
        if not all(_is_int(m) and m > prev for prev, m in zip([0, *milestones], milestones)):
            raise ValueError(
                f"Invalid milestones value: {milestones!r} "
                "(milestones must be strictly increasing integers >= 1)"
            )
        for i, scheduler in enumerate(schedulers[1:], start=1):
            if hasattr(scheduler, "_schedulers"):
                # torch restarts a later scheduler with _update_lr(0), which a composite lacks.
                raise ValueError(
                    f"Invalid schedulers[{i}]: a {type(scheduler).__name__} can only come "
                    "first in SequentialLR"
                )
        super().__init__(optimizer, schedulers, milestones)
        if last_epoch >= 0:
            with warnings.catch_warnings():
                # Replaying the schedule is not the user stepping out of order.
                warnings.filterwarnings("ignore", message=_STEP_ORDER_WARNING)
                for _ in range(last_epoch + 1):
                    self.step()


# ---------------------------------------------------------------------------------------------
# Schedules torch lacks.


class WarmupCosineLR(_ClosedFormLR):
    r"""Linear warmup over ``warmup_steps``, then cosine decay to ``min_factor`` at ``total_steps``.

    ``lr = base_lr · f(n)`` with :func:`~torch_gd.schedules.warmup_cosine`::

        f(n) = s + (1 - s)·n/W                                     n < W
        f(n) = m + (1 - m)·(1 + cos(π·(min(n, T) - W)/(T - W)))/2  n ≥ W

    where ``s = start_factor``, ``m = min_factor``. ``f(W) = 1`` and ``f(n) = m`` from ``T`` on.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        warmup_steps: int,
        total_steps: int,
        start_factor: float = 0.0,
        min_factor: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        _check_optimizer(optimizer)
        _check_int("warmup_steps", warmup_steps, 0)
        _check_int("total_steps", total_steps, warmup_steps + 1)
        _check_real("start_factor", start_factor, high=1.0)
        _check_real("min_factor", min_factor, high=1.0)
        _check_int("last_epoch", last_epoch, -1)
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.start_factor = start_factor
        self.min_factor = min_factor
        super().__init__(optimizer, last_epoch)

    def _get_closed_form_lr(self) -> list[float | Tensor]:
        return self._scaled(
            schedules.warmup_cosine(
                self.last_epoch, self.warmup_steps, self.total_steps, self.start_factor,
                self.min_factor,
            )
        )  # fmt: skip


class WarmupStableDecayLR(_ClosedFormLR):
    r"""Warmup-stable-decay: linear warmup, the base lr until ``total_steps - decay_steps``, then a
    ``"linear"``, ``"cosine"`` or ``"1-sqrt"`` decay to ``min_factor`` at ``total_steps``.

    ``lr = base_lr · f(n)`` with :func:`~torch_gd.schedules.warmup_stable_decay`; with
    ``S = T - D`` and ``q = (min(n, T) - S)/D``::

        f(n) = s + (1 - s)·n/W          n < W
        f(n) = 1                        W ≤ n < S
        f(n) = m + (1 - m)·g(q)         n ≥ S,   g(q) = 1 - q | (1 + cos πq)/2 | 1 - √q
    """

    def __init__(
        self,
        optimizer: Optimizer,
        warmup_steps: int,
        total_steps: int,
        decay_steps: int,
        decay_type: Literal["linear", "cosine", "1-sqrt"] = "linear",
        start_factor: float = 0.0,
        min_factor: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        _check_optimizer(optimizer)
        _check_int("warmup_steps", warmup_steps, 0)
        _check_int("decay_steps", decay_steps, 1)
        _check_int("total_steps", total_steps, warmup_steps + decay_steps)
        _check_choice("decay_type", decay_type, ["linear", "cosine", "1-sqrt"])
        _check_real("start_factor", start_factor, high=1.0)
        _check_real("min_factor", min_factor, high=1.0)
        _check_int("last_epoch", last_epoch, -1)
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.decay_steps = decay_steps
        self.decay_type = decay_type
        self.start_factor = start_factor
        self.min_factor = min_factor
        super().__init__(optimizer, last_epoch)

    def _get_closed_form_lr(self) -> list[float | Tensor]:
        return self._scaled(
            schedules.warmup_stable_decay(
                self.last_epoch, self.warmup_steps, self.total_steps, self.decay_steps,
                self.decay_type, self.start_factor, self.min_factor,
            )
        )  # fmt: skip


class InverseSqrtLR(_ClosedFormLR):
    r"""Linear warmup over ``warmup_steps``, then ``lr ∝ 1/√n`` (the Transformer schedule).

    ``lr = base_lr · f(n)`` with :func:`~torch_gd.schedules.inverse_sqrt`::

        f(n) = s + (1 - s)·n/W    n < W
        f(n) = √(W/n)             n ≥ W
    """

    def __init__(
        self,
        optimizer: Optimizer,
        warmup_steps: int,
        start_factor: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        _check_optimizer(optimizer)
        _check_int("warmup_steps", warmup_steps, 1)
        _check_real("start_factor", start_factor, high=1.0)
        _check_int("last_epoch", last_epoch, -1)
        self.warmup_steps = warmup_steps
        self.start_factor = start_factor
        super().__init__(optimizer, last_epoch)

    def _get_closed_form_lr(self) -> list[float | Tensor]:
        return self._scaled(
            schedules.inverse_sqrt(self.last_epoch, self.warmup_steps, self.start_factor)
        )
