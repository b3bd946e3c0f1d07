"""One configuration, ``DEFAULTS ⊕ PRESETS[preset] ⊕ config ⊕ overrides`` (mappings merge key
by key, anything else replaces; a new ``scheduler.type`` starts that section afresh but for
``warmup_epochs``, not for ``adaptive``), builds what ``fit`` takes or trains (:func:`run`)."""

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
from torch.nn.parallel import DistributedDataParallel as DDP

from .amp import MixedPrecision
from .callbacks import Callback
from .checkpoint import CheckpointManager
from .checks import check_choice, check_int, check_keys
from .data import make_loaders
from .deep_supervision import DeepSupervisionLoss
from .distributed import init_from_env, is_distributed, is_main
from .history import History
from .loop import fit
from .losses import build_loss
from .models import TinyUNet
from .optim import build_optimizer, clipping_from_config
from .schedulers import build_scheduler, epochs_to_steps
from .stability import EarlyStopping, StabilityGuard
from .tracking import MLflowTracker
from .utils import get_device, seed_everything

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

# keys a section accepts besides those in DEFAULTS (the other sections: checked by builders)
_MORE_KEYS: dict[str, str] = {
    "data": "num_classes",
    "model": "attention_options in_channels norm activation bottleneck_attention qk_norm",
    "stability": "lr_backoff snapshot_every max_consecutive_skips accumulation_steps "
    "min_loss_scale spike_factor spike_warmup spike_window",
    "amp": "",
    "early_stopping": "patience min_delta check_finite",
    "checkpoints": "every_n_epochs every_n_minutes min_improvement every_n_steps async_save "
    "durable",
    "tracking": "tracking_uri flush_every verbose",
}


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
            node[part] = node[part] if isinstance(node.get(part), dict) else {}
            node = node[part]
        node[last] = value
    return out


def _merge(base: Any, layer: Any, path: str = "") -> Any:
    if not isinstance(base, Mapping) or not isinstance(layer, Mapping):
        return copy.deepcopy(layer)
    if path == ".scheduler" and "type" in layer and layer["type"] != base.get("type"):
        keep = "warmup_epochs" in base and str(layer["type"]).lower() != "adaptive"
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
    ``overrides`` dotted keys, ``None`` values skipped; ``preset`` > ``overrides["preset"]`` >
    ``config["preset"]``) and check every key: ValueError names a bad preset, section or key."""
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
    for section in ("optimizer", "scheduler", "deep_supervision", *_MORE_KEYS):
        value = cfg[section]
        if value is None and section in ("scheduler", "early_stopping"):
            continue
        if not isinstance(value, Mapping):
            raise ValueError(f"config section {section!r} must be a mapping, got {value!r}")
        if section in _MORE_KEYS:
            keys = [*(DEFAULTS[section] or {}), *_MORE_KEYS[section].split()]
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
    """The scheduler of a ``scheduler`` section (``None`` if none/null): ``warmup_epochs`` →
    ``warmup_steps``, ``total_steps = epochs * steps_per_epoch`` by default. ValueError for
    both warmups, one not shorter than the run, or a bad setting."""
    if section is None or str(section.get("type", "")).lower() in ("none", "null"):
        return None
    params = dict(section)
    total = epochs * steps_per_epoch
    if "warmup_epochs" in params:
        if "warmup_steps" in params:
            raise ValueError("scheduler: give warmup_epochs or warmup_steps, not both")
        given = params.pop("warmup_epochs")
        params["warmup_steps"] = epochs_to_steps(given, steps_per_epoch)
        if params["warmup_steps"] >= total:
            raise ValueError(f"scheduler warmup_epochs={given} must be shorter than {epochs=}")
    params.setdefault("total_steps", total)
    return build_scheduler(optimizer, params)


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
    """What ``fit`` takes, for a model on its device (``steps_per_epoch``: ``ceil(num_train /
    batch_size) // accumulation_steps``); the config goes to the tracker and every checkpoint."""
    cfg = resolve_config(config)
    if steps_per_epoch is None:
        batches = math.ceil(cfg["data"]["num_train"] / cfg["data"]["batch_size"])
        steps_per_epoch = max(1, batches // int(cfg["stability"].get("accumulation_steps", 1)))
    optimizer = build_optimizer(model, cfg["optimizer"])
    scheduler = scheduler_from_config(
        optimizer, cfg["scheduler"], epochs=cfg["epochs"], steps_per_epoch=steps_per_epoch
    )
    amp = MixedPrecision(**cfg["amp"], device_type=next(model.parameters()).device.type)
    amp = amp if amp.enabled else None
    options = {**clipping_from_config(cfg["optimizer"]), **cfg["stability"]}
    guard = StabilityGuard(model, optimizer, scheduler=scheduler, amp=amp, **options)
    num_classes = cfg["data"].get("num_classes", 1)
    loss_fn: Any = build_loss(cfg["loss"], mode="binary" if num_classes == 1 else "multiclass")
    inner = model.module if isinstance(model, DDP) else model
    if getattr(inner, "deep_supervision", False):
        loss_fn = DeepSupervisionLoss(loss_fn, num_outputs=inner.depth, **cfg["deep_supervision"])
    early = EarlyStopping(**cfg["early_stopping"]) if cfg["early_stopping"] else None
    options = {**cfg["checkpoints"], "config": cfg, "monitor": cfg["monitor"]}
    directory = options.pop("directory", None)
    checkpoints = ConfigCheckpointManager(directory, **options) if directory else None
    if tracker is None and cfg["tracking"].get("enabled") and is_main():  # rank 0 logs
        tracker = MLflowTracker(**{k: v for k, v in cfg["tracking"].items() if k != "enabled"})
    if tracker is not None:
        tracker.log_params({"config": cfg})
    fields = (optimizer, scheduler, loss_fn, guard, amp, checkpoints, tracker, early)
    return Training(*fields, cfg["epochs"], cfg["monitor"], steps_per_epoch, cfg)


def _check_resumable(cfg: Mapping[str, Any]) -> None:
    """Refuse to resume without a checkpoint folder or from one with other training settings."""
    options = dict(cfg["checkpoints"])
    directory = options.pop("directory", None)
    if not directory:
        raise ValueError("resume needs checkpoints.directory (a folder with checkpoints)")
    manager = CheckpointManager(directory, monitor=cfg["monitor"], read_only=True, **options)
    latest = manager.load("latest", restore_rng=False) if manager.latest_path else {}
    stored = latest.get("extra", {}).get("config") or cfg
    bookkeeping = ("checkpoints", "tracking", "device")  # may differ when resuming
    differ = ", ".join(k for k in config_diff(stored, cfg) if k.split(".")[0] not in bookkeeping)
    if differ:
        written = f"the checkpoint was written with a different configuration ({differ})"
        raise ValueError(f"cannot resume: {written}; resume with the same settings")


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

    ``resume`` continues from the latest checkpoint (ValueError unless its config is equal but
    for checkpoints/tracking/device); ``stop_after_epochs`` stops after that many epochs. Under
    ``torchrun`` (``WORLD_SIZE`` > 1) it joins the process group and trains a
    ``DistributedDataParallel`` model, ``data.batch_size`` per rank."""
    cfg = resolve_config(config)
    if resume:
        _check_resumable(cfg)
    ddp = init_from_env()
    train, val, model = seeded_start(cfg["data"], cfg["model"], cfg["seed"])
    if ddp:  # the heads deep supervision would read get no gradient without it: unused
        cuda = [torch.cuda.current_device()] if torch.cuda.is_available() else None
        model = model.cuda() if cuda else model
        model = DDP(model, device_ids=cuda, find_unused_parameters=not model.deep_supervision)
    else:
        model = model.to(get_device(cfg["device"]))
    steps = len(train) // cfg["stability"].get("accumulation_steps", 1)
    training = build_training(model, cfg, steps_per_epoch=steps, tracker=tracker)
    callbacks = [] if stop_after_epochs is None else [_StopAfterEpochs(stop_after_epochs)]
    history = training.fit(model, train, val, resume=resume, progress=progress, callbacks=callbacks)
    return history, model, training
