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


def _model(params: bool = True):
    import torch

    torch.manual_seed(0)
    return torch.nn.Linear(3, 1) if params else torch.nn.ReLU()


def _batches(n: int = 3, size: int = 4) -> list:
    import torch

    g = torch.Generator().manual_seed(0)
    return [
        (torch.randn(size, 3, generator=g), torch.randn(size, 1, generator=g)) for _ in range(n)
    ]


def _fit(model=None, train=None, **kwargs):
    from stabletrain.loop import fit

    model = _model() if model is None else model
    return fit(model, _batches() if train is None else train, **{"progress": False, **kwargs})


def _stopper(**kwargs):
    from stabletrain.callbacks import EarlyStopping

    return EarlyStopping(**{"patience": 1, **kwargs})


def _guard(**kwargs):
    import torch

    from stabletrain.stability import StabilityGuard

    model = _model()
    return StabilityGuard(model, torch.optim.SGD(model.parameters(), lr=0.1), **kwargs)


def _update(**kwargs):
    import torch

    from stabletrain.update import Update

    model = _model()
    return Update(model, torch.optim.SGD(model.parameters(), lr=0.1), **kwargs)


def _amp(**kwargs):
    from stabletrain.amp import MixedPrecision

    return MixedPrecision("float16", **{"device_type": "cpu", **kwargs})


def _sgd(model, lr=0.1):
    import torch

    return torch.optim.SGD(model.parameters(), lr=lr)


def _loaders(**kwargs):
    from stabletrain.data import make_loaders

    return make_loaders(**{"num_train": 4, "num_val": 4, "image_size": 16, **kwargs})


def _empty_batch():
    import torch

    return [(torch.zeros(0, 3), torch.zeros(0, 1))]


def _get_device(prefer):
    from stabletrain.utils import get_device

    return get_device(prefer)


def _seed(seed, **kwargs):
    from stabletrain.utils import seed_everything

    return seed_everything(seed, **kwargs)


def _nan_detector(**kwargs):
    from stabletrain.stability import NanDetector

    return NanDetector(_model(), **kwargs)


def _evaluate(loader):
    from stabletrain.loop import evaluate

    return evaluate(_model(), loader)


TRAINING_CASES = [
    # monitor semantics
    case(
        "monitor-unknown-no-mode",
        lambda: _fit(early_stopping=_stopper(), monitor="val_x2"),
        ValueError,
        "give mode=",
    ),
    case(
        "monitor-absent",
        lambda: _fit(early_stopping=_stopper(), monitor="val_loss"),
        ValueError,
        "is not among this epoch's metrics ['lr', 'train_loss']",
    ),
    case("monitor-not-a-str", lambda: _fit(monitor=3), TypeError, "monitor must be a metric name"),
    case("stopper-mode-choice", lambda: _stopper(mode="best"), ValueError, "'min', 'max'"),
    case("stopper-step-without-mode", lambda: _stopper().step(1.0), ValueError, "mode='min'"),
    case("stopper-patience-bool", lambda: _stopper(patience=True), TypeError, "patience must be"),
    case("stopper-min-delta-str", lambda: _stopper(min_delta="0.1"), TypeError, "min_delta must"),
    case(
        "stopper-check-finite-str",
        lambda: _stopper(check_finite="false"),
        TypeError,
        "check_finite must be a bool",
    ),
    # strict arguments of fit
    case("fit-max-steps-bool", lambda: _fit(max_steps=True), TypeError, "max_steps must be an int"),
    case("fit-epochs-str", lambda: _fit(epochs="2"), TypeError, "epochs must be an int"),
    case(
        "fit-accumulation-zero",
        lambda: _fit(accumulation_steps=0),
        ValueError,
        "accumulation_steps must be >= 1",
    ),
    case(
        "fit-accumulation-bool-with-guard",
        lambda: _fit(guard=_guard(), accumulation_steps=True),
        TypeError,
        "accumulation_steps must be an int",
    ),
    case(
        "fit-max-grad-norm-str",
        lambda: _fit(max_grad_norm="1"),
        TypeError,
        "max_grad_norm must be a number",
    ),
    case("fit-lr-bool", lambda: _fit(lr=True), TypeError, "lr must be a number"),
    case("fit-lr-negative", lambda: _fit(lr=-0.1), ValueError, "lr must be >= 0"),
    case("fit-device-tpu", lambda: _fit(device="tpu"), ValueError, "device must be 'cpu', 'cuda'"),
    case("fit-device-bool", lambda: _fit(device=True), TypeError, "device must be 'cpu'"),
    case("get-device-tpu", lambda: _get_device("tpu"), ValueError, "prefer must be 'cpu', 'cuda'"),
    case(
        "fit-model-without-parameters",
        lambda: _fit(model=_model(params=False)),
        ValueError,
        "the model has no parameters",
    ),
    case(
        "fit-model-not-a-module",
        lambda: _fit(model=lambda x: x),
        TypeError,
        "model must be a torch.nn.Module",
    ),
    case("fit-progress-str", lambda: _fit(progress="no"), TypeError, "progress must be a bool"),
    case("fit-resume-str", lambda: _fit(resume="false"), TypeError, "resume must be a bool"),
    case(
        "fit-stop-on-nonfinite-int",
        lambda: _fit(stop_on_nonfinite=0),
        TypeError,
        "stop_on_nonfinite must be a bool",
    ),
    # strict arguments of the update, the guard, amp, callbacks
    case(
        "update-accumulation-bool",
        lambda: _update(accumulation_steps=True),
        TypeError,
        "accumulation_steps must be an int",
    ),
    case(
        "update-max-grad-norm-str",
        lambda: _update(max_grad_norm="1"),
        TypeError,
        "max_grad_norm must be a number",
    ),
    case(
        "guard-min-loss-scale-str",
        lambda: _guard(min_loss_scale="1"),
        TypeError,
        "min_loss_scale must be a number",
    ),
    case("guard-max-norm-str", lambda: _guard(max_norm="1"), TypeError, "max_norm must be"),
    case(
        "guard-snapshot-every-bool",
        lambda: _guard(snapshot_every=True),
        TypeError,
        "snapshot_every must be an int",
    ),
    case(
        "guard-spike-factor-bool",
        lambda: _guard(spike_factor=True),
        TypeError,
        "spike_factor must be a number",
    ),
    case(
        "guard-on-nonfinite-bool",
        lambda: _guard(on_nonfinite=True),
        ValueError,
        "on_nonfinite must be one of",
    ),
    case("amp-enabled-str", lambda: _amp(enabled="false"), TypeError, "enabled must be a bool"),
    case(
        "amp-device-type-tpu",
        lambda: _amp(device_type="tpu"),
        ValueError,
        "device_type must be one of",
    ),
    case("amp-init-scale-str", lambda: _amp(init_scale="1024"), TypeError, "init_scale must be"),
    case(
        "amp-growth-interval-bool",
        lambda: _amp(growth_interval=True),
        TypeError,
        "growth_interval must be an int",
    ),
    case(
        "nan-detector-raise-str",
        lambda: _nan_detector(raise_on_nonfinite="no"),
        TypeError,
        "raise_on_nonfinite must be a bool",
    ),
    case("loaders-batch-size-str", lambda: _loaders(batch_size="16"), TypeError, "batch_size must"),
    case("loaders-num-workers-bool", lambda: _loaders(num_workers=True), TypeError, "num_workers"),
    case("loaders-seed-bool", lambda: _loaders(seed=True), TypeError, "seed must be an int"),
    case(
        "seed-deterministic-str",
        lambda: _seed(0, deterministic="no"),
        TypeError,
        "deterministic must be a bool",
    ),
    # no silent no-ops
    case("fit-lr-zero", lambda: _fit(lr=0), UserWarning, "lr is 0 in every parameter group"),
    case(
        "fit-optimizer-lr-zero",
        lambda: (m := _model(), _fit(m, optimizer=_sgd(m, lr=0.0))),
        UserWarning,
        "lr is 0 in every parameter group",
    ),
    case(
        "fit-optimizer-of-another-model",
        lambda: _fit(optimizer=_sgd(_model())),
        ValueError,
        "the optimizer holds none of the model's parameters",
    ),
    case(
        "fit-guard-of-another-model",
        lambda: _fit(guard=_guard()),
        ValueError,
        "the optimizer holds none of the model's parameters",
    ),
    case(
        "fit-accumulation-over-epoch",
        lambda: _fit(accumulation_steps=5),
        ValueError,
        "accumulation_steps=5 is more than the 3 batches per epoch: give at most",
    ),
    case("fit-empty-val-loader", lambda: _fit(val_loader=[]), ValueError, "val_loader is empty"),
    case("fit-empty-train-loader", lambda: _fit(train=[]), ValueError, "train_loader is empty"),
    case("fit-empty-batch", lambda: _fit(train=_empty_batch()), ValueError, "an empty batch"),
    case("evaluate-empty-batch", lambda: _evaluate(_empty_batch()), ValueError, "an empty batch"),
]


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
