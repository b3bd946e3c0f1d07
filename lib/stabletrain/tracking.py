"""MLflow tracking for :func:`stabletrain.loop.fit`: params once, metrics buffered and sent with
``log_batch``, then the LR and loss figures and ``history.json`` as artifacts. The default store
is ``sqlite:///<repository>/mlflow.db`` (``MLFLOW_TRACKING_URI`` overrides it); a SQLite store
``<folder>/<file>`` keeps its artifacts in ``<folder>/mlartifacts/``."""

from __future__ import annotations

import logging
import os
import posixpath
import re
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse
from urllib.request import url2pathname

from .checks import check_bool, check_folder, check_int

if TYPE_CHECKING:
    from .history import History

_SCHEMES = ("sqlite", "file", "http", "https", "postgresql", "mysql", "mssql", "databricks", "uc")
_ACCEPTED = "accepted: sqlite:///<file>, http(s)://<server>, postgresql://, mysql://, mssql://, "
_ACCEPTED += "databricks"
_NAME = re.compile(r"(?!/)[/\w.\- :]{1,250}")  # MLflow's param, metric and tag names


def _mlflow():
    try:
        from mlflow import MlflowClient
        from mlflow.entities import Metric, Param
    except ImportError:  # pragma: no cover - depends on the environment
        message = "pip install 'stabletrain[tracking]' (or pip install mlflow)"
        raise ImportError(f"stabletrain.tracking needs MLflow: {message}") from None
    quiet = {"alembic": 30, "mlflow.tracking._tracking_service": 30, "mlflow.store.db.utils": 50}
    for name, level in quiet.items():  # no migration chatter; the store's errors reach the tracker
        logging.getLogger(name).setLevel(level)
    return MlflowClient, Metric, Param


def repository_root() -> Path:
    """The course repository (``pyproject.toml`` beside ``lib/stabletrain``), else the cwd."""
    package = Path(__file__).resolve().parent
    if package.parent.name == "lib" and (package.parents[1] / "pyproject.toml").exists():
        return package.parents[1]
    return Path.cwd().resolve()


def default_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<repository>/mlflow.db`` (absolute)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    return uri or f"sqlite:///{(repository_root() / 'mlflow.db').as_posix()}"


def check_tracking_uri(uri: Any) -> str:
    """``uri`` (``None``, ``""``: the default) if MLflow knows its scheme, else ``ValueError``."""
    if not isinstance(uri, str | None):
        raise TypeError(f"tracking_uri must be a str or None, got {type(uri).__name__} {uri!r}")
    uri = uri or default_tracking_uri()
    found = re.match(r"([a-zA-Z][\w+.-]*):", uri)  # RFC 3986; postgresql+psycopg2: postgresql
    scheme = found.group(1).split("+")[0].lower() if found else ""
    if len(scheme) > 1 and scheme.removesuffix("-uc") not in _SCHEMES:  # C: is a Windows drive
        raise ValueError(f"tracking_uri={uri!r} has an unknown scheme {scheme!r}; {_ACCEPTED}")
    if re.fullmatch(r"sqlite[\w+]*://(/(file:)?:memory:.*)?/?", uri):
        raise ValueError(f"tracking_uri={uri!r} is in memory, lost at exit: give sqlite:///<file>")
    if (db := _sqlite_path(uri)) is not None and not db.absolute().parent.is_dir():
        raise ValueError(f"tracking_uri={uri!r}: the folder {db.absolute().parent} does not exist")
    return uri


def _unopenable(uri: str, error: Exception) -> ValueError:
    opened = f"tracking_uri={uri!r} cannot be opened ({type(error).__name__}: {str(error)[:500]})"
    return ValueError(f"{opened}; {_ACCEPTED}")


def _local_folder(location: str | None) -> Path | None:
    """The folder of a ``file:`` or plain-path artifact location; ``None`` for remote ones."""
    parsed = urlparse(location or "")
    if parsed.scheme == "file" or (location and len(parsed.scheme) <= 1):
        return Path(url2pathname(parsed.path) if parsed.scheme == "file" else location)
    return None


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None


def default_artifact_root(tracking_uri: str | None = None) -> Path | None:
    """Artifact folder beside a SQLite store (``<folder>/mlartifacts``); ``None`` for servers."""
    db = _sqlite_path(tracking_uri or default_tracking_uri())
    return None if db is None else db.resolve().parent / "mlartifacts"


def _check_names(what: str, names: Any) -> None:  # MLflow's rules, checked before sending
    names = list(names)
    path = [k for k in names if posixpath.normpath(k) != k or k == "." or k.startswith("..")]
    if bad := [k for k in names if not _NAME.fullmatch(k)] + path:
        rule = "at most 250 letters, digits, spaces and _ - . : /, not a path like 'a/../b'"
        raise ValueError(f"{what} {bad[:3]} cannot be MLflow names: {rule}")


def _flatten(params: Any, at: str = "") -> dict[str, str]:  # {"a": {"b": 1}}: {"a.b": "1"}
    if not isinstance(params, Mapping):
        return {at[:-1]: str(params)}
    return {k: v for key, sub in params.items() for k, v in _flatten(sub, f"{at}{key}.").items()}


def _number(value: Any) -> float | None:
    if callable(getattr(value, "item", None)) and getattr(value, "ndim", 0) == 0:
        value = value.item()
    return float(value) if isinstance(value, int | float) else None


class MLflowTracker:
    """Log a :func:`~stabletrain.loop.fit` run to MLflow (the experiment is created if missing):
    metrics every ``flush_every`` values and at each epoch's end. A store failing during the run
    costs one warning, never the training: unsent values wait for the next flush. ``ValueError``:
    a ``tracking_uri`` that cannot be opened, an artifact folder that cannot be written."""

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
        if not isinstance(experiment, str) or not experiment.strip() or len(experiment) > 500:
            error = ValueError if isinstance(experiment, str) else TypeError
            rule = "experiment must be a non-empty string of <= 500 characters"
            raise error(f"{rule}, got {type(experiment).__name__} {experiment!r:.60}")
        if not isinstance(run_name, str | None) or (run_name is not None and not run_name.strip()):
            error = ValueError if isinstance(run_name, str) else TypeError
            raise error(f"run_name must be a string, not empty, or None, got {run_name!r}")
        if not isinstance(tags, Mapping | None):
            raise TypeError(f"tags must be a mapping of names to values or None, got {tags!r}")
        _check_names("tags", map(str, tags or {}))
        self.flush_every = check_int("flush_every", flush_every, min=1)
        self.log_figures = check_bool("log_figures", log_figures)
        self.verbose = check_bool("verbose", verbose)
        client_cls, self._Metric, self._Param = _mlflow()
        self.experiment, self.tracking_uri = experiment, check_tracking_uri(tracking_uri)
        try:
            self.client = client_cls(tracking_uri=self.tracking_uri)
            self.experiment_id = _experiment_id(self.client, experiment, self.tracking_uri)
            location = self.client.get_experiment(self.experiment_id).artifact_location
        except Exception as error:
            raise _unopenable(self.tracking_uri, error) from None
        if (folder := _local_folder(location)) is not None:
            check_folder("the artifact folder", folder, writable=True)
        try:
            tags = dict(tags or {})
            run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
        except Exception as error:
            raise _unopenable(self.tracking_uri, error) from None
        self.run_id, self.run_name = run.info.run_id, run.info.run_name
        self._params: dict[str, str] = {}
        self._pending: dict[str, list[Any]] = {"params": [], "metrics": []}  # entities not sent
        self.batches_written = self.failures = 0
        self.finished = self.resumed = False

    def __repr__(self) -> str:
        ids = f"run_name={self.run_name!r}, run_id={self.run_id!r}"
        return f"MLflowTracker(experiment={self.experiment!r}, {ids})"

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log run parameters (nested mappings become ``a.b`` keys, values strings); ``ValueError``:
        a key MLflow refuses, or logged before with another value (after a resume: a warning)."""
        if not isinstance(params, Mapping):
            raise TypeError(f"params must be a mapping of names to values, got {params!r}"[:300])
        flat = _flatten(params)
        _check_names("parameter(s)", flat)
        for key, value in flat.items():
            if (old := self._params.get(key, value)) == value:
                continue
            if not self.resumed:
                message = f"parameter {key!r} was logged as {old!r}; MLflow parameters cannot"
                raise ValueError(f"{message} change within a run (got {value!r})")
            message = f"parameter {key!r} was {old!r} before the resume and is {value!r} now"
            warnings.warn(f"{message}; MLflow keeps the first value", stacklevel=2)
        new = {key: value for key, value in flat.items() if key not in self._params}
        self._pending["params"] += [self._Param(k, v[:6000]) for k, v in new.items()]
        self._params |= new
        self._send("params")

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        """Buffer numeric values (NaN/Inf included) at ``step``; non-numbers are skipped."""
        timestamp = int(time.time() * 1000)
        for key, value in metrics.items():
            if (number := _number(value)) is not None:
                metric = self._Metric(str(key), number, timestamp, int(step))
                self._pending["metrics"].append(metric)
        epoch_end = "val_loss" in metrics or "epoch_train_loss" in metrics
        if len(self._pending["metrics"]) >= self.flush_every or epoch_end:
            self.flush()

    def flush(self) -> bool:
        """Write the buffered params and metrics; ``False``: some are kept for the next flush."""
        return self._send("params") and self._send("metrics")

    def _send(self, kind: str) -> bool:
        pending, limit = self._pending[kind], 100 if kind == "params" else 1000  # MLflow's limits
        while pending:
            if not self._call(self.client.log_batch, self.run_id, **{kind: pending[:limit]}):
                return False
            del pending[:limit]
            self.batches_written += kind == "metrics"
        return True

    def _call(self, write: Callable[..., Any], *args: Any, **kwargs: Any) -> bool:
        """``write(...)``; a failure (a locked or read-only store, a server down) warns once."""
        try:
            write(*args, **kwargs)
            return True
        except Exception as error:
            if getattr(error, "error_code", None) == "INVALID_PARAMETER_VALUE":
                raise  # a bad key or a changed parameter: the caller's error, not the store's
            self.failures += 1
            if self.failures == 1:
                failed = f"MLflow tracking to {self.tracking_uri} failed ({type(error).__name__}:"
                retry = "training goes on; unsent values are retried at each flush and at the end"
                warnings.warn(f"{failed} {str(error)[:300]}); {retry}", stacklevel=4)
            return False

    def finish(self, history: History | None = None, *, status: str = "FINISHED") -> None:
        """Flush, log the figures and history, and close the run as ``status`` (idempotent)."""
        if self.finished:
            return
        sent = self.flush()
        if history is not None and self.log_figures:
            sent = self._call(self._log_history, history) and sent
        sent = self._call(self.client.set_terminated, self.run_id, status=status) and sent
        self.finished = True
        if not sent:
            unsent = {kind: len(items) for kind, items in self._pending.items()}
            lost = f"{unsent['metrics']} metric values and {unsent['params']} params unsent"
            why = "or its figures or status: the store still fails"
            warnings.warn(f"MLflow run {self.run_id} is incomplete ({lost}, {why})", stacklevel=2)
        elif self.verbose:
            print(f"MLflow run {self.run_name!r} logged. Open the UI with:\n  {self.ui_command()}")

    def state_dict(self) -> dict[str, Any]:
        """The run to continue after a resume (``fit``'s checkpoints store it)."""
        return {"run_id": self.run_id, "params": dict(self._params)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue the checkpointed run; this tracker's new run is deleted if it is still empty."""
        run_id = str(state["run_id"])
        if run_id == self.run_id:
            return
        try:
            run = self.client.get_run(run_id)
        except Exception:  # a store without that run (moved, or another store)
            message = f"run {run_id} is not in {self.tracking_uri}: logging to a new run"
            warnings.warn(message, stacklevel=2)
            return
        if not (self._params or self._pending["metrics"] or self.batches_written):
            self._call(self.client.delete_run, self.run_id)
        self.run_id, self.run_name = run_id, run.info.run_name
        self._call(self.client.update_run, run_id, status="RUNNING")
        self._params = {str(k): str(v) for k, v in dict(state.get("params") or {}).items()}
        self._pending["params"].clear()  # the new run's, not sent
        self.finished, self.resumed = False, True

    def __enter__(self) -> MLflowTracker:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        self.finish(status="FAILED" if kind is not None else "FINISHED")

    def _log_history(self, history: History) -> None:
        from matplotlib.figure import Figure

        steps, epochs = history.steps, history.epochs
        lr, loss = (Figure(figsize=(6, 3.5)).add_subplot() for _ in range(2))
        lr.plot(steps.get("lr", []))
        loss.plot(steps.get("loss", []), label="train loss (per step)", alpha=0.7)
        if "val_loss" in epochs and (column := steps.get("epoch")):
            ends = [i for i in range(1, len(column)) if column[i] != column[i - 1]] + [len(column)]
            loss.plot(ends[: len(epochs["val_loss"])], epochs["val_loss"], "o-", label="val loss")
        loss.legend()
        for ax, name, label in ((lr, "LR", "learning rate"), (loss, "loss", "loss")):
            ax.set(xlabel="optimizer step", ylabel=label, title=f"{name} — {self.run_name}")
            self.client.log_figure(self.run_id, ax.figure, f"figures/{name.lower()}.png")
        self.client.log_dict(self.run_id, history.state_dict(), "history.json")

    def ui_command(self, relative_to: str | os.PathLike | None = None) -> str:
        """:func:`ui_command` for this tracker's store."""
        return ui_command(self.tracking_uri, relative_to=relative_to)


def ui_command(tracking_uri: str | None = None, *, relative_to: str | os.PathLike | None = None):
    """The shell command that opens a store in the MLflow UI; with ``relative_to`` (a folder), a
    SQLite store and its artifact folder are written relative to it."""
    uri = tracking_uri or default_tracking_uri()
    if uri.startswith(("http://", "https://", "databricks")):
        return f"open {uri} in a browser (the tracking server serves the UI itself)"
    db, artifacts = _sqlite_path(uri), default_artifact_root(uri)
    if db is None:
        return f"mlflow ui --backend-store-uri {uri}"
    if relative_to is not None:
        base = Path(relative_to).resolve()
        db, artifacts = (Path(os.path.relpath(p, base)) for p in (db.resolve(), artifacts))
    store = f"sqlite:///{db.as_posix()}"
    return f"mlflow ui --backend-store-uri {store} --default-artifact-root {artifacts.as_posix()}"


def _experiment_id(client: Any, name: str, tracking_uri: str, *, create=True) -> str | None:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None or not create:
        return None if experiment is None else experiment.experiment_id
    root = default_artifact_root(tracking_uri)
    location = None if root is None else (root / re.sub(r"[^\w.\-]+", "_", name)).as_uri()
    return client.create_experiment(name, artifact_location=location)
