"""Scheduling the term weights of a :class:`~stabletrain.losses.CombinedLoss` (from ``fit``:
:class:`LossWeightCallback`)."""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Mapping
from typing import Any

from .callbacks import Callback, TrainContext
from .checks import check_choice, check_float, check_int, check_keys
from .losses import OVERLAP_TERMS, CombinedLoss
from .metrics import metric_mode

SCHEDULE_TYPES = ("linear", "cosine", "step", "loss_balanced", "performance")
_ALIASES = {"adaptive": "loss_balanced"}  # deprecated name -> schedule
_METRIC_DRIVEN = ("loss_balanced", "performance")  # stepped per epoch, with metrics
_STATE = ("params", "start", "end", "weights", "progress", "calls", "first_values", "averages")
_STATE += ("best", "bad_calls", "num_moves")
_PARAMS: dict[str, dict[str, Any]] = {
    "linear": {},
    "cosine": {},
    "step": {"num_steps": 4},
    "loss_balanced": {"momentum": 0.9, "strength": 1.0, "min_weight": 0.05},
    "performance": dict(monitor="val_dice", mode=None, patience=2, factor=0.5, min_delta=1e-4),
}


def _deprecated(message: str) -> None:
    warnings.warn(message, DeprecationWarning, stacklevel=3)


def default_end_weights(weights: Mapping[str, float]) -> dict[str, float]:
    """0.8 of the total weight on the overlap term(s), 0.2 on the rest (ValueError unless both)."""
    overlap = [k for k in weights if k in OVERLAP_TERMS]
    others = [k for k in weights if k not in OVERLAP_TERMS]
    if not overlap or not others:
        need = f"the default end weights need an overlap term {OVERLAP_TERMS} and another term"
        raise ValueError(f"{need}; the loss has {tuple(weights)}: pass end={{key: weight, ...}}")
    scale = sum(weights.values()) or 1.0
    to_overlap, to_other = scale * 0.8 / len(overlap), scale * 0.2 / len(others)
    return {k: to_overlap if k in OVERLAP_TERMS else to_other for k in weights}


class LossWeightScheduler:
    r"""Moves the weights of a :class:`~stabletrain.losses.CombinedLoss` in place:
    ``step(progress, metrics=None)`` sets them, with :math:`W = \sum w_0` and ``end``
    :math:`w_{end}` (default :func:`default_end_weights`):

    - ``linear``: :math:`w_0 + (w_{end} - w_0)p`; ``cosine``: the fraction is
      :math:`(1 - \cos \pi p)/2`; ``step``: :math:`\lfloor pK \rfloor / K` (``num_steps`` K = 4).
    - ``loss_balanced`` (formerly ``adaptive``): from the per-term values :math:`L_k` in
      ``metrics``, EMAs :math:`\bar L_k` (``momentum`` 0.9), :math:`r_k = \bar L_k / L_k^{first}`,
      weights :math:`\propto w_{0,k} r_k^s` (``strength`` s = 1) scaled to sum W, each at least
      ``min_weight`` × W (then rescaled to W); a non-finite value keeps the weights.
    - ``performance``: when ``metrics[monitor]`` (``val_dice``; ``mode`` given or from
      :func:`~stabletrain.metrics.metric_mode`) has not improved by ``min_delta`` for
      ``patience`` (2) calls, move ``factor`` (0.5) of the way to ``end``.

    The metric-driven two ignore ``metrics=None`` and raise ``ValueError`` naming what is missing
    from it. ``calls`` counts ``step`` calls; deprecated: the keyword ``type`` and the attributes
    ``type``/``num_steps`` (for ``schedule``/``calls``)."""

    def __init__(
        self,
        combined: CombinedLoss,
        schedule: str = "linear",
        *,
        end: Mapping[str, float] | None = None,
        **params: Any,
    ) -> None:
        if not isinstance(combined, CombinedLoss):
            raise TypeError(f"combined must be a CombinedLoss, got {type(combined).__name__}")
        if "type" in params:
            _deprecated("LossWeightScheduler(type=...) is deprecated; use schedule=...")
            schedule = params.pop("type")
        if (new := _ALIASES.get(schedule)) is not None:
            _deprecated(f"loss-weight schedule {schedule!r} is deprecated; use {new!r} (same rule)")
            schedule = new
        self.schedule = check_choice("schedule", schedule, SCHEDULE_TYPES)
        check_keys(f"the parameters of schedule {schedule!r}", params, _PARAMS[schedule])
        self.combined = combined
        self.params = p = {**_PARAMS[schedule], **params}
        if schedule == "step":
            check_int("num_steps", p["num_steps"], min=1)
        elif schedule == "loss_balanced":
            check_float("momentum", p["momentum"], min=0, max=1, high_open=True)
            check_float("strength", p["strength"], min=0)
            check_float("min_weight", p["min_weight"], min=0, max=1, high_open=True)
        elif schedule == "performance":
            p["mode"] = metric_mode(p["monitor"], p["mode"])
            check_int("patience", p["patience"], min=1)
            check_float("factor", p["factor"], min=0, max=1, low_open=True)
            check_float("min_delta", p["min_delta"], min=0, finite=False)
        self.start = combined.weights
        if end is None:
            self.end = default_end_weights(self.start)
        elif not isinstance(end, Mapping) or set(end) != set(self.start):
            raise ValueError(f"end needs a weight for every term {tuple(self.start)}, got {end!r}")
        else:
            self.end = {k: check_float(f"end[{k!r}]", end[k], min=0) for k in self.start}
        if not any(self.end.values()):
            raise ValueError(f"end weights must not all be 0 (loss 0, no gradient), got {end}")
        self.progress, self.calls = 0.0, 0
        self.first_values: dict[str, float] = {}  # loss_balanced state
        self.averages: dict[str, float] = {}
        self.best: float | None = None  # performance state
        self.bad_calls = self.num_moves = 0

    @property
    def weights(self) -> dict[str, float]:
        return self.combined.weights

    @property
    def num_steps(self) -> int:
        _deprecated("LossWeightScheduler.num_steps is deprecated; use .calls (the step calls)")
        return self.calls

    @property
    def type(self) -> str:
        _deprecated("LossWeightScheduler.type is deprecated; use .schedule")
        return self.schedule

    def _towards(self, base: Mapping[str, float], fraction: float) -> dict[str, float]:
        return {k: base[k] + (self.end[k] - base[k]) * fraction for k in base}

    def step(self, progress: float, metrics: Mapping[str, float] | None = None) -> None:
        """Update the loss weights for training progress ``progress`` in [0, 1]."""
        self.progress = check_float("progress", progress, min=0, max=1)
        self.calls += 1
        if metrics is not None and not isinstance(metrics, Mapping):
            raise TypeError(f"metrics must be a mapping or None, got {type(metrics).__name__}")
        p, k = self.progress, self.params.get("num_steps", 1)
        if self.schedule not in _METRIC_DRIVEN:
            fraction = {"linear": p, "cosine": (1 - math.cos(math.pi * p)) / 2}
            fraction["step"] = math.floor(p * k) / k
            self.combined.weights = self._towards(self.start, fraction[self.schedule])
        elif metrics is not None:
            (self._balance if self.schedule == "loss_balanced" else self._perform)(metrics)

    def _balance(self, metrics: Mapping[str, float]) -> None:
        if missing := [k for k in self.start if k not in metrics]:
            need = f"the per-term values {tuple(self.start)} in metrics; missing {missing}"
            raise ValueError(f"loss_balanced weighting needs {need}, got {sorted(metrics)}")
        momentum, strength = self.params["momentum"], self.params["strength"]
        for key in self.start:
            value = float(metrics[key])
            if not math.isfinite(value):
                return
            if key not in self.first_values:
                self.first_values[key] = max(value, 1e-12)
                self.averages[key] = value
            else:
                self.averages[key] = momentum * self.averages[key] + (1 - momentum) * value
        ratio = {k: max(self.averages[k], 0.0) / self.first_values[k] for k in self.start}
        scores = {k: self.start[k] * ratio[k] ** strength for k in self.start}
        total_start, norm = sum(self.start.values()), sum(scores.values())
        if norm <= 0:
            return
        floor = self.params["min_weight"] * total_start
        raw = {k: max(floor, total_start * s / norm) for k, s in scores.items()}
        scale = total_start / sum(raw.values())
        self.combined.weights = {k: v * scale for k, v in raw.items()}

    def _perform(self, metrics: Mapping[str, float]) -> None:
        monitor, min_delta = self.params["monitor"], self.params["min_delta"]
        if monitor not in metrics:
            missing = f"not in metrics {sorted(metrics)} (set monitor=...)"
            raise ValueError(f"performance weighting monitors {monitor!r}, {missing}")
        value, best = float(metrics[monitor]), self.best
        sign = 1.0 if self.params["mode"] == "max" else -1.0
        gain = math.inf if best is None else sign * (value - best)
        if math.isfinite(value) and gain > min_delta:
            self.best, self.bad_calls = value, 0
            return
        self.bad_calls += 1
        if self.bad_calls >= self.params["patience"]:
            self.combined.weights = self._towards(self.combined.weights, self.params["factor"])
            self.bad_calls = 0
            self.num_moves += 1

    def state_dict(self) -> dict[str, Any]:
        """Everything, including the loss's current weights."""
        return {"type": self.schedule, **{k: copy.copy(getattr(self, k)) for k in _STATE}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict` (also one saved under the former names)."""
        if not isinstance(state, Mapping):
            raise TypeError(f"state must be a mapping (a state_dict()), got {type(state).__name__}")
        if _ALIASES.get(other := state.get("type"), other) != self.schedule:
            raise ValueError(f"state is for a {other!r} schedule, this one is {self.schedule!r}")
        if "calls" not in state and "num_steps" in state:  # the former name
            state = {**state, "calls": state["num_steps"]}
        if missing := [k for k in _STATE if k not in state]:
            raise ValueError(f"state lacks {missing}: not a LossWeightScheduler.state_dict()")
        self.combined.weights = state["weights"]
        for key in (k for k in _STATE if k != "weights"):  # the weights are the loss's
            setattr(self, key, copy.copy(state[key]))

    def __repr__(self) -> str:
        weights = ", ".join(f"{k}={v:.3g}" for k, v in self.weights.items())
        return f"LossWeightScheduler(schedule={self.schedule!r}, weights={{{weights}}})"


class LossWeightCallback(Callback):
    """Drives a :class:`LossWeightScheduler` from :func:`stabletrain.loop.fit`.

    ``linear``/``cosine``/``step`` are stepped after every optimizer step with
    ``ctx.progress``; ``loss_balanced``/``performance`` after every epoch with the epoch's
    metrics plus each term's training mean over the epoch (from ``combined.last_values``).
    ``history`` holds the weights after each update, ``{key: [...]}``."""

    def __init__(self, scheduler: LossWeightScheduler) -> None:
        if not isinstance(scheduler, LossWeightScheduler):
            kind = type(scheduler).__name__
            raise TypeError(f"scheduler must be a LossWeightScheduler, got {kind}")
        self.scheduler = scheduler
        self.history: dict[str, list[float]] = {k: [] for k in scheduler.weights}
        self._sums: dict[str, float] = {}
        self._count = 0
        self.metric_driven = scheduler.schedule in _METRIC_DRIVEN  # else stepped per optimizer step

    def state_dict(self) -> dict[str, Any]:
        return {"scheduler": self.scheduler.state_dict(), "history": copy.deepcopy(self.history)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.scheduler.load_state_dict(state["scheduler"])
        self.history = {k: list(v) for k, v in state["history"].items()}

    def _record(self) -> None:
        for key, value in self.scheduler.weights.items():
            self.history[key].append(value)

    def on_fit_start(self, ctx: TrainContext) -> None:
        self._record()

    def on_epoch_start(self, ctx: TrainContext) -> None:
        self._sums, self._count = {}, 0

    def on_step_end(self, ctx: TrainContext, record: dict[str, Any]) -> None:
        if values := self.scheduler.combined.last_values:
            for key, value in values.items():
                self._sums[key] = self._sums.get(key, 0.0) + float(value)
            self._count += 1
        if not self.metric_driven:
            self.scheduler.step(ctx.progress)
            self._record()

    def on_epoch_end(self, ctx: TrainContext, metrics: dict[str, Any]) -> None:
        if not self.metric_driven:
            return
        merged = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
        if self._count:
            merged.update({k: s / self._count for k, s in self._sums.items()})
        self.scheduler.step(ctx.progress, merged)
        self._record()
