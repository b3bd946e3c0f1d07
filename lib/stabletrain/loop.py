"""The training loop: :func:`fit`, a short loop of events over one update object and callbacks
(that ``fit``'s keywords build), and :func:`evaluate`, with defaults that fit any model."""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DistributedSampler

from . import callbacks as cb
from .amp import MixedPrecision
from .callbacks import Callback, TrainContext, as_number
from .checks import check_bool, check_float, check_int
from .distributed import is_distributed, is_main, mean_across_ranks, reduce_metrics
from .history import History
from .metrics import accuracy, dice_score
from .schedulers import is_metric_driven
from .update import Update, check_amp, check_loss
from .utils import as_device

Outputs = torch.Tensor | list[torch.Tensor]
Metric = Callable[[torch.Tensor, torch.Tensor], float] | Any  # or a torchmetrics Metric


def outputs_to_float32(outputs: Outputs) -> Outputs:
    """Outputs (a tensor or a list of them) in float32: losses overflow in float16."""
    return [o.float() for o in outputs] if isinstance(outputs, list | tuple) else outputs.float()


def to_device(value: Any, device: torch.device) -> Any:
    """``value`` with every tensor in it (nested in tuples, lists, mappings) on ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, Mapping):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, list | tuple):
        items = [to_device(v, device) for v in value]
        return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)
    return value


def _kind(value: Any) -> str:
    if isinstance(value, list | tuple):
        return f"a {type(value).__name__} of {len(value)}"
    if isinstance(value, type):
        return f"the class {value.__name__} (not an instance)"
    shown = f" {value!r}"[:60] if isinstance(value, str | int | float) else ""
    return "None" if value is None else f"a {type(value).__name__}{shown}"


def split_batch(batch: Any) -> tuple[Any, torch.Tensor]:
    """The default ``batch_fn``: a pair or a mapping with "inputs" and "targets"; else TypeError."""
    if isinstance(batch, Mapping) and "inputs" in batch and "targets" in batch:
        return batch["inputs"], batch["targets"]
    if isinstance(batch, list | tuple) and len(batch) == 2:
        return batch[0], batch[1]
    got = f"got keys {sorted(batch)}" if isinstance(batch, Mapping) else f"got {_kind(batch)}"
    message = "a batch must be an (inputs, targets) pair or a mapping with 'inputs' and 'targets'"
    raise TypeError(f"{message}, {got}; pass batch_fn=lambda batch: (inputs, targets) to split it")


def _on_device(batch_fn: Callable, batch: Any, device: torch.device) -> tuple[Any, Any]:
    pair = batch_fn(batch)
    if not (isinstance(pair, list | tuple) and len(pair) == 2):
        raise TypeError(f"batch_fn must return (inputs, targets), got {_kind(pair)}")
    if isinstance(pair[0], np.ndarray) or isinstance(pair[1], np.ndarray):
        hint = "convert them with torch.from_numpy (a DataLoader does)"
        raise TypeError(f"a batch's inputs and targets must be tensors, got numpy arrays: {hint}")
    inputs, targets = to_device(pair, device)
    if isinstance(targets, torch.Tensor) and targets.numel() == 0:
        shape = tuple(targets.shape)
        raise ValueError(f"an empty batch (targets of shape {shape}): a loader must give samples")
    return inputs, targets


def _check_callable(name: str, value: Any, example: str) -> None:
    if value is not None and (not callable(value) or isinstance(value, type)):
        raise TypeError(f"{name} must be a callable instance such as {example}, got {_kind(value)}")


def _check_inputs(model: Any, loss_fn: Any, batch_fn: Any, metrics: Any, amp: Any) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    _check_callable("loss_fn", loss_fn, "torch.nn.MSELoss()")
    _check_callable("batch_fn", batch_fn, "lambda batch: (inputs, targets)")
    check_amp(amp)
    if metrics is not None and not isinstance(metrics, Mapping):
        want = "a mapping {name: fn(outputs, targets)}"
        raise TypeError(f"metrics must be {want}, got {_kind(metrics)}")
    for name, metric in (metrics or {}).items():
        if not isinstance(name, str) or name == "loss" or name.startswith("val_"):
            rule = "a str other than 'loss', without 'val_' (it is logged as val_<name>)"
            raise ValueError(f"metrics: a metric's name must be {rule}, got {name!r}")
        if not callable(getattr(metric, "compute", None)):  # a torchmetrics-style object is fine
            _check_callable(f"metrics[{name!r}]", metric, "stabletrain.metrics.accuracy")


def _check_methods(name: str, value: Any, methods: tuple[str, ...], example: str) -> None:
    if value is not None and not all(callable(getattr(value, m, None)) for m in methods):
        need = f"{example} (with {', '.join(methods)})"
        raise TypeError(f"{name} must be {need}, got {_kind(value)}")


def _length(loader: Any) -> int | None:
    try:
        return len(loader)
    except TypeError:
        return None


def _forward(model: nn.Module, inputs: Any) -> Outputs:  # unpacks a tuple, list or mapping
    if isinstance(inputs, Mapping):
        return model(**inputs)
    return model(*inputs) if isinstance(inputs, list | tuple) else model(inputs)


class _ClassesLast(nn.Module):
    """Cross-entropy for outputs ``(*T, C)`` and class indices ``T`` (a language model)."""

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs.reshape(-1, outputs.shape[-1]), targets.reshape(-1))


def default_loss(outputs: Outputs, targets: torch.Tensor) -> nn.Module:
    """The loss ``fit`` uses without ``loss_fn``, from the first batch. Class indices ``(N, *S)``:
    cross-entropy over outputs ``(N, C, *S)`` or ``(N, *S, C)``, ``C >= 2``. Float targets of the
    outputs' shape: ``BCEWithLogitsLoss`` if all are 0 or 1, else ``MSELoss``. Else ValueError."""
    final = outputs[0] if isinstance(outputs, list | tuple) else outputs
    out, tgt = tuple(final.shape), tuple(targets.shape)
    if targets.dtype.is_floating_point:
        if out != tgt:
            message = f"float targets {tgt} must have the outputs' shape {out} (regression, or a"
            raise ValueError(f"{message} binary/multi-label mask); reshape them, or pass loss_fn=")
        binary = bool(((targets == 0) | (targets == 1)).all())
        return nn.BCEWithLogitsLoss() if binary else nn.MSELoss()
    if targets.dtype == torch.bool or targets.dtype.is_complex:
        hint = "give float 0/1 or integer class indices"
        raise ValueError(f"targets of dtype {targets.dtype}: {hint}")
    if len(out) >= 2 and out[1] >= 2 and (out[0], *out[2:]) == tgt:
        return nn.CrossEntropyLoss()
    if len(out) >= 2 and out[-1] >= 2 and out[:-1] == tgt:
        return _ClassesLast()
    text = f"integer targets {tgt} are read as class indices: the outputs must be (N, C, *S) or "
    text += f"(N, *S, C) with C >= 2 classes for targets (N, *S), got outputs {out}; for a binary "
    raise ValueError(f"{text}task give float 0/1 targets of the outputs' shape, or pass loss_fn=")


def default_metrics(outputs: Outputs, targets: torch.Tensor) -> dict[str, Metric]:
    """Without ``metrics=``: Dice for maps (outputs ``(N, C, H, W)``, targets ``(N, [1,] H, W)``),
    accuracy for class indices, none for float targets."""
    final = outputs[0] if isinstance(outputs, list | tuple) else outputs
    if final.ndim == 4 and targets.ndim in (3, 4) and targets.shape[-2:] == final.shape[-2:]:
        return {"dice": dice_score}
    return {} if targets.dtype.is_floating_point else {"accuracy": accuracy}


def compute_loss(loss_fn: Callable, outputs: Outputs, targets: torch.Tensor, progress: float):
    """``loss_fn(outputs, targets)``, plus ``progress`` (fraction done) if ``uses_progress``."""
    if getattr(loss_fn, "uses_progress", False):
        return check_loss(loss_fn(outputs, targets, progress))
    if isinstance(outputs, list | tuple):
        message = f"the model returned {len(outputs)} outputs (deep supervision) but loss_fn takes"
        wrap = "wrap the loss in stabletrain.deep_supervision.DeepSupervisionLoss or set"
        raise ValueError(f"{message} one; {wrap} model.deep_supervision = False")
    return check_loss(loss_fn(outputs, targets))


def _eval_loss(loss_fn: Callable, outputs: Outputs, targets: torch.Tensor) -> torch.Tensor:
    """The validation loss: the final output's own loss (as at inference)."""
    final = outputs[0] if isinstance(outputs, list | tuple) else outputs
    if not getattr(loss_fn, "uses_progress", False):
        return loss_fn(final, targets)
    if hasattr(loss_fn, "loss"):  # deep supervision: score the final output's own loss
        return loss_fn.loss(final, targets)
    return loss_fn(outputs, targets, 1.0)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable,
    loss_fn: Callable | None = None,
    *,
    device: torch.device | str | None = None,
    amp: Any = None,
    metrics: Mapping[str, Metric] | None = None,
    batch_fn: Callable[[Any], tuple[Any, torch.Tensor]] | None = None,
) -> dict[str, float]:
    """``{"val_loss", "val_<name>"}``: sample means over ``loader`` in eval mode, of the final
    output (deep supervision); ``metrics``: ``{name: fn(outputs, targets) -> float}`` or
    torchmetrics objects, default :func:`default_metrics`. Under DDP: over every rank's shard."""
    _check_inputs(model, loss_fn, batch_fn, metrics, amp)
    own = next(model.parameters(), torch.empty(0)).device  # without parameters: the CPU
    device = as_device("device", own if device is None else device)
    was_training, count, totals = model.training, 0, {}
    stateful = {k: m for k, m in (metrics or {}).items() if callable(getattr(m, "compute", None))}
    model.eval()
    for metric in stateful.values():  # torchmetrics-style: reset/update/compute
        metric.reset()
    try:
        for batch in loader:
            inputs, targets = _on_device(batch_fn or split_batch, batch, device)
            with amp.autocast() if amp is not None else contextlib.nullcontext():
                outputs = outputs_to_float32(_forward(model, inputs))
            final = outputs[0] if isinstance(outputs, list | tuple) else outputs
            loss_fn = loss_fn if loss_fn is not None else default_loss(outputs, targets)
            metrics = metrics if metrics is not None else default_metrics(outputs, targets)
            n = int(targets.shape[0])
            values = {"val_loss": as_number("the loss", _eval_loss(loss_fn, outputs, targets))}
            for name, metric in metrics.items():
                if name in stateful:
                    metric.update(final, targets)
                else:
                    values[f"val_{name}"] = as_number(f"metrics[{name!r}]", metric(final, targets))
            for key, value in values.items():
                totals[key] = totals.get(key, 0.0) + value * n
            count += n
    finally:
        model.train(was_training)
    if count == 0 and not is_distributed():  # a rank's shard may be empty
        empty = "the loader is empty (a val_loader with no batches, or a used-up iterator)"
        raise ValueError(empty)
    nan = dict.fromkeys(["val_loss", *(f"val_{k}" for k in metrics or {})], math.nan)
    result = {k: v / count for k, v in totals.items()} if count else nan
    for name, metric in stateful.items() if count else ():
        result[f"val_{name}"] = float(metric.compute())
        metric.reset()
    return reduce_metrics(result, weight=count)  # in a process group: over every rank's samples


def _dispatch(ctx: TrainContext, event: str, *args: Any) -> None:
    for callback in sorted(ctx.callbacks, key=lambda c: c.order):
        getattr(callback, event)(ctx, *args)


def _prepare(
    model, train_loader, epochs, optimizer, lr, loss_fn, val_loader, scheduler, device,
    max_grad_norm, accumulation_steps, max_steps, guard, update, amp, early_stopping, monitor,
    metrics, batch_fn, checkpoints, resume, tracker, callbacks, stop_on_nonfinite, progress
) -> TrainContext:  # fmt: skip
    """Checks ``fit``'s arguments; the update, the device and the callbacks (yours first)."""
    _check_inputs(model, loss_fn, batch_fn, metrics, amp)
    if next(model.parameters(), None) is None:
        raise ValueError("the model has no parameters: there is nothing to train")
    check_int("epochs", epochs, min=1)
    check_int("accumulation_steps", accumulation_steps, min=1)
    check_float("lr", lr, min=0, optional=True)
    if lr is not None and any(x is not None for x in (optimizer, update, guard)):
        text = "lr is only for the default Adam, not with optimizer=/update=/guard="
        raise ValueError(f"{text}: give the LR to the optimizer (fit's lr= would be ignored)")
    if metrics and val_loader is None:
        raise ValueError("metrics are computed on the val_loader: give val_loader=, or no metrics")
    for name, loader in (("train_loader", train_loader), ("val_loader", val_loader)):
        if isinstance(loader, Iterator):  # a second epoch would find it used up
            raise ValueError(f"{name} is a one-shot iterator: give a list or a DataLoader")
    if not isinstance(callbacks, list | tuple):
        raise TypeError(f"callbacks must be a list of Callback instances, got {_kind(callbacks)}")
    if early_stopping is not None and not isinstance(early_stopping, Callback):
        example = "a Callback such as EarlyStopping(patience=3)"
        raise TypeError(f"early_stopping must be {example}, got {_kind(early_stopping)}")
    _check_methods("checkpoints", checkpoints, ("save",), "a CheckpointManager")
    _check_methods("tracker", tracker, ("log_params", "log_metrics", "finish"), "an MLflowTracker")
    for name, flag in (("resume", resume), ("stop_on_nonfinite", stop_on_nonfinite)):
        check_bool(name, flag)
    check_bool("progress", progress)
    if monitor is not None and not isinstance(monitor, str):
        raise TypeError(f"monitor must be a metric name (str) or None, got {monitor!r}")
    device = as_device("device", device) if device is not None else next(model.parameters()).device
    if guard is not None and update is not None and guard is not update:
        raise ValueError("guard= and update= name the same thing: give one")
    update = update if update is not None else guard
    if update is None:
        optimizer = optimizer or torch.optim.Adam(model.parameters(), lr=1e-3 if lr is None else lr)
        settings = dict(amp=amp, max_grad_norm=max_grad_norm, accumulation_steps=accumulation_steps)
        update = Update(model, optimizer, scheduler, **settings)
    elif not isinstance(update, Update):
        what = "guard/update must be a stabletrain Update (e.g. a StabilityGuard)"
        raise TypeError(f"{what}, got {type(update).__name__}")
    else:
        name = type(update).__name__
        for what, given in {"optimizer": optimizer, "scheduler": scheduler, "amp": amp}.items():
            if given is not None and given is not (own := getattr(update, what)):
                text = f"fit(..., {what}=...) is not the {what} of the {name} ({own!r}); a setting"
                raise ValueError(f"{text} lives in one place: give it to the {name} only")
        if max_grad_norm is not None:
            raise ValueError(f"max_grad_norm is for the plain update; give the {name} its clipping")
        if accumulation_steps not in (1, update.accumulation_steps):
            given = f"fit(accumulation_steps={accumulation_steps!r}) differs from the {name}'s"
            own = f"accumulation_steps={update.accumulation_steps}: give it to the {name} only"
            raise ValueError(f"{given} {own}")
    if not {id(p) for p in model.parameters()} & {id(p) for p in update.params()}:
        hint = "build it from model.parameters() (the weights would never change)"
        raise ValueError(f"the optimizer holds none of the model's parameters: {hint}")
    if not any(p.requires_grad for p in update.params()):
        raise ValueError("the model has no trainable parameters (all have requires_grad=False)")
    amp = update.amp
    if isinstance(amp, MixedPrecision) and amp.enabled and amp.device_type != device.type:
        text = f"amp.device_type={amp.device_type!r}, but the model is on {device}"
        raise ValueError(f"{text}: autocast would do nothing; give MixedPrecision(device_type=...)")
    if all(group.get("initial_lr", group["lr"]) == 0 for group in update.optimizer.param_groups):
        text = "lr is 0 in every parameter group: the weights will not change (give lr > 0)"
        warnings.warn(text, stacklevel=3)
    if (batches_per_epoch := _length(train_loader)) is None:
        raise TypeError("train_loader must have a length (a DataLoader or a sequence)")
    if batches_per_epoch == 0:
        raise ValueError("train_loader is empty")
    if update.accumulation_steps > batches_per_epoch:
        text = f"accumulation_steps={update.accumulation_steps} is more than the"
        raise ValueError(f"{text} {batches_per_epoch} batches per epoch: give at most that many")
    if val_loader is not None and _length(val_loader) == 0:
        raise ValueError("val_loader is empty: give one with batches, or val_loader=None")
    model.to(device)
    built = [*callbacks, *([early_stopping] if early_stopping is not None else [])]
    for hook in built:
        if not isinstance(hook, Callback):
            raise TypeError(f"callbacks must be Callback instances, got {type(hook).__name__}")
    if len({id(c) for c in built}) < len(built):
        raise ValueError("a callback is given twice (early_stopping= is added to callbacks=)")
    if resume and checkpoints is None:
        raise ValueError("resume=True needs checkpoints=<a checkpoint manager>")
    built += [make() for wanted, make in (
        (is_metric_driven(update.scheduler), cb.MetricScheduler),
        (stop_on_nonfinite and not update.handles_nonfinite, cb.StopOnNonFinite),
        (max_steps is not None, lambda: cb.MaxSteps(max_steps)),
        (isinstance(getattr(train_loader, "sampler", None), DistributedSampler), cb.SamplerEpoch),
        (checkpoints is not None, lambda: cb.Checkpointing(checkpoints, resume=resume)),
        (tracker is not None and is_main(), lambda: cb.Tracking(tracker)),  # rank 0 logs, draws
        (progress and is_main(), cb.ProgressBar),
        (True, cb.CheckMonitor),
    ) if wanted]  # fmt: skip
    if monitor is None:
        monitor = "val_loss" if val_loader is not None else "train_loss"
    return TrainContext(
        model, update.optimizer, update.scheduler, History(), epochs, update=update, device=device,
        steps_per_epoch=math.ceil(batches_per_epoch / update.accumulation_steps), monitor=monitor,
        train_loader=train_loader, batches_per_epoch=batches_per_epoch, callbacks=built,
        tracker=tracker, loss_fn=loss_fn,
    )  # fmt: skip


def fit(
    model: nn.Module,
    train_loader: Iterable,
    *,
    epochs: int = 1,
    optimizer: torch.optim.Optimizer | None = None,
    lr: float | None = None,
    loss_fn: Callable | None = None,
    val_loader: Iterable | None = None,
    scheduler: Any = None,
    device: torch.device | str | None = None,
    max_grad_norm: float | None = None,
    accumulation_steps: int = 1,
    max_steps: int | None = None,
    guard: Update | None = None,
    update: Update | None = None,
    amp: Any = None,
    early_stopping: Callback | None = None,
    monitor: str | None = None,
    metrics: Mapping[str, Metric] | None = None,
    batch_fn: Callable[[Any], tuple[Any, torch.Tensor]] | None = None,
    checkpoints: Any = None,
    resume: bool = False,
    tracker: Any = None,
    callbacks: Sequence[Callback] = (),
    stop_on_nonfinite: bool = True,
    progress: bool = True,
) -> History:
    """Train ``model`` on the batches of ``train_loader``; returns the ``History``.

    ``update``/``guard`` (one thing): the :class:`~stabletrain.update.Update`; else a plain one from
    ``optimizer`` (default ``Adam(lr=lr)``, ``lr`` default 1e-3), ``scheduler``, ``amp``,
    ``max_grad_norm``, ``accumulation_steps`` (windows restart each epoch). Defaults:
    :func:`default_loss`, :func:`default_metrics`, :func:`split_batch`, ``monitor="val_loss"``
    (``"train_loss"`` without a ``val_loader``). The other keywords build callbacks. Invalid,
    disagreeing or empty inputs (loaders, batches, a loss that is not a one-element tensor requiring
    grad, a monitored metric missing at the first epoch's end) raise ``ValueError``/``TypeError``;
    ``lr`` 0 in every parameter group warns."""
    ctx = _prepare(
        model, train_loader, epochs, optimizer, lr, loss_fn, val_loader, scheduler, device,
        max_grad_norm, accumulation_steps, max_steps, guard, update, amp, early_stopping, monitor,
        metrics, batch_fn, checkpoints, resume, tracker, callbacks, stop_on_nonfinite, progress,
    )  # fmt: skip
    update, history, device = ctx.update, ctx.history, ctx.device
    batch_fn, event = batch_fn or split_batch, partial(_dispatch, ctx)
    model.train()
    try:
        event("on_fit_start")
        for epoch in range(ctx.start_epoch, epochs):
            ctx.epoch = epoch
            event("on_epoch_start")
            started, window_loss, window = time.perf_counter(), 0.0, 0
            batches = iter(train_loader)
            for ctx.batch_index, batch in enumerate(batches):
                if ctx.batch_index < ctx.skip_batches:
                    continue  # trained before the interruption (mid-epoch resume)
                inputs, targets = _on_device(batch_fn, batch, device)
                lr_now = ctx.optimizer.param_groups[0]["lr"]
                with update.autocast():  # the loss in float32, outside autocast
                    outputs = outputs_to_float32(_forward(model, inputs))
                ctx.loss_fn = ctx.loss_fn or default_loss(outputs, targets)
                loss = compute_loss(ctx.loss_fn, outputs, targets, ctx.progress)
                window_loss, window = window_loss + float(loss.detach()), window + 1
                last = ctx.batch_index + 1 == ctx.batches_per_epoch
                # a window closes each accumulation_steps batches and at the epoch's end
                closes = last or (ctx.batch_index + 1) % update.accumulation_steps == 0
                result = update.step(loss, sync=closes)
                if result.reason == "accumulating":
                    continue
                ctx.step += result.applied
                record = {
                    "step": ctx.step, "epoch": epoch, "lr": lr_now, "loss": window_loss / window,
                    "grad_norm": result.grad_norm, "applied": result.applied,
                }  # fmt: skip
                if (scale := update.loss_scale) is not None:  # read once: a device sync
                    record["loss_scale"] = scale
                history.log_step(**record)
                if math.isfinite(record["loss"]):
                    ctx.epoch_losses.append(record["loss"])
                window_loss, window = 0.0, 0
                event("on_step_end", record)
                if ctx.stop_training:
                    if last:  # let the sampler finish as a full epoch would (resume matches)
                        deque(batches, maxlen=0)
                    break
            losses = ctx.epoch_losses
            train_loss = sum(losses) / len(losses) if losses else math.nan
            values = {"epoch": epoch, "train_loss": mean_across_ranks(train_loss)}  # over ranks
            if val_loader is not None:
                kwargs = {"amp": update.amp, "metrics": metrics, "batch_fn": batch_fn}
                values.update(evaluate(model, val_loader, ctx.loss_fn, device=device, **kwargs))
            values["lr"] = ctx.optimizer.param_groups[0]["lr"]
            values["seconds"] = time.perf_counter() - started
            event("on_validation_end", values)  # callbacks may add metrics here
            history.log_epoch(**values)
            event("on_epoch_end", values)
            ctx.epoch_losses, ctx.skip_batches = [], 0
            if ctx.stop_training:
                break
    except BaseException as error:  # NonFiniteError, Ctrl-C, ...: close the books, re-raise
        history.stop_reason = f"{type(error).__name__}: {error}"[:500]
        event("on_exception", error)
        raise
    history.stop_reason = ctx.stop_reason
    event("on_fit_end")
    return history
