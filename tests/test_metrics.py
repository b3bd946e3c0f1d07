import pytest
import torch

from stabletrain.metrics import dice_score, iou_score


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
