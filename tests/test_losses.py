"""Tests of stabletrain.losses: values against MONAI and closed forms, gradients, errors."""

from __future__ import annotations

import copy
import pickle
import warnings
from functools import partial

import pytest
import torch
from torch import nn

from stabletrain.losses import (
    LOSS_PRESETS,
    CombinedLoss,
    DiceLoss,
    FocalLoss,
    JaccardLoss,
    TverskyLoss,
    build_loss,
)

monai_losses = pytest.importorskip("monai.losses")


def _binary(shape=(3, 2, 12, 10), soft=False):
    logits = torch.randn(shape, dtype=torch.float64) * 2
    target = torch.rand(shape, dtype=torch.float64)
    return logits, target if soft else (target > 0.6).double()


def _multiclass(n=3, c=4, h=12, w=10):
    return torch.randn(n, c, h, w, dtype=torch.float64) * 2, torch.randint(0, c, (n, h, w))


# --- values against MONAI -------------------------------------------------------------------


@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("include_background", [True, False])
def test_dice_multilabel_matches_monai(squared, include_background):
    logits, target = _binary(soft=True)
    ours = DiceLoss("multilabel", squared=squared, include_background=include_background)
    ref = monai_losses.DiceLoss(
        sigmoid=True, squared_pred=squared, include_background=include_background
    )
    torch.testing.assert_close(ours(logits, target), ref(logits, target), atol=1e-6, rtol=0)


def test_dice_binary_matches_monai_and_reduction_none_shape():
    logits, target = _binary((4, 1, 16, 16))
    ours = DiceLoss("binary", reduction="none")(logits, target)
    ref = monai_losses.DiceLoss(sigmoid=True, reduction="none")(logits, target)
    assert ours.shape == (4, 1)
    torch.testing.assert_close(ours, ref.reshape(4, 1), atol=1e-6, rtol=0)
    assert DiceLoss(reduction="sum")(logits, target) == pytest.approx(float(ours.sum()))


@pytest.mark.parametrize("include_background", [True, False])
def test_dice_multiclass_matches_monai(include_background):
    logits, labels = _multiclass()
    ours = DiceLoss("multiclass", include_background=include_background)(logits, labels)
    ref = monai_losses.DiceLoss(
        softmax=True, to_onehot_y=True, include_background=include_background
    )(logits, labels.unsqueeze(1))
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)


def test_jaccard_closed_form_and_close_to_monai_without_smoothing():
    logits, target = _binary()
    p = torch.sigmoid(logits)
    inter = (p * target).sum((2, 3))
    union = p.sum((2, 3)) + target.sum((2, 3)) - inter
    expected = (1 - (inter + 1e-5) / (union + 1e-5)).mean()
    torch.testing.assert_close(JaccardLoss("multilabel")(logits, target), expected)
    # MONAI's jaccard form differs only in where the smoothing enters.
    ours = JaccardLoss("multilabel", smooth=1e-12)(logits, target)
    ref = monai_losses.DiceLoss(sigmoid=True, jaccard=True, smooth_nr=1e-12, smooth_dr=1e-12)
    torch.testing.assert_close(ours, ref(logits, target), atol=1e-6, rtol=0)


@pytest.mark.parametrize("alpha,beta", [(0.5, 0.5), (0.3, 0.7), (0.8, 0.1)])
def test_tversky_matches_monai(alpha, beta):
    logits, target = _binary(soft=True)
    ours = TverskyLoss("multilabel", alpha=alpha, beta=beta)(logits, target)
    ref = monai_losses.TverskyLoss(sigmoid=True, alpha=alpha, beta=beta)(logits, target)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)
    logits, labels = _multiclass()
    ours = TverskyLoss("multiclass", alpha=alpha, beta=beta)(logits, labels)
    ref = monai_losses.TverskyLoss(softmax=True, to_onehot_y=True, alpha=alpha, beta=beta)
    torch.testing.assert_close(ours, ref(logits, labels.unsqueeze(1)), atol=1e-6, rtol=0)


def test_tversky_with_half_weights_is_dice():
    logits, target = _binary()
    torch.testing.assert_close(
        TverskyLoss("multilabel")(logits, target), DiceLoss("multilabel")(logits, target)
    )


@pytest.mark.parametrize("gamma,alpha", [(2.0, 0.25), (2.0, None), (0.5, 0.75), (0.0, 0.25)])
@pytest.mark.parametrize("soft", [False, True])
def test_sigmoid_focal_value_and_gradient_match_monai(gamma, alpha, soft):
    logits, target = _binary(soft=soft)
    ours_x = logits.clone().requires_grad_()
    ref_x = logits.clone().requires_grad_()
    ours = FocalLoss("multilabel", gamma=gamma, alpha=alpha)(ours_x, target)
    ref = monai_losses.FocalLoss(gamma=gamma, alpha=alpha)(ref_x, target)
    # MONAI computes in float32.
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-6, check_dtype=False)
    ours.backward()
    ref.backward()
    torch.testing.assert_close(ours_x.grad, ref_x.grad, atol=1e-8, rtol=1e-5, check_dtype=False)
    # The fused sum-and-backward against plain autograd of the same formula, in float64.
    plain_x = logits.clone().requires_grad_()
    FocalLoss("multilabel", gamma=gamma, alpha=alpha, reduction="none")(
        plain_x, target
    ).mean().backward()
    torch.testing.assert_close(ours_x.grad, plain_x.grad, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_sigmoid_focal_reductions_agree(reduction):
    logits, target = _binary()
    full = FocalLoss("multilabel", reduction="none")(logits, target)
    assert full.shape == logits.shape
    value = FocalLoss("multilabel", reduction=reduction)(logits, target)
    expected = {"mean": full.mean(), "sum": full.sum(), "none": full}[reduction]
    torch.testing.assert_close(value, expected)


def test_gradients_pass_gradcheck():
    logits, target = _binary((2, 2, 5, 4), soft=True)
    x = logits.clone().requires_grad_()
    for loss in (
        DiceLoss("multilabel"),
        DiceLoss("multilabel", squared=True),
        FocalLoss("multilabel"),
        FocalLoss("multilabel", gamma=1.5, alpha=None),
    ):
        assert torch.autograd.gradcheck(lambda x, loss=loss: loss(x, target), (x,))
    logits, labels = _multiclass(2, 3, 5, 4)
    x = logits.clone().requires_grad_()
    for loss in (
        DiceLoss("multiclass"),
        DiceLoss("multiclass", squared=True, include_background=False),
        TverskyLoss("multiclass", alpha=0.3, beta=0.7),
        FocalLoss("multiclass"),
    ):
        assert torch.autograd.gradcheck(lambda x, loss=loss: loss(x, labels), (x,))


@pytest.mark.parametrize("jaccard", [False, True])
@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("mode", ["multilabel", "multiclass"])
def test_dice_gradient_matches_monai_and_the_formula(mode, squared, jaccard):
    """Our gradient against MONAI's (Dice) and autograd of the formula (Dice and Jaccard)."""
    if mode == "multiclass":
        logits, target = _multiclass()
        ref_target = target.unsqueeze(1)
        one_hot = nn.functional.one_hot(target, logits.shape[1]).movedim(-1, 1).double()
        probs = torch.softmax
    else:
        logits, target = _binary(soft=True)
        ref_target, one_hot, probs = target, target, lambda x, _: torch.sigmoid(x)
    ours_x = logits.clone().requires_grad_()
    DiceLoss(mode, squared=squared, jaccard=jaccard)(ours_x, target).backward()
    plain_x = logits.clone().requires_grad_()
    p = probs(plain_x, 1)
    inter = (p * one_hot).sum((2, 3))
    total = (p * p if squared else p).sum((2, 3))
    true = (one_hot * one_hot if squared else one_hot).sum((2, 3))
    if jaccard:
        plain = 1 - (inter + 1e-5) / (total + true - inter + 1e-5)
    else:
        plain = 1 - (2 * inter + 1e-5) / (total + true + 1e-5)
    plain.mean().backward()
    torch.testing.assert_close(ours_x.grad, plain_x.grad, atol=1e-12, rtol=1e-10)
    if not jaccard:
        ref_x = logits.clone().requires_grad_()
        kind = {"softmax": True, "to_onehot_y": True} if mode == "multiclass" else {"sigmoid": True}
        monai_losses.DiceLoss(squared_pred=squared, **kind)(ref_x, ref_target).backward()
        # MONAI's squared form reaches Σp² + Σt² through differences of sums (cancellation).
        torch.testing.assert_close(ours_x.grad, ref_x.grad, atol=1e-10, rtol=1e-5)


@pytest.mark.parametrize("mode", ["multilabel", "multiclass"])
def test_dice_gradient_accumulates_exactly_over_backward_calls(mode):
    """A second backward (retain_graph) and two losses of one forward add exact gradients."""
    logits, target = _multiclass() if mode == "multiclass" else _binary()
    x = logits.clone().requires_grad_()
    loss = DiceLoss(mode)(x, target)
    loss.backward(retain_graph=True)
    first = x.grad.clone()
    loss.backward()  # accumulates into x.grad: must give exactly twice the first gradient
    torch.testing.assert_close(x.grad, 2 * first, atol=0, rtol=0)
    # Two losses of one forward, summed (e.g. gradient accumulation).
    x = logits.clone().requires_grad_()
    (DiceLoss(mode)(x, target) + DiceLoss(mode)(x, target)).backward()
    torch.testing.assert_close(x.grad, 2 * first, atol=1e-15, rtol=0)


@pytest.mark.parametrize("mode", ["binary", "multiclass"])
def test_dice_second_derivative_is_correct(mode):
    """Plain autograd: the overlap losses have a correct second derivative."""
    logits, target = _multiclass(2, 3, 4, 4) if mode == "multiclass" else _binary((2, 1, 4, 4))
    x = logits.clone().requires_grad_()
    for loss in (DiceLoss(mode), DiceLoss(mode, squared=True), TverskyLoss(mode, alpha=0.3)):
        assert torch.autograd.gradgradcheck(lambda x, loss=loss: loss(x, target), (x,))


@pytest.mark.parametrize("mode", ["multilabel", "multiclass"])
def test_dice_on_channels_last_and_float32_logits(mode):
    logits, target = _multiclass(2, 3, 16, 8) if mode == "multiclass" else _binary((2, 3, 16, 8))
    grads = []
    for memory_format in (torch.contiguous_format, torch.channels_last):
        x = logits.float().to(memory_format=memory_format).requires_grad_()
        value = JaccardLoss(mode)(x, target if mode == "multiclass" else target.float())
        value.backward()
        grads.append((value.detach(), x.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][1], grads[1][1])


@pytest.mark.parametrize("threads", [1, 2])
def test_softmax_dice_gradient_on_a_parallel_cpu(threads):
    """The multiclass gradient in float32, on one and two threads, against float64."""
    logits = torch.randn(4, 5, 48, 40) * 3
    labels = torch.randint(0, 5, (4, 48, 40))
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = logits.clone().requires_grad_()
        DiceLoss("multiclass")(x, labels).backward()
    finally:
        torch.set_num_threads(previous)
    plain_x = logits.double().requires_grad_()
    one_hot = nn.functional.one_hot(labels, 5).movedim(-1, 1).double()
    probs = torch.softmax(plain_x, 1)
    inter, total = (probs * one_hot).sum((2, 3)), probs.sum((2, 3))
    (1 - (2 * inter + 1e-5) / (total + one_hot.sum((2, 3)) + 1e-5)).mean().backward()
    torch.testing.assert_close(x.grad, plain_x.grad.float(), atol=1e-9, rtol=1e-4)


def test_multiclass_indices_stay_exact_for_many_classes():
    from stabletrain.losses import _class_indices

    labels = torch.tensor([[0, 2047, 2049]])
    assert _class_indices(labels, 4, torch.float32).dtype == torch.float32
    # float16 holds integers exactly only up to 2048: more classes compare in float64.
    wide = _class_indices(labels, 4096, torch.float16)
    assert wide.dtype == torch.float64 and wide.flatten().tolist() == [0, 2047, 2049]
    # Out-of-range indices (validate=False) give an all-zero one-hot column, as documented.
    logits = torch.zeros(1, 2, 1, 3, dtype=torch.float64)
    loss = DiceLoss("multiclass", validate=False, reduction="none")
    out_of_range = loss(logits, torch.tensor([[[5, 5, 5]]]))
    # p = 1/2 everywhere, no pixel of either class: 1 − s/(Σp + s) with Σp = 1.5.
    expected = torch.full((1, 2), 1 - 1e-5 / (1.5 + 1e-5), dtype=torch.float64)
    torch.testing.assert_close(out_of_range, expected)


@pytest.mark.parametrize("alpha", [0.25, None])
def test_softmax_focal_is_monai_times_channels(alpha):
    logits, labels = _multiclass()
    ours = FocalLoss("multiclass", gamma=2.0, alpha=alpha)(logits, labels)
    ref = monai_losses.FocalLoss(gamma=2.0, alpha=alpha, use_softmax=True, to_onehot_y=True)
    expected = logits.shape[1] * ref(logits, labels.unsqueeze(1))
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=1e-6, check_dtype=False)


def test_focal_without_focusing_is_cross_entropy():
    logits, target = _binary(soft=True)
    torch.testing.assert_close(
        FocalLoss("multilabel", gamma=0.0, alpha=None)(logits, target),
        nn.BCEWithLogitsLoss()(logits, target),
    )
    logits, labels = _multiclass()
    torch.testing.assert_close(
        FocalLoss("multiclass", gamma=0.0, alpha=None)(logits, labels),
        nn.CrossEntropyLoss()(logits, labels),
    )


def test_from_logits_false_matches_logits():
    logits, target = _binary()
    probs = torch.sigmoid(logits)
    for cls in (DiceLoss, JaccardLoss, TverskyLoss, FocalLoss):
        torch.testing.assert_close(
            cls("multilabel", from_logits=False)(probs, target),
            cls("multilabel")(logits, target),
            atol=1e-8,
            rtol=1e-6,
        )
    logits, labels = _multiclass()
    probs = torch.softmax(logits, 1)
    for cls in (DiceLoss, FocalLoss):
        torch.testing.assert_close(
            cls("multiclass", from_logits=False)(probs, labels), cls("multiclass")(logits, labels)
        )


# --- closed-form cases and empty masks ------------------------------------------------------


def test_dice_closed_form_at_half_probability():
    logits = torch.zeros(2, 1, 8, 8)
    target = torch.ones(2, 1, 8, 8)
    # p = 0.5 everywhere: I = 32, Σp = 32, Σt = 64 → 1 − (64 + s)/(96 + s)
    s = 1e-5
    assert float(DiceLoss()(logits, target)) == pytest.approx(1 - (64 + s) / (96 + s), abs=1e-7)


def test_empty_masks():
    empty = torch.zeros(2, 1, 16, 16)
    very_negative = torch.full((2, 1, 16, 16), -1e4)
    confident_fg = torch.full((2, 1, 16, 16), 10.0)
    for loss in (DiceLoss(), JaccardLoss(), TverskyLoss()):
        assert float(loss(very_negative, empty)) == pytest.approx(0.0, abs=1e-6)
        assert float(loss(confident_fg, empty)) == pytest.approx(1.0, abs=1e-6)
    # Empty only within the smoothing: sigmoid(-20)·256 ≈ 5e-7 ≪ 1e-5 → small loss.
    assert float(DiceLoss()(torch.full((2, 1, 16, 16), -20.0), empty)) < 0.1
    # Probabilities given directly.
    assert float(DiceLoss(from_logits=False)(empty, empty)) == pytest.approx(0.0)


def test_perfect_prediction_gives_zero_loss():
    target = (torch.rand(2, 1, 16, 16) > 0.5).float()
    logits = (target * 2 - 1) * 1e4
    for loss in (DiceLoss(), JaccardLoss(), TverskyLoss(alpha=0.3, beta=0.7), FocalLoss()):
        assert float(loss(logits, target)) == pytest.approx(0.0, abs=1e-6)


# --- numerical stability --------------------------------------------------------------------

ALL_LOSSES = [
    lambda mode: DiceLoss(mode),
    lambda mode: DiceLoss(mode, squared=True),
    lambda mode: JaccardLoss(mode),
    lambda mode: TverskyLoss(mode, alpha=0.3, beta=0.7),
    lambda mode: FocalLoss(mode),
    lambda mode: FocalLoss(mode, gamma=0.5, alpha=None),
]


@pytest.mark.parametrize("make", ALL_LOSSES)
@pytest.mark.parametrize("mode", ["binary", "multiclass"])
def test_finite_at_extreme_logits(make, mode):
    if mode == "binary":
        target = (torch.rand(2, 1, 8, 8) > 0.5).float()
        logits = torch.where(torch.rand(2, 1, 8, 8) > 0.5, 1e4, -1e4)
    else:
        target = torch.randint(0, 3, (2, 8, 8))
        logits = torch.where(torch.rand(2, 3, 8, 8) > 0.5, 1e4, -1e4)
    x = logits.clone().requires_grad_()
    loss = make(mode)(x, target)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("make", ALL_LOSSES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_logits_and_autocast(make, dtype):
    target = (torch.rand(2, 1, 8, 8) > 0.5).float()
    x = (torch.randn(2, 1, 8, 8) * 30).to(dtype).requires_grad_()
    loss = make("binary")(x, target)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert x.grad.dtype == dtype and torch.isfinite(x.grad).all()
    conv = nn.Conv2d(1, 1, 3, padding=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = conv(torch.randn(2, 1, 8, 8) * 100)
        loss = make("binary")(out, target)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(conv.weight.grad).all()


# --- bad input ------------------------------------------------------------------------------


def test_errors_name_shapes_and_values():
    logits = torch.randn(2, 1, 8, 8)
    with pytest.raises(ValueError, match=r"\(2, 1, 4, 4\)"):
        DiceLoss()(logits, torch.zeros(2, 1, 4, 4))
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        FocalLoss()(logits, torch.full((2, 1, 8, 8), 2.0).index_fill_(0, torch.tensor(0), 0.0))
    with pytest.raises(ValueError, match="one channel"):
        DiceLoss("binary")(torch.randn(2, 2, 8, 8), torch.zeros(2, 2, 8, 8))
    logits3 = torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match="integer class indices"):
        DiceLoss("multiclass")(logits3, torch.zeros(2, 8, 8))
    with pytest.raises(ValueError, match=r"\[3, 3\].*C = 3"):
        FocalLoss("multiclass")(logits3, torch.full((2, 8, 8), 3))
    with pytest.raises(ValueError, match=r"\(2, 8, 8\)"):
        TverskyLoss("multiclass")(logits3, torch.zeros(2, 1, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="probabilities"):
        DiceLoss(from_logits=False)(logits * 10, torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match="mode must be one of"):
        DiceLoss("softmax")
    with pytest.raises(ValueError, match="reduction must be one of"):
        FocalLoss(reduction="avg")
    with pytest.raises(ValueError, match="alpha"):
        FocalLoss(alpha=1.5)
    with pytest.raises(ValueError, match="smooth"):
        DiceLoss(smooth=0.0)


def test_wrong_argument_types_name_the_parameter():
    with pytest.raises(TypeError, match="squared must be a bool"):
        DiceLoss(squared="false")  # a string is not a bool, even "false"
    with pytest.raises(TypeError, match="validate must be a bool"):
        FocalLoss(validate=0)
    with pytest.raises(TypeError, match="alpha must be a number or None"):
        FocalLoss(alpha="0.25")
    with pytest.raises(TypeError, match="gamma must be a number"):
        FocalLoss(gamma=True)
    assert FocalLoss(alpha=None).alpha is None


@pytest.mark.parametrize("cls", [DiceLoss, JaccardLoss, TverskyLoss])
def test_overlap_losses_check_class_indices_exactly(cls):
    """Dice-type losses check the indices on their float copy; the message stays exact."""
    logits = torch.randn(2, 3, 8, 8)
    labels = torch.randint(0, 3, (2, 8, 8))
    for bad, shown in ((3, r"\[0, 3\]"), (-1, r"\[-1, 2\]"), (2**40 + 1, r"1099511627777\]")):
        wrong = labels.clone()
        wrong[1, 4, 4] = bad
        with pytest.raises(ValueError, match=shown + r".*C = 3"):
            cls("multiclass")(logits, wrong)
    cls("multiclass")(logits, labels)  # in range: no error
    cls("multiclass", validate=False)(logits, labels.clone().fill_(3))  # not checked


def test_validate_false_skips_value_checks_only():
    logits = torch.randn(2, 1, 8, 8)
    DiceLoss(validate=False)(logits, torch.full((2, 1, 8, 8), 2.0))  # no pass over the data
    with pytest.raises(ValueError):  # shapes are still checked
        DiceLoss(validate=False)(logits, torch.zeros(2, 1, 4, 4))


# --- classification shapes: no spatial dims ------------------------------------------------

OVERLAP_AND_FOCAL = [DiceLoss, JaccardLoss, TverskyLoss, FocalLoss]


def _value_and_grad(loss, logits, target):
    x = logits.clone().requires_grad_()
    value = loss(x, target)
    value.backward()
    return value.detach(), x.grad


@pytest.mark.parametrize("cls", OVERLAP_AND_FOCAL)
def test_multiclass_logits_without_pixels_are_maps_of_one_pixel(cls):
    """(N, C) logits with (N,) indices or (N, C) one-hot targets: as (N, C, 1, 1) maps."""
    logits = torch.randn(6, 4, dtype=torch.float64) * 2
    labels = torch.tensor([0, 1, 2, 3, 1, 2])
    as_map = _value_and_grad(cls("multiclass"), logits[..., None, None], labels[..., None, None])
    flat = _value_and_grad(cls("multiclass"), logits, labels)
    one_hot = _value_and_grad(cls("multiclass"), logits, nn.functional.one_hot(labels, 4).double())
    for value, grad in (flat, one_hot):
        torch.testing.assert_close(value, as_map[0], atol=1e-12, rtol=0)
        torch.testing.assert_close(grad, as_map[1][..., 0, 0], atol=1e-12, rtol=0)
    none = cls("multiclass", reduction="none")(logits, labels)
    assert none.shape == ((6,) if cls is FocalLoss else (6, 4))


@pytest.mark.parametrize("cls", OVERLAP_AND_FOCAL)
def test_binary_logits_of_shape_n_or_n1(cls):
    logits = torch.randn(8, dtype=torch.float64) * 2
    target = (torch.rand(8) > 0.5).double()
    expected = cls()(logits.view(8, 1, 1, 1), target.view(8, 1, 1, 1))
    for pred, tgt in (
        (logits, target),
        (logits[:, None], target),
        (logits[:, None], target[:, None]),
    ):
        torch.testing.assert_close(cls()(pred, tgt), expected, atol=1e-12, rtol=0)
    if cls is FocalLoss:  # element-wise: "none" keeps the shape of pred
        assert cls(reduction="none")(logits, target).shape == (8,)
    with pytest.raises(ValueError, match="one channel"):
        cls()(torch.randn(8, 2), torch.zeros(8, 2))


def test_multiclass_probability_targets():
    """Soft targets of pred's shape: focal with gamma=0 is the soft cross-entropy of torch."""
    logits = torch.randn(5, 3, 4, 4, dtype=torch.float64)
    probs = torch.softmax(torch.randn(5, 3, 4, 4, dtype=torch.float64), 1)
    torch.testing.assert_close(
        FocalLoss("multiclass", gamma=0.0, alpha=None)(logits, probs),
        nn.CrossEntropyLoss()(logits, probs),
    )
    labels = torch.randint(0, 3, (5, 4, 4))
    one_hot = nn.functional.one_hot(labels, 3).movedim(-1, 1).double()
    for loss in (FocalLoss("multiclass"), DiceLoss("multiclass", include_background=False)):
        torch.testing.assert_close(loss(logits, one_hot), loss(logits, labels))
    ref = monai_losses.DiceLoss(softmax=True)(logits, probs)  # MONAI takes soft targets as is
    torch.testing.assert_close(DiceLoss("multiclass")(logits, probs), ref, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        DiceLoss("multiclass")(logits, probs * 2)
    with pytest.raises(ValueError, match=r"\(5, 4, 4\) \(class indices\) or the shape of pred"):
        FocalLoss("multiclass")(logits, probs[:, :2])


def test_combined_preset_on_classification_logits():
    logits, labels = torch.randn(6, 4), torch.randint(0, 4, (6,))
    loss = build_loss("default_segmentation", mode="multiclass")
    expected = 0.7 * DiceLoss("multiclass")(logits, labels) + 0.3 * nn.CrossEntropyLoss()(
        logits, labels
    )
    torch.testing.assert_close(loss(logits, labels), expected)


# --- combined loss and presets --------------------------------------------------------------


def test_combined_loss_is_weighted_sum_with_settable_weights():
    logits, target = _binary((2, 1, 8, 8))
    dice, bce = DiceLoss(), nn.BCEWithLogitsLoss()
    loss = CombinedLoss({"dice": (dice, 0.7), "bce": (bce, 0.3)})
    expected = 0.7 * dice(logits, target) + 0.3 * bce(logits, target)
    torch.testing.assert_close(loss(logits, target), expected)
    parts = loss.components(logits, target)
    assert set(parts) == {"dice", "bce", "total"}
    assert parts["total"] == pytest.approx(float(expected))
    assert parts["dice"] == pytest.approx(float(dice(logits, target)))
    loss.weights = {"dice": 0.2}
    assert loss.weights == {"dice": 0.2, "bce": 0.3}
    torch.testing.assert_close(
        loss(logits, target), 0.2 * dice(logits, target) + 0.3 * bce(logits, target)
    )
    state = loss.state_dict()
    other = CombinedLoss({"dice": (DiceLoss(), 0.7), "bce": (nn.BCEWithLogitsLoss(), 0.3)})
    other.load_state_dict(state)
    assert other.weights == {"dice": 0.2, "bce": 0.3}
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['focal'\] in weights; accepted"):
        loss.weights = {"focal": 1.0}
    with pytest.raises(ValueError, match=">= 0"):
        loss.weights = {"dice": -1.0}


def test_combined_loss_accepts_plain_functions():
    logits, target = _binary((2, 1, 8, 8))
    loss = CombinedLoss({"mse": (lambda p, t: ((torch.sigmoid(p) - t) ** 2).mean(), 1.0)})
    assert loss.components(logits, target)["mse"] == pytest.approx(float(loss(logits, target)))


@pytest.mark.parametrize("name", list(LOSS_PRESETS))
def test_presets(name):
    overlap, w1, pixel, w2 = LOSS_PRESETS[name]
    loss = build_loss(name)
    assert loss.weights == {overlap: w1, pixel: w2}
    logits, target = _binary((2, 1, 8, 8))
    assert torch.isfinite(loss(logits, target))
    multi = build_loss(name, mode="multiclass")
    logits, labels = _multiclass()
    assert torch.isfinite(multi(logits, labels))


def test_preset_contents():
    assert build_loss("default_segmentation").weights == {"dice": 0.7, "bce": 0.3}
    focal = build_loss("focal_segmentation").term("focal")
    assert (focal.gamma, focal.alpha) == (2.0, 0.25)
    assert build_loss("jaccard_based").term("jaccard").jaccard
    assert isinstance(
        build_loss("dice_focused", mode="multiclass").term("bce"), nn.CrossEntropyLoss
    )
    with pytest.raises(ValueError, match=r"unknown loss preset 'dice'.*default_segmentation"):
        build_loss("dice")


def test_build_loss_from_seed_style_config():
    loss = build_loss(
        {
            "type": "combined",
            "dice_weight": 0.6,
            "bce_weight": 0.4,
            "dice_config": {"smooth": 1e-6, "jaccard": True, "squared_pred": True},
            "bce_config": {"gamma": 2.0, "alpha": 0.25},
        }
    )
    assert loss.weights == {"jaccard": 0.6, "focal": 0.4}
    jac = loss.term("jaccard")
    assert (jac.smooth, jac.jaccard, jac.squared) == (1e-6, True, True)
    plain = build_loss({"type": "combined", "dice_weight": 0.8, "bce_weight": 0.2})
    assert plain.weights == {"dice": 0.8, "bce": 0.2}
    with pytest.raises(ValueError, match="unknown key"):
        build_loss({"type": "combined", "dice_wieght": 0.8})
    with pytest.raises(ValueError, match=r"type must be one of \('combined',\), got 'focal'"):
        build_loss({"type": "focal"})


def test_float32_reductions_are_accurate_on_large_inputs():
    logits = torch.randn(8, 4, 128, 128) * 2
    target = (torch.rand(8, 4, 128, 128) > 0.7).float()
    for loss in (DiceLoss("multilabel"), FocalLoss("multilabel"), TverskyLoss("multilabel")):
        exact = float(loss(logits.double(), target.double()))
        assert float(loss(logits, target)) == pytest.approx(exact, rel=1e-6)


# --- MONAI's own test tables, ported ---------------------------------------------------------
# Inputs and expected values from Project-MONAI/MONAI tests/losses/test_dice_loss.py (TEST_CASES)
# and tests/losses/test_focal_loss.py (TEST_CASES, test_foreground): the cases whose options we
# have (MONAI's smooth_nr == smooth_dr > 0 is our smooth; sigmoid/softmax are our modes; its
# other_act is ours on activated input with from_logits=False, validate=False). Documented
# differences: MONAI's Jaccard smooths 2I and 2U (ours I and U: equal to 1e-5 here); MONAI's
# softmax focal loss means over the C channels too, ours sums them (so ours is C x MONAI's).

_X1, _T1 = [[[[1.0, -1.0], [-1.0, 1.0]]]], [[[[1.0, 0.0], [1.0, 1.0]]]]
_X2 = [[[[1.0, -1.0], [-1.0, 1.0]]], [[[1.0, -1.0], [-1.0, 1.0]]]]
_T2 = [[[[1.0, 1.0], [1.0, 1.0]]], [[[1.0, 0.0], [1.0, 0.0]]]]
_P3 = [[[[0.3, 0.4], [0.7, 0.9]]], [[[1.0, 0.1], [0.5, 0.3]]]]
_X3 = [[[-1.0, 0.0, 1.0], [1.0, 0.0, -1.0]], [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]]
_I3 = [[1, 0, 0], [1, 1, 0]]  # MONAI's (N, 1, 3) labels without the channel dim
_H3 = [[[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]], [[0.0, 0.0, 1.0], [1.0, 1.0, 0.0]]]  # one-hot of _I3
_X4 = [[[[1.0, -0.0], [-1.0, 1.0]]], [[[1.0, -1.0], [-1.0, 1.0]]]]
_XF = [[[[1.0, 1.0], [0.5, 0.0]]] * 3]  # (1, 3, 2, 2)
_IF = [[[0, 1], [2, 0]]]
_HF = [[[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [0.0, 0.0]], [[0.0, 0.0], [1.0, 0.0]]]]
_FG_X = torch.cat((torch.ones(1, 1, 5, 5), torch.zeros(1, 1, 5, 5)), 1)
_FG_T = _FG_X.clone()
_FG_T[:, 0, 2, 2], _FG_T[:, 1, 2, 2] = 0.0, 1.0
_ACT = {"from_logits": False, "validate": False}  # MONAI's other_act, applied to the input
_NONE = [[[0.02266, 0.70187], [0.37741, 0.17329]], [[0.70187, 0.02266], [0.37741, 0.17329]]]
_NONE = [[*_NONE, [[0.70187, 0.70187], [0.06757, 0.17329]]]]
_NONE_W = [[[0.01133, 0.35093], [0.18871, 0.08664]], [[0.07019, 0.00227], [0.03774, 0.01733]]]
_NONE_W = [[*_NONE_W, [[0.14037, 0.14037], [0.01352, 0.03466]]]]


def _log_softmax(x):
    return torch.log_softmax(torch.tensor(x), 1)


MONAI_TABLE = [  # id, loss (made in the test), pred, target, expected, rtol (atol where MONAI gives one)
    ("dice-sigmoid", partial(DiceLoss, smooth=1e-6), _X1, _T1, 0.307576, 1e-5),
    ("dice-sigmoid-2", partial(DiceLoss, smooth=1e-4), _X2, _T2, 0.416657, 1e-5),
    ("dice-probs", partial(DiceLoss, smooth=1e-4, from_logits=False), _P3, _P3, 0.307773, 1e-5),
    ("dice-onehot-sigmoid", partial(DiceLoss, "multilabel", 1e-4), _X3, _H3, 0.435050, 1e-5),
    (
        "dice-onehot-sigmoid-none",
        partial(DiceLoss, "multilabel", 1e-4, reduction="none"),
        _X3,
        _H3,
        [[0.296529, 0.415136], [0.599976, 0.428559]],  # MONAI's (2, 2, 1)
        1e-5,
    ),
    ("dice-softmax", partial(DiceLoss, "multiclass", 1e-4), _X3, _I3, 0.383713, 1e-5),
    (
        "dice-softmax-sum",
        partial(DiceLoss, "multiclass", 1e-4, reduction="sum"),
        _X3,
        _I3,
        1.534853,
        1e-5,
    ),
    ("dice-squared", partial(DiceLoss, squared=True), _X1, _T1, 0.178337, 1e-5),
    ("dice-jaccard", partial(DiceLoss, jaccard=True), _X1, _T1, 0.470451, 1e-5),
    (
        "dice-tanh",
        partial(DiceLoss, smooth=1e-4, **_ACT),
        torch.tanh(torch.tensor(_X2)),
        _T2,
        0.999963,
        1e-5,
    ),
    (
        "dice-log-softmax",
        partial(DiceLoss, "multilabel", 1e-4, **_ACT),
        _log_softmax(_X3),
        _H3,
        -8.522593,
        1e-5,
    ),
    (
        "dice-tanh-batch",
        partial(DiceLoss, smooth=1e-4, batch=True, **_ACT),
        torch.tanh(torch.tensor(_X4)),
        _T2,
        0.774718,
        1e-5,
    ),
    (
        "dice-log-softmax-weight",
        partial(DiceLoss, "multilabel", 1e-4, weight=(0, 1), **_ACT),
        _log_softmax(_X3),
        _H3,
        -8.268515,
        1e-5,
    ),
    ("focal-onehot", partial(FocalLoss, "multilabel", alpha=None), _XF, _HF, 0.34959, 1e-4),
    (
        "focal-no-background",
        partial(FocalLoss, "multilabel", alpha=None, include_background=False),
        _XF,
        _HF,
        0.36498,
        1e-4,
    ),
    ("focal-alpha", partial(FocalLoss, "multilabel", alpha=0.8), _XF, _HF, 0.08423, 1e-4),
    (
        "focal-none",
        partial(FocalLoss, "multilabel", alpha=None, reduction="none"),
        _XF,
        _HF,
        _NONE,
        1e-4,
    ),
    (
        "focal-weight-none",
        partial(
            FocalLoss,
            "multilabel",
            alpha=None,
            reduction="none",
            weight=torch.tensor([0.5, 0.1, 0.2]),
        ),
        _XF,
        _HF,
        _NONE_W,
        1e-4,
    ),
    ("focal-softmax", partial(FocalLoss, "multiclass", alpha=None), _XF, _IF, 3 * 0.16276, 1e-4),
    (
        "focal-softmax-alpha",
        partial(FocalLoss, "multiclass", alpha=0.8),
        _XF,
        _IF,
        3 * 0.08138,
        1e-4,
    ),
    ("focal-foreground", partial(FocalLoss, "multilabel", alpha=None), _FG_X, _FG_T, 0.1116, 5e-4),
    (
        "focal-foreground-only",
        partial(FocalLoss, "multilabel", alpha=None, include_background=False),
        _FG_X,
        _FG_T,
        0.1733,
        5e-4,
    ),
]


@pytest.mark.filterwarnings("ignore:pred looks like probabilities")  # focal: 0/1 logits
@pytest.mark.parametrize(
    "loss, pred, target, expected, tol", [pytest.param(*c[1:], id=c[0]) for c in MONAI_TABLE]
)
def test_monai_test_tables(loss, pred, target, expected, tol):
    loss = loss()
    pred, target = torch.as_tensor(pred), torch.as_tensor(target)
    expected = torch.tensor(expected, dtype=torch.float32)
    torch.testing.assert_close(loss(pred, target), expected, rtol=tol, atol=tol)


# --- batch Dice, class weights, focal include_background (against MONAI) ----------------------


@pytest.mark.parametrize("include_background", [True, False])
def test_batch_dice_matches_monai(include_background):
    logits, target = _binary(soft=True)
    kwargs = {"include_background": include_background, "batch": True}
    ours = DiceLoss("multilabel", **kwargs)(logits, target)
    ref = monai_losses.DiceLoss(sigmoid=True, **kwargs)(logits, target)
    torch.testing.assert_close(ours, ref)
    logits, labels = _multiclass()
    ours = DiceLoss("multiclass", reduction="none", **kwargs)(logits, labels)
    ref = monai_losses.DiceLoss(softmax=True, to_onehot_y=True, reduction="none", **kwargs)
    assert ours.shape == (3 + include_background,)
    torch.testing.assert_close(ours, ref(logits, labels.unsqueeze(1)).flatten())
    per_sample = DiceLoss("multiclass", **{**kwargs, "batch": False})(logits, labels)
    assert not torch.allclose(per_sample, ours.mean())  # the batch sums differ from a mean


@pytest.mark.parametrize("include_background", [True, False])
def test_class_weights_match_monai(include_background):
    weight = [0.2, 1.0, 3.0, 0.5]
    kept = weight if include_background else weight[1:]  # MONAI: one per class scored
    logits, labels = _multiclass()
    onehot = {"softmax": True, "to_onehot_y": True, "include_background": include_background}
    ours = DiceLoss("multiclass", include_background=include_background, weight=weight)
    ref = monai_losses.DiceLoss(weight=kept, **onehot)
    torch.testing.assert_close(ours(logits, labels), ref(logits, labels.unsqueeze(1)))
    logits, target = _binary((3, 4, 6, 5))
    for reduction in ("mean", "sum", "none"):
        options = {"include_background": include_background, "reduction": reduction}
        ours = FocalLoss("multilabel", 2.0, 0.25, weight=weight, **options)
        ref = monai_losses.FocalLoss(gamma=2.0, alpha=0.25, weight=kept, **options)
        expected = ref(logits, target)
        if reduction == "sum":  # MONAI sums the spatial means
            expected = expected * 6 * 5
        torch.testing.assert_close(ours(logits, target), expected, check_dtype=False)


def test_softmax_focal_class_weights_are_monai_times_channels():
    logits, labels = _multiclass()
    weight = [0.2, 1.0, 3.0, 0.5]
    ours = FocalLoss("multiclass", alpha=None, weight=weight)(logits, labels)
    ref = monai_losses.FocalLoss(alpha=None, weight=weight, use_softmax=True, to_onehot_y=True)
    expected = 4 * ref(logits, labels.unsqueeze(1))  # MONAI: float32 with class weights
    torch.testing.assert_close(ours, expected, rtol=1e-6, atol=1e-6, check_dtype=False)
    onehot = torch.nn.functional.one_hot(labels, 4).permute(0, 3, 1, 2).double()
    probability_targets = FocalLoss("multiclass", alpha=None, weight=weight)(logits, onehot)
    torch.testing.assert_close(probability_targets, ours)


def test_focal_without_background_drops_class_zero():
    logits, labels = _multiclass()
    per_pixel = FocalLoss("multiclass", reduction="none")(logits, labels)
    ours = FocalLoss("multiclass", reduction="none", include_background=False)(logits, labels)
    torch.testing.assert_close(ours, torch.where(labels == 0, 0.0, per_pixel).double())
    weighted = FocalLoss("multiclass", weight=[0, 1, 1, 1])(logits, labels)
    torch.testing.assert_close(
        FocalLoss("multiclass", include_background=False)(logits, labels), weighted
    )
    logits, target = _binary((3, 1, 6, 5))  # binary: one channel, kept
    plain, dropped = (
        FocalLoss()(logits, target),
        FocalLoss(include_background=False)(logits, target),
    )
    assert torch.equal(plain, dropped)


def test_new_options_keep_defaults_exact_and_show_in_repr_only_when_set():
    logits, target = _binary()
    for cls in (DiceLoss, TverskyLoss, JaccardLoss, FocalLoss):
        plain = cls("multilabel")
        assert "weight" not in repr(plain) and "batch" not in repr(plain)
        assert torch.equal(cls("multilabel", weight=[1, 1])(logits, target), plain(logits, target))
    assert repr(DiceLoss()) == (
        "DiceLoss(mode='binary', from_logits=True, reduction='mean', smooth=1e-05, squared=False,"
        " jaccard=False, include_background=True)"
    )
    assert repr(FocalLoss()) == (
        "FocalLoss(mode='binary', from_logits=True, reduction='mean', gamma=2, alpha=0.25)"
    )
    assert "batch=True, weight=(1.0, 2.0)" in repr(DiceLoss(batch=True, weight=[1, 2]))
    assert "include_background=False" in repr(FocalLoss(include_background=False))
    assert repr(build_loss("default_segmentation").term("bce")) == "BCEWithLogitsLoss()"
    assert repr(build_loss("dice_focused", mode="multiclass").term("bce")) == "CrossEntropyLoss()"


def test_probability_checks_do_not_warn_on_tensors_that_require_grad():
    probs = torch.rand(2, 1, 4, 4, requires_grad=True)
    target = (torch.rand(2, 1, 4, 4) > 0.5).float()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for cls in (DiceLoss, FocalLoss):
            cls(from_logits=False)(probs, target).backward()


def test_integer_masks_and_indices_in_the_pixel_terms():
    logits, target = _binary((2, 1, 6, 5))
    loss = build_loss("default_segmentation")
    expected = loss(logits, target)
    for dtype in (torch.uint8, torch.bool, torch.int32):
        torch.testing.assert_close(loss(logits, target.to(dtype)), expected)
    logits, labels = _multiclass()
    loss = build_loss("default_segmentation", mode="multiclass")
    torch.testing.assert_close(loss(logits, labels.to(torch.uint8)), loss(logits, labels))


def test_combined_weights_are_a_read_only_snapshot():
    loss = build_loss("default_segmentation")
    weights = loss.weights
    assert weights == {"dice": 0.7, "bce": 0.3} and repr(weights) == "{'dice': 0.7, 'bce': 0.3}"
    for change in (
        lambda: weights.__setitem__("dice", 0.1),
        lambda: weights.update(dice=0.1),
        lambda: weights.pop("dice"),
        lambda: weights.__delitem__("dice"),
    ):
        with pytest.raises(TypeError, match="read-only snapshot"):
            change()
    loss.weights = {"dice": 0.1}  # some or all terms: this is how weights change
    assert loss.weights == {"dice": 0.1, "bce": 0.3} and weights == {"dice": 0.7, "bce": 0.3}
    for copied in (copy.copy(weights), copy.deepcopy(weights), pickle.loads(pickle.dumps(weights))):
        assert type(copied) is dict and copied == weights
        copied["dice"] = 1.0  # copies are plain dicts


def test_probabilities_into_a_logit_loss_warn_once_per_loss_and_change_nothing():
    logits, target = _binary((2, 1, 4, 4))
    probs = torch.sigmoid(logits * 3)
    for make in (DiceLoss, FocalLoss, partial(TverskyLoss, alpha=0.3, beta=0.7)):
        loss = make()
        with pytest.warns(UserWarning, match="pred looks like probabilities") as caught:
            value = loss(probs, target)
            loss(probs, target)
        assert len(caught) == 1 and torch.equal(value, make(validate=False)(probs, target))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for loss in (DiceLoss(), FocalLoss(), DiceLoss(validate=False)):
            loss(torch.full_like(probs, 0.27), target)  # a fresh network's: no warning
            loss(logits, target)  # only the first call is checked (one sync)
            loss(probs, target)
        DiceLoss(from_logits=False)(probs, target)


def test_a_0d_tensor_option_is_its_number():
    loss = DiceLoss(smooth=torch.tensor(1.0), weight=torch.tensor([1.0]))
    assert type(loss.smooth) is float and loss.smooth == 1.0 and loss.weight == (1.0,)
    assert FocalLoss(gamma=torch.tensor(2)).gamma == 2.0
