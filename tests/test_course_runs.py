"""stabletrain.course.runs: MLflow runs read back into data frames and figures."""

import matplotlib
import pytest
import torch

matplotlib.use("Agg")
pytest.importorskip("mlflow")

from stabletrain.course.runs import metric_history, plot_runs, runs_dataframe
from stabletrain.data import make_loaders
from stabletrain.loop import fit
from stabletrain.models import TinyUNet
from stabletrain.tracking import MLflowTracker
from stabletrain.utils import seed_everything


@pytest.fixture(scope="module")
def run(store):
    """A 2-epoch fit logged through a tracker."""
    train, val = make_loaders(num_train=24, num_val=8, batch_size=8, image_size=32, seed=1)
    seed_everything(0)
    model = TinyUNet(base_channels=4, depth=2, attention=None)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    tracker = MLflowTracker("test", run_name="sgd", tracking_uri=store, verbose=False)
    history = fit(
        model,
        train,
        val_loader=val,
        epochs=2,
        optimizer=optimizer,
        tracker=tracker,
        progress=False,
    )
    return tracker, history


def test_read_back_helpers(store, run):
    tracker, history = run
    other = MLflowTracker("test", run_name="second", tracking_uri=store, verbose=False)
    other.log_params({"scheduler": {"name": "cosine", "warmup": 2}})
    for step in range(1, 4):
        other.log_metrics({"train_loss": 1.0 / step}, step=step)
    other.finish()
    frame = runs_dataframe("test", tracking_uri=store, run_ids=[tracker.run_id, other.run_id])
    assert list(frame["run_name"]) == ["sgd", "second"]
    assert frame.loc[1, "params.scheduler.warmup"] == "2"
    assert frame.loc[0, "metrics.val_loss"] == pytest.approx(history.epochs["val_loss"][-1])
    curves = metric_history("test", "train_loss", tracking_uri=store, run_ids=[other.run_id])
    assert list(curves["step"]) == [1, 2, 3]
    assert list(curves["value"]) == pytest.approx([1.0, 0.5, 1 / 3])
    fig = plot_runs("test", "train_loss", tracking_uri=store, run_ids=[tracker.run_id])
    assert len(fig.axes[0].lines) == 1
    with pytest.raises(ValueError, match="no MLflow experiment named 'nope'"):
        runs_dataframe("nope", tracking_uri=store)
    with pytest.raises(ValueError, match="are not in experiment"):
        runs_dataframe("test", tracking_uri=store, run_ids=["no-such-run"])
