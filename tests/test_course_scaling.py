"""Notebook 14's LR-scaling curve: every position of its widget's sliders draws a schedule."""

import itertools

import pytest

from stabletrain.course.scaling import scaled_schedule


@pytest.mark.parametrize("global_batch", [64, 256, 1024])
def test_the_scaled_schedule_warms_up_to_its_peak_for_any_batch(global_batch):
    lrs = scaled_schedule(0.1, 256, global_batch, warmup_steps=5, total_steps=20)
    peak = 0.1 * global_batch / 256
    assert max(lrs) == pytest.approx(peak)
    assert lrs[0] == pytest.approx(min(0.1, peak))
    assert all(a <= b + 1e-12 for a, b in itertools.pairwise(lrs[:6]))  # warmup never goes down
