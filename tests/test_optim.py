import pytest
import torch
from torch import nn

from stabletrain.models import TinyUNet
from stabletrain.optim import (
    OPTIMIZER_TYPES,
    build_optimizer,
    clipping_from_config,
    is_no_decay,
)


def _flat(model):
    return [p for p in model.parameters()]


def _same_defaults(ours, theirs):
    skip = {"params", "name", "lr_multiplier", "initial_lr"}
    a = {k: v for k, v in ours.param_groups[0].items() if k not in skip}
    b = {k: v for k, v in theirs.param_groups[0].items() if k not in skip}
    assert a == b
    assert type(ours) is type(theirs)


# Keras-keyed config, the torch constructor call it must equal
CASES = [
    (
        {"type": "adam", "lr": 0.01, "beta_1": 0.8, "beta_2": 0.99, "epsilon": 1e-7},
        lambda p: torch.optim.Adam(p, lr=0.01, betas=(0.8, 0.99), eps=1e-7),
    ),
    (
        {"type": "adam", "learning_rate": 0.002, "amsgrad": True, "weight_decay": 0.1},
        lambda p: torch.optim.Adam(p, lr=0.002, amsgrad=True, weight_decay=0.1),
    ),
    (
        {"type": "adamw", "lr": 0.003, "beta_2": 0.95, "weight_decay": 0.05},
        lambda p: torch.optim.AdamW(p, lr=0.003, betas=(0.9, 0.95), weight_decay=0.05),
    ),
    (
        {"type": "rmsprop", "lr": 0.001, "rho": 0.9, "momentum": 0.5, "centered": True},
        lambda p: torch.optim.RMSprop(p, lr=0.001, alpha=0.9, momentum=0.5, centered=True),
    ),
    (
        {"type": "rmsprop", "epsilon": 1e-7},
        lambda p: torch.optim.RMSprop(p, eps=1e-7),
    ),
    (
        {"type": "adadelta", "rho": 0.95, "epsilon": 1e-7},
        lambda p: torch.optim.Adadelta(p, rho=0.95, eps=1e-7),
    ),
    (
        {"type": "SGD", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-4},
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4),
    ),
    # torch's own names
    (
        {"type": "adamw", "lr": 0.001, "betas": [0.9, 0.98], "eps": 1e-6},
        lambda p: torch.optim.AdamW(p, lr=0.001, betas=(0.9, 0.98), eps=1e-6),
    ),
    (
        {"type": "rmsprop", "alpha": 0.95, "foreach": False},
        lambda p: torch.optim.RMSprop(p, alpha=0.95, foreach=False),
    ),
]


@pytest.mark.parametrize("config,reference", CASES)
def test_keras_and_torch_keys_match_the_torch_constructor(config, reference):
    model = nn.Linear(3, 2)
    # plain parameters: exactly torch's optimizer
    _same_defaults(build_optimizer(_flat(model), config), reference(_flat(model)))
    # a model: the same hyper-parameters in every group (weight decay aside)
    built = build_optimizer(model, {**config, "no_decay_norm_bias": False})
    _same_defaults(built, reference(_flat(model)))


def test_the_same_update_as_torch():
    torch.manual_seed(0)
    ours, theirs = nn.Linear(3, 2), nn.Linear(3, 2)
    theirs.load_state_dict(ours.state_dict())
    a = build_optimizer(ours, {"type": "adam", "lr": 0.1, "beta_1": 0.5, "epsilon": 1e-7})
    b = torch.optim.Adam(theirs.parameters(), lr=0.1, betas=(0.5, 0.999), eps=1e-7)
    x = torch.randn(8, 3)
    for _ in range(3):
        for model, opt in ((ours, a), (theirs, b)):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
    for p, q in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert torch.equal(p, q)


def test_every_type_builds_with_torch_defaults():
    model = nn.Linear(3, 2)
    for kind, cls in OPTIMIZER_TYPES.items():
        _same_defaults(build_optimizer(_flat(model), {"type": kind}), cls(_flat(model)))


def test_no_decay_on_norm_weights_and_biases_by_default_for_adamw():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1, bias=False))
    opt = build_optimizer(model, {"type": "adamw", "weight_decay": 0.1})
    decay = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    no_decay = {id(p) for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    assert decay == {id(model[0].weight), id(model[2].weight)}
    assert no_decay == {id(model[0].bias), id(model[1].weight), id(model[1].bias)}
    # every parameter exactly once
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    # off by default for plain adam, and an explicit switch
    adam = build_optimizer(model, {"type": "adam", "weight_decay": 0.1})
    assert all(g["weight_decay"] == 0.1 for g in adam.param_groups)
    off = build_optimizer(
        model, {"type": "adamw", "weight_decay": 0.1, "no_decay_norm_bias": False}
    )
    assert all(g["weight_decay"] == 0.1 for g in off.param_groups)


def test_is_no_decay_covers_the_norm_layers():
    assert is_no_decay(nn.LayerNorm(3), "weight")
    assert is_no_decay(nn.GroupNorm(1, 4), "weight")
    assert is_no_decay(nn.InstanceNorm2d(4, affine=True), "weight")
    assert is_no_decay(nn.Linear(2, 2), "bias")
    assert not is_no_decay(nn.Linear(2, 2), "weight")


def test_lr_multipliers_by_module_prefix():
    model = TinyUNet(base_channels=4, depth=2)
    opt = build_optimizer(
        model, {"type": "adamw", "lr": 1e-3, "lr_multipliers": {"encoders": 1.0, "decoders": 0.5}}
    )
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        expected = 5e-4 if name.startswith("decoders.") else 1e-3
        assert lr_of[id(p)] == pytest.approx(expected), name
    names = {g["name"] for g in opt.param_groups}
    assert {"encoders/decay", "decoders/no_decay", "default/decay"} <= names
    # the ratio survives a scheduler (each group scales from its own base LR)
    from stabletrain.schedulers import build_scheduler

    sched = build_scheduler(opt, {"type": "warmup_cosine", "warmup_steps": 2, "total_steps": 10})
    for _ in range(5):
        opt.step()
        sched.step()
    by_name = {g["name"]: g["lr"] for g in opt.param_groups}
    assert by_name["decoders/decay"] == pytest.approx(0.5 * by_name["encoders/decay"])


def test_longest_prefix_wins():
    model = TinyUNet(base_channels=4, depth=2)
    opt = build_optimizer(
        model, {"type": "sgd", "lr": 1.0, "lr_multipliers": {"decoders": 0.5, "decoders.0": 0.1}}
    )
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        if name.startswith("decoders.0."):
            assert lr_of[id(p)] == pytest.approx(0.1), name
        elif name.startswith("decoders."):
            assert lr_of[id(p)] == pytest.approx(0.5), name
        else:
            assert lr_of[id(p)] == pytest.approx(1.0), name


@pytest.mark.parametrize(
    "config,match",
    [
        ({"type": "lamb"}, r"optimizer type must be one of \['adadelta', 'adam'"),
        ({}, "optimizer type must be one of"),
        ({"type": "adam", "beta1": 0.9}, r"unknown optimizer key\(s\) \['beta1'\].*accepted"),
        ({"type": "sgd", "rho": 0.9}, r"unknown optimizer key\(s\) \['rho'\]"),
        ({"type": "adam", "epsilon": 1e-7, "eps": 1e-8}, "give only one"),
        ({"type": "adam", "lr": -1.0}, "lr must be >= 0, got -1.0"),
        ({"type": "adam", "beta_2": "high"}, "beta_2 must be a number"),
        ({"type": "adam", "lr": True}, "lr must be a number, got bool True"),
        ({"type": "adam", "betas": [0.9]}, r"betas must be a pair \[beta_1, beta_2\]"),
        ({"type": "adam", "betas": [0.9, "x"]}, r"betas\[1\] must be a number"),
        ({"type": "sgd", "nesterov": "yes"}, r"nesterov must be a bool"),
        ({"type": "sgd", "momentum": float("inf")}, "momentum must be finite"),
        ({"type": "adam", "beta_2": 1.5}, r"betas\[1\] must be in \[0, 1\), got 1.5"),
        ({"type": "adam", "lr_multipliers": {"encoder": 0.5}}, "matches no parameter"),
        (
            {"type": "adam", "lr_multipliers": {"encoders": -1}},
            r"lr_multipliers\['encoders'\] must be >= 0",
        ),
        (
            {"type": "adam", "gradient_clipping_by_norm": 1, "gradient_clipping_by_value": 1},
            "at most one gradient clipping key",
        ),
        (
            {"type": "adam", "gradient_clipping_by_norm": "big"},
            "gradient_clipping_by_norm must be a number",
        ),
    ],
)
def test_bad_configs_name_the_problem(config, match):
    with pytest.raises(ValueError, match=match):
        build_optimizer(TinyUNet(base_channels=4, depth=2), config)


def test_multipliers_need_a_model():
    with pytest.raises(ValueError, match="pass the model"):
        build_optimizer(_flat(nn.Linear(2, 2)), {"type": "adam", "lr_multipliers": {"a": 1.0}})
    with pytest.raises(TypeError, match="mapping"):
        build_optimizer(nn.Linear(2, 2), "adam")


def test_clipping_keys_become_guard_settings():
    assert clipping_from_config({"gradient_clipping_by_norm": 1.0}) == {
        "clip_mode": "norm",
        "max_norm": 1.0,
    }
    assert clipping_from_config({"gradient_clipping_by_norm_local": 2}) == {
        "clip_mode": "norm_local",
        "max_norm": 2.0,
    }
    assert clipping_from_config({"gradient_clipping_by_value": 0.5})["clip_mode"] == "value"
    assert clipping_from_config({"type": "adam", "gradient_clipping_by_norm": None}) == {}
    # and the guard accepts them
    from stabletrain.stability import StabilityGuard

    model = nn.Linear(2, 1)
    opt = build_optimizer(model, {"type": "sgd", "lr": 0.1, "gradient_clipping_by_value": 0.01})
    guard = StabilityGuard(model, opt, **clipping_from_config({"gradient_clipping_by_value": 0.01}))
    guard.step(model(torch.full((4, 2), 100.0)).sum())
    assert guard.clip_mode == "value"
