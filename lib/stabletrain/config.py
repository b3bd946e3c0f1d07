"""One configuration builds everything: presets, resolution, and the objects ``fit`` takes.

A configuration (the sections of :data:`DEFAULTS`) resolves as ``DEFAULTS ⊕ PRESETS[preset]
⊕ config ⊕ overrides``: mappings merge key by key, anything else replaces; a new
``scheduler.type`` starts that section afresh but for ``warmup_epochs`` (not for
``adaptive``). :func:`build_training` builds what ``fit`` takes; :func:`run` also trains.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .callbacks import Callback
from .checkpoint import CheckpointManager
from .checks import check_choice, check_int, check_keys
from .history import History
from .optim import build_optimizer, clipping_from_config

__all__ = [
    "DEFAULTS",
    "PRESETS",
    "ConfigCheckpointManager",
    "Training",
    "build_loaders",
    "build_model",
    "build_training",
    "config_diff",
    "load_config",
    "resolve_config",
    "run",
    "scheduler_from_config",
    "seeded_start",
]

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

# keys accepted in each section (None: checked by the builder the section is given to)
_SECTION_KEYS: dict[str, list[str] | None] = {
    "data": "num_train num_val batch_size image_size num_classes seed".split(),
    "model": (
        "attention base_channels depth deep_supervision safe_attention attention_options "
        "in_channels norm activation bottleneck_attention qk_norm"
    ).split(),
    "optimizer": None,
    "scheduler": None,
    "stability": (
        "on_nonfinite lr_backoff snapshot_every max_consecutive_skips accumulation_steps "
        "min_loss_scale spike_factor spike_warmup spike_window"
    ).split(),
    "amp": ["dtype"],
    "deep_supervision": None,
    "early_stopping": ["patience", "min_delta", "check_finite"],
    "checkpoints": (
        "directory strategy max_keep every_n_epochs every_n_minutes min_improvement "
        "every_n_steps async_save durable"
    ).split(),
    "tracking": "enabled experiment run_name tracking_uri flush_every verbose".split(),
}
_BOOKKEEPING = ("checkpoints", "tracking", "device")  # may differ when resuming


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML configuration file; raises ValueError if missing, not YAML or not a mapping."""
    import yaml

    name = f"config file {str(path)!r}"
    if not Path(path).is_file():
        raise ValueError(f"{name} does not exist")
    try:
        data = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ValueError(f"{name} is not valid YAML{where}") from None
    if data is not None and not isinstance(data, Mapping):
        raise ValueError(f"{name} must hold a mapping, got {type(data).__name__}")
    return dict(data or {})


def _nest(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``{"optimizer.lr": 1e-3}`` → ``{"optimizer": {"lr": 1e-3}}``."""
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        *parents, last = str(key).split(".")
        node = out
        for part in parents:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[last] = value
    return out


def _merge(base: Any, layer: Any, path: str = "") -> Any:
    if not isinstance(base, Mapping) or not isinstance(layer, Mapping):
        return copy.deepcopy(layer)
    if path == "scheduler" and "type" in layer and layer["type"] != base.get("type"):
        keep = "warmup_epochs" in base and str(layer["type"]).lower() != "adaptive"
        base = {"warmup_epochs": base["warmup_epochs"]} if keep else {}
    out = copy.deepcopy(dict(base))
    for key, value in layer.items():
        sub = f"{path}.{key}" if path else key
        out[key] = _merge(out[key], value, sub) if key in out else copy.deepcopy(value)
    return out


def resolve_config(
    config: Mapping[str, Any] | str | os.PathLike | None = None,
    *,
    preset: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Resolve ``DEFAULTS ⊕ PRESETS[preset] ⊕ config ⊕ overrides`` and check every key.

    ``config`` may be a YAML path; ``preset`` wins over ``overrides["preset"]``, which wins
    over ``config["preset"]``; ``overrides`` may use dotted keys (``{"optimizer.lr": 3e-3}``)
    and its ``None`` values are skipped. Resolving a resolved configuration changes nothing.
    Raises ValueError for an unknown preset, section or key or a section that is not a
    mapping; TypeError/ValueError for ``epochs`` not an int >= 1.
    """
    if isinstance(config, str | os.PathLike):
        config = load_config(config)
    if config is not None and not isinstance(config, Mapping):
        raise ValueError(f"config must be a mapping or a YAML path, got {type(config).__name__}")
    config = _nest(dict(config or {}))
    given = _nest({k: v for k, v in (overrides or {}).items() if v is not None})
    chosen = preset if preset is not None else given.pop("preset", config.get("preset"))
    if chosen is not None:
        check_choice("preset", chosen, PRESETS)
    cfg = _merge(_merge(_merge(DEFAULTS, PRESETS.get(chosen, {})), config), given)
    cfg["preset"] = chosen
    check_keys("config", cfg, DEFAULTS)
    check_int("epochs", cfg["epochs"], min=1)
    for section, keys in _SECTION_KEYS.items():
        value = cfg[section]
        if value is None and section in ("scheduler", "early_stopping"):
            continue
        if not isinstance(value, Mapping):
            raise ValueError(f"config section {section!r} must be a mapping, got {value!r}")
        if keys is not None:
            check_keys(f"config section {section!r}", value, keys)
    if not isinstance(cfg["loss"], str | Mapping):
        raise ValueError(f"loss must be a loss preset name or a mapping, got {cfg['loss']!r}")
    return cfg


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


def _loaders(data: Mapping[str, Any]):
    from .data import make_loaders

    data = dict(data)
    return make_loaders(data.pop("num_train"), data.pop("num_val"), data.pop("batch_size"), **data)


def _model(data: Mapping[str, Any], model: Mapping[str, Any]) -> nn.Module:
    from .models import TinyUNet

    return TinyUNet(num_classes=data.get("num_classes", 1), **model)


def build_loaders(config: Mapping[str, Any]):
    """The shapes ``(train_loader, val_loader)`` of a configuration's ``data`` section."""
    return _loaders(resolve_config(config)["data"])


def build_model(config: Mapping[str, Any]) -> nn.Module:
    """The :class:`~stabletrain.models.TinyUNet` of a configuration's ``model`` section."""
    cfg = resolve_config(config)
    return _model(cfg["data"], cfg["model"])


def seeded_start(data: Mapping[str, Any], model: Mapping[str, Any], seed: int):
    """The one seeding recipe: ``(train_loader, val_loader, model)``, all fresh.

    In order: the shapes loaders of ``data`` (images seeded by ``data["seed"]``), then
    ``seed_everything(seed)`` and the training order generator seeded with ``seed``, then
    the ``TinyUNet`` of ``model``. :func:`run` and ``short_run`` both start here.
    """
    from .utils import seed_everything

    train, val = _loaders(data)
    seed_everything(seed)
    train.generator.manual_seed(seed)
    return train, val, _model(data, model)


def scheduler_from_config(optimizer, section: Mapping | None, *, epochs: int, steps_per_epoch: int):
    """The scheduler of a ``scheduler`` section, or ``None`` (``None`` or type none/null).

    ``warmup_epochs`` becomes ``warmup_steps`` (``epochs_to_steps``), ``total_steps``
    defaults to ``epochs * steps_per_epoch``; the rest goes to ``build_scheduler``. Raises
    ValueError for both warmups, a warmup not shorter than the run, or a bad setting.
    """
    if section is None or str(section.get("type", "")).lower() in ("none", "null"):
        return None
    from .schedulers import build_scheduler, epochs_to_steps

    params = dict(section)
    total = epochs * steps_per_epoch
    if "warmup_epochs" in params:
        if "warmup_steps" in params:
            raise ValueError("scheduler: give warmup_epochs or warmup_steps, not both")
        warmup_epochs = params.pop("warmup_epochs")
        params["warmup_steps"] = epochs_to_steps(warmup_epochs, steps_per_epoch)
        if params["warmup_steps"] >= total:
            raise ValueError(
                f"scheduler warmup_epochs={warmup_epochs} must be shorter than epochs={epochs}"
            )
    params.setdefault("total_steps", total)
    return build_scheduler(optimizer, params)


class ConfigCheckpointManager(CheckpointManager):
    """A ``CheckpointManager`` that stores ``config`` in every checkpoint's ``extra``."""

    def __init__(self, directory: str | os.PathLike, *, config: Mapping, **options) -> None:
        super().__init__(directory, **options)
        self.config = copy.deepcopy(dict(config))

    def save(self, epoch, metrics=None, *, extra=None, **kwargs):
        """As :meth:`CheckpointManager.save`, with ``extra["config"]`` added."""
        extra = {**dict(extra or {}), "config": self.config}
        return super().save(epoch, metrics, extra=extra, **kwargs)


_FIT_KEYS = ("epochs", "optimizer", "scheduler", "loss_fn", "guard", "amp", "early_stopping")


@dataclass
class Training:
    """What ``fit`` takes (``None`` where turned off), the steps per epoch the schedule was
    built for, and the resolved configuration."""

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
        """Keyword arguments for :func:`stabletrain.loop.fit`."""
        return {
            key: getattr(self, key) for key in (*_FIT_KEYS, "monitor", "checkpoints", "tracker")
        }

    def fit(self, model: nn.Module, train_loader, val_loader=None, **kwargs: Any) -> History:
        """``fit(model, train_loader, val_loader=..., **self.fit_kwargs(), **kwargs)``."""
        from .loop import fit

        return fit(model, train_loader, val_loader=val_loader, **{**self.fit_kwargs(), **kwargs})


def build_training(
    model: nn.Module,
    config: Mapping[str, Any] | str | os.PathLike | None = None,
    *,
    steps_per_epoch: int | None = None,
    tracker: Any = None,
) -> Training:
    """Build the optimizer, scheduler, loss, guard, amp, checkpoints, tracker and early stopping.

    The model must be on its device (mixed precision follows it). ``steps_per_epoch``
    defaults to ``ceil(num_train / batch_size) // accumulation_steps``; ``tracker`` replaces
    the configured one. The resolved configuration is logged to the tracker
    (``config.<section>.<key>``) and stored in every checkpoint. Raises ValueError, named.
    """
    from .amp import MixedPrecision
    from .deep_supervision import DeepSupervisionLoss
    from .losses import build_loss
    from .stability import EarlyStopping, StabilityGuard

    cfg = resolve_config(config)
    if steps_per_epoch is None:
        batches = math.ceil(cfg["data"]["num_train"] / cfg["data"]["batch_size"])
        steps_per_epoch = max(1, batches // int(cfg["stability"].get("accumulation_steps", 1)))
    optimizer = build_optimizer(model, cfg["optimizer"])
    scheduler = scheduler_from_config(
        optimizer, cfg["scheduler"], epochs=cfg["epochs"], steps_per_epoch=steps_per_epoch
    )
    device_type = next(model.parameters()).device.type
    amp = MixedPrecision(cfg["amp"].get("dtype", "float32"), device_type=device_type)
    amp = amp if amp.enabled else None
    clipping = clipping_from_config(cfg["optimizer"])
    guard = StabilityGuard(
        model, optimizer, scheduler=scheduler, amp=amp, **clipping, **cfg["stability"]
    )
    num_classes = cfg["data"].get("num_classes", 1)
    loss_fn: Any = build_loss(cfg["loss"], mode="binary" if num_classes == 1 else "multiclass")
    if getattr(model, "deep_supervision", False):
        section = dict(cfg["deep_supervision"])
        schedule = section.pop("schedule")
        loss_fn = DeepSupervisionLoss(
            loss_fn, num_outputs=model.depth, schedule=schedule, **section
        )
    early = EarlyStopping(**cfg["early_stopping"]) if cfg["early_stopping"] else None
    options = {**cfg["checkpoints"], "config": cfg, "monitor": cfg["monitor"]}
    directory = options.pop("directory", None)
    checkpoints = ConfigCheckpointManager(directory, **options) if directory else None
    if tracker is None and cfg["tracking"].get("enabled"):
        from .tracking import MLflowTracker

        tracker = MLflowTracker(**{k: v for k, v in cfg["tracking"].items() if k != "enabled"})
    if tracker is not None:
        tracker.log_params({"config": cfg})
    fields = (optimizer, scheduler, loss_fn, guard, amp, checkpoints, tracker, early)
    return Training(*fields, cfg["epochs"], cfg["monitor"], steps_per_epoch, cfg)


def _check_resumable(cfg: Mapping[str, Any]) -> None:
    """Refuse to resume without a checkpoint folder or from one with other training settings."""
    if not cfg["checkpoints"].get("directory"):
        raise ValueError("resume needs checkpoints.directory (a folder with checkpoints)")
    options = {k: v for k, v in cfg["checkpoints"].items() if k != "directory"}
    directory = cfg["checkpoints"]["directory"]
    manager = CheckpointManager(directory, monitor=cfg["monitor"], read_only=True, **options)
    if manager.latest_path is None:
        return
    stored = manager.load("latest", restore_rng=False).get("extra", {}).get("config")
    if stored is None:
        return
    differ = [k for k in config_diff(stored, cfg) if k.split(".")[0] not in _BOOKKEEPING]
    if differ:
        raise ValueError(
            f"cannot resume: the checkpoint was written with a different configuration "
            f"({', '.join(differ)}); resume with the same settings"
        )


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

    Starts from :func:`seeded_start`. ``resume`` continues from the latest checkpoint of
    ``checkpoints.directory`` (ValueError unless its stored configuration is equal,
    bookkeeping sections aside); ``stop_after_epochs`` stops cleanly after that many epochs
    and their checkpoint (``resume`` continues bit for bit).
    """
    from .utils import get_device

    cfg = resolve_config(config)
    if resume:
        _check_resumable(cfg)
    train, val, model = seeded_start(cfg["data"], cfg["model"], cfg["seed"])
    model = model.to(get_device(cfg["device"]))
    steps = len(train) // cfg["stability"].get("accumulation_steps", 1)
    training = build_training(model, cfg, steps_per_epoch=steps, tracker=tracker)
    callbacks = [] if stop_after_epochs is None else [_StopAfterEpochs(stop_after_epochs)]
    history = training.fit(model, train, val, resume=resume, progress=progress, callbacks=callbacks)
    return history, model, training
