import math

import pytest

from stabletrain.experiments import run_seeds, seed_stats


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
