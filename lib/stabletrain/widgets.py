"""Interactive widgets for tuning learning-rate schedules in a notebook.

- :func:`schedule_explorer` — pick a scheduler type and its parameters with
  sliders and see the LR per step; pin curves to overlay several schedules.
- :func:`lr_tuner` — peak LR (log slider), warmup and scheduler type; the
  *train* button runs :func:`stabletrain.experiments.short_run` on the shapes
  task and overlays its loss curve on the previous runs.

Both return an object that displays as the widget and whose methods do the
work without a browser: :meth:`ScheduleExplorer.curves` returns the LR lists,
:meth:`LRTuner.train` returns the run's :class:`~stabletrain.training.History`,
and ``.figure`` is the one matplotlib figure they draw on. Sliders report on
release (``continuous_update=False``), and the figure is redrawn in place into
a PNG image widget, so the output never flickers and does not need an
interactive matplotlib backend.

Example:
    >>> from stabletrain.widgets import schedule_explorer
    >>> explorer = schedule_explorer(total_steps=100)
    >>> explorer.controls["type"].value = "step"  # what a user does with the dropdown
    >>> len(explorer.curves()["current"])
    100
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import ipywidgets as w
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .course.experiments import short_run, short_run_arguments
from .history import History
from .lr_finder import ema
from .plotting import plot_lr
from .schedulers import SCHEDULER_TYPES, lr_curve

__all__ = [
    "LRTuner",
    "ScheduleExplorer",
    "describe_schedule",
    "lr_tuner",
    "plot_schedules",
    "schedule_curves",
    "schedule_explorer",
]


# ----------------------------------------------------------------------------- parameter specs


@dataclass(frozen=True)
class _Spec:
    """One control: ``kind`` is ``int``, ``float``, ``log`` (log slider), ``bool`` or ``choice``."""

    kind: str
    default: Any
    low: float = 0.0
    high: float = 1.0
    step: float = 0.01
    options: tuple = ()


def _param_specs(kind: str, total_steps: int) -> dict[str, _Spec]:
    """Sliders (with defaults and ranges) for a scheduler type and a run of ``total_steps``."""
    t = total_steps
    warmup = {"warmup_steps": _Spec("int", 0, 0, t - 1, 1)}
    floor = {"min_lr_ratio": _Spec("float", 0.0, 0.0, 0.5, 0.01)}
    specs = {
        "constant": {**warmup},
        "warmup_cosine": {**warmup, **floor},
        "cosine_restarts": {
            **warmup,
            "first_cycle_steps": _Spec("int", max(1, t // 4), 1, t, 1),
            "t_mult": _Spec("float", 1.0, 1.0, 3.0, 0.1),
            "m_mul": _Spec("float", 1.0, 0.1, 1.0, 0.05),
            **floor,
        },
        "onecycle": {
            "pct_start": _Spec("float", 0.3, 0.05, 0.95, 0.05),
            "div_factor": _Spec("log", 25.0, 0.0, 3.0, 0.1),
            "final_div_factor": _Spec("log", 1e4, 0.0, 5.0, 0.1),
            "anneal_strategy": _Spec("choice", "cos", options=("cos", "linear")),
            "three_phase": _Spec("bool", False),
        },
        "polynomial": {**warmup, "power": _Spec("float", 1.0, 0.1, 4.0, 0.1), **floor},
        "exponential": {
            **warmup,
            "gamma": _Spec("float", 0.9, 0.5, 0.999, 0.001),
            "decay_steps": _Spec("int", max(1, t // 20), 1, t, 1),
            "staircase": _Spec("bool", False),
            **floor,
        },
        "step": {
            **warmup,
            "step_size": _Spec("int", max(1, t // 4), 1, t, 1),
            "gamma": _Spec("float", 0.5, 0.05, 1.0, 0.05),
            **floor,
        },
        # metric-driven: the LR after warmup depends on the metrics a run reports
        "plateau": {
            **warmup,
            "factor": _Spec("float", 0.5, 0.05, 0.95, 0.05),
            "patience": _Spec("int", 1, 0, 10, 1),
        },
        "adaptive": {
            **warmup,
            "factor": _Spec("float", 0.5, 0.05, 0.95, 0.05),
            "patience": _Spec("int", 10, 1, 50, 1),
            "spike_threshold": _Spec("float", 1.0, 0.1, 5.0, 0.1),
        },
    }
    return specs.get(kind, {})


def _available(wanted: Sequence[str] | None) -> tuple[str, ...]:
    if wanted is None:
        return SCHEDULER_TYPES
    wanted = tuple(wanted)
    if not wanted or any(t not in SCHEDULER_TYPES for t in wanted):
        raise ValueError(f"types must be a non-empty subset of {SCHEDULER_TYPES}, got {wanted!r}")
    return wanted


def _check_steps(name: str, value: Any, low: int = 2) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return value


def _make_control(name: str, spec: _Spec) -> w.ValueWidget:
    style = {"description_width": "initial"}
    layout = w.Layout(width="340px")
    common = {"description": name, "style": style, "layout": layout}
    if spec.kind == "int":
        return w.IntSlider(
            value=spec.default,
            min=int(spec.low),
            max=int(spec.high),
            step=int(spec.step),
            continuous_update=False,
            **common,
        )
    if spec.kind == "float":
        return w.FloatSlider(
            value=spec.default,
            min=spec.low,
            max=spec.high,
            step=spec.step,
            continuous_update=False,
            readout_format=".3g",
            **common,
        )
    if spec.kind == "log":
        return w.FloatLogSlider(
            value=spec.default,
            base=10,
            min=spec.low,
            max=spec.high,
            step=spec.step,
            continuous_update=False,
            readout_format=".3g",
            **common,
        )
    if spec.kind == "bool":
        return w.Checkbox(value=spec.default, description=name, indent=False)
    return w.Dropdown(value=spec.default, options=spec.options, **common)


# ----------------------------------------------------------------------------- headless helpers


def describe_schedule(config: Mapping[str, Any]) -> str:
    """A short label for a schedule config, e.g. ``"step(step_size=25, gamma=0.5)"``."""
    parts = []
    for key, value in config.items():
        if key in ("type", "total_steps"):
            continue
        if isinstance(value, float):
            value = f"{value:.3g}"
        parts.append(f"{key}={value}")
    return f"{config['type']}({', '.join(parts)})"


def _check_metrics(metrics: Any, total_steps: int) -> dict[int, float] | None:
    if metrics is None:
        return None
    if not isinstance(metrics, Mapping):
        raise TypeError(f"metrics must be a mapping {{step: metric}}, got {type(metrics).__name__}")
    bad = [k for k in metrics if isinstance(k, bool) or not isinstance(k, int)]
    bad += [k for k in metrics if k not in bad and not 0 <= k < total_steps]
    if bad:
        raise ValueError(f"metrics keys must be step indices in [0, {total_steps}), got {bad}")
    return {k: float(v) for k, v in sorted(metrics.items())}


def schedule_curves(
    configs: Mapping[str, Mapping[str, Any]] | Sequence[Mapping[str, Any]],
    total_steps: int,
    *,
    base_lr: float = 1.0,
    metrics: Mapping[int, float] | None = None,
) -> dict[str, list[float]]:
    """The LR at each of ``total_steps`` steps for several schedule configs.

    Args:
        configs: ``{label: config}`` or a list of configs (labelled with
            :func:`describe_schedule`); each config is a
            ``stabletrain.schedulers.build_scheduler`` mapping with ``"type"``.
        total_steps: the run length in optimizer steps (given to each config
            as ``total_steps`` unless it has its own).
        base_lr: the peak (base) LR; 1.0 shows LRs as fractions of it.
        metrics: ``{step index: metric}``: each metric is reported with
            ``step(metric)`` right after that step to the metric-driven types
            (``plateau``, ``adaptive``), as ``fit`` does after a validation;
            the closed-form types ignore it.

    Returns:
        ``{label: [lr at step 0, …, lr at step total_steps − 1]}``. Without
        ``metrics`` a metric-driven type shows its warmup, then a flat LR.

    Raises:
        ValueError: an invalid config (as ``build_scheduler``), ``total_steps < 2``
            or a metric at a step outside the run.
    """
    _check_steps("total_steps", total_steps)
    metrics = _check_metrics(metrics, total_steps)
    if isinstance(configs, Mapping):
        items = list(configs.items())
    else:
        items = [(describe_schedule(c), c) for c in configs]
    return {
        label: lr_curve(config, total_steps, base_lr, metrics=metrics) for label, config in items
    }


def plot_schedules(
    curves: Mapping[str, Sequence[float]], *, ax: Axes | None = None, log: bool = False
) -> Figure:
    """Deprecated: ``plot_lr(curves, ax=ax, log=log)`` (:func:`~stabletrain.plotting.plot_lr`)."""
    warnings.warn(
        "stabletrain.widgets.plot_schedules is deprecated; use plot_lr from stabletrain.plotting",
        DeprecationWarning,
        stacklevel=2,
    )
    return plot_lr(dict(curves), ax=ax, log=log)


def _render(figure: Figure, image: w.Image) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    image.value = buffer.getvalue()


# ----------------------------------------------------------------------------- schedule explorer


class ScheduleExplorer:
    """The widget behind :func:`schedule_explorer` (see there).

    Attributes:
        controls: ``{"type": dropdown, "<type>.<param>": slider, …}``; setting a
            control's ``value`` redraws, as releasing a slider does.
        pinned: ``{label: lrs}`` curves kept for comparison (:meth:`pin`).
        metrics: ``{step: metric}`` reported to the metric-driven types, or ``None``.
        figure: the figure that is redrawn in place (with the metrics, if
            any, on a second axis).
        widget: the ipywidgets container that a notebook displays.
    """

    def __init__(
        self,
        types: Sequence[str] | None = None,
        *,
        total_steps: int = 100,
        base_lr: float = 1.0,
        log: bool = False,
        metrics: Mapping[int, float] | None = None,
    ) -> None:
        self.types = _available(types)
        self.total_steps = _check_steps("total_steps", total_steps)
        self.metrics = _check_metrics(metrics, self.total_steps)
        if not base_lr > 0:
            raise ValueError(f"base_lr must be > 0, got {base_lr}")
        self.base_lr = float(base_lr)
        self.pinned: dict[str, list[float]] = {}
        self.controls: dict[str, w.ValueWidget] = {
            "type": w.Dropdown(options=self.types, value=self.types[0], description="type")
        }
        self._boxes: dict[str, w.VBox] = {}
        for kind in self.types:
            sliders = []
            for name, spec in _param_specs(kind, self.total_steps).items():
                control = _make_control(name, spec)
                self.controls[f"{kind}.{name}"] = control
                sliders.append(control)
            self._boxes[kind] = w.VBox(sliders)
        self.controls["log"] = w.Checkbox(value=log, description="log scale", indent=False)
        self.pin_button = w.Button(description="pin curve", tooltip="keep this curve")
        self.clear_button = w.Button(description="clear pinned")
        self.pin_button.on_click(self.pin)
        self.clear_button.on_click(self.clear)
        self.image = w.Image(format="png")
        self.figure = Figure(figsize=(7, 3.4))
        self.ax = self.figure.add_subplot()
        self.metric_ax = self.ax.twinx() if self.metrics else None
        self._params = w.Box([self._boxes[self.types[0]]])
        for control in self.controls.values():
            control.observe(self._on_change, names="value")
        buttons = w.HBox([self.controls["log"], self.pin_button, self.clear_button])
        self.widget = w.HBox([w.VBox([self.controls["type"], self._params, buttons]), self.image])
        self.update()

    def config(self) -> dict[str, Any]:
        """The schedule the controls describe, as a ``build_scheduler`` mapping (with
        ``total_steps``, so ``build_scheduler(optimizer, explorer.config())`` works)."""
        kind = self.controls["type"].value
        params = {
            name: self.controls[f"{kind}.{name}"].value
            for name in _param_specs(kind, self.total_steps)
        }
        return {"type": kind, **params, "total_steps": self.total_steps}

    def curves(self) -> dict[str, list[float]]:
        """The pinned curves and the current one (under ``"current"``)."""
        current = schedule_curves(
            {"current": self.config()},
            self.total_steps,
            base_lr=self.base_lr,
            metrics=self.metrics,
        )
        return {**self.pinned, **current}

    def pin(self, _button: Any = None) -> None:
        """Keep the current curve on the plot (labelled by its config)."""
        self.pinned[describe_schedule(self.config())] = self.curves()["current"]
        self.update()

    def clear(self, _button: Any = None) -> None:
        """Forget the pinned curves."""
        self.pinned.clear()
        self.update()

    def _on_change(self, change: Mapping[str, Any]) -> None:
        if change["owner"] is self.controls["type"]:
            self._params.children = [self._boxes[change["new"]]]
        self.update()

    def update(self) -> Figure:
        """Redraw the figure in place and return it."""
        curves = self.curves()
        current = curves.pop("current")
        self.ax.clear()
        for label, lrs in curves.items():
            self.ax.plot(np.arange(len(lrs)), lrs, alpha=0.6, label=label)
        self.ax.plot(
            np.arange(len(current)),
            current,
            "k-",
            lw=2,
            label=f"current: {describe_schedule(self.config())}",
        )
        self.ax.set(xlabel="step", ylabel="learning rate", title="learning rate per step")
        self.ax.set_yscale("log" if self.controls["log"].value else "linear")
        self.ax.legend(fontsize=7, loc="upper right")
        if self.metric_ax is not None:
            self._draw_metrics()
        self.figure.tight_layout()
        _render(self.figure, self.image)
        return self.figure

    def _draw_metrics(self) -> None:
        ax = self.metric_ax
        ax.clear()
        ax.yaxis.tick_right()  # clear() forgets that this is the right-hand twin
        ax.yaxis.set_label_position("right")
        steps = np.array(list(self.metrics), dtype=float)
        values = np.array(list(self.metrics.values()), dtype=float)
        ok = np.isfinite(values)
        ax.plot(steps[ok], values[ok], "o:", color="C3", ms=4, label="metric")
        if (~ok).any():
            top = float(values[ok].max()) if ok.any() else 1.0
            ax.plot(
                steps[~ok],
                [top] * int((~ok).sum()),
                "x",
                color="C3",
                mew=2,
                ms=9,
                label="non-finite metric",
            )
        ax.set_ylabel("reported metric", color="C3")
        ax.legend(fontsize=7, loc="lower left")

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)


def schedule_explorer(
    types: Sequence[str] | None = None,
    *,
    total_steps: int = 100,
    base_lr: float = 1.0,
    log: bool = False,
    metrics: Mapping[int, float] | None = None,
) -> ScheduleExplorer:
    """Sliders for a scheduler type's parameters and a plot of its LR per step.

    Choose a type, move its sliders (the plot redraws when a slider is
    released) and *pin* curves to overlay several schedules.

    Args:
        types: scheduler types to offer (default: every type of
            ``stabletrain.schedulers`` with sliders here).
        total_steps: length of the schedule in optimizer steps.
        base_lr: the peak LR (1.0 plots fractions of it).
        log: start with a logarithmic LR axis.
        metrics: ``{step index: metric}`` reported to the metric-driven types
            (``plateau``, ``adaptive``) right after those steps; drawn on a
            second axis. Without it they show warmup, then a flat LR.

    Returns:
        A :class:`ScheduleExplorer`; it displays as the widget, and
        ``.curves()`` / ``.figure`` give the data and figure without a browser.

    Raises:
        ValueError: an unknown type, ``total_steps < 2`` or a metric outside the run.
    """
    return ScheduleExplorer(
        types, total_steps=total_steps, base_lr=base_lr, log=log, metrics=metrics
    )


# ----------------------------------------------------------------------------- LR tuner

_TUNER_RUN = {"epochs": 2, "num_train": 128, "num_val": 32, "batch_size": 16}
_SET_BY_TUNER = ("lr", "scheduler", "return_model")  # short_run arguments the tuner sets


class LRTuner:
    """The widget behind :func:`lr_tuner` (see there).

    Attributes:
        controls: ``{"lr": log slider, "warmup_steps": slider, "type": dropdown}``.
        button: the *train* button; ``button.click()`` trains like a user's click.
        runs: one dict per trained run: ``label``, ``lr``, ``scheduler`` (config),
            ``history``, ``val_loss``, ``val_dice`` (last epoch).
        total_steps: optimizer steps of one run.
        figure: the figure (planned LR, loss curves) redrawn in place.
        widget: the ipywidgets container that a notebook displays.
    """

    def __init__(
        self,
        types: Sequence[str] | None = None,
        *,
        lr: float = 3e-3,
        lr_range: tuple[float, float] = (1e-5, 1.0),
        warmup_steps: int = 0,
        scheduler: str | None = None,
        **run_kwargs: Any,
    ) -> None:
        self.types = _available(types)
        low, high = lr_range
        if not 0 < low < high:
            raise ValueError(f"lr_range must be (low, high) with 0 < low < high, got {lr_range}")
        if not low <= lr <= high:
            raise ValueError(f"lr must lie in lr_range={lr_range}, got {lr}")
        scheduler = scheduler if scheduler is not None else self.types[0]
        if scheduler not in self.types:
            raise ValueError(f"scheduler must be one of {self.types}, got {scheduler!r}")
        accepted = [n for n in short_run_arguments() if n not in _SET_BY_TUNER]
        unknown = sorted(set(run_kwargs) - set(accepted))
        if unknown:
            raise TypeError(
                f"lr_tuner got unknown argument(s) {unknown}; besides its own it takes "
                f"short_run's: {sorted(accepted)}"
            )
        self.run_kwargs = {**_TUNER_RUN, **run_kwargs}
        accumulation = self.run_kwargs.get("accumulation_steps", 1)
        batches = math.ceil(self.run_kwargs["num_train"] / self.run_kwargs["batch_size"])
        self.total_steps = self.run_kwargs["epochs"] * batches // accumulation
        if self.total_steps < 2:
            raise ValueError(f"a run must have at least 2 optimizer steps, got {self.total_steps}")
        if not 0 <= warmup_steps < self.total_steps:
            raise ValueError(f"warmup_steps must be in [0, {self.total_steps}), got {warmup_steps}")
        self.runs: list[dict[str, Any]] = []
        style = {"description_width": "initial"}
        self.controls: dict[str, w.ValueWidget] = {
            "lr": w.FloatLogSlider(
                value=lr,
                base=10,
                min=math.log10(low),
                max=math.log10(high),
                step=0.05,
                description="peak LR",
                continuous_update=False,
                readout_format=".2e",
                style=style,
            ),
            "warmup_steps": w.IntSlider(
                value=warmup_steps,
                min=0,
                max=self.total_steps - 1,
                description="warmup steps",
                continuous_update=False,
                style=style,
            ),
            "type": w.Dropdown(options=self.types, value=scheduler, description="scheduler"),
        }
        self.button = w.Button(description="train", button_style="primary", icon="play")
        self.clear_button = w.Button(description="clear runs")
        self.status = w.Label(value=f"{self.total_steps} steps per run")
        self.image = w.Image(format="png")
        self.figure = Figure(figsize=(10, 3.4))
        self.lr_ax, self.loss_ax = self.figure.subplots(1, 2)
        self.button.on_click(self.train)
        self.clear_button.on_click(self.clear)
        for control in self.controls.values():
            control.observe(lambda _change: self.update(), names="value")
        controls = w.VBox(
            [*self.controls.values(), w.HBox([self.button, self.clear_button]), self.status]
        )
        self.widget = w.VBox([controls, self.image])
        self.update()

    def scheduler_config(self) -> dict[str, Any]:
        """The schedule of the next run: the chosen type with its default
        parameters and the warmup slider (``onecycle`` turns warmup into ``pct_start``)."""
        kind = self.controls["type"].value
        config = {"type": kind}
        for name, spec in _param_specs(kind, self.total_steps).items():
            config[name] = spec.default
        warmup = self.controls["warmup_steps"].value
        if "warmup_steps" in config:
            config["warmup_steps"] = warmup
        elif warmup > 0:  # onecycle: its rising phase is the warmup
            config["warmup_steps"] = warmup
            config.pop("pct_start", None)
        return config

    def planned_lrs(self) -> list[float]:
        """The LR per step that the next run will start with (before any metric)."""
        lr = self.controls["lr"].value
        return schedule_curves({"next": self.scheduler_config()}, self.total_steps, base_lr=lr)[
            "next"
        ]

    def train(self, _button: Any = None) -> History:
        """Train one short run with the current settings, add it to the plot, return its history."""
        lr = float(self.controls["lr"].value)
        config = self.scheduler_config()
        self.button.disabled = True
        self.status.value = "training…"
        try:
            history = short_run(lr=lr, scheduler=config, **self.run_kwargs)
        finally:
            self.button.disabled = False
        label = f"lr={lr:.2g}, warmup={self.controls['warmup_steps'].value}, {config['type']}"
        run = {
            "label": label,
            "lr": lr,
            "scheduler": config,
            "history": history,
            "val_loss": history.epochs["val_loss"][-1] if history.epochs else math.nan,
            "val_dice": history.epochs["val_dice"][-1] if history.epochs else math.nan,
        }
        self.runs.append(run)
        self.status.value = (
            f"{label}: final val loss {run['val_loss']:.3g}, val Dice {run['val_dice']:.3f}"
            + (" — diverged" if history.diverged else "")
        )
        self.update()
        return history

    def clear(self, _button: Any = None) -> None:
        """Forget the previous runs."""
        self.runs.clear()
        self.update()

    def update(self) -> Figure:
        """Redraw both panels in place and return the figure."""
        self.lr_ax.clear()
        planned = self.planned_lrs()
        self.lr_ax.plot(np.arange(len(planned)), planned, "k-")
        self.lr_ax.set(
            xlabel="step",
            ylabel="learning rate",
            yscale="log",
            title=f"next run: {describe_schedule(self.scheduler_config())}",
        )
        self.lr_ax.title.set_fontsize(8)
        self.loss_ax.clear()
        for run in self.runs:
            losses = run["history"].steps.get("loss", [])
            line = self.loss_ax.plot(ema(losses, 0.4), label=run["label"])[0]
            bad = run["history"].first_nonfinite_step()
            if bad is not None:
                finite = [v for v in losses[:bad] if math.isfinite(v)]
                self.loss_ax.plot(
                    [bad],
                    [finite[-1] if finite else 1.0],
                    "x",
                    mew=2,
                    markersize=9,
                    color=line.get_color(),
                )
        self.loss_ax.set(
            xlabel="step",
            ylabel="training loss (smoothed)",
            yscale="log",
            title="runs (same seed and budget)",
        )
        if self.runs:
            self.loss_ax.legend(fontsize=7)
        self.figure.tight_layout()
        _render(self.figure, self.image)
        return self.figure

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)


def lr_tuner(
    types: Sequence[str] | None = None,
    *,
    lr: float = 3e-3,
    lr_range: tuple[float, float] = (1e-5, 1.0),
    warmup_steps: int = 0,
    scheduler: str | None = None,
    **run_kwargs: Any,
) -> LRTuner:
    """Tune peak LR, warmup and scheduler type by training short runs.

    The left panel shows the LR per step the next run will use (redrawn when a
    slider is released); the *train* button trains
    ``short_run(lr=peak LR, scheduler={type, warmup_steps, …}, **run_kwargs)``
    on the shapes task (same seed and budget every time) and overlays its
    smoothed training loss on the previous runs.

    Args:
        types: scheduler types to offer (default: all with sliders in this module).
        lr: initial peak LR; ``lr_range`` bounds the log slider.
        warmup_steps: initial warmup.
        scheduler: initially selected type.
        **run_kwargs: passed to :func:`stabletrain.experiments.short_run`
            (default budget: ``epochs=2, num_train=128, num_val=32, batch_size=16``).

    Returns:
        An :class:`LRTuner`; it displays as the widget, ``.train()`` trains
        without a browser and returns the history, ``.runs`` keeps the results.

    Raises:
        ValueError: an unknown type, an LR outside ``lr_range``, or a warmup
            that is not shorter than the run.
        TypeError: a keyword that ``short_run`` does not take (named, with the
            accepted ones).
    """
    return LRTuner(
        types,
        lr=lr,
        lr_range=lr_range,
        warmup_steps=warmup_steps,
        scheduler=scheduler,
        **run_kwargs,
    )
