"""Notebook widgets for tuning LR schedules: :func:`schedule_explorer` (sliders for a type's
parameters, its LR per step, pinned curves) and :func:`lr_tuner` (peak LR, warmup and type;
*train* runs ``short_run`` and overlays its loss). Both work headless (``.curves()``,
``.train()``, ``.figure``); the one figure is redrawn in place into a PNG image widget.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import ipywidgets as w
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .checks import check_choice, check_float, check_int
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


def _param_specs(kind: str, total_steps: int) -> dict[str, tuple]:
    """Controls for a scheduler type and a run of ``total_steps``: ``(kind, default, low, high,
    step)``, ``("bool", default)`` or ``("choice", default, options)``; kind ``log`` is a
    log slider over the exponents ``low..high``."""
    t = total_steps
    warmup = {"warmup_steps": ("int", 0, 0, t - 1, 1)}
    floor = {"min_lr_ratio": ("float", 0.0, 0.0, 0.5, 0.01)}
    factor = {"factor": ("float", 0.5, 0.05, 0.95, 0.05)}
    quarter = ("int", max(1, t // 4), 1, t, 1)
    specs = {
        "constant": warmup,
        "warmup_cosine": {**warmup, **floor},
        "cosine_restarts": {
            **warmup,
            "first_cycle_steps": quarter,
            "t_mult": ("float", 1.0, 1.0, 3.0, 0.1),
            "m_mul": ("float", 1.0, 0.1, 1.0, 0.05),
            **floor,
        },
        "onecycle": {
            "pct_start": ("float", 0.3, 0.05, 0.95, 0.05),
            "div_factor": ("log", 25.0, 0.0, 3.0, 0.1),
            "final_div_factor": ("log", 1e4, 0.0, 5.0, 0.1),
            "anneal_strategy": ("choice", "cos", ("cos", "linear")),
            "three_phase": ("bool", False),
        },
        "polynomial": {**warmup, "power": ("float", 1.0, 0.1, 4.0, 0.1), **floor},
        "exponential": {
            **warmup,
            "gamma": ("float", 0.9, 0.5, 0.999, 0.001),
            "decay_steps": ("int", max(1, t // 20), 1, t, 1),
            "staircase": ("bool", False),
            **floor,
        },
        "step": {**warmup, "step_size": quarter, "gamma": ("float", 0.5, 0.05, 1.0, 0.05), **floor},
        # metric-driven: the LR after warmup depends on the metrics a run reports
        "plateau": {**warmup, **factor, "patience": ("int", 1, 0, 10, 1)},
        "adaptive": {
            **warmup,
            **factor,
            "patience": ("int", 10, 1, 50, 1),
            "spike_threshold": ("float", 1.0, 0.1, 5.0, 0.1),
        },
    }
    return specs.get(kind, {})


def _available(wanted: Sequence[str] | None) -> tuple[str, ...]:
    if wanted is None:
        return SCHEDULER_TYPES
    wanted = tuple(check_choice("types", t, SCHEDULER_TYPES) for t in wanted)
    if not wanted:
        raise ValueError(f"types must be a non-empty subset of {SCHEDULER_TYPES}, got ()")
    return wanted


def _make_control(name: str, spec: tuple) -> w.ValueWidget:
    kind, default, *rest = spec
    if kind == "bool":
        return w.Checkbox(value=default, description=name, indent=False)
    common = {"description": name, "style": {"description_width": "initial"}}
    common.update(value=default, layout=w.Layout(width="340px"))
    if kind == "choice":
        return w.Dropdown(options=rest[0], **common)
    low, high, step = rest
    common.update(min=low, max=high, step=step, continuous_update=False)
    if kind == "int":
        return w.IntSlider(**{**common, "min": int(low), "max": int(high)})
    if kind == "log":
        return w.FloatLogSlider(base=10, readout_format=".3g", **common)
    return w.FloatSlider(readout_format=".3g", **common)


def describe_schedule(config: Mapping[str, Any]) -> str:
    """A short label for a schedule config, e.g. ``"step(step_size=25, gamma=0.5)"``."""
    shown = {k: v for k, v in config.items() if k not in ("type", "total_steps")}
    parts = (f"{k}={f'{v:.3g}' if isinstance(v, float) else v}" for k, v in shown.items())
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
    """``{label: [lr at step 0, …, total_steps − 1]}`` for ``build_scheduler`` configs.

    ``configs`` is ``{label: config}`` or a list (labelled by :func:`describe_schedule`);
    ``total_steps`` is given to each config without its own; ``metrics`` (``{step: value}``)
    is reported right after those steps to the metric-driven types (as ``fit`` does).
    Raises ValueError for a bad config, ``total_steps < 2`` or a metric outside the run.
    """
    check_int("total_steps", total_steps, min=2)
    metrics = _check_metrics(metrics, total_steps)
    if not isinstance(configs, Mapping):
        configs = {describe_schedule(c): c for c in configs}
    return {k: lr_curve(c, total_steps, base_lr, metrics=metrics) for k, c in configs.items()}


def plot_schedules(curves: Mapping, *, ax: Axes | None = None, log: bool = False) -> Figure:
    """Deprecated: ``plot_lr(curves, ax=ax, log=log)`` (:func:`~stabletrain.plotting.plot_lr`)."""
    warnings.warn(
        "plot_schedules is deprecated; use stabletrain.plotting.plot_lr", DeprecationWarning, 2
    )
    return plot_lr(dict(curves), ax=ax, log=log)


class _Widget:
    """Displays as ``self.widget``; ``_render`` draws ``self.figure`` into ``self.image``."""

    def _render(self) -> Figure:
        self.figure.tight_layout()
        buffer = io.BytesIO()
        self.figure.savefig(buffer, format="png", dpi=90)
        self.image.value = buffer.getvalue()
        return self.figure

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)


class ScheduleExplorer(_Widget):
    """Sliders for a scheduler type's parameters and a plot of its LR per step.

    ``types``: the types offered (default all); ``base_lr``: the peak LR (1.0 plots
    fractions of it); ``metrics``: ``{step: value}`` reported to the metric-driven types and
    drawn on a second axis. Raises ValueError for an unknown type, ``total_steps < 2`` or a
    metric outside the run. ``controls``: ``{"type": dropdown, "<type>.<param>": slider,
    "log": checkbox}`` (setting a ``value`` redraws); ``pinned``: ``{label: lrs}``;
    ``figure``: redrawn in place; ``widget``: what a notebook displays.
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
        self.total_steps = check_int("total_steps", total_steps, min=2)
        self.metrics = _check_metrics(metrics, self.total_steps)
        self.base_lr = check_float("base_lr", base_lr, min=0, low_open=True)
        self.pinned: dict[str, list[float]] = {}
        self.controls: dict[str, w.ValueWidget] = {
            "type": _make_control("type", ("choice", self.types[0], self.types))
        }
        self._boxes: dict[str, w.VBox] = {}
        for kind in self.types:
            specs = _param_specs(kind, self.total_steps)
            sliders = [_make_control(n, spec) for n, spec in specs.items()]
            self.controls.update({f"{kind}.{n}": c for n, c in zip(specs, sliders)})
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
        controls = w.VBox([self.controls["type"], self._params, buttons])
        self.widget = w.HBox([controls, self.image], layout=w.Layout(flex_flow="row wrap"))
        self.update()

    def config(self) -> dict[str, Any]:
        """The controls' schedule as a ``build_scheduler`` mapping, with ``total_steps``."""
        kind = self.controls["type"].value
        specs = _param_specs(kind, self.total_steps)
        params = {n: self.controls[f"{kind}.{n}"].value for n in specs}
        return {"type": kind, **params, "total_steps": self.total_steps}

    def curves(self) -> dict[str, list[float]]:
        """The pinned curves and the current one (under ``"current"``)."""
        current = lr_curve(self.config(), self.total_steps, self.base_lr, metrics=self.metrics)
        return {**self.pinned, "current": current}

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
        self.ax.plot(np.arange(len(current)), current, "k-", lw=2, label="current")
        self.ax.set(xlabel="step", ylabel="learning rate")
        self.ax.set_title(describe_schedule(self.config()), fontsize=9)
        self.ax.set_yscale("log" if self.controls["log"].value else "linear")
        if curves:  # the pinned ones: below the plot, where they hide no curve
            self.ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2))
        self.figure.set_size_inches(7, 3.4 + 0.14 * len(curves))
        self.clear_button.disabled = not self.pinned
        ax = self.metric_ax
        if ax is not None:
            ax.clear()
            ax.yaxis.tick_right()  # clear() forgets that this is the right-hand twin
            ax.yaxis.set_label_position("right")
            steps, values = np.array(list(self.metrics.items()), dtype=float).T
            ok = np.isfinite(values)
            ax.plot(steps[ok], values[ok], "o:", color="C3", ms=4, label="metric")
            if (~ok).any():
                top = float(values[ok].max()) if ok.any() else 1.0
                bad = [top] * int((~ok).sum())
                ax.plot(steps[~ok], bad, "x", color="C3", mew=2, ms=9, label="non-finite metric")
            ax.set_ylabel("reported metric", color="C3")
            ax.legend(fontsize=7, loc="lower left", framealpha=0.5)
        return self._render()


schedule_explorer = ScheduleExplorer

_TUNER_RUN = {"epochs": 2, "num_train": 128, "num_val": 32, "batch_size": 16}


class LRTuner(_Widget):
    """Tune peak LR, warmup and scheduler type by training short runs.

    Left: the LR per step of the next run; *train* runs ``short_run(lr=..., scheduler={type,
    warmup_steps, …}, **run_kwargs)`` (same seed and budget; default ``epochs=2,
    num_train=128, num_val=32, batch_size=16``) and overlays its smoothed loss. Raises
    ValueError for an unknown type, an LR outside ``lr_range`` or a warmup not shorter than
    the run; TypeError for a keyword ``short_run`` does not take. ``controls``: ``{"lr",
    "warmup_steps", "type"}``; ``button.click()`` trains; ``runs``: per run ``label``, ``lr``,
    ``scheduler``, ``history``, ``val_loss``, ``val_dice`` (last epoch); ``total_steps``.
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
        check_float("lr", lr, min=low, max=high)
        chosen = self.types[0] if scheduler is None else scheduler
        scheduler = check_choice("scheduler", chosen, self.types)
        accepted = sorted(set(short_run_arguments()) - {"lr", "scheduler", "return_model"})
        unknown = sorted(set(run_kwargs) - set(accepted))
        if unknown:
            raise TypeError(
                f"lr_tuner got unknown argument(s) {unknown}; besides its own it takes "
                f"short_run's: {accepted}"
            )
        self.run_kwargs = {**_TUNER_RUN, **run_kwargs}
        accumulation = self.run_kwargs.get("accumulation_steps", 1)
        batches = math.ceil(self.run_kwargs["num_train"] / self.run_kwargs["batch_size"])
        self.total_steps = self.run_kwargs["epochs"] * batches // accumulation
        if self.total_steps < 2:
            raise ValueError(f"a run must have at least 2 optimizer steps, got {self.total_steps}")
        check_int("warmup_steps", warmup_steps, min=0, max=self.total_steps - 1)
        self.runs: list[dict[str, Any]] = []
        common = {"continuous_update": False, "style": {"description_width": "initial"}}
        log_lr = {"base": 10, "min": math.log10(low), "max": math.log10(high), "step": 0.05}
        warmup = {"min": 0, "max": self.total_steps - 1, "description": "warmup steps"}
        self.controls: dict[str, w.ValueWidget] = {
            "lr": w.FloatLogSlider(
                value=lr, description="peak LR", readout_format=".2e", **log_lr, **common
            ),
            "warmup_steps": w.IntSlider(value=warmup_steps, **warmup, **common),
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
        buttons = w.HBox([self.button, self.clear_button])
        self.widget = w.VBox([w.VBox([*self.controls.values(), buttons, self.status]), self.image])
        self.update()

    def scheduler_config(self) -> dict[str, Any]:
        """The next run's schedule: the type's defaults and the warmup slider (for ``onecycle``
        a warmup replaces ``pct_start``)."""
        kind = self.controls["type"].value
        specs = _param_specs(kind, self.total_steps)
        config = {"type": kind, **{name: spec[1] for name, spec in specs.items()}}
        warmup = self.controls["warmup_steps"].value
        if warmup > 0 or "warmup_steps" in config:  # onecycle: a warmup replaces pct_start
            config.pop("pct_start", None)
            config["warmup_steps"] = warmup
        return config

    def planned_lrs(self) -> list[float]:
        """The LR per step that the next run will start with (before any metric)."""
        return lr_curve(self.scheduler_config(), self.total_steps, self.controls["lr"].value)

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
        keys = ("val_loss", "val_dice")
        last = {k: history.epochs[k][-1] if history.epochs else math.nan for k in keys}
        run = {"label": label, "lr": lr, "scheduler": config, "history": history, **last}
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
        self.lr_ax.plot(self.planned_lrs(), "k-")
        title = f"next run: {describe_schedule(self.scheduler_config())}"
        self.lr_ax.set(xlabel="step", ylabel="learning rate", yscale="log", title=title)
        self.lr_ax.title.set_fontsize(8)
        self.loss_ax.clear()
        for run in self.runs:
            losses = run["history"].steps.get("loss", [])
            line = self.loss_ax.plot(ema(losses, 0.4), label=run["label"])[0]
            bad = run["history"].first_nonfinite_step()
            if bad is not None:
                y = next((v for v in reversed(losses[:bad]) if math.isfinite(v)), 1.0)
                self.loss_ax.plot([bad], [y], "x", mew=2, markersize=9, color=line.get_color())
        labels = {"xlabel": "step", "ylabel": "training loss (smoothed)", "yscale": "log"}
        self.loss_ax.set(**labels, title="runs (same seed and budget)")
        if self.runs:
            self.loss_ax.legend(fontsize=7)
        return self._render()


lr_tuner = LRTuner
