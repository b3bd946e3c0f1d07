"""Tests for stabletrain.schedulers: formulas, torch equivalence, state, bad input, fit."""

from __future__ import annotations

import copy
import math
import random
import warnings
from contextlib import nullcontext

import pytest
import torch
from torch.optim import lr_scheduler as tls

from stabletrain.loop import fit
from stabletrain.schedulers import (
    SCHEDULER_ALIASES,
    SCHEDULER_TYPES,
    AdaptiveScheduler,
    OneCycle,
    PlateauWithWarmup,
    WarmupWrapper,
    build_scheduler,
    epochs_to_steps,
    is_metric_driven,
    lr_curve,
    with_warmup,
)

BASES = (0.1, 0.03, 0.5)  # three parameter groups with different base LRs


def make_optimizer(kind: str = "sgd", bases=BASES) -> torch.optim.Optimizer:
    params = [torch.nn.Parameter(torch.zeros(2)) for _ in bases]
    groups = [{"params": [p], "lr": b} for p, b in zip(params, bases)]
    if kind == "adam":
        return torch.optim.Adam(groups)
    return torch.optim.SGD(groups, momentum=0.9)


def run(optimizer, scheduler, steps: int, metrics=None) -> list[list[float]]:
    """LRs of every group for steps 0..steps-1 (stepping like a training loop)."""
    out = []
    for k in range(steps):
        out.append([float(g["lr"]) for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
        if metrics is not None and k in metrics and scheduler.metric_driven:
            scheduler.step(metrics[k])
    return out


# --------------------------------------------------------------------------- reference formulas
# Written from the text, independently of the library's code.


def warmup(s, b, W, start_lr=None, factor=0.01):
    a = start_lr if start_lr is not None else factor * b
    return a + (b - a) * s / W


def reference(kind: str, s: int, b: float, p: dict) -> float:
    W = p.get("warmup_steps", 0)
    T = p.get("total_steps")
    eta = p["min_lr"] if "min_lr" in p else p.get("min_lr_ratio", 0.0) * b
    if s < W:
        return warmup(s, b, W, p.get("warmup_start_lr"), p.get("warmup_start_factor", 0.01))
    t = s - W
    if kind == "constant":
        return b
    if kind == "warmup_cosine":
        D = T - W
        return eta + (b - eta) * 0.5 * (1 + math.cos(math.pi * min(t, D) / D))
    if kind == "polynomial":
        D = T - W
        return eta + (b - eta) * (1 - min(t, D) / D) ** p.get("power", 1.0)
    if kind == "exponential":
        e = t / p.get("decay_steps", 1)
        if p.get("staircase", False):
            e = math.floor(e)
        return max(eta, b * p["gamma"] ** e)
    if kind == "step":
        return max(eta, b * p.get("gamma", 0.1) ** (t // p["step_size"]))
    if kind == "cosine_restarts":
        F, r, m = p["first_cycle_steps"], p.get("t_mult", 1.0), p.get("m_mul", 1.0)
        k, start = 0, 0.0
        while start + F * r**k <= t:  # walk the cycles one by one
            start += F * r**k
            k += 1
        length = F * r**k
        peak = max(eta, b * m**k)
        return eta + (peak - eta) * 0.5 * (1 + math.cos(math.pi * (t - start) / length))
    raise AssertionError(kind)


CASES = [
    ("constant", {"warmup_steps": 4}),
    ("constant", {"warmup_steps": 3, "warmup_start_lr": 0.001, "total_steps": 10}),
    ("warmup_cosine", {"warmup_steps": 5, "total_steps": 20}),
    ("warmup_cosine", {"warmup_steps": 5, "total_steps": 20, "min_lr": 0.01}),
    ("warmup_cosine", {"total_steps": 13, "min_lr_ratio": 0.1}),
    ("warmup_cosine", {"warmup_steps": 2, "total_steps": 9, "warmup_start_factor": 0.2}),
    ("polynomial", {"warmup_steps": 3, "total_steps": 15, "power": 2.0, "min_lr_ratio": 0.05}),
    ("polynomial", {"total_steps": 10}),
    ("exponential", {"warmup_steps": 2, "gamma": 0.8, "decay_steps": 3, "total_steps": 20}),
    ("exponential", {"gamma": 0.7, "decay_steps": 2.5, "staircase": True, "min_lr": 0.02}),
    ("step", {"warmup_steps": 4, "step_size": 3, "gamma": 0.5, "total_steps": 20}),
    ("step", {"step_size": 2, "min_lr_ratio": 0.2}),
    ("cosine_restarts", {"warmup_steps": 3, "first_cycle_steps": 4, "total_steps": 30}),
    ("cosine_restarts", {"first_cycle_steps": 3, "t_mult": 1.5, "m_mul": 0.7, "min_lr": 0.005}),
    ("cosine_restarts", {"warmup_steps": 2, "first_cycle_steps": 2.5, "t_mult": 2.0}),
]


@pytest.mark.parametrize("kind,params", CASES, ids=[f"{k}-{i}" for i, (k, _) in enumerate(CASES)])
def test_schedule_matches_formula_per_group(kind, params):
    W = params.get("warmup_steps", 0)
    T = params.get("total_steps", 24)
    opt = make_optimizer()
    sched = build_scheduler(opt, {"type": kind, **params})
    steps = T + 8  # past T
    lrs = run(opt, sched, steps)
    checked = {0, max(W - 1, 0), W, T - 1, T, T + 1, steps - 1} | set(range(steps))
    for s in sorted(checked):
        for i, b in enumerate(BASES):
            assert lrs[s][i] == pytest.approx(reference(kind, s, b, params), rel=1e-12, abs=1e-15)
    if W:
        assert lrs[0][0] < lrs[W][0]  # really warms up


@pytest.mark.parametrize("alias,canonical", sorted(SCHEDULER_ALIASES.items()))
def test_aliases_build_the_same_schedule(alias, canonical):
    params = {"total_steps": 12, "first_cycle_steps": 4, "gamma": 0.9}
    if canonical != "cosine_restarts":
        params.pop("first_cycle_steps")
    if canonical != "exponential":
        params.pop("gamma")
    assert lr_curve({"type": alias, **params}, 12) == lr_curve({"type": canonical, **params}, 12)


def test_parameter_aliases():
    a = lr_curve({"type": "cosine_decay_restarts", "first_cycle_steps": 3, "t_mul": 2.0}, 20)
    b = lr_curve({"type": "cosine_restarts", "first_cycle_steps": 3, "t_mult": 2.0}, 20)
    assert a == b
    a = lr_curve({"type": "exponential_decay", "decay_rate": 0.9, "alpha": 0.5}, 20)
    b = lr_curve({"type": "exponential", "gamma": 0.9, "min_lr_ratio": 0.5}, 20)
    assert a == b and min(a) == pytest.approx(0.5)


def test_keywords_equal_mapping_and_keywords_override():
    o1, o2, o3 = make_optimizer(), make_optimizer(), make_optimizer()
    s1 = build_scheduler(o1, {"type": "warmup_cosine", "total_steps": 10, "warmup_steps": 2})
    s2 = build_scheduler(o2, type="warmup_cosine", total_steps=10, warmup_steps=2)
    config = {"type": "warmup_cosine", "total_steps": 10, "warmup_steps": 5}
    s3 = build_scheduler(o3, config, warmup_steps=2)
    assert run(o1, s1, 12) == run(o2, s2, 12) == run(o3, s3, 12)
    assert config["warmup_steps"] == 5  # the mapping is not modified


def test_every_type_is_a_torch_scheduler_and_lr_curve_covers_all():
    extra = {
        "cosine_restarts": {"first_cycle_steps": 4},
        "exponential": {"gamma": 0.9},
        "step": {"step_size": 3},
    }
    for kind in SCHEDULER_TYPES:
        sched = build_scheduler(
            make_optimizer(), {"type": kind, "total_steps": 20, **extra.get(kind, {})}
        )
        assert isinstance(sched, tls.LRScheduler)
        assert sched.metric_driven is (kind in ("plateau", "adaptive"))
        assert is_metric_driven(sched) is sched.metric_driven
        curve = lr_curve({"type": kind, **extra.get(kind, {})}, 20, base_lr=0.5)
        assert len(curve) == 20 and all(0 <= x <= 0.5 + 1e-12 for x in curve)


def test_epochs_to_steps():
    assert epochs_to_steps(3, 8) == 24
    assert epochs_to_steps(0.5, 7) == 4
    assert epochs_to_steps(0, 5) == 0
    with pytest.raises(ValueError, match="steps_per_epoch"):
        epochs_to_steps(1, 0)
    with pytest.raises(ValueError, match="epochs"):
        epochs_to_steps(-1, 4)


# --------------------------------------------------------------------------- state_dict

STATE_CASES = [
    {"type": "constant", "warmup_steps": 5},
    {"type": "warmup_cosine", "warmup_steps": 5, "total_steps": 30},
    {
        "type": "cosine_restarts",
        "warmup_steps": 2,
        "first_cycle_steps": 3,
        "t_mult": 2.0,
        "m_mul": 0.8,
    },
    {"type": "onecycle", "total_steps": 30},
    {"type": "polynomial", "total_steps": 30, "power": 2.0},
    {"type": "exponential", "gamma": 0.9, "warmup_steps": 3},
    {"type": "step", "step_size": 4, "warmup_steps": 3},
    {"type": "plateau", "warmup_steps": 3, "patience": 1, "factor": 0.5},
    {
        "type": "adaptive",
        "base": "warmup_cosine",
        "total_steps": 30,
        "warmup_steps": 3,
        "patience": 2,
    },
]


@pytest.mark.parametrize("config", STATE_CASES, ids=[c["type"] for c in STATE_CASES])
def test_state_dict_round_trip_mid_run(config):
    rng = random.Random(0)
    metrics = {k: rng.random() + (5.0 if k == 14 else 0.0) for k in range(0, 30, 2)}
    opt = make_optimizer("adam")
    sched = build_scheduler(opt, config)
    run(opt, sched, 11, metrics)
    snapshot = sched.state_dict()
    opt_snapshot = copy.deepcopy(opt.state_dict())
    expected = run(opt, sched, 15, {k - 11: v for k, v in metrics.items() if k >= 11})

    # snapshots are copies: the run above must not have changed them
    fresh_opt = make_optimizer("adam")
    fresh = build_scheduler(fresh_opt, config)
    fresh_opt.load_state_dict(opt_snapshot)
    fresh.load_state_dict(snapshot)
    again = run(fresh_opt, fresh, 15, {k - 11: v for k, v in metrics.items() if k >= 11})
    assert again == expected
    # and the same snapshot restores the original object too
    sched.load_state_dict(snapshot)
    assert sched.last_epoch == 11


def test_state_dict_is_not_a_live_reference():
    opt = make_optimizer()
    sched = build_scheduler(opt, type="plateau", patience=0, factor=0.5)
    state = sched.state_dict()
    sched.step(1.0)
    sched.step(2.0)  # a cut
    assert state["current_lrs"] == list(BASES)
    assert sched.state_dict()["current_lrs"] != list(BASES)
    sched.load_state_dict(state)
    sched.step(3.0)  # loading copied: the snapshot is still untouched after more cuts
    assert state["current_lrs"] == list(BASES)


# --------------------------------------------------------------------------- onecycle


@pytest.mark.parametrize("kind", ["sgd", "adam"])
@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"anneal_strategy": "linear"},
        {"three_phase": True, "pct_start": 0.25},
        {"pct_start": 0.4, "div_factor": 10.0, "final_div_factor": 100.0, "base_momentum": 0.8},
        {"cycle_momentum": False},
    ],
)
def test_onecycle_equals_torch(kind, kwargs):
    T = 37
    ours_opt, torch_opt = make_optimizer(kind), make_optimizer(kind)
    ours = build_scheduler(ours_opt, type="onecycle", total_steps=T, **kwargs)
    ref = tls.OneCycleLR(
        torch_opt, max_lr=[g["lr"] for g in torch_opt.param_groups], total_steps=T, **kwargs
    )
    key = "betas" if kind == "adam" else "momentum"
    for s in range(T):
        assert [g["lr"] for g in ours_opt.param_groups] == [g["lr"] for g in torch_opt.param_groups]
        assert [g[key] for g in ours_opt.param_groups] == [g[key] for g in torch_opt.param_groups]
        ours_opt.step()
        torch_opt.step()
        ours.step()
        if s < T - 1:
            ref.step()
    assert isinstance(ours, OneCycle)


def test_onecycle_holds_final_lr_past_total_steps_and_warns_once():
    T = 20
    opt = make_optimizer()
    sched = build_scheduler(opt, type="onecycle", total_steps=T, anneal_strategy="linear")
    final = [b / (25.0 * 1e4) for b in BASES]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lrs = run(opt, sched, T + 10)
    past = [w for w in caught if "past total_steps" in str(w.message)]
    assert len(past) == 1
    for s in range(T - 1, T + 10):
        assert lrs[s] == pytest.approx(final, rel=1e-9)
    assert all(x > 0 for row in lrs for x in row)
    assert [g["momentum"] for g in opt.param_groups] == [0.95] * 3
    # torch, for comparison, raises once stepped beyond T
    torch_opt = make_optimizer()
    ref = tls.OneCycleLR(torch_opt, max_lr=0.1, total_steps=T, anneal_strategy="linear")
    with pytest.raises(ValueError):
        for _ in range(T + 1):
            torch_opt.step()
            ref.step()


def test_onecycle_warmup_steps_sets_pct_start():
    a = lr_curve({"type": "onecycle", "warmup_steps": 8}, 40)
    b = lr_curve({"type": "onecycle", "pct_start": 0.2}, 40)
    assert a == b
    assert max(range(40), key=a.__getitem__) == 7  # peak at the last warmup step (end_step = 8 - 1)


# --------------------------------------------------------------------------- plateau


PLATEAU_CASES = [
    {"patience": 2, "factor": 0.5},
    {"patience": 0, "factor": 0.3, "cooldown": 2, "min_lr": 0.01},
    {"mode": "max", "patience": 1, "threshold_mode": "abs", "threshold": 0.05},
    {"patience": 1, "threshold": 0.1, "eps": 1e-3},
]


@pytest.mark.parametrize("params", PLATEAU_CASES)
def test_plateau_equals_reduce_lr_on_plateau(params):
    rng = random.Random(1)
    metrics = [1.0 / (1 + k) + 0.3 * rng.random() for k in range(40)] + [math.nan, 0.05]
    ours_opt, torch_opt = make_optimizer(), make_optimizer()
    ours = build_scheduler(ours_opt, type="plateau", **params)
    ref = tls.ReduceLROnPlateau(torch_opt, **params)
    for m in metrics:
        for _ in range(3):  # steps between validations do not change the LR
            ours_opt.step()
            ours.step()
        ours.step(m)
        ref.step(m)
        assert [g["lr"] for g in ours_opt.param_groups] == [g["lr"] for g in torch_opt.param_groups]
    assert ours_opt.param_groups[0]["lr"] < BASES[0]  # the rule really fired


def test_plateau_warmup_then_rule():
    opt = make_optimizer()
    sched = build_scheduler(opt, type="plateau", warmup_steps=4, patience=0, factor=0.5)
    assert isinstance(sched, PlateauWithWarmup) and sched.metric_driven
    sched.step(5.0)  # during warmup: ignored
    sched.step(9.0)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01 * BASES[0])
    lrs = run(opt, sched, 4)
    assert lrs[1][0] == pytest.approx(warmup(1, BASES[0], 4))
    assert opt.param_groups[0]["lr"] == BASES[0]  # s = W
    sched.step(1.0)
    sched.step(2.0)  # worse, patience 0: cut
    assert opt.param_groups[0]["lr"] == pytest.approx(BASES[0] * 0.5)
    run(opt, sched, 3)
    assert opt.param_groups[0]["lr"] == pytest.approx(BASES[0] * 0.5)  # step() leaves it


# --------------------------------------------------------------------------- adaptive


def test_adaptive_cuts_on_nonfinite_spike_and_patience():
    opt = make_optimizer()
    sched = build_scheduler(opt, type="adaptive", patience=3, window=3, spike_threshold=1.0)
    assert isinstance(sched, AdaptiveScheduler) and sched.metric_driven
    assert sched.needs_rollback is False
    sched.step(10.0)  # first metric: never a spike
    assert sched.multiplier == 1.0
    sched.step(9.0)
    sched.step(25.0)  # > 2 x mean(10, 9): spike, cut, no rollback
    assert sched.multiplier == 0.5 and not sched.needs_rollback
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([b * 0.5 for b in BASES])
    sched.step(float("nan"))  # non-finite: cut and ask for a rollback, LR changes at once
    assert sched.multiplier == 0.25 and sched.needs_rollback
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([b * 0.25 for b in BASES])
    assert sched.recent == [10.0, 9.0, 25.0]  # non-finite metrics stay out of the mean
    sched.needs_rollback = False
    sched.step(9.5)  # one cut at most; patience counter was reset by the last cut
    sched.step(9.5)
    assert sched.multiplier == 0.25
    sched.step(9.5)  # third metric without a new best (best is 9.0): patience cut
    assert sched.multiplier == 0.125 and not sched.needs_rollback
    sched.step(math.inf)  # spike and non-finite on one metric: still one cut
    assert sched.multiplier == 0.0625


def test_adaptive_follows_base_schedule_and_floor():
    params = {"base": "warmup_cosine", "total_steps": 20, "warmup_steps": 4, "min_lr_ratio": 0.1}
    opt = make_optimizer()
    sched = build_scheduler(opt, type="adaptive", factor=0.1, **params)
    base_opt = make_optimizer()
    base = build_scheduler(
        base_opt, type="warmup_cosine", total_steps=20, warmup_steps=4, min_lr_ratio=0.1
    )
    base_lrs = run(base_opt, base, 20)
    lrs = run(opt, sched, 10, metrics={9: float("nan")})
    assert lrs == base_lrs[:10]  # multiplier 1: the base schedule exactly
    lrs += run(opt, sched, 10)
    for s in range(10, 20):  # min(base, max(eta, base * 0.1))
        for i, b in enumerate(BASES):
            expected = min(base_lrs[s][i], max(0.1 * b, base_lrs[s][i] * 0.1))
            assert lrs[s][i] == pytest.approx(expected)
    # the mapping form of ``base`` is the same
    same = lr_curve(
        {
            "type": "adaptive",
            "base": {"type": "warmup_cosine", "warmup_steps": 4, "min_lr_ratio": 0.1},
        },
        20,
        BASES[0],
    )
    assert same == pytest.approx([row[0] for row in base_lrs])


def test_adaptive_rollback_protocol():
    """What the stability guard does: restore a snapshot, report NaN, clear the flag."""
    opt = make_optimizer()
    sched = build_scheduler(opt, type="adaptive", base="constant", warmup_steps=2)
    run(opt, sched, 5, {1: 1.0, 3: 1.1})
    snapshot = sched.state_dict()
    run(opt, sched, 3, {0: 1.2})
    sched.load_state_dict(snapshot)
    sched.step(float("nan"))
    assert sched.needs_rollback and sched.multiplier == 0.5 and sched.last_epoch == 5
    sched.needs_rollback = False
    assert opt.param_groups[1]["lr"] == pytest.approx(BASES[1] * 0.5)


# --------------------------------------------------------------------------- with_warmup


def _torch_makers():
    return {
        "cosine": lambda o: tls.CosineAnnealingLR(o, T_max=10, eta_min=0.001),
        "step": lambda o: tls.StepLR(o, step_size=3, gamma=0.5),
        "exponential": lambda o: tls.ExponentialLR(o, gamma=0.9),
        "warm_restarts": lambda o: tls.CosineAnnealingWarmRestarts(o, T_0=4, T_mult=2),
        "onecycle": lambda o: tls.OneCycleLR(o, max_lr=0.2, total_steps=30),
        "polynomial": lambda o: tls.PolynomialLR(o, total_iters=8, power=2.0),
    }


@pytest.mark.parametrize("name", sorted(_torch_makers()))
def test_with_warmup_then_exactly_the_wrapped_scheduler(name):
    make = _torch_makers()[name]
    W = 5
    opt = make_optimizer()
    wrapped = with_warmup(make(opt), W)
    assert isinstance(wrapped, WarmupWrapper) and isinstance(wrapped, tls.LRScheduler)
    ref_opt = make_optimizer()
    ref = make(ref_opt)
    start = [g["lr"] for g in ref_opt.param_groups]
    ours = run(opt, wrapped, W + 25)
    theirs = run(ref_opt, ref, 25)
    assert ours[W:] == theirs
    for s in range(W):
        assert ours[s] == pytest.approx([warmup(s, b, W) for b in start])


def test_with_warmup_around_reduce_lr_on_plateau():
    W = 4
    opt = make_optimizer()
    sched = with_warmup(tls.ReduceLROnPlateau(opt, patience=0, factor=0.5), W)
    assert sched.metric_driven
    sched.step(1.0)  # during warmup: not passed on
    lrs = run(opt, sched, W + 2)
    assert lrs[W] == list(BASES)
    sched.step(1.0)
    sched.step(2.0)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([b * 0.5 for b in BASES])
    run(opt, sched, 3)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([b * 0.5 for b in BASES])
    state = sched.state_dict()
    sched.step(3.0)
    sched.load_state_dict(state)
    assert sched.scheduler.num_bad_epochs == 0 and sched.last_epoch == W + 5


def test_with_warmup_non_metric_scheduler_rejects_metric():
    opt = make_optimizer()
    sched = with_warmup(tls.StepLR(opt, 2), 2)
    assert not sched.metric_driven
    with pytest.raises(ValueError, match="metric"):
        sched.step(1.0)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "config,match",
    [
        ({"type": "warmup_cosine", "total_steps": 5, "warmup_steps": 5}, "total_steps"),
        ({"type": "polynomial", "total_steps": 3, "warmup_steps": 7}, "total_steps"),
        ({"type": "onecycle", "total_steps": 10, "warmup_steps": 10}, "total_steps"),
        ({"type": "cosine_restarts", "first_cycle_steps": 4, "t_mult": 0.5}, "t_mult"),
        ({"type": "cosine_restarts", "first_cycle_steps": 4, "m_mul": 1.5}, "m_mul"),
        ({"type": "cosine_restarts", "first_cycle_steps": 0}, "first_cycle_steps"),
        ({"type": "cosine_restarts"}, "first_cycle_steps"),
        ({"type": "warmup_cosine"}, "total_steps"),
        ({"type": "step", "step_size": 0}, "step_size"),
        ({"type": "exponential"}, "gamma"),
        ({"type": "exponential", "gamma": -0.5}, "gamma"),
        ({"type": "constant", "min_lr": -1e-3}, "min_lr"),
        ({"type": "constant", "min_lr": 1.0}, "min_lr"),
        ({"type": "warmup_cosine", "total_steps": 9, "min_lr": 0.001, "alpha": 0.1}, "min_lr"),
        ({"type": "constant", "warmup_start_lr": -0.1, "warmup_steps": 3}, "warmup_start_lr"),
        ({"type": "constant", "warmup_steps": -1}, "warmup_steps"),
        ({"type": "constant", "warmup_steps": 2.5}, "warmup_steps"),
        ({"type": "plateau", "mode": "maximum"}, "mode"),
        ({"type": "plateau", "factor": 1.0}, "factor"),
        ({"type": "adaptive", "base": "plateau"}, "base"),
        ({"type": "adaptive", "factor": 0.0}, "factor"),
        ({"type": "onecycle", "total_steps": 10, "anneal_strategy": "exp"}, "anneal_strategy"),
        ({"type": "onecycle", "total_steps": 3}, "pct_start"),
        ({"type": "step", "step_size": 2, "bogus": 1}, "bogus"),
        ({"type": "warmup_cosine", "total_steps": 9, "learning_rate": 0.1}, "learning_rate"),
        ({"type": "exponential", "gamma": 0.9, "decay_rate": 0.9}, "decay_rate"),
        ({"type": "cosine_annealing"}, "valid types"),
        ({"warmup_steps": 3}, "type"),
    ],
)
def test_bad_configurations_raise_value_error(config, match):
    with pytest.raises(ValueError, match=match):
        build_scheduler(make_optimizer(), config)


def test_unknown_type_lists_valid_types():
    with pytest.raises(ValueError) as info:
        build_scheduler(make_optimizer(), type="linear_warmup")
    for name in SCHEDULER_TYPES:
        assert name in str(info.value)


def test_negative_base_lr_raises():
    with pytest.raises(ValueError, match="lr"):
        build_scheduler(make_optimizer(bases=(0.1, -0.1)), type="constant")


def test_sgd_without_momentum_key_is_fine_but_no_momentum_optimizer_raises():
    opt = torch.optim.Adagrad([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match="cycle_momentum"):
        build_scheduler(opt, type="onecycle", total_steps=10)
    build_scheduler(opt, type="onecycle", total_steps=10, cycle_momentum=False)


# --------------------------------------------------------------------------- with fit


class SkippingAmp:
    """Test double of the ``amp`` protocol whose scaler skips every other step (as float16 would)."""

    def __init__(self) -> None:
        self.calls = 0
        self.scale = 1.0

    def autocast(self):
        return nullcontext()

    def backward(self, loss):
        loss.backward()

    def unscale_(self, optimizer):
        pass

    def step(self, optimizer) -> bool:
        self.calls += 1
        if self.calls % 2 == 0:
            return False  # skipped: parameters untouched
        optimizer.step()
        return True


def _tiny_task():
    g = torch.Generator().manual_seed(0)
    batches = [
        (torch.randn(4, 1, 8, 8, generator=g), (torch.rand(4, 1, 8, 8, generator=g) > 0.5).float())
        for _ in range(6)
    ]
    model = torch.nn.Conv2d(1, 1, 3, padding=1)
    return model, batches


def test_skipped_amp_step_does_not_advance_schedule_in_fit():
    model, batches = _tiny_task()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = build_scheduler(opt, type="warmup_cosine", warmup_steps=3, total_steps=12)
    amp = SkippingAmp()
    history = fit(model, batches, epochs=2, optimizer=opt, scheduler=sched, amp=amp, progress=False)
    applied = history.steps["applied"]
    assert applied.count(False) == 6 and applied.count(True) == 6
    assert sched.last_epoch == 6  # only real steps count
    expected = lr_curve({"type": "warmup_cosine", "warmup_steps": 3}, 12, 0.1)
    used = history.steps["lr"]
    real = iter(expected)
    current = next(real)
    for lr, ok in zip(used, applied):  # a skipped step leaves the LR where it was
        assert lr == pytest.approx(current)
        if ok:
            current = next(real)


def test_fit_steps_metric_driven_warmup():
    model, batches = _tiny_task()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = build_scheduler(opt, type="plateau", warmup_steps=4, patience=0)
    history = fit(
        model,
        batches,
        epochs=2,
        optimizer=opt,
        scheduler=sched,
        val_loader=batches[:2],
        progress=False,
    )
    assert history.steps["lr"][:5] == pytest.approx(
        lr_curve({"type": "plateau", "warmup_steps": 4}, 5, 0.1)
    )


def test_metric_given_to_a_closed_form_schedule_raises():
    opt = make_optimizer()
    sched = build_scheduler(opt, type="warmup_cosine", total_steps=10)
    with pytest.raises(ValueError, match="not metric-driven"):
        sched.step(0.37)
    sequential = tls.SequentialLR(  # torch's own int "epoch" calls still work
        opt, [build_scheduler(opt, type="constant"), tls.ConstantLR(opt, 0.5, 2)], milestones=[3]
    )
    run(opt, sequential, 6)


TORCH_EQUIVALENTS = [
    ({"type": "warmup_cosine", "min_lr": 0.001}, lambda o: tls.CosineAnnealingLR(o, 30, 0.001)),
    ({"type": "polynomial", "power": 2.0}, lambda o: tls.PolynomialLR(o, 30, 2.0)),
    ({"type": "exponential", "gamma": 0.9}, lambda o: tls.ExponentialLR(o, 0.9)),
    ({"type": "step", "step_size": 4, "gamma": 0.5}, lambda o: tls.StepLR(o, 4, 0.5)),
    (
        {"type": "cosine_restarts", "first_cycle_steps": 3, "t_mult": 2, "min_lr": 0.002},
        lambda o: tls.CosineAnnealingWarmRestarts(o, 3, 2, 0.002),
    ),
]


@pytest.mark.parametrize(
    "config,make", TORCH_EQUIVALENTS, ids=[c["type"] for c, _ in TORCH_EQUIVALENTS]
)
def test_no_warmup_matches_torch_builtin(config, make):
    ours_opt, torch_opt = make_optimizer(), make_optimizer()
    ours = build_scheduler(ours_opt, {**config, "total_steps": 30})
    ref = make(torch_opt)
    a, b = run(ours_opt, ours, 31), run(torch_opt, ref, 31)
    for x, y in zip(a, b):  # torch's chainable forms accumulate rounding error
        assert x == pytest.approx(y, rel=1e-9, abs=1e-12)


def test_lr_curve_reports_metrics_to_metric_driven_types():
    curve = lr_curve(
        {"type": "plateau", "patience": 0, "factor": 0.5}, 6, 1.0, metrics={1: 1.0, 3: 2.0}
    )
    assert curve == [1.0, 1.0, 1.0, 1.0, 0.5, 0.5]
    step = {"type": "step", "step_size": 2}  # closed-form types ignore metrics, as fit does
    assert lr_curve(step, 6, metrics={1: 1.0, 3: 2.0}) == lr_curve(step, 6)


def test_is_metric_driven_covers_torch_schedulers_and_wrappers():
    assert is_metric_driven(tls.ReduceLROnPlateau(make_optimizer()))
    assert is_metric_driven(with_warmup(tls.ReduceLROnPlateau(make_optimizer()), 2))
    assert not is_metric_driven(with_warmup(tls.StepLR(make_optimizer(), 2), 2))
    assert not is_metric_driven(None)


@pytest.mark.parametrize("config", STATE_CASES, ids=[c["type"] for c in STATE_CASES])
def test_state_dict_loads_with_weights_only(config, tmp_path):
    """Checkpoints store plain values: the state must load with torch.load(weights_only=True)."""
    opt = make_optimizer()
    sched = build_scheduler(opt, config)
    run(opt, sched, 5, {1: 1.0, 3: 2.0})
    torch.save(sched.state_dict(), tmp_path / "s.pt")
    state = torch.load(tmp_path / "s.pt", weights_only=True)
    other = build_scheduler(make_optimizer(), config)
    other.load_state_dict(state)
    assert other.state_dict() == sched.state_dict()


def test_with_warmup_state_loads_with_weights_only(tmp_path):
    opt = make_optimizer()
    sched = with_warmup(tls.CosineAnnealingLR(opt, 10), 3)
    run(opt, sched, 5)
    torch.save(sched.state_dict(), tmp_path / "w.pt")
    state = torch.load(tmp_path / "w.pt", weights_only=True)
    other_opt = make_optimizer()
    other = with_warmup(tls.CosineAnnealingLR(other_opt, 10), 3)
    other.load_state_dict(state)
    other_opt.load_state_dict(opt.state_dict())
    assert run(other_opt, other, 6) == run(opt, sched, 6)


def test_numpy_numbers_are_accepted():
    np = pytest.importorskip("numpy")
    a = lr_curve({"type": "step", "step_size": np.int64(3), "gamma": np.float32(0.5)}, 8)
    assert a == lr_curve({"type": "step", "step_size": 3, "gamma": float(np.float32(0.5))}, 8)


def test_numpy_arrays_and_tuples_are_per_group_sequences():
    np = pytest.importorskip("numpy")
    for per_group in ({"min_lr": [0.01, 0.02, 0.03]}, {"warmup_start_lr": [0.0, 0.01, 0.02]}):
        ((key, values),) = per_group.items()
        config = {"type": "warmup_cosine", "total_steps": 12, "warmup_steps": 3}
        opt = make_optimizer()
        lists = run(opt, build_scheduler(opt, config, **per_group), 12)
        for given in (np.array(values), tuple(values)):
            opt = make_optimizer()
            assert run(opt, build_scheduler(opt, config, **{key: given}), 12) == lists
    momenta = {"base_momentum": np.array([0.8, 0.85, 0.85]), "total_steps": 10}
    assert build_scheduler(make_optimizer(), type="onecycle", **momenta).momenta[0] == {
        "base_momentum": 0.8,
        "max_momentum": 0.95,
    }


def test_onecycle_pct_start_defaults_to_torchs_and_a_warmup_may_start_at_the_lr():
    assert lr_curve({"type": "onecycle"}, 40) == lr_curve(
        {"type": "onecycle", "pct_start": 0.3}, 40
    )
    flat = lr_curve({"type": "constant", "warmup_steps": 3, "warmup_start_lr": 0.5}, 5, 0.5)
    assert flat == [0.5] * 5


def test_a_with_warmup_wrapper_resumes_without_a_false_double_step():
    def make():
        opt = make_optimizer()
        return opt, with_warmup(tls.StepLR(opt, 2, 0.5), 3)

    opt, sched = make()
    run(opt, sched, 5)
    state, opt_state = copy.deepcopy(sched.state_dict()), copy.deepcopy(opt.state_dict())
    expected = run(opt, sched, 6)
    other_opt, other = make()
    other_opt.load_state_dict(opt_state)
    other.load_state_dict(state)
    assert run(other_opt, other, 6) == expected


# --------------------------------------------------------------------------- get_lr, state checks

_EXTRA = {"cosine_restarts": {"first_cycle_steps": 4}, "exponential": {"gamma": 0.9}}
_EXTRA["step"] = {"step_size": 3}


def _config(kind: str) -> dict:
    warm = {} if kind == "onecycle" else {"warmup_steps": 3}
    return {"type": kind, "total_steps": 20, **warm, **_EXTRA.get(kind, {})}


def _wrapped(opt):
    return with_warmup(tls.StepLR(opt, 3, 0.5), 4)


@pytest.mark.parametrize("kind", [*SCHEDULER_TYPES, "with_warmup"])
def test_get_lr_after_step_is_the_current_lr(kind):
    opt = make_optimizer()
    sched = _wrapped(opt) if kind == "with_warmup" else build_scheduler(opt, _config(kind))
    for k in range(15):
        opt.step()
        sched.step()
        if sched.metric_driven:
            sched.step(float(k % 3 == 0) + 1.0)  # plateaus: cuts
        assert sched.get_lr() == sched.get_last_lr() == [g["lr"] for g in opt.param_groups]


@pytest.mark.parametrize("config", STATE_CASES, ids=[c["type"] for c in STATE_CASES])
def test_state_of_another_type_is_refused_and_an_old_state_still_loads(config):
    opt = make_optimizer()
    sched = build_scheduler(opt, config)
    run(opt, sched, 5, {1: 1.0, 3: 2.0})
    state = sched.state_dict()
    assert state["scheduler_class"] == type(sched).__name__
    other = STATE_CASES[(STATE_CASES.index(config) + 1) % len(STATE_CASES)]
    with pytest.raises(ValueError, match=f"belongs to a '{type(sched).__name__}' scheduler"):
        build_scheduler(make_optimizer(), other).load_state_dict(state)
    old = {k: v for k, v in state.items() if k != "scheduler_class"}  # saved before the key
    fresh = build_scheduler(make_optimizer(), config)
    fresh.load_state_dict(old)
    assert fresh.state_dict() == state
    with pytest.raises(ValueError, match="lacks"):
        fresh.load_state_dict({"last_epoch": 3})


def test_state_fields_are_checked():
    sched = build_scheduler(make_optimizer(), type="exponential", gamma=0.9)
    state = sched.state_dict()
    for key, bad, match in [
        ("last_epoch", "x", r"\['last_epoch'\] must be an int"),
        ("last_epoch", 2.0, r"\['last_epoch'\] must be an int"),
        ("gamma", "0.5", r"ExponentialDecay state_dict\['gamma'\] must be a number"),
        ("staircase", 1, r"\['staircase'\] must be a bool"),
        ("base_lrs", [0.1, "x", 0.3], r"\['base_lrs'\]\[1\] must be a number"),
    ]:
        with pytest.raises(TypeError, match=match):
            sched.load_state_dict({**state, key: bad})
    with pytest.raises(ValueError, match="lacks"):  # torch's own StepLR state
        build_scheduler(make_optimizer(), type="step", step_size=2).load_state_dict(
            tls.StepLR(make_optimizer(), 2).state_dict()
        )
    sched.load_state_dict({**state, "gamma": 1})  # an int is a number
    assert sched.gamma == 1


def test_state_dict_keeps_torch_contract():
    """Every attribute but the optimizer (and the field list), plus the class; SequentialLR
    saves and loads ours as its children."""
    opt = make_optimizer()
    sched = build_scheduler(opt, type="warmup_cosine", total_steps=10, warmup_steps=2)
    state = sched.state_dict()
    assert set(state) == (set(vars(sched)) - {"optimizer", "_fields"}) | {"scheduler_class"}
    first = build_scheduler(opt, type="constant", warmup_steps=2)
    chain = tls.SequentialLR(opt, [first, build_scheduler(opt, type="step", step_size=2)], [3])
    run(opt, chain, 5)
    chain.load_state_dict(chain.state_dict())


def test_wrapper_state_needs_the_inner_state():
    sched = _wrapped(make_optimizer())
    state = sched.state_dict()
    with pytest.raises(ValueError, match="scheduler_state"):
        sched.load_state_dict({k: v for k, v in state.items() if k != "scheduler_state"})
    sched.load_state_dict(state)


# --------------------------------------------------------------------------- add_param_group


def _add_group(opt, lr):
    opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))], "lr": lr})


@pytest.mark.parametrize("at", [0, 1, 2])
def test_an_added_group_follows_step_like_torch_steplr(at):
    ours_opt, torch_opt = make_optimizer(), make_optimizer()
    ours = build_scheduler(ours_opt, type="step", step_size=3, gamma=0.5)
    theirs = tls.StepLR(torch_opt, 3, 0.5)
    for k in range(12):
        for opt, sched in ((ours_opt, ours), (torch_opt, theirs)):
            if k == at:
                _add_group(opt, 0.7)
            opt.step()
            sched.step()
        assert [g["lr"] for g in ours_opt.param_groups] == pytest.approx(
            [g["lr"] for g in torch_opt.param_groups], rel=1e-12
        )
    assert len(ours_opt.param_groups) == 4


def test_the_plateau_scheduler_cuts_an_added_group_like_torch():
    ours_opt, torch_opt = make_optimizer(), make_optimizer()
    ours = build_scheduler(ours_opt, type="plateau", patience=1, factor=0.5, min_lr=0.01)
    theirs = tls.ReduceLROnPlateau(torch_opt, patience=1, factor=0.5, min_lr=0.01)
    metrics = [3.0, 2.0, 2.5, 2.5, 2.5, 1.0, 1.5, 1.5, 1.5, 1.5, 1.5, 1.5]
    for epoch, metric in enumerate(metrics):
        if epoch == 3:
            _add_group(ours_opt, 0.7)
            _add_group(torch_opt, 0.7)
        ours_opt.step()
        ours.step()
        ours.step(metric)
        theirs.step(metric)
        assert [g["lr"] for g in ours_opt.param_groups] == pytest.approx(
            [g["lr"] for g in torch_opt.param_groups], rel=1e-12
        )
    assert ours_opt.param_groups[3]["lr"] < 0.7  # the new group was cut


@pytest.mark.parametrize("kind", SCHEDULER_TYPES)
def test_an_added_group_gets_its_own_base_lr(kind):
    """Added at step 4 with lr 0.7: from then on as a group of base 0.7 there from the start."""
    opt, ref_opt = make_optimizer(), make_optimizer(bases=(*BASES, 0.7))
    sched, ref = build_scheduler(opt, _config(kind)), build_scheduler(ref_opt, _config(kind))
    for k in range(16):
        if k == 4:
            _add_group(opt, 0.7)
        for o, s in ((opt, sched), (ref_opt, ref)):
            o.step()
            s.step()
            if s.metric_driven:
                s.step(float(k % 3 == 0) + 1.0)
        if k >= 4:
            assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in ref_opt.param_groups]
            assert [g["momentum"] for g in opt.param_groups] == [
                g["momentum"] for g in ref_opt.param_groups
            ]
    assert opt.param_groups[3]["initial_lr"] == 0.7


def test_an_added_group_with_its_initial_lr_and_under_a_warmup_wrapper():
    opt = make_optimizer()
    sched = build_scheduler(opt, type="step", step_size=2, gamma=0.5)
    run(opt, sched, 3)
    opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 9.0})
    opt.param_groups[3]["initial_lr"] = 0.8  # resuming: the base LR is initial_lr
    run(opt, sched, 1)
    assert opt.param_groups[3]["lr"] == pytest.approx(0.8 * 0.5**2)
    opt = make_optimizer()
    sched = _wrapped(opt)
    run(opt, sched, 2)
    _add_group(opt, 0.7)
    lrs = run(opt, sched, 10)
    assert lrs[-1][3] == pytest.approx(0.7 * 0.5**2)  # warmed up to 0.7, then StepLR's


def test_an_added_group_needs_one_value_for_per_group_settings():
    for config in [
        {"type": "constant", "min_lr": [0.01, 0.02, 0.03]},
        {"type": "constant", "warmup_steps": 3, "warmup_start_lr": [0.0, 0.01, 0.0]},
        {"type": "onecycle", "total_steps": 10, "base_momentum": [0.8, 0.85, 0.85]},
    ]:
        opt = make_optimizer()
        sched = build_scheduler(opt, config)
        _add_group(opt, 0.7)
        opt.step()
        with pytest.raises(ValueError, match="add_param_group"):
            sched.step()
    opt = make_optimizer()
    sched = build_scheduler(opt, type="constant", min_lr=[0.01] * 3)  # one value for all: fine
    _add_group(opt, 0.7)
    opt.step()
    sched.step()
    assert sched.min_lrs == [0.01] * 4
