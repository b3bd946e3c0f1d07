r"""Build a torch optimizer from a flat configuration, with parameter groups done right.

:func:`build_optimizer` turns a mapping such as ``{"type": "adamw", "lr": 1e-3,
"beta_2": 0.99, "weight_decay": 0.05}`` into a ``torch.optim`` optimizer. It accepts
the configuration keys of the course's older Keras-based systems (``beta_1``,
``beta_2``, ``epsilon``, ``rho``, ``learning_rate`` ...) as well as torch's own
constructor arguments (``betas``, ``eps``, ``alpha``, ``lr`` ...):

==============  =========================  ====================================
type            class                      Keras key → torch argument
==============  =========================  ====================================
``adam``        ``torch.optim.Adam``       ``beta_1``/``beta_2`` → ``betas``;
``adamw``       ``torch.optim.AdamW``      ``epsilon`` → ``eps``; ``amsgrad``
``rmsprop``     ``torch.optim.RMSprop``    ``rho`` → ``alpha``; ``epsilon`` → ``eps``;
                                           ``momentum``; ``centered``
``adadelta``    ``torch.optim.Adadelta``   ``rho``; ``epsilon`` → ``eps``
``sgd``         ``torch.optim.SGD``        ``momentum``; ``nesterov``; ``dampening``
==============  =========================  ====================================

Every type also takes ``lr`` (alias ``learning_rate``) and ``weight_decay``. A key
that is missing takes **torch's** default, which differs from Keras's in places a
configuration written for the Keras system would notice:

- ``epsilon``: Keras 1e-7, torch 1e-8 (Adam, AdamW, RMSprop); Adadelta: Keras 1e-7,
  torch 1e-6;
- ``rho`` of RMSprop (torch ``alpha``): Keras 0.9, torch 0.99;
- ``rho`` of Adadelta: Keras 0.95, torch 0.9; its ``lr``: Keras 0.001, torch 1.0;
- ``weight_decay`` of AdamW: Keras 0.004, torch 0.01;
- RMSprop's ``lr``: torch 0.01 (Keras 0.001).

Torch optimizers do not clip gradients, so the Keras system's clipping keys
(``gradient_clipping_by_norm``: global L2 norm, ``gradient_clipping_by_norm_local``:
each tensor's L2 norm, ``gradient_clipping_by_value``: each element) are accepted
here, ignored by the optimizer, and translated by :func:`clipping_from_config` into
the ``clip_mode``/``max_norm`` of :class:`stabletrain.stability.StabilityGuard`.

Parameter groups (when given an ``nn.Module``):

- **No weight decay on normalisation weights and biases**
  (``no_decay_norm_bias``, default ``True`` for ``adamw`` and ``False`` otherwise):
  a parameter is exempt when it is named ``bias`` or belongs to a normalisation
  layer (BatchNorm, GroupNorm, LayerNorm, InstanceNorm, LocalResponseNorm,
  RMSNorm). Decay pulls weights towards 0; a norm layer's scale :math:`\gamma`
  pulled towards 0 shrinks the activations it normalised, and a bias has no
  scale-invariance for decay to regularise, so both are conventionally exempt.
- **Per-part LR multipliers** (``lr_multipliers``, the Keras system's discriminative
  learning rates): ``{"encoders": 1.0, "decoders": 0.5}`` gives every parameter whose
  qualified name starts with ``encoders.`` (or equals ``encoders``) the learning rate
  :math:`m \cdot \text{lr}`; the longest matching prefix wins; others get 1.0.
  Schedulers of :mod:`stabletrain.schedulers` scale each group from its own base LR,
  so the ratio between parts is kept throughout training.

Each group carries a ``"name"`` entry (e.g. ``"decoders/no_decay"``; parameters that
match no prefix are in ``"default/..."``) and its ``"lr_multiplier"``, which show in
``optimizer.param_groups``.

Example:
    >>> import torch
    >>> from stabletrain.optim import build_optimizer
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    >>> opt = build_optimizer(model, {"type": "adamw", "lr": 1e-3, "epsilon": 1e-7})
    >>> [(g["name"], len(g["params"]), g["weight_decay"]) for g in opt.param_groups]
    [('default/decay', 1, 0.01), ('default/no_decay', 3, 0.0)]
    >>> opt.param_groups[0]["eps"]
    1e-07
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

__all__ = [
    "CLIPPING_KEYS",
    "OPTIMIZER_TYPES",
    "build_optimizer",
    "clipping_from_config",
    "is_no_decay",
    "param_groups",
]

OPTIMIZER_TYPES: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "rmsprop": torch.optim.RMSprop,
    "adadelta": torch.optim.Adadelta,
    "sgd": torch.optim.SGD,
}
"""Accepted ``type`` values and the torch class each builds."""

CLIPPING_KEYS: dict[str, str] = {
    "gradient_clipping_by_norm": "norm",
    "gradient_clipping_by_norm_local": "norm_local",
    "gradient_clipping_by_value": "value",
}
"""The Keras system's clipping keys and the :class:`~stabletrain.stability.StabilityGuard` mode each means."""

# Keras key -> torch argument, per type (beta_1/beta_2 are handled together)
_KERAS_KEYS: dict[str, dict[str, str]] = {
    "adam": {"epsilon": "eps", "amsgrad": "amsgrad"},
    "adamw": {"epsilon": "eps", "amsgrad": "amsgrad"},
    "rmsprop": {"epsilon": "eps", "rho": "alpha", "momentum": "momentum", "centered": "centered"},
    "adadelta": {"epsilon": "eps", "rho": "rho"},
    "sgd": {"momentum": "momentum", "nesterov": "nesterov", "dampening": "dampening"},
}
_BUILDER_KEYS = ("type", "no_decay_norm_bias", "lr_multipliers")
_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,  # BatchNorm*, InstanceNorm*, SyncBatchNorm
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)


def _torch_args(cls: type[torch.optim.Optimizer]) -> list[str]:
    return [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "params")]


def _accepted_keys(kind: str) -> list[str]:
    keras = set(_KERAS_KEYS[kind]) | {"learning_rate", "weight_decay"}
    if kind in ("adam", "adamw"):
        keras |= {"beta_1", "beta_2"}
    return sorted(keras | set(_torch_args(OPTIMIZER_TYPES[kind])) | set(CLIPPING_KEYS))


def _optimizer_type(config: Mapping[str, Any]) -> str:
    kind = config.get("type")
    if not isinstance(kind, str) or kind.strip().lower() not in OPTIMIZER_TYPES:
        raise ValueError(f"optimizer type must be one of {sorted(OPTIMIZER_TYPES)}, got {kind!r}")
    return kind.strip().lower()


def _torch_kwargs(kind: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """Map a configuration (Keras or torch keys) to the torch constructor's keywords."""
    cls = OPTIMIZER_TYPES[kind]
    torch_names = set(_torch_args(cls))
    unknown = sorted(k for k in config if k not in _accepted_keys(kind) and k not in _BUILDER_KEYS)
    if unknown:
        raise ValueError(
            f"unknown optimizer key(s) {unknown} for type {kind!r}; accepted: "
            f"{sorted(set(_accepted_keys(kind)) | set(_BUILDER_KEYS))}"
        )
    kwargs: dict[str, Any] = {}
    kwargs_source: dict[str, str] = {}  # which config key set each torch argument

    def put(torch_name: str, value: Any, source: str) -> None:
        if torch_name in kwargs:
            raise ValueError(
                f"optimizer keys {source!r} and {kwargs_source[torch_name]!r} both set "
                f"{torch_name!r}; give only one"
            )
        kwargs[torch_name] = value
        kwargs_source[torch_name] = source

    for key, value in config.items():
        if key in _BUILDER_KEYS or key in CLIPPING_KEYS or key in ("beta_1", "beta_2"):
            continue
        if key == "learning_rate":
            put("lr", value, key)
        elif key in _KERAS_KEYS[kind]:
            put(_KERAS_KEYS[kind][key], value, key)
        elif key in torch_names:
            put(key, value, key)
    if "beta_1" in config or "beta_2" in config:
        default = inspect.signature(cls.__init__).parameters["betas"].default
        betas = (config.get("beta_1", default[0]), config.get("beta_2", default[1]))
        for name, beta in zip(("beta_1", "beta_2"), betas, strict=True):
            if isinstance(beta, bool) or not isinstance(beta, int | float):
                raise ValueError(f"{name} must be a number in [0, 1), got {beta!r}")
        put("betas", (float(betas[0]), float(betas[1])), "beta_1/beta_2")
    if "betas" in kwargs and isinstance(kwargs["betas"], list):
        kwargs["betas"] = tuple(kwargs["betas"])  # YAML gives lists
    return kwargs


def is_no_decay(module: nn.Module, param_name: str) -> bool:
    """Whether a parameter is a bias or belongs to a normalisation layer.

    Args:
        module: the module that owns the parameter directly.
        param_name: its local name in that module (``"weight"``, ``"bias"``...).
    """
    return param_name == "bias" or isinstance(module, _NORM_TYPES)


def _multiplier(name: str, multipliers: Mapping[str, float]) -> tuple[str, float]:
    best = ""
    for prefix in multipliers:
        if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > len(best):
            best = prefix
    return (best, float(multipliers[best])) if best else ("default", 1.0)


def param_groups(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float = 0.0,
    no_decay_norm_bias: bool = True,
    lr_multipliers: Mapping[str, float] | None = None,
) -> list[dict[str, Any]]:
    r"""Split a model's trainable parameters into optimizer parameter groups.

    A parameter gets learning rate :math:`m \cdot \text{lr}` with :math:`m` the
    multiplier of the longest prefix of its qualified name in ``lr_multipliers``
    (1.0 if none matches) and weight decay 0 if ``no_decay_norm_bias`` and
    :func:`is_no_decay`, else ``weight_decay``. One group per distinct
    (prefix, decay) pair, in the order parameters are first met; empty groups are
    left out; parameters shared between modules appear once.

    Raises:
        ValueError: a multiplier that is not a finite number ``>= 0`` or a prefix that
            matches no parameter (named, with the model's top-level children listed).
    """
    multipliers = dict(lr_multipliers or {})
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    for prefix, m in multipliers.items():
        if isinstance(m, bool) or not isinstance(m, int | float) or not 0 <= m < float("inf"):
            raise ValueError(f"lr_multipliers[{prefix!r}] must be a number >= 0, got {m!r}")
        if not any(n == prefix or n.startswith(prefix + ".") for n in names):
            children = [n for n, _ in model.named_children()]
            raise ValueError(
                f"lr_multipliers prefix {prefix!r} matches no parameter of the model; "
                f"its top-level modules are {children}"
            )
    groups: dict[tuple[str, bool], dict[str, Any]] = {}
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for local, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            full = f"{module_name}.{local}" if module_name else local
            prefix, m = _multiplier(full, multipliers)
            exempt = no_decay_norm_bias and is_no_decay(module, local)
            key = (prefix, exempt)
            if key not in groups:
                groups[key] = {
                    "params": [],
                    "name": f"{prefix}/{'no_decay' if exempt else 'decay'}",
                    "lr": lr * m,
                    "lr_multiplier": m,
                    "weight_decay": 0.0 if exempt else weight_decay,
                }
            groups[key]["params"].append(param)
    return list(groups.values())


def build_optimizer(
    model_or_params: nn.Module | Iterable[torch.Tensor] | Iterable[dict[str, Any]],
    config: Mapping[str, Any],
) -> torch.optim.Optimizer:
    """Build a torch optimizer from a flat configuration (see the module docs).

    Args:
        model_or_params: a model (parameter groups are built with
            :func:`param_groups`), or parameters / parameter-group dicts given to
            torch as they are (then ``lr_multipliers`` and ``no_decay_norm_bias=True``
            are not available: they need parameter names).
        config: ``{"type": ..., <optimizer keys>, "no_decay_norm_bias": bool,
            "lr_multipliers": {prefix: m}, <clipping keys>}``.

    Returns:
        The ``torch.optim`` optimizer. Clipping keys are not applied here (see
        :func:`clipping_from_config`).

    Raises:
        ValueError: an unknown ``type`` or key (the message lists the accepted ones),
            a key given under both its Keras and torch name, or a value torch rejects.
        TypeError: ``config`` is not a mapping.
    """
    if not isinstance(config, Mapping):
        raise TypeError(f"optimizer config must be a mapping, got {type(config).__name__}")
    kind = _optimizer_type(config)
    kwargs = _torch_kwargs(kind, config)
    clipping_from_config(config)  # validate the clipping keys early
    cls = OPTIMIZER_TYPES[kind]
    no_decay = config.get("no_decay_norm_bias")
    if no_decay is not None and not isinstance(no_decay, bool):
        raise ValueError(f"no_decay_norm_bias must be true, false or null, got {no_decay!r}")
    multipliers = config.get("lr_multipliers")
    if multipliers is not None and not isinstance(multipliers, Mapping):
        raise ValueError(
            f"lr_multipliers must be a mapping of module-name prefix to multiplier, "
            f"got {multipliers!r}"
        )
    if isinstance(model_or_params, nn.Module):
        lr = kwargs.pop("lr", inspect.signature(cls.__init__).parameters["lr"].default)
        weight_decay = kwargs.pop(
            "weight_decay", inspect.signature(cls.__init__).parameters["weight_decay"].default
        )
        params: Any = param_groups(
            model_or_params,
            lr=float(lr),
            weight_decay=float(weight_decay),
            no_decay_norm_bias=(kind == "adamw") if no_decay is None else no_decay,
            lr_multipliers=multipliers,
        )
        kwargs["lr"] = float(lr)
        kwargs["weight_decay"] = float(weight_decay)
    else:
        if multipliers or no_decay:
            raise ValueError(
                "lr_multipliers and no_decay_norm_bias need parameter names: pass the model, "
                "not its parameters"
            )
        params = list(model_or_params)
    try:
        return cls(params, **kwargs)
    except (ValueError, TypeError) as error:
        raise ValueError(f"invalid {kind} optimizer setting: {error}") from None


def clipping_from_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Translate the Keras system's clipping keys into ``StabilityGuard`` keywords.

    ``{"gradient_clipping_by_norm": 1.0}`` gives ``{"clip_mode": "norm",
    "max_norm": 1.0}`` (see :data:`CLIPPING_KEYS`); no key, or a ``null``/0 value,
    gives ``{}`` (no clipping). Keras also refuses more than one clipping option.

    Raises:
        ValueError: more than one clipping key set, or a value that is not a number > 0.

    Example:
        >>> clipping_from_config({"type": "adam", "gradient_clipping_by_value": 0.5})
        {'clip_mode': 'value', 'max_norm': 0.5}
    """
    given = {k: config[k] for k in CLIPPING_KEYS if config.get(k) not in (None, 0, False)}
    if len(given) > 1:
        raise ValueError(f"give at most one gradient clipping key, got {sorted(given)}")
    if not given:
        return {}
    ((key, value),) = given.items()
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{key} must be a number > 0 or null, got {value!r}")
    return {"clip_mode": CLIPPING_KEYS[key], "max_norm": float(value)}
