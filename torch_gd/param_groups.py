"""Param groups with weight-decay exclusion and layer-wise learning-rate decay.

:func:`make_param_groups` builds what is otherwise written by hand for every model: no weight
decay on biases, norm parameters and other 1-d tensors, and (optionally) a learning rate that
shrinks geometrically from the head towards the input (BEiT/timm "layer decay").
"""

from __future__ import annotations

import fnmatch
import math
import numbers
import re
import sys
from collections.abc import Callable, Iterable
from typing import Any, Optional, Union

from torch import Tensor, nn
from torch.nn.modules.batchnorm import _NormBase

__all__ = ["make_param_groups", "default_no_decay"]

NoDecay = Union[Callable[[str, Tensor, nn.Module], bool], Iterable[str]]

# _NormBase covers BatchNorm1d/2d/3d, SyncBatchNorm and InstanceNorm1d/2d/3d (LocalResponseNorm
# has no parameters). getattr: RMSNorm only exists in recent torch versions.
_NORMS = tuple(
    cls for cls in (_NormBase, nn.LayerNorm, nn.GroupNorm, getattr(nn, "RMSNorm", None)) if cls
)

# `layers.N.`, `h.N.` (GPT-2), `layer.N.` (BERT), `blocks.N.` (timm ViT) as whole name segments,
# so e.g. `branch.0.` or `sublayers.0.` do not count.
_BLOCK = re.compile(r"(?:^|\.)(?:layers|h|layer|blocks)\.(\d+)\.")
_EMBED = ("embed", "wte", "wpe", "pos", "token")  # "token" also covers cls_token, token_type_*
_VIT_BLOCK = re.compile(r"encoder\.layers\.encoder_layer_(\d+)\.")


def default_no_decay(name: str, param: Tensor, module: nn.Module) -> bool:
    """The default rule: biases, parameters of torch's norm layers and tensors with ndim <= 1."""
    return name.endswith("bias") or isinstance(module, _NORMS) or param.ndim <= 1


def make_param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    no_decay: NoDecay = default_no_decay,
    layer_decay: Optional[float] = None,
    layer_of: Optional[Callable[[str], int]] = None,
) -> list[dict[str, Any]]:
    """Torch-style param groups for ``model``: weight decay where it belongs, optional layer decay.

    Every group has ``"params"``, an absolute ``"lr"`` and ``"weight_decay"``, so the result goes
    straight into any ``torch.optim`` or ``torch_gd`` optimizer, and LR schedulers (which scale each
    group's ``initial_lr``) keep the ratios between groups.

    Which parameters get no weight decay (``weight_decay=0.0``) is decided by ``no_decay``:

    * ``default_no_decay`` (the default): names ending in ``"bias"``, parameters owned by torch's
      norm layers (BatchNorm*, SyncBatchNorm, InstanceNorm*, LayerNorm, GroupNorm, RMSNorm) and any
      tensor with ``ndim <= 1``.
    * a collection of glob patterns (:mod:`fnmatch`, matched against the full parameter name,
      e.g. ``["*pos_embed", "cls_token"]``): matching names are excluded *in addition to* the
      default rule.
    * a predicate ``(name, param, module) -> bool`` (``module`` owns the parameter): replaces the
      default rule entirely; compose with ``default_no_decay`` to extend it.

    Parameters with ``requires_grad=False`` are left out. A parameter shared by several modules
    (tied weights) appears once, under its first name in ``model.named_parameters()``. Inside a
    group, parameters keep ``named_parameters()`` order.

    Without ``layer_decay`` there are at most two groups, decay then no-decay (empty ones are
    skipped). With ``layer_decay=d`` (``0 < d <= 1``) a parameter at depth ``layer_of(name)`` gets
    ``lr * d ** (num_layers - 1 - layer)``: the deepest layer gets ``lr`` itself. ``num_layers`` is
    one more than the largest depth over all of the model's parameters (frozen ones too, so
    freezing part of a model does not shift the others' learning rates). There is one group per
    (layer, decay/no-decay), ordered by layer, decay first, and each such group also carries a
    ``"layer_id"`` key (its depth; torch keeps extra keys in ``param_groups`` and ``state_dict``).

    ``layer_of`` defaults, used when ``layer_decay`` is given and ``layer_of`` is None:

    * torchvision ``ResNet``: ``conv1``/``bn1`` are 0, the residual blocks are numbered
      consecutively across stages (``layer1.0`` is 1, ..., ``layer4.1`` is 8 for resnet18),
      ``fc`` is last.
    * torchvision ``VisionTransformer``: ``conv_proj``, ``class_token``, ``encoder.pos_embedding``
      are 0, ``encoder.layers.encoder_layer_N`` is N+1, ``encoder.ln`` and ``heads`` are last.
    * otherwise by name: a name containing the segment ``layers.N.``, ``h.N.`` (GPT-2),
      ``layer.N.`` (BERT) or ``blocks.N.`` (timm ViT) is N+1; else a name containing ``embed``,
      ``wte``, ``wpe``, ``pos`` or ``token`` is 0; anything else (final norm, head) is last.
      A model with no such block names raises ``ValueError``: pass ``layer_of``.

    ``layer_of`` is ignored when ``layer_decay`` is None.

    Example::

        groups = torch_gd.make_param_groups(model, lr=1e-3, weight_decay=0.05, layer_decay=0.75)
        opt = torch_gd.AdamW(groups)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, step / 1000))
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    _check_range("lr", lr, ">= 0", lambda v: v >= 0)
    _check_range("weight_decay", weight_decay, ">= 0", lambda v: v >= 0)
    if layer_decay is not None:
        _check_range("layer_decay", layer_decay, "in (0, 1]", lambda v: 0 < v <= 1)
    lr, weight_decay = float(lr), float(weight_decay)  # not numpy scalars or ints in the optimizer
    is_no_decay = _no_decay_rule(no_decay)

    named = list(model.named_parameters())  # deduplicates tied weights, keeps the first name
    if layer_decay is None:
        depth = {name: 0 for name, _ in named}
    else:
        depth = _depths(model, [name for name, _ in named], layer_of)
    num_layers = max(depth.values(), default=-1) + 1

    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, param in named:
        if not param.requires_grad:
            continue
        owner = model.get_submodule(name.rpartition(".")[0])
        key = (depth[name], bool(is_no_decay(name, param, owner)))
        if key not in groups:
            layer, exempt = key
            group: dict[str, Any] = {"params": [], "lr": lr, "weight_decay": 0.0 if exempt else weight_decay}
            if layer_decay is not None:
                group["lr"] = lr * layer_decay ** (num_layers - 1 - layer)
                group["layer_id"] = layer
            groups[key] = group
        groups[key]["params"].append(param)
    return [groups[key] for key in sorted(groups)]  # by layer, then decay (False) before no-decay


def _check_range(arg: str, value: Any, allowed: str, ok: Callable[[float], bool]) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{arg} must be a real number, got {type(value).__name__}")
    if not (math.isfinite(value) and ok(value)):
        raise ValueError(f"{arg} must be a finite number {allowed}, got {value!r}")


def _no_decay_rule(no_decay: NoDecay) -> Callable[[str, Tensor, nn.Module], bool]:
    if callable(no_decay):
        return no_decay
    # A bare string would iterate as single characters and match almost nothing as intended.
    if isinstance(no_decay, str) or not isinstance(no_decay, Iterable):
        raise TypeError("no_decay must be a predicate (name, param, module) -> bool or a list of patterns")
    patterns = tuple(no_decay)
    if not all(isinstance(p, str) for p in patterns):
        raise TypeError("no_decay patterns must be strings")

    def rule(name: str, param: Tensor, module: nn.Module) -> bool:
        return default_no_decay(name, param, module) or any(fnmatch.fnmatchcase(name, p) for p in patterns)

    return rule


def _depths(model: nn.Module, names: list[str], layer_of: Optional[Callable[[str], int]]) -> dict[str, int]:
    """Depth of every parameter; the default rules return None for "last" (the head)."""
    if layer_of is not None:
        depth = {}
        for name in names:
            layer = layer_of(name)
            if isinstance(layer, bool) or not isinstance(layer, numbers.Integral) or layer < 0:
                raise ValueError(f"layer_of must return an int >= 0, got {layer!r} for {name!r}")
            depth[name] = int(layer)
        return depth
    default = _default_layer_of(model, names)
    found = {name: layer for name in names if (layer := default(name)) is not None}
    last = max(found.values(), default=-1) + 1
    return {name: found.get(name, last) for name in names}


def _default_layer_of(model: nn.Module, names: list[str]) -> Callable[[str], Optional[int]]:
    # torchvision is optional: a torchvision model can only exist if torchvision was imported
    # already, so look in sys.modules instead of importing it.
    tv = sys.modules.get("torchvision.models")
    if tv is not None and isinstance(model, tv.ResNet):
        blocks = [f"layer{s}.{b}." for s in range(1, 5) for b in range(len(getattr(model, f"layer{s}")))]

        def resnet(name: str) -> Optional[int]:
            if name.startswith(("conv1.", "bn1.")):
                return 0
            return next((i + 1 for i, prefix in enumerate(blocks) if name.startswith(prefix)), None)

        return resnet
    if tv is not None and isinstance(model, tv.VisionTransformer):

        def vit(name: str) -> Optional[int]:
            if m := _VIT_BLOCK.match(name):
                return int(m.group(1)) + 1
            return 0 if name.startswith(("conv_proj.", "class_token", "encoder.pos_embedding")) else None

        return vit
    if not any(_BLOCK.search(name) for name in names):
        raise ValueError(
            f"no default layer numbering for {type(model).__name__}: its parameter names contain none of "
            "'layers.N.', 'h.N.', 'layer.N.', 'blocks.N.'; pass layer_of=lambda name: depth"
        )
    return _name_layer


def _name_layer(name: str) -> Optional[int]:
    if m := _BLOCK.search(name):
        return int(m.group(1)) + 1
    return 0 if any(key in name for key in _EMBED) else None
