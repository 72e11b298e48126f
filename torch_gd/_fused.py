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

from . import _kernel_store, _precision, _private

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
    """The body every kernel traces: unscale, update, and keep the old values where skipped
    (``_precision.run``).

    fp16/bf16 tensors are updated in fp32 and rounded once on the way out, as torch's fused
    kernels do, or as the group's precision policy says. GradScaler hands the scale and the inf
    flag as device tensors; dividing and selecting inside the kernel saves the host sync of its
    own ``found_inf.item()``.
    """
    g = g.float() if g.dtype in _LOW else g
    if grad_scale is not None:
        g = g / grad_scale
    _precision.run(rule, p, g, states, {**scalars, **statics}, found_inf)


def _template(p, g, states, scalars, grad_scale, found_inf):  # pragma: no cover - traced
    _apply(RULE, STATICS, p, g, states, scalars, grad_scale, found_inf)  # noqa: F821


def _kind(t: Optional[Tensor]) -> Optional[tuple]:
    """What a direct call takes for granted of GradScaler's (or a clip's) tensor: the compiled
    graph was traced for its dtype and rank."""
    return None if t is None else (t.dtype, t.dim())


def _signature(states: dict[str, Tensor], scalars: dict[str, Tensor], grad_scale: Optional[Tensor],
               found_inf: Optional[Tensor]) -> tuple:
    """What a compiled graph was traced for, beyond its kernel's key: which states and numbers
    it takes, with their dtypes (a number's follows the default dtype or a policy), and the kind
    of GradScaler's tensors."""
    return (tuple((k, t.dtype) for k, t in states.items()), tuple((k, t.dtype) for k, t in scalars.items()),
            _kind(grad_scale), _kind(found_inf))


def kinds(amp: tuple[Optional[Tensor], Optional[Tensor]]) -> tuple:
    """``_kind`` of GradScaler's (grad_scale, found_inf)."""
    return (_kind(amp[0]), _kind(amp[1]))


def _key(rule: Callable[..., None], statics: dict[str, Any], dtype: torch.dtype, device: torch.device) -> tuple:
    return (rule, tuple(sorted(statics.items())), dtype, device, BACKEND, _private.enabled())


class _Kernel:
    """A rule compiled by ``torch.compile``, called directly once its graph exists.

    Going through the compiled function costs ~50 µs per call here (dynamo's frame evaluation
    and guards, AOT and Inductor wrappers) against ~20 µs for a 40k-element update, and a step
    makes one call per large param. Our calls vary only in what the guards would re-check for
    nothing: sizes (dynamic), storage offsets and the values of 0-dim inputs, while dtype,
    device, rank and stride are fixed by the kernel's key and the 1-D inputs. So the first call
    with each signature (which state and scalar names, the kind of grad_scale/found_inf given)
    goes through dynamo, and a capturing backend records Inductor's callable and where each of
    its inputs comes from; later calls with that signature call it directly: the generated
    module's own ``call`` where it can stand in for the wrappers (``_private.inductor_with_call``), ~2 µs a call
    for a small update against ~13 µs through AOT's runtime wrapper and ~6 µs for one tensor
    through torch's fused Adam (resnet50's 45 large params: ~0.5 ms a step).
    """

    def __init__(self, fn: Callable[..., None], stored: Optional[dict[str, str]] = None) -> None:
        self.fn = fn
        self.direct: dict[tuple, tuple[Callable[..., Any], list]] = {}
        self._call: Optional[tuple] = None
        self._captured: Optional[tuple[Callable[..., Any], list]] = None
        self.dynamo_calls = 0  # calls through torch.compile's wrapper
        # What identifies the kernel in the on-disk store (``_kernel_store``), where it may be kept.
        self.stored = stored
        self.loaded = 0  # call signatures loaded from the store
        self._store_key: Optional[dict[str, str]] = None
        self._bare: dict[tuple, Optional[tuple[Callable[..., Any], tuple[int, ...]]]] = {}
        # Made at the first compile: ``torch.compile`` imports dynamo (~1 s), which a kernel
        # loaded from the store never needs.
        self._compiled: Optional[Callable[..., None]] = None

    @property
    def compiled(self) -> Callable[..., None]:
        if self._compiled is None:
            # Without the private APIs: torch.compile's public wrapper on every call.
            self._compiled = torch.compile(self.fn, fullgraph=True, dynamic=True,
                                           backend=self._capture if _private.enabled() else BACKEND)
        return self._compiled

    def _capture(self, gm: torch.fx.GraphModule, example_inputs: list) -> Callable[..., Any]:
        if BACKEND == "inductor":
            compiled, bare = _private.inductor_with_call(gm, example_inputs)
        else:
            backend = torch._dynamo.lookup_backend(BACKEND) if isinstance(BACKEND, str) else BACKEND
            compiled, bare = backend(gm, example_inputs), None
        slots = _slots(self._call, example_inputs) if self._call is not None else None
        if slots is None:
            self._captured = None
        else:
            self._captured = (bare or (lambda inputs: compiled(*inputs)), slots)
            if bare is not None and self._store_key is not None:
                _kernel_store.save(self._store_key, bare, slots, example_inputs)
        return compiled

    def _public(self, exc: BaseException) -> None:
        """Go through the public wrapper from now on: a private API failed while compiling."""
        _private.report("calling Inductor's compiled kernel directly", exc)
        self._compiled = torch.compile(self.fn, fullgraph=True, dynamic=True, backend=BACKEND)

    def __call__(self, p: Tensor, g: Tensor, states: dict[str, Tensor], scalars: dict[str, Tensor],
                 grad_scale: Optional[Tensor], found_inf: Optional[Tensor]) -> None:
        signature = _signature(states, scalars, grad_scale, found_inf)
        hit = self.direct.get(signature)
        if hit is not None:
            call, slots = hit
            call(_inputs(slots, (p, g, states, scalars, grad_scale, found_inf)))
            # As AOT's wrapper would, for the tensors the kernel wrote.
            increment_version((p, *states.values()))
            return
        args = (p, g, states, scalars, grad_scale, found_inf)
        self._store_key = None
        if self.stored is not None and _kernel_store.usable(p.device) and not torch.compiler.is_compiling():
            key = _kernel_store.key_of(self.stored, args)
            hit = _kernel_store.load(key)
            if hit is not None:
                self.direct[signature] = hit
                self.loaded += 1
                self(*args)
                return
            if not _private.compiler_settings_changed():  # else code the key would not describe
                self._store_key = key
        # Dynamo sees aliases without autograd history: a param's 1-D view made under no_grad
        # and traced as an in-place target is refused ("a view was created in no_grad mode").
        args = (p.detach(), g.detach(), {k: t.detach() for k, t in states.items()}, scalars, grad_scale, found_inf)
        self._call, self._captured = args, None
        self.dynamo_calls += 1
        with _private.quiet_cpp_builder():
            try:
                self.compiled(*args)
            except Exception as exc:
                cause = _private_cause(exc)
                if cause is None:
                    raise
                self._public(cause)
                self.compiled(*args)
            finally:
                self._call = None
        if self._captured is not None:
            self.direct[signature] = self._captured

    def bare(self, signature: tuple, inputs: list) -> Optional[tuple[Callable[..., Any], tuple[int, ...]]]:
        """The C++ function behind the direct call for ``signature`` and the order it takes the
        call's ``inputs`` in (``_private.bare_kernel``; their kinds are what matters), checked
        once to write what the call writes on the store's check inputs; None where there is
        none, or on another device than the CPU."""
        if signature not in self._bare:
            call, slots = self.direct[signature]
            found = _private.bare_kernel(call) if all(
                not isinstance(x, Tensor) or x.device.type == "cpu" for x in inputs) else None
            if found is not None:
                function, order = found
                kinds = [None if isinstance(x, int) else (str(x.dtype), x.dim()) for x in inputs]
                spread = lambda xs: function(*[xs[i] for i in order])  # noqa: E731
                if _kernel_store.fingerprint(spread, slots, kinds) != _kernel_store.fingerprint(call, slots, kinds):
                    found = None
            self._bare[signature] = found
        return self._bare[signature]


def _private_cause(exc: BaseException) -> Optional[BaseException]:
    """The ``PrivateAPIError`` behind ``exc`` (dynamo wraps a backend's errors), if any."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, _private.PrivateAPIError):
            return exc
        seen.add(id(exc))
        exc = getattr(exc, "inner_exception", None) or exc.__cause__ or exc.__context__
    return None


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
            if _private.size_hint(x) != call[0].numel():
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
        stored = {"rule": f"{rule.__module__}.{rule.__qualname__}", "statics": repr(sorted(statics.items())),
                  "dtype": str(dtype), "device": device.type} if BACKEND == "inductor" and _kernel_store.holds(rule) else None
        found = _Kernel(types.FunctionType(code, scope, name), stored)
        _KERNELS[key] = found
    return found


def describe(k: _Kernel, rule: Callable[..., None], statics: dict[str, Any], dtype: torch.dtype,
             device: torch.device) -> dict[str, Any]:
    """A kernel as ``Engine.describe`` reports it."""
    return {"rule": rule.__name__, "statics": dict(statics), "dtype": dtype, "device": device,
            "direct": [getattr(call, "__name__", type(call).__name__) for call, _ in k.direct.values()],
            "bare": sum(found is not None for found in k._bare.values()),
            "dynamo_calls": k.dynamo_calls, "loaded": k.loaded}


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
            if isinstance(value, Tensor) or (isinstance(value, (int, float)) and not isinstance(value, bool)
                                             and value != 0):
                self.numbers[name] = value
            elif isinstance(value, float):
                # A coefficient that switches a term off shapes the kernel itself, as the int 0:
                # dynamo would lift a float (0.0) into a graph input that no call passes.
                self.statics[name] = 0
            else:
                # Flags.
                self.statics[name] = value
        # GradScaler's (or a folded clip's) tensors kind: which are given, their dtype and rank.
        self.amp_kinds = kinds((grad_scale, found_inf))
        # Their values, copied each step into tensors the call owns on each device, so that
        # calls prepared once (``prepare``) read every step's values.
        self._amps: dict[torch.device, tuple[Optional[Tensor], Optional[Tensor]]] = {}
        self.load_amp(grad_scale, found_inf)
        self._scalars: dict[torch.device, dict[str, Tensor]] = {}
        self._per_count: dict[tuple, dict[str, Tensor]] = {}
        self._kernels: dict[tuple, _Kernel] = {}
        self._traced = self.statics if self.uses_first else {**self.statics, "first": False}
        self._kw = dict(kw)
        self._numbers_plain = not any(isinstance(v, Tensor) for v in self.numbers.values())
        # Whether stochastic rounding draws bits at each step's count (``_precision``).
        self._noisy = kw.get("param_update") == "stochastic_rounding" or kw.get("state_dtype") is not None
        # Whether every number is a Python number and no step can be skipped on the device:
        # then a step's numbers can be computed on the host wherever the host knows the step
        # count (``host_numbers``; a rule without ``step`` knows it only on the device).
        self.plain = self._numbers_plain and found_inf is None and not (self._noisy and not spec.uses_step)
        self._values_key()

    def _values_key(self) -> None:
        # What ``host_numbers`` depends on besides the count: calls with equal keys (param
        # groups with the same settings) share a step's numbers.
        self.values_key = (self.rule, tuple(self.statics.items()), tuple(self.numbers.items())) if self.plain else None

    def reusable(self, kw: dict[str, Any], grad_scale: Optional[Tensor], found_inf: Optional[Tensor]) -> bool:
        """Whether this call serves a step with hyperparameters ``kw`` and these GradScaler (or
        clip) tensors as well: the same plain numbers and flags, no tensor numbers (a tensor may
        have been changed in place: it is read anew every step), tensors of the same kinds
        (their values are loaded by ``load_amp``)."""
        if (not self._numbers_plain or kinds((grad_scale, found_inf)) != self.amp_kinds
                or len(kw) != len(self._kw)):
            return False
        mine = self._kw
        for k, v in kw.items():
            w = mine.get(k, _MISSING)
            if type(v) is not type(w) or isinstance(v, Tensor) or (v != w and k != "scratch"):
                return False
        return True

    def renumber(self, hyper: dict[str, Any]) -> bool:
        """Take over new values of a ``plain`` call's numbers (a scheduler's lr), where they
        leave its kernels as they are: every flag and every zero (a term switched off) the
        same. False, changing nothing, otherwise."""
        if not self.plain:
            return False
        numbers = {}
        for name, value in hyper.items():
            if name in self.statics:
                static = self.statics[name]
                if type(value) is not type(static) and not (static == 0 and isinstance(value, float)):
                    return False
                if value != static:
                    return False
            elif name in self.numbers:
                if isinstance(value, (bool, Tensor)) or value is None or value == 0:
                    return False
                numbers[name] = value
        self.numbers.update(numbers)
        self._kw.update(hyper)
        self._scalars.clear()
        self._per_count.clear()
        self._values_key()
        return True

    def host_numbers(self, count: int) -> dict[str, Any]:
        """The numbers of the step that makes ``count`` steps, as Python values (for a ``plain``
        call, whose only unknown is the step): the same float64 arithmetic as ``_dynamic``."""
        values = dict(self.numbers)
        if self.spec.uses_step:
            values["step"] = float(count)
        if self._noisy:
            values["noise_count"] = float(count)
        if self.spec.coefficients is not None:
            values.update(self.spec.coefficients(**self.statics, **values))
        if self.uses_first:
            values["first"] = count == 1
        return values

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
        if self._noisy:
            scalars["noise_count"] = step
        if self.spec.coefficients is not None:
            compute = torch.float32 if dtype in _LOW else dtype
            coefficients = self.spec.coefficients(**self.statics, **scalars)
            scalars.update((k, v.to(compute)) for k, v in coefficients.items())
        if self.uses_first:
            scalars["first"] = step == 1
        return scalars

    def load_amp(self, grad_scale: Optional[Tensor], found_inf: Optional[Tensor]) -> None:
        """This step's GradScaler (or clip) tensors, of this call's kinds: copied on the device
        into the tensors every device's kernels read."""
        self.grad_scale, self.found_inf = grad_scale, found_inf
        for boxes in self._amps.values():
            for box, value in zip(boxes, (grad_scale, found_inf)):
                if box is not None:
                    box.copy_(value)

    def wind_back(self, counters: list[Tensor]) -> None:
        """Take back this step from step counters advanced before prepared calls ran, where
        GradScaler (or a clip with ``skip_nonfinite``) skips it on the device."""
        if self.found_inf is not None:
            for t in counters:
                t.sub_(self._amp(t.device)[1])

    def _amp(self, device: torch.device) -> tuple[Optional[Tensor], Optional[Tensor]]:
        found = self._amps.get(device)
        if found is None:
            own = lambda t: None if t is None else t.to(device, copy=True)  # noqa: E731
            found = self._amps[device] = (own(self.grad_scale), own(self.found_inf))
        return found

    def _kernel(self, dtype: torch.dtype, device: torch.device) -> "_Kernel":
        found = self._kernels.get((dtype, device))
        if found is None:
            found = self._kernels[(dtype, device)] = kernel(self.rule, self._traced, dtype, device)
        return found

    def kernels(self) -> list[dict[str, Any]]:
        """The kernels this call has used, described (``describe``)."""
        return [describe(k, self.rule, self._traced, dtype, device) for (dtype, device), k in self._kernels.items()]

    def warm(self, kinds: dict[tuple[torch.dtype, torch.device], dict[str, torch.dtype]],
             step_dtype: torch.dtype) -> None:
        """Compile every kernel this step needs on dummies before anything is updated: a missing
        compiler fails here, with nothing half-applied. ``kinds``: the params' (dtype, device),
        each with its state tensors' dtypes. Traced by dynamo (a user's ``torch.compile`` around
        ``step()``) there is nothing to compile: see ``__call__``."""
        if torch.compiler.is_compiling():
            return
        for (dtype, device), layout in kinds.items():
            compiled = self._kernel(dtype, device)
            # Each variant (with or without GradScaler's or a clip's tensors) is its own graph,
            # tuned for the size it is first compiled at.
            key = (_key(self.rule, self._traced, dtype, device), *map(_kind, self._amp(device)))
            if key in _WARM:
                continue
            make = lambda like=dtype: torch.zeros(_WARM_NUMEL, dtype=like, device=device)  # noqa: E731
            scalars = self._dynamic(self.scalars(device), torch.ones((), dtype=step_dtype, device=device), dtype)
            try:
                compiled(make(), make(), {k: make(like) for k, like in layout.items()}, scalars, *self._amp(device))
            except Exception as exc:  # noqa: BLE001 - any compiler failure gets the same advice
                raise compiler_error(exc) from exc
            _WARM.add(key)

    def prepare(self, items: list[tuple[Tensor, Optional[Tensor], dict[str, Tensor], Tensor]]) -> Optional["Prepared"]:
        """Calls for these 1-D params, their grads (None: given at each step), states and step
        counters, prepared once for steps with this call's flags and numbers (``Prepared``);
        None where a kernel has not been called with this signature yet, or dynamo traces the
        step. GradScaler's (or a clip's) tensors are this call's own, loaded every step."""
        if torch.compiler.is_compiling():
            return None
        boxes: dict[tuple, dict[str, Tensor]] = {}
        firsts: dict[tuple, Tensor] = {}
        calls = []
        for p, g, states, step in items:
            kind = (p.device, p.dtype)
            if kind not in boxes:
                boxes[kind] = _Boxes(self._dynamic(self.scalars(p.device), step, p.dtype))
                firsts[kind] = step
            if p.numel() < 2:
                return None
            compiled = self._kernel(p.dtype, p.device)
            signature = _signature(states, boxes[kind], *self._amp(p.device))
            hit = compiled.direct.get(signature)
            if hit is None:
                return None
            call, slots = hit
            # A grad given at each step is stood in for by its param (the same dtype and rank),
            # so that ``bare`` sees every input's kind.
            inputs = _inputs(slots, (p, p if g is None else g, states, boxes[kind], *self._amp(p.device)))
            at = slots.index((1, None)) if g is None and (1, None) in slots else None
            bare = compiled.bare(signature, inputs)
            if bare is not None and (at is None or bare[1].count(at) == 1):
                function, order = bare
                calls.append((function, [inputs[i] for i in order], None if at is None else order.index(at), True))
            else:
                calls.append((call, inputs, at, False))
        written = [t for p, _, states, _ in items for t in (p, *states.values())]
        return Prepared(self._traced, tuple(self.numbers), boxes, firsts, calls, written, self._amps, self.amp_kinds)

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
                if len(self._per_count) > 16:  # a call reused across steps: keep recent counts
                    self._per_count.clear()
                self._per_count[key] = scalars
        return scalars

    def __call__(self, p: Tensor, g: Tensor, states: dict[str, Tensor], steps: Tensor, count: Optional[Hashable] = None) -> None:
        """Update 1-D ``p`` and ``states`` in place; ``steps`` (the run's step counters,
        already advanced) are wound back where GradScaler found infs. ``count``: see
        ``step_numbers``.

        Traced by dynamo (a user's ``torch.compile`` around ``step()``), the kernel's body runs
        inline, so that the user's compile puts it in their graph, as it does torch's fused
        optimizers: a call into our own compiled kernel from inside their trace would make dynamo
        trace its wrappers and the views it keeps."""
        scalars = self.step_numbers(steps, count, p.device, p.dtype)
        grad_scale, found_inf = self._amp(p.device)
        if p.numel() < 2 or torch.compiler.is_compiling():
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


_MISSING = object()
# dtypes a NumPy view can write.
_NUMPY = (torch.float64, torch.float32, torch.bool)


def numpy_view(t: Tensor) -> Any:
    """A NumPy array sharing ``t``'s memory, or None (a device tensor, a dtype NumPy cannot
    write, or NumPy not installed: torch does not require it)."""
    if t.device.type != "cpu" or t.dtype not in _NUMPY:
        return None
    try:
        return t.numpy()
    except RuntimeError:  # "Numpy is not available"
        return None


class _Boxes(dict):
    """A prepared call's numbers by name: 0-dim views of one 1-D tensor per dtype, so that on
    the CPU a step's numbers computed on the host are written with one NumPy assignment per
    dtype (~1 µs) instead of a torch op per number or per step (~2-5 µs each)."""

    def __init__(self, values: dict[str, Tensor]) -> None:
        super().__init__()
        by_dtype: dict[torch.dtype, list[str]] = {}
        for k, v in values.items():
            by_dtype.setdefault(v.dtype, []).append(k)
        self._writers: Optional[list] = []
        for keys in by_dtype.values():
            base = torch.stack([values[k].reshape(()) for k in keys])
            self.update(zip(keys, base.unbind()))
            array = numpy_view(base) if self._writers is not None else None
            if array is None:
                self._writers = None
            else:
                self._writers.append((array, keys))

    def write(self, values: dict[str, Any]) -> bool:
        """Write ``values`` (Python numbers) into the boxes; False where they cannot be."""
        if self._writers is None:
            return False
        for array, keys in self._writers:
            array[:] = [values[k] for k in keys]
        return True


def run_call(call: tuple[Callable[..., Any], list, Optional[int], bool], g: Optional[Tensor]) -> None:
    """One prepared call (``Prepared.calls``), with its grad ``g`` where it takes one."""
    kernel, inputs, at, bare = call
    if bare:  # the C++ function itself, which takes its inputs as arguments
        if at is None:
            kernel(*inputs)
        else:
            args = inputs.copy()
            args[at] = g
            kernel(*args)
        return
    inputs = inputs.copy()  # the generated ``call`` empties the list it is given
    if at is not None:
        inputs[at] = g
    kernel(inputs)


class Prepared:
    """Kernel calls prepared once (``Call.prepare``) for steady steps: a packed bucket's chunks,
    or a fused group's large params. Each call's inputs are kept in the kernel's order, with at
    most the grad to fill in, and the step's numbers sit in 0-dim tensors that one copy per
    step refreshes. A steady step of resnet50 makes 46 such calls; going through ``Call`` for
    each cost ~40 µs of bookkeeping between kernels once the step's traffic has evicted the
    objects it reads, against ~3 µs for a prepared call."""

    def __init__(self, traced: dict[str, Any], numbers: tuple[str, ...], boxes: dict[tuple, dict[str, Tensor]],
                 firsts: dict[tuple, Tensor], calls: list[tuple[Callable[..., Any], list, Optional[int], bool]],
                 written: list[Tensor], amps: dict, amp_kinds: tuple) -> None:
        self.traced, self.numbers = traced, numbers
        self.boxes, self.firsts = boxes, firsts
        self.calls, self.written = calls, written
        # Every call reads its grad by address (``_Kernel.bare``): a grad with contiguous
        # elements is passed as it is, without a 1-D view.
        self.any_shape = all(bare for *_, bare in calls)
        self.amps, self.amp_kinds = amps, amp_kinds

    def fits(self, call: Call) -> bool:
        """Whether ``call`` (this step's flags and numbers) runs the kernels prepared: with
        GradScaler's (or a clip's) tensors, only the call whose tensors they read."""
        return (call.amp_kinds == self.amp_kinds and (call._amps is self.amps or self.amp_kinds == (None, None))
                and call._traced == self.traced and tuple(call.numbers) == self.numbers)

    def refresh(self, call: Call, count: Optional[Hashable], host_count: Optional[int] = None,
                values: Optional[dict[str, Any]] = None) -> None:
        """Load this step's numbers (``Call.step_numbers``); the step counters have been
        advanced. ``host_count``: the step count every param of the calls reaches with this
        step, where the host knows it (no GradScaler history): a ``plain`` call's numbers are
        then computed in Python (or given: ``values``, ``call.host_numbers(host_count)``) and
        written through ``_Boxes``, with no torch op."""
        if host_count is not None and call.plain:
            if values is None:
                values = call.host_numbers(host_count)
            if all(box.write(values) for box in self.boxes.values()):
                return
        for (device, dtype), box in self.boxes.items():
            fresh = call.step_numbers(self.firsts[(device, dtype)], count, device, dtype)
            torch._foreach_copy_(list(box.values()), [fresh[k] for k in box])

    def run(self, i: int, g: Optional[Tensor] = None) -> None:
        """Call ``i``, with its grad when it was prepared without one (1-D, or of any shape
        with contiguous elements where ``any_shape``)."""
        run_call(self.calls[i], g)

    def bump(self) -> None:
        """Bump the version counters of what the calls wrote, as an in-place op would."""
        increment_version(self.written)

    def __call__(self, call: Call, grads: list[Tensor], count: Optional[Hashable], host_count: Optional[int] = None) -> None:
        """Every call, with ``grads`` (1-D, in order), then the version bumps."""
        self.refresh(call, count, host_count)
        for i, g in enumerate(grads):
            self.run(i, g)
        self.bump()
