"""stabletrain.course.batchnorm: scores with running, batch and re-estimated BN statistics."""

from __future__ import annotations

import math

import torch

from stabletrain.course.batchnorm import bn_modes, score_loader
from stabletrain.data import make_loaders
from stabletrain.models import TinyUNet


def _setup():
    torch.manual_seed(0)
    train, val = make_loaders(16, 8, 8, image_size=16, seed=0)
    model = TinyUNet(base_channels=4, depth=2)
    return model, train, val


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_scores_leave_the_model_unchanged():
    model, train, val = _setup()
    model.train()
    before = _state(model)
    result = bn_modes(model, train, val)
    assert set(result) == {"eval", "batch", "precise"}
    for scores in result.values():
        assert set(scores) == {"val_loss", "val_dice", "foreground"}
        assert all(math.isfinite(v) for v in scores.values())
        assert 0.0 <= scores["foreground"] <= 1.0
    assert model.training
    after = _state(model)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_stale_running_statistics_show_in_eval_mode_only():
    model, train, val = _setup()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.zero_()  # statistics that fit no batch
            module.running_var.fill_(1e-4)
    result = bn_modes(model, train, val)
    batch = result["batch"]["val_loss"]
    assert abs(result["eval"]["val_loss"] - batch) > 0.5
    # re-estimated statistics are close to the batches' own again
    assert abs(result["precise"]["val_loss"] - batch) < 0.1


def test_eval_score_matches_evaluate():
    from stabletrain.loop import evaluate

    model, _, val = _setup()
    ours = score_loader(model, val)
    theirs = evaluate(model, val)
    assert math.isclose(ours["val_loss"], theirs["val_loss"], rel_tol=1e-5)
    assert math.isclose(ours["val_dice"], theirs["val_dice"], rel_tol=1e-5)


def test_batch_stat_scores_record_one_row_per_epoch():
    from stabletrain.course.batchnorm import BatchStatScores
    from stabletrain.course.experiments import short_run

    _, val = make_loaders(16, 8, 8, image_size=16, seed=0)
    recorder = BatchStatScores(val)
    history = short_run(
        epochs=2,
        num_train=16,
        num_val=8,
        batch_size=8,
        image_size=16,
        base_channels=4,
        depth=2,
        callbacks=[recorder],
    )
    assert len(recorder.rows) == len(history.epochs["val_loss"]) == 2
    assert all(set(row) == {"val_loss", "val_dice", "foreground"} for row in recorder.rows)
