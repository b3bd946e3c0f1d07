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

LOSS_CASES: list = []


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
