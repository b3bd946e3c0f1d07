"""Notebook 11's run readers: MLflow runs back into a data frame or a figure.

- :func:`runs_dataframe` — one row per run, its parameters and last metric values;
- :func:`metric_history` — every logged value of one metric, per run and step;
- :func:`plot_runs` — that metric against the step, one line per run.

They read the store :class:`~stabletrain.tracking.MLflowTracker` writes (needs the
``tracking`` extra: MLflow and pandas).

Example:
    >>> from stabletrain.course.runs import runs_dataframe
    >>> runs_dataframe("11_schedulers")[["run_name", "metrics.val_dice"]]  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..tracking import _experiment_id, _mlflow, default_tracking_uri

if TYPE_CHECKING:  # imported lazily: pandas is part of the optional "tracking" extra
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["metric_history", "plot_runs", "runs_dataframe"]


def _runs(
    experiment: str, tracking_uri: str | None, run_ids: Iterable[str] | None
) -> tuple[Any, list[Any]]:
    client_cls, _, _ = _mlflow()
    client = client_cls(tracking_uri=tracking_uri or default_tracking_uri())
    experiment_id = _experiment_id(client, experiment, tracking_uri or "", create=False)
    if experiment_id is None:
        raise ValueError(f"no MLflow experiment named {experiment!r} in this store")
    runs = client.search_runs([experiment_id], max_results=10_000, order_by=["start_time ASC"])
    if run_ids is not None:
        wanted = list(run_ids)
        by_id = {run.info.run_id: run for run in runs}
        missing = [r for r in wanted if r not in by_id]
        if missing:
            raise ValueError(f"runs {missing} are not in experiment {experiment!r}")
        runs = [by_id[r] for r in wanted]
    return client, runs


def runs_dataframe(
    experiment: str = "stabletrain",
    *,
    tracking_uri: str | None = None,
    run_ids: Iterable[str] | None = None,
) -> pd.DataFrame:
    """One row per run: ``run_id``, ``run_name``, ``status``, ``params.*``, ``metrics.*``.

    ``metrics.*`` hold each metric's last logged value. ``run_ids`` selects and
    orders runs (default: every run of the experiment, oldest first).

    Raises:
        ValueError: no such experiment, or a run id not in it.
    """
    import pandas as pd

    _, runs = _runs(experiment, tracking_uri, run_ids)
    rows = []
    for run in runs:
        row = {
            "run_id": run.info.run_id,
            "run_name": run.info.run_name,
            "status": run.info.status,
        }
        row.update({f"params.{k}": v for k, v in sorted(run.data.params.items())})
        row.update({f"metrics.{k}": v for k, v in sorted(run.data.metrics.items())})
        rows.append(row)
    return pd.DataFrame(rows)


def metric_history(
    experiment: str,
    key: str,
    *,
    tracking_uri: str | None = None,
    run_ids: Iterable[str] | None = None,
) -> pd.DataFrame:
    """Every logged value of ``key``: columns ``run_id``, ``run_name``, ``step``, ``value``.

    Rows are ordered by run, then step (what a line plot per run needs).
    """
    import pandas as pd

    client, runs = _runs(experiment, tracking_uri, run_ids)
    rows = []
    for run in runs:
        history = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
        rows.extend(
            {
                "run_id": run.info.run_id,
                "run_name": run.info.run_name,
                "step": m.step,
                "value": m.value,
            }
            for m in history
        )
    return pd.DataFrame(rows, columns=["run_id", "run_name", "step", "value"])


def plot_runs(
    experiment: str,
    key: str,
    *,
    tracking_uri: str | None = None,
    run_ids: Iterable[str] | None = None,
    ax: Axes | None = None,
    logy: bool = False,
    marker: str | None = None,
) -> Figure:
    """Plot ``key`` against the step for each run of ``experiment`` (one line per run)."""
    import matplotlib.pyplot as plt

    frame = metric_history(experiment, key, tracking_uri=tracking_uri, run_ids=run_ids)
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 3.5))
    else:
        fig = ax.figure
    for (_, name), part in frame.groupby(["run_id", "run_name"], sort=False):
        values = [v if math.isfinite(v) else float("nan") for v in part["value"]]
        ax.plot(part["step"], values, label=name, marker=marker)
    if logy:
        ax.set_yscale("log")
    ax.set(xlabel="optimizer step", ylabel=key, title=f"{key} — {experiment}")
    ax.legend(fontsize="small")
    return fig
