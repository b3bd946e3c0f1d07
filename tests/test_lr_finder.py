import copy
import math
import random
import warnings

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from torch import nn

from stabletrain import TinyUNet, fit, make_loaders
from stabletrain.lr_finder import (
    LRRangeTestResult,
    MovingAverage,
    ema,
    lr_range_test,
    suggest_lr,
    zero_lag_smooth,
)


def _regression(n: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.1 * torch.randn(n, 1, generator=g)
    return [(x[i : i + 16], y[i : i + 16]) for i in range(0, n, 16)]


class _Net(nn.Module):
    """Linear model with dropout and BatchNorm, so RNG and buffers matter."""

    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(4)
        self.drop = nn.Dropout(0.2)
        self.fc = nn.Linear(4, 1)

    def forward(self, x):
        return self.fc(self.drop(self.bn(x)))


def _state(model, optimizer, loader):
    return {
        "params": [p.detach().clone() for p in model.parameters()],
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "buffers": [b.clone() for b in model.buffers()],
        "modes": [m.training for m in model.modules()],
        "opt": copy.deepcopy(optimizer.state_dict()),
        "torch_rng": torch.get_rng_state(),
        "python_rng": random.getstate(),
        "numpy_rng": np.random.get_state()[1].copy(),  # noqa: NPY002
        "loader_rng": loader.generator.get_state(),
    }


def _assert_same_state(a, b):
    for x, y in zip(a["params"] + a["buffers"], b["params"] + b["buffers"]):
        assert torch.equal(x, y)
    for x, y in zip(a["grads"], b["grads"]):
        assert (x is None and y is None) or torch.equal(x, y)
    assert a["modes"] == b["modes"]
    assert a["opt"]["param_groups"] == b["opt"]["param_groups"]
    assert a["opt"]["state"].keys() == b["opt"]["state"].keys()
    for key, state in a["opt"]["state"].items():
        for name, value in state.items():
            assert torch.equal(
                torch.as_tensor(value), torch.as_tensor(b["opt"]["state"][key][name])
            )
    assert torch.equal(a["torch_rng"], b["torch_rng"])
    assert a["python_rng"] == b["python_rng"]
    assert np.array_equal(a["numpy_rng"], b["numpy_rng"])
    assert torch.equal(a["loader_rng"], b["loader_rng"])


@pytest.fixture(scope="module")
def shapes():
    train, _ = make_loaders(num_train=32, num_val=8, batch_size=8, image_size=32, seed=3)
    return train


@pytest.mark.filterwarnings("ignore:the loss never fell")
def test_restores_everything_bit_for_bit(shapes):
    model = TinyUNet(base_channels=4, depth=2, attention="cbam")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    fit(model, shapes, optimizer=opt, epochs=1, max_steps=2, progress=False)  # optimizer state
    model.eval()  # a mode the test must switch and restore
    model.heads[0].train()
    next(model.parameters()).grad = torch.ones_like(next(model.parameters()))
    random.random()
    before = _state(model, opt, shapes)
    result = lr_range_test(
        model, opt, nn.BCEWithLogitsLoss(), shapes, start_lr=1e-4, end_lr=10.0, num_iters=12
    )
    assert len(result.lrs) >= 3  # it really trained
    _assert_same_state(before, _state(model, opt, shapes))


def test_training_after_the_test_is_unchanged(shapes):
    def run(with_test: bool) -> list[float]:
        torch.manual_seed(0)
        shapes.generator.manual_seed(3)
        model = TinyUNet(base_channels=4, depth=2)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        if with_test:
            lr_range_test(model, opt, nn.BCEWithLogitsLoss(), shapes, end_lr=1.0, num_iters=6)
        return fit(model, shapes, optimizer=opt, epochs=1, progress=False).steps["loss"]

    assert run(True) == run(False)


@pytest.mark.filterwarnings("ignore:the loss never fell")
def test_sweep_smoothing_and_loss_after_update():
    loader = _regression()
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    result = lr_range_test(
        model,
        opt,
        nn.MSELoss(),
        loader,
        start_lr=1e-4,
        end_lr=1e-2,
        num_iters=10,
        smooth=0.3,
        diverge_threshold=1e9,
    )
    assert result.stop_reason == "completed"
    np.testing.assert_allclose(result.lrs, np.geomspace(1e-4, 1e-2, 10), rtol=1e-12)
    avg, expected = 0.0, []
    for i, v in enumerate(result.raw_losses):
        avg = 0.7 * avg + 0.3 * v
        expected.append(avg / (1 - 0.7 ** (i + 1)))
    np.testing.assert_allclose(result.losses, expected, rtol=1e-12)
    assert result.losses[0] == pytest.approx(
        result.raw_losses[0], rel=1e-12
    )  # bias correction: no pull towards 0

    # losses[0] is measured on batch 1 after one SGD step on batch 0 with lrs[0]
    check = nn.Linear(4, 1)
    check.load_state_dict(model.state_dict())
    x0, y0 = loader[0]
    with torch.no_grad():
        assert result.initial_loss == pytest.approx(float(nn.functional.mse_loss(check(x0), y0)))
    nn.functional.mse_loss(check(x0), y0).backward()
    with torch.no_grad():
        for p in check.parameters():
            p -= result.lrs[0] * p.grad
    x1, y1 = loader[1]
    with torch.no_grad():
        assert result.raw_losses[0] == pytest.approx(float(nn.functional.mse_loss(check(x1), y1)))


def test_linear_mode():
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    result = lr_range_test(
        model,
        opt,
        nn.MSELoss(),
        _regression(),
        start_lr=1e-3,
        end_lr=1e-2,
        num_iters=7,
        mode="linear",
        diverge_threshold=1e9,
    )
    np.testing.assert_allclose(result.lrs, np.linspace(1e-3, 1e-2, 7), rtol=1e-12)


def test_parameter_groups_keep_their_ratio():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1))
    opt = torch.optim.SGD(
        [
            {"params": model[0].parameters(), "lr": 0.01},
            {"params": model[1].parameters(), "lr": 0.04},
        ]
    )
    seen = []

    def loss_fn(out, target):
        seen.append([g["lr"] for g in opt.param_groups])
        return nn.functional.mse_loss(out, target)

    result = lr_range_test(
        model,
        opt,
        loss_fn,
        _regression(),
        start_lr=1e-4,
        end_lr=1e-2,
        num_iters=5,
        diverge_threshold=1e9,
    )
    # call i+1 sees the LRs set for step i
    for lrs, lr in zip(seen[1:], result.lrs):
        assert lrs == pytest.approx([lr / 4, lr])
    assert [g["lr"] for g in opt.param_groups] == [0.01, 0.04]


def test_stops_at_the_first_nonfinite_loss():
    calls = []

    def loss_fn(out, target):
        calls.append(1)
        loss = nn.functional.mse_loss(out, target)
        return loss * math.nan if len(calls) == 5 else loss

    model = nn.Linear(4, 1)
    opt = torch.optim.Adam(model.parameters())
    before = [p.detach().clone() for p in model.parameters()]
    result = lr_range_test(
        model,
        opt,
        loss_fn,
        _regression(),
        start_lr=1e-4,
        end_lr=1e-3,
        num_iters=20,
        diverge_threshold=1e9,
    )
    assert result.stop_reason == "non-finite loss"
    assert len(calls) == 5  # nothing after the NaN
    assert len(result.lrs) == len(result.raw_losses) == len(result.losses) == 4
    assert math.isnan(result.raw_losses[-1]) and math.isnan(result.losses[-1])
    assert all(math.isfinite(v) for v in result.raw_losses[:-1])
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert opt.state_dict()["state"] == {}
    fig = result.plot()  # the non-finite loss is marked, not plotted as a value
    assert any(line.get_label() == "non-finite loss" for line in fig.axes[0].lines)
    plt.close(fig)


def test_stops_on_real_divergence_and_suggests_below_it():
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    result = lr_range_test(
        model,
        opt,
        nn.MSELoss(),
        _regression(256),
        start_lr=1e-4,
        end_lr=100.0,
        num_iters=60,
        smooth=0.3,
    )
    assert result.stop_reason == "diverged"
    assert len(result.lrs) < 60
    if result.stop_reason == "diverged":
        assert result.losses[-1] > 4.0 * result.best_loss
        assert all(v <= 4.0 * min(result.losses[: i + 1]) for i, v in enumerate(result.losses[:-1]))
    low, high = result.suggestion_range
    assert low <= result.suggestion <= high < result.lrs[-1]
    # SGD on this least-squares problem diverges above 2 / largest Hessian eigenvalue
    x = torch.cat([b[0] for b in _regression(256)])
    hessian = (
        2 * torch.cat([x, torch.ones(len(x), 1)], 1).T @ torch.cat([x, torch.ones(len(x), 1)], 1)
    )
    assert result.suggestion < 2 / float(torch.linalg.eigvalsh(hessian / len(x)).max())


def test_suggestion_rule_on_a_known_curve():
    lrs = np.geomspace(1e-5, 1.0, 101)
    x = np.log10(lrs)
    losses = 1.0 - 0.8 / (1 + np.exp(-3 * (x + 2.5))) + 0.5 * np.maximum(x + 0.5, 0) ** 2
    suggestion, (low, high) = suggest_lr(list(lrs), list(losses))
    assert suggestion == pytest.approx(10**-2.5, rel=0.05)  # inflection = steepest point
    assert low < suggestion < high
    assert 10**-3.5 < low < 10**-3 and 10**-2 < high < 10**-1.2


def test_ema_is_bias_corrected_and_skips_nan():
    out = ema([2.0, 2.0, math.nan, 2.0], 0.1)
    assert out[0] == pytest.approx(2.0) and out[1] == pytest.approx(2.0)
    assert math.isnan(out[2]) and out[3] == pytest.approx(2.0)
    # the NaN leaves the average alone: the 4th value is the 3rd finite one
    with_nan, without = ema([1.0, 3.0, math.nan, 5.0], 0.5), ema([1.0, 3.0, 5.0], 0.5)
    assert with_nan[:2] == without[:2] and with_nan[3] == without[2] != 5.0
    average = MovingAverage(0.3)
    assert [average.update(v) for v in (4.0, 1.0, 2.0)] == ema([4.0, 1.0, 2.0], 0.3)
    assert average.count == 3
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="smooth"):
            ema([1.0], bad)


def test_zero_lag_smoothing_does_not_shift_a_trend():
    lrs = np.geomspace(1e-5, 1.0, 101)
    trend = 3.0 - 0.5 * np.log10(lrs)  # a loss falling steadily per decade
    lag = (1 - 0.1) / 0.1 * (trend[0] - trend[1])
    np.testing.assert_allclose(np.array(ema(trend, 0.1))[80:], trend[80:] + lag, rtol=1e-3)
    np.testing.assert_allclose(zero_lag_smooth(lrs, trend), trend, rtol=1e-12)
    noisy = trend + np.random.default_rng(0).normal(0.0, 0.05, trend.size)
    assert np.std(zero_lag_smooth(lrs, noisy)[20:-20] - trend[20:-20]) < 0.5 * 0.05
    with pytest.raises(ValueError, match="decades"):
        zero_lag_smooth(lrs, trend, decades=0.0)


def test_suggestion_comes_from_the_zero_lag_curve():
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    result = lr_range_test(
        model, opt, nn.MSELoss(), _regression(256), start_lr=1e-4, end_lr=100.0, num_iters=60
    )
    clipped = np.minimum(result.raw_losses, 4.0 * result.best_loss)
    assert result.raw_losses[-1] > 4.0 * result.best_loss  # the blow-up was clipped
    assert result.suggestion_losses == pytest.approx(zero_lag_smooth(result.lrs, clipped))
    assert result.suggestion == suggest_lr(result.lrs, result.suggestion_losses)[0]
    # the causal curve lags: its minimum sits at a larger LR than the zero-lag one
    assert np.argmin(result.losses) > np.argmin(result.suggestion_losses)


def test_no_descent_means_no_suggestion():
    assert math.isnan(suggest_lr([1e-3, 1e-2, 1e-1, 1.0], [1.0, 1.0, 1.0, 1.0])[0])
    assert math.isnan(suggest_lr([1e-3, 1e-2, 1e-1, 1.0], [1.0, 1.1, 1.5, 3.0])[0])
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.warns(RuntimeWarning, match="never fell"):
        result = lr_range_test(
            model, opt, lambda out, t: (out * 0).sum() + 1.0, _regression(), num_iters=5
        )
    assert math.isnan(result.suggestion)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"start_lr": 0.0}, "start_lr"),
        ({"start_lr": 1.0, "end_lr": 0.5}, "end_lr"),
        ({"num_iters": 2}, "num_iters"),
        ({"mode": "cosine"}, "mode"),
        ({"smooth": 0.0}, "smooth"),
        ({"smooth": 1.5}, "smooth"),
        ({"diverge_threshold": 1.0}, "diverge_threshold"),
        ({"max_grad_norm": -1.0}, "max_grad_norm"),
    ],
)
def test_bad_arguments(kwargs, name):
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=name):
        lr_range_test(model, opt, nn.MSELoss(), _regression(), **kwargs)


def test_bad_types_and_empty_loader():
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match="num_iters"):
        lr_range_test(model, opt, nn.MSELoss(), _regression(), num_iters=5.0)
    with pytest.raises(ValueError, match="empty"):
        lr_range_test(model, opt, nn.MSELoss(), [])
    with pytest.raises(TypeError, match="pair"):
        lr_range_test(model, opt, nn.MSELoss(), [torch.zeros(2, 4)])


def test_plot():
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    result = lr_range_test(
        model,
        opt,
        nn.MSELoss(),
        _regression(256),
        start_lr=1e-4,
        end_lr=100.0,
        num_iters=40,
        smooth=0.3,
    )
    assert isinstance(result, LRRangeTestResult)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = result.plot()
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    assert len(ax.lines) >= 3
    fig2, ax2 = plt.subplots()
    assert result.plot(ax=ax2) is fig2
    plt.close("all")
