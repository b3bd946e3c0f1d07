"""Tests of stabletrain.deep_supervision: schedules against the reference formulas,
target resizing and the deep-supervision loss (also inside ``fit``)."""

from __future__ import annotations

import math

import pytest
import torch

from stabletrain.deep_supervision import (
    SCHEDULES,
    DeepSupervisionLoss,
    resize_target,
    supervision_weights,
)
from stabletrain.loop import fit
from stabletrain.losses import DiceLoss, FocalLoss, build_loss
from stabletrain.models import TinyUNet

# --- the reference formulas (shared/reference/deep_supervision_schedules.md), written out
# independently of the library, element by element.


def _n(w):
    s = sum(w)
    return [1 / len(w)] * len(w) if s <= 1e-8 else [v / s for v in w]


def _a(n):
    return [n - i for i in range(n)]


def _b(n):
    return [i + 1 for i in range(n)]


def reference(schedule, n, p, **kw):
    a, b = _a(n), _b(n)
    if schedule == "constant_equal":
        return [1 / n] * n
    if schedule == "constant_low_to_high":
        return _n(a)
    if schedule == "constant_high_to_low":
        return _n(b)
    if schedule == "linear_low_to_high":
        return _n([(1 - p) * bi + p * ai for ai, bi in zip(a, b)])
    if schedule == "non_linear_low_to_high":
        return _n([(1 - p**2) * bi + p**2 * ai for ai, bi in zip(a, b)])
    if schedule == "custom_sigmoid_low_to_high":
        k, x0, t = kw.get("k", 10.0), kw.get("x0", 0.5), kw.get("transition_point", 0.25)
        s = 0.0 if (p < t or t >= 1) else 1 / (1 + math.exp(-k * ((p - t) / (1 - t) - x0)))
        return _n([(1 - s) * bi + s * ai for ai, bi in zip(a, b)])
    if schedule == "scale_by_scale_low_to_high":
        j = n - 1 - min(math.floor(p * n), n - 1)
        return [float(i == j) for i in range(n)]
    if schedule == "cosine_annealing":
        f, r = kw.get("frequency", 3.0), kw.get("final_ratio", 0.5)
        amp = (1 / n) * (1 - (1 - r) * p)
        m = [(n - 1 - i) - (n - 1) / 2 for i in range(n)]
        return _n([max(1 + mi * math.cos(2 * math.pi * f * p) * amp, 0) for mi in m])
    if schedule == "curriculum":
        big_m = kw.get("max_active_outputs", n)
        big_m = n if big_m <= 0 else min(big_m, n)
        lin = kw.get("activation_strategy", "linear") == "linear"
        k = max(1, int(big_m * p) if lin else int(big_m * p * p))
        if p >= 1:
            k = big_m
        return [1 / k if i >= n - k else 0.0 for i in range(n)]
    if schedule == "step_wise":
        h = kw.get("threshold", 0.5)
        if p >= h or h <= 1e-8:
            return [float(i == 0) for i in range(n)]
        return reference("linear_low_to_high", n, p / h)
    if schedule == "nnunet":
        return _n([0.0 if i == n - 1 else 1 / 2**i for i in range(n)]) if n > 1 else [1.0]
    raise AssertionError(schedule)


PROGRESS = [0.0, 0.1, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.75, 0.9, 0.999, 1.0]
PARAMS = {
    "custom_sigmoid_low_to_high": [{}, {"k": 4.0, "x0": 0.3, "transition_point": 0.1}],
    "cosine_annealing": [{}, {"frequency": 1.5, "final_ratio": 0.8}],
    "curriculum": [
        {},
        {"max_active_outputs": 3},
        {"max_active_outputs": 0, "activation_strategy": "exp"},
        {"max_active_outputs": 9},
    ],
    "step_wise": [{}, {"threshold": 0.8}, {"threshold": 0.0}],
}


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_schedules_match_reference_and_sum_to_one(schedule, n):
    for params in PARAMS.get(schedule, [{}]):
        for p in PROGRESS:
            got = supervision_weights(schedule, n, p, **params)
            assert len(got) == n
            assert sum(got) == pytest.approx(1.0, abs=1e-12)
            assert min(got) >= 0
            assert got == pytest.approx(reference(schedule, n, p, **params), abs=1e-12), (p, params)


def test_worked_values_of_the_reference():
    def rounded(values):
        return [round(v, 4) for v in values]

    assert rounded(supervision_weights("linear_low_to_high", 5, 0.0)) == [
        0.0667,
        0.1333,
        0.2,
        0.2667,
        0.3333,
    ]
    assert rounded(supervision_weights("linear_low_to_high", 5, 1.0)) == [
        0.3333,
        0.2667,
        0.2,
        0.1333,
        0.0667,
    ]
    assert rounded(supervision_weights("non_linear_low_to_high", 5, 0.75)) == [
        0.2167,
        0.2083,
        0.2,
        0.1917,
        0.1833,
    ]
    assert supervision_weights("curriculum", 5, 0.5, max_active_outputs=5) == [
        0,
        0,
        0,
        0.5,
        0.5,
    ]
    assert [round(w, 3) for w in supervision_weights("nnunet", 5, 0.3)] == [
        0.533,
        0.267,
        0.133,
        0.067,
        0.0,
    ]
    # linear is equal at p = 0.5; scale-by-scale starts at the deepest output and ends at 0.
    assert supervision_weights("linear_low_to_high", 4, 0.5) == pytest.approx([0.25] * 4)
    assert supervision_weights("scale_by_scale_low_to_high", 4, 0.0) == [0, 0, 0, 1]
    assert supervision_weights("scale_by_scale_low_to_high", 4, 1.0) == [1, 0, 0, 0]


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match=r"progress must be in \[0, 1\]"):
        supervision_weights("linear_low_to_high", 3, 1.5)
    with pytest.raises(ValueError, match="progress"):
        supervision_weights("constant_equal", 3, -0.1)
    with pytest.raises(ValueError, match="unknown schedule 'linear'"):
        supervision_weights("linear", 3, 0.5)
    with pytest.raises(ValueError, match="num_outputs"):
        supervision_weights("nnunet", 0, 0.5)
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['k'\]"):
        supervision_weights("linear_low_to_high", 3, 0.5, k=3)
    with pytest.raises(ValueError, match="transition_point"):
        supervision_weights("custom_sigmoid_low_to_high", 3, 0.5, transition_point=2.0)
    with pytest.raises(ValueError, match="activation_strategy"):
        supervision_weights("curriculum", 3, 0.5, activation_strategy="cubic")
    with pytest.raises(ValueError, match="threshold"):
        supervision_weights("step_wise", 3, 0.5, threshold=-1)
    with pytest.raises(ValueError, match="frequency"):
        supervision_weights("cosine_annealing", 3, 0.5, frequency=float("nan"))


# --- target resizing ------------------------------------------------------------------------


def test_resize_never_invents_labels_and_maxpool_keeps_small_objects():
    labels = torch.zeros(2, 16, 16, dtype=torch.long)
    labels[0, 5, 9] = 3  # a one-pixel object away from the nearest-neighbour grid
    labels[1, 4:12, 4:12] = 1
    for mode in ("nearest", "maxpool"):
        small = resize_target(labels, (4, 4), mode)
        assert small.shape == (2, 4, 4) and small.dtype == torch.long
        assert set(small.unique().tolist()) <= {0, 1, 3}
    assert (resize_target(labels, (4, 4), "nearest")[0] == 0).all()  # lost by sampling
    assert resize_target(labels, (4, 4), "maxpool")[0, 1, 2] == 3  # kept by max-pooling
    mask = (torch.rand(2, 1, 16, 16) > 0.9).float()
    for mode in ("nearest", "maxpool"):
        out = resize_target(mask, (8, 8), mode)
        assert out.shape == (2, 1, 8, 8) and set(out.unique().tolist()) <= {0.0, 1.0}
    # nearest with an integer factor samples the top-left pixel of each block
    torch.testing.assert_close(resize_target(mask, (8, 8), "nearest"), mask[..., ::2, ::2])
    torch.testing.assert_close(
        resize_target(mask, (8, 8), "maxpool"), torch.nn.functional.max_pool2d(mask, 2)
    )
    assert resize_target(mask, (16, 16)) is mask
    with pytest.raises(ValueError, match="target_resize must be one of"):
        resize_target(mask, (8, 8), "bilinear")


# --- the loss -------------------------------------------------------------------------------


def _outputs(n=3, size=16, channels=1, batch=2):
    return [torch.randn(batch, channels, size // 2**i, size // 2**i) for i in range(n)]


def test_loss_is_weighted_sum_over_resized_targets():
    outputs = _outputs()
    target = (torch.rand(2, 1, 16, 16) > 0.7).float()
    dice = DiceLoss()
    loss_fn = DeepSupervisionLoss(dice, 3, schedule="linear_low_to_high", target_resize="maxpool")
    value = loss_fn(outputs, target, 0.3)
    weights = supervision_weights("linear_low_to_high", 3, 0.3)
    parts = [dice(o, resize_target(target, o.shape[2:], "maxpool")) for o in outputs]
    torch.testing.assert_close(value, sum(w * p for w, p in zip(weights, parts)))
    assert loss_fn.last_weights == pytest.approx(weights)
    assert loss_fn.last_components == pytest.approx([float(p) for p in parts])
    assert loss_fn.uses_progress and loss_fn.loss is dice


def test_zero_weight_outputs_are_skipped_or_given_a_tiny_weight():
    outputs = [o.requires_grad_() for o in _outputs(4)]
    target = (torch.rand(2, 1, 16, 16) > 0.7).float()
    loss_fn = DeepSupervisionLoss(DiceLoss(), 4, schedule="nnunet")
    loss_fn(outputs, target).backward()  # progress-free schedule: progress may be omitted
    assert loss_fn.last_weights[-1] == 0 and math.isnan(loss_fn.last_components[-1])
    assert outputs[-1].grad is None and outputs[0].grad is not None
    ddp = DeepSupervisionLoss(DiceLoss(), 4, schedule="nnunet", min_weight=1e-6)
    outputs = [o.detach().requires_grad_() for o in outputs]
    ddp(outputs, target).backward()
    assert ddp.last_weights[-1] == 1e-6 and outputs[-1].grad is not None


def test_multiclass_targets_and_errors():
    outputs = _outputs(3, channels=4)
    labels = torch.randint(0, 4, (2, 16, 16))
    loss_fn = DeepSupervisionLoss(FocalLoss("multiclass"), 3, schedule="curriculum")
    assert torch.isfinite(loss_fn(outputs, labels, 0.0))
    assert loss_fn.last_weights == [0.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="expected 3 outputs, got 2"):
        loss_fn(outputs[:2], labels, 0.5)
    with pytest.raises(ValueError, match="list of 3 tensors"):
        loss_fn(outputs[0], labels, 0.5)
    with pytest.raises(ValueError, match="depends on progress"):
        loss_fn(outputs, labels)
    with pytest.raises(ValueError, match="progress"):
        loss_fn(outputs, labels, 2.0)
    with pytest.raises(ValueError, match="unknown parameter"):
        DeepSupervisionLoss(DiceLoss(), 3, schedule="nnunet", k=3)
    with pytest.raises(ValueError, match="target_resize"):
        DeepSupervisionLoss(DiceLoss(), 3, target_resize="bilinear")


def test_fit_trains_with_deep_supervision_and_passes_progress():
    from stabletrain.data import make_loaders

    train, val = make_loaders(16, 8, batch_size=8, image_size=32)
    model = TinyUNet(base_channels=4, depth=3, deep_supervision=True)
    seen = []

    class Recording(DeepSupervisionLoss):
        def forward(self, outputs, target, progress=None):
            seen.append(progress)
            return super().forward(outputs, target, progress)

    loss_fn = Recording(build_loss("default_segmentation"), 3, schedule="linear_low_to_high")
    history = fit(model, train, val_loader=val, epochs=2, loss_fn=loss_fn, progress=False)
    assert seen == [0.0, 0.25, 0.5, 0.75]  # fraction of the 4 planned steps done
    assert all(math.isfinite(v) for v in history.epochs["val_loss"])
    # validation scores the final output with the wrapped loss alone
    assert loss_fn.last_weights == pytest.approx(supervision_weights("linear_low_to_high", 3, 0.75))
