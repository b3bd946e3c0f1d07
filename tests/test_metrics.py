import warnings

import pytest
import torch

from stabletrain.metrics import accuracy, dice_score, iou_score


def test_binary_perfect_half_and_empty():
    target = torch.zeros(1, 1, 2, 2)
    target[0, 0, 0, :] = 1  # two foreground pixels
    perfect = torch.where(target > 0, 10.0, -10.0)
    assert dice_score(perfect, target) == pytest.approx(1.0)
    half = torch.full_like(target, -10.0)
    half[0, 0, 0, 0] = 10.0  # one of two found
    assert dice_score(half, target) == pytest.approx(2 * 1 / 3)
    assert iou_score(half, target) == pytest.approx(0.5)
    empty = torch.zeros(1, 1, 2, 2)
    assert dice_score(torch.full_like(empty, -10.0), empty) == 1.0  # nothing to find
    assert dice_score(torch.full_like(empty, 10.0), empty) == 0.0  # false alarms


def test_multiclass_ignores_background_by_default():
    target = torch.tensor([[[0, 1], [2, 2]]])
    logits = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float() * 10
    assert dice_score(logits, target) == pytest.approx(1.0)
    wrong = logits.clone()
    wrong[0, :, 0, 1] = torch.tensor([10.0, 0.0, 0.0])  # class 1 pixel predicted background
    assert dice_score(wrong, target) == pytest.approx(0.5)  # class 1: 0, class 2: 1


def test_shape_errors():
    with pytest.raises(ValueError, match="shape"):
        dice_score(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 2, 2))
    with pytest.raises(ValueError, match="integer"):
        dice_score(torch.zeros(1, 3, 4, 4), torch.zeros(1, 4, 4))


def test_accuracy_of_class_indices_over_dim_1():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 0.0, 5.0], [4.0, 0.0, 0.0]])
    assert accuracy(logits, torch.tensor([0, 1, 2, 1])) == pytest.approx(0.75)
    # Segmentation maps (N, C, H, W): pixel accuracy, argmax over the class dim 1.
    target = torch.tensor([[[0, 1], [2, 2]]])
    maps = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float()
    assert accuracy(maps, target) == 1.0
    assert accuracy(maps, torch.tensor([[[0, 1], [2, 0]]])) == pytest.approx(0.75)


def test_accuracy_of_a_language_model_reads_classes_from_the_last_dim():
    targets = torch.randint(0, 7, (2, 5))
    scores = torch.nn.functional.one_hot(targets, 7).float()  # (B, T, V)
    assert accuracy(scores, targets) == 1.0
    scores[0, 0] = scores[0, 0].roll(1)  # one of ten positions wrong
    assert accuracy(scores, targets) == pytest.approx(0.9)
    # T == V: the (B, T) target still marks a language model.
    square = torch.nn.functional.one_hot(torch.tensor([[0, 1, 2]]), 3).float()
    assert accuracy(square, torch.tensor([[0, 1, 2]])) == 1.0


def test_accuracy_of_binary_logits_thresholds_at_zero():
    logits = torch.tensor([2.0, -1.0, 0.5, -3.0])
    targets = torch.tensor([1.0, 0.0, 0.0, 0.0])
    assert accuracy(logits, targets) == pytest.approx(0.75)
    assert accuracy(logits[:, None], targets) == pytest.approx(0.75)
    assert accuracy(logits[:, None], targets[:, None].long()) == pytest.approx(0.75)
    maps = torch.tensor([[[[1.0, -1.0]]]])  # (1, 1, 1, 2) with (1, 1, 2) targets
    assert accuracy(maps, torch.tensor([[[1, 1]]])) == pytest.approx(0.5)
    assert accuracy([maps, torch.zeros(1, 1, 1, 1)], torch.tensor([[[1, 0]]])) == 1.0


def test_accuracy_errors_name_the_expected_shapes():
    with pytest.raises(ValueError, match=r"\(N, \*spatial\) = \(4,\)"):
        accuracy(torch.zeros(4, 3), torch.zeros(4, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="integer class indices"):
        accuracy(torch.zeros(4, 3), torch.zeros(4))
    with pytest.raises(ValueError, match="binary targets must have the shape"):
        accuracy(torch.zeros(4, 1), torch.zeros(3))


def test_binary_metrics_take_real_logits_in_0_1_without_a_warning():
    # a network's logits may all lie in [0, 1] at some evaluation (notebooks 06 and 08 have such
    # epochs): the metrics cannot tell them from probabilities, so they do not guess
    target = torch.zeros(2, 1, 4, 4)
    target[:, :, :2] = 1.0
    logits = torch.where(target > 0, 0.9, 0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert dice_score(logits, target) == pytest.approx(2 / 3)  # sigmoid(0.05) > 0.5
        accuracy(logits.flatten(), target.flatten())


def test_accuracy_accepts_every_index_in_range_and_binary_soft_labels():
    logits = torch.eye(3)[[0, 1, 2, 2]] * 4 - 2
    assert accuracy(logits, torch.tensor([0, 1, 2, 1], dtype=torch.uint8)) == 0.75
    assert accuracy(torch.tensor([1.0, -1.0]), torch.tensor([0.7, 0.0])) == 1.0
    assert dice_score(torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2), threshold=torch.tensor(0.4))
