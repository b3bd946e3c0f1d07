import math

import pytest
import torch

from stabletrain.config import resolve_config, seeded_start
from stabletrain.course.experiments import run_seeds, seed_stats, short_run
from stabletrain.schedulers import lr_curve


def test_seed_stats_summarises_and_keeps_nan():
    stats = seed_stats([0.5, 0.7, 0.6])
    assert stats.n == 3 and stats.min == 0.5 and stats.max == 0.7
    assert math.isclose(stats.mean, 0.6) and math.isclose(stats.std, 0.1)
    assert stats.count(lambda v: v > 0.55) == 2
    assert str(seed_stats([1.0, 2.0], digits=1)) == "1.5 ± 0.7 (1.0–2.0, 2 seeds)"
    assert math.isnan(seed_stats([1.0, math.nan]).mean)
    with pytest.raises(ValueError, match="at least one"):
        seed_stats([])


def test_run_seeds_differs_by_seed_only():
    kw = dict(epochs=1, num_train=16, num_val=8, image_size=32, base_channels=4, depth=2)
    a, b = run_seeds([0, 1], **kw)
    again = run_seeds([0], **kw)[0]
    assert a.steps["loss"] == again.steps["loss"] != b.steps["loss"]
    with pytest.raises(ValueError, match="seeds"):
        run_seeds([], **kw)
    with pytest.raises(ValueError, match="not `seed`"):
        run_seeds([0], seed=1, **kw)


TINY = dict(num_train=16, num_val=8, batch_size=8, image_size=32, base_channels=4, depth=2)


def test_short_run_rejects_unknown_arguments_before_training():
    with pytest.raises(TypeError, match=r"unknown argument\(s\) \['bogus'\].*'max_grad_norm'"):
        short_run(bogus=1, **TINY)
    with pytest.raises(TypeError, match=r"dataset_kwargs repeats .*\['seed'\]"):
        short_run(dataset_kwargs={"seed": 1}, **TINY)
    with pytest.raises(ValueError, match="optimizer type must be one of"):
        short_run(optimizer="lamb", **TINY)


def test_short_run_starts_where_config_run_starts():
    """One recipe: short_run's data, seeding and model are config.seeded_start's."""
    _, model = short_run(lr=0.0, epochs=1, seed=3, return_model=True, **TINY)  # lr 0: weights kept
    cfg = resolve_config(
        {
            "seed": 3,
            "data": {k: TINY[k] for k in ("num_train", "num_val", "batch_size", "image_size")},
            "model": {"base_channels": 4, "depth": 2},
        }
    )
    train, _, fresh = seeded_start(cfg["data"], cfg["model"], cfg["seed"])
    assert len(train) == 2
    for (name, a), (_, b) in zip(model.named_parameters(), fresh.named_parameters(), strict=True):
        assert torch.equal(a, b), name


def test_short_run_scheduler_mapping_takes_warmup_epochs():
    history = short_run(
        lr=0.01, epochs=2, scheduler={"type": "warmup_cosine", "warmup_epochs": 1}, **TINY
    )
    expected = lr_curve({"type": "warmup_cosine", "warmup_steps": 2}, 4, 0.01)
    assert history.steps["lr"] == pytest.approx(expected)
