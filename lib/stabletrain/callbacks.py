"""Callbacks: all that :func:`~stabletrain.loop.fit` does beyond the update. Events:
``on_fit_start``; per epoch ``on_epoch_start``, ``on_step_end(record)`` per optimizer step,
``on_validation_end(metrics)`` (add metrics here), ``on_epoch_end(metrics)``; then ``on_fit_end``,
or ``on_exception(error)`` before it is re-raised. By ascending ``order`` (yours 0, schedulers 10,
early stopping 20, checkpoints 100, tracker 110). One with ``state_dict`` is checkpointed."""

from __future__ import annotations

import contextlib
import inspect
import math
import numbers
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .checks import check_bool, check_choice, check_float, check_int, check_keys
from .history import History
from .metrics import metric_mode
from .update import Update


def as_number(name: str, value: Any) -> float:
    """``value`` (a real number, not a bool, or a one-element tensor) as a float; else TypeError."""
    one = isinstance(value, torch.Tensor) and value.numel() == 1
    if one or (isinstance(value, numbers.Real) and not isinstance(value, bool)):
        return float(value)
    shape = f" of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else ""
    got = f"{type(value).__name__}{shape} {value!r}"[:120]
    raise TypeError(f"{name} must be a number or a one-element tensor, got {got}")


@dataclass
class TrainContext:
    """The state callbacks see and share. ``stop(reason)`` ends the run."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    history: History
    epochs: int
    steps_per_epoch: int
    epoch: int = 0
    step: int = 0
    stop_training: bool = False
    stop_reason: str | None = None
    update: Update | None = None
    monitor: str = "val_loss"
    train_loader: Any = None
    batches_per_epoch: int = 0
    batch_index: int = 0  #: index of the batch just trained
    start_epoch: int = 0  #: where training (re)starts; a resume moves it
    skip_batches: int = 0  #: batches of ``start_epoch`` already trained (mid-epoch resume)
    epoch_losses: list[float] = field(default_factory=list)  #: the epoch's finite step losses
    callbacks: list[Any] = field(default_factory=list)
    tracker: Any = None
    loss_fn: Any = None
    device: torch.device | None = None

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    @property
    def progress(self) -> float:
        """Fraction of the planned optimizer steps done, in [0, 1]."""
        return min(1.0, self.step / max(1, self.total_steps))

    def stop(self, reason: str) -> None:
        """End the run after the current step; the first reason given is kept."""
        self.stop_training, self.stop_reason = True, self.stop_reason or reason

    def monitored(self, metrics: Mapping[str, Any]) -> float:
        """The monitored metric of this epoch; ``ValueError`` if it is not among them."""
        if self.monitor not in metrics:
            names = sorted(k for k in metrics if k not in ("epoch", "seconds"))
            message = f"monitor={self.monitor!r} is not among this epoch's metrics {names}"
            raise ValueError(f"{message}; pick one of them (val_* metrics need a val_loader)")
        return as_number(f"metric {self.monitor!r}", metrics[self.monitor])


class Callback:
    """Base class for hooks into ``fit`` (see the module docs). Override what you need."""

    order: int = 0

    def _nothing(self, ctx: TrainContext, *args: Any) -> None:
        """A hook's default: args ``ctx``, then ``record``, ``metrics`` or ``error``."""

    on_fit_start = on_epoch_start = on_step_end = on_validation_end = _nothing
    on_epoch_end = on_fit_end = on_exception = _nothing


class CheckMonitor(Callback):
    """At the first epoch's end: the monitored metric must be among the metrics (``ValueError``)."""

    order = -1000

    def on_epoch_end(self, ctx: TrainContext, metrics: dict[str, Any]) -> None:
        if ctx.epoch == ctx.start_epoch:  # this fit's first epoch
            ctx.monitored(metrics)


class StopOnNonFinite(Callback):
    """Stop at the first NaN/Inf step loss (the plain update trains on NaN otherwise)."""

    order = 15

    def on_step_end(self, ctx: TrainContext, record: dict[str, Any]) -> None:
        if not math.isfinite(record["loss"]):
            step = ctx.history.num_steps - 1
            ctx.stop(f"non-finite loss ({record['loss']}) at step {step} (epoch {ctx.epoch})")


class MaxSteps(Callback):
    """Stop once ``max_steps`` optimizer steps are recorded."""

    order = 30

    def __init__(self, max_steps: int) -> None:
        self.max_steps = check_int("max_steps", max_steps, min=1)

    def on_step_end(self, ctx: TrainContext, record: dict[str, Any]) -> None:
        if ctx.history.num_steps >= self.max_steps:
            ctx.stop(f"max_steps={self.max_steps} reached")


class MetricScheduler(Callback):
    """``scheduler.step(monitored)`` each epoch, ``observe(loss)`` each applied step; on
    ``needs_rollback`` the update restores its last good snapshot, keeping the LR cut."""

    order = 10

    def on_fit_start(self, ctx: TrainContext) -> None:
        """The scheduler's ``mode`` must be the monitored metric's direction (if it has one)."""
        scheduler = getattr(ctx.scheduler, "scheduler", ctx.scheduler)  # a warmup's wrapped one
        mode = getattr(scheduler, "mode", "min")
        try:
            wanted = metric_mode(ctx.monitor)
        except ValueError:
            return
        if wanted != mode:
            fix = f"give it mode={wanted!r}" if hasattr(scheduler, "mode") else "monitor a loss"
            way = "up" if wanted == "max" else "down"
            rule = f"{type(scheduler).__name__} reads monitor={ctx.monitor!r} with mode={mode!r}"
            raise ValueError(f"{rule}, but {ctx.monitor!r} should go {way}: {fix}")

    def on_step_end(self, ctx: TrainContext, record: dict[str, Any]) -> None:
        observe = getattr(ctx.scheduler, "observe", None)
        if record["applied"] and callable(observe) and math.isfinite(record["loss"]):
            observe(record["loss"])

    def on_epoch_end(self, ctx: TrainContext, metrics: dict[str, Any]) -> None:
        ctx.scheduler.step(ctx.monitored(metrics))
        if getattr(ctx.scheduler, "needs_rollback", False) and ctx.update is not None:
            ctx.update.restore_snapshot(keep_lr=True)


class EarlyStopping(Callback):
    """Stop when the monitored value stops improving: ``v`` improves on the best ``b`` when ``v <
    b - min_delta`` (``mode="max"``: ``v > b + min_delta``); ``step(v)`` is ``True`` after
    ``patience`` values in a row without improvement, or at a NaN/Inf when ``check_finite``.
    ``mode=None``: ``fit`` sets it from the metric's name (:func:`metric_mode`)."""

    order = 20
    checkpoint_name = "early_stopping"
    _KEYS = ("best", "num_bad", "count", "stopped", "stopping_reason")  # the first two required

    def __init__(
        self,
        patience: int,
        min_delta: float = 0.0,
        mode: str | None = None,
        check_finite: bool = True,
    ) -> None:
        self.patience = check_int("patience", patience, min=1)
        self.min_delta = check_float("min_delta", min_delta, min=0)
        self.requested_mode = check_choice("mode", mode, (None, "min", "max"))
        self.check_finite = check_bool("check_finite", check_finite)
        self._reset(mode)

    def _reset(self, mode: str | None) -> None:
        self.mode, self.best = mode, -math.inf if mode == "max" else math.inf
        self.num_bad = self.count = 0
        self.stopped, self.stopping_reason = False, None

    def on_fit_start(self, ctx: TrainContext) -> None:
        """A fresh start in every fit (a resume loads the saved state after this)."""
        self._reset(metric_mode(ctx.monitor, self.requested_mode))

    def step(self, value: float | torch.Tensor) -> bool:
        """Record one value; ``True`` means stop."""
        if self.mode is None:
            raise ValueError("EarlyStopping(mode=None) outside fit: give mode='min' or 'max'")
        value = as_number("the monitored metric", value)
        self.count += 1
        if self.check_finite and not math.isfinite(value):
            self.stopped = True
            self.stopping_reason = f"non-finite monitored value ({value}) at check {self.count}"
            return True
        low, high = self.best - self.min_delta, self.best + self.min_delta
        better = math.isfinite(value) and (value < low if self.mode == "min" else value > high)
        self.best, self.num_bad = (value, 0) if better else (self.best, self.num_bad + 1)
        if self.num_bad >= self.patience:
            self.stopped = True
            rule = f"no improvement of more than {self.min_delta:g} for {self.patience} checks"
            self.stopping_reason = f"{rule} (best {self.best:.4g})"
        return self.stopped

    def on_epoch_end(self, ctx: TrainContext, metrics: dict[str, Any]) -> None:
        if self.step(ctx.monitored(metrics)):
            ctx.stop(str(self.stopping_reason))

    def state_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self._KEYS}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        check_keys("EarlyStopping state", state, self._KEYS)
        if missing := [k for k in self._KEYS[:2] if k not in state]:
            raise ValueError(f"EarlyStopping state lacks {missing}; it holds {sorted(state)}")
        self.best = check_float("EarlyStopping state 'best'", state["best"], finite=False)
        self.num_bad = check_int("EarlyStopping state 'num_bad'", state["num_bad"], min=0)
        self.count = check_int("EarlyStopping state 'count'", state.get("count", 0), min=0)
        self.stopped = check_bool("EarlyStopping state 'stopped'", state.get("stopped", False))
        self.stopping_reason = state.get("stopping_reason")


class Checkpointing(Callback):
    """Save each epoch (and each ``every_n_steps`` steps: mid-epoch resume); ``resume=True`` loads
    the latest first. Saved: model, optimizer, scheduler, the update, ``amp``, ``loss_fn``, history,
    ``data_generator``, callbacks with a state; in ``extra`` the tracker's run (to continue it)."""

    order = 100
    _epoch_data_state: Any = None

    def __init__(self, manager: Any, *, resume: bool = False) -> None:
        self.manager = manager
        self.resume = check_bool("resume", resume)
        self.every_n_steps = getattr(manager, "every_n_steps", None)  # optional, as is wait
        self.wait = getattr(manager, "wait", lambda: None)

    @staticmethod
    def _objects(ctx: TrainContext) -> dict[str, Any]:
        update, loss_fn = ctx.update, ctx.loss_fn
        named = {"model": ctx.model, "optimizer": ctx.optimizer, "scheduler": ctx.scheduler}
        if getattr(update, "checkpoint_name", None) is not None:
            named[update.checkpoint_name] = update
        named["amp"] = getattr(update, "amp", None)
        for i, cb in enumerate(ctx.callbacks):
            if callable(getattr(cb, "state_dict", None)):
                named[getattr(cb, "checkpoint_name", None) or f"callback_{i}"] = cb
        named["loss_fn"] = loss_fn if callable(getattr(loss_fn, "state_dict", None)) else None
        named["history"] = ctx.history
        named["data_generator"] = getattr(ctx.train_loader, "generator", None)
        return {k: v for k, v in named.items() if v is not None}

    def _extra(self, ctx: TrainContext) -> dict[str, Any]:
        state = getattr(ctx.tracker, "state_dict", None)
        return {"tracker": state()} if callable(state) else {}

    def on_fit_start(self, ctx: TrainContext) -> None:
        if not (self.resume and self.manager.latest_path):
            if self.resume:
                folder = getattr(self.manager, "directory", self.manager)
                message = f"resume=True, but {folder} holds no checkpoint: training starts afresh"
                warnings.warn(message, stacklevel=4)  # at fit's caller
            return
        meta = self.manager.load("latest", **self._objects(ctx))
        extra = meta.get("extra") or {}
        load = getattr(ctx.tracker, "load_state_dict", None)
        if callable(load) and "tracker" in extra:
            load(extra["tracker"])
        mid_epoch = meta.get("batch_in_epoch") is not None  # redo the epoch's data order and
        ctx.start_epoch = int(meta["epoch"]) + (0 if mid_epoch else 1)  # skip the batches done
        ctx.step = int(meta.get("step") or 0)
        if mid_epoch:
            ctx.skip_batches = int(meta["batch_in_epoch"])
            ctx.epoch_losses = [float(v) for v in extra.get("losses", [])]
            generator = getattr(ctx.train_loader, "generator", None)
            if generator is not None and "epoch_data_state" in extra:
                generator.set_state(extra["epoch_data_state"])

    def on_epoch_start(self, ctx: TrainContext) -> None:
        generator = getattr(ctx.train_loader, "generator", None)
        self._epoch_data_state = generator.get_state() if generator is not None else None

    def on_step_end(self, ctx: TrainContext, record: dict[str, Any]) -> None:
        every, done = self.every_n_steps, ctx.batch_index + 1
        due = every and not ctx.stop_training and ctx.history.num_steps % every == 0
        if not due or done >= ctx.batches_per_epoch:  # the epoch's end saves
            return
        extra = {**self._extra(ctx), "losses": list(ctx.epoch_losses)}
        if self._epoch_data_state is not None:
            extra["epoch_data_state"] = self._epoch_data_state
        settings = {"step": ctx.step, "batch_in_epoch": done, "extra": extra}
        self.manager.save(ctx.epoch, None, **settings, **self._objects(ctx))

    def on_epoch_end(self, ctx: TrainContext, metrics: dict[str, Any]) -> None:
        extra, objects = self._extra(ctx), self._objects(ctx)
        self.manager.save(ctx.epoch, metrics, step=ctx.step, extra=extra, **objects)

    def on_fit_end(self, ctx: TrainContext, *error: BaseException) -> None:
        self.wait()  # a background save lands before fit returns or re-raises

    on_exception = on_fit_end  # type: ignore[assignment]


class Tracking(Callback):
    """Log per step ``lr``, ``train_loss``, ``grad_norm`` (``loss_scale``, ``skipped_steps`` with
    amp or a guard), per epoch its metrics (``epoch_train_loss``, ``epoch_lr``), the last step's
    after the checkpoint (no tracker I/O before it); a failed run ends ``status="FAILED"``."""

    order = 110
    _held: tuple[dict[str, Any], int] | None = None  # the values of the epoch's last step

    def __init__(self, tracker: Any) -> None:
        self.tracker = tracker

    def _log_held(self) -> None:
        if self._held is not None:
            (values, step), self._held = self._held, None
            self.tracker.log_metrics(values, step=step)

    def on_fit_start(self, ctx: TrainContext) -> None:
        self._skipped = sum(1 for a in ctx.history.steps.get("applied", []) if a is False)
        self.tracker.log_params(describe_run(ctx))

    def on_step_end(self, ctx: TrainContext, record: dict[str, Any]) -> None:
        self._skipped += not record["applied"]
        logged = ("lr", "loss", "grad_norm", "loss_scale")
        values = {"train_loss" if k == "loss" else k: v for k, v in record.items() if k in logged}
        if ctx.update is not None and (ctx.update.amp is not None or ctx.update.handles_nonfinite):
            values["skipped_steps"] = self._skipped
        self._held = (values, ctx.history.num_steps)
        if ctx.batch_index + 1 < ctx.batches_per_epoch:
            self._log_held()

    def on_epoch_end(self, ctx: TrainContext, metrics: dict[str, Any]) -> None:
        self._log_held()
        names = {"train_loss": "epoch_train_loss", "lr": "epoch_lr"}
        values = {names.get(k, k): v for k, v in metrics.items() if k not in ("epoch", "seconds")}
        self.tracker.log_metrics(values, step=ctx.history.num_steps)

    def on_fit_end(self, ctx: TrainContext) -> None:
        self.tracker.finish(ctx.history)

    def on_exception(self, ctx: TrainContext, error: BaseException) -> None:
        with contextlib.suppress(Exception):  # closing a failed run must not hide its error
            self._log_held()
            failed = "status" in inspect.signature(self.tracker.finish).parameters
            self.tracker.finish(ctx.history, **({"status": "FAILED"} if failed else {}))


class SamplerEpoch(Callback):
    """``set_epoch`` on the ``DistributedSampler``: each epoch its own order (pytorch#31771)."""

    order = -100

    def on_epoch_start(self, ctx: TrainContext) -> None:
        ctx.train_loader.sampler.set_epoch(ctx.epoch)


class ProgressBar(Callback):
    """A tqdm progress bar over the planned optimizer steps (notebook-aware)."""

    order = 120
    bar: Any = None

    def on_fit_start(self, ctx: TrainContext) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=ctx.total_steps, desc="training", unit="step", dynamic_ncols=True)
        self.bar.update(ctx.step)

    def on_step_end(self, ctx: TrainContext, record: dict[str, Any]) -> None:
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}", refresh=False)

    def on_fit_end(self, ctx: TrainContext) -> None:
        if self.bar is not None:
            self.bar.close()

    on_exception = on_fit_end  # type: ignore[assignment]


_NOT_SETTINGS = frozenset("self model optimizer params scheduler amp last_epoch verbose".split())


def _settings(obj: Any, prefix: str) -> dict[str, Any]:
    try:
        names = inspect.signature(type(obj).__init__).parameters
    except (TypeError, ValueError):
        return {}
    settings = {}
    for name in (n for n in names if n not in _NOT_SETTINGS and not n.startswith("_")):
        with contextlib.suppress(Exception):  # a property that cannot be read is not a setting
            if isinstance(value := getattr(obj, name, None), bool | int | float | str):
                settings[f"{prefix}.{name}"] = value
    return settings


def describe_run(ctx: TrainContext) -> dict[str, Any]:
    """Flat, loggable parameters of a run (model, optimizer, scheduler, loss, guard, amp)."""
    params: dict[str, Any] = {"model": type(ctx.model).__name__, "epochs": ctx.epochs}
    params["optimizer"] = type(ctx.optimizer).__name__
    defaults = ctx.optimizer.defaults.items()  # bool is an int
    params |= {f"optimizer.{k}": v for k, v in defaults if isinstance(v, int | float | str | None)}
    update = ctx.update
    guard = update if getattr(update, "handles_nonfinite", False) else None
    for prefix, obj in (("scheduler", ctx.scheduler), ("loss", ctx.loss_fn), ("guard", guard)):
        if obj is not None:
            params[prefix] = type(obj).__name__
            params.update(_settings(obj, prefix))
    if (amp := getattr(update, "amp", None)) is not None:
        params["amp.dtype"] = str(getattr(amp, "dtype", type(amp).__name__))
        params.update({k: v for k, v in _settings(amp, "amp").items() if k != "amp.dtype"})
    return params
