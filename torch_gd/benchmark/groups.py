"""Param-group layouts. Every implementation of a case, torch's and ours, is built with the
same groups, so the comparison shows what grouping costs each step:

- ``one``: one group (today's benchmarks, the simplest training code);
- ``two``: weight decay on params with ndim ≥ 2 and none on the others (biases, norms), the
  split most vision and transformer recipes make;
- ``block``: a group per block with layer-wise lr decay, lr·0.8^depth (see :func:`depths`; the
  stem keeps the full lr here, where ``torch_gd.make_param_groups`` gives it to the head: for
  step time only the number of groups and of distinct lrs counts);
- ``tensor``: a group per tensor, the most groups a set can have.

A layout is a list of :class:`Group`, indices into the set's params and the hyperparameters
that override the optimizer's benchmark ones, so one layout serves each implementation's own
copy of the params (:func:`apply`).
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from torch import Tensor

from .optimizers import OPTIMIZERS

LAYOUTS = ("one", "two", "block", "tensor")
DECAY = 0.8
# Weight decay of the decayed group under "two" for an optimizer benchmarked without any.
WEIGHT_DECAY = 1e-2
# Blocks of a set whose names number none (NxM, a user's tensors): this many consecutive
# chunks, as GPT-2 small and ViT-B/16 have blocks.
CHUNKS = 12
# A name part that numbers a block: a Sequential's or ModuleList's index, ViT's encoder_layer_N.
_NUMBERED = re.compile(r"\d+|.*_\d+")
_STEM, _HEAD = "<stem>", "<head>"


@dataclass(frozen=True)
class Group:
    """One param group: which of the set's params (by index) and what it overrides."""

    indices: tuple[int, ...]
    options: Mapping[str, float]


def layout(kind: str, optimizer: str, names: Sequence[str], params: Sequence[Tensor]) -> list[Group]:
    """The groups of layout ``kind`` over ``params`` (named ``names``) for ``optimizer``, its
    benchmark hyperparameters (``OPTIMIZERS[optimizer].kwargs``) the base of any override; each
    param is in exactly one group."""
    everything = range(len(params))
    if kind == "one":
        return [Group(tuple(everything), {})]
    if kind == "tensor":
        return [Group((i,), {}) for i in everything]
    kwargs = OPTIMIZERS[optimizer].kwargs
    if kind == "two":
        decay = {True: kwargs.get("weight_decay", WEIGHT_DECAY), False: 0.0}
        split = {d: tuple(i for i in everything if (params[i].ndim >= 2) == d) for d in (True, False)}
        return [Group(indices, {"weight_decay": decay[d]}) for d, indices in split.items() if indices]
    if kind == "block":
        by_depth: defaultdict[int, list[int]] = defaultdict(list)
        for i, depth in enumerate(depths(names)):
            by_depth[depth].append(i)
        return [Group(tuple(by_depth[d]), {"lr": kwargs["lr"] * DECAY**d}) for d in sorted(by_depth)]
    raise ValueError(f"unknown param-group layout {kind!r}: one of {', '.join(LAYOUTS)}")


def depths(names: Sequence[str]) -> list[int]:
    """Each param's block depth, from the input on. Where names number blocks (a torchvision
    ResNet's ``layerK.J``, ViT's ``encoder.layers.encoder_layer_N``, GPT-2's ``h.N``, an
    ``nn.Sequential``'s index) the params before the first block (stem, embeddings) are depth
    0, each block is one deeper than the one before, and the params after the last (final norm,
    head) one deeper again. Where none do (``tN`` of NxM or a user's tensors), the depths are
    ``CHUNKS`` consecutive chunks of equally many tensors (one per tensor if fewer)."""
    keys = [_block(name) for name in names]
    if not any(keys):
        chunks = min(CHUNKS, len(names))
        return [i * chunks // len(names) for i in range(len(names))]
    first = next(i for i, key in enumerate(keys) if key)
    units = [key or (_STEM if i < first else _HEAD) for i, key in enumerate(keys)]
    depth = {unit: d for d, unit in enumerate(dict.fromkeys(units))}
    return [depth[unit] for unit in units]


def _block(name: str) -> str:
    """The block ``name`` is in (its prefix up to the first numbered module), or ""."""
    parts = name.split(".")
    numbered = [k for k, part in enumerate(parts[:-1]) if _NUMBERED.fullmatch(part)]
    return ".".join(parts[:numbered[0] + 1]) if numbered else ""


def apply(groups: Sequence[Group], params: Sequence[Tensor]) -> list[dict[str, Any]]:
    """torch's param-group dicts of ``groups`` over ``params``, any copy of the set's."""
    return [{"params": [params[i] for i in g.indices], **g.options} for g in groups]
