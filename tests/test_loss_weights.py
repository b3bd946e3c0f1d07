"""Tests of stabletrain.loss_weights: every schedule's rule, state and the fit callback."""

from __future__ import annotations

import math

import pytest
import torch

from stabletrain.loss_weights import (
    SCHEDULE_TYPES,
    LossWeightCallback,
    LossWeightScheduler,
    default_end_weights,
)
from stabletrain.losses import CombinedLoss, DiceLoss, FocalLoss, build_loss


def _rounded(weights):
    return {k: round(v, 6) for k, v in weights.items()}


def test_default_end_puts_080_on_the_overlap_term():
    assert default_end_weights({"dice": 0.5, "bce": 0.5}) == pytest.approx(
        {"dice": 0.8, "bce": 0.2}
    )
    three = {"jaccard": 0.4, "bce": 0.3, "focal": 0.3}
    assert default_end_weights(three) == pytest.approx({"jaccard": 0.8, "bce": 0.1, "focal": 0.1})
    with pytest.raises(ValueError, match="pass end="):
        default_end_weights({"bce": 0.5, "focal": 0.5})


@pytest.mark.parametrize("progress", [0.0, 0.2, 0.5, 0.8, 1.0])
def test_progress_schedules_follow_their_formulas(progress):
    expected_fraction = {
        "linear": progress,
        "cosine": (1 - math.cos(math.pi * progress)) / 2,
        "step": math.floor(progress * 4) / 4,
    }
    for kind, fraction in expected_fraction.items():
        loss = build_loss("balanced_segmentation")
        sched = LossWeightScheduler(loss, kind)
        sched.step(progress)
        dice = 0.5 + (0.8 - 0.5) * fraction
        assert loss.weights == pytest.approx({"dice": dice, "bce": 1 - dice}), kind


def test_custom_end_and_step_count():
    loss = build_loss("default_segmentation")
    sched = LossWeightScheduler(loss, "step", end={"dice": 0.1, "bce": 0.9}, num_steps=2)
    sched.step(0.49)
    assert loss.weights == pytest.approx({"dice": 0.7, "bce": 0.3})
    sched.step(0.5)
    assert loss.weights == pytest.approx({"dice": 0.4, "bce": 0.6})
    sched.step(1.0)
    assert loss.weights == pytest.approx({"dice": 0.1, "bce": 0.9})


def test_every_type_works_without_parameters():
    for kind in SCHEDULE_TYPES:
        loss = build_loss("focal_segmentation")
        sched = LossWeightScheduler(loss, kind)
        sched.step(0.5, {"val_loss": 0.5, "val_dice": 0.5, "dice": 0.4, "focal": 0.1})
        assert sum(loss.weights.values()) == pytest.approx(1.0)


def test_loss_balanced_gives_weight_to_the_term_that_improves_least():
    loss = build_loss("balanced_segmentation")
    sched = LossWeightScheduler(loss, "loss_balanced", momentum=0.0)
    sched.step(0.0, {"dice": 0.8, "bce": 0.6})
    assert loss.weights == pytest.approx({"dice": 0.5, "bce": 0.5})
    sched.step(0.5, {"dice": 0.8, "bce": 0.2})  # bce fell to 1/3 of its start, dice did not move
    # w ∝ w0 · r: dice 0.5·1, bce 0.5·(1/3) → 0.75 / 0.25
    assert loss.weights == pytest.approx({"dice": 0.75, "bce": 0.25})
    sched.step(0.6, {"dice": 0.8, "bce": 0.0})  # min_weight keeps every term alive
    assert loss.weights["bce"] == pytest.approx(0.05 / 1.05)
    with pytest.raises(ValueError, match=r"missing \['bce'\]"):
        sched.step(0.7, {"dice": 0.5, "val_loss": 1.0})
    before = loss.weights
    sched.step(0.7)  # no metrics: unchanged
    assert loss.weights == before


def test_performance_moves_towards_end_on_plateau():
    loss = build_loss("balanced_segmentation")
    sched = LossWeightScheduler(loss, "performance", patience=2, factor=0.5)
    for dice in (0.5, 0.6, 0.6, 0.6):  # improves, then two calls without improvement
        sched.step(0.1, {"val_dice": dice})
    assert sched.num_moves == 1
    assert loss.weights == pytest.approx({"dice": 0.65, "bce": 0.35})
    sched.step(0.2, {"val_dice": 0.9})
    assert loss.weights == pytest.approx({"dice": 0.65, "bce": 0.35})
    with pytest.raises(ValueError, match="monitors 'val_dice'"):
        sched.step(0.3, {"val_loss": 0.1})
    low = LossWeightScheduler(
        build_loss("balanced_segmentation"),
        "performance",
        monitor="val_loss",
        mode="min",
        patience=1,
    )
    low.step(0.0, {"val_loss": 1.0})
    low.step(0.0, {"val_loss": 1.1})
    assert low.num_moves == 1


def test_performance_direction_comes_from_the_monitored_metric():
    loss = build_loss("balanced_segmentation")
    sched = LossWeightScheduler(loss, "performance", monitor="val_loss", patience=1)
    assert sched.params["mode"] == "min"
    for value in (1.0, 0.9, 0.8):  # improving: the weights stay
        sched.step(0.0, {"val_loss": value})
    assert sched.num_moves == 0
    sched.step(0.0, {"val_loss": 0.95})
    assert sched.num_moves == 1
    assert LossWeightScheduler(loss, "performance").params["mode"] == "max"  # val_dice
    custom = LossWeightScheduler(loss, "performance", monitor="val_score", mode="max")
    assert custom.params["mode"] == "max"


def test_state_dict_round_trip():
    loss = build_loss("balanced_segmentation")
    sched = LossWeightScheduler(loss, "loss_balanced")
    sched.step(0.1, {"dice": 0.9, "bce": 0.7})
    sched.step(0.2, {"dice": 0.8, "bce": 0.3})
    state = sched.state_dict()
    other_loss = build_loss("balanced_segmentation")
    other = LossWeightScheduler(other_loss, "loss_balanced")
    other.load_state_dict(state)
    assert other_loss.weights == loss.weights
    sched.step(0.3, {"dice": 0.7, "bce": 0.2})
    other.step(0.3, {"dice": 0.7, "bce": 0.2})
    assert other_loss.weights == loss.weights
    assert other.calls == sched.calls == 3
    with pytest.raises(ValueError, match="'loss_balanced' schedule"):
        LossWeightScheduler(build_loss("balanced_segmentation"), "linear").load_state_dict(state)


def test_bad_arguments():
    loss = build_loss("balanced_segmentation")
    with pytest.raises(ValueError, match="schedule must be one of"):
        LossWeightScheduler(loss, "exponential")
    with pytest.raises(
        ValueError, match=r"unknown key\(s\) \['patience'\] in the parameters of schedule"
    ):
        LossWeightScheduler(loss, "linear", patience=3)
    with pytest.raises(ValueError, match="every term"):
        LossWeightScheduler(loss, "linear", end={"dice": 1.0})
    with pytest.raises(TypeError, match="CombinedLoss"):
        LossWeightScheduler(DiceLoss(), "linear")
    with pytest.raises(ValueError, match=r"progress must be in \[0, 1\]"):
        LossWeightScheduler(loss, "linear").step(1.5)
    with pytest.raises(ValueError, match="num_steps"):
        LossWeightScheduler(loss, "step", num_steps=0)
    with pytest.raises(ValueError, match="factor"):
        LossWeightScheduler(loss, "performance", factor=0.0)


def test_callback_drives_the_schedule_in_fit():
    from stabletrain.data import make_loaders
    from stabletrain.loop import fit
    from stabletrain.models import TinyUNet

    train, val = make_loaders(16, 8, batch_size=8, image_size=32)
    loss = CombinedLoss({"dice": (DiceLoss(), 0.5), "focal": (FocalLoss(), 0.5)})
    linear = LossWeightCallback(LossWeightScheduler(loss, "linear"))
    fit(
        TinyUNet(base_channels=4), train, epochs=2, loss_fn=loss, callbacks=[linear], progress=False
    )
    assert [round(w, 3) for w in linear.history["dice"]] == [0.5, 0.575, 0.65, 0.725, 0.8]
    loss.weights = {"dice": 0.5, "focal": 0.5}
    adaptive = LossWeightCallback(LossWeightScheduler(loss, "loss_balanced"))
    torch.manual_seed(0)
    fit(
        TinyUNet(base_channels=4),
        train,
        val_loader=val,
        epochs=2,
        loss_fn=loss,
        callbacks=[adaptive],
        progress=False,
    )
    assert len(adaptive.history["dice"]) == 3  # start + one update per epoch
    assert adaptive.scheduler.first_values.keys() == {"dice", "focal"}
    assert sum(loss.weights.values()) == pytest.approx(1.0)


def test_callback_state_round_trip():
    loss = build_loss("balanced_segmentation")
    callback = LossWeightCallback(LossWeightScheduler(loss, "linear"))
    callback.scheduler.step(0.5)
    callback._record()
    state = callback.state_dict()
    fresh = LossWeightCallback(LossWeightScheduler(build_loss("balanced_segmentation"), "linear"))
    fresh.load_state_dict(state)
    assert fresh.history == callback.history
    assert fresh.scheduler.state_dict() == callback.scheduler.state_dict()


def test_former_names_still_work_with_a_deprecation_warning():
    loss = build_loss("balanced_segmentation")
    with pytest.warns(DeprecationWarning, match="'adaptive' is deprecated; use 'loss_balanced'"):
        old = LossWeightScheduler(loss, "adaptive", momentum=0.0)
    assert old.schedule == "loss_balanced" and LossWeightCallback(old).metric_driven
    with pytest.warns(DeprecationWarning, match="schedule="):
        keyword = LossWeightScheduler(build_loss("balanced_segmentation"), type="step", num_steps=2)
    assert keyword.schedule == "step" and keyword.params["num_steps"] == 2
    keyword.step(0.5)
    keyword.step(1.0)
    assert keyword.calls == 2  # step() calls; params["num_steps"] is the schedule's K
    with pytest.warns(DeprecationWarning, match="calls"):
        assert keyword.num_steps == 2
    with pytest.warns(DeprecationWarning, match="schedule"):
        assert keyword.type == "step"
    # a state saved under the former names loads into the renamed schedule
    fresh = LossWeightScheduler(build_loss("balanced_segmentation"), "loss_balanced")
    state = {**fresh.state_dict(), "type": "adaptive", "num_steps": 7}
    del state["calls"]
    fresh.load_state_dict(state)
    assert fresh.calls == 7
