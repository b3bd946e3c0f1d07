import matplotlib

matplotlib.use("Agg")

import ipywidgets as w
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from stabletrain.course.experiments import short_run
from stabletrain.schedulers import SCHEDULER_TYPES, StepDecay, build_scheduler, lr_curve
from stabletrain.widgets import (
    describe_schedule,
    lr_tuner,
    plot_schedules,
    schedule_curves,
    schedule_explorer,
)

TINY = {
    "num_train": 16,
    "num_val": 8,
    "batch_size": 8,
    "image_size": 32,
    "base_channels": 4,
    "depth": 2,
    "epochs": 2,
}


def _current_line(explorer):
    return next(line for line in explorer.ax.lines if line.get_label().startswith("current"))


def test_explorer_offers_every_scheduler_type():
    explorer = schedule_explorer(total_steps=50)
    assert set(explorer.controls["type"].options) == set(SCHEDULER_TYPES)


def test_explorer_sliders_redraw_on_release_only():
    explorer = schedule_explorer(total_steps=50)
    sliders = [c for c in explorer.controls.values() if isinstance(c, w.IntSlider | w.FloatSlider)]
    assert len(sliders) > 10
    assert all(s.continuous_update is False for s in sliders)


def test_explorer_follows_its_sliders():
    explorer = schedule_explorer(total_steps=60)
    figure, image = explorer.figure, explorer.image.value
    explorer.controls["type"].value = "step"
    explorer.controls["step.step_size"].value = 15
    explorer.controls["step.gamma"].value = 0.3
    explorer.controls["step.warmup_steps"].value = 5
    config = explorer.config()
    assert config == {
        "type": "step",
        "warmup_steps": 5,
        "step_size": 15,
        "gamma": 0.3,
        "min_lr_ratio": 0.0,
        "total_steps": 60,
    }
    expected = lr_curve(config, 60)
    assert explorer.curves()["current"] == expected
    # the one figure was redrawn in place with the new curve, and the image re-rendered
    assert explorer.figure is figure
    np.testing.assert_allclose(_current_line(explorer).get_ydata(), expected)
    assert explorer.image.value != image
    assert explorer.ax.get_title() == describe_schedule(config)
    assert explorer._params.children[0] is explorer._boxes["step"]  # the step sliders show


def test_explorer_config_builds_the_scheduler_it_draws():
    explorer = schedule_explorer(total_steps=40)
    for kind in ("warmup_cosine", "onecycle", "step"):  # two of them need total_steps
        explorer.controls["type"].value = kind
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0, momentum=0.9)
        sched = build_scheduler(opt, explorer.config())
        assert sched.total_steps == 40
        lrs = []
        for _ in range(40):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        assert lrs == explorer.curves()["current"]
    assert isinstance(sched, StepDecay)


def test_explorer_pins_and_clears_overlays():
    explorer = schedule_explorer(["warmup_cosine", "polynomial"], total_steps=40)
    assert explorer.clear_button.disabled  # nothing pinned yet
    image = explorer.image.value
    explorer.pin_button.click()
    assert explorer.image.value != image and not explorer.clear_button.disabled
    explorer.controls["type"].value = "polynomial"
    explorer.controls["polynomial.power"].value = 2.0
    explorer.pin_button.click()
    curves = explorer.curves()
    assert len(curves) == 3
    assert curves[describe_schedule(explorer.config())] == curves["current"]
    assert len(explorer.ax.lines) == 3
    image = explorer.image.value
    explorer.clear_button.click()
    assert explorer.image.value != image and explorer.clear_button.disabled
    assert list(explorer.curves()) == ["current"]
    assert len(explorer.ax.lines) == 1


def test_explorer_log_scale_and_base_lr():
    explorer = schedule_explorer(["exponential"], total_steps=30, base_lr=0.1)
    explorer.controls["log"].value = True
    assert explorer.ax.get_yscale() == "log"
    assert explorer.curves()["current"][0] == pytest.approx(0.1)


def test_explorer_reports_metrics_to_metric_driven_types():
    metrics = {9: 1.0, 19: 0.9, 29: 0.9, 39: 0.9, 49: float("nan"), 59: 0.8}
    explorer = schedule_explorer(["plateau", "adaptive", "step"], total_steps=60, metrics=metrics)
    explorer.controls["plateau.patience"].value = 1
    config = explorer.config()
    assert explorer.curves()["current"] == lr_curve(config, 60, metrics=metrics)
    assert min(explorer.curves()["current"]) < 1.0  # the plateau cut the LR
    assert len(explorer.metric_ax.lines) == 2  # finite metrics and the NaN marker
    explorer.controls["type"].value = "adaptive"
    lrs = explorer.curves()["current"]
    assert lrs[49] == 1.0 and lrs[50] == 0.5  # the NaN metric after step 49 halves the LR
    explorer.controls["type"].value = "step"  # closed-form types ignore the metrics
    assert explorer.curves()["current"] == lr_curve(explorer.config(), 60)
    with pytest.raises(ValueError, match="metrics"):
        schedule_explorer(["plateau"], total_steps=10, metrics={10: 1.0})
    with pytest.raises(TypeError, match="metrics"):
        schedule_curves([{"type": "plateau"}], 10, metrics=[1.0])


def test_explorer_rejects_bad_arguments():
    with pytest.raises(ValueError, match="types"):
        schedule_explorer(["cosine_annealing_typo"])
    with pytest.raises(ValueError, match="total_steps"):
        schedule_explorer(total_steps=1)
    with pytest.raises(ValueError, match="base_lr"):
        schedule_explorer(base_lr=0.0)


def test_headless_schedule_curves_and_plot():
    configs = [{"type": "constant"}, {"type": "polynomial", "power": 2.0}]
    curves = schedule_curves(configs, 20, base_lr=0.5)
    assert list(curves) == ["constant()", "polynomial(power=2)"]
    assert curves["constant()"] == [0.5] * 20
    assert curves["polynomial(power=2)"] == lr_curve(configs[1], 20, 0.5)
    with pytest.warns(DeprecationWarning, match="plot_lr"):
        fig = plot_schedules(curves, log=True)  # the former name of plotting.plot_lr
    assert isinstance(fig, Figure) and len(fig.axes[0].lines) == 2
    assert fig.axes[0].get_yscale() == "log"
    plt.close("all")


def test_lr_tuner_trains_what_its_sliders_say():
    tuner = lr_tuner(["constant", "warmup_cosine", "onecycle"], **TINY)
    assert tuner.total_steps == 4
    assert tuner.controls["warmup_steps"].max == 3
    assert tuner.controls["lr"].continuous_update is False
    assert tuner.controls["warmup_steps"].continuous_update is False
    tuner.controls["lr"].value = 0.01
    tuner.controls["type"].value = "warmup_cosine"
    tuner.controls["warmup_steps"].value = 2
    planned = tuner.planned_lrs()
    np.testing.assert_allclose(tuner.lr_ax.lines[0].get_ydata(), planned)
    tuner.button.click()
    assert len(tuner.runs) == 1
    history = tuner.runs[0]["history"]
    assert history.steps["lr"] == pytest.approx(planned)  # the run used the planned LRs
    # the same seed and budget as a direct short_run with that schedule
    direct = short_run(lr=0.01, scheduler=tuner.runs[0]["scheduler"], **TINY)
    assert history.steps["loss"] == direct.steps["loss"]
    assert tuner.runs[0]["val_dice"] == direct.epochs["val_dice"][-1]

    tuner.controls["lr"].value = 1e-4
    second = tuner.train()  # the function behind the button, headless
    assert len(tuner.runs) == 2 and tuner.runs[1]["history"] is second
    assert len(tuner.loss_ax.lines) == 2  # the new loss curve overlays the previous one
    assert "lr=0.0001," in tuner.runs[1]["label"] and "val Dice" in tuner.status.value
    tuner.clear_button.click()
    assert tuner.runs == [] and len(tuner.loss_ax.lines) == 0


def test_lr_tuner_onecycle_warmup_sets_the_rising_phase():
    tuner = lr_tuner(["onecycle"], **{**TINY, "epochs": 5})
    tuner.controls["warmup_steps"].value = 4
    config = tuner.scheduler_config()
    assert config["warmup_steps"] == 4 and "pct_start" not in config
    lrs = tuner.planned_lrs()
    # torch's OneCycleLR convention: the rise ends at step pct_start * T - 1 = W - 1
    assert int(np.argmax(lrs)) == 3
    assert lrs == pytest.approx(lr_curve({"type": "onecycle", "pct_start": 0.4}, 10, 3e-3))


def test_lr_tuner_rejects_bad_arguments():
    with pytest.raises(ValueError, match="lr"):
        lr_tuner(lr=10.0, **TINY)
    with pytest.raises(ValueError, match="warmup_steps"):
        lr_tuner(warmup_steps=4, **TINY)
    with pytest.raises(ValueError, match="scheduler"):
        lr_tuner(["constant"], scheduler="onecycle", **TINY)
    with pytest.raises(ValueError, match="types"):
        lr_tuner(["nope"], **TINY)


def test_lr_tuner_rejects_unknown_arguments_at_construction():
    model = torch.nn.Linear(1, 1)
    with pytest.raises(TypeError, match=r"\['model', 'train_loader'\].*'max_grad_norm'"):
        lr_tuner(model=model, train_loader=[], **TINY)
    with pytest.raises(TypeError, match="return_model"):  # the tuner needs the history
        lr_tuner(return_model=True, **TINY)
    tuner = lr_tuner(max_grad_norm=1.0, optimizer="sgd", **TINY)  # short_run's and fit's
    assert tuner.run_kwargs["max_grad_norm"] == 1.0
