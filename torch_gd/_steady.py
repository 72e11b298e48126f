"""The steady step: what changed since the last step, decided once for every param group.

Most steps of a training loop are alike: the same params, each with a grad of the same
dtype, layout, device and shape, the state as the last step left it, the same flags, and at
most new values of numbers a scheduler sets (lr, betas, ...) and a new ``clip_grad_norm``
factor where the recorded step had one too. After a checked step that found
every group steady (``Engine.prepare`` took its whole-bucket and prepared paths), a ``Program``
keeps that step's planned work. The next step compares, across all groups at once and mostly
at C speed (``map`` over attribute getters, tuple equality), the params, their grads' metadata
and each group's hyperparameters with what it recorded; where all still hold it runs the same
work with the new grads, skipping every per-group planning pass. Anything else — a missing or
sparse grad, a changed flag or param, edited state, a tensor hyperparameter, GradScaler — is
left to the checked path, which may record a new program.
"""

from __future__ import annotations

import itertools
import operator
from typing import Any, Callable, Optional

from torch import Tensor

from ._state import Basis, State, tracked

grad = operator.attrgetter("grad")
_params = operator.itemgetter("params")
# What a step checks of every grad: (dtype, layout, device, shape).
grad_meta = operator.attrgetter("dtype", "layout", "device", "shape")


class Program:
    """The checked step's work per group (``_Work``), and what must hold to run it again."""

    def __init__(self, groups: list[dict], works: list[Any], state: State,
                 hyper: Callable[[dict], dict[str, Any]], state_keys: Callable[[dict], tuple[str, ...]],
                 handed: tuple) -> None:
        self.groups = list(groups)
        self.lists = [g["params"] for g in groups]
        self.params = [p for g in groups for p in g["params"]]
        self.metas = [grad_meta(p.grad) for p in self.params]
        # The params, each of its dtype and shape, and the state unchanged since this step.
        self.basis = Basis(self.params, state, kinds=True)
        self.works = works
        # What the groups were handed beside their grads (a clip, kinds of GradScaler tensors):
        # a step that hands them something else is planned anew.
        self.handed = handed
        self._hyper, self._state_keys = hyper, state_keys
        # Each group's settings other than its params, as a tuple compared each step; a change
        # in numbers only (same types, flags and zero terms) is taken over by ``_renumber``.
        self.keys = [tuple(k for k in g if k != "params") for g in groups]
        self.getters = [operator.itemgetter(*k) if len(k) > 1 else (lambda g, k=k: tuple(g[x] for x in k))
                        for k in self.keys]
        self.values = [get(g) for get, g in zip(self.getters, groups)]
        self.types = [tuple(map(type, v)) for v in self.values]
        self.bounds = list(itertools.accumulate([0] + [len(g["params"]) for g in groups]))
        # How many times a group has taken new numbers (``_renumber``): a lane whose groups share
        # numbers checks, when it grows, that they still do (``Lane.shares``).
        self.renumbered = 0

    @staticmethod
    def eligible(groups: list[dict], works: list[Any], state: Any) -> bool:
        """Whether a step that planned ``works`` (one per group) can be replayed: every param of
        every group had a grad and took the steady path, and nothing it read can change unseen
        (a plain dict stored as state, a tensor hyperparameter read in place)."""
        if not tracked(state) or len(works) != len(groups):
            return False
        for group, work in zip(groups, works):
            if work is None or not work.whole or not work.complete or work.group is not group:
                return False
            if group.get("differentiable") or any(isinstance(v, Tensor) for v in group.values()):
                return False
            if work.fused is not None and (not work.fused.plain or (work.loose and not work.direct)):
                return False
        params = [p for g in groups for p in g["params"]]
        return len(set(map(id, params))) == len(params)

    def grads(self, groups: list[dict], state: State) -> Optional[list[Tensor]]:
        """This step's grads, in the recorded order, if the program still describes the step;
        else None (nothing was changed either way)."""
        if len(groups) != len(self.groups) or not all(map(operator.is_, groups, self.groups)):
            return None
        if not all(map(operator.is_, map(_params, groups), self.lists)):
            return None
        if not self.basis.holds(list(itertools.chain.from_iterable(self.lists)), state):
            return None
        grads = list(map(grad, self.params))
        try:
            if list(map(grad_meta, grads)) != self.metas:
                return None
        except AttributeError:  # a grad is None
            return None
        for i, (get, group) in enumerate(zip(self.getters, groups)):
            try:
                values = get(group)
            except KeyError:  # a setting was deleted from the group
                return None
            if tuple(map(type, values)) != self.types[i]:
                return None
            if values != self.values[i] and not self._renumber(i, values):
                return None
        return grads

    def _renumber(self, i: int, values: tuple) -> bool:
        """Take over new hyperparameter values of group ``i`` (a scheduler's lr, changed betas)
        where they change no flag and switch no term on or off (the kernels stay the same)."""
        group, work = self.groups[i], self.works[i]
        hyper = self._hyper(group)
        if any(isinstance(v, Tensor) for v in hyper.values()) or self._state_keys(group) != work.keys:
            return False
        # A precision policy changed: other state, other kernels.
        if any(not isinstance(v, (int, float)) and v != work.kw.get(k) for k, v in hyper.items()):
            return False
        # A term switched on or off (momentum from 0) may change what the rule keeps or reads.
        if any((work.kw.get(k) == 0) != (v == 0) for k, v in hyper.items() if isinstance(v, (int, float))):
            return False
        if work.fused is not None and not work.fused.renumber(hyper):
            return False
        work.kw.update(hyper)
        self.values[i] = values
        self.renumbered += 1
        return True
