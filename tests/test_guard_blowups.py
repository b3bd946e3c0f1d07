"""The guard tells huge from non-finite, catches finite blow-ups, and snapshots only health."""

import math
import statistics

import pytest
import torch
from torch import nn

from stabletrain.history import History
from stabletrain.schedulers import AdaptiveScheduler
from stabletrain.stability import (
    NonFiniteError,
    StabilityGuard,
    clip_gradients,
    grad_norm,
    grads_are_finite,
)

# ------------------------------------------------------------------ huge is not non-finite


def test_a_huge_finite_gradient_has_a_finite_norm():
    p = torch.zeros(10, requires_grad=True)
    p.grad = torch.full((10,), 1e19)
    expected = math.sqrt(10) * 1e19
    # what torch's float32 norm gives: inf, though every entry is finite
    assert math.isinf(float(torch.nn.utils.get_total_norm([p.grad])))
    assert float(grad_norm([p])) == pytest.approx(expected, rel=1e-6)
    assert grads_are_finite([p])
    before = float(clip_gradients([p], "norm", 1.0))
    assert before == pytest.approx(expected, rel=1e-6)
    assert float(p.grad.norm()) == pytest.approx(1.0, rel=1e-4), "a huge gradient is clipped"


def test_the_guard_reports_a_huge_gradient_as_exploding_with_its_size():
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    guard = StabilityGuard(model, opt, spike_warmup=3)
    x = torch.randn(8, 4)
    for _ in range(5):
        assert guard.step(model(x).pow(2).mean()).applied
    out = model(x)
    out.register_hook(lambda g: g * 1e19)  # a normal loss whose gradient is huge, yet finite
    result = guard.step(out.pow(2).mean())
    assert not result.applied
    assert result.reason.startswith("exploding gradient"), result.reason
    assert math.isfinite(result.grad_norm) and result.grad_norm > 1e10
    assert guard.blowups == 1 and guard.nonfinite_steps == 0 and guard.skipped == 1


def test_a_nan_gradient_is_still_non_finite():
    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    guard = StabilityGuard(model, opt)
    result = guard.step(model(torch.tensor([[float("inf"), 1.0]])).sum() * 0)
    assert result.reason == "non-finite gradient" or result.reason == "non-finite loss"
    assert guard.nonfinite_steps == 1 and guard.blowups == 0


# ------------------------------------------------------------------ finite blow-ups


def _regression():
    torch.manual_seed(0)
    x = torch.randn(256, 8) * 3
    y = x @ torch.randn(8, 1) + 0.1 * torch.randn(256, 1)
    return x, y


def _train_regressor(lr, steps=150, **guard_options):
    """An MSE linear regressor with SGD at ``lr`` through a guard; returns (losses, guard)."""
    x, y = _regression()
    torch.manual_seed(1)
    model = nn.Linear(8, 1)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    guard = StabilityGuard(model, opt, snapshot_every=5, **guard_options)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, 256, (32,), generator=g)
        loss = nn.functional.mse_loss(model(x[idx]), y[idx])
        losses.append(float(loss.detach()))
        guard.step(loss)
    return losses, guard


def test_rollback_cures_a_regressor_whose_loss_explodes_while_finite():
    losses, guard = _train_regressor(0.3, on_nonfinite="rollback")
    assert guard.blowups >= 1 and guard.rollbacks >= 1 and guard.lr_scale < 1
    assert guard._snapshot["loss"] < 1.0, "the snapshot holds a healthy state"
    assert losses[-1] < 0.1, f"not cured: final loss {losses[-1]:.3g}"


def test_without_the_blowup_test_rollback_restores_an_exploded_snapshot():
    # the failure the blow-up test exists for: a snapshot taken while the loss explodes
    losses, guard = _train_regressor(0.3, on_nonfinite="rollback", spike_factor=None)
    assert guard.blowups == 0
    assert losses[-1] > 1e6 or guard._snapshot["loss"] > 1e6


def test_a_finite_blowup_is_raised_under_raise():
    with pytest.raises(NonFiniteError, match=r"loss blow-up|exploding gradient"):
        _train_regressor(0.3, on_nonfinite="raise")


def _warmed_guard(steps, **options):
    """A linear regressor's guard after ``steps`` healthy steps; returns (guard, loss_fn)."""
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    guard = StabilityGuard(model, opt, **options)
    x, y = torch.randn(16, 4), torch.randn(16, 1)

    def loss_fn():
        return nn.functional.mse_loss(model(x), y)

    for _ in range(steps):
        assert guard.step(loss_fn()).applied
    return guard, loss_fn


def test_an_injected_loss_spike_is_skipped_and_leaves_the_weights():
    guard, loss_fn = _warmed_guard(8, spike_warmup=5)
    before = [p.detach().clone() for p in guard.model.parameters()]
    result = guard.step(loss_fn() * 1000)  # injected: a spike
    assert not result.applied and result.reason.startswith("loss blow-up")
    assert all(torch.equal(a, b) for a, b in zip(before, guard.model.parameters()))
    assert guard.step(loss_fn()).applied


def test_rollbacks_that_keep_landing_on_an_exploding_state_say_so():
    guard, loss_fn = _warmed_guard(
        5, on_nonfinite="rollback", spike_warmup=3, max_consecutive_skips=3
    )
    with pytest.raises(NonFiniteError, match="rollbacks each restored the snapshot"):
        for _ in range(5):
            guard.step(loss_fn() * 1e4)


def test_snapshots_are_taken_only_from_healthy_steps():
    guard, loss_fn = _warmed_guard(5, on_nonfinite="skip", snapshot_every=1, spike_warmup=3)
    healthy = guard._snapshot["loss"]
    for _ in range(3):
        guard.step(loss_fn() * 1e4)
    assert guard._snapshot["loss"] == healthy


def test_blowup_state_survives_state_dict():
    guard, loss_fn = _warmed_guard(4, spike_warmup=3)
    guard.step(loss_fn() * 1e4)
    other = StabilityGuard(guard.model, guard.optimizer, spike_warmup=3)
    other.load_state_dict(guard.state_dict())
    assert other.blowups == 1
    assert not other.step(loss_fn() * 1e4).applied


@pytest.mark.parametrize(
    ("name", "value", "error"),
    [
        ("spike_factor", 1.0, ValueError),
        ("spike_factor", math.inf, ValueError),
        ("spike_factor", "10", TypeError),
        ("spike_warmup", 0, ValueError),
        ("spike_window", 1.5, TypeError),
    ],
)
def test_spike_options_are_checked(name, value, error):
    model = nn.Linear(2, 1)
    with pytest.raises(error, match=name):
        StabilityGuard(model, torch.optim.SGD(model.parameters(), lr=0.1), **{name: value})


# ------------------------------------------------------------------ the tanh MLP nobody noticed


def _tanh_losses():
    """A finite climb to ~1e7, like a tanh MLP whose output layer runs away."""
    return [1.0, 0.9, 0.8, 0.8, 0.7, 0.7, 0.6, 0.6, 0.6, 0.5, 0.5, 0.6, 3.0, 40.0, 900.0, 3.4e7]


def test_history_diverged_sees_a_finite_blowup():
    history = History()
    for v in _tanh_losses():
        history.log_step(loss=v)
    assert history.first_nonfinite_step() is None
    assert history.blowup_step() == 13
    assert history.diverged
    calm = History()
    for v in _tanh_losses()[:12]:
        calm.log_step(loss=v)
    assert not calm.diverged
    with pytest.raises(ValueError, match="factor"):
        history.blowup_step(factor=1.0)


def test_adaptive_scheduler_cuts_on_a_step_level_spike():
    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = AdaptiveScheduler(opt, window=5, factor=0.5)
    cuts = [sched.observe(v) for v in _tanh_losses()]
    assert cuts.index(True) == 13, "the first loss above 10x the median (0.65) cuts"
    assert sum(cuts) == 1, "one cut, then a cool-down of `window` observations"
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5)
    state = sched.state_dict()
    again = AdaptiveScheduler(opt, window=5)
    again.load_state_dict(state)
    assert again.step_losses == sched.step_losses
    off = AdaptiveScheduler(torch.optim.SGD(model.parameters(), lr=1.0), step_spike_factor=None)
    assert not any(off.observe(v) for v in _tanh_losses())
    with pytest.raises(ValueError, match="step_spike_factor"):
        AdaptiveScheduler(opt, step_spike_factor=0.5)


def _tanh_mlp(lr, guard_options=None, steps=150):
    """A tanh MLP regressor under SGD with momentum; returns (History, guard or None)."""
    torch.manual_seed(0)
    x = torch.randn(512, 8)
    y = torch.sin(x.sum(1, keepdim=True))
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Linear(8, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1)
    )
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    guard = StabilityGuard(model, opt, **guard_options) if guard_options is not None else None
    history, g = History(), torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, 512, (32,), generator=g)
        loss = nn.functional.mse_loss(model(x[idx]), y[idx])
        if guard is not None:
            result = guard.step(loss)
            history.log_step(loss=float(loss.detach()), applied=result.applied)
        else:
            history.log_step(loss=float(loss.detach()))
            opt.zero_grad()
            loss.backward()
            opt.step()
    return history, guard


def test_a_tanh_mlp_blows_up_long_before_its_nan_and_rollback_cures_it():
    plain, _ = _tanh_mlp(0.2)
    blowup, nan = plain.blowup_step(), plain.first_nonfinite_step()
    assert blowup is not None and nan is not None and nan - blowup >= 10, (blowup, nan)
    guarded, guard = _tanh_mlp(0.2, {"on_nonfinite": "rollback", "snapshot_every": 5}, 300)
    assert guard.blowups >= 1 and guard.nonfinite_steps == 0, "caught while still finite"
    applied = [v for v, a in zip(guarded.steps["loss"], guarded.steps["applied"]) if a]
    assert all(math.isfinite(v) for v in applied)
    # it learns after the rollbacks: the late losses are below the first ones
    assert statistics.median(applied[-20:]) < 0.8 * statistics.median(applied[:10])
