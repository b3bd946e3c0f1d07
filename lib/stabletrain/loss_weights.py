"""Scheduling the term weights of a :class:`~stabletrain.losses.CombinedLoss`.

A combined loss such as ``0.5 dice + 0.5 bce`` often trains best when the
pixel-wise term (BCE, focal) dominates early — it gives every pixel a
gradient — and the overlap term (Dice, Jaccard, Tversky), which measures what
we evaluate, dominates late. :class:`LossWeightScheduler` moves the weights
between steps; :class:`LossWeightCallback` drives it from :func:`stabletrain.training.fit`.

Schedules, with :math:`w_0` the weights at construction, :math:`w_{end}` the
target weights and :math:`p \\in [0, 1]` the training progress:

========================  ==================================================================
``schedule``              weights after ``step(p, metrics)``
========================  ==================================================================
``linear``                :math:`w_0 + (w_{end} - w_0)\\,p`
``cosine``                :math:`w_{end} + (w_0 - w_{end})\\,(1 + \\cos \\pi p)/2`
``step``                  :math:`w_0 + (w_{end} - w_0)\\,\\lfloor p\\,K \\rfloor / K` (``num_steps`` K = 4)
``loss_balanced``         from per-term values :math:`L_k` in ``metrics``: exponential moving
                          averages :math:`\\bar L_k` (``momentum`` 0.9), ratios
                          :math:`r_k = \\bar L_k / L_k^{first}`; weights
                          :math:`W\\,w_{0,k} r_k^{\\,s} / \\sum_j w_{0,j} r_j^{\\,s}` (``strength`` s = 1,
                          :math:`W = \\sum w_0`), each at least ``min_weight``·W — terms that
                          have improved least get more weight (loss balancing by relative
                          progress; formerly ``adaptive``, a name still accepted with
                          a ``DeprecationWarning``)
``performance``           when the monitored metric (``monitor`` = ``val_dice``, ``mode`` max)
                          has not improved by ``min_delta`` for ``patience`` (2) calls, move
                          a fraction ``factor`` (0.5) of the way from the current weights
                          to :math:`w_{end}`
========================  ==================================================================

``end`` defaults to 0.8 on the overlap term(s) — keys ``dice``, ``jaccard``,
``tversky`` — and 0.2 shared equally by the others (scaled to the total initial
weight W when that is not 1), so every schedule works with no further parameters.

Example:
    >>> from stabletrain.losses import build_loss
    >>> from stabletrain.loss_weights import LossWeightScheduler
    >>> loss = build_loss("balanced_segmentation")
    >>> sched = LossWeightScheduler(loss, "linear")
    >>> sched.step(0.5)
    >>> {k: round(v, 3) for k, v in loss.weights.items()}
    {'dice': 0.65, 'bce': 0.35}
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

from .callbacks import Callback, TrainContext
from .losses import OVERLAP_TERMS, CombinedLoss

__all__ = ["SCHEDULE_TYPES", "LossWeightCallback", "LossWeightScheduler"]

SCHEDULE_TYPES = ("linear", "cosine", "step", "loss_balanced", "performance")
_ALIASES = {"adaptive": "loss_balanced"}  # deprecated name -> schedule
_METRIC_DRIVEN = ("loss_balanced", "performance")  # stepped per epoch, with metrics
_PARAMS: dict[str, dict[str, Any]] = {
    "linear": {},
    "cosine": {},
    "step": {"num_steps": 4},
    "loss_balanced": {"momentum": 0.9, "strength": 1.0, "min_weight": 0.05},
    "performance": {
        "monitor": "val_dice",
        "mode": "max",
        "patience": 2,
        "factor": 0.5,
        "min_delta": 1e-4,
    },
}


def _require(ok: bool, name: str, accepted: str, value: Any) -> None:
    """The one argument check of this module: ``ValueError`` unless ``ok``."""
    if not ok:
        raise ValueError(f"{name} must be {accepted}, got {value!r}")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _canonical(schedule: Any) -> str:
    """The schedule name, with the deprecated alias ``adaptive`` replaced (and warned about)."""
    if schedule in _ALIASES:
        warnings.warn(
            f"loss-weight schedule {schedule!r} is deprecated; use {_ALIASES[schedule]!r} "
            "(the same rule)",
            DeprecationWarning,
            stacklevel=3,
        )
        return _ALIASES[schedule]
    return schedule


def default_end_weights(weights: Mapping[str, float]) -> dict[str, float]:
    """0.8 of the total weight on the overlap term(s), 0.2 shared by the others.

    Raises:
        ValueError: when the terms do not include both an overlap term
            (``dice``, ``jaccard``, ``tversky``) and another term.
    """
    overlap = [k for k in weights if k in OVERLAP_TERMS]
    others = [k for k in weights if k not in OVERLAP_TERMS]
    if not overlap or not others:
        raise ValueError(
            f"the default end weights need an overlap term {OVERLAP_TERMS} and another term; "
            f"the loss has {tuple(weights)}: pass end={{key: weight, ...}}"
        )
    scale = sum(weights.values()) or 1.0
    end = {k: scale * 0.8 / len(overlap) for k in overlap}
    end.update({k: scale * 0.2 / len(others) for k in others})
    return {k: end[k] for k in weights}


class LossWeightScheduler:
    """Moves the weights of a :class:`~stabletrain.losses.CombinedLoss` during training.

    See the module docstring for the rule of each schedule.

    Args:
        combined: the loss whose ``weights`` are changed in place.
        schedule: one of :data:`SCHEDULE_TYPES` (``"linear"``, ``"cosine"``, ``"step"``,
            ``"loss_balanced"``, ``"performance"``). Formerly the keyword ``type``, which
            still works, with a ``DeprecationWarning``.
        end: target weights ``{key: weight}`` for every term (default: 0.8 on the
            overlap term, the rest shared).
        **params: the schedule's parameters: ``step``: ``num_steps`` (K);
            ``loss_balanced``: ``momentum``, ``strength``, ``min_weight``;
            ``performance``: ``monitor``, ``mode``, ``patience``, ``factor``, ``min_delta``.

    ``step(progress, metrics=None)``: ``progress`` in [0, 1]; ``metrics`` a
    mapping that may hold validation metrics (``val_loss``, ``val_dice``) and
    per-term values (keys of the loss, as from ``components()``). ``loss_balanced``
    needs the term values and ``performance`` the monitored metric whenever
    ``metrics`` is given (a ``ValueError`` names what is missing); with
    ``metrics=None`` they leave the weights unchanged. ``calls`` counts the
    ``step`` calls.

    ``state_dict()`` / ``load_state_dict()`` save and restore everything,
    including the loss's current weights.
    """

    def __init__(
        self,
        combined: CombinedLoss,
        schedule: str = "linear",
        *,
        end: Mapping[str, float] | None = None,
        **params: Any,
    ) -> None:
        if not isinstance(combined, CombinedLoss):
            raise TypeError(
                f"combined must be a stabletrain.losses.CombinedLoss, got {type(combined).__name__}"
            )
        if "type" in params:  # the former name of `schedule`
            warnings.warn(
                "LossWeightScheduler(type=...) is deprecated; use schedule=...",
                DeprecationWarning,
                stacklevel=2,
            )
            schedule = params.pop("type")
        schedule = _canonical(schedule)
        if schedule not in SCHEDULE_TYPES:
            raise ValueError(f"schedule must be one of {SCHEDULE_TYPES}, got {schedule!r}")
        unknown = sorted(set(params) - set(_PARAMS[schedule]))
        if unknown:
            raise ValueError(
                f"unknown parameter(s) {unknown} for schedule {schedule!r}; accepted: "
                f"{tuple(_PARAMS[schedule]) or 'none'}"
            )
        self.combined = combined
        self.schedule = schedule
        self.params = {**_PARAMS[schedule], **params}
        self._check_params()
        self.start = combined.weights
        if end is None:
            self.end = default_end_weights(self.start)
        else:
            if not isinstance(end, Mapping) or set(end) != set(self.start):
                raise ValueError(
                    f"end must give a weight for every term {tuple(self.start)}, got {end!r}"
                )
            for key, value in end.items():
                if not _is_number(value):
                    raise TypeError(f"end[{key!r}] must be a number, got {value!r}")
                _require(
                    math.isfinite(value) and value >= 0, f"end[{key!r}]", "finite and >= 0", value
                )
            self.end = {k: float(end[k]) for k in self.start}
        self.progress = 0.0
        self.calls = 0  # step() calls so far
        # loss_balanced state
        self.first_values: dict[str, float] = {}
        self.averages: dict[str, float] = {}
        # performance state
        self.best: float | None = None
        self.bad_calls = 0
        self.num_moves = 0

    def _check_params(self) -> None:
        p = self.params
        if self.schedule == "step":
            k = p["num_steps"]
            _require(_is_int(k) and k >= 1, "num_steps", "an int >= 1", k)
        elif self.schedule == "loss_balanced":
            _require(0.0 <= p["momentum"] < 1.0, "momentum", "in [0, 1)", p["momentum"])
            _require(p["strength"] >= 0, "strength", ">= 0", p["strength"])
            _require(0.0 <= p["min_weight"] < 1.0, "min_weight", "in [0, 1)", p["min_weight"])
        elif self.schedule == "performance":
            _require(p["mode"] in ("min", "max"), "mode", "'min' or 'max'", p["mode"])
            patience = p["patience"]
            _require(_is_int(patience) and patience >= 1, "patience", "an int >= 1", patience)
            _require(0.0 < p["factor"] <= 1.0, "factor", "in (0, 1]", p["factor"])
            _require(p["min_delta"] >= 0, "min_delta", ">= 0", p["min_delta"])

    @property
    def weights(self) -> dict[str, float]:
        """The loss's current weights."""
        return self.combined.weights

    @property
    def num_steps(self) -> int:
        """Deprecated: the number of ``step`` calls, now :attr:`calls` (``params["num_steps"]``
        is the ``step`` schedule's K)."""
        warnings.warn(
            "LossWeightScheduler.num_steps is deprecated; use .calls (the number of step calls)",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.calls

    @property
    def type(self) -> str:
        """Deprecated: the schedule's name, now :attr:`schedule`."""
        warnings.warn(
            "LossWeightScheduler.type is deprecated; use .schedule",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.schedule

    def _interpolate(self, fraction: float) -> dict[str, float]:
        return {k: self.start[k] + (self.end[k] - self.start[k]) * fraction for k in self.start}

    def step(self, progress: float, metrics: Mapping[str, float] | None = None) -> None:
        """Update the loss weights for training progress ``progress`` in [0, 1]."""
        if not _is_number(progress):
            raise TypeError(f"progress must be a number in [0, 1], got {type(progress).__name__}")
        _require(0.0 <= progress <= 1.0, "progress", "in [0, 1]", progress)
        self.progress = float(progress)
        self.calls += 1
        if metrics is not None and not isinstance(metrics, Mapping):
            raise TypeError(f"metrics must be a mapping or None, got {type(metrics).__name__}")
        if self.schedule == "linear":
            self.combined.weights = self._interpolate(self.progress)
        elif self.schedule == "cosine":
            self.combined.weights = self._interpolate((1 - math.cos(math.pi * self.progress)) / 2)
        elif self.schedule == "step":
            k = self.params["num_steps"]
            self.combined.weights = self._interpolate(math.floor(self.progress * k) / k)
        elif self.schedule == "loss_balanced" and metrics is not None:
            self._balance(metrics)
        elif self.schedule == "performance" and metrics is not None:
            self._perform(metrics)

    def _balance(self, metrics: Mapping[str, float]) -> None:
        missing = [k for k in self.start if k not in metrics]
        if missing:
            raise ValueError(
                f"loss_balanced weighting needs the per-term values {tuple(self.start)} in metrics "
                f"(as from CombinedLoss.components); missing {missing}, got {sorted(metrics)}"
            )
        momentum = self.params["momentum"]
        for key in self.start:
            value = float(metrics[key])
            if not math.isfinite(value):
                return  # a non-finite term value carries no information; keep the weights
            if key not in self.first_values:
                self.first_values[key] = max(value, 1e-12)
                self.averages[key] = value
            else:
                self.averages[key] = momentum * self.averages[key] + (1 - momentum) * value
        strength = self.params["strength"]
        scores = {
            k: self.start[k] * (max(self.averages[k], 0.0) / self.first_values[k]) ** strength
            for k in self.start
        }
        total_start = sum(self.start.values())
        norm = sum(scores.values())
        if norm <= 0:
            return
        floor = self.params["min_weight"] * total_start
        raw = {k: max(floor, total_start * s / norm) for k, s in scores.items()}
        scale = total_start / sum(raw.values())
        self.combined.weights = {k: v * scale for k, v in raw.items()}

    def _perform(self, metrics: Mapping[str, float]) -> None:
        monitor = self.params["monitor"]
        if monitor not in metrics:
            raise ValueError(
                f"performance weighting monitors {monitor!r}, which is not in metrics "
                f"{sorted(metrics)} (set monitor=...)"
            )
        value = float(metrics[monitor])
        if not math.isfinite(value):
            improved = False
        elif self.best is None:
            improved = True
        elif self.params["mode"] == "max":
            improved = value > self.best + self.params["min_delta"]
        else:
            improved = value < self.best - self.params["min_delta"]
        if improved:
            self.best = value
            self.bad_calls = 0
            return
        self.bad_calls += 1
        if self.bad_calls >= self.params["patience"]:
            factor = self.params["factor"]
            current = self.combined.weights
            self.combined.weights = {
                k: current[k] + (self.end[k] - current[k]) * factor for k in current
            }
            self.bad_calls = 0
            self.num_moves += 1

    def state_dict(self) -> dict[str, Any]:
        return {
            "type": self.schedule,
            "params": dict(self.params),
            "start": dict(self.start),
            "end": dict(self.end),
            "weights": self.combined.weights,
            "progress": self.progress,
            "calls": self.calls,
            "first_values": dict(self.first_values),
            "averages": dict(self.averages),
            "best": self.best,
            "bad_calls": self.bad_calls,
            "num_moves": self.num_moves,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        stored = _ALIASES.get(state.get("type"), state.get("type"))  # states saved as "adaptive"
        if stored != self.schedule:
            raise ValueError(
                f"state is for a {state.get('type')!r} schedule, this one is {self.schedule!r}"
            )
        self.params = dict(state["params"])
        self.start = dict(state["start"])
        self.end = dict(state["end"])
        self.combined.weights = state["weights"]
        self.progress = float(state["progress"])
        self.calls = int(state["calls"] if "calls" in state else state["num_steps"])  # or older
        self.first_values = dict(state["first_values"])
        self.averages = dict(state["averages"])
        self.best = state["best"]
        self.bad_calls = int(state["bad_calls"])
        self.num_moves = int(state["num_moves"])

    def __repr__(self) -> str:
        weights = ", ".join(f"{k}={v:.3g}" for k, v in self.weights.items())
        return f"LossWeightScheduler(schedule={self.schedule!r}, weights={{{weights}}})"


class LossWeightCallback(Callback):
    """Drives a :class:`LossWeightScheduler` from :func:`stabletrain.training.fit`.

    Progress schedules (``linear``, ``cosine``, ``step``) are stepped after every
    optimizer step with ``ctx.progress``. Metric-driven ones (``loss_balanced``,
    ``performance``) are stepped after every epoch with the epoch's metrics
    (``val_loss``, ``val_dice``, …) plus the mean over the epoch of each term's
    training value (read from ``combined.last_values`` after each step).
    ``history`` records the weights after each update: ``{key: [..]}``. (Inside a
    :class:`~stabletrain.deep_supervision.DeepSupervisionLoss` the term values
    read are those of the last output the loss evaluated, not of output 0.)

    Example:
        >>> from stabletrain.losses import build_loss
        >>> loss = build_loss("balanced_segmentation")
        >>> callback = LossWeightCallback(LossWeightScheduler(loss, "cosine"))
        >>> # fit(model, train, loss_fn=loss, callbacks=[callback])
    """

    def __init__(self, scheduler: LossWeightScheduler) -> None:
        if not isinstance(scheduler, LossWeightScheduler):
            raise TypeError(
                f"scheduler must be a LossWeightScheduler, got {type(scheduler).__name__}"
            )
        self.scheduler = scheduler
        self.history: dict[str, list[float]] = {k: [] for k in scheduler.weights}
        self._sums: dict[str, float] = {}
        self._count = 0

    @property
    def metric_driven(self) -> bool:
        """Whether the schedule is stepped per epoch with metrics (else per optimizer step)."""
        return self.scheduler.schedule in _METRIC_DRIVEN

    def state_dict(self) -> dict[str, Any]:
        """The scheduler's state and the recorded weights (``fit`` checkpoints it)."""
        return {
            "scheduler": self.scheduler.state_dict(),
            "history": {k: list(v) for k, v in self.history.items()},
        }

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
        values = self.scheduler.combined.last_values
        if values:
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
