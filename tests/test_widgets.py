import matplotlib

matplotlib.use("Agg")

import ipywidgets as w
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

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


def _blobs(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 2, generator=g) + 2.0 * y[:, None]
    return x, y


def _task():
    x, y = _blobs()
    data = torch.utils.data.TensorDataset(x, y)
    train = torch.utils.data.DataLoader(
        data, batch_size=16, shuffle=True, generator=torch.Generator()
    )
    val = torch.utils.data.DataLoader(data, batch_size=64)
    return {"model_fn": lambda: torch.nn.Linear(2, 2), "train_loader": train, "val_loader": val}


def test_lr_tuner_trains_what_its_sliders_say_on_any_model():
    tuner = lr_tuner(
        **_task(),
        steps=8,
        lr=0.01,
        monitor="val_accuracy",
        types=["constant", "warmup_cosine", "onecycle"],
    )
    assert tuner.controls["lr"].continuous_update is False
    assert tuner.controls["warmup_steps"].max == 7
    tuner.controls["type"].value = "warmup_cosine"
    tuner.controls["warmup_steps"].value = 2
    planned = lr_curve({**tuner.schedule(), "total_steps": 8}, 8, 0.01)
    np.testing.assert_allclose(tuner.axes[0].lines[0].get_ydata(), planned)
    before = tuner.image.value
    tuner.buttons["run"].click()  # the button runs run() in a thread
    tuner.wait()
    assert tuner.error is None and tuner.image.value != before
    (run,) = tuner.runs[0]
    assert run.history.steps["lr"] == pytest.approx(planned)  # it trained the planned LRs
    again = tuner.run()  # the method behind the button, headless: the same seed, the same run
    assert again[0].history.steps["loss"] == run.history.steps["loss"]
    assert 0.0 <= run.final_metric <= 1.0 and run.monitor == "val_accuracy"
    tuner.controls["seeds"].value = 2
    assert len(tuner.run()) == 2
    config = tuner.config()
    assert config["optimizer"] == {"lr": pytest.approx(0.01)}
    opt = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=config["optimizer"]["lr"])
    assert build_scheduler(opt, config["scheduler"]).warmup_steps == 2
    assert "warmup_steps: 2" in tuner.yaml()
    tuner.clear()
    assert tuner.runs == [] and len(tuner.axes[1].lines) == 0


def test_lr_tuner_sweep_range_test_and_suggestion_rules():
    tuner = lr_tuner(**_task(), steps=6, lr=0.1, monitor="val_accuracy")
    result = tuner.sweep(lrs=[0.01, 0.1, 1.0], warmups=[0, 2])
    assert len(result.runs) == 6 and result.mode == "max"
    assert {(r["lr"], r["warmup_steps"]) for r in result.rows} == {
        (lr, w) for lr in (0.01, 0.1, 1.0) for w in (0, 2)
    }
    tuner.range_test(num_iters=20)
    rules = {rule: tuner.suggestion(rule) for rule in ("descent", "valley", "steep", "minimum")}
    assert all(0 < v < 10 for v in rules.values() if not np.isnan(v)), rules
    before = tuner.image.value
    tuner.controls["rule"].value = "minimum"
    assert tuner.image.value != before  # the chosen rule is marked
    tuner.use_suggestion("minimum")
    assert tuner.controls["lr"].value == pytest.approx(rules["minimum"], rel=0.2)


def test_lr_tuner_cancel_stops_a_run_between_steps():
    tuner = lr_tuner(**_task(), steps=50)
    tuner.controls["seeds"].value = 3
    tuner._tick = lambda *_: tuner.cancel()  # cancel pressed during the first step
    runs = tuner.run()
    assert len(runs) == 1 and runs[0].cancelled  # the first seed stopped, no other started
    assert runs[0].history.num_steps == 1 and "cancel" in tuner.status.value


def test_lr_tuner_rejects_bad_arguments_at_construction():
    task = _task()
    with pytest.raises(ValueError, match="lr"):
        lr_tuner(**task, lr=10.0)
    with pytest.raises(ValueError, match="warmup_steps"):
        lr_tuner(**task, steps=4, warmup_steps=4)
    with pytest.raises(ValueError, match="schedule"):
        lr_tuner(**task, types=["constant"], schedule="onecycle")
    with pytest.raises(ValueError, match="types"):
        lr_tuner(**task, types=["nope"])
    with pytest.raises(TypeError, match="model_fn"):
        lr_tuner(torch.nn.Linear(1, 1), task["train_loader"])
    with pytest.raises(TypeError):
        lr_tuner(**task, model=torch.nn.Linear(1, 1))
