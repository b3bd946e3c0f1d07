"""Notebook 01's divergence and its defences, on a short budget.

If a library change stops the recipe from diverging, or a defence from working, these fail
with a message that says which: the notebook's story would no longer be true.
"""

import math

import pytest
import torch

from stabletrain.course.divergence import (
    DivergenceLab,
    PrecursorProbe,
    WatchModel,
    clipped_fraction,
    divergence_run,
    verdict,
)
from stabletrain.history import History
from stabletrain.models import TinyUNet
from stabletrain.stability import NonFiniteError

SEEDS = (0, 3)  # two of the notebook's five; both diverge before step 20 (measured: 19, 14)
STEPS = 24


@pytest.fixture(scope="module")
def baseline():
    return {seed: divergence_run(seed, steps=STEPS) for seed in SEEDS}


def test_the_recipe_diverges_through_training_dynamics(baseline):
    for seed, history in baseline.items():
        first = history.first_nonfinite_step()
        assert first is not None, f"seed {seed}: the recipe no longer diverges in {STEPS} steps"
        assert first >= 8, f"seed {seed}: NaN at step {first}, before any healthy training"
        losses = history.steps["loss"][:first]
        assert all(math.isfinite(v) for v in losses)
        assert min(losses) < 0.6 * losses[0], "the loss first falls, as a healthy run's does"
        assert max(losses) > 10 * min(losses), "the loss spikes before it goes non-finite"
        assert verdict(history).startswith("diverged")


def test_qk_norm_is_not_the_cure(baseline):
    history = divergence_run(SEEDS[0], steps=STEPS, qk_norm=True)
    assert history.first_nonfinite_step() is not None, "qk-norm now prevents the divergence"


@pytest.mark.parametrize(
    ("name", "options"),
    [("GroupNorm", {"norm": "group"}), ("a lower LR", {"lr": 0.1})],
)
def test_a_defence_that_cures(name, options):
    for seed in SEEDS:
        history = divergence_run(seed, steps=STEPS, **options)
        assert verdict(history).startswith("stable"), f"{name} no longer cures seed {seed}"


def test_warmup_alone_only_delays_the_nan(baseline):
    for seed, plain in baseline.items():
        history = divergence_run(seed, steps=34, warmup_steps=40)
        first = history.first_nonfinite_step()
        assert first is not None, f"seed {seed}: warmup alone now prevents the NaN"
        assert first > plain.first_nonfinite_step(), f"seed {seed}: warmup no longer delays it"


def test_skip_cannot_save_exploded_weights_but_rollback_can():
    for seed in SEEDS:
        with pytest.raises(NonFiniteError, match="already exploded"):
            divergence_run(seed, steps=40, guard={"on_nonfinite": "skip"})
        guards = []
        history = divergence_run(
            seed,
            steps=STEPS + 6,
            guard={"on_nonfinite": "rollback", "snapshot_every": 5},
            guards=guards,
        )
        assert len(guards) == 1 and guards[0].rollbacks >= 1 and guards[0].lr_scale < 1
        assert verdict(history).startswith("stable"), f"rollback no longer cures seed {seed}"
        assert "rejected by the guard" in verdict(history)
        rejected = [a for a in history.steps["applied"] if a is False]
        assert rejected, "the guard never intervened"
        assert history.steps["lr"][-1] < 2.0, "no LR cut after the rollbacks"


def test_precursors_rise_before_the_blowup_while_attention_logits_do_not():
    watch = WatchModel(PrecursorProbe)
    history = divergence_run(0, steps=STEPS, callbacks=[watch])
    assert not watch._open, "the probe's hooks are removed when fit returns"
    first = history.first_nonfinite_step()
    norms = history.steps["grad_norm"][:first]
    records = watch.watcher.records
    assert len(records["weight_norm"]) == history.num_steps
    early = sorted(norms[:8])[4]
    assert norms[first - 2] > 10 * early, "the gradient norm no longer rises before the NaN"
    assert records["weight_norm"][first - 1] > 2 * records["weight_norm"][0]
    assert records["max_activation"][first - 1] > 10 * records["max_activation"][0]
    assert max(records["max_attention_logit"][: first - 2]) < 1.0, "attention logits rose first"


def test_batchnorm_unet_does_not_diverge_at_the_same_lr():
    history = divergence_run(0, steps=STEPS, norm="batch")
    assert history.first_nonfinite_step() is None


def test_lab_runs_headless_and_its_verdict_fires():
    lab = DivergenceLab(steps=STEPS)
    assert lab.run(lr=2.0)["verdict"].startswith("diverged")
    assert lab.run(lr=2.0, norm="group")["verdict"].startswith("stable")
    with pytest.raises(ValueError, match="lr"):
        lab.run(lr=0.0)
    with pytest.raises(ValueError, match="max_grad_norm"):
        lab.run(max_grad_norm=-1.0)
    assert lab.plot() is not None


def test_lab_widget_trains_on_click_only_with_its_button_disabled():
    lab = DivergenceLab(steps=3)
    box = lab.widget()
    *controls, button, label, image = box.children
    assert all(c.style.description_width == "initial" for c in controls)
    seen, run = [], lab.run
    lab.run = lambda **kw: seen.append((button.disabled, label.value)) or run(**kw)
    button.click()
    assert seen == [(True, "training…")] and not button.disabled
    first = image.value
    assert first[:8] == b"\x89PNG\r\n\x1a\n" and label.value == lab.last["verdict"]
    controls[0].value = 0.1  # lr: nothing trains until the button is pressed
    assert len(seen) == 1 and image.value == first
    button.click()
    assert len(seen) == 2 and image.value != first
    assert lab.last["settings"] == "lr=0.1, warmup=0, clip=off, norm=None, seed=0"
    assert lab.plot()._suptitle.get_text().startswith(lab.last["settings"] + " — stable")


def test_clipped_fraction_counts_applied_steps_above_the_threshold():
    history = History()
    for norm, applied in ((0.1, True), (0.5, True), (9.0, False), (0.7, True)):
        history.log_step(loss=1.0, grad_norm=norm, applied=applied)
    assert clipped_fraction(history, 0.3) == pytest.approx(2 / 3)
    assert math.isnan(clipped_fraction(History(), 0.3))
    with pytest.raises(ValueError, match="threshold"):
        clipped_fraction(history, 0.0)


def test_watch_model_closes_even_when_fit_raises():
    watch = WatchModel(PrecursorProbe)
    with pytest.raises(NonFiniteError):
        divergence_run(0, steps=40, guard={"on_nonfinite": "raise"}, callbacks=[watch])
    assert watch._open
    watch.close()
    watch.close()  # idempotent
    assert not watch._open and watch.watcher.records["weight_norm"]
    with pytest.raises(TypeError, match="factory"):
        WatchModel("probe")


def test_divergence_run_rejects_bad_arguments():
    with pytest.raises(ValueError, match="norm"):
        divergence_run(norm="layer")
    with pytest.raises(ValueError, match="warmup_steps"):
        divergence_run(warmup_steps=-1)
    with pytest.raises(TypeError, match="steps"):
        divergence_run(steps=2.5)
    with pytest.raises(TypeError, match="model"):
        PrecursorProbe("not a model")


def test_model_options():
    plain = TinyUNet()
    assert not any("self_attention" in k for k in plain.state_dict())
    model = TinyUNet(base_channels=8, norm=None, activation="leaky_relu", bottleneck_attention=True)
    x = torch.randn(2, 1, 32, 32)
    assert model(x).shape == (2, 1, 32, 32)
    assert model.self_attention.last_max_logit is not None
    convs = [
        m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)
    ]
    assert all(c.bias is not None for c in convs), "without a norm the convolutions need a bias"
    grouped = TinyUNet(base_channels=6, norm="group")
    norms = [m for m in grouped.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and all(m.num_channels % m.num_groups == 0 and m.num_groups <= 8 for m in norms)
    assert TinyUNet(norm="group")(torch.randn(1, 1, 16, 16)).shape == (1, 1, 16, 16)
    with pytest.raises(ValueError, match="norm must be one of"):
        TinyUNet(norm="layer")
    with pytest.raises(ValueError, match="activation must be one of"):
        TinyUNet(activation="gelu")
    with pytest.raises(ValueError, match="qk_norm=True needs bottleneck_attention"):
        TinyUNet(qk_norm=True)
    with pytest.raises(TypeError, match="bottleneck_attention must be a bool"):
        TinyUNet(bottleneck_attention=1)
