"""The bad-input audit, kept: every input that once trained silently with a wrong result, or
failed deep inside torch, YAML or Python, is one line here with the exception (or warning) it
must raise now and a fragment of its message (which names the parameter and what is accepted).

One list per area; each case is ``case(id, call, expected, fragment)`` where ``expected`` is an
exception type or a warning category (``UserWarning`` and its subclasses: ``pytest.warns``)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest


def case(id: str, call: Callable[[], Any], expected: type[BaseException], fragment: str):
    return pytest.param(call, expected, fragment, id=id)


# --- metric direction (monitor → mode) ------------------------------------------------------


def _metric_mode(*args):
    from stabletrain.metrics import metric_mode

    return metric_mode(*args)


METRIC_CASES = [
    case("mode-of-unknown-metric", lambda: _metric_mode("val_dcie"), ValueError, "give mode="),
    case("mode-not-a-choice", lambda: _metric_mode("val_loss", "down"), ValueError, "'max'"),
]


# --- configuration and command line ---------------------------------------------------------

CONFIG_CASES: list = []


# --- losses, loss weights, deep supervision -------------------------------------------------


def _loss(name: str, *args, **kwargs):
    from stabletrain import losses

    return getattr(losses, name)(*args, **kwargs)


def _tensors(kind: str):
    """``(pred, target)``: empty, uint8 0/255 masks, 3-class logits with indices."""
    import torch

    if kind == "empty":
        return torch.zeros(0, 1, 4, 4), torch.zeros(0, 1, 4, 4)
    if kind == "mask255":
        return torch.randn(2, 1, 4, 4), torch.randint(0, 2, (2, 1, 4, 4), dtype=torch.uint8) * 255
    return torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4))


def _on(loss, kind: str):
    return loss(*_tensors(kind))


def _scheduler(schedule: str = "linear", **kwargs):
    from stabletrain.loss_weights import LossWeightScheduler

    return LossWeightScheduler(_loss("build_loss", "default_segmentation"), schedule, **kwargs)


def _supervised(schedule: str, **params):
    from stabletrain.deep_supervision import DeepSupervisionLoss

    return DeepSupervisionLoss(_loss("DiceLoss"), 3, schedule, **params)


def _metric(name: str, *args, **kwargs):
    from stabletrain import metrics

    return getattr(metrics, name)(*args, **kwargs)


def _set_item(mapping, key, value):
    mapping[key] = value


_DICE, _FOCAL, _BUILD = "DiceLoss", "FocalLoss", "build_loss"
_CFG_BOOL, _CFG_NUM = "must be a bool (True or False)", "must be a number"
LOSS_CASES = [
    case("dice-squared-str", lambda: _loss(_DICE, squared="False"), TypeError, "squared must be a"),
    case("dice-smooth-bool", lambda: _loss(_DICE, smooth=True), TypeError, "smooth must be a nu"),
    case("dice-batch-str", lambda: _loss(_DICE, batch="yes"), TypeError, "batch must be a bool"),
    case("focal-bg-str", lambda: _loss(_FOCAL, include_background="no"), TypeError, "include_b"),
    case("tversky-ab-0", lambda: _loss("TverskyLoss", alpha=0, beta=0), ValueError, "both be 0"),
    case("weight-str", lambda: _loss(_DICE, weight="1,2"), TypeError, "weight must be a sequence"),
    case("weight-bool", lambda: _loss(_DICE, weight=[True]), TypeError, "weight[0] must be a nu"),
    case("weight-neg", lambda: _loss(_FOCAL, weight=[1, -1]), ValueError, "weight[1] must be >= 0"),
    case("weight-zero", lambda: _loss(_DICE, weight=[0, 0]), ValueError, "a value > 0 (all 0"),
    case(
        "weight-length",
        lambda: _on(_loss(_DICE, "multiclass", weight=[1, 2]), "classes"),
        ValueError,
        "one value per class: it has 2 values, but pred has C = 3",
    ),
    case("dice-empty", lambda: _on(_loss(_DICE), "empty"), ValueError, "an empty batch raises"),
    case("focal-empty", lambda: _on(_loss(_FOCAL), "empty"), ValueError, "an empty batch raises"),
    case("dice-mask255", lambda: _on(_loss(_DICE), "mask255"), ValueError, "must be in [0, 1]"),
    case(
        "bce-mask255",
        lambda: _on(_loss(_BUILD, "default_segmentation").term("bce"), "mask255"),
        ValueError,
        "binary target values must be in [0, 1], got values in [0, 255]",
    ),
    case(
        "multiclass-mask255",
        lambda: _loss(_BUILD, "default_segmentation", mode="multiclass")(
            _tensors("classes")[0], _tensors("mask255")[1][:, 0] // 255 * 200
        ),
        ValueError,
        "indices must be in [0, 2]",
    ),
    case(
        "config-jaccard-str",
        lambda: _loss(_BUILD, {"dice_config": {"jaccard": "no"}}),
        ValueError,
        "dice_config.jaccard " + _CFG_BOOL,
    ),
    case(
        "config-squared-int",
        lambda: _loss(_BUILD, {"dice_config": {"squared_pred": 1}}),
        ValueError,
        "dice_config.squared_pred " + _CFG_BOOL,
    ),
    case(
        "config-smooth-0",
        lambda: _loss(_BUILD, {"dice_config": {"smooth": 0}}),
        ValueError,
        "dice_config.smooth must be > 0",
    ),
    case(
        "config-gamma-str",
        lambda: _loss(_BUILD, {"bce_config": {"gamma": "2"}}),
        ValueError,
        "bce_config.gamma " + _CFG_NUM,
    ),
    case(
        "config-weight-bool",
        lambda: _loss(_BUILD, {"dice_weight": True}),
        ValueError,
        "dice_weight " + _CFG_NUM,
    ),
    case(
        "config-weight-str",
        lambda: _loss(_BUILD, {"bce_weight": "0.3"}),
        ValueError,
        "bce_weight " + _CFG_NUM,
    ),
    case(
        "config-weight-neg",
        lambda: _loss(_BUILD, {"bce_weight": -1}),
        ValueError,
        "bce_weight must be >= 0",
    ),
    case(
        "config-weights-0",
        lambda: _loss(_BUILD, {"dice_weight": 0, "bce_weight": 0}),
        ValueError,
        "weights must not all be 0",
    ),
    case(
        "config-unknown-key",
        lambda: _loss(_BUILD, {"dice_wieght": 0.5}),
        ValueError,
        "unknown key(s) ['dice_wieght']",
    ),
    case(
        "config-unknown-dice-key",
        lambda: _loss(_BUILD, {"dice_config": {"squared": True}}),
        ValueError,
        "accepted keys are ('smooth', 'jaccard', 'squared_pred', 'include_background')",
    ),
    case(
        "config-section-list",
        lambda: _loss(_BUILD, {"bce_config": ["gamma"]}),
        ValueError,
        "bce_config must be a mapping",
    ),
    case(
        "combined-weights-0",
        lambda: _loss("CombinedLoss", {"dice": (_loss(_DICE), 0), "f": (_loss(_FOCAL), 0.0)}),
        ValueError,
        "weights must not all be 0",
    ),
    case(
        "combined-weights-set-0",
        lambda: setattr(_loss(_BUILD, "default_segmentation"), "weights", {"dice": 0, "bce": 0}),
        ValueError,
        "weights must not all be 0",
    ),
    case(
        "combined-weights-item",
        lambda: _set_item(_loss(_BUILD, "default_segmentation").weights, "dice", 0.1),
        TypeError,
        "read-only snapshot: to change weights, assign loss.weights = {key: weight, ...}",
    ),
    case(
        "lw-end-0",
        lambda: _scheduler(end={"dice": 0, "bce": 0}),
        ValueError,
        "end weights must not all be 0",
    ),
    case(
        "lw-monitor-int",
        lambda: _scheduler("performance", monitor=3),
        TypeError,
        "monitor must be a metric name",
    ),
    case(
        "lw-monitor-direction",
        lambda: _scheduler("performance", monitor="val_score"),
        ValueError,
        "give mode='min' or mode='max'",
    ),
    case(
        "lw-strength-inf",
        lambda: _scheduler("loss_balanced", strength=float("inf")),
        ValueError,
        "strength must be finite",
    ),
    case(
        "lw-load-garbage",
        lambda: _scheduler().load_state_dict({"type": "linear", "last_epoch": "x", "gamma": 7}),
        ValueError,
        "state lacks ['params'",
    ),
    case("lw-load-list", lambda: _scheduler().load_state_dict([]), TypeError, "state must be a"),
    case(
        "ds-curriculum-neg",
        lambda: _supervised("curriculum", max_active_outputs=-1),
        ValueError,
        "max_active_outputs must be >= 0",
    ),
    case(
        "ds-curriculum-float",
        lambda: _supervised("curriculum", max_active_outputs=2.5),
        ValueError,
        "max_active_outputs must be an int or None",
    ),
    case(
        "ds-sigmoid-k-0",
        lambda: _supervised("custom_sigmoid_low_to_high", k=0),
        ValueError,
        "k must be > 0",
    ),
    case(
        "metric-bg-str",
        lambda: _metric("dice_score", *_tensors("classes"), include_background="no"),
        TypeError,
        "include_background must be a bool",
    ),
    case(
        "metric-threshold-str",
        lambda: _metric("iou_score", *_tensors("mask255"), threshold="0.5"),
        TypeError,
        "threshold must be a number",
    ),
    case(
        "metric-empty",
        lambda: _metric("dice_score", *_tensors("empty")),
        ValueError,
        "an empty batch raises",
    ),
    case(
        "metric-index-range",
        lambda: _metric("dice_score", _tensors("classes")[0], _tensors("classes")[1] + 1),
        ValueError,
        "class indices in [0, 2] (C = 3)",
    ),
    case(
        "accuracy-empty",
        lambda: _metric("accuracy", *_tensors("empty")),
        ValueError,
        "an empty batch raises",
    ),
]


# --- schedulers -----------------------------------------------------------------------------

SCHEDULER_CASES: list = []


# --- fit, the update, the guard, callbacks --------------------------------------------------

TRAINING_CASES: list = []


# --- checkpoints and tracking ---------------------------------------------------------------

FILE_CASES: list = []


# --- the audit ------------------------------------------------------------------------------

ALL_CASES = [
    *METRIC_CASES,
    *CONFIG_CASES,
    *LOSS_CASES,
    *SCHEDULER_CASES,
    *TRAINING_CASES,
    *FILE_CASES,
]


@pytest.mark.parametrize("call, expected, fragment", ALL_CASES)
def test_bad_input_is_refused(call, expected, fragment):
    if issubclass(expected, Warning):
        with pytest.warns(expected, match=re.escape(fragment)):
            call()
    else:
        with pytest.raises(expected, match=re.escape(fragment)):
            call()


def test_metric_mode_reads_the_direction_from_the_name():
    from stabletrain.metrics import metric_mode

    assert [metric_mode(m) for m in ("val_loss", "train_loss", "val_mse")] == ["min"] * 3
    assert [metric_mode(m) for m in ("val_dice", "val_iou", "val_acc", "val_accuracy")] == [
        "max"
    ] * 4
    assert metric_mode("val_custom", "max") == "max"
