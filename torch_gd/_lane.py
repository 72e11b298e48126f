"""The steady step's large params, across every fused param group at once.

A recorded steady step (``_steady.Program``) of fused groups calls one prepared kernel per
large param (``Engine._prepare_direct``). Done group by group, each group pays its own checks,
step-counter op and version bumps: ~40 µs a group on the CPU, so resnet50 with a group per
tensor spent 6.4 ms of host time a step against 1.9 ms with one group. A ``Lane`` does that
work once for all groups: the params' storage, offsets and strides (``Basis``) and the
grads' layouts compared in one pass at C speed, one op advancing every counter (they become
views of one tensor), and one version bump; per group there remain its step's numbers and its
kernel calls.
"""

from __future__ import annotations

import operator
from typing import Any, Callable, Optional

from torch import Tensor
from torch.autograd.graph import increment_version

from ._counts import StepCounts
from ._fused import numpy_view, run_call, storage_order
from ._private import one_thread, restore_threads
from ._state import Basis

_contiguous = Tensor.is_contiguous
_flat = operator.methodcaller("view", -1)
# CPU kernels of params up to this size run on one thread (``_private.one_thread``): the
# OpenMP team each call opens costs more than it saves below ~2-8k elements (2 cores, quiet:
# ~0.3 µs a call; with the other core busy, ~1.5 µs).
SERIAL_MAX_NUMEL = 1 << 11


class Lane:
    """The prepared large-param calls of ``works`` (the fused works of a program with them, or
    none), in order: which of the step's grads they take (``pick``), what must still hold of
    their params, and the one counter tensor they advance, if their counters share a device and
    dtype."""

    def __init__(self, works: list[Any], params: list[Tensor], pick: Callable[[list], Any], counters: Optional[Tensor],
                 rest: list[tuple[int, bool]], scaled: bool, renumbered: int) -> None:
        self.works = works
        # The program's works that still run one by one, by index, each with whether it is in
        # the lane (then only its buckets run one by one).
        self.rest = rest
        self.pick = pick
        self.entries = entries = [e for w in works for e in w.plan.direct]
        self.params = params
        # The params as their calls were prepared for (``_Direct.alias``).
        self.basis = Basis(params, storage=[e.alias for e in entries])
        # Where every param is contiguous, grads are checked at C speed and passed as they are
        # to calls that read them by address (``Prepared.any_shape``), else viewed 1-D;
        # otherwise they are checked and viewed per param.
        self.contiguous = all(e.contiguous for e in entries)
        self.any_shape = all(w.plan.launch.any_shape for w in works)
        self.counters = counters
        # On the CPU, the counters advance through a NumPy view (~0.7 µs against ~2.4 µs for
        # ``add_``); the version bump below covers them.
        self.counts_array = numpy_view(counters) if counters is not None else None
        # Each call with the index of its grad: those of params small enough to run on one
        # thread, and the rest (``SERIAL_MAX_NUMEL``).
        self.serial: list[tuple[tuple, int]] = []
        self.parallel: list[tuple[tuple, int]] = []
        # Works whose numbers are equal at every step (the same settings and step count, and no
        # step skipped on the device: ``scaled``) read the numbers of the first of them, which
        # alone loads them: one write a step, where each group's cost ~1.5 µs on the CPU and a
        # copy per group on CUDA. ``scaled`` as built, and the program's count of renumbered
        # groups (``Program.renumbered``) when the sharing was last known to hold (``shares``).
        self.scaled, self.renumbered = scaled, renumbered
        self.loading: list[Any] = []
        self.followers: list[tuple[Any, Any]] = []
        first: dict[tuple, Any] = {}
        calls = []
        for w in works:
            key = None if scaled or w.fused.values_key is None else (w.fused.values_key, w.plan.direct_count)
            lead = w if key is None else first.setdefault(key, w)
            swap = None if lead is w else _swap(w.plan.launch.boxes, lead.plan.launch.boxes)
            if swap is None:
                self.loading.append(w)
                calls += w.plan.launch.calls
            else:
                self.followers.append((w, lead))
                calls += [(kernel, [swap.get(id(x), x) for x in inputs], at, bare)
                          for kernel, inputs, at, bare in w.plan.launch.calls]
        for j, (e, call) in enumerate(zip(entries, calls)):
            serial = e.device.type == "cpu" and e.p.numel() <= SERIAL_MAX_NUMEL
            (self.serial if serial else self.parallel).append((call, j))
        # Every step tensor a replayed step advances (``StepCounts.left``), set by the engine.
        self.steps: list[Tensor] = []
        self.written = [t for w in works for t in w.plan.launch.written]
        if self.counts_array is not None:
            self.written.append(counters)

    def shares(self, renumbered: int) -> bool:
        """Whether the works that read another's numbers still have its settings, after
        ``renumbered`` groups have taken new numbers in all (a scheduler's lr)."""
        if renumbered != self.renumbered:
            if not all(w.fused.values_key == lead.fused.values_key for w, lead in self.followers):
                return False
            self.renumbered = renumbered
        return True

    def grads(self, grads: list[Tensor]) -> Optional[list[Tensor]]:
        """The lane's grads from the step's (in program order, already checked for dtype,
        device and shape) as the calls take them (1-D, or as they are where every call reads
        them by address), if the prepared calls still describe their params (not rebound by
        ``p.data = ...``) and grads; else None."""
        params = self.params
        if not self.basis.holds(params):
            return None
        mine = self.pick(grads)
        if self.contiguous:
            if not all(map(_contiguous, mine)):
                return None
            return list(mine) if self.any_shape else list(map(_flat, mine))
        return direct_grads(self.entries, list(zip(params, mine)), checked=True, basis=None)

    def run(self, grads: list[Tensor], amp: tuple[Optional[Tensor], Optional[Tensor]], counts: StepCounts) -> None:
        """Every call, with this step's GradScaler (or folded clip) tensors ``amp``: the counters
        advanced, each group's numbers loaded (computed once for groups with the same settings
        and count), its kernels run, the host counts (``counts``) and the version counters of
        what was written bumped."""
        scaled = counts.scaled
        if self.counts_array is not None:
            self.counts_array += 1
        elif self.counters is not None:
            self.counters.add_(1)
        given = amp != (None, None)
        shared: dict[tuple, dict[str, Any]] = {}
        if given or self.counters is None:
            for work in self.works:
                if given:
                    work.fused.load_amp(*amp)
                if self.counters is None:
                    work.plan.advance()
        for work in self.loading:
            plan, fused = work.plan, work.fused
            count = plan.direct_count + 1
            values = None
            if not scaled and fused.values_key is not None:
                key = (fused.values_key, count)
                values = shared.get(key)
                if values is None:
                    values = shared[key] = fused.host_numbers(count)
            plan.launch.refresh(fused, count, None if scaled else count, values)
        if self.serial:
            threads = one_thread()
            try:
                for call, j in self.serial:
                    run_call(call, grads[j])
            finally:
                restore_threads(threads)
        for call, j in self.parallel:
            run_call(call, grads[j])
        for work in self.works:
            if work.fused.found_inf is not None:
                work.fused.wind_back(work.plan.counters())
            work.plan.stepped(counts)
        if self.written:
            increment_version(self.written)


def _swap(mine: dict[tuple, dict[str, Tensor]], theirs: dict[tuple, dict[str, Tensor]]) -> Optional[dict[int, Tensor]]:
    """By ``id``, each of a prepared call's number boxes (``Prepared.boxes``) and the same
    number's box of another; None where their kinds or names differ."""
    if mine.keys() != theirs.keys() or any(mine[kind].keys() != theirs[kind].keys() for kind in mine):
        return None
    return {id(t): theirs[kind][name] for kind, box in mine.items() for name, t in box.items()}


def direct_grads(entries: list[Any], loose: list[tuple[Tensor, Tensor]], checked: bool,
                 basis: Optional[Basis]) -> Optional[list[Tensor]]:
    """The grads of params with prepared calls (``_engine._Direct``), 1-D as the calls take
    them, if the calls still describe the params (``basis``: their storage as the calls were
    prepared for, which ``p.data = ...`` changes; None: checked already) and their grads (the
    param's layout, and unless ``checked`` already, its shape, dtype and device); else None."""
    if basis is not None and not basis.holds([p for p, _ in loose]):
        return None
    grads = []
    for e, (p, g) in zip(entries, loose):
        if not checked and (p.shape != e.shape or g.shape != e.shape or g.dtype is not e.dtype or g.device != e.device):
            return None
        if e.contiguous:
            if not g.is_contiguous():
                return None
            grads.append(g.view(-1))
        elif g.stride() == e.stride:
            grads.append(storage_order(g))
        else:
            return None
    return grads
