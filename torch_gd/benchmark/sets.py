"""Parameter sets to benchmark on: torchvision models (built without weights), GPT-2 small's
shapes, N tensors of M elements ("NxM"), or a user's own ("package.module:function")."""

from __future__ import annotations

import importlib
import importlib.util
import re
from collections.abc import Iterable
from typing import Any, Callable

import torch
from torch import Tensor

MODELS = ("resnet18", "resnet50", "vit_b_16", "convnext_tiny")
DEFAULT = (*MODELS, "gpt2-small", "2000x1000")
QUICK = ("200x1000",)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
_MANY = re.compile(r"(\d+)x(\d+)")


def gpt2_small() -> list[Tensor]:
    """GPT-2 small's parameter shapes (148 tensors, 124M elements)."""
    d, shapes = 768, [(50257, 768), (1024, 768)]
    for _ in range(12):
        shapes += [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,), (d,), (d,), (d, 4 * d), (4 * d,), (4 * d, d), (d,)]
    shapes += [(d,), (d,)]
    return [torch.randn(s) * 0.02 for s in shapes]


def _model(name: str) -> torch.nn.Module:
    import torchvision

    return torchvision.models.get_model(name)


def _user_builder(path: str) -> Callable[[], Any]:
    module, _, name = path.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"set {path!r}: cannot import {name!r} from {module!r} ({e})") from e


def check(name: str) -> str:
    """``name`` if it names a set that can be built here (imports a user's builder to find
    out); else ValueError saying why not."""
    if name in MODELS and importlib.util.find_spec("torchvision") is None:
        raise ValueError(f"set {name!r} needs torchvision (pip install torch_gd[bench])")
    if name not in DEFAULT and not _MANY.fullmatch(name):
        if ":" not in name:
            raise ValueError(f"unknown set {name!r}: one of {', '.join(DEFAULT)}, NxM or package.module:function")
        _user_builder(name)
    return name


def build(name: str) -> list[Tensor]:
    """The set's params as plain fp32 CPU tensors, the same on every call (seeded)."""
    torch.manual_seed(0)
    many = _MANY.fullmatch(name)
    if many:
        made: Any = [torch.randn(int(many[2])) for _ in range(int(many[1]))]
    elif name == "gpt2-small":
        made = gpt2_small()
    elif name in MODELS:
        made = _model(name)
    else:
        made = _user_builder(name)()
    return _tensors(name, made)


def _tensors(name: str, made: Any) -> list[Tensor]:
    if isinstance(made, torch.nn.Module):
        made = [p for p in made.parameters() if p.requires_grad]
    tensors = list(made) if isinstance(made, Iterable) else []
    if not tensors or not all(isinstance(t, Tensor) for t in tensors):
        raise ValueError(f"set {name!r} must build an nn.Module or a non-empty iterable of tensors")
    return [t.detach() for t in tensors]


def parameters(tensors: list[Tensor], device: str, dtype: torch.dtype) -> list[torch.nn.Parameter]:
    """Params on ``device`` in ``dtype``, each with a grad drawn from a fixed seed."""
    torch.manual_seed(1)
    params = [torch.nn.Parameter(t.to(device=device, dtype=dtype)) for t in tensors]
    for p in params:
        p.grad = torch.randn_like(p)
    return params


def clone(params: list[torch.nn.Parameter]) -> list[torch.nn.Parameter]:
    """An independent copy of ``params`` and their grads."""
    copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
    for c, p in zip(copies, params):
        c.grad = p.grad.clone()
    return copies
