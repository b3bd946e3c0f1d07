"""A compact, readable training loop with explicit extension points.

``fit`` trains a model for a number of epochs, steps the LR scheduler once per
optimizer step, validates after every epoch and returns a :class:`History`.
Everything beyond the basic loop plugs in through small, duck-typed protocols,
so the stability, mixed-precision, checkpointing, tracking and deep-supervision
pieces of the library (and a learner's own objects) join without changing it:

========================  ==============================================================
argument                  what ``fit`` calls on it
========================  ==============================================================
``guard``                 ``guard.step(loss) -> StepResult``: the whole update (backward,
                          clipping, optimizer and scheduler step, zero-grad). Without a
                          guard, :class:`PlainUpdate` does the same plainly.
``amp``                   ``amp.autocast()`` around the forward pass; without a guard also
                          ``amp.backward(loss)``, ``amp.unscale_(opt)``,
                          ``amp.step(opt) -> bool`` (True only if the optimizer stepped)
                          and ``amp.scale``.
``loss_fn``               ``loss_fn(outputs, target)``; if ``loss_fn.uses_progress`` is
                          true, ``loss_fn(outputs, target, progress)`` with ``progress``
                          the fraction of training done (deep supervision, schedules).
``scheduler``             ``scheduler.step()`` after each real optimizer step (except a
                          bare ``ReduceLROnPlateau``); if it is metric-driven
                          (``scheduler.metric_driven`` or a ``ReduceLROnPlateau``) also
                          ``scheduler.step(metric)`` after each validation.
``guard`` (epoch end)      if the metric-driven scheduler sets ``needs_rollback`` (a NaN
                          metric), ``guard.restore_snapshot(keep_lr=True)``.
``early_stopping``        ``early_stopping.step(value) -> bool`` after each epoch with the
                          monitored metric; ``early_stopping.stopping_reason``.
``checkpoints``           ``checkpoints.save(epoch, metrics, step=..., **objects)`` after
                          each epoch; if ``checkpoints.every_n_steps`` is set, also
                          ``save(epoch, None, step=..., batch_in_epoch=k, extra=...)``
                          every that many optimizer steps inside an epoch; with
                          ``resume=True``, ``checkpoints.load("latest", **objects) ->
                          {"epoch", "step", "batch_in_epoch", "extra", ...}`` before
                          training (a mid-epoch point resumes at batch ``k`` of the
                          same data order).
``tracker``               ``tracker.log_params(dict)``; ``tracker.log_metrics(dict, step)``
                          per optimizer step (``lr``, ``train_loss``, ``grad_norm``, and
                          ``loss_scale``/``skipped_steps`` with amp or a guard) and per
                          epoch (``val_loss``, ``val_dice``, ``epoch_train_loss``,
                          ``epoch_lr``); ``tracker.finish(history)``.
``callbacks``             :class:`Callback` hooks at fit, epoch and step boundaries.
========================  ==============================================================

The loss is always computed in float32, outside autocast (see
:func:`outputs_to_float32`).

Example:
    >>> from stabletrain import TinyUNet, make_loaders, fit
    >>> train, val = make_loaders(num_train=32, num_val=16, batch_size=8)
    >>> history = fit(TinyUNet(), train, val_loader=val, epochs=1, progress=False)
    >>> len(history.steps["loss"])
    4
"""

from __future__ import annotations

import contextlib
import inspect
import math
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from .metrics import dice_score

__all__ = [
    "Callback",
    "History",
    "PlainUpdate",
    "StepResult",
    "TrainContext",
    "evaluate",
    "fit",
    "outputs_to_float32",
]

Outputs = torch.Tensor | list[torch.Tensor]


@dataclass
class StepResult:
    """What one call of an updater's ``step(loss)`` did.

    Attributes:
        applied: the optimizer really changed the parameters.
        grad_norm: global L2 norm of the (unscaled) gradients before clipping;
            NaN when it was not computed (for example mid-accumulation).
        reason: why the update was not applied (``None`` when it was).
    """

    applied: bool
    grad_norm: float
    reason: str | None = None


class History:
    """Per-step and per-epoch records of a training run.

    ``steps`` and ``epochs`` map a column name to a list of values, so
    ``plt.plot(history.steps["lr"])`` just works. Standard columns:

    - ``steps``: ``step`` (optimizer steps so far), ``epoch``, ``lr`` (first
      parameter group, used for that step), ``loss``, ``grad_norm``, ``applied``.
    - ``epochs``: ``epoch``, ``train_loss`` (mean over the epoch's finite
      losses), ``val_loss``, ``val_dice``, ``lr``, ``seconds``.

    Other keys may be logged too; a column that starts late is padded with NaN.
    """

    def __init__(self) -> None:
        self.steps: dict[str, list[Any]] = {}
        self.epochs: dict[str, list[Any]] = {}
        self.stop_reason: str | None = None

    @staticmethod
    def _append(table: dict[str, list[Any]], values: Mapping[str, Any]) -> None:
        length = len(next(iter(table.values()))) if table else 0
        for key, value in values.items():
            if key not in table:
                table[key] = [math.nan] * length
            table[key].append(value)
        for key, column in table.items():
            if key not in values:
                column.append(math.nan)

    def log_step(self, **values: Any) -> None:
        """Append one optimizer step's values."""
        self._append(self.steps, values)

    def log_epoch(self, **values: Any) -> None:
        """Append one epoch's values."""
        self._append(self.epochs, values)

    @property
    def num_steps(self) -> int:
        return len(self.steps.get("loss", []))

    @property
    def diverged(self) -> bool:
        """Whether a training loss was NaN or infinite, or blew up while finite.

        A blow-up is as :meth:`blowup_step` defines it with its defaults (a loss above 10×
        the median of the earlier ones): a loss that climbs to ``1e7`` and stays finite
        has diverged as surely as one that prints ``nan``.
        """
        return self.first_nonfinite_step() is not None or self.blowup_step() is not None

    def blowup_step(self, factor: float = 10.0, warmup: int = 10, window: int = 50) -> int | None:
        """Index of the first step whose finite loss exceeds ``factor`` × the median of the
        (up to ``window``) finite losses before it, once ``warmup`` were seen; else ``None``.

        The test only applies while that median is positive.

        Raises:
            ValueError: ``factor <= 1``, ``warmup < 1`` or ``window < 1``.
        """
        if not factor > 1:
            raise ValueError(f"factor must be > 1, got {factor!r}")
        if warmup < 1 or window < 1:
            raise ValueError(f"warmup and window must be >= 1, got {warmup!r} and {window!r}")
        recent: list[float] = []
        for i, v in enumerate(self.steps.get("loss", [])):
            if not math.isfinite(v):
                continue
            if len(recent) >= warmup:
                median = statistics.median(recent)
                if median > 0 and v > factor * median:
                    return i
            recent.append(v)
            del recent[:-window]
        return None

    def first_nonfinite_step(self) -> int | None:
        """Index of the first step whose loss was not finite, or ``None``."""
        for i, v in enumerate(self.steps.get("loss", [])):
            if not math.isfinite(v):
                return i
        return None

    def best(self, key: str = "val_loss", mode: str = "min") -> float:
        """Best finite value of an epoch column (``mode`` is ``"min"`` or ``"max"``)."""
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        values = [v for v in self.epochs.get(key, []) if math.isfinite(v)]
        if not values:
            return math.nan
        return min(values) if mode == "min" else max(values)

    def state_dict(self) -> dict[str, Any]:
        return {
            "steps": {k: list(v) for k, v in self.steps.items()},
            "epochs": {k: list(v) for k, v in self.epochs.items()},
            "stop_reason": self.stop_reason,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.steps = {k: list(v) for k, v in state["steps"].items()}
        self.epochs = {k: list(v) for k, v in state["epochs"].items()}
        self.stop_reason = state.get("stop_reason")

    def summary(
        self,
        monitor: str = "val_loss",
        mode: str = "min",
        *,
        digits: int | None = None,
        keys: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """A short, plain summary of the run (all values JSON-friendly; NaN where unknown).

        Keys: ``steps``, ``epochs`` (recorded), ``skipped_steps`` (steps whose update
        was not applied), ``diverged``, ``first_nonfinite_step``, ``stop_reason``,
        ``best_<monitor>`` and ``best_epoch`` (by ``mode``), ``final_train_loss``,
        ``final_val_loss``, ``final_val_dice``, ``final_lr``, ``max_loss`` (worst finite
        step loss), ``max_val_loss``, ``max_grad_norm`` and ``median_grad_norm`` (over
        the finite per-step gradient norms: a surge shows as a large ratio of the two),
        ``seconds`` (sum of the epoch times).

        Args:
            monitor, mode: the epoch column and direction that define "best".
            digits: round every float to this many digits (for printing and comparing).
            keys: return only these keys, in this order.

        Raises:
            ValueError: ``mode`` not ``"min"`` or ``"max"``, or an unknown key in ``keys``.
        """
        best = self.best(monitor, mode)
        values = self.epochs.get(monitor, [])
        epoch_numbers = self.epochs.get("epoch", list(range(len(values))))
        best_epoch = next(
            (e for e, v in zip(epoch_numbers, values, strict=False) if v == best), None
        )

        def last(column: str) -> float:
            data = self.epochs.get(column, [])
            return float(data[-1]) if data else math.nan

        def finite(data: Sequence[Any]) -> list[float]:
            return sorted(float(v) for v in data if isinstance(v, int | float) and math.isfinite(v))

        norms = finite(self.steps.get("grad_norm", []))
        step_losses = finite(self.steps.get("loss", []))
        val_losses = finite(self.epochs.get("val_loss", []))
        summary: dict[str, Any] = {
            "steps": self.num_steps,
            "epochs": len(self.epochs.get("epoch", [])),
            "skipped_steps": sum(1 for a in self.steps.get("applied", []) if a is False),
            "diverged": self.diverged,
            "first_nonfinite_step": self.first_nonfinite_step(),
            "stop_reason": self.stop_reason,
            f"best_{monitor}": best,
            "best_epoch": best_epoch,
            "final_train_loss": last("train_loss"),
            "final_val_loss": last("val_loss"),
            "final_val_dice": last("val_dice"),
            "final_lr": last("lr"),
            "max_loss": step_losses[-1] if step_losses else math.nan,
            "max_val_loss": val_losses[-1] if val_losses else math.nan,
            "max_grad_norm": norms[-1] if norms else math.nan,
            "median_grad_norm": norms[len(norms) // 2] if norms else math.nan,
            "seconds": float(sum(v for v in self.epochs.get("seconds", []) if math.isfinite(v))),
        }
        if keys is not None:
            unknown = [k for k in keys if k not in summary]
            if unknown:
                raise ValueError(f"unknown summary key(s) {unknown}; accepted: {list(summary)}")
            summary = {k: summary[k] for k in keys}
        if digits is not None:
            summary = {
                k: round(v, digits) if isinstance(v, float) and math.isfinite(v) else v
                for k, v in summary.items()
            }
        return summary

    def to_csv(self, path: Any, table: str = "epochs") -> None:
        """Write one table (``"epochs"`` or ``"steps"``) to ``path`` (a str or path) as CSV.

        Columns are the table's keys in recording order; NaN is written as ``nan``.

        Raises:
            ValueError: an unknown ``table``.
        """
        import csv

        if table not in ("epochs", "steps"):
            raise ValueError(f"table must be 'epochs' or 'steps', got {table!r}")
        columns = self.epochs if table == "epochs" else self.steps
        names = list(columns)
        rows = zip(*(columns[n] for n in names), strict=True) if names else []
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(names)
            writer.writerows(rows)

    def to_json(self, path: Any) -> None:
        """Write the full history (both tables, stop reason and :meth:`summary`) as JSON.

        Non-finite numbers become ``null`` (strict JSON); ``load_state_dict`` of
        the ``"steps"``/``"epochs"``/``"stop_reason"`` entries reads it back.
        """
        import json

        def clean(value: Any) -> Any:
            if isinstance(value, float) and not math.isfinite(value):
                return None
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items()}
            if isinstance(value, list | tuple):
                return [clean(v) for v in value]
            return value

        payload = {**self.state_dict(), "summary": self.summary()}
        with open(path, "w") as f:
            json.dump(clean(payload), f, indent=1, allow_nan=False)

    def __repr__(self) -> str:
        return (
            f"History(steps={self.num_steps}, epochs={len(self.epochs.get('epoch', []))}, "
            f"stop_reason={self.stop_reason!r})"
        )


@dataclass
class TrainContext:
    """The state a :class:`Callback` sees. ``stop_training`` may be set to end the run."""

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

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    @property
    def progress(self) -> float:
        """Fraction of the planned optimizer steps done, in [0, 1]."""
        return min(1.0, self.step / max(1, self.total_steps))


class Callback:
    """Base class for hooks into :func:`fit`. Override what you need.

    Hooks run in this order: ``on_fit_start``, then per epoch ``on_epoch_start``,
    ``on_step_end`` after every optimizer step (``record`` holds that step's
    values), ``on_epoch_end`` after validation (``metrics`` holds the epoch's
    values), and finally ``on_fit_end``. Set ``ctx.stop_training = True`` (and
    ``ctx.stop_reason``) to stop after the current step.
    """

    def on_fit_start(self, ctx: TrainContext) -> None:
        pass

    def on_epoch_start(self, ctx: TrainContext) -> None:
        pass

    def on_step_end(self, ctx: TrainContext, record: dict[str, Any]) -> None:
        pass

    def on_epoch_end(self, ctx: TrainContext, metrics: dict[str, Any]) -> None:
        pass

    def on_fit_end(self, ctx: TrainContext) -> None:
        pass


def outputs_to_float32(outputs: Outputs) -> Outputs:
    """Cast model outputs (a tensor or a list of tensors) to float32 for the loss.

    Under autocast, outputs may be float16/bfloat16; losses such as Dice sums
    or log-sigmoid lose precision or overflow there, so the loss is computed
    in float32 outside the autocast region.
    """
    if isinstance(outputs, list | tuple):
        return [o.float() for o in outputs]
    return outputs.float()


def steps_per_update(scheduler: Any) -> bool:
    """Whether ``scheduler.step()`` is due after each real optimizer step.

    True for every scheduler except a bare ``ReduceLROnPlateau``, which only
    takes ``step(metric)``. stabletrain's metric-driven schedulers (plateau
    with warmup, adaptive) take both: ``step()`` advances warmup and base
    schedules, ``step(metric)`` reports a metric without counting as a step.
    """
    return scheduler is not None and not isinstance(
        scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau
    )


def is_metric_driven(scheduler: Any) -> bool:
    """Whether ``scheduler.step(metric)`` must be called with a metric."""
    return bool(getattr(scheduler, "metric_driven", False)) or isinstance(
        scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau
    )


def _total_grad_norm(parameters: Iterable[torch.Tensor]) -> torch.Tensor:
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.nn.utils.get_total_norm(grads, norm_type=2.0, foreach=True)


class PlainUpdate:
    """The default update of :func:`fit`: what most training loops do, in order.

    ``step(loss)``: backward (through ``amp`` when given); on every
    ``accumulation_steps``-th call: unscale, measure the gradient norm, clip to
    ``max_grad_norm`` if set, optimizer step, scheduler step (only if the
    optimizer really stepped and the scheduler is not metric-driven), zero-grad.
    It does nothing about non-finite values; that is what the stability guard is for.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any = None,
        *,
        amp: Any = None,
        max_grad_norm: float | None = None,
        accumulation_steps: int = 1,
    ) -> None:
        if max_grad_norm is not None and not max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0 or None, got {max_grad_norm}")
        if isinstance(accumulation_steps, bool) or not isinstance(accumulation_steps, int):
            raise TypeError("accumulation_steps must be an int")
        if accumulation_steps < 1:
            raise ValueError(f"accumulation_steps must be >= 1, got {accumulation_steps}")
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.amp = amp
        self.max_grad_norm = max_grad_norm
        self.accumulation_steps = accumulation_steps
        self._micro = 0

    def step(self, loss: torch.Tensor) -> StepResult:
        scaled = loss / self.accumulation_steps if self.accumulation_steps > 1 else loss
        if self.amp is not None:
            self.amp.backward(scaled)
        else:
            scaled.backward()
        self._micro += 1
        if self._micro % self.accumulation_steps:
            return StepResult(False, math.nan, "accumulating")
        if self.amp is not None:
            self.amp.unscale_(self.optimizer)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        if self.max_grad_norm is not None:
            norm = torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm, foreach=True)
        else:
            norm = _total_grad_norm(params)
        if self.amp is not None:
            applied = bool(self.amp.step(self.optimizer))
        else:
            self.optimizer.step()
            applied = True
        if applied and steps_per_update(self.scheduler):
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return StepResult(applied, float(norm), None if applied else "optimizer step skipped")


def _compute_loss(loss_fn: Callable, outputs: Outputs, target: torch.Tensor, progress: float):
    if getattr(loss_fn, "uses_progress", False):
        return loss_fn(outputs, target, progress)
    if isinstance(outputs, list | tuple):
        raise ValueError(
            f"the model returned {len(outputs)} outputs (deep supervision) but loss_fn takes one; "
            "wrap the loss in stabletrain.deep_supervision.DeepSupervisionLoss or set "
            "model.deep_supervision = False"
        )
    return loss_fn(outputs, target)


def _default_loss(outputs: Outputs) -> nn.Module:
    final = outputs[0] if isinstance(outputs, list | tuple) else outputs
    return nn.BCEWithLogitsLoss() if final.shape[1] == 1 else nn.CrossEntropyLoss()


def _autocast(amp: Any):
    return amp.autocast() if amp is not None else contextlib.nullcontext()


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable,
    loss_fn: Callable | None = None,
    *,
    device: torch.device | str | None = None,
    amp: Any = None,
) -> dict[str, float]:
    """Mean loss and Dice score over a loader, in eval mode.

    With deep supervision the model is evaluated on its final output only (the
    same as at inference). Returns ``{"val_loss": ..., "val_dice": ...}``.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    total_loss = total_dice = 0.0
    count = 0
    try:
        for images, targets in loader:
            images, targets = images.to(device), targets.to(device)
            with _autocast(amp):
                outputs = model(images)
            outputs = outputs_to_float32(outputs)
            final = outputs[0] if isinstance(outputs, list | tuple) else outputs
            fn = loss_fn if loss_fn is not None else _default_loss(final)
            if not getattr(fn, "uses_progress", False):
                loss = fn(final, targets)
            elif hasattr(fn, "loss"):  # deep supervision: score the final output's own loss
                loss = fn.loss(final, targets)
            else:
                loss = fn(outputs, targets, 1.0)
            n = images.shape[0]
            total_loss += float(loss) * n
            total_dice += dice_score(final, targets) * n
            count += n
    finally:
        model.train(was_training)
    if count == 0:
        return {"val_loss": math.nan, "val_dice": math.nan}
    return {"val_loss": total_loss / count, "val_dice": total_dice / count}


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="training", unit="step", leave=True, dynamic_ncols=True)


def fit(
    model: nn.Module,
    train_loader: DataLoader | Sequence,
    *,
    epochs: int = 1,
    optimizer: torch.optim.Optimizer | None = None,
    lr: float = 1e-3,
    loss_fn: Callable | None = None,
    val_loader: Iterable | None = None,
    scheduler: Any = None,
    device: torch.device | str | None = None,
    max_grad_norm: float | None = None,
    accumulation_steps: int = 1,
    max_steps: int | None = None,
    guard: Any = None,
    amp: Any = None,
    early_stopping: Any = None,
    monitor: str = "val_loss",
    checkpoints: Any = None,
    resume: bool = False,
    tracker: Any = None,
    callbacks: Sequence[Callback] = (),
    stop_on_nonfinite: bool = True,
    progress: bool = True,
) -> History:
    """Train ``model`` and return its :class:`History`.

    Args:
        model: the network; moved to ``device``.
        train_loader: yields ``(images, targets)`` batches.
        epochs: number of passes over ``train_loader``.
        optimizer: defaults to ``Adam(model.parameters(), lr=lr)``.
        lr: learning rate of the default optimizer.
        loss_fn: defaults to ``BCEWithLogitsLoss`` for one output channel, else
            ``CrossEntropyLoss``. Computed in float32 outside autocast.
        val_loader: evaluated after every epoch (``val_loss``, ``val_dice``).
        scheduler: stepped once per real optimizer step (see module docs).
        device: defaults to the model's current device.
        max_grad_norm: clip the global gradient norm (plain update only; a
            guard carries its own clipping).
        accumulation_steps: micro-batches per optimizer step.
        max_steps: stop after this many optimizer steps.
        guard: an object whose ``step(loss)`` performs the update (stability guard).
        amp: mixed-precision helper (see module docs).
        early_stopping: ``step(value) -> bool`` on ``monitor`` after each epoch.
        monitor: epoch metric given to early stopping, metric-driven schedulers
            and checkpoints (falls back to ``train_loss`` without validation).
        checkpoints: a checkpoint manager (see module docs).
        resume: continue from ``checkpoints``' latest checkpoint.
        tracker: experiment tracker (see module docs).
        callbacks: extra :class:`Callback` objects.
        stop_on_nonfinite: without a guard, stop at the first NaN/Inf loss
            (``history.stop_reason`` says where) instead of training on NaN.
        progress: show a progress bar (tqdm, notebook-aware).

    Raises:
        ValueError: invalid ``epochs``, ``accumulation_steps``, ``max_steps``,
            an empty ``train_loader``, ``resume`` without ``checkpoints``, or a
            guard and ``max_grad_norm`` given together.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an int >= 1, got {epochs!r}")
    if max_steps is not None and (not isinstance(max_steps, int) or max_steps < 1):
        raise ValueError(f"max_steps must be an int >= 1 or None, got {max_steps!r}")
    if resume and checkpoints is None:
        raise ValueError("resume=True needs checkpoints=<a checkpoint manager>")
    if guard is not None and max_grad_norm is not None:
        raise ValueError("max_grad_norm is for the plain update; give the guard its clipping")
    try:
        batches_per_epoch = len(train_loader)
    except TypeError:
        raise TypeError("train_loader must have a length (a DataLoader or a sequence)") from None
    if batches_per_epoch == 0:
        raise ValueError("train_loader is empty")

    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device)
    if optimizer is None:
        if guard is not None:
            raise ValueError("pass the guard's optimizer to fit(optimizer=...)")
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    if guard is not None:
        scheduler = scheduler if scheduler is not None else getattr(guard, "scheduler", None)
        accumulation_steps = getattr(guard, "accumulation_steps", accumulation_steps)
        updater = guard
    else:
        updater = PlainUpdate(
            model,
            optimizer,
            scheduler,
            amp=amp,
            max_grad_norm=max_grad_norm,
            accumulation_steps=accumulation_steps,
        )
    steps_per_epoch = max(1, batches_per_epoch // accumulation_steps)
    history = History()
    ctx = TrainContext(model, optimizer, scheduler, history, epochs, steps_per_epoch)
    generator = getattr(train_loader, "generator", None)

    def objects() -> dict[str, Any]:
        named = {
            "model": model,
            "optimizer": optimizer,
            "scheduler": scheduler,
            "guard": guard,
            "amp": amp,
            "early_stopping": early_stopping,
            "loss_fn": loss_fn if hasattr(loss_fn, "state_dict") else None,
            "history": history,
            "data_generator": generator,
        }
        for i, cb in enumerate(callbacks):  # callbacks with state (e.g. loss-weight schedules)
            if callable(getattr(cb, "state_dict", None)):
                named[f"callback_{i}"] = cb
        return {k: v for k, v in named.items() if v is not None}

    start_epoch = 0
    skip_batches = 0  # batches of start_epoch already trained (mid-epoch resume)
    resumed_losses: list[float] = []
    save_every = getattr(checkpoints, "every_n_steps", None) if checkpoints is not None else None
    if resume:
        meta = checkpoints.load("latest", **objects()) if checkpoints.latest_path else None
        if meta is not None:
            start_epoch = int(meta["epoch"]) + 1
            ctx.step = int(meta.get("step") or 0)
            if meta.get("batch_in_epoch") is not None:  # saved mid-epoch: redo the epoch's
                extra = meta.get("extra") or {}  # data order and skip the batches done
                start_epoch, skip_batches = int(meta["epoch"]), int(meta["batch_in_epoch"])
                resumed_losses = [float(v) for v in extra.get("losses", [])]
                if generator is not None and "epoch_data_state" in extra:
                    generator.set_state(extra["epoch_data_state"])
    if tracker is not None:
        tracker.log_params(_describe(model, optimizer, scheduler, loss_fn, guard, amp, epochs))
    for cb in callbacks:
        cb.on_fit_start(ctx)

    skipped_steps = sum(1 for applied in history.steps.get("applied", []) if applied is False)
    bar = _progress_bar(epochs * steps_per_epoch, progress)
    if bar is not None:
        bar.update(ctx.step)
    model.train()
    try:
        for epoch in range(start_epoch, epochs):
            ctx.epoch = epoch
            for cb in callbacks:
                cb.on_epoch_start(ctx)
            epoch_start = time.perf_counter()
            losses: list[float] = resumed_losses if epoch == start_epoch else []
            micro_loss = 0.0
            epoch_data_state = generator.get_state() if generator is not None else None
            batches = iter(train_loader)
            for batch_index, (images, targets) in enumerate(batches):
                if epoch == start_epoch and batch_index < skip_batches:
                    continue  # trained before the interruption
                images, targets = images.to(device), targets.to(device)
                lr_now = optimizer.param_groups[0]["lr"]
                with _autocast(amp):
                    outputs = model(images)
                outputs = outputs_to_float32(outputs)
                if loss_fn is None:
                    loss_fn = _default_loss(outputs)
                loss = _compute_loss(loss_fn, outputs, targets, ctx.progress)
                loss_value = float(loss.detach())
                micro_loss += loss_value / accumulation_steps
                result = updater.step(loss)
                if (batch_index + 1) % accumulation_steps:
                    continue
                if result.applied:
                    ctx.step += 1
                record = {
                    "step": ctx.step,
                    "epoch": epoch,
                    "lr": lr_now,
                    "loss": micro_loss,
                    "grad_norm": result.grad_norm,
                    "applied": result.applied,
                }
                if amp is not None:
                    record["loss_scale"] = float(getattr(amp, "scale", 1.0))
                history.log_step(**record)
                if not result.applied:
                    skipped_steps += 1
                if tracker is not None:
                    values = {"lr": lr_now, "train_loss": micro_loss, "grad_norm": result.grad_norm}
                    if "loss_scale" in record:
                        values["loss_scale"] = record["loss_scale"]
                    if guard is not None or amp is not None:
                        values["skipped_steps"] = skipped_steps
                    tracker.log_metrics(values, step=history.num_steps)
                for cb in callbacks:
                    cb.on_step_end(ctx, record)
                observe = getattr(scheduler, "observe", None)
                if result.applied and callable(observe) and math.isfinite(micro_loss):
                    observe(micro_loss)  # step-level spike test (the adaptive scheduler)
                if math.isfinite(micro_loss):
                    losses.append(micro_loss)
                elif guard is None and stop_on_nonfinite:
                    ctx.stop_training = True
                    ctx.stop_reason = (
                        f"non-finite loss ({micro_loss}) at step {history.num_steps - 1} "
                        f"(epoch {epoch})"
                    )
                micro_loss = 0.0
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{lr_now:.2e}", refresh=False)
                if max_steps is not None and history.num_steps >= max_steps:
                    ctx.stop_training = True
                    ctx.stop_reason = ctx.stop_reason or f"max_steps={max_steps} reached"
                if ctx.stop_training:
                    if batch_index + 1 == batches_per_epoch:
                        # the epoch's batches are all used: let the sampler finish, as a full
                        # epoch would, so the data generator's state (and a resume) match
                        for _ in batches:
                            pass
                    break
                if (
                    save_every
                    and history.num_steps % save_every == 0
                    and batch_index + 1 < batches_per_epoch
                ):
                    extra = {"losses": list(losses)}
                    if epoch_data_state is not None:
                        extra["epoch_data_state"] = epoch_data_state
                    checkpoints.save(
                        epoch,
                        None,
                        step=ctx.step,
                        batch_in_epoch=batch_index + 1,
                        extra=extra,
                        **objects(),
                    )

            metrics: dict[str, Any] = {
                "epoch": epoch,
                "train_loss": sum(losses) / len(losses) if losses else math.nan,
            }
            if val_loader is not None:
                metrics.update(evaluate(model, val_loader, loss_fn, device=device, amp=amp))
            metrics["lr"] = optimizer.param_groups[0]["lr"]
            metrics["seconds"] = time.perf_counter() - epoch_start
            monitored = metrics.get(monitor, metrics["train_loss"])
            if scheduler is not None and is_metric_driven(scheduler):
                scheduler.step(monitored)
                if guard is not None and getattr(scheduler, "needs_rollback", False):
                    # a non-finite metric: the scheduler has cut its LR; the guard returns
                    # model and optimizer to the last good snapshot, keeping that cut
                    guard.restore_snapshot(keep_lr=True)
            history.log_epoch(**metrics)
            if tracker is not None:  # epoch means get their own names beside the per-step ones
                tracker.log_metrics(
                    {
                        (f"epoch_{k}" if k in ("train_loss", "lr") else k): v
                        for k, v in metrics.items()
                        if k not in ("epoch", "seconds")
                    },
                    step=history.num_steps,
                )
            if early_stopping is not None and early_stopping.step(monitored):
                ctx.stop_training = True
                ctx.stop_reason = ctx.stop_reason or str(
                    getattr(early_stopping, "stopping_reason", "early stopping")
                )
            if checkpoints is not None:
                checkpoints.save(epoch, metrics, step=ctx.step, **objects())
            for cb in callbacks:
                cb.on_epoch_end(ctx, metrics)
            if ctx.stop_training:
                break
    except BaseException as error:  # NonFiniteError, Ctrl-C, ...: close the books, then re-raise
        history.stop_reason = f"{type(error).__name__}: {error}"[:500]
        if checkpoints is not None and callable(getattr(checkpoints, "wait", None)):
            checkpoints.wait()  # a background save in flight still lands
        if tracker is not None:
            _finish_tracker(tracker, history, failed=True)
        raise
    finally:
        if bar is not None:
            bar.close()
    if checkpoints is not None and callable(getattr(checkpoints, "wait", None)):
        checkpoints.wait()  # a background save finishes before fit returns
    history.stop_reason = ctx.stop_reason
    for cb in callbacks:
        cb.on_fit_end(ctx)
    if tracker is not None:
        tracker.finish(history)
    return history


def _finish_tracker(tracker: Any, history: History, *, failed: bool) -> None:
    """``tracker.finish(history)``, with ``status="FAILED"`` when the run raised and the
    tracker accepts a status (as ``MLflowTracker`` does); errors while finishing a failed
    run are not allowed to hide the original one."""
    try:
        accepts_status = "status" in inspect.signature(tracker.finish).parameters
    except (TypeError, ValueError):
        accepts_status = False
    try:
        if failed and accepts_status:
            tracker.finish(history, status="FAILED")
        else:
            tracker.finish(history)
    except Exception:
        if not failed:
            raise


_NOT_SETTINGS = frozenset(
    {"self", "model", "optimizer", "params", "scheduler", "amp", "last_epoch", "verbose"}
)


def _settings(obj: Any, prefix: str) -> dict[str, Any]:
    """Constructor arguments that ``obj`` keeps under the same attribute name (scalars only).

    ``StepLR(opt, step_size=2, gamma=0.5)`` gives ``{"scheduler.step_size": 2,
    "scheduler.gamma": 0.5}``; state that changes while training (``last_epoch``) is left out.
    """
    try:
        names = inspect.signature(type(obj).__init__).parameters
    except (TypeError, ValueError):
        return {}
    settings = {}
    for name in names:
        if name in _NOT_SETTINGS or name.startswith("_"):
            continue
        try:
            value = getattr(obj, name, None)
        except Exception:  # a property that cannot be read is simply not a setting
            continue
        if isinstance(value, bool | int | float | str):
            settings[f"{prefix}.{name}"] = value
    return settings


def _describe(model, optimizer, scheduler, loss_fn, guard, amp, epochs) -> dict[str, Any]:
    """Flat, loggable parameters of a run (for experiment trackers)."""
    params: dict[str, Any] = {"model": type(model).__name__, "epochs": epochs}
    params["optimizer"] = type(optimizer).__name__
    for key, value in optimizer.defaults.items():
        if isinstance(value, int | float | str | bool) or value is None:
            params[f"optimizer.{key}"] = value
    if scheduler is not None:
        params["scheduler"] = type(scheduler).__name__
        params.update(_settings(scheduler, "scheduler"))
    if loss_fn is not None:
        params["loss"] = type(loss_fn).__name__
        params.update(_settings(loss_fn, "loss"))
    if guard is not None:
        params["guard"] = type(guard).__name__
        params.update(_settings(guard, "guard"))
    if amp is not None:
        params["amp.dtype"] = str(getattr(amp, "dtype", type(amp).__name__))
        params.update({k: v for k, v in _settings(amp, "amp").items() if k != "amp.dtype"})
    return params
