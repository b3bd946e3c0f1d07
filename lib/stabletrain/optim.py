"""A torch optimizer from a flat configuration of torch or Keras keys: ``learning_rate`` →
``lr``, ``beta_1``/``beta_2`` → ``betas``, ``epsilon`` → ``eps``, ``rho`` → RMSprop's
``alpha`` (Adadelta's ``rho``); a missing key takes torch's default."""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase  # BatchNorm*, InstanceNorm*, SyncBatchNorm

from .checks import check_bool, check_config_value, check_float

OPTIMIZER_TYPES: dict[str, type[torch.optim.Optimizer]] = {
    name.lower(): getattr(torch.optim, name)
    for name in ("Adam", "AdamW", "RMSprop", "Adadelta", "SGD")
}
CLIPPING_KEYS: dict[str, str] = {
    "gradient_clipping_by_norm": "norm",
    "gradient_clipping_by_norm_local": "norm_local",
    "gradient_clipping_by_value": "value",
}  # Keras clipping key -> StabilityGuard clip_mode
_BUILDER_KEYS = ("type", "no_decay_norm_bias", "lr_multipliers")
_NORM_TYPES = (_NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm, nn.RMSNorm)
_RANGES = {"betas": {"min": 0, "max": 1, "high_open": True}, "rho": {"min": 0, "max": 1}}
_RANGES |= {k: {"min": 0} for k in ("lr", "weight_decay", "eps", "momentum", "alpha")}


def _renames(kind: str) -> tuple[Mapping[str, inspect.Parameter], dict[str, str], tuple]:
    signature = inspect.signature(OPTIMIZER_TYPES[kind].__init__).parameters
    rho = "alpha" if kind == "rmsprop" else "rho"
    keras = {"learning_rate": "lr", "epsilon": "eps", "rho": rho}  # where the type has it
    renames = {k: v for k, v in keras.items() if v in signature}
    return signature, renames, ("beta_1", "beta_2") if kind in ("adam", "adamw") else ()


def optimizer_keys(kind: str) -> list[str]:
    """The keys an optimizer section of type ``kind`` (in :data:`OPTIMIZER_TYPES`) accepts."""
    signature, renames, pair = _renames(kind)
    keys = {*renames, *pair, *signature, *CLIPPING_KEYS, *_BUILDER_KEYS}
    return sorted(keys - {"self", "params"})


def _torch_kwargs(kind: str, config: Mapping[str, Any]) -> dict[str, Any]:
    signature, renames, pair = _renames(kind)
    accepted = optimizer_keys(kind)
    if unknown := sorted(k for k in config if k not in accepted):
        raise ValueError(f"unknown optimizer key(s) {unknown} for {kind!r}; accepted: {accepted}")
    items = [(k, v) for k, v in config.items() if k not in (*_BUILDER_KEYS, *CLIPPING_KEYS, *pair)]
    if any(k in config for k in pair):
        defaults = zip(pair, signature["betas"].default)
        betas = [
            check_config_value(check_float, k, config.get(k, d), finite=False) for k, d in defaults
        ]
        items.append(("beta_1/beta_2", betas))
    kwargs: dict[str, Any] = {}
    source: dict[str, str] = {}  # the config key that set each torch argument
    for key, value in items:
        name = "betas" if key == "beta_1/beta_2" else renames.get(key, key)
        if name in kwargs:
            both = f"optimizer keys {key!r} and {source[name]!r} both set {name!r}"
            raise ValueError(f"{both}; give only one")
        kwargs[name], source[name] = value, key
    for name, value in kwargs.items():  # checked by the type of torch's default, and _RANGES
        default, bounds = signature[name].default, _RANGES.get(name, {})
        key = "betas" if name == "betas" else source[name]
        if default is None or isinstance(default, bool):
            check_config_value(check_bool, key, value, optional=default is None)
        elif isinstance(default, int | float):
            check_config_value(check_float, key, value, **bounds)
        elif isinstance(default, tuple):
            if not (isinstance(value, list | tuple) and len(value) == 2):
                raise ValueError(f"{key} must be a pair [beta_1, beta_2] of numbers, got {value!r}")
            for i, v in enumerate(value):
                check_config_value(check_float, f"{key}[{i}]", v, **bounds)
    if isinstance(kwargs.get("betas"), list):
        kwargs["betas"] = tuple(kwargs["betas"])  # YAML gives lists
    return kwargs


def is_no_decay(module: nn.Module, param_name: str) -> bool:
    """Whether ``param_name`` of ``module`` (its direct owner) is a bias or a norm layer's."""
    return param_name == "bias" or isinstance(module, _NORM_TYPES)


def param_groups(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float = 0.0,
    no_decay_norm_bias: bool = True,
    lr_multipliers: Mapping[str, float] | None = None,
) -> list[dict[str, Any]]:
    r"""Trainable parameters as groups ``"<prefix>/[no_]decay"`` (first-met order, shared ones
    once) with LR :math:`m \cdot \text{lr}`, :math:`m` (``"lr_multiplier"``) that of the longest
    prefix of the name in ``lr_multipliers`` (none: ``default``, 1.0), weight decay 0 if
    ``no_decay_norm_bias`` and :func:`is_no_decay`. ``ValueError``: a bad multiplier or prefix."""
    multipliers = dict(lr_multipliers or {})
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]  # shared ones once

    def matches(name: str, prefix: str) -> bool:
        return name == prefix or name.startswith(prefix + ".")

    for prefix, m in multipliers.items():
        check_config_value(check_float, f"lr_multipliers[{prefix!r}]", m, min=0)
        if not any(matches(n, prefix) for n, _ in named):
            top = f"its top-level modules are {[n for n, _ in model.named_children()]}"
            raise ValueError(f"lr_multipliers prefix {prefix!r} matches no parameter; {top}")
    groups: dict[tuple[str, bool], dict[str, Any]] = {}
    for full, param in named:
        owner, _, local = full.rpartition(".")
        prefix = max((p for p in multipliers if matches(full, p)), key=len, default="")
        m = float(multipliers[prefix]) if prefix else 1.0
        prefix = prefix or "default"
        exempt = no_decay_norm_bias and is_no_decay(model.get_submodule(owner), local)
        name = f"{prefix}/{'no_decay' if exempt else 'decay'}"
        group = {"params": [], "name": name, "lr": lr * m, "lr_multiplier": m}
        group["weight_decay"] = 0.0 if exempt else weight_decay
        groups.setdefault((prefix, exempt), group)["params"].append(param)
    return list(groups.values())


def build_optimizer(
    model_or_params: nn.Module | Iterable[torch.Tensor] | Iterable[dict[str, Any]],
    config: Mapping[str, Any],
) -> torch.optim.Optimizer:
    """A torch optimizer from ``{"type": ..., <optimizer, builder and clipping keys>}``; a model
    gets :func:`param_groups`, parameters or groups go to torch as they are. Clipping keys are
    only validated. ``TypeError``: config not a mapping; ``ValueError``: anything else wrong."""
    kind, kwargs = check_optimizer_config(config)
    cls = OPTIMIZER_TYPES[kind]
    no_decay, multipliers = config.get("no_decay_norm_bias"), config.get("lr_multipliers")
    if isinstance(model_or_params, nn.Module):
        defaults = inspect.signature(cls).parameters
        groups = {"no_decay_norm_bias": (kind == "adamw") if no_decay is None else no_decay}
        for key in ("lr", "weight_decay"):
            kwargs[key] = groups[key] = float(kwargs.get(key, defaults[key].default))
        params: Any = param_groups(model_or_params, lr_multipliers=multipliers, **groups)
    elif multipliers or no_decay:
        need = "lr_multipliers and no_decay_norm_bias need parameter names"
        raise ValueError(f"{need}: pass the model, not its parameters")
    else:
        params = list(model_or_params)
    try:
        return cls(params, **kwargs)
    except (ValueError, TypeError) as error:
        raise ValueError(f"invalid {kind} optimizer setting: {error}") from None


def check_optimizer_config(config: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The type and torch arguments of a valid optimizer config; nothing is built (errors as
    :func:`build_optimizer`; ``lr_multipliers`` prefixes are matched there)."""
    if not isinstance(config, Mapping):
        raise TypeError(f"optimizer config must be a mapping, got {type(config).__name__}")
    kind = config.get("type")
    if not isinstance(kind, str) or kind.strip().lower() not in OPTIMIZER_TYPES:
        raise ValueError(f"optimizer type must be one of {sorted(OPTIMIZER_TYPES)}, got {kind!r}")
    kind = kind.strip().lower()
    kwargs = _torch_kwargs(kind, config)
    clipping_from_config(config)  # validate the clipping keys early
    no_decay = config.get("no_decay_norm_bias")
    check_config_value(check_bool, "no_decay_norm_bias", no_decay, optional=True)
    multipliers = config.get("lr_multipliers")
    if multipliers is not None and not isinstance(multipliers, Mapping):
        what = "a mapping of module-name prefix to multiplier"
        raise ValueError(f"lr_multipliers must be {what}, got {multipliers!r}")
    return kind, kwargs


def clipping_from_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """``{"gradient_clipping_by_norm": 1.0}`` → ``{"clip_mode": "norm", "max_norm": 1.0}`` (no key
    or a null/0 value: ``{}``); ``ValueError`` for two keys or a value not > 0."""
    given = {k: config[k] for k in CLIPPING_KEYS if config.get(k) not in (None, 0, False)}
    if len(given) > 1:
        raise ValueError(f"give at most one gradient clipping key, got {sorted(given)}")
    if not given:
        return {}
    ((key, value),) = given.items()
    value = check_config_value(check_float, key, value, finite=False)
    if not value > 0:
        raise ValueError(f"{key} must be > 0 (or 0/null: off), got {value}")
    return {"clip_mode": CLIPPING_KEYS[key], "max_norm": value}
