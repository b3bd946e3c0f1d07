"""Notebook widgets for learning rates: :func:`schedule_explorer` (a schedule's LR per step under
sliders) and :func:`lr_tuner` (:mod:`stabletrain.tuning` on any model under controls). Headless,
their methods do the work; the one figure is redrawn in place into a PNG image widget."""

from __future__ import annotations

import html
import io
import math
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import ipywidgets as w
import numpy as np
from IPython.display import display
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from . import tuning
from .checks import check_choice, check_float, check_int
from .lr_finder import SUGGESTION_RULES, LRRangeTestResult, ema
from .plotting import plot_lr
from .schedulers import SCHEDULER_TYPES, lr_curve
from .tuning import SweepResult, TuningRun, as_list, lr_sweep, range_test, tuning_run

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
    """A type's controls: ``(kind, default, low, high, step)`` (``log``: over exponents),
    ``("bool", default)`` or ``("choice", default, options)``."""
    t = total_steps
    warmup = {"warmup_steps": ("int", 0, 0, t - 1, 1)}
    floor = {"min_lr_ratio": ("float", 0.0, 0.0, 0.5, 0.01)}
    factor = {"factor": ("float", 0.5, 0.05, 0.95, 0.05)}
    quarter = ("int", max(1, t // 4), 1, t, 1)
    restarts = {"t_mult": ("float", 1.0, 1.0, 3.0, 0.1), "m_mul": ("float", 1.0, 0.1, 1.0, 0.05)}
    spikes = {"spike_threshold": ("float", 1.0, 0.1, 5.0, 0.1)}
    specs = {
        "constant": warmup,
        "warmup_cosine": {**warmup, **floor},
        "cosine_restarts": {**warmup, "first_cycle_steps": quarter, **restarts, **floor},
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
        "adaptive": {**warmup, **factor, "patience": ("int", 10, 1, 50, 1), **spikes},
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
    """``{label: lr per step}`` of ``build_scheduler`` configs (``{label: config}`` or a list,
    labelled by :func:`describe_schedule`); ``metrics`` (``{step: value}``) go to the
    metric-driven types after those steps, as in ``fit``."""
    metrics = _check_metrics(metrics, check_int("total_steps", total_steps, min=2))
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
    """Displays as ``widget``; ``_render`` draws ``figure`` into ``image``."""

    def _add_type_controls(self, total_steps: int, skip: str = "") -> None:
        self._boxes: dict[str, w.VBox] = {}
        for kind in self.types:
            specs = {n: s for n, s in _param_specs(kind, total_steps).items() if n != skip}
            sliders = [_make_control(n, spec) for n, spec in specs.items()]
            self.controls.update({f"{kind}.{n}": c for n, c in zip(specs, sliders)})
            self._boxes[kind] = w.VBox(sliders)
        self._params = w.Box([self._boxes[self.controls["type"].value]])
        for control in self.controls.values():
            control.observe(self._on_change, names="value")

    def _values(self, kind: str) -> dict[str, Any]:
        p = f"{kind}."
        return {k.removeprefix(p): c.value for k, c in self.controls.items() if k.startswith(p)}

    def _on_change(self, change: Mapping[str, Any]) -> None:
        if change["owner"] is self.controls["type"]:
            self._params.children = [self._boxes[change["new"]]]
        self.update()

    def _render(self) -> Figure:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # a crowded panel keeps its layout
            self.figure.tight_layout()
        buffer = io.BytesIO()
        self.figure.savefig(buffer, format="png", dpi=90)
        self.image.value = buffer.getvalue()
        return self.figure

    def _ipython_display_(self) -> None:
        display(self.widget)


def _button(label: str, action: Callable[[], Any], **options: Any) -> w.Button:
    button = w.Button(description=label, **options)
    button.on_click(lambda _button: action())
    return button


class ScheduleExplorer(_Widget):
    """Sliders for a scheduler type's parameters and a plot of its LR per step (at peak
    ``base_lr``); ``metrics`` (``{step: value}``) go to the metric-driven types and a second axis.
    ``controls``: ``{"type", "<type>.<param>", "log"}`` (setting a ``value`` redraws);
    ``pinned``: ``{label: lrs}``."""

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
        self.controls = {
            "type": _make_control("type", ("choice", self.types[0], self.types)),
            "log": w.Checkbox(value=log, description="log scale", indent=False),
        }
        self.pin_button = _button("pin curve", self.pin, tooltip="keep this curve")
        self.clear_button = _button("clear pinned", self.clear)
        self.image = w.Image(format="png")
        self.figure = Figure(figsize=(7, 3.4))
        self.ax = self.figure.add_subplot()
        self.metric_ax = self.ax.twinx() if self.metrics else None
        self._add_type_controls(self.total_steps)
        buttons = w.HBox([self.controls["log"], self.pin_button, self.clear_button])
        controls = w.VBox([self.controls["type"], self._params, buttons])
        self.widget = w.HBox([controls, self.image], layout=w.Layout(flex_flow="row wrap"))
        self.update()

    def config(self) -> dict[str, Any]:
        """The controls' schedule as a ``build_scheduler`` mapping, with ``total_steps``."""
        kind = self.controls["type"].value
        return {"type": kind, **self._values(kind), "total_steps": self.total_steps}

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
        if (ax := self.metric_ax) is not None:
            ax.clear()
            ax.yaxis.tick_right()  # clear() forgets that this is the right-hand twin
            ax.yaxis.set_label_position("right")
            steps, values = np.array(list(self.metrics.items()), dtype=float).T
            ok = np.isfinite(values)
            ax.plot(steps[ok], values[ok], "o:", color="C3", ms=4, label="metric")
            if (~ok).any():
                top = np.full((~ok).sum(), values[ok].max() if ok.any() else 1.0)
                ax.plot(steps[~ok], top, "x", color="C3", mew=2, ms=9, label="non-finite metric")
            ax.set_ylabel("reported metric", color="C3")
            ax.legend(fontsize=7, loc="lower left", framealpha=0.5)
        return self._render()


schedule_explorer = ScheduleExplorer


class LRTuner(_Widget):
    """Tune peak LR, warmup, schedule and clipping on *your* model with short seeded runs of
    :func:`~stabletrain.tuning.tuning_run` (``steps`` each, default two epochs; ``model_fn()``
    builds each run's model). A button runs its method in a thread; headless, call the methods.
    ``controls``: ``{"lr", "warmup_steps", "type", "<type>.<param>", "max_grad_norm" (0 = off),
    "seeds", "rule"}``; ``buttons``: ``{"run", "sweep", "range test", "use suggestion", "apply",
    "cancel", "clear"}``."""

    def __init__(
        self,
        model_fn: Callable[[], Any],
        train_loader: Any,
        val_loader: Any = None,
        *,
        loss_fn: Callable | None = None,
        optimizer_fn: Callable | None = None,
        metrics: Mapping[str, Any] | None = None,
        monitor: str | None = None,
        batch_fn: Callable | None = None,
        device: Any = None,
        steps: int | None = None,
        seeds: Sequence[int] = (0,),
        lr: float = 1e-3,
        lr_range: tuple[float, float] = (1e-5, 1.0),
        warmup_steps: int = 0,
        types: Sequence[str] | None = None,
        schedule: str | None = None,
        max_grad_norm: float | None = None,
    ) -> None:
        tuning._check_model_fn(model_fn)
        self.steps = check_int("steps", 2 * len(train_loader) if steps is None else steps, min=2)
        low, high = lr_range
        if not 0 < low < high:
            raise ValueError(f"lr_range must be (low, high) with 0 < low < high, got {lr_range}")
        check_float("lr", lr, min=low, max=high)
        check_int("warmup_steps", warmup_steps, min=0, max=self.steps - 1)
        self.types = _available(types)
        schedule = self.types[0] if schedule is None else schedule
        schedule = check_choice("schedule", schedule, self.types)
        seeds = as_list(seeds)
        if not seeds or any(check_int("seeds", s, min=0) < 0 for s in seeds):
            raise ValueError(f"seeds must be a non-empty sequence of ints >= 0, got {seeds!r}")
        self.seed_pool = [*seeds, *range(max(seeds) + 1, max(seeds) + 6)]
        self.lr_range = (float(low), float(high))
        self.task = {"model_fn": model_fn, "train_loader": train_loader, "val_loader": val_loader}
        self.options = dict(loss_fn=loss_fn, optimizer_fn=optimizer_fn, metrics=metrics)
        self.options |= dict(monitor=monitor, batch_fn=batch_fn, device=device)
        self.runs: list[list[TuningRun]] = []  # one list (its seeds) per run() call
        self.sweep_result = self.range_result = self._panel = self._thread = self.error = None
        self._stop = threading.Event()
        n, clip, last = len(seeds), max_grad_norm or 0.0, self.steps - 1
        self.controls: dict[str, w.ValueWidget] = {
            "type": w.Dropdown(options=self.types, value=schedule, description="schedule"),
            "rule": w.Dropdown(options=SUGGESTION_RULES, description="suggestion rule"),
            "lr": _make_control("peak LR", ("log", lr, math.log10(low), math.log10(high), 0.05)),
            "warmup_steps": _make_control("warmup steps", ("int", warmup_steps, 0, last, 1)),
            "max_grad_norm": _make_control("clip norm (0 = off)", ("float", clip, 0.0, 5.0, 0.05)),
            "seeds": _make_control("seeds", ("int", n, 1, max(5, n), 1)),
        }
        self.controls["lr"].readout_format = ".2e"
        self.controls["max_grad_norm"].readout_format = ".2f"
        work = [self.run, self.sweep, self.range_test, self.use_suggestion, self.apply]
        actions = [*(partial(self._in_background, f) for f in work), self.cancel, self.clear]
        names = ("run", "sweep", "range test", "use suggestion", "apply", "cancel", "clear")
        self.buttons = {name: _button(name, action) for name, action in zip(names, actions)}
        self.buttons["run"].button_style = "primary"
        self._busy(False)
        style = {"description_width": "initial"}
        self.progress = w.IntProgress(0, 0, 1, description="progress", style=style)
        self.status = w.Label(f"{self.steps} steps per run")
        self.yaml_box = w.HTML()
        self.image = w.Image(format="png")
        self.figure = Figure(figsize=(12, 6.4))
        self.axes = self.figure.subplots(2, 3).ravel()
        self._add_type_controls(self.steps, skip="warmup_steps")
        left = [*(self.controls[k] for k in ("lr", "warmup_steps", "type")), self._params]
        left += [self.controls[k] for k in ("max_grad_norm", "seeds", "rule")]
        rows = [w.HBox(list(self.buttons.values())[i : i + 4]) for i in (0, 4)]
        right = [*rows, self.progress, self.status, self.yaml_box]
        self.widget = w.VBox([w.HBox([w.VBox(left), w.VBox(right)]), self.image])
        self.update()

    def schedule(self) -> dict[str, Any]:
        """The next run's ``build_scheduler`` mapping but ``total_steps`` (for ``onecycle``, a
        warmup replaces ``pct_start``)."""
        kind, warmup = self.controls["type"].value, self.controls["warmup_steps"].value
        config = {"type": kind, **self._values(kind)}
        if warmup > 0 or "warmup_steps" in _param_specs(kind, self.steps):
            config.pop("pct_start", None)
            config["warmup_steps"] = warmup
        return config

    def _settings(self, *skip: str) -> dict[str, Any]:
        clip = float(self.controls["max_grad_norm"].value) or None
        hooks = {"should_stop": self._stop.is_set, "on_step": self._tick}
        given = {**self.task, "steps": self.steps, "max_grad_norm": clip, **self.options, **hooks}
        return {k: v for k, v in given.items() if k not in skip}

    def _seeds(self, seeds: Sequence[int] | None) -> list[int]:
        return list(seeds) if seeds is not None else self.seed_pool[: self.controls["seeds"].value]

    def _tick(self, _step: int = 0, _record: Any = None) -> None:
        self.progress.value = min(self.progress.max, self.progress.value + 1)

    def _begin(self, total: int, what: str) -> None:
        self._stop.clear()
        self.progress.max, self.progress.value = max(1, total), 0
        self.status.value = f"{what}…"

    def _done(self, status: str, panel: str) -> None:
        self.status.value, self._panel = status, panel
        self.update()

    def run(self, seeds: Sequence[int] | None = None) -> list[TuningRun]:
        """One run per seed at the controls' settings; kept in ``runs`` and drawn."""
        seeds = self._seeds(seeds)
        self._begin(len(seeds) * self.steps, f"training {len(seeds)} seed(s)")
        lr = float(self.controls["lr"].value)
        options = dict(lr=lr, schedule=self.schedule(), **self._settings())
        runs = [tuning_run(seed=seed, **options) for seed in seeds if not self._stop.is_set()]
        self.runs.append(runs)
        ok = [r.final_metric for r in runs if math.isfinite(r.final_metric)]
        mean = f"mean final {runs[0].monitor} {sum(ok) / len(ok):.4g}" if ok else "no finite result"
        diverged = f"{sum(r.diverged_step is not None for r in runs)}/{len(runs)} diverged"
        cancelled = " (cancelled)" if self._stop.is_set() else ""
        self._done(f"lr={lr:.3g}: {mean}; {diverged}{cancelled}", self._panel or "runs")
        return runs

    def sweep(
        self,
        lrs: Sequence[float] | None = None,
        warmups: Sequence[int] | None = None,
        seeds: Sequence[int] | None = None,
    ) -> SweepResult:
        """:func:`~stabletrain.tuning.lr_sweep` at the controls' settings; default LRs: the peak
        LR × 10^(−1 … 1) in half decades within ``lr_range``, warmups: 0 and the slider's (or a
        quarter of the run)."""
        lr, low, high = self.controls["lr"].value, *self.lr_range
        lrs = as_list(lrs) or [x for x in lr * np.logspace(-1, 1, 5) if low <= x <= high]
        quarter = self.controls["warmup_steps"].value or self.steps // 4
        warmups = as_list(warmups) if warmups is not None else sorted({0, quarter})
        seeds = self._seeds(seeds)
        self._begin(len(lrs) * len(warmups) * len(seeds) * self.steps, "sweeping")
        schedule = {k: v for k, v in self.schedule().items() if k != "warmup_steps"}
        options = dict(lrs=[float(x) for x in lrs], warmups=warmups, seeds=seeds, schedule=schedule)
        self.sweep_result = result = lr_sweep(**options, **self._settings())
        best = result.best
        found = f"best lr={best['lr']:.3g}, warmup {best['warmup_steps']}" if best else ""
        self._done(f"sweep of {len(result.runs)} runs: {found or 'no stable point'}", "sweep")
        return result

    def range_test(self, **kwargs: Any) -> LRRangeTestResult:
        """:func:`~stabletrain.tuning.range_test` over ``lr_range`` (``kwargs``, num_iters=50)."""
        self._begin(1, "running the range test")
        skip = ("val_loader", "steps", "metrics", "monitor", "should_stop", "on_step")
        options = self._settings(*skip) | {"start_lr": self.lr_range[0], "end_lr": self.lr_range[1]}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # no descent: shown as no suggestion
            self.range_result = range_test(**options | {"num_iters": 50} | kwargs)
        self.progress.value = 1
        rule = self.controls["rule"].value
        self._done(f"range test: {rule} suggests {self.suggestion():.3g}", "range")
        return self.range_result

    def suggestion(self, rule: str | None = None) -> float:
        """The range test's suggestion by ``rule`` (default: the rule control's); ``nan`` before."""
        if self.range_result is None:
            return math.nan
        return self.range_result.suggest(rule or self.controls["rule"].value)

    def use_suggestion(self, rule: str | None = None) -> float:
        """Set the peak LR control to :meth:`suggestion` (running the range test if needed)."""
        if self.range_result is None:
            self.range_test()
        lr = self.suggestion(rule)
        if not math.isfinite(lr):
            raise ValueError("the range test found no descent, so there is no suggestion")
        self.controls["lr"].value = min(max(lr, self.lr_range[0]), self.lr_range[1])
        return lr

    def config(self) -> dict[str, Any]:
        """The chosen settings as ``build_training``'s ``optimizer`` and ``scheduler`` mappings."""
        clip = self._settings()["max_grad_norm"]
        optimizer = {"lr": float(self.controls["lr"].value)}
        optimizer |= {"gradient_clipping_by_norm": clip} if clip else {}
        return {"optimizer": optimizer, "scheduler": {**self.schedule(), "total_steps": self.steps}}

    def yaml(self) -> str:
        """:meth:`config` as YAML, for a file in ``configs/``."""
        import yaml

        return yaml.safe_dump(self.config(), sort_keys=False)

    def apply(self) -> dict[str, Any]:
        """:meth:`config`, also shown as YAML under the buttons."""
        self.yaml_box.value = f"<pre>{html.escape(self.yaml())}</pre>"
        self.status.value = "configuration below: build_training(model, tuner.config())"
        return self.config()

    def cancel(self) -> None:
        """Stop the run or sweep in progress after its current step."""
        self._stop.set()
        self.status.value = "cancelling…"

    def clear(self) -> None:
        """Forget the runs, the sweep and the range test."""
        self.runs.clear()
        self.sweep_result = self.range_result = self._panel = None
        self.update()

    def wait(self) -> None:
        """Block until a button's work has finished."""
        if self._thread is not None:
            self._thread.join()

    def _busy(self, busy: bool) -> None:  # while busy only cancel is enabled
        for name, button in self.buttons.items():
            button.disabled = busy != (name == "cancel")

    def _in_background(self, work: Callable[[], Any]) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self.error = None
        self._busy(True)

        def target() -> None:
            try:
                work()
            except Exception as error:  # shown, and kept for whoever drives it headless
                self.error = error
                self.status.value = f"{type(error).__name__}: {error}"
            finally:
                self._busy(False)

        self._thread = threading.Thread(target=target, daemon=True)
        self._thread.start()

    def update(self) -> Figure:
        """Redraw every panel in place and return the figure."""
        lr_ax, loss_ax, metric_ax, norm_ax, clip_ax, last_ax = self.axes
        for ax in self.axes:
            ax.clear()
        schedule = {**self.schedule(), "total_steps": self.steps}
        lr_ax.plot(lr_curve(schedule, self.steps, self.controls["lr"].value), "k-")
        for i, runs in enumerate(self.runs):
            color = f"C{i % 10}"
            for k, run in enumerate(runs):
                label = f"lr={run.lr:.3g}, warmup {run.warmup_steps}" if k == 0 else None
                losses, n = run.history.steps.get("loss", []), run.history.num_steps
                loss_ax.plot(ema(losses, 0.3), color=color, alpha=0.7, label=label)
                if run.diverged_step is not None:
                    y = next((v for v in reversed(losses) if math.isfinite(v)), 1.0)
                    loss_ax.plot([run.diverged_step], [y], "x", color=color, mew=2, ms=9)
                column = run.history.epochs.get(run.monitor, [])
                per_epoch = max(1, math.ceil(n / max(1, len(column))))
                x = [min((e + 1) * per_epoch, n) for e in range(len(column))]
                metric_ax.plot(x, column, "o-", color=color, alpha=0.7)
                norm_ax.plot(run.history.steps.get("grad_norm", []), color=color, alpha=0.6)
            clip_ax.bar(i, sum(r.clipped_fraction for r in runs) / len(runs), color=color)
        monitor = self.runs[0][0].monitor if self.runs and self.runs[0] else "monitored metric"
        panels = (  # title, y label and y scale over the steps
            (f"next run: {describe_schedule(schedule)}", "learning rate", "log"),
            ("runs (✕: diverged)", "training loss (smoothed)", "log"),
            (f"{monitor} at each epoch's end", monitor, "linear"),
            ("gradient norm", "gradient norm (before clipping)", "log"),
            ("clipping (mean over seeds)", "fraction of steps clipped", "linear"),
        )
        for ax, (title, ylabel, yscale) in zip(self.axes, panels):
            ax.set(xlabel="step", ylabel=ylabel, yscale=yscale)
            ax.set_title(title, fontsize=8 if ax is lr_ax else 9)
        clip_ax.set(xlabel="run", ylim=(0, 1))
        if clip := self._settings()["max_grad_norm"]:
            norm_ax.axhline(clip, color="k", ls="--", lw=1, label=f"clip at {clip:g}")
        if self.runs:
            loss_ax.legend(fontsize=7)
        if self._panel == "sweep" and self.sweep_result is not None:
            self.sweep_result.plot(ax=last_ax, suggestion=self.suggestion())
        elif self._panel == "range" and self.range_result is not None:
            self.range_result.plot(ax=last_ax)
            rule, chosen = self.controls["rule"].value, self.suggestion()
            if math.isfinite(chosen):
                last_ax.axvline(chosen, color="C4", ls=":", lw=2, label=f"{rule}: {chosen:.2g}")
                last_ax.legend(fontsize=7)
        else:  # (clear() above turned the axis back on)
            last_ax.text(
                0.5, 0.5, "press sweep or range test", ha="center", transform=last_ax.transAxes
            )
            last_ax.set_axis_off()
        return self._render()


lr_tuner = LRTuner
