import pytest
import torch
from torch.utils.data import DataLoader

from stabletrain.course.batchnorm import PreciseBNProbe, precise_bn_scores
from stabletrain.course.experiments import short_run
from stabletrain.data import make_loaders
from stabletrain.models import TinyUNet

KW = dict(epochs=2, num_train=16, num_val=8, batch_size=8, image_size=32, base_channels=4)


def _loaders():
    train, val = make_loaders(16, 8, 8, image_size=32)
    return DataLoader(train.dataset, batch_size=8), val


def test_probe_leaves_the_training_unchanged():
    train, val = _loaders()
    probe = PreciseBNProbe(train, val, epochs=(1, 2))
    with_probe = short_run(callbacks=[probe], **KW)
    without = short_run(**KW)
    assert with_probe.steps["loss"] == without.steps["loss"]
    assert with_probe.epochs["val_dice"] == without.epochs["val_dice"]
    assert sorted(probe.scores) == [1, 2]
    for scores in probe.scores.values():
        assert 0.0 <= scores["dice"] <= 1.0 and 0.0 <= scores["foreground"] <= 1.0


def test_scores_leave_the_model_untouched_and_handle_deep_supervision():
    train, val = _loaders()
    model = TinyUNet(base_channels=4, depth=2, deep_supervision=True)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scores = precise_bn_scores(model, train, val)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert set(scores) == {"dice", "foreground"}


def test_rejects_bad_epochs_and_multiclass():
    train, val = _loaders()
    with pytest.raises(ValueError, match="1-based"):
        PreciseBNProbe(train, val, epochs=[0])
    with pytest.raises(ValueError, match="binary"):
        precise_bn_scores(TinyUNet(num_classes=3, base_channels=4, depth=2), train, val)
