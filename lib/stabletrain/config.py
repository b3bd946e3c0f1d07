r"""One configuration builds everything: presets, resolution, and the objects ``fit`` takes.

A training configuration is a plain, YAML-friendly mapping. It is **resolved**
in layers, each one deep-merged over the previous (a mapping merges key by key,
anything else replaces):

.. math:: \text{resolved} = \text{DEFAULTS} \oplus \text{PRESETS[preset]} \oplus
          \text{config} \oplus \text{overrides}

A layer that changes ``scheduler.type`` starts the scheduler section afresh (the
parameters of one schedule rarely fit another); only ``warmup_epochs`` is carried
over (except to ``adaptive``, which has no warmup).

Sections (see :data:`DEFAULTS` for every key and its default):

=================  ====================================================================
``preset``         one of :data:`PRESETS` or ``null``
``seed``           seeds the model initialisation and the data order
``epochs``         passes over the training data
``monitor``        epoch metric for early stopping, plateau schedules and "best" checkpoints
``device``         ``null`` (CUDA, then MPS, then CPU) or a device string
``data``           :func:`stabletrain.data.make_loaders` arguments
``model``          :class:`stabletrain.models.TinyUNet` arguments (``num_classes`` comes
                   from ``data``)
``optimizer``      :func:`stabletrain.optim.build_optimizer`; its clipping keys
                   (``gradient_clipping_by_norm`` ...) configure the stability guard
``scheduler``      :func:`stabletrain.schedulers.build_scheduler`, or ``null``;
                   ``warmup_epochs`` becomes ``warmup_steps``; ``total_steps`` is filled
                   in; other lengths (``step_size``...) are in optimizer steps
``stability``      :class:`stabletrain.stability.StabilityGuard` policy (``on_nonfinite``,
                   ``lr_backoff``, ``snapshot_every``, ``max_consecutive_skips``,
                   ``accumulation_steps``, ``min_loss_scale``, and the blow-up test's
                   ``spike_factor``, ``spike_warmup``, ``spike_window``)
``amp``            :class:`stabletrain.amp.MixedPrecision` ``dtype``
``loss``           :func:`stabletrain.losses.build_loss` preset name or mapping
``deep_supervision``  :class:`~stabletrain.deep_supervision.DeepSupervisionLoss` schedule
                   (used when ``model.deep_supervision`` is true)
``early_stopping``  :class:`stabletrain.stability.EarlyStopping` arguments, or ``null``
``checkpoints``    :class:`stabletrain.checkpoint.CheckpointManager` arguments; no
                   checkpoints while ``directory`` is ``null``
``tracking``       :class:`stabletrain.tracking.MLflowTracker` arguments; off unless
                   ``enabled``
=================  ====================================================================

:func:`build_training` turns a (resolved or not) configuration into the optimizer,
scheduler, loss, stability guard, mixed precision, checkpoint manager, tracker and
early stopping that :func:`stabletrain.training.fit` takes, logs the resolved
configuration to the tracker (as ``config.<section>.<key>`` parameters) and stores it
in every checkpoint (``load(...)["extra"]["config"]``). :func:`run` does the whole
thing: data, model, training, ``fit``.

Example:
    >>> from stabletrain.config import resolve_config
    >>> cfg = resolve_config({"preset": "attention", "epochs": 8}, overrides={"optimizer.lr": 3e-3})
    >>> cfg["scheduler"], cfg["optimizer"]["lr"], cfg["stability"]["on_nonfinite"]
    ({'type': 'warmup_cosine', 'warmup_epochs': 5, 'min_lr_ratio': 0.01}, 0.003, 'rollback')
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
"""Every key a configuration may hold, with its default (the base layer of resolution).

Without a preset: AdamW at 1e-3, constant LR, no clipping, float32, no early
stopping, and a guard that raises (with a diagnosis) on the first NaN/Inf instead
of silently training on it.
"""

PRESETS: dict[str, dict[str, Any]] = {
    # Quick experiments: one-cycle reaches a good loss in few epochs (its warm-up and
    # annealing are built in); no clipping, mixed precision where the device has a fast
    # low-precision path ("auto" is float32 on CPUs without native bfloat16); stop early.
    "fast": {
        "scheduler": {"type": "onecycle", "pct_start": 0.3},
        "amp": {"dtype": "auto"},
        "early_stopping": {"patience": 5},
    },
    # Production: a short warmup, then cut the LR when validation stalls; clip the
    # global gradient norm at 1.0; float32 (no precision surprises); skip a non-finite
    # step (the guard's checks) instead of stopping; be patient before stopping.
    "stable": {
        "scheduler": {"type": "plateau", "warmup_epochs": 1, "factor": 0.5, "patience": 3},
        "optimizer": {"gradient_clipping_by_norm": 1.0},
        "amp": {"dtype": "float32"},
        "stability": {"on_nonfinite": "skip"},
        "early_stopping": {"patience": 15},
    },
    # Little memory: mixed precision halves activation memory; cosine needs no
    # validation-driven state; a tighter clip (0.5) because low precision and the small
    # batches such runs use make gradients noisier.
    "memory_constrained": {
        "scheduler": {"type": "warmup_cosine"},
        "optimizer": {"gradient_clipping_by_norm": 0.5},
        "amp": {"dtype": "auto"},
        "early_stopping": {"patience": 10},
    },
    # Attention models (notebook 01): multiplicative gates amplify early, random
    # gradients, so warm up for 5 epochs into a cosine decay, clip at 0.5, normalise and
    # bound the attention blocks (SAFE_ATTENTION), and on a NaN roll back to the last
    # good state with half the LR instead of stopping.
    "attention": {
        "model": {"attention": "cbam", "safe_attention": True},
        "scheduler": {"type": "warmup_cosine", "warmup_epochs": 5, "min_lr_ratio": 0.01},
        "optimizer": {"gradient_clipping_by_norm": 0.5},
        "stability": {"on_nonfinite": "rollback", "lr_backoff": 0.5, "snapshot_every": 10},
    },
}
"""Named training presets: partial configurations laid over :data:`DEFAULTS`."""

# keys accepted in each section (None: validated by the builder it is given to)
_SECTION_KEYS: dict[str, tuple[str, ...] | None] = {
    "data": ("num_train", "num_val", "batch_size", "image_size", "num_classes", "seed"),
    "model": (
        "attention",
        "base_channels",
        "depth",
        "deep_supervision",
        "safe_attention",
        "attention_options",
        "in_channels",
        "norm",
        "activation",
        "bottleneck_attention",
        "qk_norm",
    ),
    "optimizer": None,
    "scheduler": None,
    "stability": (
        "on_nonfinite",
        "lr_backoff",
        "snapshot_every",
        "max_consecutive_skips",
        "accumulation_steps",
        "min_loss_scale",
        "spike_factor",
        "spike_warmup",
        "spike_window",
    ),
    "amp": ("dtype",),
    "deep_supervision": None,
    "early_stopping": ("patience", "min_delta", "check_finite"),
    "checkpoints": (
        "directory",
        "strategy",
        "max_keep",
        "every_n_epochs",
        "every_n_minutes",
        "min_improvement",
        "every_n_steps",
        "async_save",
        "durable",
    ),
    "tracking": ("enabled", "experiment", "run_name", "tracking_uri", "flush_every", "verbose"),
}
_NULLABLE = ("scheduler", "early_stopping")
# sections that do not change the training itself (may differ when resuming)
_BOOKKEEPING = ("checkpoints", "tracking", "device")


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML configuration file (a mapping at the top level).

    Raises:
        ValueError: the file is missing, is not valid YAML, or is not a mapping.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ValueError(f"config file {str(path)!r} is not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ValueError(
            f"config file {str(path)!r} must hold a mapping, got {type(data).__name__}"
        )
    return dict(data)


def _nest(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``{"optimizer.lr": 1e-3}`` → ``{"optimizer": {"lr": 1e-3}}`` (nested keys kept)."""
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        parts = str(key).split(".")
        node = out
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[parts[-1]] = value
    return out


def _merge(base: Any, layer: Any, path: str = "") -> Any:
    if not isinstance(base, Mapping) or not isinstance(layer, Mapping):
        return copy.deepcopy(layer)
    if path == "scheduler" and "type" in layer and layer["type"] != base.get("type"):
        fresh: dict[str, Any] = {}
        if "warmup_epochs" in base and str(layer["type"]).lower() != "adaptive":
            fresh["warmup_epochs"] = base["warmup_epochs"]
        base = fresh
    out = {k: copy.deepcopy(v) for k, v in base.items()}
    for key, value in layer.items():
        sub = f"{path}.{key}" if path else key
        out[key] = _merge(out[key], value, sub) if key in out else copy.deepcopy(value)
    return out


def _check(cfg: Mapping[str, Any]) -> None:
    unknown = sorted(set(cfg) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown config key(s) {unknown}; accepted: {sorted(DEFAULTS)}")
    if cfg["preset"] is not None and cfg["preset"] not in PRESETS:
        raise ValueError(f"unknown preset {cfg['preset']!r}; presets: {sorted(PRESETS)}")
    epochs = cfg["epochs"]
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an int >= 1, got {epochs!r}")
    for section, keys in _SECTION_KEYS.items():
        value = cfg[section]
        if value is None and section in _NULLABLE:
            continue
        if not isinstance(value, Mapping):
            raise ValueError(f"config section {section!r} must be a mapping, got {value!r}")
        if keys is not None:
            bad = sorted(set(value) - set(keys))
            if bad:
                raise ValueError(
                    f"unknown key(s) {bad} in config section {section!r}; accepted: {sorted(keys)}"
                )
    if not isinstance(cfg["loss"], str | Mapping):
        raise ValueError(f"loss must be a loss preset name or a mapping, got {cfg['loss']!r}")


def resolve_config(
    config: Mapping[str, Any] | str | os.PathLike | None = None,
    *,
    preset: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Resolve ``DEFAULTS ⊕ PRESETS[preset] ⊕ config ⊕ overrides`` and check every key.

    Args:
        config: a mapping, a path to a YAML file, or ``None``. Resolving an already
            resolved configuration returns an equal one.
        preset: the preset; overrides ``overrides["preset"]``, which overrides
            ``config["preset"]``.
        overrides: more settings, nested or with dotted keys (``{"optimizer.lr": 3e-3}``);
            ``None`` values here mean "not given" and are skipped.

    Returns:
        A new, fully populated mapping (``preset`` holds the preset used).

    Raises:
        ValueError: an unknown preset, section or key (the message lists the accepted
            ones), a section that is not a mapping, or bad ``epochs``.
    """
    if isinstance(config, str | os.PathLike):
        config = load_config(config)
    if config is not None and not isinstance(config, Mapping):
        raise ValueError(f"config must be a mapping or a YAML path, got {type(config).__name__}")
    config = _nest(dict(config or {}))
    given = _nest({k: v for k, v in (overrides or {}).items() if v is not None})
    chosen = preset if preset is not None else given.pop("preset", config.get("preset"))
    if chosen is not None and chosen not in PRESETS:
        raise ValueError(f"unknown preset {chosen!r}; presets: {sorted(PRESETS)}")
    resolved = _merge(DEFAULTS, PRESETS.get(chosen, {}) if chosen else {})
    resolved = _merge(resolved, config)
    resolved = _merge(resolved, given)
    resolved["preset"] = chosen
    _check(resolved)
    return resolved


def config_diff(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two configurations."""
    keys = sorted(set(a) | set(b), key=str)
    out: list[str] = []
    for key in keys:
        name = f"{prefix}{key}"
        x, y = a.get(key), b.get(key)
        if isinstance(x, Mapping) and isinstance(y, Mapping):
            out.extend(config_diff(x, y, name + "."))
        elif x != y:
            out.append(name)
    return out


def _steps_per_epoch(cfg: Mapping[str, Any]) -> int:
    data = cfg["data"]
    accumulation = int(cfg["stability"].get("accumulation_steps", 1))
    return max(1, math.ceil(data["num_train"] / data["batch_size"]) // accumulation)


def build_loaders(config: Mapping[str, Any]):
    """The shapes training and validation loaders of a configuration's ``data`` section."""
    return _loaders(resolve_config(config)["data"])


def build_model(config: Mapping[str, Any]) -> nn.Module:
    """The :class:`~stabletrain.models.TinyUNet` of a configuration's ``model`` section."""
    cfg = resolve_config(config)
    return _model(cfg["data"], cfg["model"])


def _loaders(data: Mapping[str, Any]):
    from .data import make_loaders

    data = dict(data)
    return make_loaders(data.pop("num_train"), data.pop("num_val"), data.pop("batch_size"), **data)


def _model(data: Mapping[str, Any], model: Mapping[str, Any]) -> nn.Module:
    from .models import TinyUNet

    return TinyUNet(num_classes=data.get("num_classes", 1), **model)


def seeded_start(data: Mapping[str, Any], model: Mapping[str, Any], seed: int):
    """The course's one seeding recipe: ``(train_loader, val_loader, model)``, all fresh.

    In this order: the shapes loaders of ``data`` (:func:`stabletrain.data.make_loaders`
    arguments; the images are seeded by ``data["seed"]``), then
    ``seed_everything(seed)`` and the training loader's order generator seeded with
    ``seed``, then the :class:`~stabletrain.models.TinyUNet` of ``model`` (``num_classes``
    from ``data``). :func:`run` and :func:`stabletrain.experiments.short_run` both start
    here, so the same seed gives the same weights and the same batches in both.
    """
    from .utils import seed_everything

    train, val = _loaders(data)
    seed_everything(seed)
    train.generator.manual_seed(seed)
    return train, val, _model(data, model)


def scheduler_from_config(
    optimizer: torch.optim.Optimizer,
    section: Mapping[str, Any] | None,
    *,
    epochs: int,
    steps_per_epoch: int,
):
    """The scheduler of a configuration's ``scheduler`` section, or ``None`` for none.

    ``warmup_epochs`` becomes ``warmup_steps`` (:func:`~stabletrain.schedulers.epochs_to_steps`)
    and ``total_steps`` defaults to ``epochs * steps_per_epoch``; the rest goes to
    :func:`stabletrain.schedulers.build_scheduler` as it is.

    Raises:
        ValueError: ``warmup_epochs`` and ``warmup_steps`` both given, a warmup not
            shorter than the run, or anything ``build_scheduler`` refuses.
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
    params.setdefault("total_steps", total)  # adaptive: its base schedule's length
    return build_scheduler(optimizer, params)


class ConfigCheckpointManager(CheckpointManager):
    """A :class:`~stabletrain.checkpoint.CheckpointManager` that also stores the
    resolved configuration in every checkpoint (``load(...)["extra"]["config"]``).

    Args:
        directory: the checkpoint folder.
        config: the resolved configuration to store.
        **options: the other :class:`~stabletrain.checkpoint.CheckpointManager` arguments.
    """

    def __init__(
        self, directory: str | os.PathLike, *, config: Mapping[str, Any], **options: Any
    ) -> None:
        super().__init__(directory, **options)
        self.config = copy.deepcopy(dict(config))

    def save(self, epoch, metrics=None, *, extra=None, **kwargs):
        """As :meth:`CheckpointManager.save`, with the configuration added to ``extra``."""
        return super().save(
            epoch, metrics, extra={**dict(extra or {}), "config": self.config}, **kwargs
        )


@dataclass
class Training:
    """Everything :func:`stabletrain.training.fit` takes, built from one configuration.

    Attributes:
        optimizer, scheduler, loss_fn, guard, amp, checkpoints, tracker,
        early_stopping: the objects (``None`` where the configuration turns them off).
        epochs, monitor: as given to ``fit``.
        config: the resolved configuration.
        steps_per_epoch: the optimizer steps per epoch the schedule was built for.
    """

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
        """Keyword arguments for :func:`stabletrain.training.fit`."""
        return {
            "epochs": self.epochs,
            "optimizer": self.optimizer,
            "scheduler": self.scheduler,
            "loss_fn": self.loss_fn,
            "guard": self.guard,
            "amp": self.amp,
            "early_stopping": self.early_stopping,
            "monitor": self.monitor,
            "checkpoints": self.checkpoints,
            "tracker": self.tracker,
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

    Args:
        model: the network (already on its device; mixed precision follows it).
        config: a configuration (resolved here; see :func:`resolve_config`).
        steps_per_epoch: optimizer steps per epoch, for the schedule's length; default
            :math:`\\lceil` ``num_train / batch_size`` :math:`\\rceil` ``// accumulation_steps``.
        tracker: use this tracker instead of the one ``tracking`` describes.

    Returns:
        A :class:`Training`; the resolved configuration was logged to the tracker (as
        ``config.*`` parameters) and is written into every checkpoint.

    Raises:
        ValueError: any invalid setting, named (from this module or the builders).
    """
    cfg = resolve_config(config)
    if steps_per_epoch is None:
        steps_per_epoch = _steps_per_epoch(cfg)
    optimizer = build_optimizer(model, cfg["optimizer"])
    scheduler = scheduler_from_config(
        optimizer, cfg["scheduler"], epochs=cfg["epochs"], steps_per_epoch=steps_per_epoch
    )

    from .amp import MixedPrecision
    from .deep_supervision import DeepSupervisionLoss
    from .losses import build_loss
    from .stability import EarlyStopping, StabilityGuard

    device = next(model.parameters()).device
    amp = MixedPrecision(cfg["amp"].get("dtype", "float32"), device_type=device.type)
    if not amp.enabled:
        amp = None
    guard = StabilityGuard(
        model,
        optimizer,
        scheduler=scheduler,
        amp=amp,
        **clipping_from_config(cfg["optimizer"]),
        **cfg["stability"],
    )
    num_classes = cfg["data"].get("num_classes", 1)
    loss_fn: Any = build_loss(cfg["loss"], mode="binary" if num_classes == 1 else "multiclass")
    if getattr(model, "deep_supervision", False):
        section = dict(cfg["deep_supervision"])
        loss_fn = DeepSupervisionLoss(
            loss_fn, num_outputs=model.depth, schedule=section.pop("schedule"), **section
        )
    early = EarlyStopping(**cfg["early_stopping"]) if cfg["early_stopping"] else None
    checkpoints = None
    options = dict(cfg["checkpoints"])
    directory = options.pop("directory", None)
    if directory:
        checkpoints = ConfigCheckpointManager(
            directory, config=cfg, monitor=cfg["monitor"], **options
        )
    if tracker is None and cfg["tracking"].get("enabled"):
        from .tracking import MLflowTracker

        options = {k: v for k, v in cfg["tracking"].items() if k != "enabled"}
        tracker = MLflowTracker(**options)
    if tracker is not None:
        tracker.log_params({"config": cfg})
    return Training(
        optimizer=optimizer,
        scheduler=scheduler,
        loss_fn=loss_fn,
        guard=guard,
        amp=amp,
        checkpoints=checkpoints,
        tracker=tracker,
        early_stopping=early,
        epochs=cfg["epochs"],
        monitor=cfg["monitor"],
        steps_per_epoch=steps_per_epoch,
        config=cfg,
    )


def _check_resumable(cfg: Mapping[str, Any]) -> None:
    """Refuse to resume from a checkpoint written with other training settings."""
    options = {k: v for k, v in cfg["checkpoints"].items() if k != "directory"}
    manager = CheckpointManager(
        cfg["checkpoints"]["directory"], monitor=cfg["monitor"], read_only=True, **options
    )
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
    """Stop training at the end of epoch ``n`` (counted from 1), after its checkpoint."""

    def __init__(self, n: int) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"stop_after_epochs must be an int >= 1 or None, got {n!r}")
        self.n = n

    def on_epoch_end(self, ctx, metrics) -> None:
        if ctx.epoch + 1 >= self.n and ctx.epoch + 1 < ctx.epochs:
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
    """Train on the shapes data from one configuration: data, model, training, ``fit``.

    Starts from :func:`seeded_start` (as :func:`stabletrain.experiments.short_run`
    does), so a run here and a ``short_run`` with the same seed start from the same
    weights and see the same batches.

    Args:
        config: the configuration (see :func:`resolve_config`).
        resume: continue from the latest checkpoint of ``checkpoints.directory``; the
            configuration must equal the stored one (bookkeeping sections aside).
        progress: show a progress bar.
        stop_after_epochs: stop after this many epochs (of the planned ``epochs``), after
            their checkpoint: a clean interruption, continued bit for bit by ``resume``.
        tracker: use this tracker instead of the configured one.

    Returns:
        ``(history, model, training)``.

    Raises:
        ValueError: an invalid configuration, ``resume`` without a checkpoint
            directory, or a checkpoint written with a different configuration.
    """
    from .utils import get_device

    cfg = resolve_config(config)
    if resume and not cfg["checkpoints"].get("directory"):
        raise ValueError("resume needs checkpoints.directory (a folder with checkpoints)")
    if resume:
        _check_resumable(cfg)
    train, val, model = seeded_start(cfg["data"], cfg["model"], cfg["seed"])
    model = model.to(get_device(cfg["device"]))
    accumulation = cfg["stability"].get("accumulation_steps", 1)
    training = build_training(
        model, cfg, steps_per_epoch=len(train) // accumulation, tracker=tracker
    )
    callbacks = [] if stop_after_epochs is None else [_StopAfterEpochs(stop_after_epochs)]
    history = training.fit(model, train, val, resume=resume, progress=progress, callbacks=callbacks)
    return history, model, training
