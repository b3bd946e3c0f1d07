"""stabletrain.course.supervision: the weight curves of the deep-supervision schedules."""

import matplotlib
import pytest

matplotlib.use("Agg")

from stabletrain.course.supervision import plot_supervision_weights, supervision_curves
from stabletrain.deep_supervision import supervision_weights


def test_curves_sample_the_schedule_evenly():
    progress, weights = supervision_curves("linear_low_to_high", 4, num_points=5)
    assert progress == [0.0, 0.25, 0.5, 0.75, 1.0]
    for p, w in zip(progress, weights):
        assert w == supervision_weights("linear_low_to_high", 4, p)
    _, custom = supervision_curves("step_wise", 3, num_points=3, threshold=0.25)
    assert custom[1] == [1.0, 0.0, 0.0]  # p = 0.5 is past the threshold
    for bad in (1, 2.0, True):
        with pytest.raises(ValueError, match="num_points"):
            supervision_curves("nnunet", 3, num_points=bad)


def test_plot_draws_one_line_per_output_the_final_one_thickest():
    fig = plot_supervision_weights("nnunet", 3, num_points=11)
    lines = fig.axes[0].lines
    assert len(lines) == 3
    assert lines[0].get_linewidth() > lines[1].get_linewidth()
    assert list(lines[2].get_ydata()) == [0.0] * 11  # nnU-Net drops the deepest output


def test_widget_draws_the_same_figure():
    pytest.importorskip("ipywidgets")
    from stabletrain.deep_supervision import supervision_widget

    widget = supervision_widget("nnunet", num_outputs=3)
    image = widget.children[1]
    assert image.value[:8] == b"\x89PNG\r\n\x1a\n"
