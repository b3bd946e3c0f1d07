import csv
import json
import math

import pytest

from stabletrain.history import History


def _history():
    h = History()
    for step, (loss, applied) in enumerate([(1.0, True), (float("nan"), False), (0.5, True)]):
        h.log_step(step=step, epoch=step // 2, lr=0.1, loss=loss, applied=applied)
    h.log_epoch(epoch=0, train_loss=1.0, val_loss=0.9, val_dice=0.2, lr=0.1, seconds=1.5)
    h.log_epoch(epoch=1, train_loss=0.5, val_loss=0.7, val_dice=0.4, lr=0.05, seconds=2.0)
    h.stop_reason = "done"
    return h


def test_summary():
    s = _history().summary()
    assert s["steps"] == 3 and s["epochs"] == 2 and s["skipped_steps"] == 1
    assert s["diverged"] and s["first_nonfinite_step"] == 1
    assert s["best_val_loss"] == 0.7 and s["best_epoch"] == 1
    assert s["final_val_dice"] == 0.4 and s["final_lr"] == 0.05 and s["seconds"] == 3.5
    assert _history().summary("val_dice", "max")["best_val_dice"] == 0.4
    assert _history().summary("val_dice")["best_val_dice"] == 0.4  # Dice goes up
    assert _history().best("val_dice") == 0.4 and _history().best("val_loss", "max") == 0.9
    with pytest.raises(ValueError, match="give mode="):
        _history().best("seconds")
    empty = History().summary()
    assert empty["steps"] == 0 and math.isnan(empty["best_val_loss"])
    assert empty["best_epoch"] is None
    with pytest.raises(ValueError, match="mode"):
        History().summary(mode="up")


def test_csv_export(tmp_path):
    h = _history()
    h.to_csv(tmp_path / "epochs.csv")
    h.to_csv(tmp_path / "steps.csv", table="steps")
    with open(tmp_path / "epochs.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["epoch", "train_loss", "val_loss", "val_dice", "lr", "seconds"]
    assert [float(x) for x in rows[2]] == [1, 0.5, 0.7, 0.4, 0.05, 2.0]
    with open(tmp_path / "steps.csv") as f:
        steps = list(csv.DictReader(f))
    assert len(steps) == 3 and steps[1]["loss"] == "nan"
    with pytest.raises(ValueError, match="table"):
        h.to_csv(tmp_path / "x.csv", table="batches")


def test_json_export_is_strict_and_round_trips(tmp_path):
    h = _history()
    h.to_json(tmp_path / "h.json")
    text = (tmp_path / "h.json").read_text()
    assert "NaN" not in text
    data = json.loads(text)
    assert data["summary"]["best_epoch"] == 1 and data["steps"]["loss"][1] is None
    back = History()
    back.load_state_dict(data)
    assert back.epochs == h.epochs and back.stop_reason == "done"


def test_summary_gradient_statistics_rounding_and_key_selection():
    h = History()
    for loss, norm in [(1.0, 0.5), (2.5, 8.0), (0.75, 1.0), (math.nan, math.nan)]:
        h.log_step(loss=loss, grad_norm=norm, lr=0.1)
    h.log_epoch(epoch=0, val_loss=1.23456, val_dice=0.5)
    s = h.summary()
    assert s["max_grad_norm"] == 8.0 and s["median_grad_norm"] == 1.0
    assert s["max_loss"] == 2.5 and s["max_val_loss"] == 1.23456
    picked = h.summary(digits=2, keys=["max_val_loss", "first_nonfinite_step"])
    assert picked == {"max_val_loss": 1.23, "first_nonfinite_step": 3}
    with pytest.raises(ValueError, match="unknown summary key"):
        h.summary(keys=["max_norm"])
