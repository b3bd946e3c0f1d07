import copy
import math

import pytest
import torch
from torch import nn

from stabletrain.loop import fit
from stabletrain.stability import (
    EarlyStopping,
    NanDetector,
    NonFiniteError,
    StabilityGuard,
    check_gradients,
    check_weights,
    clip_gradients,
    grad_norm,
    grads_are_finite,
)
from stabletrain.update import StepResult


def small_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(inplace=True),
        nn.Conv2d(4, 1, 1),
    )


def batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(4, 1, 8, 8, generator=g), (torch.rand(4, 1, 8, 8, generator=g) > 0.5).float()


def loss_of(model: nn.Module, seed: int = 1) -> torch.Tensor:
    x, y = batch(seed)
    return nn.functional.binary_cross_entropy_with_logits(model(x), y)


def snapshot(model, optimizer, scheduler=None):
    return (
        copy.deepcopy(model.state_dict()),
        copy.deepcopy(optimizer.state_dict()),
        copy.deepcopy(scheduler.state_dict()) if scheduler is not None else None,
    )


def assert_same(a, b):
    """Bit-for-bit equality of nested state dicts."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b))


def make(on_nonfinite="skip", **kwargs):
    model = small_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.9)
    guard = StabilityGuard(model, opt, scheduler=sched, on_nonfinite=on_nonfinite, **kwargs)
    return model, opt, sched, guard


def train(guard, model, steps):
    for i in range(steps):
        assert guard.step(loss_of(model, seed=10 + i)).applied


# --------------------------------------------------------------------- fused reductions


def grads_with(values: list[torch.Tensor]) -> list[torch.Tensor]:
    params = [torch.zeros_like(v, requires_grad=True) for v in values]
    for p, v in zip(params, values):
        p.grad = v.clone()
    return params


def test_grad_norm_matches_torch_and_finite_check():
    g = torch.Generator().manual_seed(0)
    params = grads_with([torch.randn(3, 4, generator=g), torch.randn(7, generator=g) * 5])
    for p in (2.0, 1.0, math.inf):
        expected = torch.nn.utils.get_total_norm([q.grad for q in params], norm_type=p)
        torch.testing.assert_close(grad_norm(params, p), expected)
    assert grads_are_finite(params)
    params[1].grad[3] = math.nan
    assert not grads_are_finite(params)
    assert not math.isfinite(float(grad_norm(params)))
    params[1].grad[3] = -math.inf
    assert not grads_are_finite(params)
    assert grads_are_finite([torch.zeros(2, requires_grad=True)])  # no grad at all


@pytest.mark.parametrize("mode", ["norm", "norm_local", "value"])
def test_clip_modes_agree_with_torch(mode):
    g = torch.Generator().manual_seed(0)
    values = [torch.randn(5, 3, generator=g) * 3, torch.randn(11, generator=g), torch.randn(2)]
    ours, ref = grads_with(values), grads_with(values)
    before = torch.nn.utils.get_total_norm([v for v in values])
    returned = clip_gradients(ours, mode, 0.7)
    torch.testing.assert_close(returned, before)
    if mode == "norm":
        torch.nn.utils.clip_grad_norm_(ref, 0.7)
    elif mode == "norm_local":
        for p in ref:
            torch.nn.utils.clip_grad_norm_([p], 0.7)
    else:
        torch.nn.utils.clip_grad_value_(ref, 0.7)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a.grad, b.grad)
    assert any(not torch.equal(a.grad, v) for a, v in zip(ours, values))  # it did clip


@pytest.mark.parametrize("mode", ["norm", "norm_local", "value"])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_nonfinite_gradient_is_never_spread(mode, bad):
    values = [torch.ones(4) * 3, torch.ones(3) * 5]
    values[1][0] = bad
    params = grads_with(values)
    norm = clip_gradients(params, mode, 1.0)
    assert not math.isfinite(float(norm))
    assert torch.equal(params[0].grad, values[0])  # untouched, not NaN, not zero
    assert torch.equal(params[1].grad[1:], values[1][1:])
    # torch's own clipping spreads it: that is the failure we avoid
    ref = grads_with(values)
    torch.nn.utils.clip_grad_norm_(ref, 1.0)
    assert not torch.equal(ref[0].grad, values[0])


@pytest.mark.parametrize("max_value", [0.0, -1.0])
def test_clip_rejects_bad_arguments(max_value):
    params = grads_with([torch.ones(2)])
    with pytest.raises(ValueError, match="max_value"):
        clip_gradients(params, "norm", max_value)
    with pytest.raises(ValueError, match="'norm', 'norm_local', 'value'"):
        clip_gradients(params, "global", 1.0)


def test_check_gradients_and_weights_name_offenders():
    model = small_model()
    loss_of(model).backward()
    model[3].weight.grad[0, 0] = math.inf
    model[1].bias.grad[1] = math.nan
    report = check_gradients(model)
    assert report["inf_grads"] == 1 and report["nan_grads"] == 1
    assert report["inf_grad_names"] == ["3.weight"]
    assert report["nan_grad_names"] == ["1.bias"]
    assert report["max_grad"] > 0
    with torch.no_grad():
        model[0].weight[0, 0, 0, 0] = math.nan
    w = check_weights(model)
    assert w["nan_weights"] == 1 and w["nan_weight_names"] == ["0.weight"] and w["inf_weights"] == 0
    assert w["max_weight"] > 0


# --------------------------------------------------------------------- NanDetector


class Broken(nn.Module):
    """Finite forward; its backward sends NaN to its input (d/dx sqrt(x) at x = 0 is inf)."""

    def forward(self, x):
        return torch.sqrt(torch.relu(x) * 0.0) + x


class LogOfNegative(nn.Module):
    def forward(self, x):
        return torch.log(x - 10.0)


def detector_model(broken: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Sequential(nn.Conv2d(3, 3, 1), broken, nn.ReLU(inplace=True)),
        nn.Conv2d(3, 1, 1),
    )


def test_nan_detector_names_forward_module():
    model = detector_model(LogOfNegative())
    with NanDetector(model) as det:
        model(torch.randn(2, 1, 8, 8))
    report = det.report
    assert report is not None
    assert (report.module, report.module_type, report.phase) == ("2.1", "LogOfNegative", "forward")
    assert report.input_stats[0]["shape"] == (2, 3, 8, 8)
    assert report.input_stats[0]["nan"] == 0


def test_nan_detector_names_backward_module_with_inplace_relu():
    model = detector_model(Broken())
    with NanDetector(model) as det:
        out = model(torch.randn(2, 1, 8, 8))
        assert det.report is None  # the forward pass is finite
        out.sum().backward()
    assert det.report is not None
    assert (det.report.module, det.report.phase) == ("2.1", "backward")
    assert "2.1" in str(det.report)
    # hooks are removed on exit
    det.reset()
    model(torch.randn(2, 1, 8, 8)).sum().backward()
    assert det.report is None


def test_nan_detector_raises_on_request():
    model = detector_model(LogOfNegative())
    with NanDetector(model, raise_on_nonfinite=True), pytest.raises(NonFiniteError, match=r"2\.1"):
        model(torch.randn(2, 1, 8, 8))


def test_nan_detector_clean_run_reports_nothing():
    model = detector_model(nn.Identity())
    with NanDetector(model) as det:
        model(torch.randn(2, 1, 8, 8)).sum().backward()
    assert det.report is None


# --------------------------------------------------------------------- StabilityGuard


def test_guard_applies_like_plain_update():
    model, _opt, sched, guard = make(clip_mode="norm", max_norm=0.5)
    ref_model = small_model()
    ref_opt = torch.optim.Adam(ref_model.parameters(), lr=1e-2)
    ref_sched = torch.optim.lr_scheduler.StepLR(ref_opt, step_size=1, gamma=0.9)
    for i in range(3):
        result = guard.step(loss_of(model, 10 + i))
        assert isinstance(result, StepResult) and result.applied and result.reason is None
        loss = loss_of(ref_model, 10 + i)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(ref_model.parameters(), 0.5)
        ref_opt.step()
        ref_sched.step()
        ref_opt.zero_grad()
        assert result.grad_norm == pytest.approx(float(norm), rel=1e-5)
    for a, b in zip(model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(a, b)
    assert sched.last_epoch == 3 and guard.applied == 3 and len(guard.grad_norms) == 3


def poison(kind: str, model: nn.Module) -> torch.Tensor:
    """A loss whose loss, one gradient, or one weight is non-finite."""
    if kind == "loss":
        return loss_of(model) * math.nan
    if kind == "loss_inf":
        return loss_of(model) * math.inf
    if kind == "grad":
        weight = model[3].weight  # sqrt at 0: the value is 0, the gradient +inf
        return loss_of(model) + torch.sqrt(weight - weight.detach()).sum()
    with torch.no_grad():
        model[0].weight[0, 0, 0, 0] = math.inf
    return loss_of(model)


@pytest.mark.parametrize("kind", ["loss", "loss_inf", "grad", "weight"])
def test_skip_leaves_everything_bit_identical(kind):
    model, opt, sched, guard = make("skip")
    train(guard, model, 2)
    if kind == "weight":  # the poisoned weight itself is part of what we compare
        with torch.no_grad():
            model[0].weight[0, 0, 0, 0] = math.inf
    before = snapshot(model, opt, sched)
    result = guard.step(poison(kind, model) if kind != "weight" else loss_of(model))
    assert not result.applied and result.reason.startswith("non-finite")
    assert_same(snapshot(model, opt, sched), before)  # params, buffers, optimizer, scheduler
    assert all(p.grad is None for p in model.parameters())
    assert guard.skipped == 1 and guard.applied == 2 and sched.last_epoch == 2
    if kind == "weight":
        assert "rollback" in guard.last_diagnosis["advice"]
        assert guard.last_diagnosis["nonfinite_weights"] == ["0.weight"]


@pytest.mark.parametrize("kind", ["loss", "grad", "weight"])
def test_rollback_restores_snapshot_and_lowers_lr(kind):
    model, opt, sched, guard = make("rollback", snapshot_every=2, lr_backoff=0.5)
    train(guard, model, 3)  # snapshot after step 2
    lr_at_snapshot = opt.param_groups[0]["lr"] / 0.9  # step 3 decayed it once more
    model_ref = StabilityGuard(model, opt)  # noqa: F841 (another guard does not disturb)
    good = copy.deepcopy(guard._snapshot["model"])
    result = guard.step(poison(kind, model))
    assert not result.applied and guard.rollbacks == 1
    assert_same({k: v.cpu() for k, v in model.state_dict().items()}, good)
    assert sched.last_epoch == 2
    assert opt.param_groups[0]["lr"] == pytest.approx(lr_at_snapshot * 0.5)
    assert guard.lr_scale == 0.5
    # later scheduler steps keep the backoff: lr = 0.5 * (scheduler's own lr)
    train(guard, model, 2)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5 * 1e-2 * 0.9**4)
    # a second rollback compounds it; the snapshot was not aliased by later updates
    snap = copy.deepcopy(guard._snapshot)
    guard.step(poison("loss", model))
    assert guard.lr_scale == 0.25
    assert_same(guard._snapshot["model"], snap["model"])
    assert guard.state_dict()["lr_scale"] == 0.25


def test_rollback_snapshot_is_not_aliased_by_optimizer_updates():
    model, _opt, _sched, guard = make("rollback", snapshot_every=1000)
    train(guard, model, 1)
    guard.step(poison("loss", model))  # restores the construction snapshot
    saved = copy.deepcopy(guard._snapshot["optimizer"])
    train(guard, model, 3)  # Adam updates its state in place
    assert_same(guard._snapshot["optimizer"], saved)


class StandInAdaptive:
    """Minimal stand-in for the schedulers issue's adaptive scheduler."""

    metric_driven = True

    def __init__(self, optimizer, factor=0.1):
        self.optimizer = optimizer
        self.factor = factor
        self.multiplier = 1.0
        self.needs_rollback = False
        self.base = [g["lr"] for g in optimizer.param_groups]

    def step(self, metric=None):
        if metric is not None and not math.isfinite(metric):
            self.multiplier *= self.factor
            self.needs_rollback = True
            for g, b in zip(self.optimizer.param_groups, self.base):
                g["lr"] = b * self.multiplier

    def state_dict(self):
        return {"multiplier": self.multiplier, "needs_rollback": self.needs_rollback}

    def load_state_dict(self, state):
        self.multiplier = state["multiplier"]
        self.needs_rollback = state["needs_rollback"]


def test_rollback_with_adaptive_scheduler_cuts_once():
    model = small_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = StandInAdaptive(opt)
    guard = StabilityGuard(model, opt, scheduler=sched, on_nonfinite="rollback")
    train(guard, model, 2)
    guard.step(poison("loss", model))
    assert guard.rollbacks == 1 and guard.lr_scale == 1.0  # no lr_backoff
    assert sched.needs_rollback is False and sched.multiplier == pytest.approx(0.1)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01)  # one cut, the scheduler's


def test_restore_snapshot_keeps_a_scheduler_cut():
    model = small_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = StandInAdaptive(opt)
    guard = StabilityGuard(model, opt, scheduler=sched, snapshot_every=2)
    train(guard, model, 2)  # snapshot after step 2
    good = copy.deepcopy(model.state_dict())
    train(guard, model, 1)
    sched.step(math.nan)  # what fit does after a NaN validation loss
    guard.restore_snapshot(keep_lr=True)
    assert_same({k: v.cpu() for k, v in model.state_dict().items()}, good)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01)  # the scheduler's cut stays
    assert sched.multiplier == pytest.approx(0.1) and not sched.needs_rollback
    assert guard.rollbacks == 1 and guard.lr_scale == 1.0


def test_raise_policy_and_consecutive_skips():
    model, _, _, guard = make("raise")
    train(guard, model, 1)
    with pytest.raises(NonFiniteError, match="non-finite loss") as info:
        guard.step(poison("loss", model))
    assert info.value.report["applied"] == 1
    model, _opt, _sched, guard = make("skip", max_consecutive_skips=3)
    train(guard, model, 1)
    guard.step(poison("loss", model))
    guard.step(poison("loss", model))
    with pytest.raises(NonFiniteError, match="3 non-finite steps in a row") as info:
        guard.step(poison("loss", model))
    assert math.isfinite(info.value.report["last_finite_loss"])


def test_accumulation_and_scheduler_only_on_real_steps():
    model, _opt, sched, guard = make("skip", accumulation_steps=2)
    assert guard.step(loss_of(model, 1)).reason == "accumulating"
    assert guard.step(loss_of(model, 2)).applied
    assert sched.last_epoch == 1
    assert guard.step(loss_of(model, 3)).reason == "accumulating"
    assert not guard.step(poison("loss", model)).applied  # NaN in one micro-batch spoils the window
    assert sched.last_epoch == 1 and guard.skipped == 1


class FakeFloat16:
    """A float16-style amp double on the CPU: torch's GradScaler without autocast."""

    dtype = torch.float16

    def __init__(self, init_scale=2.0**8):
        self.scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)

    def autocast(self):
        return torch.autocast("cpu", enabled=False)

    def backward(self, loss):
        self.scaler.scale(loss).backward()

    def unscale_(self, optimizer):
        self.scaler.unscale_(optimizer)

    def step(self, optimizer) -> bool:
        before = self.scaler.get_scale()
        self.scaler.step(optimizer)
        self.scaler.update()
        return self.scaler.get_scale() >= before

    @property
    def scale(self) -> float:
        return float(self.scaler.get_scale())


def test_float16_overflow_is_a_scaler_skip_not_a_rollback():
    model = small_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    amp = FakeFloat16()
    guard = StabilityGuard(model, opt, amp=amp, on_nonfinite="raise", max_norm=1.0)
    result = guard.step(loss_of(model))
    assert result.applied and guard.applied == 1
    before = snapshot(model, opt)
    result = guard.step(poison("grad", model))  # finite loss, overflowing gradient
    assert not result.applied and "overflow" in result.reason
    assert guard.scaler_skips == 1 and guard.rollbacks == 0 and guard.skipped == 0
    assert amp.scale == 2.0**7
    for name, value in model.named_parameters():
        assert torch.equal(value, before[0][name]), name  # BatchNorm statistics saw a finite batch
    assert guard.step(loss_of(model)).applied  # the scaler state was left consistent
    with pytest.raises(NonFiniteError, match="non-finite loss"):
        guard.step(poison("loss", model))  # a NaN loss is not the scaler's business


def test_float16_loss_scale_collapse_raises():
    model = small_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    guard = StabilityGuard(model, opt, amp=FakeFloat16(init_scale=4.0), min_loss_scale=1.0)
    guard.step(poison("grad", model))
    guard.step(poison("grad", model))
    with pytest.raises(NonFiniteError, match="loss scale"):
        guard.step(poison("grad", model))


def test_float16_nonfinite_loss_skip_keeps_scaler_usable():
    model = small_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    amp = FakeFloat16()
    guard = StabilityGuard(model, opt, amp=amp, on_nonfinite="skip")
    assert not guard.step(poison("loss", model)).applied
    assert guard.skipped == 1 and amp.scale == 2.0**8
    assert guard.step(loss_of(model)).applied


def test_guard_state_dict_round_trip():
    model, _opt, _sched, guard = make("rollback")
    train(guard, model, 2)
    guard.step(poison("loss", model))
    state = guard.state_dict()
    _model2, _opt2, _sched2, guard2 = make("rollback")
    guard2.load_state_dict(state)
    assert_same(guard2.state_dict(), state)  # the rollback snapshot included
    assert guard2.lr_scale == 0.5 and guard2.rollbacks == 1 and guard2.applied == 2


def test_a_resumed_guard_rolls_back_to_the_same_snapshot():
    # resume must stay bit-exact under "rollback": the snapshot travels with the state
    model, opt, sched, guard = make("rollback", snapshot_every=2)
    train(guard, model, 5)  # the last snapshot is from before step 5
    state = {
        "model": copy.deepcopy(model.state_dict()),
        "optimizer": copy.deepcopy(opt.state_dict()),
        "scheduler": copy.deepcopy(sched.state_dict()),
        "guard": copy.deepcopy(guard.state_dict()),
    }
    guard.step(poison("loss", model))
    expected = copy.deepcopy(model.state_dict())
    model2, opt2, sched2, guard2 = make("rollback", snapshot_every=2)
    model2.load_state_dict(state["model"])
    opt2.load_state_dict(state["optimizer"])
    sched2.load_state_dict(state["scheduler"])
    guard2.load_state_dict(state["guard"])
    guard2.step(poison("loss", model2))
    assert_same(model2.state_dict(), expected)
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"on_nonfinite": "ignore"}, "'skip', 'rollback', 'raise'"),
        ({"max_norm": -1.0}, "max_norm"),
        ({"max_norm": 0.0}, "max_norm"),
        ({"clip_mode": "global", "max_norm": 1.0}, "'norm', 'norm_local', 'value'"),
        ({"clip_mode": "norm"}, "max_norm"),
        ({"lr_backoff": 0.0}, "lr_backoff"),
        ({"snapshot_every": 0}, "snapshot_every"),
        ({"max_consecutive_skips": 0}, "max_consecutive_skips"),
        ({"accumulation_steps": 0}, "accumulation_steps"),
    ],
)
def test_guard_rejects_bad_arguments(kwargs, match):
    model = small_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=match):
        StabilityGuard(model, opt, **kwargs)


def test_fit_trains_through_a_guard():
    data = [batch(i) for i in range(4)]
    model = small_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    guard = StabilityGuard(model, opt, max_norm=1.0)
    history = fit(model, data, epochs=2, optimizer=opt, guard=guard, progress=False)
    assert history.num_steps == 8 and guard.applied == 8
    assert history.steps["grad_norm"] == pytest.approx(guard.grad_norms)


# --------------------------------------------------------------------- EarlyStopping


def test_early_stopping_on_plateau_with_min_delta():
    stopper = EarlyStopping(patience=2, min_delta=0.1, mode="min")
    decisions = [stopper.step(v) for v in (1.0, 0.85, 0.8, 0.79)]
    assert decisions == [False, False, False, True]  # 0.8 and 0.79 beat 0.85 by < 0.1
    assert "no improvement" in stopper.stopping_reason and stopper.best == 0.85
    up = EarlyStopping(patience=1, mode="max")
    assert [up.step(v) for v in (0.1, 0.2, 0.2)] == [False, False, True]


def test_early_stopping_on_nan_and_state():
    stopper = EarlyStopping(patience=5, mode="min")
    assert not stopper.step(1.0)
    assert stopper.step(float("nan"))
    assert "non-finite" in stopper.stopping_reason
    lenient = EarlyStopping(patience=2, mode="min", check_finite=False)
    assert [lenient.step(v) for v in (1.0, math.nan, math.nan)] == [False, False, True]
    copy_ = EarlyStopping(patience=5, mode="min")
    copy_.load_state_dict(stopper.state_dict())
    assert copy_.state_dict() == stopper.state_dict()
    with pytest.raises(ValueError, match="'min', 'max'"):
        EarlyStopping(patience=1, mode="best")


def test_fit_stops_early():
    data = [batch(i) for i in range(2)]
    model = small_model()
    stopper = EarlyStopping(patience=1, min_delta=1e9)  # nothing counts as an improvement
    history = fit(model, data, epochs=5, early_stopping=stopper, progress=False)
    assert len(history.epochs["epoch"]) == 2 and "no improvement" in history.stop_reason


def test_guard_advances_the_warmup_of_a_metric_driven_scheduler():
    """plateau/adaptive take step() per real update (warmup) and step(metric) per epoch."""
    from stabletrain.schedulers import build_scheduler

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = build_scheduler(opt, type="plateau", warmup_steps=4, warmup_start_factor=0.5)
    guard = StabilityGuard(model, opt, scheduler=sched)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        guard.step(model(torch.randn(8, 3)).pow(2).mean())
    assert lrs == pytest.approx([0.05, 0.0625, 0.075, 0.0875, 0.1, 0.1])
