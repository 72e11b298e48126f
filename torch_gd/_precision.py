"""The precision policy: how an update reaches bf16/fp16 params, and the dtype state is kept in.

A group's ``param_update`` and ``state_dtype`` (keyword arguments of every optimizer) wrap its
rule, on every path, in one function (``run``): the rule runs on fp32 working copies of the
param and its state, and the results go back to storage as the policy says.

- ``"fp32_master"``: the working param is an fp32 copy kept in state (``master``); the param is
  its rounding to nearest.
- ``"kahan"``: the working param is the param plus a compensation buffer in the param's dtype
  (``compensation``), which keeps what rounding the result dropped: the rounding error is
  carried into the next update instead of lost.
- ``"stochastic_rounding"``: the working param is the param; the result is rounded up or down
  with probabilities that make its expectation the fp32 value, so updates far below half an
  ulp still move the param on average.

``state_dtype`` keeps the rule's state tensors (moments, momentum, sums) in bf16 or fp32
whatever the param's dtype; bf16 state is rounded stochastically on its way back.

Random bits come from a counter-based hash of (seed, step, element index, the value being
rounded): no generator state, nothing drawn from torch's generators, the same bits eagerly and
inside a compiled kernel, on the device, capturable in a CUDA graph.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import Tensor

LOW = (torch.float16, torch.bfloat16)
PARAM_UPDATES = (None, "fp32_master", "kahan", "stochastic_rounding")
STATE_DTYPES = (None, torch.bfloat16, torch.float32)
# The state keys the policies add, beside the rule's own.
MASTER, COMPENSATION = "master", "compensation"
BUFFERS = (MASTER, COMPENSATION)
# What a group's rule keywords carry for ``run`` once a policy is set (``rule_kw``).
KEYS = ("param_update", "state_dtype", "noise_seed")
_M32 = 0xFFFFFFFF


def active(group: dict) -> bool:
    """Whether ``group`` sets a policy."""
    return group.get("param_update") is not None or group.get("state_dtype") is not None


def rule_kw(group: dict, seed: int) -> dict[str, Any]:
    """What ``run`` reads from the rule's keywords: nothing for a group without a policy, so
    that its rule is called as it is."""
    if not active(group):
        return {}
    return {"param_update": group.get("param_update"), "state_dtype": group.get("state_dtype"), "noise_seed": seed}


def state_dtypes(keys: tuple[str, ...], kw: dict[str, Any], dtype: torch.dtype) -> dict[str, torch.dtype]:
    """Each state tensor a param of ``dtype`` keeps, with its dtype: the rule's ``keys`` and,
    for bf16/fp16 params, the policy's own buffer."""
    # fp64 params keep fp64 state: the update runs in fp32 at most.
    state_dtype = kw.get("state_dtype") if dtype in (torch.float32, *LOW) else None
    out = {k: state_dtype or dtype for k in keys}
    update = kw.get("param_update")
    if dtype in LOW and update == "fp32_master":
        out[MASTER] = torch.float32
    elif dtype in LOW and update == "kahan":
        out[COMPENSATION] = dtype
    return out


def init(key: str, t: Tensor, p: Tensor) -> bool:
    """Fill a policy buffer before its param's first step: the master with the param's value,
    the compensation with zeros. False for the rule's own keys."""
    if key == MASTER:
        t.copy_(p)
    elif key == COMPENSATION:
        t.zero_()
    else:
        return False
    return True


def restore(st: dict, p: Tensor, dtypes: dict[str, torch.dtype], saved: dict[str, Any]) -> None:
    """A loaded param state ``st`` (cast by torch to the param's dtype) put back in the dtypes
    the policy keeps (``dtypes``), from ``saved`` (the checkpoint's tensors, before torch's cast)
    where it has them: an fp32 master of the param's shape as saved (``check_masters`` rebuilds
    it at the next step if the param is not its rounding), anything else the param's dtype
    cannot hold exactly (fp32 moments of a bf16 param) from the saved tensor."""
    for k, dtype in dtypes.items():
        t, before = st.get(k), saved.get(k)
        if k == MASTER:
            ok = isinstance(before, Tensor) and before.dtype == torch.float32 and before.shape == p.shape
            st[k] = _like(p, before if ok else p.detach())
        elif t is not None and t.dtype != dtype:
            source = before if isinstance(before, Tensor) and before.shape == t.shape else t
            st[k] = source.to(t.device, dtype, copy=True)  # not the checkpoint's own tensor


def check_masters(groups: list[dict], state: dict) -> None:
    """Rebuild from its param every fp32 master the param is not the rounding of (a checkpoint
    loaded before the model's weights are, a master saved by torch.optim in bf16): one pass and
    one host read per param, once after a load."""
    for group in groups:
        for p in group["params"]:
            master = state.get(p, {}).get(MASTER)
            if master is not None and not torch.equal(master.to(p.dtype), p.detach()):
                master.copy_(p.detach())


def _like(p: Tensor, values: Tensor) -> Tensor:
    """An fp32 tensor with ``p``'s layout holding ``values``."""
    out = torch.empty_like(p, dtype=torch.float32, memory_format=torch.preserve_format)
    return out.copy_(values)


def seed_of(generator: Optional[torch.Generator]) -> int:
    """The noise seed: from the initial seed of ``generator``, or of torch's default one (set by
    ``torch.manual_seed``), which reading does not advance. Never 0 (a zero number would be
    compiled into a kernel as a constant)."""
    seed = (generator.initial_seed() if generator is not None else torch.initial_seed()) & ((1 << 64) - 1)
    return (_mix((seed & _M32) ^ _mix(seed >> 32)) & 0x7FFFFFFF) | 1


def run(rule: Callable[..., None], p: Tensor, g: Tensor, states: dict[str, Tensor], kw: dict[str, Any],
        found_inf: Optional[Tensor] = None, start: int = 0) -> None:
    """``rule`` on fp32 working copies of ``p`` and ``states``, written back as ``kw``'s policy
    says. ``found_inf`` (a fused kernel's GradScaler or clip flag): where it is set, every
    tensor keeps its old value. ``start``: where ``p`` starts in its param, for the random
    bits (a chunk of a param draws those of its elements)."""
    kw = dict(kw)
    update, state_dtype = kw.pop("param_update", None), kw.pop("state_dtype", None)
    seed, count = kw.pop("noise_seed", 1), kw.pop("noise_count", None)
    if count is None:
        count = kw.get("step", 0)
    master, comp = states.get(MASTER), states.get(COMPENSATION)
    own = {k: t for k, t in states.items() if k not in BUFFERS}
    low = p.dtype in LOW
    if master is not None:
        # Compiled, a new value: Inductor makes a second pass over the master to round it into
        # the param when the rule updates it in place (resnet50 AdamW: 30.6 ms, 14-15 with this).
        w = master.clone() if torch.compiler.is_compiling() else master
    elif comp is not None:
        w = p.float() + comp.float()
    else:
        w = p.float() if low else p
    work = {k: t.float() if t.dtype in LOW else t for k, t in own.items()}
    # Stored tensors the rule updates in place (it works on them directly), with their old values.
    # Matched by identity, never by ``id()``: dynamo would guard on the ids and recompile each call.
    saved = []
    if found_inf is not None:
        for t in (p, master, *own.values()):
            if t is not None and (t is w or any(t is v for v in work.values())):
                saved.append((t, t.clone()))
    g32 = g.float() if g.dtype in LOW else g
    kw.pop("scratch", None)
    rule(w, g32, **work, **kw, scratch=g32 if g32 is not g else None)
    writes: list[tuple[Tensor, Tensor]] = []
    if master is not None:
        writes += [(master, w), (p, w.to(p.dtype))]
    elif comp is not None:
        rounded = nearest(w, p.dtype)
        writes += [(p, rounded.to(p.dtype)), (comp, (w - rounded).to(comp.dtype))]
    elif update == "stochastic_rounding" and low:
        writes.append((p, stochastic_round(w, p.dtype, _noise(seed, count, 0, w, start))))
    else:
        writes.append((p, w))
    for i, (k, t) in enumerate(own.items(), start=1):
        new = work[k]
        if state_dtype is not None and t.dtype in LOW:
            new = stochastic_round(new, t.dtype, _noise(seed, count, i, new, start))
        writes.append((t, new))
    for t, new in writes:
        if found_inf is not None:
            new = torch.where(found_inf > 0, next((old for s, old in saved if s is t), t), new)
        if new is not t:
            t.copy_(new)


def nearest(x: Tensor, dtype: torch.dtype, split: Optional[bool] = None) -> Tensor:
    """fp32 ``x`` rounded to nearest on the values of ``dtype`` (bf16 or fp16), still in fp32.

    Not ``x.to(dtype).float()``: a compiled kernel keeps values in fp32 registers between ops
    and drops that round trip (Kahan's compensation was zero in the fused kernel; Inductor's
    ``emulate_precision_casts`` keeps it on torch 2.14 but not on 2.12). On the CPU, Veltkamp's
    split: ``t - (t - x)`` with ``t = x·(2^k + 1)`` keeps the top 24 − k bits of ``x``, rounded
    to nearest, in three float ops (as fast as the cast: 2.2-2.4 ms on 8M elements here;
    integer rounding 6.9 ms). Elsewhere integer rounding of the bits, which stays exact where a
    compiler contracts ``x·c − y`` into a fused multiply-add (Triton does). ``split`` forces
    one or the other (tests)."""
    if split is None:
        split = x.device.type == "cpu"
    bits = 16 if dtype == torch.bfloat16 else 13
    if split:
        t = x * float(2**bits + 1)
        out = torch.where(x.abs() < 2.0**100, t - (t - x), x)  # beyond, x·c overflows
    else:
        b = x.view(torch.int32)
        out = ((b + (((b >> bits) & 1) + ((1 << (bits - 1)) - 1))) & -(1 << bits)).view(torch.float32)
        out = torch.where(torch.isfinite(x), out, x)
    if dtype == torch.float16:  # below 2⁻¹⁴ fp16's values are the multiples of 2⁻²⁴
        out = torch.where(x.abs() < 2.0**-14, (x * 2.0**24).round() * 2.0**-24, out)
    return out


def stochastic_round(x: Tensor, dtype: torch.dtype, r: Tensor) -> Tensor:
    """fp32 ``x`` rounded to ``dtype`` (bf16 or fp16) up or down, up with probability equal to
    the distance from the lower neighbour in ulps, from random bits ``r`` (int32).

    The low bits fp32 has beyond ``dtype`` are a fraction of an ulp: adding a uniform random
    number of that many bits and truncating rounds up exactly as often as that fraction says
    (torchao's ``bf16_stochastic_round``). fp16 keeps 13 fewer bits, and below 2⁻¹⁴ its ulp is
    2⁻²⁴, where the value is scaled to an integer and rounded with 23 of the bits."""
    bits = x.view(torch.int32)
    drop = 16 if dtype == torch.bfloat16 else 13
    out = ((bits + (r & ((1 << drop) - 1))) & -(1 << drop)).view(torch.float32)
    if dtype == torch.float16:
        scaled = x * 2.0**24  # exact: subnormal fp16 are the multiples of 2⁻²⁴
        low = scaled.floor()
        up = ((r >> 8) & 0x7FFFFF).to(torch.float32) * 2.0**-23 < scaled - low
        out = torch.where(x.abs() < 2.0**-14, (low + up.to(torch.float32)) * 2.0**-24, out)
    return torch.where(torch.isfinite(x), out, x).to(dtype)


def _noise(seed: Any, count: Any, salt: int, x: Tensor, start: int = 0) -> Tensor:
    """32 random bits per element of ``x`` (int32): a hash of the seed, the step, which tensor of
    the update (``salt``), the element's index (from ``start``) and its value.

    Per element the hash runs in int32, which vectorises (int64 products do not here: twice the
    time); the per-step part in int64, on the host or in a 0-dim tensor."""
    base = _mix(_mix(_int(seed) ^ salt) ^ _int(count)) & 0x7FFFFFFF
    base = base.to(torch.int32) if isinstance(base, Tensor) else base
    index = torch.arange(start, start + x.numel(), device=x.device, dtype=torch.int64).to(torch.int32).view(x.shape)
    return _mix32(_mix32(index ^ base) ^ x.view(torch.int32))


def _int(x: Any) -> Any:
    return x.to(torch.int64) & _M32 if isinstance(x, Tensor) else int(x) & _M32


def _mix(x: Any) -> Any:
    """A 32-bit integer hash (lowbias32's shape) in int64 arithmetic that never overflows:
    both multipliers are below 2³¹ and every product is masked back to 32 bits."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x5BD1E995) & _M32
    return x ^ (x >> 16)


def _mix32(x: Tensor) -> Tensor:
    """``_mix`` in int32 arithmetic: products wrap around (two's complement), and the masks make
    the arithmetic right shifts logical ones."""
    x = x ^ ((x >> 16) & 0xFFFF)
    x = x * 0x7FEB352D
    x = x ^ ((x >> 15) & 0x1FFFF)
    x = x * 0x5BD1E995
    return x ^ ((x >> 16) & 0xFFFF)
