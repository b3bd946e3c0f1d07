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


def _resolve(**config):
    from stabletrain.config import resolve_config

    return resolve_config(config)


def _load(content: str | bytes, name: str = "config.yaml"):
    """``load_config`` of a file holding ``content`` (``""`` as ``name``: the folder itself)."""
    import tempfile
    from pathlib import Path

    from stabletrain.config import load_config

    path = Path(tempfile.mkdtemp()) / name
    if name:
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return load_config(path)


_BOMB = "\n".join(
    ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    + [f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]" for a, b in zip("abcdefg", "bcdefgh")]
    + [f"monitor: [{', '.join(['*h'] * 9)}]", "tracking: {enabled: true}"]
)  # a billion laughs: 9**9 strings once expanded


def _cli(*args):
    """The CLI's configuration of ``train --config configs/fast.yaml ARGS`` (exit 2: its error)."""
    from pathlib import Path

    from stabletrain.cli import _resolve, build_parser

    config = str(Path(__file__).parents[1] / "configs" / "fast.yaml")
    return _resolve(build_parser().parse_args(["train", "--config", config, *args]))


CONFIG_CASES: list = [
    case("cfg-str-bool-safe-attention", lambda: _resolve(model={"safe_attention": "false"}),
         ValueError, "model.safe_attention must be a bool (true or false), got str 'false'"),
    case("cfg-str-bool-tracking", lambda: _resolve(tracking={"enabled": "false"}),
         ValueError, "tracking.enabled must be a bool (true or false)"),
    case("cfg-str-bool-deep-supervision", lambda: _resolve(model={"deep_supervision": "no"}),
         ValueError, "model.deep_supervision must be a bool (true or false)"),
    case("cfg-bool-lr", lambda: _resolve(optimizer={"lr": True}),
         ValueError, "lr must be a number, got bool True"),
    case("cfg-nan-lr", lambda: _resolve(optimizer={"lr": float("nan")}),
         ValueError, "lr must be finite"),
    case("cfg-betas-one", lambda: _resolve(optimizer={"betas": [0.9]}),
         ValueError, "betas must be a pair [beta_1, beta_2]"),
    case("cfg-lr-zero", lambda: _resolve(optimizer={"lr": 0}), UserWarning, "lr=0"),
    case("cfg-accumulation-0", lambda: _resolve(stability={"accumulation_steps": 0}),
         ValueError, "stability.accumulation_steps must be >= 1, got 0"),
    case("cfg-accumulation-over-epoch", lambda: _resolve(stability={"accumulation_steps": 9}),
         ValueError, "stability.accumulation_steps=9 must be <= the 8 batches of an epoch"),
    case("cfg-str-min-loss-scale", lambda: _resolve(stability={"min_loss_scale": "1"}),
         ValueError, "stability.min_loss_scale must be a number, got str '1'"),
    case("cfg-str-clipping", lambda: _resolve(optimizer={"gradient_clipping_by_norm": "1"}),
         ValueError, "gradient_clipping_by_norm must be a number, got str '1'"),
    case("cfg-str-batch-size", lambda: _resolve(data={"batch_size": "16"}),
         ValueError, "data.batch_size must be an int, got str '16'"),
    case("cfg-float-epochs", lambda: _resolve(epochs=2.0), ValueError, "epochs must be an int"),
    case("cfg-device-tpu", lambda: _resolve(device="tpu"),
         ValueError, "device must be cpu, cuda, cuda:N, mps, or auto or null"),
    case("cfg-checkpoint-dir-int", lambda: _resolve(checkpoints={"directory": 123}),
         ValueError, "checkpoints.directory must be a folder path or null, got int 123"),
    case("cfg-typo-top-level", lambda: _resolve(epoch=3), ValueError, "did you mean 'epochs'?"),
    case("cfg-typo-section-hint", lambda: _resolve(model={"dept": 2}),
         ValueError, "did you mean 'depth'?"),
    case("cfg-typo-optimizer-key", lambda: _resolve(optimizer={"learning_rat": 0.1}),
         ValueError, "did you mean 'learning_rate'?"),
    case("cfg-typo-preset", lambda: _resolve(preset="stabel"), ValueError, "did you mean 'stable'?"),
    case("cfg-monitor-typo", lambda: _resolve(monitor="val_dcie"),
         ValueError, "did you mean 'val_dice'?"),
    case("cfg-monitor-not-logged", lambda: _resolve(monitor="val_acc"),
         ValueError, "monitor must be a metric the run logs each epoch"),
    case("cfg-unused-deep-supervision",
         lambda: _resolve(deep_supervision={"schedule": "bogus"}),
         ValueError, "config section 'deep_supervision': unknown schedule 'bogus'"),
    case("cfg-tracking-uri-scheme",
         lambda: _resolve(tracking={"tracking_uri": "nosuchscheme://x"}),
         ValueError, "a URI of scheme file, sqlite, postgresql, mysql, mssql, http, https"),
    case("cfg-early-stopping-no-patience", lambda: _resolve(early_stopping={"min_delta": 0.1}),
         ValueError, "'early_stopping' needs patience"),
    case("cfg-attention-option", lambda: _resolve(model={"attention_options": {"norm": 1}}),
         ValueError, "model.attention_options.norm must be a bool"),
    case("cfg-amp-dtype", lambda: _resolve(amp={"dtype": "fp16"}),
         ValueError, "amp.dtype must be one of ('auto', 'float16', 'bfloat16', 'float32')"),
    case("yaml-duplicate-top", lambda: _load("epochs: 3\nseed: 1\nepochs: 4\n"),
         ValueError, "holds the key 'epochs' twice (again at line 3)"),
    case("yaml-duplicate-in-section", lambda: _load("optimizer:\n  lr: 0.1\n  lr: 0.2\n"),
         ValueError, "holds the key 'lr' twice (again at line 3)"),
    case("yaml-empty", lambda: _load(""), ValueError, "is empty"),
    case("yaml-alias-bomb", lambda: _load(_BOMB), ValueError, "(nested aliases)"),
    case("yaml-recursive-alias", lambda: _load("a: &a [*a]\n"), ValueError, "recursive alias"),
    case("yaml-2-mb", lambda: _load("epochs: 3\n" + "#" * 2**21),
         ValueError, "larger than the 1 MB a configuration may have"),
    case("yaml-binary", lambda: _load(bytes(range(256)) * 4), ValueError, "is not UTF-8 text"),
    case("yaml-directory", lambda: _load("", name=""), ValueError, "is a directory"),
    case("cli-resume-nothing", lambda: _cli("--checkpoint-dir", "/nonexistent/ckpt", "--resume"),
         ValueError, "no checkpoint in /nonexistent/ckpt to resume from"),
]  # fmt: skip


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
