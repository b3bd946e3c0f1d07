"""What a training run recorded: :class:`History`, per optimizer step and per epoch."""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from .checks import check_choice, check_float, check_int
from .metrics import metric_mode

_FINAL = ("train_loss", "val_loss", "val_dice", "lr")  # summary's final_<column>


class History:
    """Per-step and per-epoch columns of a run (``steps``/``epochs``: name → list; a late column
    is NaN-padded). ``steps``: ``step``, ``epoch``, ``lr`` (first group), ``loss``, ``grad_norm``,
    ``applied``; ``epochs``: ``epoch``, ``train_loss`` (mean of the finite step losses),
    ``val_loss``, ``val_<metric>``, ``lr``, ``seconds``."""

    def __init__(self) -> None:
        self.steps: dict[str, list[Any]] = {}
        self.epochs: dict[str, list[Any]] = {}
        self.stop_reason: str | None = None

    @staticmethod
    def _append(table: dict[str, list[Any]], values: Mapping[str, Any]) -> None:
        length = len(next(iter(table.values()))) if table else 0
        for key, value in values.items():
            table.setdefault(key, [math.nan] * length).append(value)
        for key, column in table.items():
            if key not in values:
                column.append(math.nan)

    def log_step(self, **values: Any) -> None:
        self._append(self.steps, values)

    def log_epoch(self, **values: Any) -> None:
        self._append(self.epochs, values)

    @property
    def num_steps(self) -> int:
        return len(self.steps.get("loss", []))

    @property
    def diverged(self) -> bool:
        """A training loss was not finite, or blew up (:meth:`blowup_step`'s defaults)."""
        return self.first_nonfinite_step() is not None or self.blowup_step() is not None

    def blowup_step(self, factor: float = 10.0, warmup: int = 10, window: int = 50) -> int | None:
        """First step whose finite loss exceeds ``factor`` × the (positive) median of the
        up to ``window`` finite losses before it, once ``warmup`` were seen; else ``None``."""
        check_float("factor", factor, min=1, low_open=True)
        check_int("warmup", warmup, min=1)
        check_int("window", window, min=1)
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
        losses = self.steps.get("loss", [])
        return next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)

    def best(self, key: str = "val_loss", mode: str | None = None) -> float:
        """Best finite value of an epoch column (``mode``: ``"min"``, ``"max"`` or ``None``, the
        direction of ``key``'s name by :func:`~stabletrain.metrics.metric_mode`)."""
        mode = metric_mode(key) if mode is None else check_choice("mode", mode, ("min", "max"))
        values = [v for v in self.epochs.get(key, []) if math.isfinite(v)]
        return (min if mode == "min" else max)(values, default=math.nan)

    def state_dict(self) -> dict[str, Any]:
        steps, epochs = ({k: list(v) for k, v in t.items()} for t in (self.steps, self.epochs))
        return {"steps": steps, "epochs": epochs, "stop_reason": self.stop_reason}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.steps = {k: list(v) for k, v in state["steps"].items()}
        self.epochs = {k: list(v) for k, v in state["epochs"].items()}
        self.stop_reason = state.get("stop_reason")

    def summary(
        self,
        monitor: str = "val_loss",
        mode: str | None = None,
        *,
        digits: int | None = None,
        keys: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """The run in JSON-friendly values (NaN where unknown), floats rounded to ``digits``, only
        ``keys`` if given (an unknown one is a ``ValueError``). Keys: ``steps``, ``epochs``,
        ``skipped_steps``, ``diverged``, ``first_nonfinite_step``, ``stop_reason``,
        ``best_<monitor>``, ``best_epoch`` (by ``mode``, as in :meth:`best`), ``final_`` +
        ``train_loss``/``val_loss``/``val_dice``/``lr``; ``max_loss``, ``max_val_loss``,
        ``max_grad_norm``, ``median_grad_norm`` (finite values only), ``seconds``."""
        best, values = self.best(monitor, mode), self.epochs.get(monitor, [])
        epoch_numbers = self.epochs.get("epoch", list(range(len(values))))
        best_epoch = next((e for e, v in zip(epoch_numbers, values) if v == best), None)

        def finite(data: Sequence[Any]) -> list[float]:
            return sorted(float(v) for v in data if isinstance(v, int | float) and math.isfinite(v))

        last = {c: float(self.epochs[c][-1]) if self.epochs.get(c) else math.nan for c in _FINAL}
        norms = finite(self.steps.get("grad_norm", []))
        summary: dict[str, Any] = {
            "steps": self.num_steps,
            "epochs": len(self.epochs.get("epoch", [])),
            "skipped_steps": sum(1 for a in self.steps.get("applied", []) if a is False),
            "diverged": self.diverged,
            "first_nonfinite_step": self.first_nonfinite_step(),
            "stop_reason": self.stop_reason,
            f"best_{monitor}": best,
            "best_epoch": best_epoch,
            **{f"final_{c}": v for c, v in last.items()},
            "max_loss": max(finite(self.steps.get("loss", [])), default=math.nan),
            "max_val_loss": max(finite(self.epochs.get("val_loss", [])), default=math.nan),
            "max_grad_norm": max(norms, default=math.nan),
            "median_grad_norm": norms[len(norms) // 2] if norms else math.nan,
            "seconds": float(sum(v for v in self.epochs.get("seconds", []) if math.isfinite(v))),
        }
        if keys is not None:
            if unknown := [k for k in keys if k not in summary]:
                raise ValueError(f"unknown summary key(s) {unknown}; accepted: {list(summary)}")
            summary = {k: summary[k] for k in keys}
        if digits is not None:
            floats = [k for k, v in summary.items() if isinstance(v, float) and math.isfinite(v)]
            summary.update({k: round(summary[k], digits) for k in floats})
        return summary

    def to_csv(self, path: Any, table: str = "epochs") -> None:
        """Write the ``"epochs"`` or ``"steps"`` table to ``path`` as CSV (NaN as ``nan``)."""
        check_choice("table", table, ("epochs", "steps"))
        columns = self.epochs if table == "epochs" else self.steps
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(columns)
            writer.writerows(zip(*columns.values(), strict=True))

    def to_json(self, path: Any) -> None:
        """Write both tables, the stop reason and :meth:`summary` as strict JSON (NaN as
        ``null``); ``load_state_dict`` reads it back."""
        text = json.dumps({**self.state_dict(), "summary": self.summary()})
        payload = json.loads(text, parse_constant=lambda _: None)  # NaN, ±Infinity → null
        with open(path, "w") as f:
            json.dump(payload, f, indent=1, allow_nan=False)

    def __repr__(self) -> str:
        epochs = len(self.epochs.get("epoch", []))
        return f"History(steps={self.num_steps}, epochs={epochs}, stop_reason={self.stop_reason!r})"
