"""One configuration, ``DEFAULTS ⊕ PRESETS[preset] ⊕ config ⊕ overrides`` (mappings merge key
by key, anything else replaces; a new ``scheduler.type`` starts that section afresh but for
``warmup_epochs``, not for ``adaptive``), every key checked by :data:`SCHEMA` (``ValueError``
naming the dotted key and what is accepted), builds what ``fit`` takes or trains (:func:`run`)."""

from __future__ import annotations

import copy
import functools
import math
import os
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from . import checks, optim
from .amp import DTYPES, MixedPrecision
from .callbacks import Callback
from .checkpoint import _STRATEGY_ALIASES, STRATEGIES, CheckpointManager
from .checks import check_config_value, check_float, check_int, did_you_mean
from .data import SHAPES, make_loaders
from .deep_supervision import _DEFAULTS as _SCHEDULE_PARAMS
from .deep_supervision import DeepSupervisionLoss
from .distributed import init_from_env, is_distributed, is_main
from .history import History
from .loop import fit
from .losses import build_loss
from .metrics import metric_mode
from .models import ACTIVATION_TYPES, ATTENTION_TYPES, NORM_TYPES, TinyUNet
from .schedulers import build_scheduler, epochs_to_steps
from .stability import NONFINITE_POLICIES, EarlyStopping, StabilityGuard
from .tracking import MLflowTracker, check_tracking_uri
from .utils import as_device, get_device, seed_everything

DEFAULTS: dict[str, Any] = {
    "preset": None,
    "seed": 0,
    "epochs": 4,
    "monitor": "val_loss",
    "device": None,
    "data": {"num_train": 128, "num_val": 32, "batch_size": 16, "image_size": 64, "seed": 0},
    "model": {
        "attention": "cbam",
        "base_channels": 16,
        "depth": 3,
        "deep_supervision": False,
        "safe_attention": False,
    },
    "optimizer": {"type": "adamw", "lr": 1e-3, "weight_decay": 1e-4},
    "scheduler": None,
    "stability": {"on_nonfinite": "raise"},
    "amp": {"dtype": "float32"},
    "loss": "default_segmentation",
    "deep_supervision": {"schedule": "linear_low_to_high"},
    "early_stopping": None,
    "checkpoints": {"directory": None, "strategy": "epoch", "max_keep": 2},
    "tracking": {"enabled": False, "experiment": "stabletrain", "run_name": None},
}
"""Every key a configuration may hold, with its default (the base layer of resolution)."""

PRESETS: dict[str, dict[str, Any]] = {
    "fast": {
        "scheduler": {"type": "onecycle", "pct_start": 0.3},
        "amp": {"dtype": "auto"},
        "early_stopping": {"patience": 5},
    },
    "stable": {
        "scheduler": {"type": "plateau", "warmup_epochs": 1, "factor": 0.5, "patience": 3},
        "optimizer": {"gradient_clipping_by_norm": 1.0},
        "amp": {"dtype": "float32"},
        "stability": {"on_nonfinite": "skip"},
        "early_stopping": {"patience": 15},
    },
    "memory_constrained": {
        "scheduler": {"type": "warmup_cosine"},
        "optimizer": {"gradient_clipping_by_norm": 0.5},
        "amp": {"dtype": "auto"},
        "early_stopping": {"patience": 10},
    },
    "attention": {
        "model": {"attention": "cbam", "safe_attention": True},
        "scheduler": {"type": "warmup_cosine", "warmup_epochs": 5, "min_lr_ratio": 0.01},
        "optimizer": {"gradient_clipping_by_norm": 0.5},
        "stability": {"on_nonfinite": "rollback", "lr_backoff": 0.5, "snapshot_every": 10},
    },
}
"""Named training presets: partial configurations laid over :data:`DEFAULTS`."""

MONITORS = ("train_loss", "val_loss", "val_dice")
"""The metrics :func:`run` logs each epoch that ``monitor`` may watch (its validation: loss, Dice)."""

_MAX_BYTES, _MAX_NODES = 2**20, 100_000  # a config file's size; YAML nodes, aliases expanded


def _hint(word: Any, choices: Collection) -> str:
    return f"; {hint}" if (hint := did_you_mean(word, choices)) else ""


def _keys(name: str, mapping: Mapping, allowed: Collection[str]) -> None:
    try:
        checks.check_keys(name, mapping, allowed)
    except ValueError as error:  # with the nearest accepted key
        unknown = sorted(map(str, set(mapping) - set(allowed)))
        raise ValueError(f"{error}{_hint(unknown[0], allowed)}") from None


def _spec(check, **bounds):
    return lambda name, value: check_config_value(check, name, value, **bounds)


def _must(what: str, ok: Callable[[Any], Any], *, optional: bool = False):
    what += " or null" if optional else ""

    def check(name: str, value: Any) -> None:
        if not (ok(value) or (optional and value is None)):
            raise ValueError(f"{name} must be {what}, got {type(value).__name__} {value!r}")

    return check


def _one_of(*choices: Any, what: str = "one of"):
    def check(name: str, value: Any) -> None:
        if value not in choices:  # strings and None: check_choice's rule
            raise ValueError(
                f"{name} must be {what} {choices}, got {value!r}{_hint(value, choices)}"
            )

    return check


def _device(name: str, value: Any) -> None:
    try:
        value in (None, "auto") or as_device(name, value)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{error} (or auto or null: the best available)") from None


def _optimizer(name: str, value: Any) -> None:
    _check(name, value, {})
    try:
        optim.check_optimizer_config(value)
    except (ValueError, TypeError) as error:
        kind = str(value.get("type")).strip().lower()
        keys = optim.optimizer_keys(kind) if kind in optim.OPTIMIZER_TYPES else []
        hint = next((_hint(k, keys) for k in value if k not in keys), "")
        raise ValueError(f"config section {name!r}: {error}{hint}") from None


def _in_section(name: str, build, *args, **kwargs) -> Any:
    try:
        return build(*args, **kwargs)
    except (ValueError, TypeError) as error:
        raise ValueError(f"config section {name!r}: {error}") from None


_INT, _SEED = _spec(check_int, min=1), _spec(check_int, min=0, max=2**32 - 1)
_BOOL = _must("a bool (true or false)", lambda value: isinstance(value, bool))  # YAML's spelling
_NONE_OR_MAPPING = ("scheduler", "early_stopping", "model.attention_options")
SCHEMA: dict[str, Any] = {
    "preset": lambda name, value: value is None or _one_of(*PRESETS)(name, value),
    "seed": _SEED,
    "epochs": _INT,
    "monitor": _one_of(*MONITORS, what="a metric the run logs each epoch, one of"),
    "device": _device,
    "data": {"num_train": _INT, "num_val": _INT, "batch_size": _INT, "seed": _SEED}
    | {"image_size": _spec(check_int, min=16), "num_classes": _INT},
    "model": {
        "attention": _one_of(*ATTENTION_TYPES),
        "base_channels": _INT,
        "depth": _spec(check_int, min=1, max=6),
        "deep_supervision": _BOOL,
        "safe_attention": _BOOL,
        "attention_options": {
            "norm": _BOOL,
            "gate_bound": _spec(check_float, min=0, low_open=True, optional=True),
            "residual_scale": _spec(check_float, min=0, max=1, low_open=True, optional=True),
        },
        "in_channels": _INT,
        "norm": _one_of(*NORM_TYPES),
        "activation": _one_of(*ACTIVATION_TYPES),
        "bottleneck_attention": _BOOL,
        "qk_norm": _BOOL,
    },
    "optimizer": _optimizer,
    "scheduler": {},  # its keys: build_scheduler's (they depend on the type)
    "stability": {
        "on_nonfinite": _one_of(*NONFINITE_POLICIES),
        "lr_backoff": _spec(check_float, min=0, max=1, low_open=True),
        "snapshot_every": _INT,
        "max_consecutive_skips": _INT,
        "accumulation_steps": _INT,
        "min_loss_scale": _spec(check_float, min=0, low_open=True, finite=False),
        "spike_factor": _spec(check_float, min=1, low_open=True, optional=True),
        "spike_warmup": _INT,
        "spike_window": _INT,
    },
    "amp": {"dtype": _one_of(*DTYPES)},
    "loss": _must(  # a mapping's keys: build_loss's
        "a loss preset name or a mapping",
        lambda value: isinstance(value, Mapping) or (isinstance(value, str) and value),
    ),
    "deep_supervision": {},  # DeepSupervisionLoss's (checked against model.depth)
    "early_stopping": {
        "patience": _INT,
        "min_delta": _spec(check_float, min=0),
        "check_finite": _BOOL,
        "mode": _one_of("min", "max"),
    },
    "checkpoints": {
        "directory": _must("a folder path", lambda v: isinstance(v, str) and v, optional=True),
        "strategy": _one_of(*STRATEGIES, *_STRATEGY_ALIASES),
        "max_keep": _INT,
        "every_n_epochs": _INT,
        "every_n_minutes": _spec(check_float, min=0, low_open=True, optional=True),
        "min_improvement": _spec(check_float, min=0),
        "every_n_steps": _spec(check_int, min=1, optional=True),
        "async_save": _BOOL,
        "durable": _BOOL,
        "mode": _one_of("min", "max"),
    },
    "tracking": {
        "enabled": _BOOL,
        "experiment": _must("a non-empty string", lambda v: isinstance(v, str) and v),
        "run_name": _must("a non-empty string", lambda v: isinstance(v, str) and v, optional=True),
        "tracking_uri": _spec(lambda _, uri: check_tracking_uri(uri)),
        "flush_every": _INT,
        "verbose": _BOOL,
    },
}
"""Every key and its check ``(dotted_name, value)``; a mapping: a section (``{}``: its builder's)."""


def _check(name: str, value: Any, spec: Any) -> None:
    """``value`` against ``spec`` (a check or a section of :data:`SCHEMA`), named ``name``."""
    if callable(spec):
        spec(name, value)
    elif value is not None or name not in _NONE_OR_MAPPING:
        if not isinstance(value, Mapping):
            raise ValueError(f"config section {name!r} must be a mapping, got {value!r}")
        if spec:
            _keys(f"config section {name!r}" if name else "config", value, spec)
        for key, item in value.items() if spec else ():
            _check(f"{name}.{key}".lstrip("."), item, spec[key])


@functools.cache
def _yaml_loader():
    """The safe YAML loader (the C one where built) that refuses duplicate keys and bombs."""
    import yaml

    class Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
        def get_single_data(self):
            node = self.get_single_node()
            if node is not None and _expanded(node, {}, set()) > _MAX_NODES:
                raise ValueError(f"expands to over {_MAX_NODES} YAML nodes (nested aliases)")
            return None if node is None else self.construct_document(node)

        def construct_mapping(self, node, deep=False):
            seen = set()
            for key, _ in node.value:
                line = key.start_mark.line + 1
                if not isinstance(key, yaml.ScalarNode):
                    raise ValueError(f"is not valid YAML at line {line} (a key must be a scalar)")
                if (key.tag, key.value) in seen:
                    raise ValueError(f"holds the key {key.value!r} twice (again at line {line})")
                seen.add((key.tag, key.value))
            return super().construct_mapping(node, deep)

    Loader.yaml_implicit_resolvers = {  # YAML 1.2 numbers: 1e-3 a float, 010 ten, 1:00 a string
        c: [(t, r) for t, r in rs if t not in (_INT_TAG, _FLOAT_TAG)]
        for c, rs in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    Loader.add_implicit_resolver(_INT_TAG, re.compile(_YAML12_INT), list("-+0123456789"))
    Loader.add_implicit_resolver(_FLOAT_TAG, re.compile(_YAML12_FLOAT), list("-+.0123456789"))
    base = {"0o": 8, "0x": 16}  # int() takes the prefix of its base
    Loader.add_constructor(_INT_TAG, lambda _, node: int(node.value, base.get(node.value[:2], 10)))
    return Loader


_INT_TAG, _FLOAT_TAG = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
_YAML12_INT = r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"  # the YAML 1.2 core schema
_FLOAT = r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)"
_YAML12_FLOAT = rf"^(?:{_FLOAT}|\.(?:nan|NaN|NAN))$"


def _expanded(node: Any, sizes: dict[int, int], open_: set[int]) -> int:
    """The number of YAML nodes under ``node`` with every alias expanded."""
    if id(node) in open_:
        raise ValueError("holds a recursive alias")
    if id(node) not in sizes:
        open_.add(id(node))
        items = node.value if isinstance(node.value, list) else []
        kids = [kid for item in items for kid in (item if isinstance(item, tuple) else (item,))]
        sizes[id(node)] = 1 + sum(_expanded(kid, sizes, open_) for kid in kids)
        open_.discard(id(node))
    return sizes[id(node)]


def parse_yaml(text: str) -> Any:
    """``text`` read as a config file is; ``ValueError`` says why not (``"is not valid YAML..."``)."""
    import yaml

    try:
        return yaml.load(text, Loader=_yaml_loader())  # a safe loader
    except yaml.YAMLError as error:
        mark, problem = getattr(error, "problem_mark", None), getattr(error, "problem", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ValueError(f"is not valid YAML{where}{f' ({problem})' if problem else ''}") from None
    except RecursionError:
        raise ValueError("nests too deeply") from None


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML configuration file (1 MB at most, a mapping) as a dict; else ``ValueError``."""
    name, path = f"config file {str(path)!r}", Path(path)
    if path.is_dir():
        raise ValueError(f"{name} is a directory, not a file")
    if not path.exists():
        raise ValueError(f"{name} does not exist")
    if not path.is_file():
        raise ValueError(f"{name} is not a regular file (a device or a pipe?)")
    with path.open("rb") as file:
        raw = file.read(_MAX_BYTES + 1)
    if len(raw) > _MAX_BYTES:
        raise ValueError(f"{name} is larger than the 1 MB a configuration may have")
    try:
        data = parse_yaml(raw.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise ValueError(f"{name} is not UTF-8 text (byte {error.start}): a binary file?") from None
    except ValueError as error:
        raise ValueError(f"{name} {error}") from None
    if data is None:
        raise ValueError(f"{name} is empty (no settings)")
    if not isinstance(data, Mapping):
        raise ValueError(f"{name} must hold a mapping, got {type(data).__name__}")
    return dict(data)


def _nest(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``{"optimizer.lr": 1e-3}`` → ``{"optimizer": {"lr": 1e-3}}`` (a copy; a key twice: error)."""
    out: dict[str, Any] = {}
    for key, value in copy.deepcopy(dict(overrides)).items():
        *parents, last = str(key).split(".")
        node = out
        for i, part in enumerate([*parents, last]):
            if (i == len(parents) and part in node) or not isinstance(node.get(part, {}), dict):
                twice = ".".join([*parents, last][: i + 1])
                raise ValueError(f"config key {twice!r} is given twice (dotted and nested)")
            node = node.setdefault(part, {}) if i < len(parents) else node
        node[last] = value
    return out


def _merge(base: Any, layer: Any, path: str = "") -> Any:
    if not isinstance(base, Mapping) or not isinstance(layer, Mapping):
        return copy.deepcopy(layer)
    if path == ".scheduler" and "type" in layer and layer["type"] != base.get("type"):
        keep = "warmup_epochs" in base and str(layer["type"]).lower() != "adaptive"
        keep = keep and "pct_start" not in layer  # onecycle's own warmup
        base = {"warmup_epochs": base["warmup_epochs"]} if keep else {}
    out = copy.deepcopy(dict(base))
    for key, value in layer.items():
        out[key] = _merge(out.get(key), value, f"{path}.{key}")
    return out


def resolve_config(
    config: Mapping[str, Any] | str | os.PathLike | None = None,
    *,
    preset: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Resolve ``DEFAULTS ⊕ PRESETS[preset] ⊕ config ⊕ overrides`` (``config`` may be a YAML path,
    ``overrides`` dotted keys, ``None`` sets null; ``preset`` > ``overrides["preset"]`` >
    ``config["preset"]``) and check every key; a user's key that nothing reads is refused."""
    if isinstance(config, str | os.PathLike):
        config = load_config(config)
    if config is not None and not isinstance(config, Mapping):
        raise ValueError(f"config must be a mapping or a YAML path, got {type(config).__name__}")
    if overrides is not None and not isinstance(overrides, Mapping):
        raise TypeError(f"overrides must be a mapping of dotted keys to values, got {overrides!r}")
    config, given = _nest(config or {}), _nest(overrides or {})
    chosen = preset if preset is not None else given.pop("preset", config.get("preset"))
    SCHEMA["preset"]("preset", chosen)
    cfg = _merge(_merge(_merge(DEFAULTS, PRESETS.get(chosen, {})), config), given)
    cfg["preset"] = chosen
    mine = _merge(config, given)
    section = cfg["optimizer"] if isinstance(cfg["optimizer"], Mapping) else {}
    clips = [k for k in optim.CLIPPING_KEYS if section.get(k) not in (None, 0, False)]
    if len(clips) > 1 and (theirs := [k for k in clips if k not in mine.get("optimizer", {})]):
        why = f"optimizer.{theirs[0]} comes from preset {chosen!r}: set it to null to use another"
        raise ValueError(f"give at most one gradient clipping key, got {clips}; {why}")
    _check("", cfg, SCHEMA)
    _check_together(cfg, mine)
    return cfg


def _check_together(cfg: dict[str, Any], mine: Mapping[str, Any]) -> None:
    """The checks of one key against another; ``mine``: the user's layers (no defaults/preset)."""
    data, model, deep = cfg["data"], cfg["model"], cfg["deep_supervision"]
    depth = model["depth"]
    if (schedule := deep.get("schedule", "linear_low_to_high")) in _SCHEDULE_PARAMS:
        own = ("schedule", "target_resize", "min_weight", *_SCHEDULE_PARAMS[schedule])
        _keys("config section 'deep_supervision'", deep, own)
    _in_section("deep_supervision", DeepSupervisionLoss, max, depth, **deep)
    if cfg["early_stopping"] is not None and "patience" not in cfg["early_stopping"]:
        raise ValueError("config section 'early_stopping' needs patience (epochs, >= 1)")
    for section in ("early_stopping", "checkpoints"):  # a mode against the monitor's direction
        _in_section(section, metric_mode, cfg["monitor"], (cfg[section] or {}).get("mode"))
    batches = math.ceil(data["num_train"] / data["batch_size"])
    if (steps := cfg["stability"].get("accumulation_steps", 1)) > batches:
        per_epoch = f"the {batches} batches of an epoch (data.num_train / data.batch_size)"
        raise ValueError(f"stability.accumulation_steps={steps} must be <= {per_epoch}")
    if data["image_size"] % 2**depth:
        need = f"divisible by 2**model.depth = {2**depth} (the U-Net halves it depth times)"
        raise ValueError(f"data.image_size={data['image_size']} must be {need}")
    classes = sorted({1, 2, len(SHAPES) + 1})  # the shapes data: one class per shape
    checks.check_choice("data.num_classes", data.get("num_classes", 1), classes)
    if (channels := model.get("in_channels", 1)) != 1:
        raise ValueError(f"model.in_channels must be 1 (the shapes data), got {channels}")
    scheduler, points = cfg["scheduler"] or {}, cfg["checkpoints"]
    strategy = _STRATEGY_ALIASES.get(points["strategy"], points["strategy"])
    policy, off = cfg["stability"]["on_nonfinite"], str(scheduler.get("type")).lower()
    unused = {  # key: why nothing reads it (None: something does)
        "model.attention_options": model.get("attention") is None and "model.attention: null",
        "stability.lr_backoff": policy != "rollback" and f"on_nonfinite: {policy} (not rollback)",
        "checkpoints.every_n_epochs": strategy != "interval" and f"strategy: {strategy}",
        "checkpoints.every_n_minutes": strategy != "time" and f"strategy: {strategy}",
        "checkpoints.min_improvement": strategy != "improvement_or_final"
        and f"strategy: {strategy}",
    } | {f"scheduler.{k}": off in ("none", "null") and "type: none" for k in scheduler}
    for key, why in unused.items():
        section, _, name = key.partition(".")
        if why and name != "type" and name in (mine.get(section) or {}):
            raise ValueError(f"{key} is unused with {why}: remove it")


def config_diff(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two configurations."""
    out: list[str] = []
    for key in sorted(set(a) | set(b), key=str):
        x, y = a.get(key), b.get(key)
        if isinstance(x, Mapping) and isinstance(y, Mapping):
            out.extend(config_diff(x, y, f"{prefix}{key}."))
        elif x != y:
            out.append(f"{prefix}{key}")
    return out


def build_loaders(config: Mapping[str, Any]):
    """The shapes ``(train_loader, val_loader)`` of a configuration's ``data`` section."""
    return make_loaders(**resolve_config(config)["data"])


def build_model(config: Mapping[str, Any]) -> nn.Module:
    """The :class:`~stabletrain.models.TinyUNet` of a configuration's ``model`` section."""
    cfg = resolve_config(config)
    return TinyUNet(num_classes=cfg["data"].get("num_classes", 1), **cfg["model"])


def seeded_start(data: Mapping[str, Any], model: Mapping[str, Any], seed: int):
    """The one seeding recipe, in order: the loaders of ``data`` (images seeded by
    ``data["seed"]``), ``seed_everything(seed)`` and the train order generator, the model."""
    train, val = make_loaders(**data, distributed=is_distributed())
    seed_everything(seed)
    if train.generator is not None:  # a DistributedSampler shuffles by its own seed and epoch
        train.generator.manual_seed(seed)
    return train, val, TinyUNet(num_classes=data.get("num_classes", 1), **model)


def scheduler_from_config(optimizer, section: Mapping | None, *, epochs: int, steps_per_epoch: int):
    """The scheduler of a ``scheduler`` section (``None`` if none/null), ``warmup_epochs`` as
    ``warmup_steps`` and ``total_steps = epochs * steps_per_epoch``; a bad setting: ValueError."""
    if section is None or str(section.get("type", "")).lower() in ("none", "null"):
        return None
    params, total = dict(section), epochs * steps_per_epoch
    plan = f"{epochs=} x {steps_per_epoch} steps per epoch = {total} steps"
    if "warmup_epochs" in params:
        if "warmup_steps" in params:
            raise ValueError("scheduler: give warmup_epochs or warmup_steps, not both")
        given = params.pop("warmup_epochs")
        params["warmup_steps"] = epochs_to_steps(given, steps_per_epoch)
        if params["warmup_steps"] >= total:
            raise ValueError(f"scheduler warmup_epochs={given} must be shorter than {epochs=}")
        if given and not params["warmup_steps"]:
            raise ValueError(f"scheduler warmup_epochs={given} is 0 steps ({plan}): give 0 or more")
    if params.setdefault("total_steps", total) != total:
        raise ValueError(f"scheduler total_steps={params['total_steps']} is not the run's {plan}")
    try:
        return build_scheduler(optimizer, params)
    except ValueError as error:
        raise ValueError(f"scheduler {section.get('type')!r} over {plan}: {error}") from None


class ConfigCheckpointManager(CheckpointManager):
    """A ``CheckpointManager`` that stores ``config`` in every checkpoint's ``extra``."""

    def __init__(self, directory: str | os.PathLike, *, config: Mapping, **options) -> None:
        super().__init__(directory, **options)
        self.config = copy.deepcopy(dict(config))

    def save(self, epoch, metrics=None, *, extra=None, **kwargs):
        extra = {**dict(extra or {}), "config": self.config}
        return super().save(epoch, metrics, extra=extra, **kwargs)


@dataclass
class Training:
    """What ``fit`` takes (``None``: off), the steps per epoch planned, the resolved config."""

    optimizer: torch.optim.Optimizer
    scheduler: Any
    loss_fn: Any
    guard: Any
    amp: Any
    checkpoints: Any
    tracker: Any
    early_stopping: Any
    epochs: int
    monitor: str
    steps_per_epoch: int
    config: dict[str, Any] = field(default_factory=dict)

    def fit_kwargs(self) -> dict[str, Any]:
        keys = "epochs optimizer scheduler loss_fn guard amp early_stopping monitor checkpoints"
        return {key: getattr(self, key) for key in (*keys.split(), "tracker")}

    def fit(self, model: nn.Module, train_loader, val_loader=None, **kwargs: Any) -> History:
        return fit(model, train_loader, val_loader=val_loader, **{**self.fit_kwargs(), **kwargs})


def build_training(
    model: nn.Module,
    config: Mapping[str, Any] | str | os.PathLike | None = None,
    *,
    steps_per_epoch: int | None = None,
    tracker: Any = None,
) -> Training:
    """What ``fit`` takes, for a model on its device (``steps_per_epoch``: ``ceil(ceil(num_train
    / batch_size) / accumulation_steps)``, as the loop steps); the config goes to the tracker and every checkpoint."""
    if tracker is not None and not callable(getattr(tracker, "log_metrics", None)):
        raise TypeError(f"tracker must be a tracker (an MLflowTracker) or None, got {tracker!r}")
    cfg = resolve_config(config)
    if steps_per_epoch is None:
        batches = math.ceil(cfg["data"]["num_train"] / cfg["data"]["batch_size"])
        steps_per_epoch = math.ceil(batches / cfg["stability"].get("accumulation_steps", 1))
    optimizer = optim.build_optimizer(model, cfg["optimizer"])
    section = cfg["scheduler"]
    if section and str(section.get("type", "")).strip().lower() == "plateau":
        section = {"mode": metric_mode(cfg["monitor"]), **section}  # the monitor's direction
    scheduler = scheduler_from_config(
        optimizer, section, epochs=cfg["epochs"], steps_per_epoch=steps_per_epoch
    )
    amp = MixedPrecision(**cfg["amp"], device_type=next(model.parameters()).device.type)
    amp = amp if amp.enabled else None
    options = {**optim.clipping_from_config(cfg["optimizer"]), **cfg["stability"]}
    guard = StabilityGuard(model, optimizer, scheduler=scheduler, amp=amp, **options)
    num_classes = cfg["data"].get("num_classes", 1)
    loss_fn: Any = build_loss(cfg["loss"], mode="binary" if num_classes == 1 else "multiclass")
    inner = model.module if isinstance(model, DDP) else model
    if getattr(inner, "deep_supervision", False):
        loss_fn = DeepSupervisionLoss(loss_fn, num_outputs=inner.depth, **cfg["deep_supervision"])
    if early := cfg["early_stopping"]:  # None or with patience
        early = EarlyStopping(**{**early, "mode": metric_mode(cfg["monitor"], early.get("mode"))})
    directory, options = _checkpoint_options(cfg)
    checkpoints = ConfigCheckpointManager(directory, config=cfg, **options) if directory else None
    if tracker is None and cfg["tracking"].get("enabled") and is_main():  # rank 0 logs
        tracker = MLflowTracker(**{k: v for k, v in cfg["tracking"].items() if k != "enabled"})
    if tracker is not None:
        tracker.log_params({"config": cfg})
    fields = (optimizer, scheduler, loss_fn, guard, amp, checkpoints, tracker, early)
    return Training(*fields, cfg["epochs"], cfg["monitor"], steps_per_epoch, cfg)


def _checkpoint_options(cfg: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The checkpoint folder and the manager's other arguments (``monitor``, its direction)."""
    options = {**cfg["checkpoints"], "monitor": cfg["monitor"]}
    options["mode"] = metric_mode(cfg["monitor"], options.get("mode"))
    if options["strategy"] in ("improvement_or_final", "adaptive"):
        options["total_epochs"] = cfg["epochs"]  # the planned epochs
    return options.pop("directory", None), options


def resumable(cfg: Mapping[str, Any]) -> bool:
    """Whether ``checkpoints.directory`` holds a checkpoint to resume from; ``ValueError`` for no
    folder or a checkpoint written with other training settings."""
    directory, options = _checkpoint_options(cfg)
    if not directory:
        raise ValueError("resume needs checkpoints.directory (a folder with checkpoints)")
    manager = CheckpointManager(directory, read_only=True, **options)
    latest = manager.load("latest", restore_rng=False) if manager.latest_path else {}
    stored = latest.get("extra", {}).get("config") or cfg
    bookkeeping = ("checkpoints", "tracking", "device")  # may differ when resuming
    differ = ", ".join(k for k in config_diff(stored, cfg) if k.split(".")[0] not in bookkeeping)
    if differ:
        written = f"the checkpoint was written with a different configuration ({differ})"
        raise ValueError(f"cannot resume: {written}; resume with the same settings")
    return bool(latest)


class _StopAfterEpochs(Callback):
    """Stop at the end of epoch ``n`` (counted from 1), after its checkpoint."""

    def __init__(self, n: int) -> None:
        self.n = check_int("stop_after_epochs", n, min=1)

    def on_epoch_end(self, ctx, metrics) -> None:
        if self.n <= ctx.epoch + 1 < ctx.epochs:
            ctx.stop_training = True
            ctx.stop_reason = f"stopped after {self.n} of {ctx.epochs} epochs (stop_after_epochs)"


def run(
    config: Mapping[str, Any] | str | os.PathLike | None = None,
    *,
    resume: bool = False,
    progress: bool = True,
    stop_after_epochs: int | None = None,
    tracker: Any = None,
) -> tuple[History, nn.Module, Training]:
    """Train on the shapes data from one configuration; returns ``(history, model, training)``.
    ``resume``: from the latest checkpoint (ValueError unless its config is equal but for
    checkpoints/tracking/device). Under ``torchrun`` (``WORLD_SIZE`` > 1) it joins the process
    group and trains a ``DistributedDataParallel`` model, ``data.batch_size`` per rank."""
    checks.check_bool("resume", resume)
    cfg = resolve_config(config)
    if resume:
        resumable(cfg)
    ddp = init_from_env()
    train, val, model = seeded_start(cfg["data"], cfg["model"], cfg["seed"])
    if ddp:  # the heads deep supervision would read get no gradient without it: unused
        cuda = [torch.cuda.current_device()] if torch.cuda.is_available() else None
        model = model.cuda() if cuda else model
        model = DDP(model, device_ids=cuda, find_unused_parameters=not model.deep_supervision)
    else:
        model = model.to(get_device(None if cfg["device"] == "auto" else cfg["device"]))
    steps = math.ceil(len(train) / cfg["stability"].get("accumulation_steps", 1))
    training = build_training(model, cfg, steps_per_epoch=steps, tracker=tracker)
    callbacks = [] if stop_after_epochs is None else [_StopAfterEpochs(stop_after_epochs)]
    history = training.fit(model, train, val, resume=resume, progress=progress, callbacks=callbacks)
    return history, model, training
