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


def _with(overrides, **config):
    from stabletrain.config import resolve_config

    return resolve_config(config, overrides=overrides)


def _set(text: str):
    from stabletrain.cli import _assignment

    return _assignment(text)


def _draw(*args, out="p.png"):
    """``compare-schedulers --out <a temporary folder>/OUT ARGS`` (``out=None``: ARGS only)."""
    from stabletrain.cli import _compare, build_parser

    where = [] if out is None else ["--out", os.path.join(tempfile.mkdtemp(), out)]
    return _compare(build_parser().parse_args(["compare-schedulers", *where, *args]))


_TINY = {"data": {"num_train": 16, "num_val": 8, "image_size": 32}, "epochs": 1}


def _build(steps_per_epoch=None, tracker=None, **config):
    from stabletrain.config import build_model, build_training

    config = {**_TINY, "model": {"base_channels": 4}, **config}
    return build_training(
        build_model(config), config, steps_per_epoch=steps_per_epoch, tracker=tracker
    )


def _run(**kwargs):
    from stabletrain.config import run

    return run(_TINY, progress=False, **kwargs)


def _load_path(path):
    from stabletrain.config import load_config

    return load_config(path)


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
         ValueError, "device must be 'cpu', 'cuda', 'cuda:N', 'mps' or a torch.device, got 'tpu'"),
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
         ValueError, "has an unknown scheme 'nosuchscheme'; accepted: sqlite:///<file>"),
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
    # audit 1 (S: trained silently, O: an obscure message)
    case("a1-S1-null-override-applied", lambda: _with({"seed": None}),
         ValueError, "seed must be an int, got NoneType None"),
    case("a1-S2-set-no-value", lambda: _set("epochs="),
         __import__("argparse").ArgumentTypeError, "epochs has no value (give epochs=null"),
    case("a1-S6-dotted-and-nested", lambda: _resolve(**{"optimizer": {"lr": 0.1}, "optimizer.lr": 0.5}),
         ValueError, "config key 'optimizer.lr' is given twice (dotted and nested)"),
    case("a1-S6-nested-after-dotted", lambda: _resolve(**{"optimizer.lr": 0.5, "optimizer": None}),
         ValueError, "config key 'optimizer' is given twice"),
    case("a1-S7-base-60", lambda: _resolve(**_load("epochs: 1:00\n")),
         ValueError, "epochs must be an int, got str '1:00'"),
    case("a1-S8-attention-options-unused",
         lambda: _resolve(model={"attention": None, "attention_options": {"norm": True}}),
         ValueError, "model.attention_options is unused with model.attention: null"),
    case("a1-S8-lr-backoff-unused",
         lambda: _resolve(stability={"on_nonfinite": "raise", "lr_backoff": 0.5}),
         ValueError, "stability.lr_backoff is unused with on_nonfinite: raise (not rollback)"),
    case("a1-S8-scheduler-none-gamma", lambda: _resolve(scheduler={"type": "none", "gamma": 0.5}),
         ValueError, "scheduler.gamma is unused with type: none"),
    case("a1-S8-every-n-epochs-unused", lambda: _resolve(checkpoints={"every_n_epochs": 5}),
         ValueError, "checkpoints.every_n_epochs is unused with strategy: epoch"),
    case("a1-S9-early-stopping-empty", lambda: _resolve(early_stopping={}),
         ValueError, "'early_stopping' needs patience"),
    case("a1-S10-warmup-0-steps",
         lambda: _build(1, epochs=3, scheduler={"type": "warmup_cosine", "warmup_epochs": 0.4}),
         ValueError, "scheduler warmup_epochs=0.4 is 0 steps (epochs=3 x 1 steps per epoch"),
    case("a1-S11-total-steps",
         lambda: _build(1, epochs=3, scheduler={"type": "warmup_cosine", "total_steps": 1}),
         ValueError, "scheduler total_steps=1 is not the run's epochs=3 x 1 steps per epoch = 3"),
    case("a1-S16-export-empty", lambda: _cli("--export", ""), ValueError, "--export is empty"),
    case("a1-S16-tracking-uri-empty", lambda: _cli("--tracking-uri", " "),
         ValueError, "--tracking-uri is empty"),
    case("a1-S16-no-tracking-experiment", lambda: _cli("--no-tracking", "--experiment", "x"),
         ValueError, "--no-tracking contradicts --experiment"),
    case("a1-S16-set-twice", lambda: _cli("--set", "epochs=2", "--set", "epochs=3"),
         ValueError, "--set epochs is given twice"),
    case("a1-S17-too-many-steps", lambda: _draw("--epochs", "100000", "--steps-per-epoch", "1000"),
         ValueError, "--epochs x --steps-per-epoch must be <= 100000, got 100000000"),
    case("a1-O2-optimizer-null", lambda: _resolve(optimizer=None),
         ValueError, "config section 'optimizer' must be a mapping, got None"),
    case("a1-O2-optimizer-int", lambda: _resolve(optimizer=3),
         ValueError, "config section 'optimizer' must be a mapping, got 3"),
    case("a1-O4-export-a-file", lambda: _cli("--export", __file__),
         ValueError, "--export must be a folder, but"),
    case("a1-O4-export-unwritable", lambda: _cli("--export", "/proc/nope"),
         ValueError, "--export /proc/nope cannot be created"),
    case("a1-O6-out-a-folder", lambda: _draw("--out", tempfile.mkdtemp(suffix=".png"), out=None),
         ValueError, "is a folder: give an image file"),
    case("a1-O6-out-under-a-file", lambda: _draw("--out", f"{__file__}/p.png", out=None),
         ValueError, "--out's folder must be a folder, but"),
    case("a1-O7-warmup-vs-epochs", lambda: _draw("--epochs", "2"),
         ValueError, "--warmup-epochs (3; default 3) must be shorter than --epochs (2)"),
    case("a1-O8-compare-names-flags",
         lambda: _draw("--epochs", "1", "--steps-per-epoch", "1", "--warmup-epochs", "0"),
         ValueError, "--epochs 1 --steps-per-epoch 1 --warmup-epochs 0: "),
    case("a1-O8-onecycle-names-the-plan", lambda: _build(1, preset="fast"),
         ValueError, "scheduler 'onecycle' over epochs=1 x 1 steps per epoch = 1 steps: pct_start"),
    case("a1-O9-not-a-regular-file", lambda: _load_path("/dev/null"),
         ValueError, "is not a regular file"),
    case("a1-O10-list-key", lambda: _load("? [a, b]\n: 1\n"),
         ValueError, "is not valid YAML at line 1 (a key must be a scalar)"),
    case("a1-O11-deep-supervision-typo", lambda: _resolve(deep_supervision={"schedul": "linear_low_to_high"}),
         ValueError, "accepted keys are ('schedule', 'target_resize', 'min_weight'); did you mean 'schedule'?"),
    case("a1-O12-in-channels", lambda: _resolve(model={"in_channels": 3}),
         ValueError, "model.in_channels must be 1 (the shapes data), got 3"),
    case("a1-O13-image-size-33", lambda: _resolve(data={"image_size": 33}),
         ValueError, "data.image_size=33 must be divisible by 2**model.depth = 8"),
    case("a1-O13-depth-6-size-32", lambda: _resolve(data={"image_size": 32}, model={"depth": 6}),
         ValueError, "data.image_size=32 must be divisible by 2**model.depth = 64"),
    case("a1-O13-num-classes", lambda: _resolve(data={"num_classes": 5}),
         ValueError, "data.num_classes must be one of (1, 2, 4), got 5"),
    case("a1-O14-negative-lr", lambda: _resolve(optimizer={"lr": -1}),
         ValueError, "config section 'optimizer': lr must be >= 0, got -1"),
    case("a1-O14-beta-1", lambda: _resolve(optimizer={"beta_1": 1.5}),
         ValueError, "betas[0] must be in [0, 1), got 1.5"),
    case("a1-O14-weight-decay", lambda: _resolve(optimizer={"weight_decay": -1}),
         ValueError, "weight_decay must be >= 0, got -1"),
    case("a1-O15-clipping-off", lambda: _resolve(optimizer={"gradient_clipping_by_norm": -1}),
         ValueError, "gradient_clipping_by_norm must be > 0 (or 0/null: off), got -1"),
    case("a1-O16-clipping-from-preset",
         lambda: _resolve(preset="stable", optimizer={"gradient_clipping_by_value": 0.5}),
         ValueError, "optimizer.gradient_clipping_by_norm comes from preset 'stable': set it to null"),
    case("a1-O22-overrides-a-list", lambda: _with([("epochs", 3)]),
         TypeError, "overrides must be a mapping of dotted keys to values"),
    case("a1-O22-tracker-a-str", lambda: _build(tracker="mlflow"),
         TypeError, "tracker must be a tracker (an MLflowTracker) or None, got 'mlflow'"),
    case("a1-O23-resume-a-str", lambda: _run(resume="yes"),
         TypeError, "resume must be a bool (True or False), got str 'yes'"),
]  # fmt: skip


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


def _probabilities(shape=(2, 1, 4, 4)):
    """``(values, target)``: values spread over [0, 1] (probabilities), a 0/1 target."""
    import torch

    values = torch.linspace(0, 1, torch.Size(shape).numel()).reshape(shape)
    return values, (values > 0.5).float()


def _ints(*values):
    import torch

    return torch.tensor(values)


def _numpy(kind: str, which: int):
    """``_tensors(kind)`` with element ``which`` (0 pred, 1 target) as a NumPy array."""
    pair = list(_tensors(kind))
    pair[which] = pair[which].numpy()
    return pair


def _check(name: str, value):
    from stabletrain import checks

    return getattr(checks, name)("value", value)


_DICE, _FOCAL, _BUILD = "DiceLoss", "FocalLoss", "build_loss"
_PROBS = "pred looks like probabilities (all in [0, 1]) but from_logits=True: pass logits or"
_CLASSES = "targets must hold class indices in [0, 2] (C = 3), got values in "
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
    case("dice-probabilities", lambda: _loss(_DICE)(*_probabilities()), UserWarning, _PROBS),
    case("focal-probabilities", lambda: _loss(_FOCAL)(*_probabilities()), UserWarning, _PROBS),
    case(
        "dice-multiclass-probabilities",
        lambda: _loss(_DICE, "multiclass")(_probabilities((2, 3, 4, 4))[0], _tensors("c")[1]),
        UserWarning,
        _PROBS,
    ),
    case(
        "accuracy-index-range",
        lambda: _metric("accuracy", _tensors("classes")[0][:, :, 0, 0], _ints(1, 5)),
        ValueError,
        _CLASSES + "[1, 5]",
    ),
    case(
        "accuracy-index-negative",
        lambda: _metric("accuracy", _tensors("classes")[0][:, :, 0, 0], _ints(-1, 1)),
        ValueError,
        _CLASSES + "[-1, 1]",
    ),
    case(
        "accuracy-binary-2",
        lambda: _metric("accuracy", _probabilities((4,))[0] - 0.5, _ints(0, 1, 2, 1)),
        ValueError,
        "binary targets must be in [0, 1], got values in [0, 2] (0/1 labels or probabilities)",
    ),
    case(
        "dice_score-numpy",
        lambda: _metric("dice_score", *_numpy("mask255", 0)),
        TypeError,
        "logits must be a torch.Tensor, got ndarray (convert it with torch.as_tensor)",
    ),
    case(
        "iou_score-numpy-target",
        lambda: _metric("iou_score", *_numpy("classes", 1)),
        TypeError,
        "target must be a torch.Tensor, got ndarray",
    ),
    case(
        "accuracy-numpy",
        lambda: _metric("accuracy", *_numpy("classes", 0)),
        TypeError,
        "outputs must be a torch.Tensor, got ndarray",
    ),
    case(
        "accuracy-numpy-targets",
        lambda: _metric("accuracy", *_numpy("classes", 1)),
        TypeError,
        "targets must be a torch.Tensor, got ndarray",
    ),
    case(
        "int-float-tensor", lambda: _check("check_int", _ints(3.0)), TypeError, "be an int, got T"
    ),
    case(
        "int-bool-tensor", lambda: _check("check_int", _ints(True)), TypeError, "be an int, got T"
    ),
    case("float-bool-tensor", lambda: _loss(_DICE, smooth=_ints(True)), TypeError, "smooth must"),
    case(
        "float-1d-tensor", lambda: _check("check_float", _ints(1.0, 2.0)), TypeError, "be a number"
    ),
]


# --- schedulers -----------------------------------------------------------------------------


def _opt(*lrs: float):
    import torch

    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in lrs or (0.1,)]
    return torch.optim.SGD(groups, momentum=0.9)


def _sched(config, opt=None):
    from stabletrain.schedulers import build_scheduler

    return build_scheduler(opt or _opt(), config)


def _load_state(config, state):
    _sched(config).load_state_dict(state)


def _state(config, **changes):
    return {**_sched(config).state_dict(), **changes}


def _wrapper(factor=0.01, opt=None):
    import torch

    from stabletrain.schedulers import with_warmup

    opt = opt or _opt()
    return with_warmup(torch.optim.lr_scheduler.StepLR(opt, 2), 3, factor)


def _step_after_adding(config, lr=0.3):
    import torch

    opt = _opt(0.1, 0.2)
    sched = _sched(config, opt)
    opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr})
    opt.step()
    sched.step()


def _range_test(**kwargs):
    import torch

    from stabletrain.lr_finder import lr_range_test

    model = torch.nn.Linear(2, 1)
    loader = [(torch.zeros(4, 2), torch.zeros(4, 1))]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    lr_range_test(model, opt, kwargs.pop("loss_fn", None), loader, **kwargs)


def _tuning(fn, **kwargs):
    import torch

    from stabletrain import tuning

    def model_fn():
        return torch.nn.Linear(2, 1)

    loader = [(torch.zeros(4, 2), torch.zeros(4, 1))]
    defaults = {"lr_sweep": dict(lrs=[0.1], steps=4), "tuning_run": dict(lr=0.1, steps=4)}
    getattr(tuning, fn)(model_fn, loader, **{**defaults.get(fn, {}), **kwargs})


def _lr_tuner(**kwargs):
    from stabletrain.widgets import lr_tuner

    lr_tuner(**kwargs)


def _step_metric(config, metric):
    import torch

    _sched(config).step(torch.tensor(metric))


def _step_wrapper_and_inner():
    import torch

    from stabletrain.schedulers import with_warmup

    opt = _opt()
    inner = torch.optim.lr_scheduler.StepLR(opt, 1, 0.5)
    wrapper = with_warmup(inner, 2)
    for _ in range(3):
        opt.step()
        wrapper.step()
        inner.step()


def _range_test_other_optimizer():
    import torch

    from stabletrain.lr_finder import lr_range_test

    model, other = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    loader = [(torch.zeros(4, 2), torch.zeros(4, 1))]
    lr_range_test(model, torch.optim.SGD(other.parameters(), lr=0.1), None, loader, num_iters=5)


def _tuning_with(model_fn, fn="tuning_run", **kwargs):
    import torch

    from stabletrain import tuning

    loader = [(torch.zeros(4, 2), torch.zeros(4, 1))]
    defaults = {"lr_sweep": dict(lrs=[0.1, 0.01], steps=2), "tuning_run": dict(lr=0.1, steps=2)}
    getattr(tuning, fn)(model_fn, loader, **{**defaults.get(fn, {}), **kwargs})


def _same_model():
    import torch

    model = torch.nn.Linear(2, 1)
    return lambda: model


def _np(*values):
    import numpy as np

    return np.array(values)


def _linear():
    import torch

    return torch.nn.Linear(2, 1)


_EXP = {"type": "exponential", "gamma": 0.9}
_STEP = {"type": "step", "step_size": 2}
_COS = {"type": "warmup_cosine", "total_steps": 10}

# fmt: off
SCHEDULER_CASES = [
    # warmup_start_factor: a "warmup" that decreases, or starts at 0
    case("warmup-factor-5", lambda: _sched({"type": "constant", "warmup_steps": 3, "warmup_start_factor": 5}), ValueError, "warmup_start_factor must be in (0, 1], got 5"),
    case("warmup-factor-0", lambda: _sched({"type": "warmup_cosine", "total_steps": 9, "warmup_start_factor": 0}), ValueError, "warmup_start_factor must be in (0, 1]"),
    case("warmup-factor-bool", lambda: _sched({"type": "constant", "warmup_start_factor": True}), ValueError, "warmup_start_factor must be a number"),
    case("with-warmup-factor-5", lambda: _wrapper(5), ValueError, "warmup_start_factor must be in (0, 1]"),
    # load_state_dict: garbage, another type's state, missing fields, wrong field types
    case("state-garbage", lambda: _load_state(_EXP, {"last_epoch": "x", "gamma": 7}), TypeError, "ExponentialDecay state_dict['last_epoch'] must be an int"),
    case("state-missing-fields", lambda: _load_state(_EXP, {"last_epoch": 3, "gamma": 0.5}), ValueError, "ExponentialDecay state_dict lacks"),
    case("state-empty", lambda: _load_state(_EXP, {}), ValueError, "ExponentialDecay state_dict lacks ['gamma', 'decay_steps'"),
    case("state-none", lambda: _load_state(_EXP, None), TypeError, "ExponentialDecay state_dict must be a mapping"),
    case("state-other-type", lambda: _load_state(_EXP, _state(_STEP)), ValueError, "belongs to a 'StepDecay' scheduler, not to this ExponentialDecay"),
    case("state-plateau-into-cosine", lambda: _load_state({"type": "warmup_cosine", "total_steps": 9}, _state({"type": "plateau"})), ValueError, "belongs to a 'PlateauWithWarmup' scheduler"),
    case("state-torch-steplr", lambda: _load_state(_STEP, _wrapper().scheduler.state_dict()), ValueError, "StepDecay state_dict lacks"),
    case("state-gamma-str", lambda: _load_state(_EXP, _state(_EXP, gamma="0.5")), TypeError, "state_dict['gamma'] must be a number, got str"),
    case("state-last-epoch-float", lambda: _load_state(_EXP, _state(_EXP, last_epoch=2.0)), TypeError, "state_dict['last_epoch'] must be an int"),
    case("state-base-lrs-str", lambda: _load_state(_EXP, _state(_EXP, base_lrs=["0.1"])), TypeError, "state_dict['base_lrs'][0] must be a number"),
    case("state-bool-field", lambda: _load_state(_EXP, _state(_EXP, staircase="no")), TypeError, "state_dict['staircase'] must be a bool"),
    case("state-wrapper-without-inner", lambda: _wrapper().load_state_dict({"last_epoch": 1}), ValueError, "lacks its 'scheduler_state'"),
    # alias clashes name both spellings
    case("alias-alpha", lambda: _sched({"type": "constant", "alpha": 0.1, "min_lr_ratio": 0.1}), ValueError, "alpha and min_lr_ratio are the same parameter: give one"),
    case("alias-alpha-second", lambda: _sched({"type": "constant", "min_lr_ratio": 0.1, "alpha": 0.1}), ValueError, "alpha and min_lr_ratio are the same parameter: give one"),
    case("alias-t-mul", lambda: _sched({"type": "cosine_restarts", "first_cycle_steps": 2, "t_mul": 2, "t_mult": 2}), ValueError, "t_mul and t_mult are the same parameter: give one"),
    case("alias-decay-rate", lambda: _sched({**_EXP, "decay_rate": 0.9}), ValueError, "decay_rate and gamma are the same parameter: give one"),
    # strings and booleans are not numbers, numbers not booleans
    case("factor-str", lambda: _sched({"type": "plateau", "factor": "0.5"}), ValueError, "factor must be a number, got str '0.5'"),
    case("factor-true", lambda: _sched({"type": "adaptive", "factor": True}), ValueError, "factor must be a number, got bool"),
    case("step-size-str", lambda: _sched({"type": "step", "step_size": "1"}), ValueError, "step_size must be an int, got str"),
    case("gamma-true", lambda: _sched({"type": "exponential", "gamma": True}), ValueError, "gamma must be a number, got bool"),
    case("total-steps-str", lambda: _sched({"type": "warmup_cosine", "total_steps": "10"}), ValueError, "total_steps must be an int"),
    case("warmup-steps-true", lambda: _sched({"type": "constant", "warmup_steps": True}), ValueError, "warmup_steps must be an int"),
    case("min-lr-str", lambda: _sched({"type": "constant", "min_lr": "0.01"}), ValueError, "min_lr must be a number"),
    case("warmup-start-lr-list-str", lambda: _sched({"type": "constant", "warmup_start_lr": ["0"]}), ValueError, "warmup_start_lr[0] must be a number"),
    case("staircase-str", lambda: _sched({**_EXP, "staircase": "false"}), ValueError, "staircase must be a bool"),
    case("three-phase-int", lambda: _sched({"type": "onecycle", "total_steps": 10, "three_phase": 1}), ValueError, "three_phase must be a bool"),
    case("patience-float", lambda: _sched({"type": "plateau", "patience": 2.5}), ValueError, "patience must be an int"),
    case("step-spike-factor-str", lambda: _sched({"type": "adaptive", "step_spike_factor": "10"}), ValueError, "step_spike_factor must be a number"),
    case("metric-str", lambda: _sched({"type": "plateau"}).step("1.0"), TypeError, "metric must be a number, got str"),
    case("metric-bool", lambda: _sched({"type": "adaptive"}).step(True), TypeError, "metric must be a number, got bool"),
    case("lr-curve-base-lr-true", lambda: __import__("stabletrain.schedulers").schedulers.lr_curve(_STEP, 5, True), ValueError, "base_lr must be a number"),
    case("epochs-str", lambda: __import__("stabletrain.schedulers").schedulers.epochs_to_steps("3", 4), ValueError, "epochs must be a number"),
    # unknown names: the nearest one
    case("unknown-param-nearest", lambda: _sched({**_STEP, "gama": 0.5}), ValueError, "did you mean 'gamma'?"),
    case("unknown-warmup-param", lambda: _sched({"type": "constant", "warmup_step": 3}), ValueError, "did you mean 'warmup_steps'?"),
    case("adaptive-unknown-own-param", lambda: _sched({"type": "adaptive", "patiense": 3}), ValueError, "did you mean 'patience'?"),
    case("unknown-type-nearest", lambda: _sched({"type": "cosin"}), ValueError, "did you mean 'cosine'?"),
    case("type-not-str", lambda: _sched({"type": 3}), ValueError, "type must be a scheduler type name"),
    case("config-not-mapping", lambda: _sched(["step"]), ValueError, "config must be a mapping"),
    case("lr-in-config", lambda: _sched({**_STEP, "lr": 0.1}), ValueError, "lr is not a scheduler parameter"),
    # a group added by add_param_group needs one value for per-group settings
    case("added-group-per-group-min-lr", lambda: _step_after_adding({"type": "constant", "min_lr": [0.01, 0.02]}), ValueError, "min_lr was given per parameter group (2 values): a group added by add_param_group"),
    case("added-group-per-group-warmup", lambda: _step_after_adding({"type": "constant", "warmup_steps": 2, "warmup_start_lr": [0.0, 0.1]}), ValueError, "warmup_start_lr was given per parameter group"),
    case("added-group-per-group-momentum", lambda: _step_after_adding({"type": "onecycle", "total_steps": 9, "max_momentum": [0.9, 0.95]}), ValueError, "add_param_group"),
    case("added-group-min-lr-over-its-lr", lambda: _step_after_adding({"type": "constant", "min_lr": 0.05}, 0.01), ValueError, "min_lr of param_groups[2] (at most its lr)"),
    # the LR range test and tuning: bools are not numbers, strings not bools; unknown keywords
    case("range-test-num-iters-true", lambda: _range_test(num_iters=True), TypeError, "num_iters must be an int"),
    case("range-test-start-lr-str", lambda: _range_test(start_lr="1e-5"), TypeError, "start_lr must be a number"),
    case("range-test-smooth-true", lambda: _range_test(smooth=True), TypeError, "smooth must be a number"),
    case("range-test-update-str", lambda: _range_test(update="amp"), TypeError, "update must be a stabletrain Update"),
    case("range-test-batch-fn", lambda: _range_test(batch_fn=3), TypeError, "batch_fn must be a callable instance"),
    case("range-test-loss-class", lambda: _range_test(loss_fn=__import__("torch").nn.MSELoss), TypeError, "loss_fn must be a callable instance such as torch.nn.MSELoss(), got the class MSELoss"),
    case("range-test-unknown-kw", lambda: _range_test(num_iter=5), TypeError, "unexpected keyword argument 'num_iter'"),
    case("moving-average-bool", lambda: __import__("stabletrain.lr_finder").lr_finder.MovingAverage(True), TypeError, "smooth must be a number"),
    case("tuning-run-lr-true", lambda: _tuning("tuning_run", lr=True), TypeError, "lr must be a number"),
    case("tuning-run-steps-str", lambda: _tuning("tuning_run", steps="4"), TypeError, "steps must be an int"),
    case("tuning-run-schedule-str", lambda: _tuning("tuning_run", schedule="step"), TypeError, "schedule must be a mapping"),
    case("tuning-run-clip-str", lambda: _tuning("tuning_run", max_grad_norm="1"), TypeError, "max_grad_norm must be a number"),
    case("tuning-run-on-step", lambda: _tuning("tuning_run", on_step="print"), TypeError, "on_step must be callable"),
    case("sweep-lrs-number", lambda: _tuning("lr_sweep", lrs=0.1), TypeError, "lrs must be a sequence"),
    case("sweep-lrs-bool", lambda: _tuning("lr_sweep", lrs=[True]), TypeError, "lrs must be a number"),
    case("sweep-steps-str", lambda: _tuning("lr_sweep", steps="4"), TypeError, "steps must be an int"),
    case("sweep-seeds-str", lambda: _tuning("lr_sweep", seeds=["0"]), TypeError, "seeds must be an int"),
    case("sweep-unknown-kw", lambda: _tuning("lr_sweep", max_grad=1.0), TypeError, "did you mean 'max_grad_norm'?"),
    case("sweep-sets-lr-itself", lambda: _tuning("lr_sweep", lr=0.1), TypeError, "lr_sweep() got unknown keyword(s) ['lr']"),
    case("sweep-unknown-monitor-mode", lambda: _tuning("lr_sweep", monitor="val_custom"), ValueError, "give mode='min' or mode='max'"),
    case("range-test-fn-unknown-kw", lambda: _tuning("range_test", end=1.0), TypeError, "did you mean 'end_lr'?"),
    case("range-test-fn-seed-true", lambda: _tuning("range_test", seed=True), TypeError, "seed must be an int"),
    case("lr-tuner-model-kw", lambda: _lr_tuner(model=None, train_loader=[]), TypeError, "unexpected keyword argument 'model'"),
    # audit 2: a warmup must rise and be set one way; onecycle's peak one way
    case("warmup-start-lr-above-lr", lambda: _sched({**_COS, "warmup_steps": 3, "warmup_start_lr": 1.0}), ValueError, "warmup_start_lr of param_groups[0] (at most its lr) must be <= 0.1, got 1.0"),
    case("added-group-warmup-start-above-lr", lambda: _step_after_adding({"type": "constant", "warmup_steps": 2, "warmup_start_lr": 0.05}, 0.01), ValueError, "warmup_start_lr of param_groups[2] (at most its lr)"),
    case("warmup-start-lr-and-factor", lambda: _sched({**_COS, "warmup_steps": 3, "warmup_start_lr": 0.001, "warmup_start_factor": 0.5}), ValueError, "give warmup_start_lr or warmup_start_factor, not both"),
    case("onecycle-warmup-and-pct-start", lambda: _sched({"type": "onecycle", "total_steps": 10, "warmup_steps": 3, "pct_start": 0.5}), ValueError, "give warmup_steps or pct_start, not both"),
    # audit 2: load_state_dict checks values, unknown fields and the number of groups
    case("state-base-lrs-nan", lambda: _load_state(_COS, _state(_COS, base_lrs=[float("nan")])), ValueError, "WarmupCosine state_dict['base_lrs'][0] must be finite"),
    case("state-base-lrs-negative", lambda: _load_state(_COS, _state(_COS, base_lrs=[-0.1])), ValueError, "state_dict['base_lrs'][0] must be >= 0"),
    case("state-min-lrs-inf", lambda: _load_state(_COS, _state(_COS, min_lrs=[float("inf")])), ValueError, "state_dict['min_lrs'][0] must be finite"),
    case("state-total-steps-negative", lambda: _load_state(_COS, _state(_COS, total_steps=-3)), ValueError, "state_dict['total_steps'] must be >= 1, got -3"),
    case("state-total-steps-within-warmup", lambda: _load_state(_COS, _state(_COS, warmup_steps=5, total_steps=5)), ValueError, "state_dict['total_steps'] must be >= 6"),
    case("state-total-steps-none-needed", lambda: _load_state(_COS, _state(_COS, total_steps=None)), TypeError, "state_dict['total_steps'] must be an int"),
    case("state-warmup-steps-negative", lambda: _load_state(_EXP, _state(_EXP, warmup_steps=-1)), ValueError, "state_dict['warmup_steps'] must be >= 0"),
    case("state-unknown-field", lambda: _load_state(_COS, _state(_COS, bogus=1)), ValueError, "WarmupCosine state_dict has unknown fields ['bogus']"),
    case("state-two-groups-into-one", lambda: _load_state(_COS, _sched(_COS, _opt(0.1, 0.1)).state_dict()), ValueError, "state_dict['base_lrs'] has 2 values; the optimizer has 1 parameter groups"),
    case("state-one-group-into-two", lambda: _sched(_COS, _opt(0.1, 0.1)).load_state_dict(_state(_COS)), ValueError, "has 1 values; the optimizer has 2 parameter groups"),
    case("state-plateau-current-lrs-nan", lambda: _load_state({"type": "plateau"}, _state({"type": "plateau"}, current_lrs=[float("nan")])), ValueError, "state_dict['current_lrs'][0] must be finite"),
    # audit 2: a metric is one number
    case("plateau-metric-vector", lambda: _step_metric({"type": "plateau"}, [1.0, 2.0]), TypeError, "metric must be a number or a one-element tensor, got a tensor of shape (2,)"),
    case("adaptive-metric-vector", lambda: _step_metric({"type": "adaptive"}, [1.0, 2.0]), TypeError, "metric must be a number or a one-element tensor"),
    case("wrapper-and-inner-both-stepped", _step_wrapper_and_inner, ValueError, "the wrapped StepLR was stepped on its own: step only the with_warmup wrapper"),
    # audit 2: numpy arrays are sequences of numbers (checked element by element)
    case("min-lr-array-above-lr", lambda: _sched({"type": "constant", "min_lr": _np(0.2)}), ValueError, "min_lr of param_groups[0] (at most its lr) must be <= 0.1"),
    case("warmup-start-lr-array-length", lambda: _sched({"type": "constant", "warmup_start_lr": _np(0.0, 0.0)}), ValueError, "warmup_start_lr must be a number or have one value per parameter group (1)"),
    case("sweep-lrs-array-negative", lambda: _tuning("lr_sweep", lrs=_np(0.1, -1.0)), ValueError, "lrs must be > 0, got -1.0"),
    case("sweep-seeds-array-bool", lambda: _tuning("lr_sweep", seeds=_np(True)), TypeError, "seeds must be an int, got bool"),
    case("lr-tuner-seeds-array-negative", lambda: _lr_tuner(model_fn=_linear, train_loader=[(0, 0)] * 2, seeds=_np(0, -1)), ValueError, "seeds must be >= 0"),
    # audit 2: the range test and tuning
    case("range-test-optimizer-of-another-model", _range_test_other_optimizer, ValueError, "the optimizer holds none of the model's parameters"),
    case("range-test-end-below-start", lambda: _range_test(start_lr=1.0, end_lr=1e-3), ValueError, "end_lr must be > start_lr (1.0), got 0.001"),
    case("tuning-run-schedule-total-steps", lambda: _tuning("tuning_run", schedule={"type": "warmup_cosine", "total_steps": 100}), ValueError, "schedule must not hold total_steps=100: tuning_run sets it to steps"),
    case("sweep-schedule-total-steps", lambda: _tuning("lr_sweep", schedule={"type": "warmup_cosine", "total_steps": 4}), ValueError, "schedule must not hold total_steps"),
    case("sweep-warmup-not-shorter-than-steps", lambda: _tuning("lr_sweep", warmups=[5]), ValueError, "warmups (each shorter than steps=4) must be in [0, 3], got 5"),
    case("sweep-same-model-each-call", lambda: _tuning_with(_same_model(), "lr_sweep"), ValueError, "model_fn must build a new model each call"),
    case("tuning-run-same-model-twice", lambda: [_tuning_with(fn) for fn in [_same_model()] * 2], ValueError, "model_fn must build a new model each call"),
    case("tuning-run-model-not-factory", lambda: _tuning_with(_linear()), TypeError, "model_fn must be a factory (a callable returning a new model), got a Linear"),
    case("sweep-model-not-factory", lambda: _tuning_with(_linear(), "lr_sweep"), TypeError, "model_fn must be a factory"),
    case("range-test-fn-model-not-factory", lambda: _tuning_with(_linear(), "range_test"), TypeError, "model_fn must be a factory"),
]
# fmt: on


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


def _fit_plateau(scheduler: str, monitor: str, **params):
    import torch

    from stabletrain.schedulers import build_scheduler

    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = build_scheduler(opt, {"type": scheduler, "total_steps": 8, **params})
    return _fit(model, optimizer=opt, scheduler=sched, monitor=monitor, val_loader=_batches())


def _foreign_scheduler(kind: str = "steplr"):
    """A scheduler of another model's optimizer (a torch one, or built by build_scheduler)."""
    import torch

    from stabletrain.schedulers import build_scheduler

    opt = _sgd(_model())
    if kind == "steplr":
        return torch.optim.lr_scheduler.StepLR(opt, 1)
    return build_scheduler(opt, {"type": "warmup_cosine", "total_steps": 3})


def _fit_sgd(**kwargs):
    """``_fit`` with an SGD optimizer of the model (lr 0.1)."""
    model = _model()
    return _fit(model, optimizer=_sgd(model), **kwargs)


def _eval(loader=None, model=None, *args, **kwargs):
    from stabletrain.loop import evaluate

    model = _model() if model is None else model
    return evaluate(model, _batches() if loader is None else loader, *args, **kwargs)


def _used_up():
    batches = iter(_batches())
    list(batches)
    return batches


def _update_step(loss: str = "mean", **kwargs):
    """One ``Update.step`` on a loss: the mean, a vector, a detached one or a float."""
    import torch

    from stabletrain.update import Update

    model = _model()
    out = model(torch.randn(4, 3))
    value = {"mean": out.mean(), "vector": out, "detached": out.mean().detach(), "float": 1.0}
    return Update(model, _sgd(model)).step(value[loss], **kwargs)


def _update_positional(*args):
    from stabletrain.update import Update

    model = _model()
    return Update(model, _sgd(model), *args)


def _tensor(*values):
    import torch

    return torch.tensor(values)


def _amp_on(device_type: str):
    from stabletrain.amp import MixedPrecision

    return MixedPrecision("bfloat16", device_type=device_type)


def _frozen():
    model = _model()
    model.requires_grad_(False)
    return model


def _mse(**kwargs):
    import torch

    return torch.nn.MSELoss(**kwargs)


def _numpy_batches():
    return [(x.numpy(), y.numpy()) for x, y in _batches()]


TRAINING_CASES = [
    # monitor semantics
    case(
        "plateau-min-watching-dice",
        lambda: _fit_plateau("plateau", "val_dice"),
        ValueError,
        "PlateauWithWarmup reads monitor='val_dice' with mode='min', but 'val_dice' should go up",
    ),
    case(
        "adaptive-watching-dice",
        lambda: _fit_plateau("adaptive", "val_accuracy"),
        ValueError,
        "should go up: monitor a loss",
    ),
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
    # audit 2: silent
    case(
        "fit-lr-with-optimizer",
        lambda: _fit_sgd(lr=0.5),
        ValueError,
        "lr is only for the default Adam",
    ),
    case(
        "fit-lr-with-guard", lambda: _fit(guard=_guard(), lr=0.5), ValueError, "lr is only for the"
    ),
    case(
        "fit-foreign-scheduler",
        lambda: _fit_sgd(scheduler=_foreign_scheduler()),
        ValueError,
        "the scheduler belongs to another optimizer",
    ),
    case(
        "fit-foreign-built-scheduler",
        lambda: _fit_sgd(scheduler=_foreign_scheduler("build")),
        ValueError,
        "belongs to another optimizer",
    ),
    case(
        "guard-foreign-scheduler",
        lambda: _guard(scheduler=_foreign_scheduler()),
        ValueError,
        "belongs to another optimizer",
    ),
    case(
        "fit-stopper-twice",
        lambda: (es := _stopper(), _fit(early_stopping=es, callbacks=[es])),
        ValueError,
        "a callback is given twice",
    ),
    case(
        "mode-contradicts-name",
        lambda: _metric_mode("val_loss", "max"),
        ValueError,
        "mode='max' contradicts monitor='val_loss', which goes down",
    ),
    case(
        "fit-stopper-mode-contradicts",
        lambda: _fit(early_stopping=_stopper(mode="max"), val_loader=_batches()),
        ValueError,
        "contradicts monitor='val_loss'",
    ),
    case(
        "fit-monitor-nobody-reads",
        lambda: _fit(monitor="val_dcie"),
        ValueError,
        "monitor='val_dcie' is not among this epoch's metrics ['lr', 'train_loss']",
    ),
    case(
        "fit-monitor-val-without-val-loader",
        lambda: _fit(monitor="val_loss"),
        ValueError,
        "monitor='val_loss' is not among",
    ),
    case(
        "fit-val-loader-generator",
        lambda: _fit(val_loader=(b for b in _batches()), epochs=2),
        ValueError,
        "val_loader is a one-shot iterator",
    ),
    case(
        "fit-train-loader-generator",
        lambda: _fit(train=(b for b in _batches())),
        ValueError,
        "train_loader is a one-shot iterator",
    ),
    case("evaluate-empty-loader", lambda: _eval([]), ValueError, "the loader is empty"),
    case("evaluate-used-up-iterator", lambda: _eval(_used_up()), ValueError, "the loader is empty"),
    case(
        "fit-metric-named-loss",
        lambda: _fit(val_loader=_batches(), metrics={"loss": lambda o, t: 1.0}),
        ValueError,
        "other than 'loss'",
    ),
    case(
        "fit-metric-val-prefix",
        lambda: _fit(val_loader=_batches(), metrics={"val_mae": lambda o, t: 0.0}),
        ValueError,
        "without 'val_'",
    ),
    case(
        "fit-metrics-without-val-loader",
        lambda: _fit(metrics={"m": lambda o, t: 0.0}),
        ValueError,
        "metrics are computed on the val_loader",
    ),
    case(
        "fit-metric-returns-str",
        lambda: _fit(val_loader=_batches(), metrics={"m": lambda o, t: "0.5"}),
        TypeError,
        "metrics['m'] must be a number or a one-element tensor, got str",
    ),
    case(
        "stopper-step-str",
        lambda: _stopper(mode="min").step("0.5"),
        TypeError,
        "must be a number or a one-element tensor",
    ),
    case(
        "amp-load-unknown-key",
        lambda: _amp().load_state_dict({"x": 1}),
        ValueError,
        "unknown key(s) ['x'] in MixedPrecision state",
    ),
    case(
        "fit-amp-cuda-on-cpu-model",
        lambda: _fit(amp=_amp_on("cuda"), device="cpu"),
        ValueError,
        "amp.device_type='cuda', but the model is on cpu",
    ),
    case("update-sync-str", lambda: _update_step(sync="yes"), TypeError, "sync must be a bool"),
    # audit 2: obscure errors
    case(
        "fit-batch-fn-3",
        lambda: _fit(batch_fn=lambda b: (b[0], b[1], b[1])),
        TypeError,
        "batch_fn must return (inputs, targets), got a tuple of 3",
    ),
    case(
        "fit-batch-fn-none",
        lambda: _fit(batch_fn=lambda b: None),
        TypeError,
        "batch_fn must return (inputs, targets), got None",
    ),
    case(
        "fit-batch-fn-str",
        lambda: _fit(batch_fn="xy"),
        TypeError,
        "batch_fn must be a callable instance",
    ),
    case(
        "fit-loader-3-tuples",
        lambda: _fit(train=[(x, y, y) for x, y in _batches()]),
        TypeError,
        "got a tuple of 3",
    ),
    case(
        "fit-loss-fn-str",
        lambda: _fit(loss_fn="mse"),
        TypeError,
        "loss_fn must be a callable instance such as torch.nn.MSELoss(), got a str 'mse'",
    ),
    case(
        "evaluate-loss-fn-str",
        lambda: _eval(None, None, "mse"),
        TypeError,
        "loss_fn must be a callable instance",
    ),
    case(
        "fit-loss-fn-class",
        lambda: _fit(loss_fn=_mse().__class__),
        TypeError,
        "got the class MSELoss",
    ),
    case(
        "fit-loss-returns-float",
        lambda: _fit(loss_fn=lambda o, t: 1.0),
        TypeError,
        "the loss must be a one-element tensor, got float",
    ),
    case(
        "fit-loss-unreduced",
        lambda: _fit(loss_fn=_mse(reduction="none")),
        ValueError,
        "got shape (4, 1)",
    ),
    case(
        "fit-loss-detached",
        lambda: _fit(loss_fn=lambda o, t: _mse()(o, t).detach()),
        ValueError,
        "the loss does not require grad",
    ),
    case(
        "update-step-float-loss",
        lambda: _update_step("float"),
        TypeError,
        "the loss must be a one-element tensor",
    ),
    case(
        "update-step-detached-loss",
        lambda: _update_step("detached"),
        ValueError,
        "does not require grad",
    ),
    case(
        "fit-frozen-model",
        lambda: _fit(model=_frozen()),
        ValueError,
        "the model has no trainable parameters",
    ),
    case(
        "fit-metrics-list",
        lambda: _fit(val_loader=_batches(), metrics=[abs]),
        TypeError,
        "metrics must be a mapping",
    ),
    case(
        "fit-metrics-str",
        lambda: _fit(val_loader=_batches(), metrics="accuracy"),
        TypeError,
        "metrics must be a mapping",
    ),
    case(
        "fit-metric-str-value",
        lambda: _fit(val_loader=_batches(), metrics={"m": "accuracy"}),
        TypeError,
        "metrics['m'] must be a callable instance",
    ),
    case(
        "fit-metric-returns-none",
        lambda: _fit(val_loader=_batches(), metrics={"m": lambda o, t: None}),
        TypeError,
        "metrics['m'] must be a number",
    ),
    case(
        "fit-metric-returns-vector",
        lambda: _fit(val_loader=_batches(), metrics={"m": lambda o, t: o[:, 0]}),
        TypeError,
        "got Tensor of shape (4,)",
    ),
    case(
        "fit-amp-true",
        lambda: _fit(amp=True),
        TypeError,
        "amp must be a stabletrain.amp.MixedPrecision",
    ),
    case(
        "fit-amp-str",
        lambda: _fit(amp="float16"),
        TypeError,
        "amp must be a stabletrain.amp.MixedPrecision",
    ),
    case(
        "evaluate-amp-true",
        lambda: _eval(amp=True),
        TypeError,
        "amp must be a stabletrain.amp.MixedPrecision",
    ),
    case(
        "fit-scheduler-str",
        lambda: _fit(scheduler="cosine"),
        TypeError,
        "scheduler must be an LR scheduler",
    ),
    case(
        "fit-scheduler-dict",
        lambda: _fit(scheduler={"type": "cosine"}),
        TypeError,
        "scheduler must be an LR scheduler",
    ),
    case("guard-scheduler-str", lambda: _guard(scheduler="cosine"), TypeError, "scheduler must be"),
    case(
        "update-positional-scheduler",
        lambda: _update_positional(1.0),
        TypeError,
        "scheduler must be an LR scheduler",
    ),
    case(
        "fit-callbacks-one",
        lambda: _fit(callbacks=_stopper()),
        TypeError,
        "callbacks must be a list of Callback instances, got a EarlyStopping",
    ),
    case("fit-callbacks-none", lambda: _fit(callbacks=None), TypeError, "callbacks must be a list"),
    case(
        "fit-stopper-class",
        lambda: _fit(early_stopping=_stopper().__class__),
        TypeError,
        "early_stopping must be a Callback such as EarlyStopping(patience=3), got the class EarlyStopping",
    ),
    case(
        "fit-stopper-int",
        lambda: _fit(early_stopping=3),
        TypeError,
        "early_stopping must be a Callback",
    ),
    case(
        "fit-stopper-true",
        lambda: _fit(early_stopping=True),
        TypeError,
        "early_stopping must be a Callback",
    ),
    case(
        "fit-checkpoints-path",
        lambda: _fit(checkpoints="/tmp/x"),
        TypeError,
        "checkpoints must be a CheckpointManager",
    ),
    case(
        "fit-checkpoints-true",
        lambda: _fit(checkpoints=True),
        TypeError,
        "checkpoints must be a CheckpointManager",
    ),
    case(
        "fit-tracker-str",
        lambda: _fit(tracker="mlflow"),
        TypeError,
        "tracker must be an MLflowTracker",
    ),
    case(
        "stopper-load-unknown-key",
        lambda: _stopper().load_state_dict({"lr": 0.1}),
        ValueError,
        "unknown key(s) ['lr'] in EarlyStopping state",
    ),
    case(
        "stopper-load-missing-key",
        lambda: _stopper().load_state_dict({"best": 1.0}),
        ValueError,
        "EarlyStopping state lacks ['num_bad']",
    ),
    case(
        "stopper-load-best-str",
        lambda: _stopper().load_state_dict({"best": "x", "num_bad": 1}),
        TypeError,
        "EarlyStopping state 'best' must be a number",
    ),
    case(
        "guard-load-unknown-key",
        lambda: _guard().load_state_dict({"x": 1}),
        ValueError,
        "unknown key(s) ['x'] in StabilityGuard state",
    ),
    case(
        "guard-load-missing-keys",
        lambda: _guard().load_state_dict({}),
        ValueError,
        "StabilityGuard state lacks ['applied'",
    ),
    case(
        "stopper-step-vector",
        lambda: _stopper(mode="min").step(_tensor(1.0, 2.0)),
        TypeError,
        "must be a number or a one-element tensor, got Tensor of shape (2,)",
    ),
    case(
        "evaluate-not-a-module",
        lambda: _eval(None, lambda x: x),
        TypeError,
        "model must be a torch.nn.Module",
    ),
    case(
        "loaders-num-train-zero",
        lambda: _loaders(num_train=0),
        ValueError,
        "num_train must be >= 1",
    ),
    case("loaders-num-val-zero", lambda: _loaders(num_val=0), ValueError, "num_val must be >= 1"),
    case("fit-numpy-batches", lambda: _fit(train=_numpy_batches()), TypeError, "got numpy arrays"),
]


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


def _saved(*epochs: int, **kwargs):
    """A manager (strategy epoch) that saved a small model at ``epochs``."""
    import torch

    manager = _manager(**{"strategy": "epoch", "max_keep": 5, **kwargs})
    for epoch in epochs:
        manager.save(epoch, {"val_loss": 1.0}, model=torch.nn.Linear(2, 2))
    return manager


def _load_latest(which="latest", in_features=2, **kwargs):
    """Load ``which`` into a ``Linear(in_features, 2)`` with a manager that saved one."""
    import torch

    return _saved(0).load(which, model=torch.nn.Linear(in_features, 2), **kwargs)


def _uncreatable():
    if not (os.name == "posix" and os.path.isdir("/proc/self") and os.geteuid() == 0):
        pytest.skip("needs root on Linux (where /proc passes the access check, mkdir fails)")
    return _manager("/proc/stabletrain-ckpt")


def _param_after_a_bad_one():
    tracker = _tracker()
    with pytest.raises(ValueError):
        tracker.log_params({"a b?": 1})
    tracker.log_params({"ok": 1})  # the bad one is not queued: this one does not fail
    return tracker.log_params({"a/../b": 1})


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
    case("ckpt-save-backwards", lambda: _saved(0, 1, 5).save(3), ValueError, "is behind this"),
    case("ckpt-save-mid-of-done-epoch", lambda: _saved(0, 1).save(1, batch_in_epoch=2), ValueError, "behind"),
    case("ckpt-save-step-negative", lambda: _manager().save(0, step=-5), ValueError, "step must be >= 0"),
    case("ckpt-save-batch-negative", lambda: _manager().save(0, batch_in_epoch=-1), ValueError, "batch_in_epoch must be >="),
    case("ckpt-save-monitor-str", lambda: _manager().save(0, {"val_loss": "0.1"}), TypeError, "metrics['val_loss'] must be a number"),
    case("ckpt-save-monitor-bool", lambda: _saved().save(0, {"val_loss": True}), TypeError, "must be a number, got bool"),
    case("ckpt-save-metrics-list", lambda: _manager().save(0, [1.0]), TypeError, "metrics must be a mapping"),
    case("ckpt-total-epochs-unused", lambda: _manager(strategy="epoch", total_epochs=3), ValueError, "total_epochs=3 is unused"),
    case("ckpt-minutes-unused", lambda: _manager(every_n_minutes=1.0), ValueError, "every_n_minutes=1.0 is unused"),
    case("ckpt-directory-uncreatable", _uncreatable, ValueError, "cannot be created"),
    case("ckpt-load-map-location-tpu", lambda: _load_latest(map_location="tpu"), ValueError, "map_location must be"),
    case("ckpt-load-a-text-file", lambda: _load_latest(_a_file(b"hello, text")), RuntimeError, "is not a checkpoint"),
    case("ckpt-load-other-model", lambda: _load_latest(in_features=3), RuntimeError, "'model' state does not fit the Linear"),
    case("track-uri-in-memory", lambda: _tracker(tracking_uri="sqlite://"), ValueError, "is in memory"),
    case("track-uri-memory-file", lambda: _tracker(tracking_uri="sqlite:///:memory:"), ValueError, "is in memory"),
    case("track-uri-no-folder", lambda: _tracker(tracking_uri=f"sqlite:///{tempfile.mkdtemp()}/no/m.db"), ValueError, "does not exist"),
    case("track-tags-list", lambda: _tracker(tags=["a"]), TypeError, "tags must be a mapping"),
    case("track-tags-bad-key", lambda: _tracker(tags={"a?": "x"}), ValueError, "cannot be MLflow names"),
    case("track-experiment-too-long", lambda: _tracker(experiment="x" * 501), ValueError, "<= 500 characters"),
    case("track-experiment-blank", lambda: _tracker(experiment="   "), ValueError, "non-empty string"),
    case("track-run-name-empty", lambda: _tracker(run_name=""), ValueError, "run_name must be a string, not empty"),
    case("track-params-list", lambda: _tracker().log_params([1]), TypeError, "params must be a mapping"),
    case("track-params-bad-key", lambda: _tracker().log_params({"a b?": 1}), ValueError, "['a b?'] cannot be MLflow names"),
    case("track-params-after-bad", _param_after_a_bad_one, ValueError, "['a/../b'] cannot be"),
]  # fmt: skip


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
