"""stabletrain.course.precision: float formats, activation ranges, gradients, underflow."""

import copy

import matplotlib
import numpy as np
import pytest
import torch

matplotlib.use("Agg")

from stabletrain.course.precision import (
    activation_ranges,
    dtype_table,
    layer_gradients,
    plot_float_formats,
    underflow_fraction,
)


def test_dtype_table_matches_finfo():
    rows = {r["dtype"]: r for r in dtype_table()}
    assert rows["float16"]["max"] == 65504.0
    assert rows["float16"]["smallest_subnormal"] == 2.0**-24
    assert rows["bfloat16"]["max"] == torch.finfo(torch.bfloat16).max
    assert torch.tensor(rows["float16"]["smallest_subnormal"], dtype=torch.float16) > 0
    assert torch.tensor(rows["float16"]["smallest_subnormal"] / 4, dtype=torch.float16) == 0


def test_activation_ranges_flag_a_float16_overflow():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU())
    with torch.no_grad():
        model[0].weight.fill_(1e3)
        model[0].bias.zero_()
    ranges = activation_ranges(model, torch.full((1, 2), 50.0))
    assert list(ranges) == ["0", "1"]
    assert ranges["0"] == pytest.approx(1e5) and ranges["0"] > torch.finfo(torch.float16).max


def test_underflow_fraction():
    values = torch.tensor([1.0, 1e-5, 1e-9, 0.0, 1e6])
    stats = underflow_fraction(values)
    assert stats["count"] == 4
    assert stats["flushed"] == 0.25  # 1e-9 < 2**-25
    assert stats["subnormal"] == 0.5  # 1e-5 and 1e-9 below 6.1e-5
    assert stats["overflow"] == 0.25


def test_float_formats_end_at_each_formats_max():
    fig = plot_float_formats()
    ends = sorted(
        float(np.max(ln.get_xdata()))
        for ln in fig.axes[0].lines
        if ln.get_marker() != "x" and len(ln.get_xdata()) > 2
    )
    assert ends[0] == pytest.approx(65504, rel=0.01)


def test_layer_gradients_match_autograd_and_undo_the_scale():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
    x, y = torch.randn(8, 4), torch.rand(8, 1)
    ref = copy.deepcopy(model)
    torch.nn.functional.binary_cross_entropy_with_logits(ref(x), y).backward()
    grads, outputs = layer_gradients(model, x, y, loss_scale=1024.0)
    for g, p in zip(grads, ref.parameters()):
        torch.testing.assert_close(g, p.grad)
    assert len(outputs) == 3  # one per leaf module
    model.zero_grad()
    _, unscaled = layer_gradients(model, x, y, loss_scale=1.0)
    for scaled, plain in zip(outputs, unscaled):  # as the backward pass saw them: scaled
        torch.testing.assert_close(scaled, plain * 1024)
    with pytest.raises(ValueError, match="loss_scale"):
        layer_gradients(model, x, y, loss_scale=0)
