"""stabletrain.plotting: the LR figure."""

import matplotlib

matplotlib.use("Agg")

from stabletrain.plotting import plot_lr


def test_plot_lr_draws_one_line_per_schedule():
    fig = plot_lr({"a": [0.1, 0.05], "b": [0.2, 0.1]})
    assert len(fig.axes[0].lines) == 2
