import math
import os
import warnings
from pathlib import Path

import pytest
import torch

pytest.importorskip("mlflow")

from mlflow import MlflowClient

from stabletrain.callbacks import Callback
from stabletrain.checkpoint import CheckpointManager
from stabletrain.course.runs import runs_dataframe
from stabletrain.data import make_loaders
from stabletrain.loop import fit
from stabletrain.models import TinyUNet
from stabletrain.tracking import (
    MLflowTracker,
    default_artifact_root,
    default_tracking_uri,
    repository_root,
    ui_command,
)
from stabletrain.update import StepResult, Update
from stabletrain.utils import seed_everything


@pytest.fixture(scope="module")
def run(store):
    """A 2-epoch fit logged through a tracker whose client counts its calls."""
    train, val = make_loaders(num_train=24, num_val=8, batch_size=8, image_size=32, seed=1)
    seed_everything(0)
    model = TinyUNet(base_channels=4, depth=2, attention=None)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    tracker = MLflowTracker("test", run_name="sgd", tracking_uri=store, flush_every=8)
    calls = {"log_batch": 0, "log_metric": 0}
    client_log_batch = tracker.client.log_batch

    def log_batch(*args, **kwargs):
        calls["log_batch"] += 1
        return client_log_batch(*args, **kwargs)

    def log_metric(*args, **kwargs):  # pragma: no cover - must not be used
        calls["log_metric"] += 1

    tracker.client.log_batch, tracker.client.log_metric = log_batch, log_metric
    history = fit(
        model,
        train,
        val_loader=val,
        epochs=2,
        optimizer=optimizer,
        scheduler=scheduler,
        tracker=tracker,
        progress=False,
    )
    return tracker, history, calls


def test_metrics_are_read_back_at_the_right_steps(store, run):
    tracker, history, _ = run
    client = MlflowClient(tracking_uri=store)

    def logged(key):
        points = sorted(client.get_metric_history(tracker.run_id, key), key=lambda m: m.step)
        return [m.step for m in points], [m.value for m in points]

    steps, losses = logged("train_loss")
    assert steps == list(range(1, 7))
    assert losses == pytest.approx(history.steps["loss"], rel=1e-12)
    assert logged("lr")[1] == pytest.approx([0.05, 0.05, 0.025, 0.025, 0.0125, 0.0125])
    assert logged("grad_norm")[1] == pytest.approx(history.steps["grad_norm"])
    val_steps, val_losses = logged("val_loss")
    assert val_steps == [3, 6]
    assert val_losses == pytest.approx(history.epochs["val_loss"])
    assert logged("val_dice")[1] == pytest.approx(history.epochs["val_dice"])
    assert logged("epoch_train_loss")[1] == pytest.approx(history.epochs["train_loss"])


def test_params_status_and_artifacts(store, run):
    tracker, _, _ = run
    client = MlflowClient(tracking_uri=store)
    data = client.get_run(tracker.run_id)
    assert data.info.status == "FINISHED"
    assert data.data.params["optimizer"] == "SGD"
    assert data.data.params["optimizer.momentum"] == "0.9"
    assert data.data.params["scheduler"] == "StepLR"
    assert data.data.params["scheduler.step_size"] == "2"
    assert data.data.params["scheduler.gamma"] == "0.5"
    assert "scheduler.last_epoch" not in data.data.params  # changes during training
    names = {a.path for a in client.list_artifacts(tracker.run_id)}
    figures = {a.path for a in client.list_artifacts(tracker.run_id, "figures")}
    assert "history.json" in names
    assert figures == {"figures/lr.png", "figures/loss.png"}
    artifacts = Path(store[len("sqlite:///") :]).parent / "mlartifacts"
    assert list(artifacts.rglob("lr.png"))  # beside the database


def test_metric_writes_are_batched(run):
    tracker, history, calls = run
    values = history.num_steps * 3 + 2 * 4  # per step: lr, loss, grad norm; per epoch: 4
    assert calls["log_metric"] == 0
    # every 8 values and once per epoch, instead of one round trip per value
    assert tracker.batches_written <= values // 8 + 2
    assert calls["log_batch"] <= tracker.batches_written + 1  # + the params batch


def test_nan_is_logged_and_params_are_immutable(store):
    tracker = MLflowTracker("test", run_name="nan", tracking_uri=store, verbose=False)
    tracker.log_params({"lr": 0.1})
    tracker.log_params({"lr": 0.1})  # the same value again is fine
    with pytest.raises(ValueError, match=r"parameter 'lr' was logged as '0\.1'"):
        tracker.log_params({"lr": 0.2})
    tracker.log_metrics({"train_loss": math.nan, "note": "text is skipped"}, step=1)
    tracker.finish()
    points = MlflowClient(tracking_uri=store).get_metric_history(tracker.run_id, "train_loss")
    assert len(points) == 1 and math.isnan(points[0].value)


def test_failed_run_is_marked(store):
    with (
        pytest.raises(RuntimeError),
        MLflowTracker("test", run_name="boom", tracking_uri=store, verbose=False) as tracker,
    ):
        raise RuntimeError("training crashed")
    assert MlflowClient(tracking_uri=store).get_run(tracker.run_id).info.status == "FAILED"


def test_default_store_is_the_repository_database(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = repository_root()
    assert (root / "pyproject.toml").exists() and (root / "lib" / "stabletrain").is_dir()
    uri = default_tracking_uri()
    assert uri == f"sqlite:///{(root / 'mlflow.db').as_posix()}"
    assert Path(uri[len("sqlite:///") :]).is_absolute()
    assert default_artifact_root() == root / "mlartifacts"
    # `make mlflow` opens the same store, and git ignores what it writes
    makefile = (root / "Makefile").read_text()
    assert 'sqlite:///$(CURDIR)/mlflow.db" --default-artifact-root "$(CURDIR)/mlartifacts"' in (
        makefile
    )
    ignored = (root / ".gitignore").read_text().split()
    assert {"mlflow.db", "mlartifacts/"} <= set(ignored)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////elsewhere/runs.db")
    assert default_tracking_uri() == "sqlite:////elsewhere/runs.db"
    assert default_artifact_root() == Path("/elsewhere/mlartifacts")


def test_ui_command(tmp_path):
    uri = f"sqlite:///{(tmp_path / 'mlflow.db').as_posix()}"
    assert ui_command(uri) == (
        f"mlflow ui --backend-store-uri {uri} --default-artifact-root "
        f"{(tmp_path / 'mlartifacts').as_posix()}"
    )
    (tmp_path / "notebooks").mkdir()
    relative = ui_command(uri, relative_to=tmp_path / "notebooks")
    assert relative == (
        "mlflow ui --backend-store-uri sqlite:///../mlflow.db --default-artifact-root ../mlartifacts"
    )
    assert (
        ui_command("postgresql://db/mlflow")
        == "mlflow ui --backend-store-uri postgresql://db/mlflow"
    )
    assert ui_command("http://localhost:5000").startswith("open http://localhost:5000")
    with pytest.raises(ValueError, match="flush_every"):
        MLflowTracker("x", tracking_uri=uri, flush_every=0)


class SkipEveryOther(Update):
    """A guard that refuses every other update (as a NaN guard would)."""

    handles_nonfinite = True

    def __init__(self, model, optimizer):
        super().__init__(model, optimizer)
        self.calls = 0

    def step(self, loss, *, sync=None):
        loss.backward()
        self.calls += 1
        applied = self.calls % 2 == 0
        if applied:
            self.optimizer.step()
        self.optimizer.zero_grad()
        return StepResult(applied, 1.0, None if applied else "skipped for the test")


def test_skipped_steps_are_logged_with_a_guard(store):
    train, _ = make_loaders(num_train=32, num_val=8, batch_size=8, image_size=32, seed=2)
    model = TinyUNet(base_channels=4, depth=2, attention=None)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    tracker = MLflowTracker("test", run_name="guarded", tracking_uri=store, verbose=False)
    fit(
        model,
        train,
        optimizer=optimizer,
        guard=SkipEveryOther(model, optimizer),
        tracker=tracker,
        progress=False,
    )
    points = MlflowClient(tracking_uri=store).get_metric_history(tracker.run_id, "skipped_steps")
    assert [m.value for m in sorted(points, key=lambda m: m.step)] == [1, 1, 2, 2]


def test_a_run_that_raises_is_marked_failed(tmp_path):
    """fit closes the MLflow run as FAILED (not left RUNNING) and re-raises."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = MLflowTracker(experiment="failing", tracking_uri=uri)
    train, _ = make_loaders(num_train=16, num_val=8, batch_size=8, image_size=32)

    def broken_loss(out, target):  # a fault injected on purpose, to test the bookkeeping
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fit(
            TinyUNet(base_channels=4),
            train,
            epochs=1,
            loss_fn=broken_loss,
            tracker=tracker,
            progress=False,
        )
    runs = runs_dataframe("failing", tracking_uri=uri)
    assert list(runs["status"]) == ["FAILED"]


# -- training outlives its side channels ------------------------------------------------------


def _fit_tiny(tracker, checkpoints=None, callbacks=()):
    train, val = make_loaders(num_train=24, num_val=8, batch_size=8, image_size=32, seed=1)
    seed_everything(0)
    model = TinyUNet(base_channels=4, depth=2, attention=None)
    options = {"checkpoints": checkpoints, "callbacks": callbacks, "progress": False}
    return fit(model, train, val_loader=val, epochs=2, tracker=tracker, **options)


def _refuse(tracker, method, times=math.inf):
    """``tracker.client.<method>`` raises as a locked store does, ``times`` times."""
    from mlflow.exceptions import MlflowException

    real, calls = getattr(tracker.client, method), []

    def refused(*args, **kwargs):
        calls.append(1)
        if len(calls) <= times:
            raise MlflowException("(sqlite3.OperationalError) database is locked")
        return real(*args, **kwargs)

    setattr(tracker.client, method, refused)
    return calls


def _mlflow_warnings(record):
    return [str(w.message) for w in record if "MLflow" in str(w.message)]


def test_a_store_locked_for_a_while_costs_one_warning_and_no_data(store, tmp_path):
    tracker = MLflowTracker("test", run_name="locked", tracking_uri=store, flush_every=8)
    tracker.verbose = False
    calls = _refuse(tracker, "log_batch", times=3)  # the params at the start, two flushes
    checkpoints = CheckpointManager(tmp_path, strategy="epoch", max_keep=5)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        history = _fit_tiny(tracker, checkpoints)
    assert len(calls) > 3 and tracker.failures == 3
    (message,) = _mlflow_warnings(record)
    assert "database is locked" in message and "retried" in message
    assert [i.epoch for i in checkpoints.checkpoints()] == [0, 1]
    client = MlflowClient(tracking_uri=store)
    data = client.get_run(tracker.run_id)
    assert data.info.status == "FINISHED" and data.data.params["optimizer"] == "Adam"
    points = sorted(client.get_metric_history(tracker.run_id, "train_loss"), key=lambda m: m.step)
    assert [m.step for m in points] == list(range(1, 7))  # every value, once
    assert [m.value for m in points] == pytest.approx(history.steps["loss"], rel=1e-12)
    val = client.get_metric_history(tracker.run_id, "val_loss")
    assert sorted(m.value for m in val) == pytest.approx(sorted(history.epochs["val_loss"]))


class _CrashAtEpoch1(Callback):
    def on_epoch_start(self, ctx):
        if ctx.epoch == 1:
            raise RuntimeError("crash at epoch 1")


@pytest.mark.parametrize(
    ("method", "crash", "status"),
    [
        ("log_batch", False, "FINISHED"),
        ("log_batch", True, "FAILED"),
        ("log_figure", False, "FINISHED"),
    ],
)
def test_a_store_that_stays_broken_never_stops_training(store, method, crash, status):
    """A store down for good (or a read-only artifact folder): fit goes on and returns, the run
    is closed as it ended, and a second warning says what could not be logged."""
    tracker = MLflowTracker("test", run_name=method, tracking_uri=store, verbose=False)
    _refuse(tracker, method)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        if crash:
            with pytest.raises(RuntimeError, match="crash at epoch 1"):
                _fit_tiny(tracker, callbacks=[_CrashAtEpoch1()])
        else:
            assert _fit_tiny(tracker).epochs["epoch"] == [0, 1]
    failed, incomplete = _mlflow_warnings(record)
    assert "failed" in failed and f"MLflow run {tracker.run_id} is incomplete" in incomplete
    run = MlflowClient(tracking_uri=store).get_run(tracker.run_id)
    assert run.info.status == status and tracker.finished
    if method == "log_figure":  # only the figures are missing
        assert "0 metric values and 0 params unsent" in incomplete


def test_the_checkpoint_is_written_before_the_epoch_end_tracker_io(tmp_path):
    events = []

    class Recorder:  # a tracker that records when it is called
        def log_params(self, params):
            events.append("params")

        def log_metrics(self, metrics, step):
            events.append(f"log {step}" + (" epoch" if "val_loss" in metrics else ""))

        def finish(self, history):
            events.append("finish")

    class Recording(CheckpointManager):
        def save(self, epoch, metrics=None, **kwargs):
            events.append(f"save {epoch}")
            return super().save(epoch, metrics, **kwargs)

    _fit_tiny(Recorder(), Recording(tmp_path, strategy="epoch"))
    assert events == [
        *("params", "log 1", "log 2", "save 0", "log 3", "log 3 epoch"),
        *("log 4", "log 5", "save 1", "log 6", "log 6 epoch", "finish"),
    ]


def test_a_store_or_artifact_folder_that_cannot_be_written_is_refused_at_once(
    tmp_path, monkeypatch
):
    artifacts = tmp_path / "mlartifacts"
    artifacts.mkdir()
    artifacts.chmod(0o555)
    if os.access(artifacts, os.W_OK):  # root ignores the mode bits: pretend as chmod would
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, m: Path(p) != artifacts and real(p, m))
    uri = f"sqlite:///{(tmp_path / 'mlflow.db').as_posix()}"
    try:
        with pytest.raises(
            ValueError, match=r"the artifact folder .*read-only is not writable \(in .*mlartifacts,"
        ):
            MLflowTracker("read-only", tracking_uri=uri, verbose=False)
    finally:
        artifacts.chmod(0o755)
    client = MlflowClient(tracking_uri=uri)
    assert client.search_runs([client.get_experiment_by_name("read-only").experiment_id]) == []
    with pytest.raises(ValueError, match=r"tracking_uri='http://\[' cannot be opened"):
        MLflowTracker("x", tracking_uri="http://[", verbose=False)
