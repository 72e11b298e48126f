"""Parameter sets to benchmark on: torchvision models (built without weights), GPT-2 small's
shapes, small models built here (where a step's fixed cost dominates), N tensors of M elements
("NxM"), or a user's own ("package.module:function"). Each param has a name, so a benchmark can
group params the way training code does (by ndim, by block)."""

from __future__ import annotations

import importlib
import importlib.util
import re
from collections.abc import Iterable
from typing import Any, Callable

import torch
from torch import Tensor, nn

MODELS = ("resnet18", "resnet50", "vit_b_16", "convnext_tiny")
DEFAULT = (*MODELS, "gpt2-small", "2000x1000")
QUICK = ("200x1000",)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
_MANY = re.compile(r"(\d+)x(\d+)")
Named = list[tuple[str, Tensor]]


def gpt2_small() -> Named:
    """GPT-2 small's parameter names and shapes, as Hugging Face's GPT2Model has them (148
    tensors, 124M elements)."""
    d = 768
    block = [("ln_1.weight", (d,)), ("ln_1.bias", (d,)), ("attn.c_attn.weight", (d, 3 * d)),
             ("attn.c_attn.bias", (3 * d,)), ("attn.c_proj.weight", (d, d)), ("attn.c_proj.bias", (d,)),
             ("ln_2.weight", (d,)), ("ln_2.bias", (d,)), ("mlp.c_fc.weight", (d, 4 * d)),
             ("mlp.c_fc.bias", (4 * d,)), ("mlp.c_proj.weight", (4 * d, d)), ("mlp.c_proj.bias", (d,))]
    shapes = [("wte.weight", (50257, d)), ("wpe.weight", (1024, d))]
    shapes += [(f"h.{i}.{name}", shape) for i in range(12) for name, shape in block]
    shapes += [("ln_f.weight", (d,)), ("ln_f.bias", (d,))]
    return [(name, torch.randn(s) * 0.02) for name, s in shapes]


def mlp_policy() -> nn.Module:
    """An RL policy's MLP: 64 observations → 256 → 256 → 8 actions, Tanh (84,488 params in 6
    tensors)."""
    return nn.Sequential(nn.Linear(64, 256), nn.Tanh(), nn.Linear(256, 256), nn.Tanh(), nn.Linear(256, 8))


def lenet() -> nn.Module:
    """LeNet-5 on 1×28×28 (MNIST; the first conv pads by 2, as the original's 32×32 input):
    61,706 params in 10 tensors."""
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.Tanh(), nn.AvgPool2d(2),
        nn.Conv2d(6, 16, 5), nn.Tanh(), nn.AvgPool2d(2), nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120), nn.Tanh(), nn.Linear(120, 84), nn.Tanh(), nn.Linear(84, 10))


def mlp_layernorm() -> nn.Module:
    """An MLP 128 → 256 → 256 → 10 with a LayerNorm after each hidden Linear, each hidden layer
    a block of its own (102,410 params in 10 tensors)."""
    def hidden(n_in: int) -> nn.Module:
        return nn.Sequential(nn.Linear(n_in, 256), nn.LayerNorm(256), nn.ReLU())
    return nn.Sequential(hidden(128), hidden(256), nn.Linear(256, 10))


SMALL_MODELS: dict[str, Callable[[], nn.Module]] = {
    "mlp-policy": mlp_policy, "lenet": lenet, "mlp-layernorm": mlp_layernorm}
SMALL = tuple(SMALL_MODELS)
NAMED = (*DEFAULT, *SMALL)


def _model(name: str) -> nn.Module:
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
    if name not in NAMED and not _MANY.fullmatch(name):
        if ":" not in name:
            raise ValueError(f"unknown set {name!r}: one of {', '.join(NAMED)}, NxM or package.module:function")
        _user_builder(name)
    return name


def build(name: str) -> list[Tensor]:
    """The set's params as plain fp32 CPU tensors, the same on every call (seeded)."""
    return [t for _, t in named(name)]


def named(name: str) -> Named:
    """What :func:`build` returns, each tensor with its name: a module's ``named_parameters()``
    names, GPT-2's own, ``tN`` for the Nth tensor of NxM or of a user's iterable."""
    torch.manual_seed(0)
    many = _MANY.fullmatch(name)
    if many:
        made: Any = [(f"t{i}", torch.randn(int(many[2]))) for i in range(int(many[1]))]
    elif name == "gpt2-small":
        made = gpt2_small()
    elif name in SMALL_MODELS:
        made = _named(name, SMALL_MODELS[name]())
    elif name in MODELS:
        made = _named(name, _model(name))
    else:
        made = _named(name, _user_builder(name)())
    return [(n, t.detach()) for n, t in made]


def _named(name: str, made: Any) -> Named:
    if isinstance(made, nn.Module):
        pairs = [(n, p) for n, p in made.named_parameters() if p.requires_grad]
    else:
        pairs = [(f"t{i}", t) for i, t in enumerate(made)] if isinstance(made, Iterable) else []
    if not pairs or not all(isinstance(t, Tensor) for _, t in pairs):
        raise ValueError(f"set {name!r} must build an nn.Module or a non-empty iterable of tensors")
    return pairs


def parameters(tensors: list[Tensor], device: str, dtype: torch.dtype) -> list[torch.nn.Parameter]:
    """Params on ``device`` in ``dtype``, each with a grad drawn from a fixed seed."""
    torch.manual_seed(1)
    params = [torch.nn.Parameter(t.to(device=device, dtype=dtype)) for t in tensors]
    for p in params:
        p.grad = torch.randn_like(p)
    return params


def named_parameters(name: str, device: str,
                     dtype: torch.dtype) -> tuple[list[str], list[torch.nn.Parameter]]:
    """The set's param names, and its params as :func:`parameters` makes them."""
    names, tensors = zip(*named(name))
    return list(names), parameters(list(tensors), device, dtype)


def clone(params: list[torch.nn.Parameter]) -> list[torch.nn.Parameter]:
    """An independent copy of ``params`` and their grads."""
    copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
    for c, p in zip(copies, params):
        c.grad = p.grad.clone()
    return copies
