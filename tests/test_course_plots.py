"""stabletrain.course.plots: loss curves, loss scale and prediction grids."""

import math

import matplotlib
import torch

matplotlib.use("Agg")

import pytest

from stabletrain import History, TinyUNet
from stabletrain.course.plots import plot_history, plot_loss_scale, plot_prediction_grid


def history(losses, scales=None):
    h = History()
    for i, loss in enumerate(losses):
        extra = (
            {"loss_scale": scales[i], "applied": scales[i] >= scales[max(i - 1, 0)]}
            if scales
            else {}
        )
        h.log_step(loss=loss, lr=0.1, **extra)
    h.log_epoch(epoch=0, val_loss=0.5, val_dice=0.7)
    return h


def test_plot_history_marks_divergence():
    fig = plot_history({"ok": history([1.0, 0.8, 0.6]), "nan": history([1.0, 2.0, math.nan])})
    markers = [ln for ln in fig.axes[0].lines if ln.get_marker() == "x"]
    assert len(markers) == 1 and markers[0].get_xdata()[0] == 2


def test_plot_history_smooths_with_the_one_moving_average():
    fig = plot_history(history([2.0, 0.0, math.nan, 2.0]), smoothing=0.5)
    curve = list(fig.axes[0].lines[0].get_ydata())
    # weight 0.5 of the past: (0.5·2 + 0.5·0)/(1 − 0.25); the NaN passes through
    assert curve[:2] == pytest.approx([2.0, 2 / 3]) and math.isnan(curve[2])
    with pytest.raises(ValueError, match="smoothing"):
        plot_history(history([1.0]), smoothing=1.0)


def test_plot_loss_scale_marks_skipped_steps():
    fig = plot_loss_scale(history([1.0, 1.0, 1.0], scales=[4.0, 2.0, 2.0]))
    skipped = next(ln for ln in fig.axes[0].lines if ln.get_marker() == "x")
    assert list(skipped.get_xdata()) == [1]


def test_prediction_grid_shapes():
    model = TinyUNet(base_channels=4)
    images, masks = torch.randn(3, 1, 32, 32), torch.zeros(3, 1, 32, 32)
    fig = plot_prediction_grid(model, images, masks, max_images=2)
    assert len(fig.axes) == 6
    assert model.training  # mode restored
