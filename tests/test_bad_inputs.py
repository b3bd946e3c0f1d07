"""The bad-input audit, kept: every input that once trained silently with a wrong result, or
failed deep inside torch, YAML or Python, is one line here with the exception (or warning) it
must raise now and a fragment of its message (which names the parameter and what is accepted).

One list per area; each case is ``case(id, call, expected, fragment)`` where ``expected`` is an
exception type or a warning category (``UserWarning`` and its subclasses: ``pytest.warns``)."""

from __future__ import annotations

import os
import re
import tempfile
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


def _manager(directory: Any = ..., **kwargs):
    """A manager of ``directory`` (default: a new temporary folder)."""
    from stabletrain.checkpoint import CheckpointManager

    return CheckpointManager(tempfile.mkdtemp() if directory is ... else directory, **kwargs)


def _checkpointing(**kwargs):
    from stabletrain.callbacks import Checkpointing

    return Checkpointing(_manager(), **kwargs)


def _a_file(content=b""):
    handle, path = tempfile.mkstemp(suffix=".txt")
    os.write(handle, content)
    os.close(handle)
    return path


def _resume_from_an_empty_folder():
    import torch

    from stabletrain.loop import fit

    folder = tempfile.mkdtemp(suffix="-nothing-here")
    model = torch.nn.Linear(2, 1)
    data = [(torch.randn(4, 2), torch.randn(4, 1))]
    manager = _manager(folder, strategy="epoch")
    fit(model, data, checkpoints=manager, resume=True, progress=False, loss_fn=torch.nn.MSELoss())
    manager.close()


def _tracker(**kwargs):
    pytest.importorskip("mlflow")
    from stabletrain.tracking import MLflowTracker

    store = f"sqlite:///{tempfile.mkdtemp()}/mlflow.db"  # never the repository's
    return MLflowTracker(**{"experiment": "x", "tracking_uri": store, "verbose": False, **kwargs})


_NO_SCHEME = "nosuchscheme://x"  # was MLflow's model-registry exception


def _garbage():
    return f"sqlite:///{_a_file(b'not a database' * 99)}"


FILE_CASES = [
    case("ckpt-empty-directory", lambda: _manager(""), ValueError, "directory must name a folder"),
    case("ckpt-directory-int", lambda: _manager(123), TypeError, "directory must be a folder path"),
    case("ckpt-directory-none", lambda: _manager(None), TypeError, "(str or os.PathLike)"),
    case("ckpt-directory-a-file", lambda: _manager(_a_file()), ValueError, "is a file"),
    case("ckpt-under-a-file", lambda: _manager(f"{_a_file()}/sub"), ValueError, "is a file"),
    case("ckpt-read-only-a-file", lambda: _manager(_a_file(), read_only=True), ValueError, "file"),
    case("ckpt-mode-unknown-metric", lambda: _manager(monitor="val_dcie"), ValueError, "mode="),
    case("ckpt-mode-not-a-choice", lambda: _manager(mode="up"), ValueError, "('min', 'max')"),
    case("ckpt-monitor-not-a-str", lambda: _manager(monitor=1, mode="min"), TypeError, "monitor"),
    case("ckpt-strategy-list", lambda: _manager(strategy=["best"]), ValueError, "strategy must"),
    case("ckpt-max-keep-bool", lambda: _manager(max_keep=True), TypeError, "max_keep must be an"),
    case("ckpt-max-keep-str", lambda: _manager(max_keep="3"), TypeError, "max_keep must be an"),
    case("ckpt-every-n-epochs-0", lambda: _manager(every_n_epochs=0), ValueError, ">= 1"),
    case("ckpt-minutes-bool", lambda: _manager(every_n_minutes=True), TypeError, "every_n_min"),
    case("ckpt-improvement-str", lambda: _manager(min_improvement="0.1"), TypeError, "min_impr"),
    case("ckpt-async-save-str", lambda: _manager(async_save="no"), TypeError, "async_save must"),
    case("ckpt-durable-int", lambda: _manager(durable=0), TypeError, "durable must be a bool"),
    case("ckpt-read-only-str", lambda: _manager(read_only="False"), TypeError, "read_only must"),
    case("ckpt-save-epoch-bool", lambda: _manager().save(True), TypeError, "epoch must be an int"),
    case("resume-string", lambda: _checkpointing(resume="false"), TypeError, "resume must be a"),
    case("resume-nothing-there", _resume_from_an_empty_folder, UserWarning, "-nothing-here"),
    case("track-bad-scheme", lambda: _tracker(tracking_uri=_NO_SCHEME), ValueError, "; accepted"),
    case("track-uri-not-a-str", lambda: _tracker(tracking_uri=5), TypeError, "tracking_uri must"),
    case("track-store-garbage", lambda: _tracker(tracking_uri=_garbage()), ValueError, "opened"),
    case("track-experiment-int", lambda: _tracker(experiment=3), TypeError, "experiment must be"),
    case("track-experiment-empty", lambda: _tracker(experiment=""), ValueError, "non-empty"),
    case("track-run-name-int", lambda: _tracker(run_name=1), TypeError, "run_name must be a str"),
    case("track-flush-every-bool", lambda: _tracker(flush_every=True), TypeError, "flush_every"),
    case("track-log-figures-str", lambda: _tracker(log_figures="no"), TypeError, "log_figures"),
    case("track-verbose-int", lambda: _tracker(verbose=0), TypeError, "verbose must be a bool"),
]


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
