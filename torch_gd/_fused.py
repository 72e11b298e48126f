"""The fused path: the same update rule, compiled by ``torch.compile(fullgraph=True)``.

Inductor turns a rule into one C++/OpenMP kernel on the CPU and one Triton kernel on CUDA. A
kernel takes 1-D tensors (a packed bucket's flat run, or one large param flattened in storage
order) of dynamic size, so a single compiled graph serves every size of 2 and more (sizes 0 and
1, which dynamo specialises, run the same body uncompiled); numbers that change between steps
(lr, betas, momentum, weight decay, the step, the grad scale) enter as 0-dim tensors, so
schedulers never trigger a recompile. Once compiled, a kernel is called without dynamo
(``_Kernel``).

One kernel is compiled per (rule, static flags, dtype, device), each from its own code object:
dynamo keeps its cache and its recompile limit per code object, so flag variants never count
against each other. Compiled kernels are shared by every optimizer in the process.
"""

from __future__ import annotations

import builtins
import types
from typing import Any, Callable, Hashable, Optional

import torch
from torch import Tensor
from torch.autograd.graph import increment_version

_KERNELS: dict[tuple, "_Kernel"] = {}
_WARM: set[tuple] = set()
# Tests trace kernels for a "cuda" that is not there with "aot_eager" under FakeTensorMode.
BACKEND = "inductor"


_LOW = (torch.float16, torch.bfloat16)
# The size kernels are first compiled at, which Inductor takes as the size hint its CPU code is
# tuned for: compiled at 2 elements a kernel has no OpenMP region and runs on one thread (a
# 25.6M-element Adam step 17-19 ms here); compiled at 65536 it runs on every core (14.6-17.6 ms;
# torch's fused kernel 15.5 ms).
_WARM_NUMEL = 1 << 16


def _apply(
    rule: Callable[..., None],
    statics: dict[str, Any],
    p: Tensor,
    g: Tensor,
    states: dict[str, Tensor],
    scalars: dict[str, Tensor],
    grad_scale: Optional[Tensor],
    found_inf: Optional[Tensor],
) -> None:
    """The body every kernel traces: unscale, update, and keep the old values where skipped.

    fp16/bf16 tensors are updated in fp32 and rounded once on the way out, as torch's fused
    kernels do. GradScaler hands the scale and the inf flag as device tensors; dividing and
    selecting inside the kernel saves the host sync of its own ``found_inf.item()``.
    """
    originals = [p, *states.values()]
    work = [t.float() if t.dtype in _LOW else t for t in originals]
    if found_inf is not None:
        # Where work aliases the original (fp32/fp64), keep the old value to restore.
        olds = [t.clone() if w is t else t for t, w in zip(originals, work)]
    g = g.float() if g.dtype in _LOW else g
    if grad_scale is not None:
        g = g / grad_scale
    rule(work[0], g, **dict(zip(states, work[1:])), **scalars, **statics, scratch=None)
    for t, w, i in zip(originals, work, range(len(work))):
        new = torch.where(found_inf > 0, olds[i], w) if found_inf is not None else w
        if new is not t:
            t.copy_(new)


def _template(p, g, states, scalars, grad_scale, found_inf):  # pragma: no cover - traced
    _apply(RULE, STATICS, p, g, states, scalars, grad_scale, found_inf)  # noqa: F821


def _key(rule: Callable[..., None], statics: dict[str, Any], dtype: torch.dtype, device: torch.device) -> tuple:
    return (rule, tuple(sorted(statics.items())), dtype, device, BACKEND)


class _Kernel:
    """A rule compiled by ``torch.compile``, called directly once its graph exists.

    Going through the compiled function costs ~50 µs per call here (dynamo's frame evaluation
    and guards, AOT and Inductor wrappers) against ~20 µs for a 40k-element update, and a step
    makes one call per large param. Our calls vary only in what the guards would re-check for
    nothing: sizes (dynamic), storage offsets and the values of 0-dim inputs, while dtype,
    device, rank and stride are fixed by the kernel's key and the 1-D inputs. So the first call
    with each signature (which state and scalar names, which of grad_scale/found_inf are given)
    goes through dynamo, and a capturing backend records Inductor's callable and where each of
    its inputs comes from; later calls with that signature call it directly: the generated
    module's own ``call`` where it can stand in for the wrappers (``_inductor``), ~2 µs a call
    for a small update against ~13 µs through AOT's runtime wrapper and ~6 µs for one tensor
    through torch's fused Adam (resnet50's 45 large params: ~0.5 ms a step).
    """

    def __init__(self, fn: Callable[..., None]) -> None:
        self.compiled = torch.compile(fn, fullgraph=True, dynamic=True, backend=self._capture)
        self.direct: dict[tuple, tuple[Callable[..., Any], list]] = {}
        self._call: Optional[tuple] = None
        self._captured: Optional[tuple[Callable[..., Any], list]] = None

    def _capture(self, gm: torch.fx.GraphModule, example_inputs: list) -> Callable[..., Any]:
        if BACKEND == "inductor":
            compiled, bare = _inductor(gm, example_inputs)
        else:
            backend = torch._dynamo.lookup_backend(BACKEND) if isinstance(BACKEND, str) else BACKEND
            compiled, bare = backend(gm, example_inputs), None
        slots = _slots(self._call, example_inputs) if self._call is not None else None
        if slots is None:
            self._captured = None
        else:
            self._captured = (bare or (lambda inputs: compiled(*inputs)), slots)
        return compiled

    def __call__(self, p: Tensor, g: Tensor, states: dict[str, Tensor], scalars: dict[str, Tensor],
                 grad_scale: Optional[Tensor], found_inf: Optional[Tensor]) -> None:
        signature = (tuple(states), tuple(scalars), grad_scale is None, found_inf is None)
        hit = self.direct.get(signature)
        if hit is not None:
            call, slots = hit
            call(_inputs(slots, (p, g, states, scalars, grad_scale, found_inf)))
            # As AOT's wrapper would, for the tensors the kernel wrote.
            increment_version((p, *states.values()))
            return
        # Dynamo sees aliases without autograd history: a param's 1-D view made under no_grad
        # and traced as an in-place target is refused ("a view was created in no_grad mode").
        args = (p.detach(), g.detach(), {k: t.detach() for k, t in states.items()}, scalars, grad_scale, found_inf)
        self._call, self._captured = args, None
        try:
            self.compiled(*args)
        finally:
            self._call = None
        if self._captured is not None:
            self.direct[signature] = self._captured


def _inductor(gm: torch.fx.GraphModule, example_inputs: list) -> tuple[Callable[..., Any], Optional[Callable[[list], Any]]]:
    """Inductor's compiled function, and the generated module's own ``call`` when it can stand
    in for it: the graph AOT autograd handed Inductor takes dynamo's inputs in dynamo's order and
    returns nothing (every update is an in-place write inside the kernel), so the wrappers
    around it (dynamo's frame, AOT's runtime wrapper: ~11 µs a call, against ~2 µs for the call
    itself) have nothing to do but bump the version counters of the tensors written."""
    from torch._inductor.compile_fx import compile_fx, compile_fx_inner

    inner: list = []

    def capture_inner(g: torch.fx.GraphModule, inputs: list, **kwargs: Any) -> Any:
        out = compile_fx_inner(g, inputs, **kwargs)
        inner.append((g, inputs, out))
        return out

    with torch._functorch.config.patch(enable_autograd_cache=False):
        compiled = compile_fx(gm, example_inputs, inner_compile=capture_inner)
    if len(inner) != 1:
        return compiled, None
    g, inputs, out = inner[0]
    outputs = g.graph.output_node().args[0]
    same = len(inputs) == len(example_inputs) and all(map(_same_input, inputs, example_inputs))
    call = getattr(out, "current_callable", None)
    return compiled, call if same and not outputs and call is not None else None


def _same_input(a: Any, b: Any) -> bool:
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        return a.dtype == b.dtype and a.dim() == b.dim()
    return isinstance(a, (int, torch.SymInt)) and isinstance(b, (int, torch.SymInt))


def _slots(call: tuple, example_inputs: list) -> Optional[list]:
    """Where each graph input comes from in ``call`` — (argument index, dict key or None), or
    None for the size — or None if one cannot be placed (then every call goes through dynamo)."""
    places: dict[int, tuple[int, Optional[str]]] = {}
    for i, arg in enumerate(call):
        if isinstance(arg, dict):
            places.update((id(t), (i, k)) for k, t in arg.items())
        elif arg is not None:
            places[id(arg)] = (i, None)
    slots: list = []
    for x in example_inputs:
        if isinstance(x, (int, torch.SymInt)):
            hint = x if isinstance(x, int) else x.node.hint
            if hint != call[0].numel():
                return None
            slots.append(None)
        elif id(x) in places:
            slots.append(places[id(x)])
        else:
            return None
    return slots


def _inputs(slots: list, args: tuple) -> list:
    """A kernel's inputs in its graph's order, fetched from ``args`` (``_Kernel.__call__``'s
    arguments) through ``_slots``."""
    return [args[0].numel() if slot is None else _fetch(args, slot) for slot in slots]


def _fetch(args: tuple, slot: tuple[int, Optional[str]]) -> Tensor:
    i, key = slot
    return args[i] if key is None else args[i][key]


def kernel(rule: Callable[..., None], statics: dict[str, Any], dtype: torch.dtype, device: torch.device) -> _Kernel:
    """The compiled kernel for ``rule`` with these static flags, dtype and device."""
    key = _key(rule, statics, dtype, device)
    found = _KERNELS.get(key)
    if found is None:
        name = f"{rule.__name__}_fused_{len(_KERNELS)}"
        code = _template.__code__.replace(co_name=name, co_qualname=name)
        scope = {"__builtins__": builtins, "_apply": _apply, "RULE": rule, "STATICS": dict(statics)}
        found = _Kernel(types.FunctionType(code, scope, name))
        _KERNELS[key] = found
    return found


def storage_order(t: Tensor) -> Optional[Tensor]:
    """``t``'s elements as a 1-D view in storage order, when ``t`` densely fills its storage
    span (any permutation of strides, e.g. channels_last); None otherwise."""
    if t.is_contiguous():
        return t.view(-1)
    expected = 1
    for stride, size in sorted((st, s) for s, st in zip(t.shape, t.stride()) if s != 1):
        if stride != expected:
            return None
        expected *= size
    return t.as_strided((t.numel(),), (1,), t.storage_offset())


def compiler_error(exc: Exception) -> RuntimeError:
    """The error ``fused=True`` raises when no kernel can be compiled here."""
    return RuntimeError(
        "torch_gd: fused=True needs torch.compile to build the update kernel, and it failed: "
        f"{type(exc).__name__}: {exc}. On the CPU install a C++ compiler (e.g. apt-get install "
        "g++); on CUDA install triton. Or construct the optimizer with fused=False (or leave it "
        "None) to use the eager path."
    )


class Call:
    """One group's fused step: its static flags and its numbers as 0-dim float64 tensors on
    each device (converted once per step, not once per kernel call)."""

    def __init__(self, spec: Any, kw: dict[str, Any], grad_scale: Optional[Tensor], found_inf: Optional[Tensor]) -> None:
        self.spec = spec
        self.rule = spec.rule
        self.uses_first = spec.uses_first
        self.statics: dict[str, Any] = {}
        self.numbers: dict[str, Any] = {}
        for name, value in kw.items():
            if name in ("scratch", "first", "step"):
                continue
            if isinstance(value, Tensor) or (not isinstance(value, bool) and value is not None and value != 0):
                self.numbers[name] = value
            elif isinstance(value, float):
                # A coefficient that switches a term off shapes the kernel itself, as the int 0:
                # dynamo would lift a float (0.0) into a graph input that no call passes.
                self.statics[name] = 0
            else:
                # Flags.
                self.statics[name] = value
        self.grad_scale, self.found_inf = grad_scale, found_inf
        self._scalars: dict[torch.device, dict[str, Tensor]] = {}
        self._per_count: dict[tuple, dict[str, Tensor]] = {}
        self._kernels: dict[tuple, _Kernel] = {}
        self._amps: dict[torch.device, tuple[Optional[Tensor], Optional[Tensor]]] = {}
        self._traced = self.statics if self.uses_first else {**self.statics, "first": False}

    def scalars(self, device: torch.device) -> dict[str, Tensor]:
        found = self._scalars.get(device)
        if found is None:
            found = {
                k: (v.to(device=device, dtype=torch.float64) if isinstance(v, Tensor)
                    else torch.tensor(v, dtype=torch.float64, device=device))
                for k, v in self.numbers.items()
            }
            self._scalars[device] = found
        return found

    def _dynamic(self, scalars: dict[str, Tensor], step: Tensor, dtype: torch.dtype) -> dict[str, Tensor]:
        """The per-run numbers: the step's coefficients (float64, cast once to the compute
        dtype), and for rules that read ``first`` whether this is the first *applied* step —
        on the device, since GradScaler may have skipped the host's first (torch's fused SGD
        then reads uninitialised momentum)."""
        scalars = dict(scalars)
        if self.spec.uses_step:
            scalars["step"] = step
        if self.spec.coefficients is not None:
            compute = torch.float32 if dtype in _LOW else dtype
            coefficients = self.spec.coefficients(**self.statics, **scalars)
            scalars.update((k, v.to(compute)) for k, v in coefficients.items())
        if self.uses_first:
            scalars["first"] = step == 1
        return scalars

    def _amp(self, device: torch.device) -> tuple[Optional[Tensor], Optional[Tensor]]:
        found = self._amps.get(device)
        if found is None:
            move = lambda t: None if t is None else t.to(device)  # noqa: E731
            found = self._amps[device] = (move(self.grad_scale), move(self.found_inf))
        return found

    def _kernel(self, dtype: torch.dtype, device: torch.device) -> "_Kernel":
        found = self._kernels.get((dtype, device))
        if found is None:
            found = self._kernels[(dtype, device)] = kernel(self.rule, self._traced, dtype, device)
        return found

    def warm(self, keys: tuple[str, ...], kinds: set, step_dtype: torch.dtype) -> None:
        """Compile every kernel this step needs on dummies before anything is
        updated: a missing compiler fails here, with nothing half-applied."""
        for dtype, device in kinds:
            key = _key(self.rule, self._traced, dtype, device)
            if key in _WARM:
                continue
            make = lambda: torch.zeros(_WARM_NUMEL, dtype=dtype, device=device)  # noqa: E731
            scalars = self._dynamic(self.scalars(device), torch.ones((), dtype=step_dtype, device=device), dtype)
            try:
                self._kernel(dtype, device)(make(), make(), {k: make() for k in keys}, scalars, *self._amp(device))
            except Exception as exc:  # noqa: BLE001 - any compiler failure gets the same advice
                raise compiler_error(exc) from exc
            _WARM.add(key)

    def prepare(self, items: list[tuple[Tensor, Optional[Tensor], dict[str, Tensor], Tensor]]) -> Optional["Prepared"]:
        """Calls for these 1-D params, their grads (None: given at each step), states and step
        counters, prepared once for steps with this call's flags and numbers (``Prepared``);
        None where a kernel has not been called with this signature yet, or GradScaler takes
        part."""
        if self.grad_scale is not None or self.found_inf is not None:
            return None
        boxes: dict[tuple, dict[str, Tensor]] = {}
        firsts: dict[tuple, Tensor] = {}
        calls = []
        for p, g, states, step in items:
            kind = (p.device, p.dtype)
            if kind not in boxes:
                boxes[kind] = {k: v.clone() for k, v in self._dynamic(self.scalars(p.device), step, p.dtype).items()}
                firsts[kind] = step
            if p.numel() < 2:
                return None
            hit = self._kernel(p.dtype, p.device).direct.get((tuple(states), tuple(boxes[kind]), True, True))
            if hit is None:
                return None
            call, slots = hit
            # Without GradScaler's tensors (the signature above) no slot refers to them.
            inputs = _inputs(slots, (p, g, states, boxes[kind], None, None))
            calls.append((call, inputs, slots.index((1, None)) if g is None and (1, None) in slots else None))
        written = [t for p, _, states, _ in items for t in (p, *states.values())]
        return Prepared(self._traced, tuple(self.numbers), boxes, firsts, calls, written)

    def step_numbers(self, steps: Tensor, count: Optional[Hashable], device: torch.device, dtype: torch.dtype) -> dict[str, Tensor]:
        """The numbers a kernel takes at this step. ``count`` names the step being taken (the
        host's count, with the params' GradScaler history where histories differ): params with
        equal ones share their step's coefficients, computed once per step instead of once per
        call."""
        if torch.compiler.is_compiling():
            # Traced by dynamo (a user's torch.compile around step()): a host count used as a
            # key would be guarded on, and change, every step; each call reads its own step.
            count = None
        key = (count, device, dtype)
        scalars = self._per_count.get(key) if count is not None else None
        if scalars is None:
            scalars = self._dynamic(self.scalars(device), steps[0] if steps.dim() else steps, dtype)
            if count is not None:
                self._per_count[key] = scalars
        return scalars

    def __call__(self, p: Tensor, g: Tensor, states: dict[str, Tensor], steps: Tensor, count: Optional[Hashable] = None) -> None:
        """Update 1-D ``p`` and ``states`` in place; ``steps`` (the run's step counters,
        already advanced) are wound back where GradScaler found infs. ``count``: see
        ``step_numbers``."""
        scalars = self.step_numbers(steps, count, p.device, p.dtype)
        grad_scale, found_inf = self._amp(p.device)
        if p.numel() < 2:
            _apply(self.rule, self._traced, p, g, states, scalars, grad_scale, found_inf)
        else:
            self._kernel(p.dtype, p.device)(p, g, states, scalars, grad_scale, found_inf)
        if found_inf is not None:
            steps.sub_(found_inf)

    def per_tensor(self, p: Tensor, g: Tensor, states: dict[str, Tensor], steps: Tensor, count: Optional[Hashable],
                   scratch: Optional[Tensor]) -> None:
        """One large param, flattened in storage order when its layout allows (a grad of another
        layout is first copied into ``scratch``, which has p's strides), else through
        contiguous copies written back afterwards."""
        pf = storage_order(p)
        if pf is not None and all(t.stride() == p.stride() for t in states.values()):
            if g.stride() != p.stride() and scratch is not None:
                g = scratch.copy_(g)
            gf = storage_order(g) if g.stride() == p.stride() else None
            if gf is not None:
                self(pf, gf, {k: storage_order(t) for k, t in states.items()}, steps, count)
                return
        pc, sc = p.contiguous(), {k: t.contiguous() for k, t in states.items()}
        self(pc.view(-1), g.contiguous().view(-1), {k: t.view(-1) for k, t in sc.items()}, steps, count)
        for dst, src in [(p, pc), *((states[k], sc[k]) for k in states)]:
            if dst.data_ptr() != src.data_ptr():
                dst.copy_(src)


class Prepared:
    """Kernel calls prepared once (``Call.prepare``) for steady steps: a packed bucket's chunks,
    or a fused group's large params. Each call's inputs are kept in the kernel's order, with at
    most the grad to fill in, and the step's numbers sit in 0-dim tensors that one copy per
    step refreshes. A steady step of resnet50 makes 46 such calls; going through ``Call`` for
    each cost ~40 µs of bookkeeping between kernels once the step's traffic has evicted the
    objects it reads, against ~3 µs now."""

    def __init__(self, traced: dict[str, Any], numbers: tuple[str, ...], boxes: dict[tuple, dict[str, Tensor]],
                 firsts: dict[tuple, Tensor], calls: list[tuple[Callable[[list], Any], list, Optional[int]]],
                 written: list[Tensor]) -> None:
        self.traced, self.numbers = traced, numbers
        self.boxes, self.firsts = boxes, firsts
        self.calls, self.written = calls, written

    def fits(self, call: Call) -> bool:
        """Whether ``call`` (this step's flags and numbers) runs the kernels prepared."""
        return (call.grad_scale is None and call.found_inf is None and call._traced == self.traced
                and tuple(call.numbers) == self.numbers)

    def refresh(self, call: Call, count: Optional[Hashable]) -> None:
        """Load this step's numbers (``Call.step_numbers``); the step counters have been
        advanced."""
        for (device, dtype), box in self.boxes.items():
            fresh = call.step_numbers(self.firsts[(device, dtype)], count, device, dtype)
            torch._foreach_copy_(list(box.values()), [fresh[k] for k in box])

    def run(self, i: int, g: Optional[Tensor] = None) -> None:
        """Call ``i``, with its grad when it was prepared without one."""
        kernel, inputs, at = self.calls[i]
        inputs = inputs.copy()  # the call empties the list it is given
        if at is not None:
            inputs[at] = g
        kernel(inputs)

    def bump(self) -> None:
        """Bump the version counters of what the calls wrote, as an in-place op would."""
        increment_version(self.written)

    def __call__(self, call: Call, grads: list[Tensor], count: Optional[Hashable]) -> None:
        """Every call, with ``grads`` (1-D, in order), then the version bumps."""
        self.refresh(call, count)
        for i, g in enumerate(grads):
            self.run(i, g)
        self.bump()
