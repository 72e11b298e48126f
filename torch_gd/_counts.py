"""Step counts: what the engine knows of how many steps each param has taken, in one owner.

A step count is needed for bias corrections, for grouping params that stepped together, and for
knowing a first step. The device holds the counts that count (torch's ``step`` tensors, the
packed buckets' ``steps``, the private counters of fused rules without ``step``); ``StepCounts``
mirrors them on the host, so that grouping and non-capturable bias corrections never read a
device tensor, and says when the mirror cannot be trusted:

- after GradScaler skipped steps on the device, params with equal host counts may have taken
  different real numbers of steps (``histories``);
- after steps traced by dynamo, which advance only the tensors (``stale``);
- after a step tensor was written in place between steps (``state[p]["step"].fill_(0)``), which
  its version counter shows (``edited``).
"""

from __future__ import annotations

from typing import Hashable, Iterable, Optional

import torch
from torch import Tensor

from ._state import Basis


class StepCounts:
    """Every param's step count on the host, by ``id(param)``, and what it rests on. Fused rules
    without torch's ``step`` (SGD) still count applied steps, on the device and here, for their
    large params."""

    def __init__(self) -> None:
        # Steps taken, by id(param): ints hash faster than tensors.
        self.host: dict[int, int] = {}
        # A per-tensor param's device counter as last advanced: torch's ``step`` tensor (another
        # tensor there now means the user replaced it, and its count is read back), or for a
        # fused rule without ``step``, the private counter itself.
        self.counters: dict[int, Tensor] = {}
        # GradScaler may skip a fused step on the device, unknown to the host counts: params
        # that took part in different such steps may have equal host counts and different real
        # ones. Each param's history names the GradScaler steps it took part in (none: absent),
        # so that only params with one history share a run or a step's numbers.
        self._histories: dict[int, int] = {}
        self._scaled_steps = 0
        # Whether GradScaler ever took part: until then the host counts are the device ones,
        # and a steady fused step's numbers are computed on the host (``Prepared.refresh``).
        self.scaled = False
        # Steps traced by dynamo (a user's ``torch.compile`` around ``step()``) advance the step
        # tensors and leave the host counts behind: dynamo would guard on each count and compile
        # the step anew for every value. They set this; the next eager step reads the counts back.
        self.stale = False
        # Steps of eager groups with a precision policy, for rules without a step count: the
        # counter stochastic rounding's random bits are drawn at. A tensor, so that a compiled
        # step (torch.compile around ``step()``) reads it rather than guarding on its value.
        self.rounds = torch.zeros((), dtype=torch.int64)
        # The step tensors the last eager step advanced, with their version counters as it left
        # them (``left``).
        self._left: Optional[Basis] = None

    def read(self, pid: int, st: dict) -> int:
        """Steps taken so far: the mirror, or once after a load or a replaced ``step``, the
        value stored in ``st["step"]``."""
        count = self.host.get(pid)
        if count is None:
            count = self.host[pid] = int(float(st.get("step", 0)))
        return count

    def reread(self, pid: int) -> None:
        """Forget one param's mirrored count: its ``step`` was replaced, and is read again."""
        self.host.pop(pid, None)

    def seen(self, pid: int, step: Tensor) -> None:
        """Note ``step`` as the param's counter; a different tensor found there later was put
        there by the user (``replaced``)."""
        self.counters[pid] = step

    def replaced(self, pid: int, step: Tensor) -> bool:
        """Whether ``step`` is not the counter this param was last advanced through."""
        seen = self.counters.get(pid)
        return seen is not None and step is not seen

    def set(self, pids: Iterable[int], count: int) -> None:
        """Every param of ``pids`` has now taken ``count`` steps."""
        self.host.update(dict.fromkeys(pids, count))

    def forget(self) -> None:
        """After steps traced by dynamo: the counts are read back from the ``step`` tensors."""
        self.host.clear()
        self.stale = False

    def left(self, steps: list[Tensor]) -> None:
        """Note the step tensors (or their bases) an eager step has just advanced, as it left them."""
        self._left = Basis(steps, versions=True)

    def edited(self) -> None:
        """Before a step: where a step tensor was written since the last step left it, the host
        counts are ``stale``: they are read back from the tensors, as after traced steps."""
        if self._left is not None and not self._left.holds(self._left.params):
            self.stale = True
            self._left = None

    def private_counter(self, pid: int, fresh: bool, made: Optional[Tensor]) -> Tensor:
        """A fused rule without torch's ``step`` still counts applied steps, on the device and
        here (for sharing a step's scalars between params): the param's counter, advanced.
        ``made``: the counter allocated for its first step, or for a param counted for the
        first time (then it has taken one step at least)."""
        step = self.counters.get(pid)
        if made is not None:
            step = self.counters[pid] = made
        if torch.compiler.is_compiling():
            self.stale = True
        else:
            self.host[pid] = 1 if fresh else self.host.get(pid, 1) + 1
        return step.add_(1)

    # ------------------------------------------------------------ GradScaler histories

    @property
    def diverged(self) -> bool:
        """Whether GradScaler steps may have given params different real counts."""
        return bool(self._histories)

    def history(self, pid: int) -> int:
        return self._histories.get(pid, 0)

    def shared(self, count: int, pid: int) -> Hashable:
        """What a fused step's numbers are shared under between params (``Call.step_numbers``):
        the host count, and once GradScaler steps have given params different histories, the
        param's history with it."""
        return (count, self._histories.get(pid, 0)) if self._histories else count

    def took_scaled_step(self, pids: Iterable[int]) -> None:
        """Record that these params took part in one more GradScaler step."""
        self._scaled_steps += 1
        histories = self._histories
        for pid in pids:
            histories[pid] = hash((histories.get(pid, 0), self._scaled_steps))
