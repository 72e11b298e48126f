"""The engine: buckets, packing and the paths (per-tensor, packed, fused) every optimizer shares.

Per param group, params are split by size. Small ones (at most ``PACK_MAX_NUMEL`` elements, or
``FUSED_PACK_MAX_NUMEL`` in fused groups whose kernels are called directly, and at least two, or
``FUSED_PACK_MIN_PARAMS`` there, of one kind) are packed per (device, dtype) into a bucket: their state lives in one flat buffer per state key, and
``optimizer.state[p]`` holds views of it in torch's key names and the param's shape and strides.
Each step gathers their grads and values into flat scratch buffers, runs the rule once over the
flat buffers, and copies the new values back, so a step costs a few ops per bucket instead of a
few ops per tensor. Large params are updated in place, one rule call each: there the per-tensor
cost is small against the memory traffic, and packing would add two copies of it.

Packing keeps torch's per-param semantics: params whose grad is None are neither gathered nor
written back, and params that differ in how many steps they have taken (a late first grad, a load
of a checkpoint) are updated in separate runs of the flat buffers, each with its own step count.
The fused path (``_fused``) runs the compiled rule where the eager paths call the rule itself.

``prepare`` does all that can fail for one group (checks, re-packing, allocation, compiling) and
``execute`` only writes; a step that finds nothing changed replays the last checked step's work
(``record``/``replay``, ``_steady.Program``).
"""

from __future__ import annotations

import functools
import itertools
import operator
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Optional

import torch
from torch import Tensor

from . import _checks, _fused, _ops, _precision
from ._clip import PendingClip
from ._counts import StepCounts
from . import _private
from ._private import is_fake
from ._ops import real_view
from ._fused import Call, Prepared, storage_order
from ._lane import Lane, direct_grads
from ._many import EXACT_DTYPES, Many
from ._scatter import Scatter
from ._state import Basis, State, param_kind, repoint, tracked
from ._steady import Program

# A tensor this small costs more in per-op overhead (a few µs per op and tensor on the CPU:
# the eager rule makes 4-6 ops per tensor) than the three extra passes packing makes over it.
# A rule of fewer ops breaks even lower (``Spec.pack_max_numel``).
PACK_MAX_NUMEL = 1 << 15
# The same trade for fused groups whose kernels are called directly (``_private``): ~4 µs a
# tensor (a 1-D view of its grad and the call) against ~0.6 ns an element for the copies, and
# a bucket's own ~25 µs a step (a dozen ops), which fewer than ``FUSED_PACK_MIN_PARAMS``
# params do not repay (measured on 5-12-tensor models: all per tensor was 10-20% faster).
FUSED_PACK_MAX_NUMEL = 1 << 12
FUSED_PACK_MIN_PARAMS = 16
# Param values pass through a bucket's param buffer this many elements at a time: gathered,
# updated and written back while they are still in cache (1 MB of fp32 against 1 MB of L2 per
# core and 32 MB of L3 here), so a packed step streams each param from memory about once, and
# the buffer costs a chunk rather than a copy of the params.
CHUNK_NUMEL = 1 << 18
# A steady eager step updates per-tensor params of one device and dtype together, through torch's
# multi-tensor ops (``Many``), up to this many elements at a time: each needs its own scratch, so
# a run's scratch is at most this or its one param (measured: ``benchmarks/eager_runs.py``).
RUN_MAX_NUMEL = 1 << 18
# ``_Bucket.uniform`` after steps traced by dynamo: every param of the bucket at one step count,
# which only the step tensors hold (``StepCounts.stale``).
_ON_DEVICE = -1


@dataclass
class Spec:
    """What the engine needs to know about an optimizer's rule.

    ``rule(p, g, first=..., step=..., scratch=..., **state, **hyper)`` updates ``p`` and the
    state tensors in place; the state tensors are passed by their torch key names (the
    optimizer's ``_state_keys(group)``), as real views for complex params. ``uses_step`` keeps
    torch's 0-dim ``step`` tensor per param and passes the step count to the rule.
    ``uses_first`` marks rules that read ``first``. ``init`` fills a state tensor (a real view)
    before its param's first step. ``coefficients(step, **hyper)`` derives the step's scalars
    the rule reads (bias corrections), so that a fused kernel gets them precomputed.
    ``pack_max_numel`` lowers the packing threshold (``PACK_MAX_NUMEL``) and ``pack_min_params``
    raises the number of params a bucket needs, for rules of few ops.
    """

    rule: Callable[..., None]
    uses_step: bool = False
    uses_first: bool = False
    init: Callable[[str, Tensor, dict], Any] = lambda key, t, group: t.zero_()
    coefficients: Optional[Callable[..., dict[str, Any]]] = None
    pack_max_numel: Optional[int] = None
    pack_min_params: int = 2

    def with_coefficients(self, kw: dict[str, Any]) -> dict[str, Any]:
        """``kw`` plus the step's scalar coefficients (bias corrections, decayed rates): a
        function of the step and the hyperparameters, computed once per run rather than
        inside the elementwise update."""
        if self.coefficients is not None:
            kw.update(self.coefficients(**kw))
        return kw


@dataclass(eq=False)
class _Bucket:
    """Small params of one (param group, device, dtype), their flat state and scratch buffers."""

    params: list[Tensor]
    offsets: list[int]
    # The state tensors of its params and their dtypes (the rule's and the precision policy's).
    keys: tuple[str, ...]
    flat: dict[str, Tensor]
    views: list[dict[str, Tensor]]
    steps: Optional[Tensor]
    step_views: list[Optional[Tensor]]  # torch's 0-dim ``step`` per param, views of ``steps``
    # One chunk (``_Chunk``) of grads and of param values, and each param's segment of them,
    # made when first needed (``_views``): a view costs ~0.9 KB, and steady steps use none but
    # those of params ``torch.cat`` cannot take.
    gbuf: Tensor
    gviews: list[Optional[Tensor]]
    pbuf: Tensor
    pviews: list[Optional[Tensor]]
    starts: list[int]  # where each param's chunk starts in the flat state
    dtype: torch.dtype
    # Per param, the tensor that must still be ``state[p][probe]`` if nobody replaced it.
    probes: list[Optional[Tensor]]
    chunks: list["_Chunk"]
    ids: list[int]
    # The step count every param has when all stepped together last time, else None.
    uniform: Optional[int] = None
    # Picks this bucket's entries out of the group's per-param list (set by the plan).
    take: Callable[[list], Any] = tuple
    # Fused CPU buckets copy param values through their addresses (``Scatter``; None: not built
    # yet, False: the params do not allow it).
    scatter: Any = None
    # What each param's grad must be, as the optimizer reads it: (dtype, layout, device, shape).
    metas: tuple = ()
    # For fused groups, the chunks' kernel calls prepared after a step of the whole bucket.
    launch: Optional[Prepared] = None
    # Each param's (shape, strides) when packed: its segments of the flat buffers keep them,
    # whatever the param's layout becomes (``model.to(memory_format=...)``), and copies convert.
    layouts: list[tuple[torch.Size, tuple[int, ...]]] = field(default_factory=list)
    # Each param's ``param_kind`` when packed: ``p.data = ...`` may change it under its grad.
    kinds: list[tuple[torch.dtype, torch.Size]] = field(default_factory=list)


@dataclass(eq=False)
class _Chunk:
    """Bucket params ``[lo, hi)``, whose grads and values share the grad and param buffers,
    starting at element ``start`` of the flat state, and how they concatenate into them
    (``_cat_runs``: ``runs`` hold a view of each buffer)."""

    lo: int
    hi: int
    start: int
    runs: list[tuple[int, int, Tensor, Tensor]]
    rest: list[int]
    # What runs over the whole chunk take every step, made at the first (``_kept``): the eager
    # rule's tensors (``"rule"``) and the views values are written back from (``"back"``).
    kept: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Plan:
    keys: tuple[str, ...]
    on_device: bool
    counted: bool
    policy: tuple  # the group's (param_update, state_dtype)
    buckets: list[_Bucket]
    where: dict[int, tuple[_Bucket, int]]
    params: list[Tensor]  # the group's distinct params when planned
    take_loose: Callable[[list], Any]
    # The params and ``optimizer.state`` as the last step that saw every param's state left
    # them, else None: until they change, a step needs no per-param check of the state.
    basis: Optional[Basis] = None
    # For fused groups, the per-tensor params' kernel calls prepared once (``_Direct``), in
    # ``take_loose`` order, and the step count they share; None where that cannot be done.
    direct: Optional[list["_Direct"]] = None
    direct_count: Optional[int] = None
    direct_ids: list[int] = field(default_factory=list)
    # The params as ``direct``'s calls were prepared for (their storage: ``_Direct.alias``).
    direct_basis: Optional[Basis] = None
    # Their kernel calls prepared for the flags and numbers of the step that prepared them.
    launch: Optional[Prepared] = None
    # The last fused step's call (flags, numbers, kernels), reused while they are the same.
    call: Optional[Call] = None
    # The step counters of ``direct``, as one tensor when they share a device and dtype.
    direct_counters: Optional[Tensor] = None
    # For eager groups, the per-tensor params as steady steps update them (``_LooseRun``), and
    # what they were read from: the params, each of its dtype and shape, and the state.
    loose_runs: Optional[list["_LooseRun"]] = None
    loose_basis: Optional[Basis] = None

    def counters(self) -> list[Tensor]:
        """The tensors holding ``direct``'s step counters: one, or one per param."""
        return [self.direct_counters] if self.direct_counters is not None else [e.step for e in self.direct]

    def advance(self) -> None:
        """Advance ``direct``'s step counters by one step."""
        if self.direct_counters is not None:
            self.direct_counters.add_(1)
        else:
            torch._foreach_add_(self.counters(), 1)

    def stepped(self, counts: StepCounts) -> None:
        """Note on the host that ``direct``'s params have taken one more step."""
        self.direct_count += 1
        counts.set(self.direct_ids, self.direct_count)


@dataclass(eq=False)
class _Direct:
    """A large param's fused update prepared once: 1-D views of it and its state in storage
    order, its step counter, and what a step checks to know they still describe it: the param
    as it was (``alias``: its storage, offset, sizes and strides; see ``Basis``)."""

    alias: Tensor
    shape: torch.Size
    stride: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device
    contiguous: bool
    p: Tensor
    states: dict[str, Tensor]
    step: Tensor


@dataclass(eq=False)
class _LooseRun:
    """Per-tensor params of an eager group that a steady step updates together: their positions
    among the group's per-tensor params (``_Plan.take_loose`` order), what each one's rule takes
    besides its grad (its state tensors by key, its ``step`` tensor for rules that count, its
    scratch buffer, disjoint from the others'), and for a run of several, the same as ``Many``
    lists: one rule call then updates them all through torch's multi-tensor ops."""

    at: list[int]
    params: list[Tensor]
    states: list[dict[str, Tensor]]
    steps: list[Tensor]
    scratch: list[Optional[Tensor]]
    ids: list[int]
    # The params as ``Many``, and the rule's other tensors (state by key, ``scratch``) as ``Many``.
    many: Optional[tuple[Many, dict[str, Any]]] = None


@dataclass
class _Work:
    """One group's step, planned by ``Engine.prepare`` and applied by ``Engine.execute``.

    ``packed`` maps a bucket to its (index, param, grad, fresh) items, or for a whole bucket in
    the steady state (``whole``) to its grads, in bucket order, checked to be gatherable."""

    group: dict
    keys: tuple[str, ...]
    on_device: bool
    packed: dict[_Bucket, list]
    loose: list[tuple[Tensor, Tensor]]
    kw: dict[str, Any]
    fused: Optional[_fused.Call]
    plan: _Plan
    whole: bool
    complete: bool  # every param of the group has a grad this step
    direct: bool = False  # the loose params run through ``plan.direct``
    # State the per-tensor params' step creates, allocated by ``prepare`` (``Engine._allocate``).
    made: dict = field(default_factory=dict)
    # With ``direct``, the loose params' grads as the prepared calls take them (1-D).
    direct_grads: Optional[list[Tensor]] = None
    # An eager step's pending ``clip_grad_norm``: its factor scales each grad as it enters the rule.
    clip: Optional[PendingClip] = None
    # Every number of ``kw`` a Python number (no tensor lr, betas, ...): the rule may run over ``Many``.
    plain: bool = False

    def release(self) -> None:
        """Drop this step's grads once it has run: a recorded step that kept them would keep
        every grad alive through ``zero_grad()`` and the next backward."""
        self.packed = dict.fromkeys(self.packed, ())
        self.loose, self.direct_grads = [], None

    @property
    def precise(self) -> bool:
        """Whether the group sets a precision policy: its rule runs through ``_precision.run``."""
        return "param_update" in self.kw

    def layout(self, dtype: torch.dtype) -> dict[str, torch.dtype]:
        """The state tensors a param of ``dtype`` keeps, and their dtypes."""
        return _precision.state_dtypes(self.keys, self.kw, dtype)


def _handed(amp: tuple[Optional[Tensor], Optional[Tensor]], clip: Optional[PendingClip]) -> tuple:
    """What a step hands its groups beside their grads: the fused ones GradScaler's or a folded
    clip's tensors (their kinds), the eager ones a clip or not."""
    return _fused.kinds(amp), clip is not None


def _segment_view(flat: Tensor, shape: torch.Size, stride: tuple[int, ...], offset: int) -> Tensor:
    """A view of ``flat[offset:offset+numel]`` with this shape, and these strides when they
    are dense.

    Giving params, grads and state the same strides inside the flat buffer keeps the flat update
    elementwise-correct whatever the layout (channels_last, transposed); a param with gaps gets
    a contiguous segment, and the gather/scatter copies convert between the two.
    """
    if _dense(shape, stride) and stride != _contiguous_strides(shape):
        return flat.as_strided(shape, stride, offset)
    # A slice and a view, not as_strided, where they give the same strides: a compiled step
    # (torch.compile around ``step()``) cannot write through an as_strided view.
    return flat[offset : offset + shape.numel()].view(shape)


def _contiguous_strides(shape: torch.Size) -> tuple[int, ...]:
    strides, expected = [], 1
    for size in reversed(shape):
        strides.append(expected)
        expected *= max(size, 1)
    return tuple(reversed(strides))


def _dense(shape: torch.Size, stride: tuple[int, ...]) -> bool:
    """Whether these strides place ``shape.numel()`` elements in as many consecutive slots."""
    expected = 1
    for st, size in sorted((st, s) for s, st in zip(shape, stride) if s != 1):
        if st != expected:
            return False
        expected *= size
    return True


def scalar_dtype() -> torch.dtype:
    """torch's dtype for ``step``: float32, or float64 when that is the default dtype."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


class Engine:
    """Plans buckets per param group and runs a spec's rule over them."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.counts = StepCounts()
        self.sparse: set[int] = set()
        self._plans: dict[int, _Plan] = {}
        self._scratch: dict[tuple[torch.device, torch.dtype], Tensor] = {}
        self._scratch_views: dict[int, tuple[int, Tensor]] = {}  # by id(param): (offset, view)
        self._program: Optional[Program] = None
        # The recorded program's large-param calls across groups (``_lane``): None until built
        # at its first replay.
        self._lane: Optional[Lane] = None
        # Steps run by the recorded program, by the checked path, and group steps whose fused
        # kernels ran from prepared calls (``describe``).
        self.counts_of = {"replayed": 0, "checked": 0, "prepared": 0}

    def describe(self) -> dict[str, Any]:
        """What the engine has built and done (see ``Optimizer.describe``)."""
        groups, kernels = {}, {}
        for gi, plan in sorted(self._plans.items()):
            groups[gi] = {
                "buckets": [{"device": b.pbuf.device, "dtype": b.dtype, "params": len(b.params),
                             "numel": b.offsets[-1], "chunks": len(b.chunks),
                             "copies": None if b.scatter is None else ("addresses" if b.scatter else "foreach")}
                            for b in plan.buckets],
                "per_tensor": len(plan.take_loose(plan.params)),
                "prepared": plan.launch is not None,
                "runs": [r.ids for r in plan.loose_runs or ()],
            }
            if plan.call is not None:
                for k in plan.call.kernels():
                    kernels[(k["rule"], tuple(sorted(k["statics"].items())), k["dtype"], k["device"])] = k
        lane = self._lane
        return {"private_apis": _private.enabled(), "groups": groups, "kernels": list(kernels.values()),
                "steps": dict(self.counts_of),
                "lane": None if lane is None else {"groups": len(lane.works), "calls": len(lane.serial) + len(lane.parallel),
                                                   "one_thread": len(lane.serial), "loading": len(lane.loading)}}

    def kernel_calls(self) -> Callable[[], None]:
        """The recorded steady step's compiled update kernels alone (``Optimizer.kernel_calls``)."""
        program = self._program
        if program is None or any(work.fused is None for work in program.works):
            raise RuntimeError("kernel_calls() needs a recorded steady fused step: two steps of fused=True "
                               "groups, every param with a grad, and nothing changed in between")
        calls = []
        for work in program.works:
            plan = work.plan
            launches = [(b.launch, [None] * len(b.launch.calls) if b.launch else []) for b in plan.buckets]
            loose = plan.take_loose(plan.params)
            if loose:
                grads = None
                if work.direct and plan.launch is not None and all(p.grad is not None for p in loose):
                    grads = direct_grads(plan.direct, [(p, p.grad) for p in loose], checked=False,
                                         basis=plan.direct_basis)
                launches.append((plan.launch if grads is not None else None, grads or []))
            if not all(launch for launch, _ in launches):
                raise RuntimeError("kernel_calls(): a group's kernel calls were not prepared at the last step, "
                                   "or its large params' grads have gone or changed since")
            calls += [functools.partial(launch.run, i, g) for launch, grads in launches for i, g in enumerate(grads)]

        def run() -> None:
            for call in calls:
                call()
        return run

    def invalidate(self) -> None:
        """Forget every plan: state is re-read and re-packed at the next step."""
        self._plans.clear()
        self.forget_program()

    def forget_program(self) -> None:
        """Forget the recorded steady step (a step it does not describe has run since)."""
        self._program = self._lane = None

    def begin(self) -> None:
        """Before an eager step: note what changed since the last one that no cache sees by
        itself, a step tensor written in place (``StepCounts.edited``)."""
        self.counts.edited()

    def leave(self, works: list[Optional["_Work"]], state: dict) -> None:
        """After a checked eager step, once every group has run: note what it leaves. A group
        whose step saw every param's state keeps its plan until its params or the state change
        (``_Plan.basis``, taken once every group has made its new state: any group's new state
        changes the state's version); and the step tensors (``StepCounts.left``)."""
        done = [w for w in works if w is not None]
        seen = tracked(state)
        for work in done:
            plan = work.plan
            if not (seen and work.complete):
                plan.basis = None
            elif plan.basis is None or plan.basis.version != state.version:
                plan.basis = Basis(plan.params, state)
        self.counts.left(self._step_tensors(done, state))

    def _step_tensors(self, works: list["_Work"], state: dict, lane: Optional[Lane] = None) -> list[Tensor]:
        """The step tensors of ``works``' params, for rules with torch's ``step``: each bucket's
        ``steps``; the counters ``lane`` advances for all its works, each other group's shared
        large-param counters, or each other per-tensor param's own ``step``."""
        if not self.spec.uses_step:
            return []
        tensors = [] if lane is None or lane.counters is None else [lane.counters]
        laned = set(map(id, lane.works)) if tensors else ()
        for work in works:
            plan = work.plan
            tensors += [b.steps for b in plan.buckets]
            if id(work) in laned:
                continue
            if plan.direct_counters is not None:
                tensors.append(plan.direct_counters)
                continue
            for p in plan.take_loose(plan.params):
                step = state.get(p, _EMPTY).get("step")
                if step is not None:
                    tensors.append(step)
        return tensors

    # ---------------------------------------------------------------- the steady step

    def record(self, groups: list[dict], works: list[Optional["_Work"]], state: Any,
               hyper: Callable[[dict], dict[str, Any]], state_keys: Callable[[dict], tuple[str, ...]],
               amp: tuple[Optional[Tensor], Optional[Tensor]] = (None, None), clip: Optional[PendingClip] = None) -> None:
        """Keep a checked step's work for the next steps where it is steady (``Program``):
        ``hyper`` and ``state_keys`` are the optimizer's, to read a group whose numbers change;
        ``amp`` and ``clip`` what the step handed the fused and the eager groups (``replay``)."""
        self.counts_of["checked"] += 1
        eligible = Program.eligible(groups, works, state)
        self._program = (Program(groups, works, state, hyper, state_keys, _handed(amp, clip))
                         if eligible else None)
        self._lane = None
        for work in works:
            if work is not None:
                work.release()

    def replay(self, groups: list[dict], state: Any, amp: tuple[Optional[Tensor], Optional[Tensor]] = (None, None),
               clip: Optional[PendingClip] = None) -> bool:
        """Run the recorded program if it still describes this step; False (nothing done) if
        the checked path must plan it. ``amp``: a pending clip folded for the fused groups,
        ``clip`` the same for the eager ones (``Optimizer.step``)."""
        program = self._program
        # After steps traced by dynamo or a step tensor written in place (``begin``), the host
        # counts are read back by the checked path.
        if program is None or self.counts.stale or program.handed != _handed(amp, clip):
            return False
        grads = program.grads(groups, state)
        if grads is None:
            self.forget_program()
            return False
        lane = self._lane
        if lane is None or lane.scaled != self.counts.scaled or not lane.shares(program.renumbered):
            lane = self._build_lane(program, state)
        # Every check before the first write: a large param rebound since (``p.data = ...``).
        lane_grads = lane.grads(grads)
        if lane_grads is None:
            self.forget_program()
            return False
        bounds = program.bounds
        for i, laned in lane.rest:
            work, gs = program.works[i], grads[bounds[i]:bounds[i + 1]]
            plan = work.plan
            work.packed = {b: b.take(gs) for b in plan.buckets}
            if laned:
                continue
            work.loose = list(zip(plan.take_loose(plan.params), plan.take_loose(gs)))
            if work.direct:
                # The program has checked every grad's and param's dtype, device and shape.
                work.direct_grads = direct_grads(plan.direct, work.loose, checked=True, basis=plan.direct_basis)
                if work.direct_grads is None:
                    self.forget_program()
                    return False
        lane.run(lane_grads, amp, self.counts)
        self.counts_of["prepared"] += len(lane.works)
        for i, laned in lane.rest:
            work = program.works[i]
            if laned:  # the lane has loaded its GradScaler or clip tensors
                for b, gs in work.packed.items():
                    self._run_whole(b, gs, work)
            else:
                if work.fused is not None:
                    work.fused.load_amp(*amp)
                else:
                    work.clip = clip
                self.execute(work, state)
            work.release()
        self.counts.left(lane.steps)
        self.counts_of["replayed"] += 1
        return True

    def _build_lane(self, program: Program, state: Any) -> Lane:
        """The lane of ``program``'s prepared large-param calls (``_lane``), its works' step
        counters made views of one tensor where they share a device and dtype; an empty one
        where there are none it can run (GradScaler histories that differ between params)."""
        # Groups whose calls could not be prepared (a param of one element) or were prepared
        # for other numbers' names run one by one (``_run_direct``).
        works = [w for w in program.works if w.direct and w.plan.launch is not None and w.plan.launch.fits(w.fused)]
        if self.counts.diverged:
            works = []
        counters = [w.plan.direct_counters for w in works]
        shared = counters[0] if len(works) == 1 else None
        if len(works) > 1 and all(c is not None for c in counters) and len({(c.device, c.dtype) for c in counters}) == 1:
            shared = torch.cat(counters)
            lo = 0
            for w in works:
                hi = lo + len(w.plan.direct)
                self._share_counters(w.plan, shared[lo:hi], state)
                w.plan.launch = w.fused.prepare(_launch_items(w.plan.direct))
                lo = hi
            if any(w.plan.launch is None for w in works):
                works, shared = [], None  # they run one by one, preparing their calls anew
        params = [p for w in works for p in w.plan.take_loose(w.plan.params)]
        ids = {id(p): i for i, p in enumerate(program.params)}
        inside = {id(w) for w in works}
        rest = [(i, id(w) in inside) for i, w in enumerate(program.works) if id(w) not in inside or w.plan.buckets]
        self._lane = Lane(works, params, _picker([ids[id(p)] for p in params]), shared, rest, self.counts.scaled,
                          program.renumbered)
        self._lane.steps = self._step_tensors(program.works, state, self._lane)
        return self._lane

    def _share_counters(self, plan: _Plan, counters: Tensor, state: Any) -> None:
        """Make the 0-dim views of ``counters`` (one per large param, holding their counts) the
        step counters of ``plan``'s prepared calls, in ``state`` too for rules with ``step``:
        one op then advances them all."""
        plan.direct_counters = counters
        for e, p, view in zip(plan.direct, plan.take_loose(plan.params), counters.unbind()):
            e.step = view
            if self.spec.uses_step:
                repoint(state[p], "step", view)
            self.counts.seen(id(p), view)

    # ---------------------------------------------------------------- planning

    def _plan(self, gi: int, group: dict, keys: tuple[str, ...], on_device: bool, state: dict,
              policy: dict[str, Any]) -> _Plan:
        """``policy``: the group's precision policy (``_precision.rule_kw``)."""
        plan = self._plans.get(gi)
        counted = self.spec.uses_step or bool(group.get("fused"))
        identity = (policy.get("param_update"), policy.get("state_dtype"))
        if plan is not None and (plan.keys, plan.on_device, plan.counted, plan.policy) == (keys, on_device, counted, identity):
            return plan
        layout = functools.partial(_precision.state_dtypes, keys, policy)
        if plan is not None and plan.policy != identity:
            # A policy changed by hand: a buffer it no longer keeps would be stale if it came back.
            for p in group["params"]:
                st = state.get(p, _EMPTY)
                for k in _precision.BUFFERS:
                    if k in st and k not in layout(p.dtype):
                        del st[k]
        by_kind: dict[tuple[torch.device, torch.dtype], list[Tensor]] = defaultdict(list)
        distinct = _distinct(group["params"])
        direct = bool(group.get("fused")) and _private.enabled()
        limit = PACK_MAX_NUMEL if self.spec.pack_max_numel is None else min(PACK_MAX_NUMEL, self.spec.pack_max_numel)
        if direct:
            limit = min(limit, FUSED_PACK_MAX_NUMEL)
        if group["foreach"] is not False and not group.get("differentiable", False):
            for p in distinct:
                if (p.numel() <= limit and id(p) not in self.sparse and not p.is_sparse
                        and not _is_dtensor(p)):
                    by_kind[(p.device, p.dtype)].append(p)
        # A bucket of one param would only add copies of it: it is updated in place. Small
        # params whose state has another dtype (``model.double()`` mid-training) are packed
        # whatever their number: packing converts their state.
        least = FUSED_PACK_MIN_PARAMS if direct else self.spec.pack_min_params
        buckets = [self._pack(ps, layout(ps[0].dtype), on_device, counted, state) for ps in by_kind.values()
                   if len(ps) >= (2 if _retyped(ps, state, layout) else least)]
        where = {id(p): (b, i) for b in buckets for i, p in enumerate(b.params)}
        position = {id(p): i for i, p in enumerate(distinct)}
        for b in buckets:
            b.take = _picker([position[id(p)] for p in b.params])
        loose = _picker([i for i, p in enumerate(distinct) if id(p) not in where])
        plan = _Plan(keys, on_device, counted, identity, buckets, where, distinct, loose)
        self._plans[gi] = plan
        return plan

    def packed_state(self, gi: int, group: dict, keys: tuple[str, ...], on_device: bool,
                     state: dict, policy: dict[str, Any]) -> dict[int, tuple[Tensor, Tensor]]:
        """Plan group ``gi`` now and give, by ``id(param)``, the ``step`` and the state tensor of
        each packed param (rules with ``step`` and one state key), views of the flat buffers, for
        optimizers that create state at construction (Adagrad). A precision policy's buffer is
        made at the first step, from the param as it is then (``_split`` re-packs for it)."""
        plan = self._plan(gi, group, keys, on_device, state, policy)
        return {id(p): (b.step_views[i], b.views[i][keys[0]]) for b in plan.buckets for i, p in enumerate(b.params)}

    def _pack(self, params: list[Tensor], layout: dict[str, torch.dtype], on_device: bool, counted: bool,
              state: dict) -> _Bucket:
        """Allocate a bucket's flat buffers and move any existing state into them.

        ``counted`` keeps step counters even for rules without torch's ``step`` (fused SGD:
        whether a step was the first *applied* one is known only on the device when GradScaler
        may skip it); they are exposed in ``state`` only for rules that use ``step``.
        """
        # Contiguous params first, those of one trailing shape together, so that gathering
        # them is one torch.cat per trailing shape.
        params = sorted(params, key=lambda p: (0, tuple(p.shape[1:])) if _catable(p) else (1, ()))
        offsets, total = [], 0
        for p in params:
            offsets.append(total)
            total += p.numel()
        like = params[0]
        make = lambda n=total, dtype=like.dtype: torch.zeros(n, dtype=dtype, device=like.device)  # noqa: E731
        keys = tuple(layout)
        flat = {k: make(dtype=dtype) for k, dtype in layout.items()}
        steps, step_views = None, [None] * len(params)
        if counted:
            steps = torch.zeros(len(params), dtype=scalar_dtype(), device=like.device if on_device else "cpu")
            if self.spec.uses_step:  # torch's per-param ``step``; a view costs ~0.9 KB
                step_views = list(steps.unbind())
        layouts = [(p.shape, p.stride()) for p in params]
        segment = lambda buf: [_segment_view(buf, *layout, o) for layout, o in zip(layouts, offsets)]  # noqa: E731
        per_key = {k: segment(flat[k]) for k in keys}
        views = [{k: per_key[k][i] for k in keys} for i in range(len(params))]
        for i, p in enumerate(params):
            st = state.get(p)
            if not st or self._fresh(st, keys):
                continue
            for k in keys:
                old = st.get(k)
                if old is not None and not (k == _precision.MASTER and old.dtype != torch.float32):
                    _ops.assign_(views[i][k], old)
                    st[k] = views[i][k]
                elif _precision.init(k, real_view(views[i][k]), real_view(p.detach())):
                    st[k] = views[i][k]  # a policy set since the param's first step
            if steps is not None:
                steps[i] = self.counts.read(id(p), st) if self.spec.uses_step else 1
            if self.spec.uses_step:
                st["step"] = step_views[i]
        probes = [v[keys[0]] for v in views] if keys else step_views
        offsets.append(total)
        bounds, lo = [], 0
        while lo < len(params):
            hi = lo + 1
            while hi < len(params) and offsets[hi + 1] - offsets[lo] <= CHUNK_NUMEL:
                hi += 1
            bounds.append((lo, hi))
            lo = hi
        size = max(offsets[hi] - offsets[lo] for lo, hi in bounds)
        gbuf, pbuf = make(size), make(size)
        chunks = [_Chunk(lo, hi, offsets[lo], *_cat_runs(params, offsets, lo, hi, gbuf, pbuf)) for lo, hi in bounds]
        starts = [offsets[lo] for lo, hi in bounds for _ in range(lo, hi)]
        return _Bucket(params, offsets, keys, flat, views, steps, step_views, gbuf, [None] * len(params), pbuf,
                       [None] * len(params), starts, like.dtype, probes, chunks,
                       [id(p) for p in params],
                       metas=tuple((like.dtype, torch.strided, pbuf.device, p.shape) for p in params),
                       layouts=layouts, kinds=list(map(param_kind, params)))

    # ---------------------------------------------------------------- running

    def prepare(
        self,
        gi: int,
        group: dict,
        params: list[Tensor],
        grads: list[Tensor],
        metas: list[tuple],
        keys: tuple[str, ...],
        hyper: dict[str, Any],
        state: dict,
        amp: tuple[Optional[Tensor], Optional[Tensor]] = (None, None),
        clip: Optional[PendingClip] = None,
    ) -> _Work:
        """Plan one step of ``params`` (all with a grad, each listed once) without updating
        anything: re-pack if needed, and for fused groups compile the kernels it will use, so
        that a failure leaves every param and state as it was.

        ``step`` lives on the param's device for capturable and fused groups, as in torch.
        ``metas`` holds each grad's ``grad_meta``. ``amp`` is GradScaler's (grad_scale,
        found_inf), used by fused groups only; ``clip`` the pending clip of an eager group (a
        fused group's is folded into ``amp``).
        """
        on_device = bool(group.get("capturable") or group.get("fused"))
        if self.counts.stale and not torch.compiler.is_compiling():
            # The plans were built on the host counts traced steps left behind: re-packing
            # reads each param's count back from its ``step``, once (as after a load).
            self.counts.forget()
            self.invalidate()
        plan = self._plan(gi, group, keys, on_device, state, hyper)
        complete = len(params) == len(plan.params)
        split = self._steady(plan, params, grads, state, metas) if complete else None
        whole = split is not None
        if split is None:
            split = self._split(plan, params, grads, keys, state)
        for _ in range(2):
            if split is not None:
                break
            # The packed layout no longer matches the state or the params: re-pack first. A
            # second time where the first re-pack fixed one cause and the split found another
            # (a policy's missing buffer, then a sparse grad).
            self._plans.pop(gi, None)
            plan = self._plan(gi, group, keys, on_device, state, hyper)
            split = self._split(plan, params, grads, keys, state)
        packed, loose = split
        # Traced by dynamo (``torch.compile`` around ``step()``), the large params take the
        # checked path: the prepared views were made outside the trace.
        prepared = whole and plan.direct is not None and not torch.compiler.is_compiling()
        flat_grads = direct_grads(plan.direct, loose, checked=False, basis=plan.direct_basis) if prepared else None
        direct = flat_grads is not None
        kw = {k: _f64(v) for k, v in hyper.items()}
        plain = not any(isinstance(v, Tensor) for v in kw.values())
        kw.update(first=False, scratch=None)
        layout = functools.partial(_precision.state_dtypes, keys, kw)
        made: dict[int, dict[str, Tensor]] = {}
        if not direct:
            for p, g in loose:
                _checks.grad_like_param(p, g)
                _checks.state_shaped_like_param(p, state.get(p, _EMPTY), keys)
                if g.is_sparse and "param_update" in kw:
                    raise RuntimeError("param_update and state_dtype do not support sparse gradients; nothing was updated")
            if plan.loose_runs is not None and not plan.loose_basis.holds([p for p, _ in loose], state):
                plan.loose_runs = None  # changed state, or a param rebound (``p.data = ...``)
            made = self._allocate(loose, layout, group, on_device, state)
            if group.get("fused"):
                for p, _ in loose:
                    _checks.state_like_param(p, {**state.get(p, _EMPTY), **made.get(id(p), _EMPTY)}, layout(p.dtype))
        fused = None
        if group.get("fused"):
            if amp[1] is not None:  # a step may be skipped on the device
                self.counts.scaled = True
            fused = plan.call
            # The last step's call, where nothing it was built from has changed (its kernels
            # are then compiled for every kind of this plan's params).
            if fused is None or not (whole and (direct or not loose) and fused.reusable(kw, *amp)):
                fused = plan.call = _fused.Call(self.spec, kw, *amp)
                kinds = {(_real_dtype(b.dtype), b.pbuf.device) for b in packed}
                kinds |= {(_real_dtype(p.dtype), p.device) for p, _ in loose}
                fused.warm({kind: layout(kind[0]) for kind in kinds}, scalar_dtype())
            else:
                fused.load_amp(*amp)
        return _Work(group, keys, on_device, packed, loose, kw, fused, plan, whole, complete, direct, made,
                     flat_grads, clip, plain)

    def execute(self, work: _Work, state: dict) -> None:
        if work.precise and work.fused is None and not self.spec.uses_step:
            # Stochastic rounding's step for rules without one (the fused kernels count on the device).
            work.kw["noise_count"] = self.counts.rounds.add_(1)
        for b, items in work.packed.items():
            if work.whole:
                self._run_whole(b, items, work)
            else:
                self._run_bucket(b, items, work, state)
        if work.direct:
            self._run_direct(work)
        elif not self._run_loose(work, state):
            for p, g in work.loose:
                self._run_one(p, g, work, state)
        # Once a step may have been skipped on the device (GradScaler, a clip's skip_nonfinite),
        # a step that some params sit out splits histories, found_inf or not.
        if work.fused is not None and self.counts.scaled and (self.counts.diverged or not work.complete):
            self._took_scaled_step(work)
        if (tracked(state) and work.complete and work.fused is not None and not work.direct
                and not torch.compiler.is_compiling()):
            self._prepare_direct(work.plan, work.layout, state, work.fused)

    def _took_scaled_step(self, work: _Work) -> None:
        """Record that the params of ``work`` took part in this GradScaler step (see
        ``StepCounts.took_scaled_step``). A step that some params sat out may split histories:
        the large params' prepared calls share one step's numbers, so they are dropped until
        every param has one history again (``_prepare_direct``)."""
        stepped = [p for p, _ in work.loose]
        for b, items in work.packed.items():
            stepped += b.params if work.whole else [p for _, p, _, _ in items]
        self.counts.took_scaled_step(map(id, stepped))
        if not work.complete:
            work.plan.direct = work.plan.launch = None

    def _prepare_direct(self, plan: _Plan, layout: Callable[[torch.dtype], dict], state: dict, fused: Call) -> None:
        """After a fused step that saw every param, prepare the per-tensor params' kernel calls,
        so that steady steps skip every per-param lookup, view and check but the grad's."""
        plan.direct = plan.direct_count = plan.launch = plan.direct_counters = None
        entries, counts = [], set()
        loose = plan.take_loose(plan.params)
        for p in loose:
            if _is_dtensor(p) or p.is_complex() or p.is_meta or is_fake(p):
                return
            st = state.get(p, _EMPTY)
            flat = storage_order(p)
            tensors = {k: st.get(k) for k in layout(p.dtype)}
            if flat is None or any(t is None or t.stride() != p.stride() for t in tensors.values()):
                return
            step = st.get("step") if self.spec.uses_step else self.counts.counters.get(id(p))
            counts.add(self.counts.host.get(id(p)))
            if step is None:
                return
            states = {k: storage_order(t) for k, t in tensors.items()}
            entries.append(_Direct(p.detach(), p.shape, p.stride(), p.dtype, p.device, p.is_contiguous(), flat,
                                   states, step))
        if not entries or len(counts) > 1 or None in counts:
            return
        if len({self.counts.history(id(p)) for p in loose}) > 1:
            return
        plan.direct = entries
        plan.direct_basis = Basis(loose, storage=[e.alias for e in entries])
        if len({(e.step.device, e.step.dtype) for e in entries}) == 1:
            # The counters become views of one tensor, advanced by one op per step (a foreach
            # add over 0-dim tensors costs ~3 µs each on the CPU).
            self._share_counters(plan, torch.stack([e.step for e in entries]), state)
        plan.direct_count = counts.pop()
        plan.direct_ids = [id(p) for p in loose]
        plan.launch = fused.prepare(_launch_items(entries))

    def _run_loose(self, work: _Work, state: dict) -> bool:
        """The per-tensor params of a steady eager step, from what the plan keeps of them
        (``_LooseRun``, read again after any change to ``optimizer.state``): a run of several
        params at one step count, with plain numbers and dense grads, in one rule call over
        ``Many``; any other param alone, by the rule and the host counts only (~2 µs a param
        less than ``_run_one``). A pending clip scales the grads into the scratch, as
        ``_run_one`` does. False (nothing done) where the step needs ``_run_one``: not steady,
        state made this step, a precision policy, counts on the device, dynamo tracing, complex
        or DTensor params, a param's count not on the host. Everything is checked before the
        first param is updated."""
        plan, uses_step = work.plan, self.spec.uses_step
        if (not work.whole or work.fused is not None or work.precise or work.on_device
                or work.made or not work.loose or torch.compiler.is_compiling() or not isinstance(state, State)):
            return False
        # ``prepare`` dropped runs whose basis no longer holds; a replayed step's program has
        # checked the same.
        if plan.loose_runs is None:
            plan.loose_runs = self._read_loose(work.loose, work.keys, state, work.group.get("foreach") is not False)
            plan.loose_basis = Basis([p for p, _ in work.loose], state, kinds=True)
        kw, host, counts, rule = work.kw, self.counts.host, self.counts, self.spec.rule
        # ``work.whole``: the plan's params in its order, as ``Engine._steady`` checked.
        if plan.loose_runs is None or (uses_step and not all(id(p) in host for p, _ in work.loose)):
            return False
        kw["first"] = False
        many = work.plain and not torch.is_grad_enabled()
        for run in plan.loose_runs:
            grads = [work.loose[i][1] for i in run.at]
            if run.many is not None and many and not any(g.is_sparse for g in grads) and (
                    not uses_step or len({host[i] for i in run.ids}) == 1):
                if uses_step:
                    torch._foreach_add_(run.steps, 1)
                    kw["step"] = host[run.ids[0]] + 1
                    counts.set(run.ids, kw["step"])
                kw.update(run.many[1])
                g = Many(grads)
                if work.clip is not None:
                    g = work.clip.scaled(g, kw["scratch"])
                rule(run.many[0], g, **self.spec.with_coefficients(kw))
                continue
            for j, g in enumerate(grads):
                if uses_step:
                    pid = run.ids[j]
                    run.steps[j] += 1
                    host[pid] = kw["step"] = host[pid] + 1
                kw["scratch"] = run.scratch[j]
                if work.clip is not None:
                    g = work.clip.scaled(g, run.scratch[j])
                kw.update(run.states[j])
                rule(run.params[j], g, **self.spec.with_coefficients(kw))
        return True

    def _read_loose(self, loose: list[tuple[Tensor, Tensor]], keys: tuple[str, ...], state: dict,
                    together: bool) -> Optional[list[_LooseRun]]:
        """The params of ``loose`` (param, grad) pairs, every one with its state, as runs
        (``_LooseRun``): with ``together``, those of one device and dtype (float32 or float64),
        up to ``RUN_MAX_NUMEL`` elements a run, in one; every other param alone. None where one
        is not plain: complex, a DTensor, or without all of its state.

        Params of other dtypes run alone (``_many.EXACT_DTYPES``), as does a param with a
        sparse grad."""
        needed = (*keys, "step") if self.spec.uses_step else keys
        params = [p for p, _ in loose]
        by_kind: dict[Hashable, list[list[int]]] = defaultdict(list)
        for i, (p, g) in enumerate(loose):
            st = state.get(p, _EMPTY)
            if _is_dtensor(p) or p.is_complex() or any(k not in st for k in needed):
                return None
            alone = not together or p.dtype not in EXACT_DTYPES or g.is_sparse or id(p) in self.sparse
            kind = i if alone else (p.device, p.dtype)
            runs = by_kind[kind]
            if not runs or sum(params[j].numel() for j in runs[-1]) + p.numel() > RUN_MAX_NUMEL:
                runs.append([])
            runs[-1].append(i)
        read = []
        for at in (at for runs in by_kind.values() for at in runs):
            ps = [params[i] for i in at]
            sts = [state.get(p, _EMPTY) for p in ps]
            run = _LooseRun(at, ps, [{k: st[k] for k in keys} for st in sts],
                            [st["step"] for st in sts] if self.spec.uses_step else [],
                            self._scratch_run(ps), [id(p) for p in ps])
            if len(at) > 1:
                run.many = (Many(ps), {"scratch": None if run.scratch[0] is None else Many(run.scratch),
                                       **{k: Many([s[k] for s in run.states]) for k in keys}})
            read.append(run)
        return read

    def _run_direct(self, work: _Work) -> None:
        """The per-tensor params of a steady fused step: one kernel call each, from views
        prepared by ``_prepare_direct``, and one op advancing every step counter."""
        plan, entries, grads = work.plan, work.plan.direct, work.direct_grads
        plan.advance()
        count = plan.direct_count + 1
        if plan.launch is not None and plan.launch.fits(work.fused):
            plan.launch(work.fused, grads, count, None if self.counts.scaled else count)
            work.fused.wind_back(plan.counters())
            self.counts_of["prepared"] += 1
        else:
            for e, g, pid in zip(entries, grads, plan.direct_ids):
                work.fused(e.p, g, e.states, e.step, self.counts.shared(count, pid))
            plan.launch = work.fused.prepare(_launch_items(entries))
        plan.stepped(self.counts)

    def _steady(self, plan: _Plan, params: list[Tensor], grads: list[Tensor], state: dict, metas: list[tuple]):
        """The packed/loose split without per-param checks, when nothing has changed since the
        last step: the same params, all with grads, the state as we left it, each bucket's
        params at one step count. The buckets' grads are checked here, before anything is
        updated, to be what concatenating them chunk by chunk needs (dtype, layout, device and
        shape), so that gathering them cannot fail half-way through a step."""
        if plan.basis is None or not plan.basis.holds(params, state):
            return None
        packed = {}
        for b in plan.buckets:
            if b.uniform is None or b.take(metas) != b.metas or list(map(param_kind, b.params)) != b.kinds:
                return None
            packed[b] = b.take(grads)
        return packed, list(zip(plan.take_loose(params), plan.take_loose(grads)))

    def _run_whole(self, b: _Bucket, grads: Any, work: _Work) -> None:
        """Every param of ``b`` at one step count, with ``grads`` in bucket order: one run of
        the rule, from calls prepared once where a fused group's kernels allow.

        Param values are gathered every step: an edit through ``p.data`` (weight clipping,
        ``p.data.clamp_()``) leaves no trace in the version counter."""
        count = b.uniform
        traced = torch.compiler.is_compiling()
        if count == _ON_DEVICE and not traced:  # a frame dynamo left to run eagerly
            count = int(b.steps[0])
        direct = _direct_copies(b) if work.fused is not None else None
        prepared = work.fused is not None and not traced
        launch = b.launch if prepared and b.launch is not None and b.launch.fits(work.fused) else None
        if launch is not None:
            b.steps.add_(1)
            # A steady step follows a step of every param: for rules without a count, the step
            # taken now is not the first.
            host = None if self.counts.scaled else (count + 1 if self.spec.uses_step else 2)
            launch.refresh(work.fused, self.counts.shared(count + 1, b.ids[0]) if self.spec.uses_step else None, host)
        self._run_range(b, 0, len(b.params), False, count, work, grads, direct, launch)
        if launch is not None:
            work.fused.wind_back([b.steps])
            launch.bump()
        elif prepared:
            b.launch = work.fused.prepare([
                (real_view(b.pbuf[:n]).view(-1), real_view(b.gbuf[:n]).view(-1),
                 {k: real_view(b.flat[k][c.start:c.start + n]).view(-1) for k in b.keys}, b.steps[c.lo])
                for c in b.chunks for n in (b.offsets[c.hi] - c.start,)])
        if direct is not None:
            direct.bump(b.params)
        if self.spec.uses_step and traced:
            self.counts.stale, b.uniform = True, _ON_DEVICE
        elif self.spec.uses_step:
            self.counts.set(b.ids, count + 1)
            b.uniform = count + 1

    def _split(self, plan: _Plan, params, grads, keys, state):
        """Sort params into packed buckets and the per-tensor rest, or None if re-packing is due.

        ``optimizer.state`` is public: a user may replace or delete its entries, change a
        param's dtype, or feed a sparse grad between steps. Any such change to a packed param
        re-packs before anything is updated.
        """
        uses_step = self.spec.uses_step
        packed: dict[_Bucket, list] = defaultdict(list)
        loose = []
        where, lookup = plan.where, state.get
        for p, g in zip(params, grads):
            hit = where.get(id(p))
            if hit is None:
                loose.append((p, g))
                continue
            b, i = hit
            if g.is_sparse:
                self.sparse.add(id(p))
                return None
            # A param of another dtype than its bucket (``p.data = p.data.double()``) is still
            # gathered and written back through copies, which convert, while its grad fits the
            # bucket; its shape must still be its grad's.
            if g.dtype is not b.dtype or g.shape != b.metas[i][3] or g.device != p.device or p.shape != g.shape:
                _checks.grad_like_param(p, g)
                return None  # the param changed dtype or shape: re-pack
            fresh = False
            # The bucket's keys: the rule's, then the precision policy's buffer, if any.
            bkeys = b.keys
            if bkeys or uses_step:
                st = lookup(p, _EMPTY)
                current = st.get(bkeys[0] if bkeys else "step")
                if current is None:
                    fresh = True
                elif current is not b.probes[i] or (uses_step and st.get("step") is not b.step_views[i]):
                    self.counts.reread(id(p))  # a replaced ``step`` is read again
                    return None
                elif bkeys[-1] in _precision.BUFFERS and st.get(bkeys[-1]) is not b.views[i][bkeys[-1]]:
                    return None  # state made before the policy was set (Adagrad's): re-pack
            packed[b].append((i, p, g, fresh))
        return packed, loose

    def _run_bucket(self, b: _Bucket, items, work: _Work, state) -> None:
        spec, keys = self.spec, b.keys
        grads: list[Optional[Tensor]] = [None] * len(b.params)
        for i, _, g, _ in items:
            grads[i] = g
        direct = _direct_copies(b) if work.fused is not None else None
        # Params that share a step count and freshness share one run of rule calls.
        class_at: list[Optional[tuple]] = [None] * len(b.params)
        counts = self.counts
        traced = torch.compiler.is_compiling() and spec.uses_step
        for i, p, _, fresh in items:
            if fresh or not spec.uses_step:
                count: Hashable = 0
            elif counts.stale:
                # Counts left behind by traced steps: params stepped together since share theirs,
                # any other param runs alone (its numbers come from its own step tensor); in a
                # frame dynamo left to run eagerly, the host counts are stale: read the tensor.
                count = (_ON_DEVICE if b.uniform == _ON_DEVICE else (i,)) if traced else int(b.steps[i])
            else:
                count = counts.host.get(id(p), 0)
            class_at[i] = (fresh, count, counts.history(id(p)))
        classes = _runs(class_at)
        for (fresh, count, _), runs in classes.items():
            for lo, hi in runs:
                self._run_range(b, lo, hi, fresh, count, work, grads, direct)
        if direct is not None:
            direct.bump([p for _, p, _, _ in items])
        everyone = len(items) == len(b.params) and len(classes) == 1
        if traced:
            counts.stale, b.uniform = True, _ON_DEVICE if everyone else None
        else:
            b.uniform = (next(iter(classes))[1] + 1 if spec.uses_step else 0) if everyone else None
        for i, p, _, fresh in items:
            if fresh:
                st = _state_of(state, p)
                if spec.uses_step:
                    st["step"] = b.step_views[i]
                for k in keys:
                    st[k] = b.views[i][k]
            if spec.uses_step and not traced:
                counts.host[id(p)] = (0 if fresh else counts.host.get(id(p), 0)) + 1

    def _run_range(self, b: _Bucket, lo: int, hi: int, fresh: bool, count: int, work: _Work, grads: Any,
                   direct: Optional[Scatter] = None, launch: Optional[Prepared] = None) -> None:
        """The rule over bucket params ``[lo, hi)``, which share freshness and step count, a
        chunk at a time: grads and param values in, update, values out (through ``direct`` when
        given, for whole chunks: its addresses were checked this step). ``grads`` holds each
        bucket param's grad by bucket index, checked for ``torch.cat`` (``_steady``, ``_split``).
        ``launch`` holds the chunks' calls, prepared for the whole bucket."""
        for i, c in enumerate(b.chunks):
            clo, chi = max(lo, c.lo), min(hi, c.hi)
            if clo >= chi:
                continue
            whole = (clo, chi) == (c.lo, c.hi)
            direct_here = direct if whole else None
            # Traced by dynamo, every copy goes through views made in the trace (``_views``): the
            # runs' views, made outside it, would be graph inputs aliasing the chunk buffers.
            cat = whole and not torch.compiler.is_compiling()
            if cat:
                _gather(grads, c, 2, _views(b, "g", c.rest))
            else:
                torch._foreach_copy_(_views(b, "g", range(clo, chi)), grads[clo:chi])
            if direct_here is not None:
                direct_here.gather(b.pbuf, clo, chi)
            elif cat:
                _gather(b.params, c, 3, _views(b, "p", c.rest))
            else:
                torch._foreach_copy_(_views(b, "p", range(clo, chi)), b.params[clo:chi])
            if launch is not None:
                launch.run(i)
            else:
                g, p, states = _kept(c, clo, chi, "rule", lambda: _piece(b, c, clo, chi))
                self._run_piece(b, clo, chi, g, p, states, fresh, count, work)
            if direct_here is not None:
                direct_here.scatter(b.pbuf, clo, chi)
            else:
                back = _kept(c, clo, chi, "back", lambda: _views(b, "p", range(clo, chi)))
                torch._foreach_copy_(b.params[clo:chi], back)

    def _run_piece(self, b: _Bucket, lo: int, hi: int, g: Tensor, p: Tensor, states: dict[str, Tensor], fresh: bool,
                   count: int, work: _Work) -> None:
        """The rule over bucket params ``[lo, hi)``: their grads ``g`` and values ``p`` in the
        chunk buffers, their ``states`` in the flat state (``_piece``)."""
        spec, kw = self.spec, work.kw
        if fresh:
            for k, t in states.items():
                self._init(k, t, work.group, p)
        steps = None
        # Traced by dynamo, the step comes from the step tensors, as in torch's compiled step:
        # dynamo would guard on a host count (``StepCounts.stale``).
        traced = torch.compiler.is_compiling()
        if b.steps is not None:
            steps = b.steps[lo:hi]
            steps.fill_(1) if fresh else steps.add_(1)
            if spec.uses_step:
                kw["step"] = steps[0] if traced else b.step_views[lo] if work.on_device else count + 1
        if work.fused is not None:
            work.fused(p.view(-1), g.view(-1), {k: t.view(-1) for k, t in states.items()}, steps,
                       self.counts.shared(count + 1, b.ids[lo]) if spec.uses_step and not traced else None)
            return
        if work.clip is not None:
            g.mul_(work.clip.factor_on(g.device))  # the gathered copy of the grads
        kw["first"], kw["scratch"] = fresh, g
        self._update(p, g, states, work)

    def _allocate(self, loose: list[tuple[Tensor, Tensor]], layout: Callable[[torch.dtype], dict[str, torch.dtype]],
                  group: dict, on_device: bool, state: dict) -> dict[int, dict[str, Tensor]]:
        """The state tensors the per-tensor params' step will create — at a param's first step,
        or for an option switched on since (amsgrad, a precision policy) — and their scratch
        buffer, allocated before anything is written (an allocation that fails leaves the step
        untaken). A policy's state kept in another dtype than it says is converted here."""
        made: dict[int, dict[str, Tensor]] = {}
        fused, uses_step = bool(group.get("fused")), self.spec.uses_step
        policy = _precision.active(group)
        runs = not fused and group.get("foreach") is not False and not torch.compiler.is_compiling()
        self._reserve_scratch([p for p, _ in loose], runs)
        for p, _ in loose:
            st = state.get(p, _EMPTY)
            dtypes = layout(p.dtype)
            keys = tuple(dtypes)
            fresh = self._fresh(st, keys)
            new: dict[str, Tensor] = {}
            if fresh and uses_step:
                new["step"] = torch.zeros((), dtype=scalar_dtype(), device=p.device if on_device else "cpu")
            for k, dtype in dtypes.items():
                old = st.get(k)
                if old is None or (k == _precision.MASTER and old.dtype != dtype):
                    new[k] = torch.empty_like(p, dtype=dtype, memory_format=torch.preserve_format)
                    self._init(k, real_view(new[k]), group, real_view(p.detach()))
                elif policy and old.dtype != dtype and not p.is_complex():
                    new[k] = old.to(dtype)
            if fused and not uses_step and (fresh or id(p) not in self.counts.counters):
                new[_PRIVATE_STEP] = torch.full((), 0 if fresh else 1, dtype=scalar_dtype(), device=p.device)
            if new:
                made[id(p)] = new
        return made

    def _run_one(self, p: Tensor, g: Tensor, work: _Work, state) -> None:
        """The per-tensor path: the same rule on one param and its own state tensors."""
        spec, kw = self.spec, work.kw
        keys = tuple(work.layout(p.dtype)) if work.precise else work.keys
        tensors: list[Tensor] = []
        fresh, steps = False, None
        made = work.made.get(id(p), _EMPTY)
        traced = torch.compiler.is_compiling()  # the step from its tensor (``_run_piece``)
        if keys or spec.uses_step:
            st = _state_of(state, p)
            fresh = self._fresh(st, keys)
            # In torch's key order: ``step`` first, then the rule's keys.
            for k, t in made.items():
                if k != _PRIVATE_STEP:
                    st[k] = t
            if spec.uses_step:
                counts = self.counts
                if counts.replaced(id(p), st["step"]):
                    counts.reread(id(p))
                count = 0 if fresh or traced else counts.read(id(p), st)
                steps = st["step"]
                counts.seen(id(p), steps)
                steps += 1
                if traced:
                    counts.stale = True
                else:
                    counts.host[id(p)] = count + 1
                kw["step"] = steps if work.on_device or traced else count + 1
            tensors = [st[k] for k in keys]
        if work.fused is not None and steps is None:
            steps = self.counts.private_counter(id(p), fresh, made.get(_PRIVATE_STEP))
        count = self.counts.shared(self.counts.host[id(p)], id(p)) if spec.uses_step and not traced else None
        if _is_dtensor(p):
            # FSDP2/DTensor params: the update is elementwise, so each rank updates its local
            # shard (the state stays DTensor, as distributed checkpointing expects).
            p, g, tensors = p.to_local(), g.to_local(), [t.to_local() for t in tensors]
        scratch = self._scratch_for(p)
        if p.is_complex():
            p, g = torch.view_as_real(p), g if g.is_sparse else torch.view_as_real(g)
            tensors = [t if t.is_sparse else torch.view_as_real(t) for t in tensors]
        if work.fused is not None:
            work.fused.per_tensor(p, g, dict(zip(keys, tensors)), steps, count, scratch)
            return
        if work.clip is not None:
            g = work.clip.scaled(g, scratch)
        kw["first"], kw["scratch"] = fresh, scratch
        self._update(p, g, dict(zip(keys, tensors)), work)

    def _update(self, p: Tensor, g: Tensor, states: dict[str, Tensor], work: _Work) -> None:
        """The rule on ``p`` and its ``states`` with ``work``'s numbers, eagerly: directly, or
        through the group's precision policy."""
        kw = self.spec.with_coefficients(work.kw)
        if work.precise:
            # A chunk at a time where the layouts allow: the policy's fp32 working copies then
            # stay a chunk's size rather than the param's (resnet50's AdamW, bf16 + Kahan: the
            # process kept 19.6 B/param of memory with whole-tensor copies, 10.6 fused).
            flat = [storage_order(t) if t.stride() == p.stride() else None for t in (p, g, *states.values())]
            if p.numel() <= CHUNK_NUMEL or any(t is None for t in flat) or p.is_sparse or g.is_sparse:
                _precision.run(self.spec.rule, p, g, states, kw)
                return
            for a in range(0, p.numel(), CHUNK_NUMEL):
                z = min(a + CHUNK_NUMEL, p.numel())
                _precision.run(self.spec.rule, flat[0][a:z], flat[1][a:z],
                               {k: t[a:z] for k, t in zip(states, flat[2:])}, kw, start=a)
        else:
            kw.update(states)
            self.spec.rule(p, g, **kw)

    def _init(self, key: str, t: Tensor, group: dict, p: Tensor) -> None:
        """Fill state tensor ``t`` of param ``p`` (real views) before the param's first step."""
        if not _precision.init(key, t, p):
            self.spec.init(key, t, group)

    def _scratch_for(self, p: Tensor, offset: int = 0) -> Optional[Tensor]:
        """A p-shaped tensor for the rule's temporaries, reused across params and steps: the
        shared buffer of ``p``'s device and dtype from element ``offset`` on.

        None under autograd (``differentiable=True``): ``out=`` ops do not record a graph.
        """
        if torch.is_grad_enabled():
            return None
        kept = self._scratch_views.get(id(p))
        if kept is not None and kept[0] == offset and kept[1].shape == p.shape and kept[1].dtype == p.dtype:
            return kept[1]
        buf = self._scratch_buffer(p.device, p.dtype, offset + p.numel())
        view = real_view(_segment_view(buf, p.shape, p.stride(), offset))
        self._scratch_views[id(p)] = (offset, view)
        return view

    def _scratch_buffer(self, device: torch.device, dtype: torch.dtype, numel: int) -> Tensor:
        """The shared scratch buffer of ``device`` and ``dtype``, grown to ``numel`` elements."""
        buf = self._scratch.get((device, dtype))
        if buf is None or buf.numel() < numel:
            buf = self._scratch[(device, dtype)] = torch.empty(numel, dtype=dtype, device=device)
            self._scratch_views.clear()
        return buf

    def _reserve_scratch(self, params: list[Tensor], runs: bool) -> None:
        """Allocate now the scratch that steps of these per-tensor params may need: each one's,
        and with ``runs`` a run's (``_read_loose``), so that no step allocates it half-way."""
        if torch.is_grad_enabled():
            return
        sizes: dict[tuple[torch.device, torch.dtype], list[int]] = defaultdict(list)
        for p in params:
            sizes[(p.device, p.dtype)].append(p.numel())
        for (device, dtype), ns in sizes.items():
            together = runs and dtype in EXACT_DTYPES
            self._scratch_buffer(device, dtype, min(sum(ns), max(RUN_MAX_NUMEL, *ns)) if together else max(ns))

    def _scratch_run(self, params: list[Tensor]) -> list[Optional[Tensor]]:
        """Disjoint scratch tensors for ``params`` (one device and dtype), updated together."""
        ends = list(itertools.accumulate(p.numel() for p in params))
        if not torch.is_grad_enabled():
            self._scratch_buffer(params[0].device, params[0].dtype, ends[-1])
        return [self._scratch_for(p, end - p.numel()) for p, end in zip(params, ends)]

    def _fresh(self, st: dict, keys: tuple[str, ...]) -> bool:
        """Whether a param has no state yet (torch initialises state at its first step)."""
        return st.get(keys[0] if keys else "step") is None


_EMPTY: dict = {}


def _state_of(state: dict, p: Tensor) -> dict:
    """``state[p]``, made if missing. Traced by dynamo, without ``defaultdict.__missing__``, which
    it cannot trace: the graph break would leave the rest of the step to run eagerly."""
    if not torch.compiler.is_compiling():
        return state[p]
    st = state.get(p)
    if st is None:
        st = state[p] = state.default_factory() if isinstance(state, defaultdict) else {}
    return st
# ``Engine._allocate``'s key for a fused rule's private step counter.
_PRIVATE_STEP = "_private_step"


def _real_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype.to_real() if dtype.is_complex else dtype


def _f64(v: Any) -> Any:
    """Tensor hyperparameters enter the rule as 0-dim float64 tensors: 0-dim so that a (1,)- or
    (1, 1)-shaped lr never broadcasts a param's shape, float64 so that the coefficients derived
    from them (1 − η·λ, η/(1 − β₁ᵗ), ...) are float64 too and are cast once, by the op that
    uses them."""
    if isinstance(v, Tensor) and v.is_floating_point():
        return v.reshape(()).to(torch.float64)
    return v


def _is_dtensor(t: Tensor) -> bool:
    # A DTensor exists only once its module is imported; importing it here would add ~0.7 s to
    # every `import torch_gd` (and a torch built without distributed has none).
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(t, module.DTensor)


def _retyped(params: list[Tensor], state: dict, layout: Callable[[torch.dtype], dict[str, torch.dtype]]) -> bool:
    """Whether a param's state tensors are of another dtype than its ``layout`` says."""
    for p in params:
        dtypes = layout(p.dtype)
        for k, v in state.get(p, _EMPTY).items():
            if isinstance(v, Tensor) and v.dim() and v.dtype != dtypes.get(k, p.dtype):
                return True
    return False


def _distinct(params: list[Tensor]) -> list[Tensor]:
    seen: set[int] = set()
    out = []
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def _catable(p: Tensor) -> bool:
    # An empty param would make its run's view ambiguous ((3, 0) gives view(-1, 0)).
    return p.dim() > 0 and p.numel() > 0 and p.is_contiguous()


def _cat_runs(params: list[Tensor], offsets: list[int], lo: int, end: int, gbuf: Tensor, pbuf: Tensor):
    """Among the chunk's params ``[lo, end)``, the runs of at least two contiguous params with
    one trailing shape (``_pack`` put them first and together) as N-D views of the chunk
    buffers ``gbuf`` and ``pbuf`` that one ``torch.cat`` writes into — a copy per tensor costs
    ~0.5 µs on the CPU, a call ~2 µs —; and the indices of the other params, copied by one
    ``torch._foreach_copy_`` (a run of one would cost a whole call)."""
    runs: list[tuple[int, int, Tensor, Tensor]] = []
    rest: list[int] = []
    base = offsets[lo]
    while lo < end:
        if not _catable(params[lo]):
            rest.append(lo)
            lo += 1
            continue
        trailing = params[lo].shape[1:]
        hi = lo + 1
        while hi < end and _catable(params[hi]) and params[hi].shape[1:] == trailing:
            hi += 1
        if hi - lo == 1:
            rest.append(lo)
        else:
            a, z = offsets[lo] - base, offsets[hi] - base
            runs.append((lo, hi, gbuf[a:z].view(-1, *trailing), pbuf[a:z].view(-1, *trailing)))
        lo = hi
    return runs, rest


def _gather(tensors: Any, c: _Chunk, which: int, views: list[Tensor]) -> None:
    """Copy chunk ``c``'s share of ``tensors`` (one per bucket param, in bucket order) into a
    chunk buffer: its runs by concatenation into their views at ``which`` (2: grads, 3: param
    values), its other params into ``views``."""
    for run in c.runs:
        torch.cat(tensors[run[0]:run[1]], out=run[which])
    if c.rest:
        torch._foreach_copy_(views, [tensors[i] for i in c.rest])


def _views(b: _Bucket, which: str, indices: Any) -> list[Tensor]:
    """Params' segments of the grad (``"g"``) or param (``"p"``) chunk buffer, made on first use."""
    cache, buf = (b.gviews, b.gbuf) if which == "g" else (b.pviews, b.pbuf)
    if torch.compiler.is_compiling():
        # Views made while dynamo traces a step must not outlive the trace: as inputs of a later
        # graph they would alias the buffer with a different ``_base`` than the buffer's own.
        return [_segment_view(buf, *b.layouts[i], b.offsets[i] - b.starts[i]) for i in indices]
    out = []
    for i in indices:
        view = cache[i]
        if view is None:
            view = cache[i] = _segment_view(buf, *b.layouts[i], b.offsets[i] - b.starts[i])
        out.append(view)
    return out




def _piece(b: _Bucket, c: _Chunk, lo: int, hi: int) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """Bucket params ``[lo, hi)`` of chunk ``c`` as the rule takes them, as real views: their
    grads and values in the chunk buffers, their state in the flat buffers by key."""
    a, z = b.offsets[lo], b.offsets[hi]
    return (real_view(b.gbuf[a - c.start:z - c.start]), real_view(b.pbuf[a - c.start:z - c.start]),
            {k: real_view(b.flat[k][a:z]) for k in b.keys})


def _kept(c: _Chunk, lo: int, hi: int, key: str, make: Callable[[], Any]) -> Any:
    """``make()``, kept on chunk ``c`` for runs over all of it: made anew, the views a run takes
    cost ~1 µs each a step. Not while dynamo traces the step: views made in the trace must not
    outlive it, and those made outside it would be graph inputs aliasing the buffers (``_views``)."""
    if (lo, hi) != (c.lo, c.hi) or torch.compiler.is_compiling():
        return make()
    found = c.kept.get(key)
    if found is None:
        found = c.kept[key] = make()
    return found


def _direct_copies(b: _Bucket) -> Optional[Scatter]:
    """The bucket's copies through param addresses, (re)built when the params moved; None
    where they cannot be used, or dynamo traces the step (it cannot trace the copy loop)."""
    if b.scatter is False or torch.compiler.is_compiling():
        return None
    if b.scatter is None or not b.scatter.valid():
        built = Scatter(b.params, b.offsets, b.pbuf.element_size()) if Scatter.fits(b.params, b.dtype, b.layouts) else None
        b.scatter = built if built is not None and built.compiled else False
    return b.scatter or None


def _launch_items(entries: list[_Direct]) -> list[tuple]:
    """The prepared calls' items (``Call.prepare``) of large params: grads come at each step."""
    return [(e.p, None, e.states, e.step) for e in entries]


def _picker(positions: list[int]) -> Callable[[list], Any]:
    """``lambda xs: [xs[i] for i in positions]``, at C speed."""
    if len(positions) == 1:
        only = positions[0]
        return lambda xs: (xs[only],)
    return operator.itemgetter(*positions) if positions else (lambda xs: ())


def _runs(class_at: list[Optional[tuple]]) -> dict[tuple, list[tuple[int, int]]]:
    """Per class, the maximal ranges ``[lo, hi)`` of consecutive bucket indices in it, from each
    index's class (None: not in this step). One pass in bucket order, no sort: the dynamo of
    torch < 2.14 cannot trace ``sorted`` of ints."""
    runs: dict[tuple, list[tuple[int, int]]] = {}
    for i, key in enumerate(class_at):
        if key is None:
            continue
        ranges = runs.setdefault(key, [])
        if ranges and ranges[-1][1] == i:
            ranges[-1] = (ranges[-1][0], i + 1)
        else:
            ranges.append((i, i + 1))
    return runs
