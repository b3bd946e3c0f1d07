"""Learning-rate tuning on any model, the Tuning Playbook way: short seeded runs
(:func:`tuning_run`), a grid of peak LRs × warmups × seeds (:func:`lr_sweep`) and the range test
on a fresh model (:func:`range_test`). A run *diverges* at its first step whose loss is not finite
or exceeds ``diverge_factor`` × its first loss; it stops there, its final metric ``nan``."""

from __future__ import annotations

import itertools
import math
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import nn

from .callbacks import Callback, TrainContext
from .checks import check_callable, check_float, check_int, check_keywords
from .history import History
from .loop import fit
from .lr_finder import LRRangeTestResult, lr_range_test
from .metrics import metric_mode
from .schedulers import build_scheduler
from .utils import seed_everything

ModelFn = Callable[[], nn.Module]
OptimizerFn = Callable[[nn.Module, float], torch.optim.Optimizer]
_TRAINED: weakref.WeakSet = weakref.WeakSet()  # the models tuning runs trained: none twice


def as_list(values: Any) -> Any:
    """A numpy array as a list (of Python numbers); anything else as it is."""
    return values.tolist() if isinstance(values, np.ndarray) else values


def _check_model_fn(model_fn: Any) -> None:
    if isinstance(model_fn, nn.Module):
        factory = "model_fn must be a factory (a callable returning a new model)"
        raise TypeError(f"{factory}, got a {type(model_fn).__name__}")
    check_callable("model_fn", model_fn, optional=False)


def adam(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """The default ``optimizer_fn``: ``Adam(model.parameters(), lr=lr)``."""
    return torch.optim.Adam(model.parameters(), lr=lr)


@dataclass
class TuningRun:
    """One short run: settings, ``history``, final ``monitor`` value (``nan`` if it diverged)."""

    lr: float
    warmup_steps: int
    seed: int
    schedule: dict[str, Any]
    max_grad_norm: float | None
    history: History
    monitor: str
    final_metric: float
    diverged_step: int | None
    cancelled: bool = False

    @property
    def label(self) -> str:
        return f"lr={self.lr:.3g}, warmup={self.warmup_steps}, seed={self.seed}"

    @property
    def clipped_fraction(self) -> float:
        """The fraction of steps whose gradient norm exceeded ``max_grad_norm`` (0 without)."""
        norms = np.asarray(self.history.steps.get("grad_norm", []), dtype=float)
        clipping = self.max_grad_norm is not None and norms.size > 0
        return float(np.mean(norms > self.max_grad_norm)) if clipping else 0.0


class _Watch(Callback):
    """Stops a run at divergence or when ``should_stop()``; reports each step to ``on_step``."""

    order = 14  # before StopOnNonFinite: the divergence is recorded here

    def __init__(self, factor: float, should_stop, on_step) -> None:
        self.factor, self.should_stop, self.on_step = factor, should_stop, on_step
        self.first, self.diverged_step, self.cancelled = math.nan, None, False

    def on_step_end(self, ctx: TrainContext, record: dict[str, Any]) -> None:
        loss, step = record["loss"], ctx.history.num_steps - 1
        self.first = loss if step == 0 else self.first
        if self.on_step is not None:
            self.on_step(step, record)
        if not math.isfinite(loss) or loss > self.factor * abs(self.first) > 0:
            self.diverged_step = step
            ctx.stop(f"diverged at step {step} (loss {loss:.3g})")
        elif self.should_stop is not None and self.should_stop():
            self.cancelled = True
            ctx.stop("cancelled")


def tuning_run(
    model_fn: ModelFn,
    train_loader: Iterable,
    val_loader: Iterable | None = None,
    *,
    lr: float,
    steps: int,
    schedule: Mapping[str, Any] | None = None,
    seed: int = 0,
    loss_fn: Callable | None = None,
    optimizer_fn: OptimizerFn | None = None,
    metrics: Mapping[str, Any] | None = None,
    monitor: str | None = None,
    max_grad_norm: float | None = None,
    batch_fn: Callable | None = None,
    device: torch.device | str | None = None,
    diverge_factor: float = 4.0,
    should_stop: Callable[[], bool] | None = None,
    on_step: Callable[[int, dict[str, Any]], Any] | None = None,
) -> TuningRun:
    """``fit`` a fresh ``model_fn()`` (seeded by ``seed``, as is the loader's order) for ``steps``
    steps at peak ``lr``, ``optimizer_fn(model, lr)`` (default :func:`adam`) and ``schedule``
    (default ``constant``); ``monitor`` defaults to ``val_loss``, or ``train_loss`` without a
    ``val_loader``. ``ValueError`` for a model that a tuning run trained before."""
    lr = check_float("lr", lr, min=0, low_open=True)
    steps = check_int("steps", steps, min=2)
    seed = check_int("seed", seed, min=0)
    diverge_factor = check_float("diverge_factor", diverge_factor, min=1, low_open=True)
    check_float("max_grad_norm", max_grad_norm, min=0, low_open=True, finite=False, optional=True)
    _check_model_fn(model_fn)
    hooks = dict(loss_fn=loss_fn, optimizer_fn=optimizer_fn, batch_fn=batch_fn)
    for name, fn in (hooks | dict(should_stop=should_stop, on_step=on_step)).items():
        check_callable(name, fn)
    if not isinstance(schedule, Mapping | None) or not isinstance(monitor, str | None):
        raise TypeError(
            f"schedule must be a mapping and monitor a str (or None); got {schedule!r}, {monitor!r}"
        )
    if schedule is not None and "total_steps" in schedule:
        given = f"schedule must not hold total_steps={schedule['total_steps']!r}"
        raise ValueError(f"{given}: tuning_run sets it to steps")
    config = {"type": "constant", **dict(schedule or {}), "total_steps": steps}
    seed_everything(seed)
    if isinstance(generator := getattr(train_loader, "generator", None), torch.Generator):
        generator.manual_seed(seed)
    model = model_fn()
    if not isinstance(model, nn.Module):
        raise TypeError(f"model_fn must return an nn.Module, got {type(model).__name__}")
    if model in _TRAINED:
        raise ValueError("model_fn must build a new model each call; it returned a trained one")
    _TRAINED.add(model)
    optimizer = (optimizer_fn or adam)(model, lr)
    scheduler = build_scheduler(optimizer, config)
    watch = _Watch(diverge_factor, should_stop, on_step)
    monitor = monitor or ("val_loss" if val_loader is not None else "train_loss")
    epochs = math.ceil(steps / max(1, len(train_loader)))  # type: ignore[arg-type]
    data = dict(val_loader=val_loader, batch_fn=batch_fn, device=device, max_steps=steps)
    train = dict(optimizer=optimizer, scheduler=scheduler, max_grad_norm=max_grad_norm)
    report = dict(loss_fn=loss_fn, metrics=metrics, monitor=monitor, progress=False)
    history = fit(model, train_loader, epochs=epochs, callbacks=[watch], **data, **train, **report)
    if monitor not in history.epochs:
        raise ValueError(f"monitor={monitor!r} is not recorded; the run has {list(history.epochs)}")
    diverged, warmup = watch.diverged_step, int(config.get("warmup_steps") or 0)
    final = float(history.epochs[monitor][-1]) if diverged is None else math.nan
    return TuningRun(
        lr, warmup, seed, config, max_grad_norm, history, monitor, final, diverged, watch.cancelled
    )


@dataclass
class SweepResult:
    """The runs of :func:`lr_sweep` and their ``monitor``'s better direction ``mode``."""

    runs: list[TuningRun]
    monitor: str
    mode: str

    @property
    def rows(self) -> list[dict[str, Any]]:
        """Per (warmup, lr): ``mean`` (of finite metrics), ``values``, ``diverged``, ``seeds``."""
        groups: dict[tuple[int, float], list[TuningRun]] = {}
        for run in self.runs:
            groups.setdefault((run.warmup_steps, run.lr), []).append(run)
        rows = []
        for (warmup, lr), runs in sorted(groups.items()):
            values = [r.final_metric for r in runs]
            finite = [v for v in values if math.isfinite(v)]
            mean = sum(finite) / len(finite) if finite else math.nan
            diverged = sum(r.diverged_step is not None for r in runs)
            row = {"lr": lr, "warmup_steps": warmup, "mean": mean, "values": values}
            rows.append(row | {"diverged": diverged, "seeds": len(runs)})
        return rows

    @property
    def best(self) -> dict[str, Any] | None:
        """The row with the best mean among those where no seed diverged (``None`` if none)."""
        sign = 1.0 if self.mode == "min" else -1.0
        ok = [r for r in self.rows if r["diverged"] == 0 and math.isfinite(r["mean"])]
        return min(ok, key=lambda r: sign * r["mean"], default=None)

    def plot(self, ax: Axes | None = None, suggestion: float | None = None) -> Figure:
        """The final metric against the peak LR, one line per warmup (error bars: over seeds); ✕: a
        seed diverged; ★: the best; dashed: ``suggestion`` (e.g. the range test's)."""
        own = ax is None
        fig, ax = plt.subplots(figsize=(6, 3.6)) if own else (ax.figure, ax)
        rows, x_axis = self.rows, ax.get_xaxis_transform()  # y in axes coordinates
        for i, warmup in enumerate(sorted({r["warmup_steps"] for r in rows})):
            mine = [r for r in rows if r["warmup_steps"] == warmup]
            lrs = np.array([r["lr"] for r in mine])
            mean = np.array([r["mean"] if r["diverged"] == 0 else np.nan for r in mine])
            spread = [[r["mean"] - min(r["values"]), max(r["values"]) - r["mean"]] for r in mine]
            err = np.where(np.isfinite(mean)[:, None], np.nan_to_num(spread), 0).T
            line = ax.errorbar(lrs, mean, yerr=err, fmt="o-", capsize=3, color=f"C{i}")
            line.set_label(f"warmup {warmup} steps")
            bad = lrs[[r["diverged"] > 0 for r in mine]]
            bottom = np.full(bad.size, 0.02 + 0.04 * i)  # at the bottom edge: always in view
            ax.plot(bad, bottom, "x", color=f"C{i}", mew=2, ms=9, clip_on=False, transform=x_axis)
        if any(r["diverged"] for r in rows):
            ax.plot([], [], "x", color="0.3", mew=2, ms=9, label="a seed diverged")
        if (best := self.best) is not None:
            label = f"best: lr={best['lr']:.3g}, warmup {best['warmup_steps']}"
            ax.plot([best["lr"]], [best["mean"]], "*", color="gold", mec="k", ms=16, label=label)
        if suggestion is not None and math.isfinite(suggestion):
            ax.axvline(suggestion, color="C2", ls="--", label=f"range test: {suggestion:.2g}")
        ax.set(xscale="log", xlabel="peak learning rate", ylabel=f"final {self.monitor}")
        ax.set_title(f"{len(self.runs)} runs; mean over seeds", fontsize=9)
        ax.legend(fontsize=7)
        if own:
            fig.tight_layout()
        return fig


def lr_sweep(
    model_fn: ModelFn,
    train_loader: Iterable,
    val_loader: Iterable | None = None,
    *,
    lrs: Sequence[float],
    steps: int,
    warmups: Sequence[int] = (0,),
    seeds: Sequence[int] = (0,),
    schedule: Mapping[str, Any] | None = None,
    mode: str | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_run: Callable[[TuningRun], Any] | None = None,
    **run_kwargs: Any,
) -> SweepResult:
    """:func:`tuning_run` for every peak LR × warmup × seed (all arguments checked first) until
    ``should_stop()``; ``mode``: :func:`~stabletrain.metrics.metric_mode` of the monitor."""
    _check_model_fn(model_fn)
    lrs, warmups, seeds = map(as_list, (lrs, warmups, seeds))
    for name, values in (("lrs", lrs), ("warmups", warmups), ("seeds", seeds)):
        if isinstance(values, str | bytes) or not isinstance(values, Sequence):
            raise TypeError(f"{name} must be a sequence of numbers, got {values!r}")
    if not lrs or not warmups or not seeds:
        raise ValueError("lrs, warmups and seeds must each hold at least one value")
    steps = check_int("steps", steps, min=2)
    lrs = [check_float("lrs", lr, min=0, low_open=True) for lr in lrs]
    for warmup in warmups:
        check_int(f"warmups (each shorter than steps={steps})", warmup, min=0, max=steps - 1)
    seeds = [check_int("seeds", seed, min=0) for seed in seeds]
    check_keywords(
        "lr_sweep", run_kwargs, tuning_run, ("lr", "steps", "schedule", "seed", "should_stop")
    )
    monitor = run_kwargs.get("monitor") or ("val_loss" if val_loader is not None else "train_loss")
    mode = metric_mode(monitor, mode)
    runs: list[TuningRun] = []
    for warmup, lr, seed in itertools.product(warmups, sorted(lrs), seeds):
        if should_stop is not None and should_stop():
            break
        config = {**dict(schedule or {}), "warmup_steps": warmup}
        options = dict(lr=lr, steps=steps, schedule=config, seed=seed, should_stop=should_stop)
        runs.append(tuning_run(model_fn, train_loader, val_loader, **options, **run_kwargs))
        if on_run is not None:
            on_run(runs[-1])
    return SweepResult(runs, monitor, mode)


def range_test(
    model_fn: ModelFn,
    train_loader: Iterable,
    *,
    seed: int = 0,
    optimizer_fn: OptimizerFn | None = None,
    loss_fn: Callable | None = None,
    max_grad_norm: float | None = None,
    batch_fn: Callable | None = None,
    device: torch.device | str | None = None,
    **kwargs: Any,
) -> LRRangeTestResult:
    """:func:`~stabletrain.lr_finder.lr_range_test` (``kwargs``) on a new seeded ``model_fn()``."""
    check_keywords(
        "range_test", kwargs, lr_range_test, ("max_grad_norm", "batch_fn", "device", "update")
    )
    _check_model_fn(model_fn)
    check_callable("optimizer_fn", optimizer_fn)
    seed_everything(check_int("seed", seed, min=0))
    model = model_fn()
    if device is not None:
        model.to(device)
    optimizer = (optimizer_fn or adam)(model, kwargs.get("start_lr", 1e-7))
    options = dict(max_grad_norm=max_grad_norm, batch_fn=batch_fn, device=device, **kwargs)
    return lr_range_test(model, optimizer, loss_fn, train_loader, **options)
