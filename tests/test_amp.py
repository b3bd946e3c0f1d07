import copy
import warnings

import pytest
import torch

from stabletrain import TinyUNet, make_loaders
from stabletrain.amp import MixedPrecision
from stabletrain.loop import fit


def tiny():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))


def loss_of(model, amp):
    with amp.autocast():
        out = model(torch.randn(16, 4, generator=torch.Generator().manual_seed(1)))
    return out.float().pow(2).mean()


def test_inf_gradient_under_float16_is_reported_as_skipped():
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    amp = MixedPrecision("float16", device_type="cpu", init_scale=1024.0)
    before = copy.deepcopy(model.state_dict())
    amp.backward(loss_of(model, amp))
    model[0].weight.grad[0, 0] = float("inf")  # injected fault: one overflowing gradient
    assert amp.step(opt) is False
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert amp.scale == 512.0  # halved
    assert amp.skipped_steps == 1 and amp.steps == 0


def test_normal_step_is_reported_as_applied():
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    amp = MixedPrecision("float16", device_type="cpu", init_scale=1024.0, growth_interval=1)
    weight = model[0].weight.detach().clone()
    amp.backward(loss_of(model, amp))
    assert amp.step(opt) is True
    assert not torch.equal(weight, model[0].weight)
    assert amp.scale == 2048.0  # grew after growth_interval=1 good step


def test_matches_torchs_documented_gradscaler_recipe():
    """Same updates as the recipe in torch's AMP docs, step for step."""
    ours, ref = tiny(), tiny()
    opt_a = torch.optim.Adam(ours.parameters(), lr=1e-2)
    opt_b = torch.optim.Adam(ref.parameters(), lr=1e-2)
    amp = MixedPrecision("float16", device_type="cpu", init_scale=2.0**20, growth_interval=3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**20, growth_interval=3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(12):
        x = torch.randn(32, 4, generator=gen) * 100
        with amp.autocast():
            loss_a = ours(x).float().pow(2).mean()
        amp.backward(loss_a)
        amp.unscale_(opt_a)
        torch.nn.utils.clip_grad_norm_(ours.parameters(), 1.0)
        amp.step(opt_a)
        opt_a.zero_grad()
        with torch.autocast("cpu", dtype=torch.float16):
            loss_b = ref(x).float().pow(2).mean()
        scaler.scale(loss_b).backward()
        scaler.unscale_(opt_b)
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
        scaler.step(opt_b)
        scaler.update()
        opt_b.zero_grad()
    assert amp.skipped_steps > 0  # the huge initial scale overflowed at first
    assert amp.scale == scaler.get_scale()
    for a, b in zip(ours.parameters(), ref.parameters()):
        assert torch.equal(a, b)


def test_bfloat16_and_float32_need_no_scaler():
    assert MixedPrecision("bfloat16", device_type="cpu").scaler is None
    fp32 = MixedPrecision("float32", device_type="cpu")
    assert fp32.scaler is None and fp32.scale == 1.0 and not fp32.enabled
    off = MixedPrecision("float16", device_type="cpu", enabled=False)
    assert off.scaler is None and off.dtype == torch.float32
    with MixedPrecision("bfloat16", device_type="cpu").autocast():
        assert torch.randn(2, 2).matmul(torch.randn(2, 2)).dtype == torch.bfloat16


def test_auto_resolves_to_a_supported_dtype():
    amp = MixedPrecision("auto", device_type="cpu")
    assert amp.dtype in (torch.bfloat16, torch.float32)
    assert amp.scaler is None


def test_state_dict_round_trip_includes_scaler():
    amp = MixedPrecision("float16", device_type="cpu", init_scale=256.0)
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    amp.backward(loss_of(model, amp))
    model[0].weight.grad[0, 0] = float("nan")
    amp.step(opt)
    state = amp.state_dict()
    fresh = MixedPrecision("float16", device_type="cpu")
    fresh.load_state_dict(state)
    assert fresh.scale == 128.0 and fresh.skipped_steps == 1
    with pytest.raises(ValueError, match="dtype"):
        MixedPrecision("bfloat16", device_type="cpu").load_state_dict(state)


def test_fit_does_not_advance_the_schedule_on_skipped_steps():
    train, _ = make_loaders(num_train=32, num_val=8, batch_size=8, image_size=32)
    torch.manual_seed(0)
    model = TinyUNet(base_channels=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5**s)
    # an enormous initial scale makes the first float16 steps overflow, as in real runs
    amp = MixedPrecision("float16", device_type="cpu", init_scale=2.0**24)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the "scheduler before optimizer" warning would fail
        history = fit(
            model, train, optimizer=opt, scheduler=sched, amp=amp, epochs=4, progress=False
        )
    applied = history.steps["applied"]
    assert not all(applied) and any(applied)
    real_steps_before = [sum(applied[:i]) for i in range(len(applied))]
    assert history.steps["lr"] == pytest.approx([0.1 * 0.5**k for k in real_steps_before])
    assert amp.skipped_steps == applied.count(False)
    assert "loss_scale" in history.steps


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"dtype": "float8"}, "dtype"),
        ({"init_scale": 0}, "init_scale"),
        ({"growth_interval": 0}, "growth_interval"),
        ({"backoff_factor": 1.0}, "backoff_factor"),
        ({"growth_factor": 0.5}, "growth_factor"),
        ({"max_scale": 4}, "max_scale"),
    ],
)
def test_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        MixedPrecision(**{"dtype": "float16", "device_type": "cpu", **kwargs})


def test_guard_skip_under_float16_leaves_the_next_step_correctly_unscaled():
    """A NaN-loss step skipped by the guard must not disturb the next real update."""
    from stabletrain.stability import StabilityGuard

    def run(with_nan_step: bool):
        model = tiny()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        amp = MixedPrecision("float16", device_type="cpu", init_scale=1024.0)
        guard = StabilityGuard(
            model, opt, amp=amp, on_nonfinite="skip", clip_mode="norm", max_norm=0.01
        )
        if with_nan_step:  # injected fault: a NaN loss
            result = guard.step(loss_of(model, amp) * float("nan"))
            assert not result.applied and guard.skipped == 1 and guard.scaler_skips == 0
        result = guard.step(loss_of(model, amp))
        assert result.applied
        return model, amp, result.grad_norm

    clean, clean_amp, clean_norm = run(False)
    faulty, faulty_amp, faulty_norm = run(True)
    assert faulty_norm == clean_norm  # measured on unscaled gradients both times
    for a, b in zip(clean.parameters(), faulty.parameters()):
        assert torch.equal(a, b)
    assert faulty_amp.scale == clean_amp.scale


def test_guard_counts_scaler_overflows_apart_from_its_own_skips():
    from stabletrain.stability import StabilityGuard

    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    amp = MixedPrecision("float16", device_type="cpu", init_scale=2.0**60)
    guard = StabilityGuard(model, opt, amp=amp)
    results = [guard.step(loss_of(model, amp)) for _ in range(60)]
    assert guard.scaler_skips > 0 and guard.skipped == 0  # overflow is the scaler's business
    assert results[-1].applied and amp.scale < 2.0**60
    assert guard.state_dict()["scaler_skips"] == guard.scaler_skips
