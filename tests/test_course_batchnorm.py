import math

import torch
from torch import nn

from stabletrain.course.batchnorm import diagnose, layer_mismatch, plot_diagnosis, precise_bn, score


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 1, 1)
    )


def _batches(n: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    images = [5 + 3 * torch.randn(4, 1, 8, 8, generator=g) for _ in range(n)]
    return [(x, (x > 5).float()) for x in images]


def test_score_leaves_the_model_alone_and_differs_by_mode():
    net = _net().train()
    bn = net[1]
    before = bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()
    x, y = _batches(1)[0]
    stale = score(net, x, y)  # running statistics still at their initial (0, 1)
    fresh = score(net, x, y, batch_stats=True)
    assert net.training and all(
        torch.equal(a, b)
        for a, b in zip(before, (bn.running_mean, bn.running_var, bn.num_batches_tracked))
    )
    assert stale.loss != fresh.loss
    assert 0 <= stale.foreground <= 1 and 0 <= stale.dice <= 1
    assert stale.probs.shape == (x.numel(),)


def test_precise_bn_matches_batch_statistics_on_a_copy():
    net = _net()
    data = _batches()
    fixed = precise_bn(net, data)
    assert fixed is not net and not fixed.training
    assert torch.equal(net[1].running_mean, torch.zeros(4))  # the original is unchanged
    x = torch.cat([b[0] for b in data])
    with torch.no_grad():
        h = net[0](x)
    assert torch.allclose(fixed[1].running_mean, h.mean((0, 2, 3)), atol=1e-4)


def test_diagnose_and_layer_mismatch():
    net = _net()
    data = _batches()
    x, y = data[0]
    diag = diagnose(net, x, y, data)
    assert set(diag.modes()) == {
        "eval mode, running statistics",
        "batch statistics",
        "eval mode after update_bn",
    }
    assert math.isclose(diag.true_foreground, float(y.mean()))
    # stale statistics (mean 0, var 1) against inputs of mean ~5: a large gap, closed by update_bn
    (gap,) = layer_mismatch(net, x)
    (fixed,) = layer_mismatch(precise_bn(net, data), x)
    assert gap.name == "1" and gap.mean_gap > 10 * fixed.mean_gap
    assert abs(fixed.var_ratio - 1) < 0.5
    fig = plot_diagnosis(diag, title="t")
    assert len(fig.axes) == 2


def test_layer_mismatch_in_the_training_forward_pass():
    net = _net()
    x, _ = _batches(1)[0]
    (eval_gap,) = layer_mismatch(net, x)
    (train_gap,) = layer_mismatch(net, x, batch_stats=True)
    # one BatchNorm layer: its input is the same in both passes, and the model is unchanged
    assert math.isclose(eval_gap.mean_gap, train_gap.mean_gap, rel_tol=1e-6)
    assert torch.equal(net[1].running_mean, torch.zeros(4))


def test_batch_stat_scores_record_one_score_per_epoch():
    from stabletrain.course.batchnorm import BatchStatScores
    from stabletrain.loop import fit

    net = _net()
    data = _batches()
    x, y = data[0]
    probe = BatchStatScores([(x, y)])
    history = fit(net, data, epochs=2, val_loader=data[:1], callbacks=[probe], progress=False)
    assert len(probe.losses) == len(probe.dices) == len(history.epochs["val_loss"]) == 2
    assert math.isclose(probe.losses[-1], score(net, x, y, batch_stats=True).loss, rel_tol=1e-6)
