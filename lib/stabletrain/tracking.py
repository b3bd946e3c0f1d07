"""Experiment tracking with MLflow: log runs from ``fit`` and read them back in Jupyter.

:class:`MLflowTracker` implements the tracker protocol of
:func:`stabletrain.training.fit`:

- ``log_params(dict)`` once per run: optimizer, scheduler, loss, guard and
  mixed-precision settings (nested mappings are flattened to ``a.b`` keys);
- ``log_metrics(dict, step)`` once per optimizer step (``lr``, ``train_loss``,
  ``grad_norm``, and ``loss_scale``/``skipped_steps`` when present) and once per
  epoch (``val_loss``, ``val_dice``, ``epoch_train_loss``, ``epoch_lr``). Values
  are buffered and written with ``MlflowClient.log_batch`` (at most 1000 per
  call, every ``flush_every`` values, at each epoch and at the end), so a run
  of ``S`` steps costs about ``S * k / flush_every`` database round trips
  instead of ``S * k``;
- ``finish(history)``: flush, log the LR and loss figures (``figures/lr.png``,
  ``figures/loss.png``) and the history (``history.json``) as artifacts, mark
  the run finished and print the ``mlflow ui`` command that opens the store.

The store is a real SQLite database. By default it is
``sqlite:///<repository>/mlflow.db`` (an absolute path, so every notebook and
script of the course shares it, whatever its working directory) with artifacts
in ``<repository>/mlartifacts/`` — the same store ``make mlflow`` opens. The
``MLFLOW_TRACKING_URI`` environment variable or the ``tracking_uri`` argument
overrides it; for any ``sqlite:///<folder>/<file>`` URI the artifacts go to
``<folder>/mlartifacts/``.

:mod:`stabletrain.course.runs` reads runs back into a data frame or a figure.

Example:
    >>> from stabletrain.tracking import MLflowTracker
    >>> tracker = MLflowTracker("schedulers", run_name="cosine")  # doctest: +SKIP
    >>> history = fit(model, train, epochs=3, tracker=tracker)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import re
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .history import History

__all__ = [
    "MLflowTracker",
    "default_artifact_root",
    "default_tracking_uri",
    "repository_root",
    "ui_command",
]

_MAX_BATCH = 1000  # MLflow's limit of metrics per log_batch call


def _mlflow():
    try:
        import mlflow  # noqa: F401
        from mlflow import MlflowClient
        from mlflow.entities import Metric, Param
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError(
            "stabletrain.tracking needs MLflow: pip install 'stabletrain[tracking]' "
            "(or pip install mlflow)"
        ) from None
    for name in ("alembic", "mlflow.store.db.utils", "mlflow.tracking._tracking_service"):
        logging.getLogger(name).setLevel(logging.WARNING)  # no migration chatter in notebooks
    return MlflowClient, Metric, Param


def repository_root() -> Path:
    """The course repository when the library is installed from it, else the current folder.

    The package lives in ``<repository>/lib/stabletrain``; the repository is
    recognised by its ``pyproject.toml`` next to ``lib/``.
    """
    package = Path(__file__).resolve().parent
    root = package.parents[1]
    if package.parent.name == "lib" and (root / "pyproject.toml").exists():
        return root
    return Path.cwd().resolve()


def default_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<repository>/mlflow.db`` (absolute)."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{(repository_root() / 'mlflow.db').as_posix()}"


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///") :])


def default_artifact_root(tracking_uri: str | None = None) -> Path | None:
    """Artifact folder beside a SQLite store (``<folder>/mlartifacts``); ``None`` for servers."""
    db = _sqlite_path(tracking_uri or default_tracking_uri())
    if db is None:
        return None
    return db.resolve().parent / "mlartifacts"


def _flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = str(value)
    return flat


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    item = getattr(value, "item", None)  # tensors and NumPy scalars
    if callable(item) and getattr(value, "ndim", 0) == 0:
        try:
            return float(item())
        except (TypeError, ValueError):
            return None
    return None


class MLflowTracker:
    """Log a :func:`~stabletrain.training.fit` run to MLflow, in batches.

    Args:
        experiment: MLflow experiment name (created if missing, with its
            artifacts under :func:`default_artifact_root`).
        run_name: display name of the run (MLflow picks one if ``None``).
        tracking_uri: the store; default :func:`default_tracking_uri`.
        tags: extra run tags.
        flush_every: buffered metric values that trigger a ``log_batch`` write.
        log_figures: log the LR and loss figures and the history at :meth:`finish`.
        verbose: print the ``mlflow ui`` command at :meth:`finish`.

    Raises:
        ValueError: ``flush_every < 1`` or an empty ``experiment`` name.
    """

    def __init__(
        self,
        experiment: str = "stabletrain",
        run_name: str | None = None,
        tracking_uri: str | None = None,
        *,
        tags: Mapping[str, str] | None = None,
        flush_every: int = 500,
        log_figures: bool = True,
        verbose: bool = True,
    ) -> None:
        if not isinstance(experiment, str) or not experiment:
            raise ValueError(f"experiment must be a non-empty string, got {experiment!r}")
        if isinstance(flush_every, bool) or not isinstance(flush_every, int) or flush_every < 1:
            raise ValueError(f"flush_every must be an int >= 1, got {flush_every!r}")
        client_cls, self._Metric, self._Param = _mlflow()
        self.experiment = experiment
        self.run_name = run_name
        self.tracking_uri = tracking_uri or default_tracking_uri()
        self.flush_every = flush_every
        self.log_figures = log_figures
        self.verbose = verbose
        self.client = client_cls(tracking_uri=self.tracking_uri)
        self.experiment_id = _experiment_id(self.client, experiment, self.tracking_uri, create=True)
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=dict(tags or {}))
        self.run_id: str = run.info.run_id
        self.run_name = run.info.run_name
        self._params: dict[str, str] = {}
        self._buffer: list[Any] = []
        self.batches_written = 0
        self.finished = False
        self.resumed = False

    def __repr__(self) -> str:
        return (
            f"MLflowTracker(experiment={self.experiment!r}, run_name={self.run_name!r}, "
            f"run_id={self.run_id!r})"
        )

    # ---------------------------------------------------------------- protocol

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log run parameters (nested mappings become ``a.b`` keys; values become strings).

        Raises:
            ValueError: a key already logged in this run with a different value
                (MLflow parameters are immutable).
        """
        new = {}
        for key, value in _flatten(params).items():
            if key in self._params:
                if self._params[key] != value and self.resumed:
                    warnings.warn(
                        f"parameter {key!r} was {self._params[key]!r} before the resume and is "
                        f"{value!r} now; MLflow keeps the first value",
                        stacklevel=2,
                    )
                elif self._params[key] != value:
                    raise ValueError(
                        f"parameter {key!r} was logged as {self._params[key]!r}; MLflow "
                        f"parameters cannot change within a run (got {value!r})"
                    )
                continue
            new[key] = value
        if not new:
            return
        params_list = [self._Param(k, v[:6000]) for k, v in new.items()]
        for start in range(0, len(params_list), 100):
            self.client.log_batch(self.run_id, params=params_list[start : start + 100])
        self._params.update(new)

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        """Buffer numeric values (NaN/Inf included) at ``step``; non-numbers are skipped."""
        timestamp = int(time.time() * 1000)
        for key, value in metrics.items():
            number = _number(value)
            if number is not None:
                self._buffer.append(self._Metric(str(key), number, timestamp, int(step)))
        epoch_end = "val_loss" in metrics or "epoch_train_loss" in metrics
        if len(self._buffer) >= self.flush_every or epoch_end:
            self.flush()

    def flush(self) -> None:
        """Write the buffered metric values (``log_batch``, at most 1000 per call)."""
        buffer, self._buffer = self._buffer, []
        for start in range(0, len(buffer), _MAX_BATCH):
            self.client.log_batch(self.run_id, metrics=buffer[start : start + _MAX_BATCH])
            self.batches_written += 1

    def finish(self, history: History | None = None, *, status: str = "FINISHED") -> None:
        """Flush, log the figures and history, and close the run (idempotent)."""
        if self.finished:
            return
        self.flush()
        if history is not None and self.log_figures:
            self._log_history(history)
        self.client.set_terminated(self.run_id, status=status)
        self.finished = True
        if self.verbose:
            print(f"MLflow run {self.run_name!r} logged. Open the UI with:\n  {self.ui_command()}")

    def state_dict(self) -> dict[str, Any]:
        """The run to continue after a resume (``fit``'s checkpoints store it)."""
        return {"run_id": self.run_id, "params": dict(self._params)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue the checkpointed run rather than this tracker's new one, which is deleted
        if nothing was logged to it yet (a resumed training is one run, not two)."""
        run_id = str(state["run_id"])
        if run_id == self.run_id:
            return
        try:
            run = self.client.get_run(run_id)
        except Exception:  # a store without that run (moved, or another store)
            warnings.warn(
                f"run {run_id} is not in {self.tracking_uri}: logging to a new run", stacklevel=2
            )
            return
        if not (self._params or self._buffer or self.batches_written):
            self.client.delete_run(self.run_id)
        self.run_id, self.run_name = run_id, run.info.run_name
        self.client.update_run(run_id, status="RUNNING")
        self._params = {str(k): str(v) for k, v in dict(state.get("params") or {}).items()}
        self.finished, self.resumed = False, True

    def __enter__(self) -> MLflowTracker:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        self.finish(status="FAILED" if kind is not None else "FINISHED")

    # ---------------------------------------------------------------- helpers

    def _log_history(self, history: History) -> None:
        from matplotlib.figure import Figure

        steps = history.steps
        fig = Figure(figsize=(6, 3.5))
        ax = fig.add_subplot()
        ax.plot(steps.get("lr", []))
        ax.set(xlabel="optimizer step", ylabel="learning rate", title=f"LR — {self.run_name}")
        self.client.log_figure(self.run_id, fig, "figures/lr.png")

        fig = Figure(figsize=(6, 3.5))
        ax = fig.add_subplot()
        ax.plot(steps.get("loss", []), label="train loss (per step)", alpha=0.7)
        epochs = history.epochs
        if "val_loss" in epochs and steps.get("epoch"):
            ends = [i + 1 for i in range(len(steps["epoch"])) if _is_epoch_end(steps["epoch"], i)]
            ax.plot(ends[: len(epochs["val_loss"])], epochs["val_loss"], "o-", label="val loss")
        ax.set(xlabel="optimizer step", ylabel="loss", title=f"loss — {self.run_name}")
        ax.legend()
        self.client.log_figure(self.run_id, fig, "figures/loss.png")
        self.client.log_dict(self.run_id, history.state_dict(), "history.json")

    def ui_command(self, relative_to: str | os.PathLike | None = None) -> str:
        """The shell command that opens this store in the MLflow UI.

        With ``relative_to`` (a folder, typically ``Path.cwd()``), a local SQLite
        store and its artifact folder are written relative to it, for output
        that should not show machine-specific paths.
        """
        return ui_command(self.tracking_uri, relative_to=relative_to)


def _is_epoch_end(epochs: Sequence[Any], i: int) -> bool:
    return i + 1 == len(epochs) or epochs[i + 1] != epochs[i]


def ui_command(tracking_uri: str | None = None, *, relative_to: str | os.PathLike | None = None):
    """``mlflow ui --backend-store-uri ... [--default-artifact-root ...]`` for a store."""
    uri = tracking_uri or default_tracking_uri()
    if uri.startswith(("http://", "https://", "databricks")):
        return f"open {uri} in a browser (the tracking server serves the UI itself)"
    db = _sqlite_path(uri)
    if db is None:
        return f"mlflow ui --backend-store-uri {uri}"
    artifacts = default_artifact_root(uri)
    assert artifacts is not None
    if relative_to is not None:
        base = Path(relative_to).resolve()
        db = Path(os.path.relpath(db.resolve(), base))
        artifacts = Path(os.path.relpath(artifacts, base))
    return (
        f"mlflow ui --backend-store-uri sqlite:///{db.as_posix()} "
        f"--default-artifact-root {artifacts.as_posix()}"
    )


def _experiment_id(client: Any, name: str, tracking_uri: str, *, create: bool) -> str | None:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    if not create:
        return None
    root = default_artifact_root(tracking_uri)
    location = None
    if root is not None:
        safe = re.sub(r"[^\w.\-]+", "_", name)
        location = (root / safe).as_uri()
    return client.create_experiment(name, artifact_location=location)
