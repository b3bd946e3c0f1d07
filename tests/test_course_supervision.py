"""stabletrain.course.supervision: the weight curves of the deep-supervision schedules."""

import matplotlib
import pytest
import torch

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


def test_explorer_returns_data_and_its_controls_change_the_image():
    pytest.importorskip("ipywidgets")
    from stabletrain.course.supervision import _PARAMS, SupervisionExplorer
    from stabletrain.deep_supervision import SCHEDULES, DeepSupervisionLoss, supervision_widget

    explorer = supervision_widget("nnunet", num_outputs=3)
    assert isinstance(explorer, SupervisionExplorer)
    assert explorer.image.value[:8] == b"\x89PNG\r\n\x1a\n"
    assert explorer.weights(0.3) == supervision_weights("nnunet", 3, 0.3)
    for schedule in SCHEDULES:  # the controls start at the schedule's defaults
        explorer.controls["schedule"].value = schedule
        assert list(explorer.config())[2:] == list(_PARAMS.get(schedule, {}))
        DeepSupervisionLoss(torch.nn.functional.mse_loss, **explorer.config())
        for p in (0.0, 0.45, 1.0):
            assert explorer.weights(p) == supervision_weights(schedule, 3, p)
            assert sum(explorer.weights(p)) == pytest.approx(1.0)
    progress, weights = explorer.curves(num_points=5)
    assert weights[2] == explorer.weights(progress[2])
    explorer.controls["schedule"].value = "step_wise"
    assert list(explorer._params.children) == [explorer.controls["step_wise.threshold"]]
    for control, value in (("step_wise.threshold", 0.2), ("num_outputs", 5)):
        image = explorer.image.value
        explorer.controls[control].value = value
        assert explorer.image.value != image, control
    assert explorer.config() == {"schedule": "step_wise", "num_outputs": 5, "threshold": 0.2}
    assert len(explorer.weights(0.1)) == 5 and explorer.weights(0.3)[0] == 1.0
    image = explorer.image.value
    explorer.button.click()  # progress 0.5 -> 0.6
    assert explorer.controls["progress"].value == pytest.approx(0.6)
    assert explorer.image.value != image
    assert "progress 0.60" in explorer.ax.get_title()
