"""The base class every torch_gd optimizer derives from: the only ``step()`` loop.

An optimizer subclass supplies its update rule (``_spec``), its argument checks
(``_check_group``), the state keys a group needs (``_state_keys``) and the values its rule
reads from a group (``_hyper``). Everything else — param groups, hooks, ``state_dict`` in torch's
format, packing, paths — is shared here and in ``_engine``.
"""

from __future__ import annotations

import functools
import operator
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from . import _checks, _precision, _private
from ._clip import PendingClip, total_norm
from ._private import traceable_step, use_grad_for_differentiable
from ._engine import Engine, Spec, scalar_dtype
from ._state import Basis, State
from ._steady import grad, grad_meta


_layout = operator.itemgetter(1)
# The precision policy's group settings, and their value in groups that predate them.
_POLICY_DEFAULTS = {"param_update": None, "state_dtype": None}
_is_none = functools.partial(operator.is_, None)


class Optimizer(torch.optim.Optimizer):
    """A ``torch.optim.Optimizer`` whose step runs one update rule through the shared engine.

    Keyword-only arguments of every optimizer, after torch's (not in torch):

    - ``check_finite=True`` makes ``step()`` raise a RuntimeError naming the param when a grad
      holds NaN or Inf, before anything is updated. It reads one flag from the device per step,
      so it cannot be used with ``capturable=True``. torch's behaviour, the default, lets
      NaN/Inf propagate element-wise into params and state.
    - ``param_update`` (a group setting), for bf16/fp16 params (fp32/fp64 params are updated as
      without it): ``"fp32_master"`` keeps an fp32 copy of the param in state (``master``) that
      the update runs on, the param being its rounding; ``"kahan"`` keeps a compensation buffer
      in the param's dtype (``compensation``) carrying what rounding dropped into the next
      update; ``"stochastic_rounding"`` rounds the new value up or down at random, unbiased,
      with no extra state. ``None`` (default): torch's rounding to nearest.
    - ``state_dtype`` (a group setting): ``torch.bfloat16`` or ``torch.float32`` keeps the
      rule's state tensors (moments, momentum, sums) in that dtype whatever the param's; they
      are updated in fp32, and bf16 state is rounded stochastically on its way back. ``None``
      (default): the param's dtype, as torch.
    - ``generator``: stochastic rounding's random bits are a hash of a seed, the step and the
      element, drawn from no generator (so the caller's random stream is not shifted, and
      steps are capturable in CUDA graphs). The seed is the initial seed of ``generator``, or
      of torch's default generator (``torch.manual_seed``) when it is None, read when the
      optimizer is built.
    """

    _spec: Spec
    # Flags a group from an older checkpoint may lack, and the value torch gives them.
    _flag_defaults: dict[str, Any] = {}
    # A run-time policy rather than training state: kept out of param groups and checkpoints.
    check_finite: bool = False
    # The factor of the last ``clip_grad_norm``, until the step that applies it or ``zero_grad``.
    _clip: Optional[PendingClip] = None
    # Whether a loaded checkpoint's fp32 masters are still to be checked against their params.
    _check_masters: bool = False
    # What torch wraps ``step`` in at construction (the profiler's range and the step hooks):
    # its own, made lean (``_private.profile_hook_step``).
    profile_hook_step = staticmethod(_private.profile_hook_step)

    def __init__(self, params: Any, defaults: dict[str, Any], *, check_finite: bool = False,
                 param_update: Optional[str] = None, state_dtype: Optional[torch.dtype] = None,
                 generator: Optional[torch.Generator] = None) -> None:
        _checks.flag("check_finite", check_finite)
        self.check_finite = check_finite
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        self._noise_seed = _precision.seed_of(generator)
        defaults = {**defaults, "param_update": param_update, "state_dtype": state_dtype}
        self._check_group(defaults)
        defaults = self._normalize(defaults)
        _checks.implementation(defaults)
        self._engine = Engine(self._spec)
        self._distinct_params: dict[int, Basis] = {}
        super().__init__(params, defaults)
        self.state = State(self.state)
        if defaults.get("fused"):
            # GradScaler then hands us grad_scale/found_inf instead of unscaling and syncing.
            self._step_supports_amp_scaling = True

    # -------------------------------------------------------------- subclass hooks

    def _check_group(self, group: dict[str, Any]) -> None:
        """Raise for bad hyperparameters in ``group`` (torch's errors where torch has them).

        Subclasses check their numbers and call this for the switches."""
        for name, default in self._flag_defaults.items():
            _checks.flag(name, group[name], optional=name in ("foreach", "fused"))
        _checks.finite_check_allowed(self.check_finite, group)
        _checks.precision_policy(group)

    def _normalize(self, defaults: dict[str, Any]) -> dict[str, Any]:
        """Defaults as torch stores them, once checked."""
        return defaults

    def _state_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        """The per-param state tensors this group's options need, in torch's order."""
        return ()

    def _hyper(self, group: dict[str, Any]) -> dict[str, Any]:
        """The keyword arguments the rule reads from ``group``."""
        raise NotImplementedError

    def _rule_kw(self, group: dict[str, Any]) -> dict[str, Any]:
        """``_hyper`` and the group's precision policy, as the engine hands them to the rule
        (a policy set by hand in a group is checked as the constructor checks it)."""
        policy = _precision.rule_kw(group, self._noise_seed)
        if not policy:
            return self._hyper(group)
        _checks.precision_policy(group)
        return {**self._hyper(group), **policy}

    def _sparse_error(self, group: dict[str, Any]) -> Optional[str]:
        """torch's message when a sparse grad reaches this group and cannot be used, else None."""
        return "`fused=True` does not support sparse gradients" if group.get("fused") else None

    # -------------------------------------------------------------- torch.optim contract

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if isinstance(param_group, dict):
            merged = {**self.defaults, **param_group}
            self._check_group(merged)
        _private.add_param_group(self, param_group)
        if not hasattr(self, "_spans"):  # constructing, or unpickled (not part of the state)
            self._spans: dict[int, list] = {}
            for group in self.param_groups[:-1]:
                _checks.params(group, self._spans)
        try:
            _checks.params(self.param_groups[-1], self._spans)
        except (TypeError, ValueError, RuntimeError):
            self.param_groups.pop()  # leave the optimizer as it was
            raise
        self._engine.invalidate()

    def describe(self) -> dict[str, Any]:
        """How this optimizer runs its steps, for tests and for looking into performance (not
        part of torch's API; keys keep their meaning, new ones may be added):

        - ``private_apis``: whether torch_gd's fast paths through private torch APIs are on;
        - ``groups``: by param group index, once it has stepped: its packed ``buckets`` (each
          with ``device``, ``dtype``, ``params``, ``numel``, ``chunks`` and ``copies``: how param
          values move in and out — ``"addresses"`` (one compiled copy loop), ``"foreach"``, or
          None before its first fused step), ``per_tensor`` (params updated in place, one rule
          call each) and ``prepared`` (whether those calls are prepared for steady fused steps);
          for an eager group, once a steady step has run, ``runs``: how those params are
          updated, as lists of the ``id`` of params updated by one rule call (through torch's
          multi-tensor ops where a list holds several);
        - ``kernels``: the fused kernels the groups use: ``rule``, ``statics`` (flags compiled
          in), ``dtype``, ``device``, ``direct`` (the callables called without dynamo, one per
          call signature), ``bare`` (call signatures whose prepared calls go straight to the
          compiled C++ function), ``dynamo_calls`` (calls through torch.compile's wrapper, in every
          optimizer of the process) and ``loaded`` (call signatures loaded compiled from the
          on-disk kernel store instead of compiled in this process);
        - ``steps``: ``replayed`` (steps that found nothing changed and reran the last plan),
          ``checked`` (steps planned anew) and ``prepared`` (group steps whose large params'
          fused kernels ran from prepared calls);
        - ``lane``: once a recorded step has replayed, the prepared large-param calls it runs
          across all fused groups: ``groups``, ``calls``, and ``one_thread`` (the calls of
          small CPU params, run on one thread); None before.
        """
        return self._engine.describe()

    def kernel_calls(self) -> Callable[[], None]:
        """The last steady step's compiled update kernels alone, as one callable that calls each
        again, on the tensors it last read, with nothing around it: no checks, gathers, copies
        back, step counters or new numbers (not part of torch's API). Each call updates its
        params and state once more. For measuring what a step spends around its kernels
        (``benchmarks/host_time.py``: step time minus this callable's). Needs two steps of
        fused groups in a row with every param's grad set (``describe()["steps"]["replayed"]``
        counts the steps that found the recorded one still valid); raises ``RuntimeError``
        otherwise."""
        return self._engine.kernel_calls()

    @torch.no_grad()
    def clip_grad_norm(self, max_norm: float, norm_type: float = 2.0, error_if_nonfinite: bool = False,
                       skip_nonfinite: bool = False) -> Tensor:
        """Clip the gradient norm of every param of every group, in the next ``step()``.

        Returns the total norm of the grads, viewed as one vector, as
        ``torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type, error_if_nonfinite)``
        returns it (params without a grad left out; over all groups and devices; the global
        norm for DTensor params; torch's dtype). On the CPU, large fp32/fp64 grads' 2-norm is
        summed in rows, twice as fast as torch's and closer to the exact value (torch's sums a
        25.6M-element grad 1.5e-3 off, this 3e-6); elsewhere it is torch's value bit for bit.
        The grads are not scaled here: the next ``step()``
        multiplies each raw grad by ``clamp(max_norm / (total_norm + 1e-6), max=1)`` as it
        enters the update (before weight decay and the moments), and leaves ``p.grad`` as it
        is. Code that reads the grads between this call and the step sees them unclipped.
        A step whose grads are not the tensors the norm was taken of (a new backward after
        ``model.zero_grad()`` or ``p.grad = None``, a param added since) is not clipped, as
        torch's in-place clip would not have touched those grads; grads changed in place
        (GradScaler's ``unscale_``) are.

        The factor stays on the device (no host sync unless ``error_if_nonfinite=True``, which
        reads the norm, as torch's does). It is used by the next ``step()`` only, also when
        GradScaler skips that step; a second call before the step replaces it, and
        ``zero_grad()`` discards it. Called on GradScaler's still-scaled grads (before
        ``scaler.unscale_(opt)``), the norm is of the scaled grads, as torch's would be.

        ``skip_nonfinite=True``: when the norm is inf or NaN, the next step leaves params,
        state and step counts as they are (torch's clip would write NaN into every weight).
        Fused groups decide this on the device, inside the kernel, as they do for GradScaler's
        infs. The other paths compute their step counts and bias corrections on the host, so
        they read the flag there: one sync per step, as GradScaler does for them.
        """
        max_norm = _checks.max_norm(max_norm)
        _checks.flag("error_if_nonfinite", error_if_nonfinite)
        _checks.flag("skip_nonfinite", skip_nonfinite)
        if skip_nonfinite:
            for group in self.param_groups:
                _checks.skip_allowed(group)
        grads = self._all_grads()
        norm = total_norm(grads, norm_type, error_if_nonfinite)
        self._clip = PendingClip(norm, max_norm, skip_nonfinite, grads)
        return norm

    def _all_grads(self) -> list[Tensor]:
        """Every grad of every group, once per param."""
        seen: set[int] = set()
        return [p.grad for group in self.param_groups for p in group["params"]
                if p.grad is not None and id(p) not in seen and not seen.add(id(p))]

    def zero_grad(self, set_to_none: bool = True) -> None:
        """torch's ``zero_grad``; it also discards a pending ``clip_grad_norm`` factor."""
        self._clip = None
        super().zero_grad(set_to_none)

    def state_dict(self) -> dict[str, Any]:
        state_dict = super().state_dict()
        # Plain dicts, as torch's: torch.load(weights_only=True) refuses other classes.
        state_dict["state"] = {k: dict(v) if isinstance(v, dict) else v for k, v in state_dict["state"].items()}
        return state_dict

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "check_finite": self.check_finite, "_noise_seed": self._noise_seed}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.state = State(self.state)
        if not hasattr(self, "_noise_seed"):
            self._noise_seed = _precision.seed_of(None)
        for group in self.param_groups:
            for name, default in {**self._flag_defaults, **_POLICY_DEFAULTS}.items():
                group.setdefault(name, default)
        # State tensors were replaced (load_state_dict, unpickling, deepcopy): re-pack them.
        self._engine = Engine(self._spec)
        self._distinct_params: dict[int, Basis] = {}
        if self._spec.uses_step:
            self._steps_as_tensors()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's ``load_state_dict``, keeping the precision policy's state as the policy says.

        torch takes the checkpoint's group settings and casts every state tensor but ``step`` to
        its param's dtype. Here, after that: a group whose checkpoint has no policy settings (one
        saved by torch.optim) keeps this optimizer's; state tensors go back to the policy's
        ``state_dtype``, as saved; an fp32 master is kept in fp32 as saved, and rebuilt from the
        param where it is missing or not fp32, or, at the next step (when the model's weights
        have been loaded too, in either order), where the param is not its rounding (a master
        saved by torch.optim, which casts it to the param's dtype: what it held beyond that is
        lost).
        """
        policies = [{k: g[k] for k in _POLICY_DEFAULTS} for g in self.param_groups]
        saved_groups = state_dict["param_groups"]
        saved_ids = [i for g in saved_groups for i in g["params"]]
        before = {i: dict(st) for i, st in state_dict["state"].items() if isinstance(st, dict)}
        super().load_state_dict(state_dict)
        by_saved_id = dict(zip(saved_ids, (p for g in self.param_groups for p in g["params"])))
        for group, saved, policy in zip(self.param_groups, saved_groups, policies):
            for key, value in policy.items():
                if key not in saved:
                    group[key] = value
        saved_of = {id(by_saved_id[i]): st for i, st in before.items() if i in by_saved_id}
        for group in self.param_groups:
            if not _precision.active(group):
                continue
            kw = _precision.rule_kw(group, self._noise_seed)
            for p in group["params"]:
                st = self.state.get(p)
                if st:
                    _precision.restore(st, p, _precision.state_dtypes(self._state_keys(group), kw, p.dtype),
                                       saved_of.get(id(p), {}))
        self._check_masters = True
        self._engine.invalidate()

    def _steps_as_tensors(self) -> None:
        """Old checkpoints store ``step`` as a Python number; torch converts it, and so do we."""
        for group in self.param_groups:
            on_device = group.get("capturable") or group.get("fused")
            for p in group["params"]:
                st = self.state.get(p)
                if st and "step" in st and not torch.is_tensor(st["step"]):
                    device = p.device if on_device else "cpu"
                    st["step"] = torch.tensor(float(st["step"]), dtype=scalar_dtype(), device=device)

    @traceable_step
    @use_grad_for_differentiable
    def step(self, closure: Optional[Callable[[], float]] = None) -> Optional[float]:
        """Perform a single optimization step.

        Args:
            closure (Callable, optional): A closure that reevaluates the model
                and returns the loss.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self._check_masters and not torch.compiler.is_compiling():
            _precision.check_masters(self.param_groups, self.state)
            self._check_masters = False
        amp = (getattr(self, "grad_scale", None), getattr(self, "found_inf", None))
        clip = self._clip
        if clip is not None and not clip.of(self._all_grads()):
            clip = self._clip = None
        fused_amp = amp
        if clip is not None:
            # Only a fused kernel keeps the old values where the norm was not finite; the other
            # paths count steps on the host, which must then know.
            on_device = all(group.get("fused") for group in self.param_groups if group["params"])
            if clip.skip is not None and not on_device and clip.nonfinite():
                self._clip = None
                return loss
            fused_amp = clip.fold(*amp, skip=on_device)
        plain = amp == (None, None) and not self.check_finite
        eager = not torch.compiler.is_compiling()
        if eager:
            self._engine.begin()
        if (plain and eager
                and self._engine.replay(self.param_groups, self.state, fused_amp, clip)):
            self._clip = None
            return loss
        # Everything that can fail (bad grads, re-packing, compiling fused kernels) happens for
        # every group before any group is updated.
        collected = [self._with_grads(group) for group in self.param_groups]
        if self.check_finite and amp[1] is None:  # with found_inf, GradScaler skips such steps
            for group in self.param_groups:
                _checks.finite_check_allowed(True, group)
            _checks.finite_grads(self.param_groups, [(params, grads) for params, grads, _ in collected])
        work: list = []
        for gi, (group, (params, grads, metas)) in enumerate(zip(self.param_groups, collected)):
            fused = bool(group.get("fused"))
            if params and not fused and (amp[0] is not None or amp[1] is not None):
                # Only a fused kernel can unscale and skip without a host sync; applying the
                # update anyway would ignore GradScaler's inf check (torch asserts here too).
                raise RuntimeError(
                    "GradScaler passed grad_scale/found_inf to a param group with fused=False; "
                    "construct every group with fused=True, or leave fused unset in all of them"
                )
            work.append(self._engine.prepare(
                gi, group, params, grads, metas, self._state_keys(group), self._rule_kw(group), self.state,
                fused_amp if fused else amp, None if fused else clip)
                if params else None)
        for w in work:
            if w is not None:
                self._engine.execute(w, self.state)
        self._clip = None
        if eager:
            self._engine.leave(work, self.state)
            if plain:
                self._engine.record(self.param_groups, work, self.state, self._rule_kw, self._state_keys, fused_amp, clip)
            else:
                self._engine.forget_program()
        return loss

    def _with_grads(self, group: dict[str, Any]) -> tuple[list[Tensor], list[Tensor], list[tuple]]:
        """The distinct params of ``group`` that have a grad, their grads, and each grad's
        (dtype, layout, device, shape).

        torch updates a param listed twice in a group twice (and its paths disagree on the
        result); we update each distinct param once.
        """
        params: list[Tensor] = group["params"]
        grads = list(map(grad, params))
        if not self._distinct(group) or any(map(_is_none, grads)):
            seen: set[int] = set()
            kept = [(p, g) for p, g in zip(params, grads)
                    if g is not None and id(p) not in seen and not seen.add(id(p))]
            params, grads = [p for p, _ in kept], [g for _, g in kept]
        metas = list(map(grad_meta, grads))
        error = self._sparse_error(group) if torch.sparse_coo in set(map(_layout, metas)) else None
        if error is not None:
            raise RuntimeError(error)
        if group.get("differentiable") and torch.is_grad_enabled():
            if any(p.is_leaf and p.requires_grad for p in params):
                # torch fails on the first in-place update, after other state has moved.
                raise RuntimeError(
                    "differentiable=True records the update with autograd, and a leaf tensor that "
                    "requires grad cannot be updated in place: optimize non-leaf tensors (e.g. "
                    "p.clone()), as torch's differentiable optimizers require"
                )
        return params, grads, metas

    def _distinct(self, group: dict[str, Any]) -> bool:
        """Whether ``group``'s params are distinct: checked once per list of params, then
        compared by identity (no param is read)."""
        params = group["params"]
        known = self._distinct_params.get(id(group))
        if known is not None and known.holds(params):
            return True
        if len(set(map(id, params))) != len(params):
            return False
        self._distinct_params[id(group)] = Basis(list(params))
        return True
