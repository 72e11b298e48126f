"""torch_gd.make_param_groups: the decay/no-decay partition, layer decay, and use with optimizers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import torch_gd
from torch_gd import make_param_groups
from torch_gd.param_groups import default_no_decay

torchvision = pytest.importorskip("torchvision")


class PairNorm(nn.LayerNorm):
    """A norm layer with a 2-d parameter: only the isinstance rule keeps it out of decay."""

    def __init__(self, n: int) -> None:
        super().__init__(n)
        self.mix = nn.Parameter(torch.eye(2))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 8)
        self.ln = nn.LayerNorm(8)
        self.pn = PairNorm(8)
        self.scale = nn.Parameter(torch.ones(8))  # 1-d, owned by Net itself
        self.temperature = nn.Parameter(torch.tensor(1.0))  # 0-d
        self.rel_bias = nn.Parameter(torch.zeros(4, 4))  # 2-d, but named *bias
        self.head = nn.Linear(8, 10)
        self.head.weight = self.embed.weight  # tied


DECAY = ["embed.weight", "conv.weight", "fc.weight"]
NO_DECAY = [  # named_parameters() lists a module's own params before its children's
    "scale", "temperature", "rel_bias",
    "conv.bias", "bn.weight", "bn.bias", "fc.bias", "ln.weight", "ln.bias", "pn.weight", "pn.bias", "pn.mix",
    "head.bias",
]


def names(model: nn.Module, group: dict) -> list[str]:
    by_id = {id(p): n for n, p in model.named_parameters()}
    return [by_id[id(p)] for p in group["params"]]


def assert_each_param_once(model: nn.Module, groups: list[dict]) -> None:
    """Every trainable param exactly once, and named_parameters() order inside each group."""
    order = [n for n, p in model.named_parameters() if p.requires_grad]
    seen = [n for g in groups for n in names(model, g)]
    assert sorted(seen) == sorted(order)
    assert len(seen) == len(set(seen))
    for g in groups:
        got = names(model, g)
        assert got == sorted(got, key=order.index)


def layer_of_names(model: nn.Module, groups: list[dict]) -> dict[str, int]:
    return {n: g["layer_id"] for g in groups for n in names(model, g)}


# ------------------------------------------------------------------ decay / no-decay partition


def test_default_partition_is_exact():
    model = Net()
    groups = make_param_groups(model, lr=0.1, weight_decay=0.05)
    assert len(groups) == 2
    decay, no_decay = groups
    assert names(model, decay) == DECAY
    assert names(model, no_decay) == NO_DECAY
    assert (decay["lr"], decay["weight_decay"]) == (0.1, 0.05)
    assert (no_decay["lr"], no_decay["weight_decay"]) == (0.1, 0.0)
    assert all(set(g) == {"params", "lr", "weight_decay"} for g in groups)
    assert_each_param_once(model, groups)


def test_tied_weight_appears_once_under_its_first_name():
    model = Net()
    groups = make_param_groups(model, lr=0.1, weight_decay=0.05)
    params = [p for g in groups for p in g["params"]]
    assert sum(p is model.head.weight for p in params) == 1
    assert len(params) == len(list(model.parameters()))  # parameters() deduplicates too


def test_ndim_rule_alone():
    model = nn.Module()
    model.w2 = nn.Parameter(torch.ones(3, 3))
    model.w1 = nn.Parameter(torch.ones(3))
    model.w0 = nn.Parameter(torch.tensor(2.0))
    model.w4 = nn.Parameter(torch.ones(1, 1, 1, 1))
    decay, no_decay = make_param_groups(model, lr=1.0, weight_decay=0.1)
    assert names(model, decay) == ["w2", "w4"]
    assert names(model, no_decay) == ["w1", "w0"]


def test_frozen_params_are_left_out():
    model = Net()
    model.fc.weight.requires_grad_(False)
    model.bn.requires_grad_(False)
    decay, no_decay = make_param_groups(model, lr=0.1, weight_decay=0.05)
    assert names(model, decay) == ["embed.weight", "conv.weight"]
    assert "bn.weight" not in names(model, no_decay) and "bn.bias" not in names(model, no_decay)
    assert_each_param_once(model, [decay, no_decay])


def test_empty_groups_are_skipped():
    model = nn.Sequential(nn.Linear(4, 4, bias=False))
    (group,) = make_param_groups(model, lr=0.1, weight_decay=0.05)
    assert group["weight_decay"] == 0.05
    model = nn.Sequential(nn.LayerNorm(4))
    (group,) = make_param_groups(model, lr=0.1, weight_decay=0.05)
    assert group["weight_decay"] == 0.0
    model.requires_grad_(False)
    assert make_param_groups(model, lr=0.1, weight_decay=0.05) == []


def test_no_decay_patterns_extend_the_default():
    model = Net()
    decay, no_decay = make_param_groups(model, lr=0.1, weight_decay=0.05, no_decay=["embed.*", "*.weight_x"])
    assert names(model, decay) == ["conv.weight", "fc.weight"]
    order = [n for n, _ in model.named_parameters()]
    assert names(model, no_decay) == sorted(NO_DECAY + ["embed.weight"], key=order.index)


def test_no_decay_predicate_replaces_the_default():
    model = Net()
    seen = {}

    def only_convs(name, param, module):
        seen[name] = module
        return isinstance(module, nn.Conv2d)

    decay, no_decay = make_param_groups(model, lr=0.1, weight_decay=0.05, no_decay=only_convs)
    assert names(model, no_decay) == ["conv.weight", "conv.bias"]
    assert "bn.bias" in names(model, decay) and "scale" in names(model, decay)
    assert seen["pn.mix"] is model.pn and seen["scale"] is model and seen["embed.weight"] is model.embed

    # composing with the default rule
    rule = lambda n, p, m: default_no_decay(n, p, m) or n == "fc.weight"  # noqa: E731
    decay, _ = make_param_groups(model, lr=0.1, weight_decay=0.05, no_decay=rule)
    assert names(model, decay) == ["embed.weight", "conv.weight"]


@pytest.mark.parametrize("bad", ["embed.*", [1, 2], 3])
def test_no_decay_bad_type(bad):
    with pytest.raises(TypeError, match="no_decay"):
        make_param_groups(Net(), lr=0.1, weight_decay=0.05, no_decay=bad)


# ------------------------------------------------------------------ layer decay


def test_resnet18_layer_decay():
    model = torchvision.models.resnet18()
    base, d = 0.01, 0.7
    groups = make_param_groups(model, lr=base, weight_decay=0.05, layer_decay=d)
    assert_each_param_once(model, groups)
    layers = layer_of_names(model, groups)
    assert layers["conv1.weight"] == layers["bn1.bias"] == 0
    assert layers["layer1.0.conv1.weight"] == 1 and layers["layer1.1.bn2.weight"] == 2
    assert layers["layer2.0.downsample.0.weight"] == 3 and layers["layer4.1.conv2.weight"] == 8
    assert layers["fc.weight"] == layers["fc.bias"] == 9
    for g in groups:
        assert g["lr"] == pytest.approx(base * d ** (9 - g["layer_id"]), rel=1e-12)
    assert [g["layer_id"] for g in groups] == [i for i in range(10) for _ in (0, 1)]  # decay, then no-decay
    assert [g["weight_decay"] for g in groups[:2]] == [0.05, 0.0]
    lrs = [g["lr"] for g in groups]
    assert lrs == sorted(lrs) and lrs[-1] == base


def test_resnet_blocks_are_numbered_consecutively_across_stages():
    from torchvision.models.resnet import BasicBlock

    model = torchvision.models.ResNet(BasicBlock, [1, 3, 1, 2], num_classes=3)
    layers = layer_of_names(model, make_param_groups(model, lr=1.0, weight_decay=0.0, layer_decay=0.5))
    blocks = ["layer1.0", "layer2.0", "layer2.1", "layer2.2", "layer3.0", "layer4.0", "layer4.1"]
    assert [layers[f"{b}.conv1.weight"] for b in blocks] == list(range(1, 8))
    assert layers["fc.weight"] == 8


def tiny_vit() -> nn.Module:
    return torchvision.models.VisionTransformer(
        image_size=32, patch_size=16, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=5
    )


def test_vit_layer_decay():
    model = tiny_vit()
    groups = make_param_groups(model, lr=1e-3, weight_decay=0.05, layer_decay=0.5)
    assert_each_param_once(model, groups)
    layers = layer_of_names(model, groups)
    for name in ("conv_proj.weight", "conv_proj.bias", "class_token", "encoder.pos_embedding"):
        assert layers[name] == 0
    assert layers["encoder.layers.encoder_layer_0.mlp.0.weight"] == 1
    assert layers["encoder.layers.encoder_layer_1.ln_2.bias"] == 2
    for name in ("encoder.ln.weight", "heads.head.weight", "heads.head.bias"):
        assert layers[name] == 3
    lr = {g["layer_id"]: g["lr"] for g in groups}
    assert lr == pytest.approx({0: 1e-3 / 8, 1: 1e-3 / 4, 2: 1e-3 / 2, 3: 1e-3}, rel=1e-12)


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(4)
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc(self.ln(x))


class GPT2ish(nn.Module):
    """transformers' GPT-2 naming (wte, wpe, h.N, ln_f, tied lm_head) without importing transformers,
    which alone would take several seconds."""

    def __init__(self, n_layer: int = 3) -> None:
        super().__init__()
        self.wte = nn.Embedding(11, 4)
        self.wpe = nn.Embedding(7, 4)
        self.h = nn.ModuleList(Block() for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(4)
        self.lm_head = nn.Linear(4, 11, bias=False)
        self.lm_head.weight = self.wte.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.wte(ids) + self.wpe(torch.arange(ids.shape[-1]))
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def test_gpt2_style_names():
    model = GPT2ish()
    groups = make_param_groups(model, lr=1.0, weight_decay=0.1, layer_decay=0.5)
    assert_each_param_once(model, groups)
    layers = layer_of_names(model, groups)
    assert layers["wte.weight"] == layers["wpe.weight"] == 0
    assert [layers[f"h.{i}.fc.weight"] for i in range(3)] == [1, 2, 3]
    assert layers["ln_f.weight"] == 4
    assert "lm_head.weight" not in layers  # tied to wte, listed once
    assert {g["layer_id"]: g["lr"] for g in groups} == {0: 1 / 16, 1: 1 / 8, 2: 1 / 4, 3: 1 / 2, 4: 1.0}


@pytest.mark.parametrize("container", ["layers", "layer", "blocks"])
def test_other_block_namings(container):
    model = nn.Module()
    model.patch_embed = nn.Linear(4, 4)
    model.cls_token = nn.Parameter(torch.zeros(1, 1, 4))
    inner = nn.Module()
    setattr(inner, container, nn.ModuleList(Block() for _ in range(2)))
    model.encoder = inner
    model.norm = nn.LayerNorm(4)
    model.head = nn.Linear(4, 2)
    layers = layer_of_names(model, make_param_groups(model, lr=1.0, weight_decay=0.1, layer_decay=0.9))
    assert layers["patch_embed.weight"] == layers["cls_token"] == 0
    assert layers[f"encoder.{container}.1.fc.bias"] == 2
    assert layers["norm.weight"] == layers["head.weight"] == 3


def test_unknown_naming_needs_layer_of():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="layer_of"):
        make_param_groups(model, lr=0.1, weight_decay=0.0, layer_decay=0.5)
    groups = make_param_groups(model, lr=0.1, weight_decay=0.0, layer_decay=0.5, layer_of=lambda n: int(n[0]) // 2)
    assert [(g["layer_id"], g["lr"]) for g in groups] == [(0, 0.05), (0, 0.05), (1, 0.1), (1, 0.1)]


def test_layer_of_overrides_default_and_counts_frozen_params():
    model = torchvision.models.resnet18()
    stage = lambda n: int(n[5]) if n.startswith("layer") else (5 if n.startswith("fc") else 0)  # noqa: E731
    model.fc.requires_grad_(False)  # frozen head: still layer 5, so layer4 keeps lr * d
    groups = make_param_groups(model, lr=1.0, weight_decay=0.1, layer_decay=0.5, layer_of=stage)
    assert {g["layer_id"]: g["lr"] for g in groups} == {i: 0.5 ** (5 - i) for i in range(5)}


def test_layer_of_must_return_nonnegative_int():
    model = GPT2ish()
    with pytest.raises(ValueError, match="layer_of"):
        make_param_groups(model, lr=1.0, weight_decay=0.1, layer_decay=0.5, layer_of=lambda n: -1)
    with pytest.raises(ValueError, match="layer_of"):
        make_param_groups(model, lr=1.0, weight_decay=0.1, layer_decay=0.5, layer_of=lambda n: 1.0)


def test_layer_decay_one_and_layer_of_without_layer_decay():
    model = GPT2ish()
    groups = make_param_groups(model, lr=0.3, weight_decay=0.1, layer_decay=1.0)
    # embeddings (layer 0) all decay, ln_f (layer 4) none
    assert [(g["layer_id"], g["weight_decay"]) for g in groups][:2] == [(0, 0.1), (1, 0.1)]
    assert len(groups) == 1 + 2 * 3 + 1 and all(g["lr"] == 0.3 for g in groups)
    # layer_of is only used with layer_decay
    groups = make_param_groups(model, lr=0.3, weight_decay=0.1, layer_of=lambda n: 1 / 0)
    assert len(groups) == 2 and all("layer_id" not in g for g in groups)


# ------------------------------------------------------------------ argument checks


@pytest.mark.parametrize(
    "kwargs, arg",
    [
        (dict(lr=-0.1), "lr"),
        (dict(lr=math.nan), "lr"),
        (dict(lr=math.inf), "lr"),
        (dict(weight_decay=-1e-4), "weight_decay"),
        (dict(weight_decay=math.inf), "weight_decay"),
        (dict(layer_decay=0.0), "layer_decay"),
        (dict(layer_decay=-0.5), "layer_decay"),
        (dict(layer_decay=1.5), "layer_decay"),
        (dict(layer_decay=math.nan), "layer_decay"),
    ],
)
def test_bad_values(kwargs, arg):
    args = dict(lr=0.1, weight_decay=0.01) | kwargs
    with pytest.raises(ValueError, match=rf"^{arg} must be a finite number (>= 0|in \(0, 1\])"):
        make_param_groups(GPT2ish(), **args)


def test_bad_types():
    with pytest.raises(TypeError, match="nn.Module"):
        make_param_groups([nn.Parameter(torch.ones(2))], lr=0.1, weight_decay=0.0)
    with pytest.raises(TypeError, match="lr"):
        make_param_groups(GPT2ish(), lr="0.1", weight_decay=0.0)
    with pytest.raises(TypeError, match="weight_decay"):
        make_param_groups(GPT2ish(), lr=0.1, weight_decay=None)


def test_zero_lr_and_weight_decay_are_allowed():
    groups = make_param_groups(GPT2ish(), lr=0, weight_decay=0, layer_decay=0.5)
    assert all(g["lr"] == 0 and g["weight_decay"] == 0 for g in groups)


# ------------------------------------------------------------------ with optimizers and schedulers


@pytest.mark.parametrize("opt_cls", [torch.optim.AdamW, torch_gd.AdamW])
def test_groups_with_optimizer_and_scheduler(opt_cls):
    torch.manual_seed(0)
    model = GPT2ish()
    groups = make_param_groups(model, lr=1e-3, weight_decay=0.05, layer_decay=0.75)
    opt = opt_cls(groups)
    initial = [g["lr"] for g in groups]
    assert [g["lr"] for g in opt.param_groups] == initial
    assert [g["weight_decay"] for g in opt.param_groups] == [g["weight_decay"] for g in groups]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.9**step)
    before = [p.detach().clone() for p in model.parameters()]
    for step in range(1, 4):
        ids = torch.randint(0, 11, (2, 7))
        nn.functional.cross_entropy(model(ids).flatten(0, 1), ids.flatten()).backward()
        opt.step()
        opt.zero_grad()
        sched.step()
        for g, lr0 in zip(opt.param_groups, initial):
            assert g["initial_lr"] == lr0
            assert g["lr"] == pytest.approx(lr0 * 0.9**step, rel=1e-12)
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    # extra key survives a state_dict round trip
    opt2 = opt_cls(make_param_groups(model, lr=1e-3, weight_decay=0.05, layer_decay=0.75))
    opt2.load_state_dict(opt.state_dict())
    assert [g["layer_id"] for g in opt2.param_groups] == [g["layer_id"] for g in groups]
